"""The whole plugin contract of fleetbridge.

A plugin is a module (or object) registered under the ``fleetbridge`` entry-point group, with
functions marked ``@fleetbridge.hookimpl``. Built-in plugins are registered the same way. A hook
implementation may accept only the arguments it needs.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("fleetbridge")
hookimpl = pluggy.HookimplMarker("fleetbridge")


@hookspec
def fleetbridge_register_platforms(register: Callable[[type], None]) -> None:
    """Register platform classes: call ``register(MyPlatform)`` for each
    :class:`fleetbridge.platform.Platform` subclass this plugin provides."""


@hookspec
def fleetbridge_state_changed(account: str, device: str, state: dict[str, Any], changed: dict[str, Any]) -> None:
    """Observer: a device's canonical state changed. ``changed`` holds the keys that changed
    (None for a removed key). Called in the bridge's event loop; must not block."""


@hookspec
def fleetbridge_event(account: str, device: str, event: dict[str, Any]) -> None:
    """Observer: an event (alarm) was delivered, with the payload published on MQTT."""


@hookspec
def fleetbridge_service_result(account: str, device: str, result: dict[str, Any]) -> None:
    """Observer: a service call produced a result message (pending, success, failed...)."""
