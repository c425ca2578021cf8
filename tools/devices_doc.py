#!/usr/bin/env python3
"""Regenerate docs/devices.md from the entity and service tables: python3 tools/devices_doc.py"""

from __future__ import annotations

from pathlib import Path

from fleetbridge.entities import STATE_KEYS
from fleetbridge.services import CONTROLS, SERVICES

HEAD = """# Devices: canonical state keys, entities and services

One vocabulary across vendors. The tables live in `fleetbridge/entities.py` and
`fleetbridge/services.py`; this page is generated from them (`python3 tools/devices_doc.py`) and a
test keeps the two in step. A device's state JSON holds only the keys its vendor reports; a missing
key means "not reported" and shows as unknown in Home Assistant. Times are ISO 8601 UTC.
"""


def render() -> str:
    lines = [HEAD, "## State keys", "", "| key | type | unit | Home Assistant entity | notes |", "|---|---|---|---|---|"]
    for k in STATE_KEYS:
        if k.key == "attributes":
            entity = "JSON attributes of the `online` entity (else `sim_state`, `line_status`, ...)"
        else:
            entity = k.component or "device_tracker (location)"
        notes = [f"device_class {k.device_class}"] if k.device_class else []
        notes += [k.entity_category] if k.entity_category else []
        notes += [] if k.enabled_default else ["disabled by default"]
        lines.append(f"| `{k.key}` | {k.type.__name__} | {k.unit or ''} | {entity} | {', '.join(notes)} |")
    lines += ["", "## Services", "", "| service | payload | control | dangerous (off unless enabled) |",
              "|---|---|---|---|"]
    for s in SERVICES:
        if s.text_param:
            payload = f"text → `{s.text_param}`, or JSON"
        else:
            payload = "JSON object" if s.params.schema else "PRESS"
        lines.append(f"| `{s.name}` | {payload} | {s.component or 'MQTT / CLI only'} | "
                     f"{'yes' if s.dangerous else 'no'} |")
    lines += ["", '`create_geofence` takes `{"name", "latitude", "longitude", "radius" (100–5000 m), '
              '"alarm": "in"|"out"|"both"}`.', "", "## Controls that combine services", "",
              "| control | component | payloads |", "|---|---|---|"]
    for c in CONTROLS:
        pairs = ", ".join(f"`{p}` → `{s}`" for p, s in c.commands.items())
        lines.append(f"| `{c.key}` | {c.component} | {pairs} |")
    lines += ["", "## Events", "",
              "Alarms use one cross-vendor vocabulary (`fleetbridge/events.py`, Traccar's alarm names as the",
              "model); the vendor's own code and name travel in the payload as `vendor_code` and `vendor_name`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    (Path(__file__).resolve().parent.parent / "docs" / "devices.md").write_text(render())
