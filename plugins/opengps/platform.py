"""The ``opengps`` platform: GPS trackers behind the tracker Open API (Protrack365 family)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import voluptuous as vol

from fleetbridge.errors import AuthFailed, BadResponse, Rejected, VendorError
from fleetbridge.platform import (
    BASE_ACCOUNT_SCHEMA,
    AccountContext,
    DeviceInfo,
    Event,
    Platform,
    RateLimit,
    ServiceCall,
    ServiceResult,
)
from fleetbridge.validate import integer, number

from .alarms import ALARM_EVENT_TYPES, AlarmRecord
from .api import OpenGpsClient

if TYPE_CHECKING:
    from aiohttp import web

_LOGGER = logging.getLogger(__name__)


def _url(value: Any) -> str:
    """Voluptuous validator: an http(s) URL, without a trailing slash."""
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise vol.Invalid("must be an http:// or https:// URL")
    return text.rstrip("/")


NON_NEGATIVE = vol.All(number, vol.Range(min=0))


TRACKER_KEYS = frozenset({
    "latitude", "longitude", "speed", "heading", "gps_time", "last_seen", "online", "ignition",
    "door_open", "charging", "fuel_cut", "armed", "battery", "voltage", "odometer",
    "trip_distance_today", "expires_at",
})

#: service -> (vendor command, paramData builder or None). create_geofence is its own call.
COMMANDS: dict[str, tuple[str, Callable[[Mapping[str, Any]], dict[str, str]] | None]] = {
    "engine_stop": ("RELAY,1", None),
    "engine_resume": ("RELAY,0", None),
    "lock_doors": ("LOCKDOOR", None),
    "unlock_doors": ("UNLOCKDOOR", None),
    "reboot": ("RESET", None),
    "set_odometer": ("SET_MILEAGE", lambda p: {"mileage": _km_text(p["odometer"])}),
}

GEOFENCE_ALARM = {"out": 0, "in": 1, "both": 2}

#: Track flags: vendor field -> (canonical key, vendor value meaning True).
FLAGS: dict[str, tuple[str, int]] = {
    "accstatus": ("ignition", 1),
    "doorstatus": ("door_open", 1),
    "chargestatus": ("charging", 1),
    "oilpowerstatus": ("fuel_cut", 0),  # 0 = fuel supply off
    "defencestatus": ("armed", 1),
}
#: datastatus -> reason when the device is not online (2 = OK).
DATA_STATUS = {1: "never online", 2: "ok", 3: "expired", 4: "offline", 5: "blocked"}

#: Words in a command reply that mean the device refused or failed (case-insensitive).
FAILURE_RE = re.compile(r"fail|error|offline|invalid|unsupported|not support|wrong password", re.I)
CONCOX_ERROR_RE = re.compile(r"error\s*[:：]\s*(\d+)", re.I)
CONCOX_ERRORS = {
    100: "the command is too long",
    101: "a parameter value is too large",
    102: "the command format was not recognised",
    103: "invalid parameter",
    109: "wrong password",
}
FIRST_EVENT_LOOKBACK = 3600  # a first event fetch starts an hour back, not at the dawn of time
EVENT_BATCH = 2000  # alarms handed to the host at once, at the latest ...
EVENT_BATCH_S = 1.0  # ... or this many seconds after the previous batch


def _km_text(km: Any) -> str:
    """12345.6 -> "12345.6", 30.0 -> "30"."""
    return f"{float(km):.1f}".removesuffix(".0")


def _absent(value: Any) -> bool:
    """The vendor's "no value": null, "", -1."""
    return value is None or value == "" or value == -1 or value == "-1"


