"""The canonical services (device actions), their payloads and the controls that press them.

A command arrives on ``<base>/<account>/<device>/<service>/set`` as ``PRESS``, ``ON``/``OFF``, a text
value or a JSON object. :func:`parse_payload` turns it into validated parameters or raises
:class:`~fleetbridge.errors.Rejected` before any vendor is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import voluptuous as vol

from .errors import Rejected
from .validate import integer, number

MAX_PAYLOAD = 4096


Text = vol.All(str, vol.Strip, vol.Length(min=1, max=1000))


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceDescription:
    """One service: its payload, how dangerous it is, and the control that presses it."""

    name: str
    title: str
    params: vol.Schema = field(default_factory=lambda: vol.Schema({}))
    text_param: str | None = None  # a plain-text payload fills this parameter
    component: str | None = "button"  # Home Assistant control; None: MQTT/CLI only
    dangerous: bool = False  # disabled until the account's `services:` enables it
    icon: str | None = None
    entity_category: str | None = None
    number_range: tuple[float, float, float] | None = None  # min, max, step for number controls
    confirm: bool = False  # irreversible: the payload must repeat the device's name or id


SERVICES: tuple[ServiceDescription, ...] = (
    ServiceDescription(name="engine_stop", title="Engine stop", dangerous=True, icon="mdi:engine-off"),
    ServiceDescription(name="engine_resume", title="Engine resume", icon="mdi:engine"),
    ServiceDescription(name="lock_doors", title="Lock doors", component=None, icon="mdi:car-door-lock"),
    ServiceDescription(name="unlock_doors", title="Unlock doors", component=None, dangerous=True,
                       icon="mdi:car-door"),
    ServiceDescription(name="reboot", title="Reboot", icon="mdi:restart", entity_category="config"),
    ServiceDescription(
        name="set_odometer", title="Set odometer", component="number", text_param="odometer",
        params=vol.Schema({vol.Required("odometer"): vol.All(number, vol.Range(min=0, max=10_000_000))}),
        icon="mdi:counter", entity_category="config", number_range=(0, 10_000_000, 0.1),
    ),
    ServiceDescription(
        name="send_sms", title="Send SMS", component="text", text_param="message",
        params=vol.Schema({vol.Required("message"): vol.All(str, vol.Length(min=1, max=160))}),
        icon="mdi:message-arrow-right",
    ),
    ServiceDescription(name="sim_suspend", title="Suspend SIM", dangerous=True, icon="mdi:sim-off",
                       entity_category="config"),
    ServiceDescription(name="sim_restore", title="Restore SIM", icon="mdi:sim", entity_category="config"),
    # billed per call by the carrier: off unless enabled, like the dangerous ones
    ServiceDescription(name="locate", title="Locate", icon="mdi:crosshairs-gps", dangerous=True),
    ServiceDescription(
        name="set_usage_limit", title="Set usage limit", component=None, text_param="limit_mb",
        params=vol.Schema({vol.Required("limit_mb"): vol.All(number, vol.Range(min=0))}),
    ),
    ServiceDescription(name="remove_usage_limit", title="Remove usage limit", component=None),
    ServiceDescription(name="terminate", title="Terminate line", component=None, dangerous=True,
                       text_param="confirm", params=vol.Schema({vol.Required("confirm"): Text}), confirm=True),
    ServiceDescription(
        name="set_note", title="Note", component="text", text_param="note",
        params=vol.Schema({vol.Required("note"): vol.All(str, vol.Length(max=1000))}),
        entity_category="config", icon="mdi:note-text",
    ),
    ServiceDescription(name="add_label", title="Add label", component="text", text_param="label",
                       params=vol.Schema({vol.Required("label"): Text}), icon="mdi:label-outline",
                       entity_category="config"),
    ServiceDescription(name="remove_label", title="Remove label", component="text", text_param="label",
                       params=vol.Schema({vol.Required("label"): Text}), icon="mdi:label-off-outline",
                       entity_category="config"),
    ServiceDescription(
        name="create_geofence", title="Create geofence", component=None,
        params=vol.Schema({
            vol.Required("name"): vol.All(str, vol.Strip, vol.Length(min=1, max=64)),
            vol.Required("latitude"): vol.All(number, vol.Range(min=-90, max=90)),
            vol.Required("longitude"): vol.All(number, vol.Range(min=-180, max=180)),
            vol.Required("radius"): vol.All(integer, vol.Range(min=100, max=5000)),
            vol.Optional("alarm", default="both"): vol.In(["in", "out", "both"]),
        }),
    ),
)

SERVICE_BY_NAME: dict[str, ServiceDescription] = {s.name: s for s in SERVICES}


@dataclass(frozen=True, kw_only=True, slots=True)
class ControlDescription:
    """A Home Assistant control that maps its payloads onto several services (a lock)."""

    key: str
    name: str
    component: str
    commands: dict[str, str]  # payload -> service
    icon: str | None = None
    state_template: str | None = None  # over the state JSON; None: optimistic control
    entity_category: str | None = None


CONTROLS: tuple[ControlDescription, ...] = (
    ControlDescription(key="door_lock", name="Door lock", component="lock", icon="mdi:car-door-lock",
                       commands={"LOCK": "lock_doors", "UNLOCK": "unlock_doors"}),
    ControlDescription(
        key="sim", name="SIM active", component="switch", icon="mdi:sim",
        commands={"ON": "sim_restore", "OFF": "sim_suspend"},
        state_template="{% set s = value_json.get('sim_state') %}"
                       "{{ none if s is none else ('ON' if s == 'active' else 'OFF') }}",
    ),
)

CONTROL_BY_KEY: dict[str, ControlDescription] = {c.key: c for c in CONTROLS}


def decode_payload(raw: bytes | bytearray | str) -> Any:
    """Bytes of a command payload -> ``str`` or a JSON object (dict). Raises Rejected."""
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_PAYLOAD:
            raise Rejected(f"payload too large ({len(raw)} bytes, at most {MAX_PAYLOAD})")
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected("payload is not UTF-8 text") from None
    else:
        text = raw
    if len(text) > MAX_PAYLOAD:
        raise Rejected(f"payload too large (at most {MAX_PAYLOAD} characters)")
    if "\x00" in text:
        raise Rejected("payload contains a NUL character")
    text = text.strip()
    if text.startswith(("{", "[")):
        try:
            value = json.loads(text)
        except ValueError:
            raise Rejected("payload is not valid JSON") from None
        if not isinstance(value, dict):
            raise Rejected("JSON payload must be an object")
        return value
    return text


def parse_payload(service: ServiceDescription, raw: bytes | bytearray | str) -> dict[str, Any]:
    """Validate a command payload for ``service``; return its parameters or raise Rejected."""
    value = decode_payload(raw)
    if isinstance(value, str):
        if service.text_param is not None:
            value = {service.text_param: value}
        elif value.upper() in ("", "PRESS", "ON"):
            value = {}
        else:
            raise Rejected(f"{service.name} takes PRESS (or an empty JSON object), not {value[:40]!r}")
    try:
        return dict(service.params(value))
    except vol.Invalid as err:
        path = ".".join(str(p) for p in err.path)
        raise Rejected(f"{service.name}: {err.msg}" + (f" at '{path}'" if path else "")) from None
