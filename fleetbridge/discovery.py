"""Home Assistant MQTT discovery, built from the entity and service tables.

Two shapes from one component list: device-based (``<prefix>/device/<node>/config``, one message
per device, Home Assistant 2024.11+) and per-entity (``<prefix>/<component>/<node>/<key>/config``,
for older Home Assistant and openHAB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import __version__
from .entities import STATE_KEYS
from .services import CONTROLS, SERVICE_BY_NAME

ORIGIN = {"name": "fleetbridge", "sw": __version__}
BOOL_PAYLOADS = {"pl_on": "True", "pl_off": "False"}
#: the entity that carries the free-form ``attributes`` of a device, first present wins
ATTRIBUTE_HOLDERS = ("online", "sim_state", "line_status", "lifecycle_state", "comm_status")


@dataclass(frozen=True, kw_only=True, slots=True)
class Topics:
    """Topic names of one bridge instance."""

    base: str
    prefix: str

    def bridge(self, leaf: str) -> str:
        return f"{self.base}/bridge/{leaf}"

    def device(self, account: str, device: str, leaf: str) -> str:
        return f"{self.base}/{account}/{device}/{leaf}"

    def command(self, account: str, device: str, service: str) -> str:
        return f"{self.base}/{account}/{device}/{service}/set"

    def device_config(self, node: str) -> str:
        return f"{self.prefix}/device/{node}/config"

    def entity_config(self, component: str, node: str, key: str) -> str:
        return f"{self.prefix}/{component}/{node}/{key}/config"


def _value(key: str) -> str:
    """A template over the state JSON that renders ``None`` (unknown) for a missing key."""
    return "{{ value_json.get('%s') }}" % key


LOCATION_TEMPLATE = (
    "{% if value_json.latitude is defined and value_json.longitude is defined %}"
    "{{ {'latitude': value_json.latitude, 'longitude': value_json.longitude, "
    "'gps_accuracy': value_json.get('gps_accuracy', 0)} | tojson }}{% else %}{}{% endif %}"
)


def _state_components(node: str, state_topic: str, keys: frozenset[str]) -> dict[str, dict[str, Any]]:
    comps: dict[str, dict[str, Any]] = {}
    if "latitude" in keys and "longitude" in keys:
        comps["location"] = {
            "p": "device_tracker", "name": None, "json_attr_t": state_topic,
            "json_attr_tpl": LOCATION_TEMPLATE, "source_type": "gps", "ic": "mdi:map-marker",
        }
    for desc in STATE_KEYS:
        if desc.component is None or desc.key not in keys:
            continue
        comp: dict[str, Any] = {"p": desc.component, "name": desc.name, "stat_t": state_topic,
                                "val_tpl": _value(desc.key)}
        if desc.component == "binary_sensor":
            comp.update(BOOL_PAYLOADS)
        for field, abbr in (("device_class", "dev_cla"), ("unit", "unit_of_meas"), ("state_class", "stat_cla"),
                            ("entity_category", "ent_cat"), ("icon", "ic"), ("precision", "sug_dsp_prc")):
            value = getattr(desc, field)
            if value is not None:
                comp[abbr] = value
        if not desc.enabled_default:
            comp["en"] = False
        comps[desc.key] = comp
    if "attributes" in keys:
        holder = next((comps[k] for k in ATTRIBUTE_HOLDERS if k in comps),
                      next((c for c in comps.values() if c["p"] in ("sensor", "binary_sensor")), None))
        if holder is not None:
            holder["json_attr_t"] = state_topic
            holder["json_attr_tpl"] = "{{ value_json.get('attributes', {}) | tojson }}"
    return comps


def _control_components(services: tuple[str, ...], command, state_topic: str) -> dict[str, dict[str, Any]]:
    comps: dict[str, dict[str, Any]] = {}
    for name in services:
        desc = SERVICE_BY_NAME[name]
        if desc.component is None:
            continue
        comp: dict[str, Any] = {"p": desc.component, "name": desc.title, "cmd_t": command(name)}
        if desc.component == "button":
            comp["pl_prs"] = "PRESS"
        elif desc.component == "number":
            low, high, step = desc.number_range or (0, 1e9, 1)
            param_key = desc.text_param or ""
            comp.update({"min": low, "max": high, "step": step, "mode": "box", "stat_t": state_topic,
                         "val_tpl": _value(_NUMBER_STATE.get(param_key, param_key))})
            if param_key == "odometer":
                comp["unit_of_meas"] = "km"
        elif desc.component == "text":
            comp.update({"min": 0, "max": 255})
        if desc.icon:
            comp["ic"] = desc.icon
        if desc.entity_category:
            comp["ent_cat"] = desc.entity_category
        comps[name] = comp
    for control in CONTROLS:
        if any(svc in services for svc in control.commands.values()):
            comp = {"p": control.component, "name": control.name, "cmd_t": command(control.key)}
            if control.state_template:
                comp.update({"stat_t": state_topic, "val_tpl": control.state_template})
            else:
                comp["opt"] = True
            if control.component == "lock":
                comp.update({"pl_lock": "LOCK", "pl_unlk": "UNLOCK"})
            elif control.component == "switch":
                comp.update({"pl_on": "ON", "pl_off": "OFF"})
            if control.entity_category:
                comp["ent_cat"] = control.entity_category
            if control.icon:
                comp["ic"] = control.icon
            comps[control.key] = comp
    return comps


#: number controls show the state key they set
_NUMBER_STATE = {"odometer": "odometer"}


def _event_components(event_topic: str, event_types: tuple[str, ...], triggers: bool) -> dict[str, dict[str, Any]]:
    if not event_types:
        return {}
    comps: dict[str, dict[str, Any]] = {
        "alarm": {"p": "event", "name": "Alarm", "stat_t": event_topic, "evt_typ": list(event_types),
                  "ic": "mdi:alarm-light"},
    }
    if triggers:
        for event_type in event_types:
            comps[f"trigger_{event_type}"] = {
                "p": "device_automation", "automation_type": "trigger", "topic": event_topic,
                "type": event_type, "subtype": "alarm", "payload": event_type,
                "value_template": "{{ value_json.event_type }}",
            }
    return comps


def device_components(
    topics: Topics, account: str, device: str, keys: frozenset[str], services: tuple[str, ...],
    event_types: tuple[str, ...], triggers: bool = True,
) -> dict[str, dict[str, Any]]:
    """Every component of one device, keyed by entity key (device-discovery ``cmps`` shape)."""
    state_topic = topics.device(account, device, "state")
    comps = _state_components(f"{account}_{device}", state_topic, keys)
    comps.update(_control_components(services, lambda svc: topics.command(account, device, svc), state_topic))
    comps.update(_event_components(topics.device(account, device, "event"), event_types, triggers))
    node = f"{account}_{device}"
    for key, comp in comps.items():
        if comp["p"] == "device_automation":
            continue
        comp["uniq_id"] = f"fleetbridge_{node}_{key}"
        comp["default_entity_id"] = f"{comp['p']}.{node}_{key}"
        comp["qos"] = 1
    return comps


def bridge_components(topics: Topics, bridge_id: str, accounts: list[str]) -> dict[str, dict[str, Any]]:
    """The bridge's own entities: connection state, device count, one status per account."""
    info = topics.bridge("info")
    comps: dict[str, dict[str, Any]] = {
        "connection_state": {"p": "binary_sensor", "name": "Connection state", "stat_t": topics.bridge("state"),
                             "pl_on": "online", "pl_off": "offline", "dev_cla": "connectivity",
                             "ent_cat": "diagnostic"},
        "device_count": {"p": "sensor", "name": "Devices", "stat_t": info, "ic": "mdi:car-multiple",
                         "val_tpl": "{{ value_json.get('device_count') }}", "stat_cla": "measurement"},
    }
    for account in accounts:
        comps[f"account_{account}"] = {
            "p": "sensor", "name": f"Account {account}", "stat_t": info, "ic": "mdi:cloud-check",
            "val_tpl": "{{ value_json.accounts.get('%s', {}).get('status') }}" % account,
            "json_attr_t": info, "json_attr_tpl": "{{ value_json.accounts.get('%s', {}) | tojson }}" % account,
            "ent_cat": "diagnostic",
        }
    for key, comp in comps.items():
        comp["uniq_id"] = f"{bridge_id}_{key}"
        comp["default_entity_id"] = f"{comp['p']}.{bridge_id}_{key}"
        comp["qos"] = 1
    return comps


