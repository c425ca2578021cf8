"""Lattigo records -> canonical devices and state (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from fleetbridge.platform import DeviceInfo

from .normalize import as_bool, as_float, as_int, as_text, parse_datetime, parse_time

#: Keys every device reports from the device list.
DEVICE_KEYS = frozenset({"online", "last_seen", "data_used", "sms_used", "sim_state", "ip_address", "iccid",
                         "attributes"})
LOCATION_KEYS = frozenset({"latitude", "longitude"})
USAGE_KEYS = frozenset({"data_used_today", "data_used_month"})
ALLOWANCE_KEYS = frozenset({"data_allowance_used"})
REPORT_KEYS = frozenset({"speed", "heading", "altitude", "battery", "voltage", "temperature", "fuel_level",
                         "signal", "gps_time"})
#: Identifier fields: canonical key (a diagnostic entity) and DeviceInfo identifier.
IDENTIFIERS = ("imei", "iccid", "msisdn", "mdn")
EXTRA_IDENTIFIERS = ("imsi", "meid", "esn", "eid")
#: Fields carried as JSON attributes of the `online` entity.
ATTRIBUTE_FIELDS = ("note", "note1", "note2", "note3", "cost_center", "address", "carrier_state",
                    "last_activation_date", "contract_end_date", "location_confidence", "ipv6")
TIME_ATTRIBUTES = frozenset({"last_activation_date", "contract_end_date"})
#: Where a device may name its billing plan (undocumented; first match wins).
PLAN_FIELDS = ("rate_plan_name", "rate_plan", "carrier_rate_plan")
#: Vendor SIM states -> canonical ``sim_state`` (others are passed on lower-cased).
SIM_STATES = {"active": "active", "activated": "active", "suspend": "suspended", "suspended": "suspended",
              "deactive": "deactivated", "deactivated": "deactivated"}
#: ``change_simstate`` value per service, and the canonical state that confirms it.
SIM_TARGETS = {"sim_suspend": ("suspend", "suspended"), "sim_restore": ("restore", "active")}

#: Report field -> (canonical key, converter, valid range or None).
REPORT_FIELDS: dict[str, tuple[str, Callable[[Any], Any], tuple[float, float] | None]] = {
    "speed": ("speed", as_float, (0, 1000)),
    "heading": ("heading", as_int, (0, 360)),
    "altitude": ("altitude", as_float, (-500, 20000)),
    "battery": ("battery", as_int, (0, 100)),
    "voltage": ("voltage", as_float, (0, 100)),
    "temperature": ("temperature", as_float, (-80, 150)),
    "fuel_level": ("fuel_level", as_float, (0, 100)),
    "rssi": ("signal", as_int, (-150, 0)),
    "time_of_fix": ("gps_time", parse_time, None),
}


def device_name(record: Mapping[str, Any]) -> str | None:
    """The key of every per-device path: ``device_name`` (in practice the ICCID), never ``id``."""
    return as_text(record.get("device_name"))


def sim_state(value: Any) -> str | None:
    text = as_text(value)
    if text is None:
        return None
    word = text.lower().replace(" ", "_")
    return SIM_STATES.get(word, word)


def plan_name(record: Mapping[str, Any]) -> str | None:
    for field in PLAN_FIELDS:
        name = as_text(record.get(field))
        if name:
            return name
    return None


def location(record: Mapping[str, Any]) -> tuple[float, float] | None:
    """(latitude, longitude) when valid and not the (0, 0) "no fix" placeholder."""
    lat, lon = as_float(record.get("latitude")), as_float(record.get("longitude"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat, lon) == (0.0, 0.0):
        return None
    return lat, lon


#: Attribute field -> its converter (times to ISO 8601, the rest stripped text).
ATTRIBUTE_CONVERTERS: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
    (field, parse_time if field in TIME_ATTRIBUTES else as_text) for field in ATTRIBUTE_FIELDS)


def attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    get = record.get
    for field, convert in ATTRIBUTE_CONVERTERS:
        value = get(field)
        if value is not None:  # both converters give None for None
            value = convert(value)
            if value is not None:
                out[field] = value
    return out


#: Identifier key -> the fields that may give it, the first present wins (``device_name`` is in
#: practice the ICCID).
IDENTIFIER_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (key, (key, "device_name") if key == "iccid" else (key,)) for key in IDENTIFIERS)
#: Device object field -> (canonical key, converter), in the state's key order; ``ip_address``,
#: ``plan`` and ``attributes`` come between these and the identifiers.
DEVICE_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("connected", "online", as_bool),
    ("last_connection_date", "last_seen", parse_time),
    ("bytes_used", "data_used", as_int),
    ("sms_used", "sms_used", as_int),
    ("state", "sim_state", sim_state),
)


def device_state(record: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical state from one device object (absent values left out)."""
    state: dict[str, Any] = {}
    get = record.get
    for field, key, convert in DEVICE_FIELDS:
        value = get(field)
        if value is not None and (value := convert(value)) is not None:
            state[key] = value
    ip = as_text(get("ip_address")) or as_text(get("ipv6"))
    if ip is not None:
        state["ip_address"] = ip
    plan = plan_name(record)
    if plan is not None:
        state["plan"] = plan
    extra = attributes(record)
    if extra:
        state["attributes"] = extra
    for key, fields in IDENTIFIER_FIELDS:
        for field in fields:
            value = get(field)
            if value is not None and (value := as_text(value)) is not None:
                state[key] = value
                break
    position = location(record)
    if position is not None:
        state["latitude"], state["longitude"] = position
    return state


