"""Tracker Open API alarm codes and the parsers of its semicolon-delimited records.

Alarm list (``/api/alarm/list``): ``type,lon,lat,gpstime,systemtime,speed,course,fenceid;...``.
Playback (``/api/playback``): ``lon,lat,gpstime,speed,course;...``.
Empty results have come back as ``""``, ``[]``, ``{}`` or null; every parse failure is a
:class:`~fleetbridge.errors.BadResponse`, never anything else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fleetbridge.errors import BadResponse
from fleetbridge.events import EVENT_TYPES

#: code -> (vendor name, canonical event type). From the vendor document's alarm table.
ALARM_TYPES: dict[int, tuple[str, str]] = {
    1: ("sosAlarm", "sos"),
    2: ("lowBatteryAlarm", "lowBattery"),
    3: ("powerDisconnectAlarm", "powerCut"),
    4: ("vibrationAlarm", "vibration"),
    5: ("geoFenceInAlarm", "geofenceEnter"),
    6: ("geoFenceOutAlarm", "geofenceExit"),
    7: ("speedingAlarm", "overspeed"),
    8: ("carMoveAlarm", "movement"),
    9: ("engineOn", "ignitionOn"),
    10: ("engineOff", "ignitionOff"),
    11: ("tireTemperatureAlarm", "tireTemperature"),
    12: ("tireLeakPressureAlarm", "tirePressure"),
    13: ("tireLowPressureAlarm", "tirePressure"),
    14: ("tireHighPressureAlarm", "tirePressure"),
    15: ("gpsDeadZoneInAlarm", "gpsLost"),
    16: ("gpsDeadZoneOutAlarm", "gpsRestored"),
    17: ("obdDtcAlarm", "fault"),
    18: ("disassembleAlarm", "removing"),
    19: ("powerOffAlarm", "powerOff"),
    20: ("collisionAlarm", "accident"),
    21: ("dropAlarm", "fallDown"),
    22: ("routeAlarm", "route"),
    23: ("rapidAccelerationAlarm", "hardAcceleration"),
    24: ("rapidDecelerationAlarm", "hardBraking"),
    25: ("sharpTurnAlarm", "hardCornering"),
    26: ("dooropenAlarm", "doorOpen"),
    27: ("doorcloseAlarm", "doorClose"),
    28: ("offlineAlarm", "deviceOffline"),
    29: ("engineIdleAlarm", "idle"),
    30: ("parkingAlarm", "parking"),
    31: ("oilLeakAlertAlarm", "fuelLeak"),
    32: ("oilTheftAlertAlarm", "fuelTheft"),
    33: ("jammingAlarm", "jamming"),
    34: ("restrictedDrivingAlarm", "restrictedDriving"),
    35: ("lowTemperatureAlarm", "lowTemperature"),
    36: ("highTemperatureAlarm", "highTemperature"),
    37: ("dumpSwitchOnAlarm", "dumpOn"),
    38: ("dumpSwitchOffAlarm", "dumpOff"),
    39: ("armAlarm", "armed"),
    40: ("rolloverAlarm", "rollover"),
    41: ("fatigueDrivingAlarm", "fatigueDriving"),
    42: ("lackBreakFatigueDrivingAlarm", "fatigueDriving"),
    43: ("lowOilAlarm", "lowFuel"),
    44: ("lowExternalBatteryAlarm", "lowPower"),
}

UNKNOWN_EVENT_TYPE = "general"

#: Every canonical event type this table can produce, in EVENT_TYPES order.
ALARM_EVENT_TYPES: tuple[str, ...] = tuple(
    t for t in EVENT_TYPES if t == UNKNOWN_EVENT_TYPE or t in {e for _, e in ALARM_TYPES.values()}
)


def describe_alarm(code: int) -> tuple[str, str]:
    """``code`` -> (vendor name, canonical event type); unknown codes are ``general``."""
    return ALARM_TYPES.get(code, (f"alarm{code}", UNKNOWN_EVENT_TYPE))


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """One alarm. Times are Unix seconds (0 = unknown); ``fence_id`` None when not a fence alarm."""

    code: int
    longitude: float
    latitude: float
    gpstime: int
    systemtime: int
    speed: float | None
    course: int | None
    fence_id: str | None

    @property
    def vendor_name(self) -> str:
        return describe_alarm(self.code)[0]

    @property
    def event_type(self) -> str:
        return describe_alarm(self.code)[1]


@dataclass(frozen=True, slots=True)
class PlaybackPoint:
    """One playback fix. ``gpstime`` in Unix seconds."""

    longitude: float
    latitude: float
    gpstime: int
    speed: float | None
    course: int | None


# --- field parsers: raise ValueError, turned into BadResponse by _parse_groups ---------------------

def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _integer(text: str) -> int:
    value = _number(text)
    if value != int(value):
        raise ValueError(f"not an integer: {text!r}")
    return int(value)


def _timestamp(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise ValueError(f"negative time: {text!r}")
    return value


def _latitude(text: str) -> float:
    value = _number(text)
    if not -90 <= value <= 90:
        raise ValueError(f"latitude out of range: {text!r}")
    return value


def _longitude(text: str) -> float:
    value = _number(text)
    if not -180 <= value <= 180:
        raise ValueError(f"longitude out of range: {text!r}")
    return value


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser that maps "" and -1 (the vendor's "no value") to None."""

    def parser(text: str) -> Any:
        if text in ("", "-1"):
            return None
        return parse(text)

    return parser


def _fence(text: str) -> str | None:
    return None if text in ("", "0", "-1") else text


ALARM_FIELDS: tuple[Callable[[str], Any], ...] = (
    _integer, _longitude, _latitude, _timestamp, _timestamp,
    _optional(_number), _optional(_integer), _fence,
)
PLAYBACK_FIELDS: tuple[Callable[[str], Any], ...] = (
    _longitude, _latitude, _timestamp, _optional(_number), _optional(_integer),
)

T = TypeVar("T")


def _groups(record: Any, what: str) -> list[str]:
    """The non-empty ``;``-separated groups of ``record`` (a string, or a list of strings)."""
    if record is None or record == "" or record == [] or record == {}:
        return []
    if isinstance(record, list) and all(isinstance(item, str) for item in record):
        record = ";".join(record)
    if not isinstance(record, str):
        raise BadResponse(f"{what}: expected a delimited string, got {type(record).__name__}")
    return [group.strip() for group in record.split(";") if group.strip()]


def _parse_groups(record: Any, what: str, fields: tuple[Callable[[str], Any], ...],
                  build: Callable[..., T]) -> list[T]:
    out: list[T] = []
    for index, group in enumerate(_groups(record, what)):
        parts = [part.strip() for part in group.split(",")]
        if len(parts) < len(fields):  # extra trailing fields are tolerated (newer firmware)
            raise BadResponse(f"{what}: record {index} has {len(parts)} fields, expected {len(fields)}")
        try:
            out.append(build(*(parse(part) for parse, part in zip(fields, parts))))
        except (ValueError, OverflowError) as err:
            raise BadResponse(f"{what}: record {index}: {str(err)[:80]}") from None
    return out


def parse_alarms(record: Any) -> list[AlarmRecord]:
    """Parse an alarm-list ``record``; raise BadResponse on anything malformed."""
    return _parse_groups(record, "alarm list", ALARM_FIELDS, AlarmRecord)


def parse_playback(record: Any) -> list[PlaybackPoint]:
    """Parse a playback ``record``; raise BadResponse on anything malformed."""
    return _parse_groups(record, "playback", PLAYBACK_FIELDS, PlaybackPoint)
