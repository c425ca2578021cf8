"""The plugin host: one pluggy manager; every plugin, built-in or not, comes from the ``fleetbridge``
entry-point group. A plugin that fails to import or to register disables only its own accounts."""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .platform import Platform

_LOGGER = logging.getLogger(__name__)
GROUP = "fleetbridge"


@dataclass
class PluginRegistry:
    """Loaded plugins and the platforms they registered."""

    pm: pluggy.PluginManager
    platforms: dict[str, type[Platform]] = field(default_factory=dict)
    plugin_of: dict[str, str] = field(default_factory=dict)  # platform name -> plugin name
    unavailable: dict[str, str] = field(default_factory=dict)  # plugin name -> reason

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call an observer hook; an observer's exception is logged, never propagated."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception:
                _LOGGER.exception("Plugin %s failed in %s", impl.plugin_name, hook)


def _register_platform(registry: PluginRegistry, plugin: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Platform) and getattr(cls, "name", None)):
        raise TypeError(f"register() takes a Platform subclass with a name, got {cls!r}")
    if cls.name in registry.platforms:
        _LOGGER.error("Plugin %s registers platform %r, already registered by %s; ignored", plugin, cls.name,
                      registry.plugin_of[cls.name])
        return
    registry.platforms[cls.name] = cls
    registry.plugin_of[cls.name] = plugin


def load_plugins(extra: dict[str, Any] | None = None) -> PluginRegistry:
    """Load every ``fleetbridge`` entry point (plus ``extra`` name -> plugin, for tests)."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    registry = PluginRegistry(pm=pm)
    candidates: dict[str, Any] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        if ep.name in candidates:
            continue
        try:
            candidates[ep.name] = ep.load()
        except Exception as err:
            registry.unavailable[ep.name] = f"import failed: {type(err).__name__}: {err}"
            _LOGGER.error("Plugin %s (%s) failed to import: %s: %s; its accounts are disabled",
                          ep.name, ep.value, type(err).__name__, err)
    candidates.update(extra or {})
    for name, plugin in candidates.items():
        try:
            pm.register(plugin, name=name)
        except Exception as err:
            registry.unavailable[name] = f"invalid plugin: {err}"
            _LOGGER.error("Plugin %s is invalid: %s; its accounts are disabled", name, err)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        bad = err.plugin_name if hasattr(err, "plugin_name") else str(err)
        _LOGGER.error("Plugin %s implements an unknown hook: %s", bad, err)
    for impl in pm.hook.fleetbridge_register_platforms.get_hookimpls():
        found: list[Any] = []
        try:
            impl.function(**{k: found.append for k in impl.argnames})
            for cls in found:
                _register_platform(registry, impl.plugin_name, cls)
        except Exception as err:
            registry.unavailable[impl.plugin_name] = f"register failed: {type(err).__name__}: {err}"
            _LOGGER.error("Plugin %s failed to register its platforms: %s: %s; its accounts are disabled",
                          impl.plugin_name, type(err).__name__, err)
    return registry


def unavailable_platforms(registry: PluginRegistry) -> dict[str, str]:
    """Platform names (by convention the entry-point name) that a failed plugin would have provided."""
    return {name: reason for name, reason in registry.unavailable.items() if name not in registry.platforms}