def device_info(record: Mapping[str, Any], services: tuple[str, ...], extra_keys: Iterable[str] = ()) -> DeviceInfo | None:
    """DeviceInfo of one device object; None without a ``device_name``."""
    name = device_name(record)
    if name is None:
        return None
    state = device_state(record)
    keys = set(DEVICE_KEYS) | {k for k in (*IDENTIFIERS, "plan") if k in state} | set(extra_keys)
    if location(record) is not None:
        keys |= LOCATION_KEYS
    identifiers = {k: v for k in (*IDENTIFIERS, *EXTRA_IDENTIFIERS) if (v := as_text(record.get(k)))}
    identifiers.setdefault("iccid", name)
    return DeviceInfo(id=name, name=name, keys=frozenset(keys), services=services, model=as_text(record.get("sku")),
                      identifiers=identifiers, serial_number=as_text(record.get("imei")))


def _report_time(report: Mapping[str, Any]) -> datetime | None:
    return parse_datetime(report.get("time_of_fix")) or parse_datetime(report.get("created_at"))


def latest_report(reports: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest report by fix time (else creation time); None when none has a time."""
    timed = [(t, r) for r in reports if (t := _report_time(r)) is not None]
    return max(timed, key=lambda pair: pair[0])[1] if timed else None


def report_state(report: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical state from one device report; out-of-range values are left out."""
    state: dict[str, Any] = {}
    for field, (key, convert, valid) in REPORT_FIELDS.items():
        value = convert(report.get(field))
        if value is None or (valid is not None and not valid[0] <= value <= valid[1]):
            continue
        state[key] = value % 360 if key == "heading" else value
    position = location(report)
    if position is not None:
        state["latitude"], state["longitude"] = position
    return state


def usage_on(entries: Iterable[Mapping[str, Any]], day: str) -> int | None:
    """``bytes_used`` of the usage entry whose ``date_for`` falls on ``day`` (or in month ``day[:7]``
    when ``day`` is ``YYYY-MM``); summed when several match, None when none does."""
    total, found = 0, False
    for entry in entries:
        when = parse_datetime(entry.get("date_for"))
        used = as_int(entry.get("bytes_used"))
        if when is None or used is None or not when.strftime("%Y-%m-%d").startswith(day):
            continue
        total, found = total + used, True
    return total if found else None


def plan_allowances(plans: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Plan name (case-folded) -> monthly data allowance in bytes, for plans that have one."""
    out: dict[str, int] = {}
    for plan in plans:
        name, allowance = as_text(plan.get("name")), as_int(plan.get("monthly_data_allowance_bytes"))
        if name and allowance and allowance > 0:
            out[name.casefold()] = allowance
    return out


#: Words in an SMS MT ``event_status`` (case-insensitive): failure words are checked first
#: ("UNDELIVERED" is a failure).
SMS_FAILED = ("fail", "undeliver", "expire", "reject", "error", "cancel", "discard")
SMS_DELIVERED = ("deliver",)


def sms_outcome(record: Mapping[str, Any]) -> tuple[str, str]:
    """(status, detail) of one SMS MT status object: ``success``, ``failed`` or ``pending``."""
    status = as_text(record.get("event_status")) or "unknown"
    reason = as_text(record.get("failure_reason"))
    low = status.lower()
    if reason or any(word in low for word in SMS_FAILED):
        return "failed", f"SMS {status}" + (f": {reason}" if reason else "")
    if any(word in low for word in SMS_DELIVERED):
        at = parse_time(record.get("report_timestamp"))
        return "success", f"SMS {status}" + (f" at {at}" if at else "")
    return "pending", f"SMS {status}"
