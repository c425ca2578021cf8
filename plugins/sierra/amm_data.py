"""AMM data ids (ALEOS stats) and how they become canonical state: the table, conversions, staleness.

Values arrive as strings, each with its own epoch-millisecond timestamp. A stat maps to a canonical
key (:mod:`fleetbridge.entities`), to ``attributes.<name>``, or to ``sw_version`` (the firmware,
shown as the device's software version and as ``attributes.software_version``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import voluptuous as vol

from fleetbridge.entities import STATE_KEY_BY_NAME
from fleetbridge.validate import number

from .common import ms_to_iso, ms_to_seconds

MPH_TO_KMH = 1.609344
ATTR_PREFIX = "attributes."
SW_VERSION = "sw_version"
#: targets whose old values are still true (identity, firmware): never dropped as stale
STATIC_TARGETS = frozenset({"iccid", "imei", "msisdn", SW_VERSION})


@dataclass(frozen=True, slots=True)
class Stat:
    """One AMM data id and where its value goes."""

    id: str
    target: str
    scale: float | None = None  # multiply a numeric value (mph -> km/h)

    @property
    def live(self) -> bool:
        """Whether a value of this stat goes stale (location, radio, counters do; identity does not)."""
        return self.target not in STATIC_TARGETS

    @property
    def state_key(self) -> str | None:
        return self.target if self.target in STATE_KEY_BY_NAME else None


DEFAULT_STATS: tuple[Stat, ...] = (
    Stat("GPS Location-latitude", "latitude"),
    Stat("GPS Location-longitude", "longitude"),
    Stat("GPS Location-speedmph", "speed", scale=MPH_TO_KMH),
    Stat("ReportIdleTime", "idle_time"),
    Stat("CellLink-RSSI", "signal"),
    Stat("CellLink-RSRP", "rsrp"),
    Stat("CellLink-RSRQ", "rsrq"),
    Stat("CellLink-SINR", "sinr"),
    Stat("CellLink-txBytes", "data_sent"),
    Stat("CellLink-rxBytes", "data_received"),
    Stat("CellLink-IPAddress", "ip_address"),
    Stat("CellLink-ICCID", "iccid"),
    Stat("CellLink-CurrentNetworkOperator", "network_operator"),
    Stat("CellLink-NetworkServiceType", "network_type"),
    Stat("ResetCount", "reset_count"),
    Stat("SoftwareVersion", SW_VERSION),
    Stat("CPU-Temperature", "cpu_temperature"),
)
GPS_STAT_TARGET = "latitude"  # its timestamp is the fix time (gps_time)


def _target(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise vol.Invalid("expected a canonical key, attributes.<name> or sw_version")
    if value == SW_VERSION or (value.startswith(ATTR_PREFIX) and len(value) > len(ATTR_PREFIX)):
        return value
    desc = STATE_KEY_BY_NAME.get(value)
    if desc is None or value == "attributes" or desc.type is dict:
        raise vol.Invalid(f"unknown canonical key {value!r} (see docs/devices.md), or use attributes.<name>")
    return value


#: ``data_ids:`` in the account config: ``{<AMM id>: <target> | {key, scale} | null}`` merged over the defaults.
DATA_IDS_SCHEMA = vol.Schema({
    str: vol.Any(None, _target, {vol.Required("key"): _target, vol.Optional("scale"): number}),
})


def build_stats(overrides: Mapping[str, Any] | None) -> dict[str, Stat]:
    """The id -> Stat table: the defaults with the config's ``data_ids`` applied (null removes one)."""
    table = {s.id: s for s in DEFAULT_STATS}
    for stat_id, spec in (overrides or {}).items():
        if spec is None:
            table.pop(stat_id, None)
        elif isinstance(spec, str):
            table[stat_id] = Stat(stat_id, spec)
        else:
            table[stat_id] = Stat(stat_id, spec["key"], spec.get("scale"))
    return table


_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)\b", re.IGNORECASE)