@lru_cache(maxsize=4096)  # a poll's records share a few hundred distinct seconds
def iso(ts: float) -> str:
    """Unix seconds -> ``2026-12-02T06:15:00Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_or_none(value: Any) -> str | None:
    """Unix seconds -> ISO 8601; None for 0, negative, unparseable or out-of-range values."""
    try:
        ts = float(value)
        return iso(ts) if ts > 0 else None
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _parse_iso(text: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _number(value: Any, kind: type = float) -> Any:
    """A number from the vendor (ints, floats, numeric strings); ValueError otherwise."""
    if type(value) is int:  # the common case, exact
        return value if kind is int else float(value)
    if isinstance(value, bool):
        raise ValueError("boolean where a number was expected")
    result = float(value)
    if result != result or result in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return int(result) if kind is int else result


_LEADING_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)")
_LAST_SECOND = 32503680000  # 3000-01-01: later Unix seconds are garbage, not a date


def _leading_number(value: Any) -> float | None:
    """``"12.6"``, ``"12.6V"`` -> 12.6; None when there is no number (an undocumented field)."""
    text = str(value)
    if text[:1].isdecimal() and text.replace(".", "", 1).isdecimal():  # "12.60": the usual, no regex
        return float(text)
    match = _LEADING_NUMBER.match(text)
    return float(match.group(1)) if match else None


def _km(value: Any) -> float:
    return (value if type(value) is int else _number(value)) / 1000


def _int(value: Any) -> int:
    return value if type(value) is int else _number(value, int)


def _time(value: Any) -> str | None:
    if type(value) is int and 0 < value < _LAST_SECOND:  # the usual: Unix seconds
        return iso(value)
    return _iso_or_none(_number(value))


#: Track fields: canonical key, vendor field, converter (raises ValueError/TypeError when malformed).
TRACK_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("speed", "speed", _number),
    ("heading", "course", _int),
    ("gps_time", "gpstime", _time),
    ("last_seen", "hearttime", _time),
    ("battery", "battery", _int),
    ("voltage", "externalpower", _leading_number),
    ("odometer", "mileage", _km),
    ("trip_distance_today", "todaymileage", _km),
)
_FLAG_FIELDS = tuple((field, key, true) for field, (key, true) in FLAGS.items())


def track_state(record: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical state of one track record (no ``expires_at``). ValueError/TypeError if malformed."""
    state: dict[str, Any] = {}
    get = record.get
    lat, lon = get("latitude"), get("longitude")
    if lat is not None and lon is not None and lat != "" and lon != "":
        lat, lon = _number(lat), _number(lon)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError("position out of range")
        if (lat, lon) != (0.0, 0.0):  # 0,0 is "no fix yet"
            state["latitude"], state["longitude"] = lat, lon
    for key, field, convert in TRACK_FIELDS:
        value = get(field)
        if value is not None and value != -1 and value != "" and value != "-1":  # _absent, inline
            converted = convert(value)
            if converted is not None:
                state[key] = converted
    for field, key, true_value in _FLAG_FIELDS:
        value = get(field)
        if type(value) is int:  # the usual: a plain 0/1 flag
            if value != -1:
                state[key] = value == true_value
        elif not _absent(value):
            state[key] = _number(value, int) == true_value
    status = get("datastatus")
    if not _absent(status):
        code = _number(status, int)
        state["online"] = code == 2
        if code != 2:
            _LOGGER.debug("%s: tracker status %s (%s)", get("imei"), code, DATA_STATUS.get(code, "unknown"))
    return state


def expiry(attributes: Mapping[str, Any]) -> str | None:
    """The earliest of the platform and user expiry dates, ISO 8601."""
    dates = [attributes.get(k) for k in ("platform_expires_at", "user_expires_at")]
    present = [d for d in dates if isinstance(d, str) and d]
    return min(present) if present else None


