"""Loose vendor values made strict, at the edge: wrappers, booleans, numbers, times, result maps.

Lattigo answers drift in practice (vendor-notes): a list bare or wrapped (``{"devices": [...]}``), one
device bare or wrapped (``{"device": {...}}``), ``connected`` as a boolean or ``"true"``, numbers as
strings, per-device results as ``"Success"`` or ``{"message": "Success"}``, and times in ISO 8601
or something close to it ("no zone means UTC"). Every function here returns ``None`` (or an empty
container) for "not reported" rather than raising.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any

#: Wrapper keys seen (or plausible) around lists and single objects.
LIST_KEYS = ("devices", "data", "results", "items", "rate_plans", "users", "device_reports",
             "daily_data_usages", "monthly_data_usages", "sms", "messages")
OBJECT_KEYS = ("device", "data", "result")

TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "on", "connected", "online"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "off", "disconnected", "offline"})
ABSENT_WORDS = frozenset({"", "null", "none", "nil", "n/a", "na", "-"})

#: Non-ISO layouts the API is said to tolerate, tried after ISO 8601 (all read as UTC).
TIME_LAYOUTS = ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M",
                "%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %I:%M %p", "%m/%d/%Y", "%d %b %Y %H:%M:%S", "%b %d, %Y %H:%M:%S")
MIN_YEAR, MAX_YEAR = 1990, 2200
_ZONE_WORDS = re.compile(r"\s*\b(UTC|GMT|Z)\s*$", re.I)
_SPACED_OFFSET = re.compile(r"\s+([+-]\d{2}:?\d{2})$")
_FRACTION = re.compile(r"(\.\d{6})\d+")
_EXACT = 2**53  # integers up to this survive a float round trip
TIME_CACHE = 65536  # time texts remembered by parse_time (cleared when full)
_TIMES: dict[str, str | None] = {}


def absent(value: Any) -> bool:
    """The vendor's "no value": None, an empty or placeholder string."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ABSENT_WORDS)


def unwrap_list(payload: Any, keys: Iterable[str] = LIST_KEYS) -> list[Any]:
    """A list from a bare list, a wrapper object (``{"devices": [...]}``), or one bare item.

    ``None``/``{}`` mean an empty list. An object holding exactly one list is unwrapped whatever
    its key; any other object is taken as a single item.
    """
    if payload is None:
        return []
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        if not payload:
            return []
        for key in keys:
            if isinstance(payload.get(key), list):
                return payload[key]
        lists = [v for v in payload.values() if isinstance(v, list)]
        if len(lists) == 1 and len(payload) <= 3:  # {"devices": [...], "total": 3}
            return lists[0]
        return [payload]
    return [payload]


def unwrap_object(payload: Any, keys: Iterable[str] = OBJECT_KEYS) -> dict[str, Any] | None:
    """One object from a bare object, ``{"device": {...}}``, or a one-item list."""
    if isinstance(payload, list):
        payload = payload[0] if len(payload) == 1 else None
    if not isinstance(payload, dict):
        return None
    for key in keys:
        inner = payload.get(key)
        if isinstance(inner, dict) and len(payload) == 1:
            return inner
    return payload


def records(payload: Any, keys: Iterable[str] = LIST_KEYS) -> list[dict[str, Any]]:
    """:func:`unwrap_list`, keeping only the objects."""
    return [item for item in unwrap_list(payload, keys) if isinstance(item, dict)]


