"""The canonical device vocabulary: state keys and the Home Assistant entities they become.

Declared once, here, as data. Plugins map vendor fields onto these keys; discovery, the state JSON
and the CLI are all built from these tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DIAGNOSTIC = "diagnostic"


@dataclass(frozen=True, kw_only=True, slots=True)
class StateKey:
    """One canonical state key and the entity that shows it."""

    key: str
    name: str
    type: type  # float, int, bool or str (ISO 8601 times are str)
    component: str | None = "sensor"  # None: carried in the state JSON, no entity of its own
    device_class: str | None = None
    unit: str | None = None
    state_class: str | None = None
    entity_category: str | None = None
    icon: str | None = None
    enabled_default: bool = True
    precision: int | None = None


STATE_KEYS: tuple[StateKey, ...] = (
    # latitude/longitude/gps_accuracy feed the device_tracker (see LOCATION_KEYS), not entities.
    StateKey(key="latitude", name="Latitude", type=float, component=None),
    StateKey(key="longitude", name="Longitude", type=float, component=None),
    StateKey(key="gps_accuracy", name="GPS accuracy", type=float, component=None),
    StateKey(key="altitude", name="Altitude", type=float, device_class="distance", unit="m",
             state_class="measurement", icon="mdi:elevation-rise", enabled_default=False),
    StateKey(key="speed", name="Speed", type=float, device_class="speed", unit="km/h",
             state_class="measurement"),
    StateKey(key="heading", name="Heading", type=int, unit="°", state_class="measurement",
             icon="mdi:compass-outline", enabled_default=False),
    StateKey(key="gps_time", name="GPS time", type=str, device_class="timestamp",
             entity_category=DIAGNOSTIC),
    StateKey(key="last_seen", name="Last seen", type=str, device_class="timestamp",
             entity_category=DIAGNOSTIC),
    StateKey(key="online", name="Online", type=bool, component="binary_sensor",
             device_class="connectivity", entity_category=DIAGNOSTIC),
    StateKey(key="battery", name="Battery", type=int, device_class="battery", unit="%",
             state_class="measurement"),
    StateKey(key="voltage", name="External power", type=float, device_class="voltage", unit="V",
             state_class="measurement"),
    StateKey(key="ignition", name="Ignition", type=bool, component="binary_sensor",
             device_class="power", icon="mdi:engine"),
    StateKey(key="door_open", name="Door", type=bool, component="binary_sensor", device_class="door"),
    StateKey(key="charging", name="Charging", type=bool, component="binary_sensor",
             device_class="battery_charging"),
    StateKey(key="fuel_cut", name="Fuel cut", type=bool, component="binary_sensor",
             device_class="problem", icon="mdi:engine-off"),
    StateKey(key="armed", name="Armed", type=bool, component="binary_sensor", icon="mdi:shield-car"),
    StateKey(key="odometer", name="Odometer", type=float, device_class="distance", unit="km",
             state_class="total_increasing", icon="mdi:counter", precision=1),
    StateKey(key="trip_distance_today", name="Distance today", type=float, device_class="distance",
             unit="km", state_class="total_increasing", icon="mdi:map-marker-distance", precision=1),
    StateKey(key="data_used", name="Data used", type=int, device_class="data_size", unit="B",
             state_class="total_increasing"),
    StateKey(key="sms_used", name="SMS used", type=int, state_class="total_increasing",
             icon="mdi:message-text"),
    StateKey(key="signal", name="Signal", type=int, device_class="signal_strength", unit="dBm",
             state_class="measurement", entity_category=DIAGNOSTIC),
    StateKey(key="temperature", name="Temperature", type=float, device_class="temperature", unit="°C",
             state_class="measurement"),
    StateKey(key="fuel_level", name="Fuel level", type=float, unit="%", state_class="measurement",
             icon="mdi:gas-station"),
    StateKey(key="sim_state", name="SIM state", type=str, icon="mdi:sim", entity_category=DIAGNOSTIC),
    StateKey(key="idle_time", name="Idle time", type=int, device_class="duration", unit="s",
             state_class="measurement", entity_category=DIAGNOSTIC),
    StateKey(key="expires_at", name="Service expiry", type=str, device_class="timestamp",
             entity_category=DIAGNOSTIC, enabled_default=False),
    # cellular data and SIMs
    StateKey(key="data_used_today", name="Data used today", type=int, device_class="data_size", unit="B",
             state_class="total_increasing"),
    StateKey(key="data_used_month", name="Data used this month", type=int, device_class="data_size", unit="B",
             state_class="total_increasing"),
    StateKey(key="data_allowance_used", name="Data allowance used", type=float, unit="%",
             state_class="measurement", icon="mdi:chart-donut"),
    StateKey(key="data_sent", name="Data sent", type=int, device_class="data_size", unit="B",
             state_class="total_increasing", entity_category=DIAGNOSTIC),
    StateKey(key="data_received", name="Data received", type=int, device_class="data_size", unit="B",
             state_class="total_increasing", entity_category=DIAGNOSTIC),
    StateKey(key="ip_address", name="IP address", type=str, icon="mdi:ip-network", entity_category=DIAGNOSTIC),
    StateKey(key="imei", name="IMEI", type=str, icon="mdi:identifier", entity_category=DIAGNOSTIC,
             enabled_default=False),
    StateKey(key="iccid", name="ICCID", type=str, icon="mdi:sim", entity_category=DIAGNOSTIC,
             enabled_default=False),
    StateKey(key="msisdn", name="MSISDN", type=str, icon="mdi:phone", entity_category=DIAGNOSTIC,
             enabled_default=False),
    StateKey(key="mdn", name="MDN", type=str, icon="mdi:phone", entity_category=DIAGNOSTIC, enabled_default=False),
    # radio and gateway health
    StateKey(key="rsrp", name="RSRP", type=int, device_class="signal_strength", unit="dBm",
             state_class="measurement", entity_category=DIAGNOSTIC, enabled_default=False),
    StateKey(key="rsrq", name="RSRQ", type=int, unit="dB", state_class="measurement", icon="mdi:signal",
             entity_category=DIAGNOSTIC, enabled_default=False),
    StateKey(key="sinr", name="SINR", type=float, unit="dB", state_class="measurement", icon="mdi:signal",
             entity_category=DIAGNOSTIC, enabled_default=False),
    StateKey(key="network_operator", name="Network operator", type=str, icon="mdi:radio-tower",
             entity_category=DIAGNOSTIC),
    StateKey(key="network_type", name="Network type", type=str, icon="mdi:signal-4g", entity_category=DIAGNOSTIC),
    StateKey(key="reset_count", name="Resets", type=int, state_class="total_increasing", icon="mdi:restart",
             entity_category=DIAGNOSTIC, enabled_default=False),
    StateKey(key="cpu_temperature", name="CPU temperature", type=float, device_class="temperature", unit="°C",
             state_class="measurement", entity_category=DIAGNOSTIC),
    StateKey(key="comm_status", name="Communication status", type=str, icon="mdi:lan-connect",
             entity_category=DIAGNOSTIC),
    StateKey(key="lifecycle_state", name="Lifecycle state", type=str, icon="mdi:state-machine",
             entity_category=DIAGNOSTIC),
    # mobile lines and assets
    StateKey(key="line_status", name="Line status", type=str, icon="mdi:phone-check"),
    StateKey(key="plan", name="Plan", type=str, icon="mdi:file-document-outline", entity_category=DIAGNOSTIC),
    StateKey(key="carrier", name="Carrier", type=str, icon="mdi:radio-tower", entity_category=DIAGNOSTIC),
    StateKey(key="assigned_to", name="Assigned to", type=str, icon="mdi:account"),
    StateKey(key="open_orders", name="Open orders", type=int, state_class="measurement", icon="mdi:cart"),
    # free-form extras (notes, cost centre, labels): JSON attributes of the `online` entity
    StateKey(key="attributes", name="Attributes", type=dict, component=None),
)

STATE_KEY_BY_NAME: dict[str, StateKey] = {k.key: k for k in STATE_KEYS}

#: Keys that make up a position; a device with latitude and longitude gets a device_tracker.
LOCATION_KEYS = ("latitude", "longitude", "gps_accuracy")


def _to_float(value: Any) -> float:
    """A finite float with at most 6 decimals (float noise such as 12.300000000000001 removed).
    ``round(x * 1e6) / 1e6``: the nearest float to a whole number of millionths, as short in
    JSON as ``round(x, 6)`` and a quarter of its cost; beyond 1e15 a float has no decimals left."""
    number = float(value)
    if number - number != 0.0:  # nan, inf
        raise ValueError("not a finite number")
    return round(number * 1e6) / 1e6 if -1e15 < number < 1e15 else number


def _to_int(value: Any) -> int:
    return int(round(float(value)))


def _to_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError("not a boolean")
    return value


def _to_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("not a mapping")
    return {str(k): v for k, v in value.items() if isinstance(v, (str, int, float, bool, list))}


#: canonical key -> its declared type
TYPES: dict[str, type] = {k.key: k.type for k in STATE_KEYS}
#: canonical key -> converter to its declared type (raises TypeError/ValueError/OverflowError)
CONVERTERS: dict[str, Any] = {
    k.key: {float: _to_float, int: _to_int, bool: _to_bool, dict: _to_dict}.get(k.type, str) for k in STATE_KEYS
}


def coerce_state(state: dict[str, Any]) -> dict[str, Any]:
    """Return ``state`` limited to canonical keys with values of the declared type.

    ``None`` means "not reported" and is dropped; so is a value that cannot be converted.
    """
    out: dict[str, Any] = {}
    types, converters = TYPES, CONVERTERS
    for key, value in state.items():
        kind = type(value)
        if kind is types.get(key) and kind is not float and kind is not dict:
            out[key] = value  # already canonical (bool, int, str): the common case, no call
            continue
        convert = converters.get(key)
        if convert is None or value is None:
            continue
        try:
            out[key] = convert(value)
        except (TypeError, ValueError, OverflowError):
            continue
    return out
