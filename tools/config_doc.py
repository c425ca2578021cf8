#!/usr/bin/env python3
"""Regenerate docs/configuration.md from the voluptuous schemas: python3 tools/config_doc.py

Keys, defaults and descriptions come from the schemas themselves (``description=`` on each key), so
the reference cannot drift; a test fails when this file is stale or a key has no description.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import voluptuous as vol

from fleetbridge.config import HTTP_SCHEMA, MQTT_SCHEMA, TOP_SCHEMA
from fleetbridge.platform import BASE_ACCOUNT_SCHEMA, SIMULATOR_SCHEMA
from fleetbridge.plugins import load_plugins

INTRO = """# Configuration reference

Generated from the schemas by `python3 tools/config_doc.py`; do not edit by hand.

One YAML file (`fleetbridge run -c config.yaml`). `!secret name` reads `secrets.yaml` beside it (as
Home Assistant does) and `!env VAR` / `!env VAR default` reads the environment. Any problem exits
with code 2 and names the file, line, key and problem; `fleetbridge check-config` validates without
running. `config.example.yaml` is a complete example that runs out of the box.
"""


def _yaml(value: Any) -> str:
    """A default as it would be written in the YAML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value if not isinstance(value, tuple) else list(value))
    return str(value)


def _default(marker: Any) -> str:
    default = getattr(marker, "default", vol.UNDEFINED)
    if default is vol.UNDEFINED:
        return "required" if isinstance(marker, vol.Required) else ""
    value = default() if callable(default) else default  # voluptuous wraps plain defaults in a lambda
    return f"`{_yaml(value)}`" if value != "" else ""


def _cell(text: str) -> str:
    """Table-safe: a ``|`` (even inside a code span) would end the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def rows(schema: vol.Schema, skip: set[str] | None = None) -> list[str]:
    out = ["| key | default | meaning |", "|---|---|---|"]
    for marker in schema.schema:
        key = str(marker.schema)
        if skip and key in skip:
            continue
        description = _cell(getattr(marker, "description", None) or "")
        out.append(f"| `{key}` | {_cell(_default(marker))} | {description} |")
    return out


def builtin_platforms() -> dict[str, Any]:
    """The platforms this package ships (third-party plugins installed here are not documented)."""
    return {name: cls for name, cls in sorted(load_plugins().platforms.items())
            if cls.__module__.startswith("fleetbridge_plugins.")}


def missing_descriptions() -> list[str]:
    """Keys without a description (a test keeps this empty)."""
    schemas = {"top": TOP_SCHEMA, "mqtt": MQTT_SCHEMA, "http": HTTP_SCHEMA, "account": BASE_ACCOUNT_SCHEMA,
               "simulator": SIMULATOR_SCHEMA}
    schemas.update({f"platform {n}": cls.CONFIG_SCHEMA for n, cls in builtin_platforms().items()})
    return [f"{where}: {marker.schema}" for where, schema in schemas.items() for marker in schema.schema
            if not getattr(marker, "description", None)]


def render() -> str:
    lines = [INTRO, "## Top level", "", *rows(TOP_SCHEMA), "", "## `mqtt:`", "", *rows(MQTT_SCHEMA), "",
             "## `http:`", "", *rows(HTTP_SCHEMA), "", "## `accounts:`", "",
             "A list; each entry is one use of a platform. Keys every platform takes:", "",
             *rows(BASE_ACCOUNT_SCHEMA), "", "`simulator:` options:", "", *rows(SIMULATOR_SCHEMA)]
    base = {str(m.schema) for m in BASE_ACCOUNT_SCHEMA.schema}
    for name, cls in builtin_platforms().items():
        lines += ["", f"### `platform: {name}` ({cls.title})", "", *rows(cls.CONFIG_SCHEMA, skip=base)]
        if cls.RATE_LIMITS:
            kinds = ", ".join(f"`{k}` {v.min_interval:g} s" if v.min_interval else f"`{k}`"
                              for k, v in cls.RATE_LIMITS.items())
            lines += ["", f"Request kinds for `rate_limits:` (default minimum gaps): {kinds}."]
        if cls.SERVICES:
            lines += ["", f"Services: {', '.join(f'`{s}`' for s in cls.SERVICES)}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").write_text(render())