def device_block(node_id: str, info: dict[str, Any], via: str | None) -> dict[str, Any]:
    block: dict[str, Any] = {"ids": [node_id], "name": info.get("name") or node_id}
    for field, abbr in (("manufacturer", "mf"), ("model", "mdl"), ("sw_version", "sw"), ("hw_version", "hw"),
                        ("serial_number", "sn"), ("suggested_area", "sa")):
        if info.get(field):
            block[abbr] = str(info[field])
    if via:
        block["via_device"] = via
    return block


def availability(topics: list[str]) -> dict[str, Any]:
    return {"avty": [{"topic": t} for t in topics], "avty_mode": "all"}


def build_configs(
    mode: str, topics: Topics, node: str, device: dict[str, Any], comps: dict[str, dict[str, Any]],
    avty_topics: list[str],
) -> dict[str, dict[str, Any]]:
    """Discovery topic -> payload for one device in ``mode`` (``device`` or ``entity``)."""
    shared = availability(avty_topics)
    if mode == "device":
        return {topics.device_config(node): {"dev": device, "o": ORIGIN, **shared, "qos": 1, "cmps": comps}}
    configs: dict[str, dict[str, Any]] = {}
    for key, comp in comps.items():
        payload = {k: v for k, v in comp.items() if k != "p"}
        payload["dev"] = device
        payload["o"] = ORIGIN
        if comp["p"] != "device_automation":
            payload.update(shared)
        configs[topics.entity_config(comp["p"], node, key)] = payload
    return configs


def owned_by(payload: dict[str, Any], bridge_id: str) -> bool:
    """Whether a retained discovery payload was published by this bridge instance."""
    dev = payload.get("dev") or payload.get("device") or {}
    if not isinstance(dev, dict):
        return False
    ids = dev.get("ids") or dev.get("identifiers") or []
    ids = [ids] if isinstance(ids, str) else ids
    return dev.get("via_device") == bridge_id or bridge_id in ids