def as_bool(value: Any) -> bool | None:
    """``True``/``"true"``/``1``/``"yes"`` -> True; the opposites -> False; anything else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return None


def as_float(value: Any) -> float | None:
    """A finite number from a number or a numeric string (``"1,024"`` too); None otherwise."""
    if type(value) is float:  # the common case, no call
        return value if value - value == 0.0 else None  # inf - inf and nan - nan are nan
    if isinstance(value, bool) or absent(value):
        return None
    if isinstance(value, str):
        value = value.strip().replace(",", "")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def as_int(value: Any) -> int | None:
    """:func:`as_float`, rounded to an integer."""
    if type(value) is int and -_EXACT <= value <= _EXACT:  # the float round trip would give it back
        return value
    number = as_float(value)
    return None if number is None else int(round(number))


def as_text(value: Any) -> str | None:
    """A stripped string; None for absent values, containers and booleans."""
    if type(value) is str:  # the common case, one strip
        text = value.strip()
        return None if text.lower() in ABSENT_WORDS else text
    if absent(value) or isinstance(value, (dict, list, bool)):
        return None
    text = str(value).strip()
    return text or None


def parse_datetime(value: Any) -> datetime | None:
    """An aware UTC datetime from ISO 8601 or a tolerated layout; no zone means UTC.

    Numbers (and numeric strings) above 10^9 are Unix seconds, above 10^12 milliseconds.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        moment = _from_epoch(float(value))
    elif isinstance(value, str) and not absent(value):
        moment = _from_text(value.strip())
    else:
        return None
    if moment is None:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment if MIN_YEAR <= moment.year <= MAX_YEAR else None


def parse_time(value: Any) -> str | None:
    """:func:`parse_datetime` as ``2026-12-02T06:15:00Z`` (texts remembered: a poll sees the same ones)."""
    if type(value) is not str:
        return _parse_time(value)
    if value not in _TIMES:
        if len(_TIMES) >= TIME_CACHE:
            _TIMES.clear()
        _TIMES[value] = _parse_time(value)
    return _TIMES[value]


def _parse_time(value: Any) -> str | None:
    moment = parse_datetime(value)
    return None if moment is None else iso(moment)


def iso(moment: datetime) -> str:
    """An aware datetime as ISO 8601 UTC to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_date(moment: datetime | date) -> str:
    """``2026-12-02``: the date format of the vendor's ``start_date``/``end_date`` parameters."""
    return moment.strftime("%Y-%m-%d")


def _from_epoch(number: float) -> datetime | None:
    if number > 1e12:
        number /= 1000.0
    if number < 1e9:
        return None
    try:
        return datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _from_text(text: str) -> datetime | None:
    number = as_float(text) if re.fullmatch(r"\d{9,}(\.\d+)?", text) else None
    if number is not None:
        return _from_epoch(number)
    cleaned = _ZONE_WORDS.sub("+00:00", text) if not text.endswith("Z") else text[:-1] + "+00:00"
    cleaned = _SPACED_OFFSET.sub(r"\1", cleaned)
    cleaned = _FRACTION.sub(r"\1", cleaned)  # nanoseconds -> microseconds
    try:
        return datetime.fromisoformat(cleaned)
    except ValueError:
        pass
    bare = _ZONE_WORDS.sub("", text)
    for layout in TIME_LAYOUTS:
        try:
            return datetime.strptime(bare, layout)
        except ValueError:
            continue
    try:
        return parsedate_to_datetime(text)  # RFC 2822, as in HTTP headers
    except (TypeError, ValueError, IndexError):
        return None


def result_text(value: Any) -> str:
    """One per-device result as text: ``"Success"`` or ``{"message": "Success"}`` -> ``"Success"``."""
    if isinstance(value, dict):
        for key in ("message", "status", "result", "error"):
            if key in value and not isinstance(value[key], (dict, list)):
                return str(value[key]).strip()
        return ""
    return "" if value is None else str(value).strip()


def succeeded(text: str) -> bool:
    """The documented rule: a per-device result succeeded when its text starts with "Success"."""
    return text.lower().startswith("success")


def status_map(payload: Any, key: str) -> dict[str, str] | None:
    """Per-device results ``{device_name: text}`` under ``key`` (``change_status``, ``status``,
    ``terminate_status``), tolerating another known key or a bare map; None when there is none."""
    if not isinstance(payload, Mapping):
        return None
    inner = payload.get(key)
    if not isinstance(inner, Mapping):
        inner = next((payload[k] for k in ("change_status", "status", "terminate_status", "result", "results")
                      if isinstance(payload.get(k), Mapping)), None)
    if inner is None and payload and all(isinstance(v, (str, dict)) for v in payload.values()):
        inner = payload  # a bare {device_name: result}
    if inner is None:
        return None
    return {str(name): result_text(value) for name, value in inner.items()}