def parse_duration(text: str) -> int | None:
    """``"2796808"`` (seconds) or prose such as ``"57 days 0 hour"`` -> seconds; None if neither."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return int(seconds) if seconds >= 0 else None
    parts = _DURATION_RE.findall(text)
    if not parts or _DURATION_RE.sub("", text).strip(" ,and"):
        return None
    return int(sum(float(n) * _DURATION_UNITS[unit[0].lower()] for n, unit in parts))


def convert(stat: Stat, raw: str) -> Any:
    """The value of ``raw`` for ``stat``'s target; None when it does not convert."""
    key = stat.state_key
    if key == "idle_time":
        return parse_duration(raw)
    desc = STATE_KEY_BY_NAME.get(key) if key else None
    if desc is not None and desc.type in (int, float):
        try:
            number = float(raw)
        except ValueError:
            return None
        return number * stat.scale if stat.scale else number
    text = raw.strip()
    return text or None


def latest_values(data: Any) -> dict[str, tuple[str, int | None]]:
    """``{id: (value, timestamp_ms)}`` of a gateway's data, newest entry per id.

    Accepts ``{id: [{value, timestamp}]}`` (single-gateway endpoint) and ``[{id: [...]}, ...]``
    (group endpoint); anything else is skipped.
    """
    items: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [kv for entry in data if isinstance(entry, dict) for kv in entry.items()]
    out: dict[str, tuple[str, int | None]] = {}
    for stat_id, entries in items:
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict) or entry.get("value") in (None, ""):
                continue
            ts = ms_to_seconds(entry.get("timestamp"))
            ms = int(ts * 1000) if ts is not None else None
            previous = out.get(stat_id)
            if previous is None or (ms or 0) > (previous[1] or 0):
                out[stat_id] = (str(entry["value"]), ms)
    return out


@dataclass(slots=True)
class GatewayState:
    """A gateway's canonical state and what it taught us about the device."""

    state: dict[str, Any]
    sw_version: str | None = None


def gateway_state(
    values: Mapping[str, tuple[str, int | None]],
    stats: Mapping[str, Stat],
    *,
    now: float,
    staleness: float | None,
    attributes: Mapping[str, Any],
) -> GatewayState:
    """Canonical state of one gateway; live values older than ``staleness`` seconds are left out."""
    state: dict[str, Any] = {}
    attrs: dict[str, Any] = dict(attributes)
    newest: int | None = None
    sw_version = None
    for stat_id, (raw, ms) in values.items():
        stat = stats.get(stat_id)
        if stat is None:
            continue
        if ms is not None:
            newest = max(newest or ms, ms)
        if staleness and stat.live and (ms is None or now - ms / 1000 > staleness):
            continue
        value = convert(stat, raw)
        if stat.target == SW_VERSION:
            sw_version = raw.strip() or None
            attrs["software_version"] = sw_version
        elif stat.target.startswith(ATTR_PREFIX):
            attrs[stat.target[len(ATTR_PREFIX):]] = raw.strip()
        elif value is not None:
            state[stat.target] = value
        elif stat.target == "idle_time":
            attrs["idle_time_text"] = raw.strip()
        if stat.target == GPS_STAT_TARGET and "latitude" in state and ms is not None:
            state["gps_time"] = ms_to_iso(ms)
    if ("latitude" in state) != ("longitude" in state):  # half a position is no position
        state.pop("latitude", None)
        state.pop("longitude", None)
        state.pop("gps_time", None)
    if newest is not None:
        state["last_seen"] = ms_to_iso(newest)
    state["attributes"] = {k: v for k, v in attrs.items() if v not in (None, "")}
    return GatewayState(state=state, sw_version=sw_version)


def state_keys(stats: Mapping[str, Stat]) -> frozenset[str]:
    """The canonical keys a gateway with ``stats`` can report (its entities)."""
    keys = {s.state_key for s in stats.values() if s.state_key}
    if "latitude" in keys:
        keys.add("gps_time")
    return frozenset(keys | {"last_seen", "attributes"})