def device_info(record: Mapping[str, Any], services: tuple[str, ...]) -> DeviceInfo | None:
    """DeviceInfo of a device-list record; None without an IMEI."""
    imei = str(record.get("imei") or "").strip()
    if not imei:
        return None

    def text(field: str) -> str | None:
        value = record.get(field)
        if _absent(value):
            return None
        return str(value).strip() or None

    identifiers = {"imei": imei, "iccid": text("iccid"), "sim": text("simcard"), "plate": text("platenumber")}
    attributes = {
        "plate_number": text("platenumber"),
        "sim": text("simcard"),
        "iccid": text("iccid"),
        "activated_at": _iso_or_none(record.get("activatedtime")),
        "platform_expires_at": _iso_or_none(record.get("platformduetime")),
        "user_expires_at": _iso_or_none(record.get("userduetime")),
    }
    return DeviceInfo(
        id=imei,
        name=text("devicename") or imei,
        model=text("devicetype"),
        manufacturer=None,
        identifiers={k: v for k, v in identifiers.items() if v},
        attributes={k: v for k, v in attributes.items() if v},
        keys=TRACKER_KEYS,
        services=services,
        has_events=True,
    )


def alarm_event(imei: str, alarm: AlarmRecord) -> Event:
    """The canonical event of one alarm record."""
    at = alarm.gpstime or alarm.systemtime
    return Event(
        device_id=imei,
        event_type=alarm.event_type,
        at=datetime.fromtimestamp(at, UTC),
        uid=f"{imei}:{alarm.systemtime}:{alarm.code}:{alarm.gpstime}",
        data={
            "vendor_code": alarm.code,
            "vendor_name": alarm.vendor_name,
            "latitude": alarm.latitude,
            "longitude": alarm.longitude,
            "speed": alarm.speed,
            "heading": alarm.course,
            "geofence_id": alarm.fence_id,
        },
    )


def command_outcome(text: str) -> ServiceResult:
    """The result of a device's reply: ``failed`` when the text says so, else ``success``."""
    if not FAILURE_RE.search(text):
        return ServiceResult(status="success", detail=text)
    match = CONCOX_ERROR_RE.search(text)
    reason = CONCOX_ERRORS.get(int(match.group(1))) if match else None
    return ServiceResult(status="failed", detail=f"{text} ({reason})" if reason else text)


class OpenGpsPlatform(Platform):
    """One tracker Open API account."""

    name = "opengps"
    title = "Tracker Open API (Protrack365 family)"
    CONFIG_SCHEMA = BASE_ACCOUNT_SCHEMA.extend({
        # required unless `simulator` (checked in async_setup)
        vol.Optional("base_url", description="the reseller's API host, e.g. https://api.example.com"): _url,
        vol.Required("account", description="login account"): vol.All(str, vol.Length(min=1)),
        vol.Required("password", description="its password (use !secret)"): vol.All(str, vol.Length(min=1)),
        vol.Optional("include_subaccounts", default=False,
                     description="distributor accounts: also list the devices of every sub-account"): bool,
        vol.Optional("engine_stop_max_speed", default=20.0,
                     description="km/h above which engine_stop is refused"): NON_NEGATIVE,
        vol.Optional("engine_stop_max_fix_age", default=300.0,
                     description="seconds: engine_stop is refused when the last fix is older"): NON_NEGATIVE,
        vol.Optional("command_poll_interval", default=1.0,
                     description="seconds between command status queries"): NON_NEGATIVE,
        vol.Optional("command_poll_attempts", default=30,
                     description="queries before a command is a timeout"): vol.All(integer,
                                                                                   vol.Range(min=1, max=600)),
        vol.Optional("token_refresh", default=5400.0,
                     description="seconds before the 2-hour token is renewed"): vol.All(number,
                                                                                       vol.Range(min=60, max=7000)),
        vol.Optional("event_concurrency", default=4,
                     description="alarm requests in flight at once (the alarm API takes one IMEI per request)"):
            vol.All(integer, vol.Range(min=1, max=32)),
    })
    SECRET_KEYS = ("password",)
    RATE_LIMITS = {
        "auth": RateLimit(min_interval=12),
        "device_list": RateLimit(min_interval=6),
        "track": RateLimit(min_interval=10),
        "playback": RateLimit(min_interval=12),
        **{kind: RateLimit() for kind in ("detail", "alarm", "mileage", "command", "geofence", "user")},
    }
    SERVICES = ("engine_stop", "engine_resume", "lock_doors", "unlock_doors", "reboot",
                "set_odometer", "create_geofence")
    EVENT_TYPES = ALARM_EVENT_TYPES
    DEFAULT_SCAN_INTERVAL = 30.0
    DEFAULT_EVENT_INTERVAL = 60.0

    def __init__(self, ctx: AccountContext) -> None:
        super().__init__(ctx)
        #: Wall clock; tests replace it. The client adds the measured vendor offset to it.
        self.clock: Callable[[], float] = time.time
        self.client: OpenGpsClient | None = None
        self._bad_logged: set[str] = set()
        self._heard: dict[str, int] = {}  # imei -> hearttime of its last track record

    # --- lifecycle ---------------------------------------------------------------------------

    async def async_setup(self) -> None:
        base_url = self.config.get("base_url")
        if not base_url:
            raise AuthFailed("no base_url configured (required unless simulator: is set)")
        self.client = OpenGpsClient(
            self.ctx.session, base_url, self.config["account"], self.config["password"],
            rate=self.ctx.rate, add_secret=self.ctx.add_secret, warn=self.ctx.warn,
            clock=lambda: self.clock(), token_refresh=self.config.get("token_refresh", 5400.0),
        )
        await self.client.authorize()

    @property
    def api(self) -> OpenGpsClient:
        if self.client is None:
            raise RuntimeError("async_setup has not run")
        return self.client

    def info(self) -> dict[str, Any]:
        if self.client is None:
            return {"account": self.config.get("account"), "clock_offset_s": 0.0}
        return self.client.info()

    @classmethod
    def create_simulator(cls, config: Mapping[str, Any], devices: int, seed: int, *,
                         tick: float | None = None) -> web.Application | None:
        """The simulator app; ``tick`` 0 keeps its world still until ``/_sim/step`` (None: it moves)."""
        from fleetbridge.simkit import tick_option

        from .simulator import create_app

        return create_app(accounts={config["account"]: config["password"]}, devices=devices, seed=seed,
                          **tick_option(tick))

    # --- discovery and state -----------------------------------------------------------------

    async def async_discover(self) -> list[DeviceInfo]:
        accounts: list[str | None] = [None]
        if self.config.get("include_subaccounts"):
            accounts += await self._subaccounts()
        found: dict[str, DeviceInfo] = {}
        for account in accounts:
            for record in await self._devices_of(account):
                info = device_info(record, self.SERVICES)
                if info is not None and info.id not in found:
                    found[info.id] = info
        return list(found.values())

    async def _subaccounts(self) -> list[str]:
        """Every account below ours, breadth first, each once (the list may include ourselves)."""
        seen = {self.api.account}
        order: list[str] = []
        pending: list[str | None] = [None]
        while pending:
            parent = pending.pop(0)
            for user in await self._tolerant(self.api.user_list, parent):
                name = str(user.get("account") or "")
                if name and name not in seen:
                    seen.add(name)
                    order.append(name)
                    pending.append(name)
        return order

    async def _devices_of(self, account: str | None) -> list[dict[str, Any]]:
        if account is None:
            return await self.api.device_list()
        return await self._tolerant(self.api.device_list, account)

    @staticmethod
    async def _tolerant(fetch: Callable[[str | None], Any], account: str | None) -> list[dict[str, Any]]:
        """A listing that a sub-account may refuse (permission, unknown, blocked): [] then."""
        try:
            return await fetch(account)
        except VendorError as err:
            if type(err) is not VendorError:  # auth, rate, network: the whole discovery fails
                raise
            _LOGGER.warning("listing of account %s refused: %s", account or "(own)", err)
            return []

    async def async_poll_batches(self, devices: list[DeviceInfo]) -> AsyncIterator[dict[str, dict[str, Any]]]:
        by_id = {d.id: d for d in devices}
        async for records in self.api.track_batches(list(by_id)):
            states: dict[str, dict[str, Any]] = {}
            for record in records:
                imei = str(record.get("imei") or "")
                if imei not in by_id:
                    continue
                heard = record.get("hearttime")
                if type(heard) is int:
                    self._heard[imei] = heard
                try:
                    state = track_state(record)
                except (TypeError, ValueError, OverflowError) as err:
                    self._log_once(imei, "malformed track record skipped", err)
                    continue
                expires = expiry(by_id[imei].attributes)
                if expires:
                    state["expires_at"] = expires
                states[imei] = state
            yield states

    def _log_once(self, imei: str, what: str, err: Exception) -> None:
        """Warn about a device's bad data once (per kind), then only at debug level."""
        key = f"{what}:{imei}"
        level = logging.DEBUG if key in self._bad_logged else logging.WARNING
        self._bad_logged.add(key)
        _LOGGER.log(level, "%s: %s (logged once): %s", imei, what, err)

    # --- events ------------------------------------------------------------------------------

    async def async_fetch_event_batches(
        self, devices: list[DeviceInfo], cursor: Any
    ) -> AsyncIterator[tuple[list[Event], Any]]:
        """Alarms since the cursor ({imei: last systemtime}); a new device starts 1 h back.

        A device's cursor never lags more than an hour behind now (the overlap catches records
        the vendor indexes late; the host drops repeated uids). A device whose last track record says
        it has sent nothing since its cursor (``hearttime``, the last time it sent any data, is older)
        cannot have an alarm there: it is not asked. The API takes one IMEI per request: up to
        ``event_concurrency`` of them are in flight, and the alarms go to the host every
        ``EVENT_BATCH`` alarms or ``EVENT_BATCH_S`` seconds, each batch with the cursor of the
        devices asked so far (the others keep theirs).
        """
        old = cursor if isinstance(cursor, dict) else {}
        now = int(self.api.now())
        floor = now - FIRST_EVENT_LOOKBACK
        new: dict[str, int] = {}
        asks: list[tuple[str, int]] = []
        for device in devices:
            begin = _int_or(old.get(device.id), floor)
            heard = self._heard.get(device.id)
            if heard is not None and heard < begin:
                new[device.id] = max(begin, floor)
            else:
                asks.append((device.id, begin))
        width = int(self.config.get("event_concurrency", 4))
        events: list[Event] = []
        since = time.monotonic()
        for start in range(0, len(asks), width):
            chunk = asks[start:start + width]
            answers = await asyncio.gather(*(self._alarms_of(imei, min(begin, now), now) for imei, begin in chunk),
                                           return_exceptions=True)
            for (imei, begin), alarms in zip(chunk, answers):
                if isinstance(alarms, BaseException):
                    raise alarms  # auth, rate, network: the whole fetch fails (the batches before it stand)
                if alarms is None:
                    new[imei] = begin
                    continue
                events += [alarm_event(imei, a) for a in alarms]
                new[imei] = max([begin, floor, *(a.systemtime for a in alarms)])
            if events and (len(events) >= EVENT_BATCH or time.monotonic() - since >= EVENT_BATCH_S):
                yield events, {**old, **new}
                events, since = [], time.monotonic()
        yield events, new

    async def _alarms_of(self, imei: str, begin: int, end: int) -> list[AlarmRecord] | None:
        """The device's alarms; None (its cursor stays) when the vendor refuses or garbles this one
        device. Auth, rate and network errors fail the whole fetch."""
        try:
            return await self.api.alarms(imei, begin, end)
        except VendorError as err:
            if type(err) not in (VendorError, BadResponse):
                raise
            self._log_once(imei, "alarms skipped", err)
            return None

    # --- services ----------------------------------------------------------------------------

    async def async_call(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        if call.service not in self.SERVICES:
            raise Rejected(f"{call.service} is not a service of {self.name}")
        if call.service == "engine_stop":
            self._check_engine_stop(call)
        if call.service == "create_geofence":
            return await self._create_geofence(device, call.params)
        command, build = COMMANDS[call.service]
        try:
            param_data = build(call.params) if build else None
        except (KeyError, TypeError, ValueError):
            raise Rejected(f"{call.service}: missing or invalid parameters") from None
        commandid = await self.api.send_command(device.id, command, param_data)
        await call.pending(detail="sent, waiting for the device", vendor_ref=commandid)
        return await self._await_reply(commandid)

    async def async_follow(self, device: DeviceInfo, service: str, vendor_ref: str) -> ServiceResult:
        return await self._await_reply(vendor_ref)

    def _check_engine_stop(self, call: ServiceCall) -> None:
        """Refuse to cut a moving engine, or one whose speed or position is not fresh."""
        limit = float(self.config.get("engine_stop_max_speed", 20))
        max_age = float(self.config.get("engine_stop_max_fix_age", 300))
        speed = call.state.get("speed")
        if not isinstance(speed, (int, float)) or isinstance(speed, bool):
            raise Rejected("engine_stop refused: the vehicle's speed is unknown")
        if speed > limit:
            raise Rejected(f"engine_stop refused: the vehicle was last seen at {speed:g} km/h "
                           f"(the limit is {limit:g} km/h)")
        if call.state_age is None or call.state_age > max_age:
            raise Rejected("engine_stop refused: no recent state for this vehicle "
                           f"(need one younger than {max_age:g} s)")
        fix = _parse_iso(call.state.get("gps_time")) if call.state.get("gps_time") else None
        if fix is None:
            raise Rejected("engine_stop refused: the time of the last GPS fix is unknown")
        age = self.api.now() - fix.timestamp()  # in the vendor's clock, which stamped the fix
        if age > max_age:
            raise Rejected(f"engine_stop refused: the last GPS fix is {age:.0f} s old "
                           f"(at most {max_age:g} s)")

    async def _create_geofence(self, device: DeviceInfo, params: Mapping[str, Any]) -> ServiceResult:
        try:
            name = str(params["name"])
            lat, lon = float(params["latitude"]), float(params["longitude"])
            radius = int(params["radius"])
            alarm = GEOFENCE_ALARM[params.get("alarm", "both")]
        except (KeyError, TypeError, ValueError):
            raise Rejected("create_geofence needs name, latitude, longitude, radius "
                           "and alarm in/out/both") from None
        await self.api.create_geofence(device.id, name, alarm, lat, lon, radius)
        return ServiceResult(status="success", detail=f"geofence {name!r} created")

    async def _await_reply(self, commandid: str) -> ServiceResult:
        """Query the command until the device answered, ``command_poll_attempts`` times at most."""
        interval = float(self.config.get("command_poll_interval", 1.0))
        attempts = int(self.config.get("command_poll_attempts", 30))
        last_error: VendorError | None = None
        for _ in range(attempts):
            await asyncio.sleep(interval)
            try:
                status, text = await self.api.query_command(commandid)
            except VendorError as err:  # a lost query is not a lost command: keep asking
                if not err.retryable:
                    raise
                _LOGGER.debug("command %s: query failed, still waiting: %s", commandid, err)
                last_error = err
                continue
            if status == 1:
                return command_outcome(text)
        detail = f"no reply from the device after {attempts} queries"
        if last_error is not None:
            detail += f" (last query failed: {last_error})"
        return ServiceResult(status="timeout", detail=detail)

    # --- history (extras for the `history` CLI) -----------------------------------------------

    async def async_history(self, device: DeviceInfo, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """Track points between ``since`` and ``until``: time, latitude, longitude, speed, heading."""
        points = await self.api.playback(device.id, _ts(since), _ts(until))
        ordered = sorted((p for p in points if p.gpstime > 0), key=lambda p: p.gpstime)
        return [
            {"time": datetime.fromtimestamp(p.gpstime, UTC), "latitude": p.latitude,
             "longitude": p.longitude, "speed": p.speed, "heading": p.course}
            for p in ordered
        ]

    async def async_distance(self, device: DeviceInfo, since: datetime, until: datetime) -> float:
        """Kilometres driven between ``since`` and ``until`` (widened to half hours)."""
        totals = await self.api.mileage([device.id], _ts(since), _ts(until))
        return round(totals.get(device.id, 0.0), 3)


def _ts(moment: datetime) -> int:
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default
