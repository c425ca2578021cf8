"""A faithful simulator of the tracker "Open API" (Protrack365 family), for demos, end-to-end tests and benchmarks.

The source of truth is ``shared/vendor-docs/opengps-tracker-open-api.txt`` plus the "tracker Open API" section of
``shared/docs/vendor-notes.md``. Every endpoint of the document is served under ``/api/``; switchable faults and a
truth/control interface live under ``/_sim/`` (never subject to faults).

The world model is cheap and deterministic (by ``seed``):

* Each device follows a *plan*: a looped route around a city and a duty cycle of ``drive`` seconds (speed made of
  1..3 sine "humps", 0 to ~115 km/h, ACC on) then ``period - drive`` seconds parked (ACC off). The distance driven
  is a closed-form function ``plan.dist(tau)`` of the device's schedule clock ``tau``, so live state, playback,
  engine/speeding alarms and mileage reports are all derived from one function, for any time range, without
  storing per-point history.
* ``tau`` runs with world time while the device is online and its fuel supply is on; the few moments where that
  changes are kept as *breaks* ``(world time, tau, mode)``, so history stays consistent after an engine cut.
* Alarms that are not a function of the schedule (low battery, geofences, engine cut, random SOS/vibration/...,
  ``raise_alarm``) are stored in a bounded per-device deque and merged with the derived ones.

World time (``Simulator.t``) starts at the server clock and advances only through :meth:`Simulator.step`; the
background ticker keeps it level with the server clock. The server clock is ``host_time() + clock_offset`` and is
what ``servertime``, the ``Date`` header, signature windows and token expiry use.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import heapq
import json
import math
import random
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from email.utils import formatdate
from itertools import count, islice
from typing import Any

from aiohttp import web

from fleetbridge.simkit import (DEFAULT_TICK, HTML_PAGE, DeviceTable, FaultSwitches, add_admin_routes, level_with,
                               run_demo, sim_app, start_ticker, with_luhn)

__all__ = ["ApiError", "Faults", "SimDevice", "Simulator", "create_app", "ERRORS", "MODELS", "ALARM_TYPES"]

# ----------------------------------------------------------------------------------------------------- tables

ERRORS: dict[int, str] = {  # chapter 3 of the document, verbatim
    10000: "System error", 10001: "Unknown request", 10002: "Login timeout", 10003: "Not login yet",
    10004: "Parameter error", 10005: "Missing required parameter", 10006: "The parameter is out of range",
    10007: "Permission denied", 10009: "Request is too frequency", 10010: "Access token doesn’t exist",
    10011: "Access token is invalid", 10012: "Access token is out of date", 10013: "IMEI is not authorized",
    10014: "Request time error", 10016: "Account is blocked", 20001: "Account or password error",
    20005: "Target doesn't exist.", 20017: "Device is offline.", 20018: "Send command fail.", 20023: "No Data.",
    20046: "Target is expired.", 20048: "Unsupported command.", 20089: "Device is blocked.",
}

ALARM_TYPES: dict[int, str] = {
    1: "sosAlarm", 2: "lowBatteryAlarm", 3: "powerDisconnectAlarm", 4: "vibrationAlarm", 5: "geoFenceInAlarm",
    6: "geoFenceOutAlarm", 7: "speedingAlarm", 8: "carMoveAlarm", 9: "engineOn", 10: "engineOff",
    11: "tireTemperatureAlarm", 12: "tireLeakPressureAlarm", 13: "tireLowPressureAlarm", 14: "tireHighPressureAlarm",
    15: "gpsDeadZoneInAlarm", 16: "gpsDeadZoneOutAlarm", 17: "obdDtcAlarm", 18: "disassembleAlarm",
    19: "powerOffAlarm", 20: "collisionAlarm", 21: "dropAlarm", 22: "routeAlarm", 23: "rapidAccelerationAlarm",
    24: "rapidDecelerationAlarm", 25: "sharpTurnAlarm", 26: "dooropenAlarm", 27: "doorcloseAlarm",
    28: "offlineAlarm", 29: "engineIdleAlarm", 30: "parkingAlarm", 31: "oilLeakAlertAlarm", 32: "oilTheftAlertAlarm",
    33: "jammingAlarm", 34: "restrictedDrivingAlarm", 35: "lowTemperatureAlarm", 36: "highTemperatureAlarm",
    37: "dumpSwitchOnAlarm", 38: "dumpSwitchOffAlarm", 39: "armAlarm", 40: "rolloverAlarm",
    41: "fatigueDrivingAlarm", 42: "lackBreakFatigueDrivingAlarm", 43: "lowOilAlarm", 44: "lowExternalBatteryAlarm",
}
#: (type, weight) of the occasional alarms raised at random across the online fleet.
RANDOM_ALARMS: tuple[tuple[int, int], ...] = ((4, 30), (24, 20), (23, 15), (25, 15), (1, 5), (20, 5), (33, 5), (3, 5))

COMMANDS = frozenset({"RELAY,1", "RELAY,0", "RESET", "LOCKDOOR", "UNLOCKDOOR", "SET_MILEAGE"})
#: Device replies on success (free text, as the document's demo); ``{speed}``/``{km}`` are filled in.
REPLIES: dict[str, str] = {
    "RELAY,1": "Cut off the fuel supply: Success! Speed: {speed}km/h.",
    "RELAY,0": "Restore fuel supply: Success!",
    "RESET": "RESET OK",
    "LOCKDOOR": "Door locked: Success!",
    "UNLOCKDOOR": "Door unlocked: Success!",
    "SET_MILEAGE": "Set mileage: Success! Mileage: {km}km.",
}


@dataclass(frozen=True)
class Model:
    """A device model: its sensors (absent ones read -1 / "") and the commands its firmware accepts."""

    name: str
    weight: float
    commands: frozenset[str]
    acc: bool = True
    door: bool = True
    charge: bool = True
    oil: bool = True
    defence: bool = True
    battery: bool = True
    wired: bool = True  # reports ``externalpower``
    relay_max_speed: int | None = None  # firmware refuses the fuel cut above this speed


_NO_DOOR = COMMANDS - {"LOCKDOOR", "UNLOCKDOOR"}
MODELS: tuple[Model, ...] = (  # the first model is the fully featured reference
    Model("VT05S", 0.80, COMMANDS),
    Model("GT06N", 0.10, _NO_DOOR, door=False),
    Model("ST901", 0.05, _NO_DOOR, door=False, charge=False, defence=False, battery=False, relay_max_speed=20),
    Model("AT4", 0.05, frozenset({"RESET", "SET_MILEAGE"}), acc=False, door=False, oil=False, defence=False,
          wired=False),
)
MODELS_BY_NAME = {m.name: m for m in MODELS}
_TACS = ("35889905", "35513900", "86277303", "86801204", "35173206")  # type allocation codes for IMEIs

MOVING, PARKED, SILENT = 0, 1, 2  # history modes: schedule runs / online but fuel cut / not reporting
PARK_IV = 300  # seconds between positions reported while parked
DOOR_OPEN_S = 60  # the door stays open this long after a stop
BATTERY_DRAIN = 0.002  # %/s with ACC off (or always, for unwired devices)
BATTERY_CHARGE = 0.01  # %/s with ACC on
LOW_BATTERY = 20
MAX_PLANS = 1024
MAX_BREAKS = 256
DAY = 86400
JSON_TYPE = "application/json; charset=UTF-8"
TRACK_FIELDS = ("imei", "servertime", "gpstime", "hearttime", "systemtime", "longitude", "latitude", "course",
                "speed", "acctime", "accstatus", "doorstatus", "chargestatus", "oilpowerstatus", "defencestatus",
                "datastatus", "battery", "mileage", "todaymileage", "externalpower")
INFO_FIELDS = ("imei", "devicename", "devicetype", "platenumber", "onlinetime", "platformduetime", "simcard",
               "iccid", "activatedtime", "userduetime")
USER_FIELDS = ("account", "username", "email", "mobile", "telephone", "createtime", "roletype")


class ApiError(Exception):
    """An Open API error: answered as HTTP 200 ``{"code": N, "message": ...}``."""

    def __init__(self, code: int) -> None:
        super().__init__(code, ERRORS.get(code, ""))
        self.code = code


def md5(text: str) -> str:
    """Lower-case hex MD5 of a UTF-8 string."""
    return hashlib.md5(text.encode()).hexdigest()


def signature(password: str, when: int) -> str:
    """The authorization signature: ``md5(md5(password) + time)``."""
    return md5(md5(password) + str(when))


# ----------------------------------------------------------------------------------------------- world model

class _Route:
    """A closed polyline (lat/lon degrees) with cumulative distances in metres."""

    __slots__ = ("lats", "lons", "dlat", "dlon", "cum", "inv", "course", "length")

    def __init__(self, points: list[tuple[float, float]]) -> None:
        pts = points + points[:1]
        self.lats = [p[0] for p in pts]
        self.lons = [p[1] for p in pts]
        self.dlat, self.dlon, self.cum, self.inv, self.course = [], [], [0.0], [], []
        for (la0, lo0), (la1, lo1) in zip(pts, pts[1:]):
            north = (la1 - la0) * 111_320.0
            east = (lo1 - lo0) * 111_320.0 * math.cos(math.radians((la0 + la1) / 2))
            seg = math.hypot(north, east) or 1.0
            self.dlat.append(la1 - la0)
            self.dlon.append(lo1 - lo0)
            self.inv.append(1.0 / seg)
            self.cum.append(self.cum[-1] + seg)
            self.course.append(int(math.degrees(math.atan2(east, north))) % 360)
        self.length = self.cum[-1]

    def at(self, s: float) -> tuple[float, float, int]:
        """Latitude, longitude and course at distance ``s`` along the (looped) route."""
        r = s % self.length
        i = bisect.bisect_right(self.cum, r) - 1
        f = (r - self.cum[i]) * self.inv[i]
        return self.lats[i] + self.dlat[i] * f, self.lons[i] + self.dlon[i] * f, self.course[i]


class _Plan:
    """A route plus a duty cycle; ``dist(tau)`` is the closed-form distance driven at schedule time ``tau``."""

    __slots__ = ("route", "period", "drive", "hump_len", "w", "amp", "per_hl", "cycle_dist", "vpk_kmh", "iv",
                 "speeding")

    def __init__(self, route: _Route, period: int, drive: int, humps: int, vpk_kmh: float, iv: int,
                 speed_limit: float) -> None:
        self.route, self.period, self.drive, self.vpk_kmh, self.iv = route, period, drive, vpk_kmh, iv
        self.hump_len = drive / humps
        self.w = math.pi / self.hump_len
        self.amp = vpk_kmh / 3.6 / self.w  # metres: integral of v*sin(w x) is amp*(1-cos(w x))
        self.per_hl = 2 * self.amp / self.hump_len  # distance per second of whole humps
        self.cycle_dist = 2 * self.amp * humps
        # offsets (s) inside each hump where speed rises above the limit, for speeding alarms
        self.speeding = ([h * self.hump_len + math.asin(speed_limit / vpk_kmh) / self.w for h in range(humps)]
                         if vpk_kmh > speed_limit + 1 else [])

    def dist(self, tau: float) -> float:
        k, u = divmod(tau, self.period)
        if u >= self.drive:
            return (k + 1) * self.cycle_dist
        x = u % self.hump_len
        return k * self.cycle_dist + (u - x) * self.per_hl + self.amp * (1 - math.cos(self.w * x))

    def speed(self, tau: float) -> int:
        u = tau % self.period
        return int(self.vpk_kmh * math.sin(self.w * (u % self.hump_len)) + 0.5) if u < self.drive else 0

    def acc(self, tau: float) -> int:
        return 1 if tau % self.period < self.drive else 0

    def last_change(self, tau: float) -> float:
        """Schedule time of the last ACC change at or before ``tau``."""
        k, u = divmod(tau, self.period)
        return k * self.period + (0 if u < self.drive else self.drive)

    def grid(self, lo: float, hi: float) -> Iterator[float]:
        """Schedule times of reported positions in [lo, hi): every ``iv`` s driving, every PARK_IV s parked."""
        k = math.floor(lo / self.period)
        while k * self.period < hi:
            base = k * self.period
            for off in self._offsets():
                t = base + off
                if t >= hi:
                    return
                if t >= lo:
                    yield t
            k += 1

    def _offsets(self) -> Iterator[float]:
        yield from range(0, self.drive, self.iv)
        yield from range(self.drive, self.period, PARK_IV)

    def events(self, lo: float, hi: float) -> Iterator[tuple[float, int]]:
        """(schedule time, alarm type) of engine on/off and speeding events in [lo, hi)."""
        k = math.floor(lo / self.period)
        while k * self.period < hi:
            base = k * self.period
            cycle = [(base, 9)] + [(base + math.ceil(x), 7) for x in self.speeding] + [(base + self.drive, 10)]
            for t, kind in cycle:
                if t >= hi:
                    return
                if t >= lo:
                    yield t, kind
            k += 1


@dataclass(slots=True, eq=False)
class SimDevice:
    """One simulated tracker. Public fields are the truth behind the API; tests may set them directly."""

    imei: str
    devicename: str
    devicetype: str
    account: str
    platenumber: str = ""
    simcard: str = ""
    iccid: str = ""
    latitude: float = 0.0
    longitude: float = 0.0
    speed: int = 0
    course: int = 0
    accstatus: int = 0
    acc_since: int = 0  # world time of the last ACC change (``acctime`` = now - acc_since)
    doorstatus: int = 0
    chargestatus: int = 0
    oilpowerstatus: int = 1
    defencestatus: int = 0
    datastatus: int = 2
    battery: float = 100.0  # %, -1 = no battery status
    mileage: float = 0.0  # m, -1 = none
    todaymileage: float = 0.0  # m, -1 = none
    gpstime: int = 0
    hearttime: int = 0
    systemtime: int = 0
    externalpower: str = ""
    onlinetime: int = 0
    platformduetime: int = 0
    activatedtime: int = 0
    userduetime: int = 0
    never_answers: bool = False
    locked: bool = False
    fences: list[Geofence] = field(default_factory=list)
    alarms: deque[tuple] | None = None  # stored alarms (systemtime, type, lon, lat, gpstime, speed, course, fence)
    # world-model internals
    _plan: _Plan | None = field(default=None, repr=False)
    _tau: float = field(default=0.0, repr=False)
    _s: float = field(default=0.0, repr=False)
    _mode: int = field(default=MOVING, repr=False)
    _breaks: list[tuple[float, float, int]] = field(default_factory=list, repr=False)
    _lag: int = field(default=2, repr=False)
    _acc_alarms: bool = field(default=True, repr=False)

    @property
    def model(self) -> Model:
        return MODELS_BY_NAME.get(self.devicetype, MODELS[0])


PUBLIC_DEVICE_FIELDS = tuple(f.name for f in fields(SimDevice)
                             if not f.name.startswith("_") and f.name not in ("fences", "alarms"))


@dataclass(slots=True)
class Geofence:
    """A circular geofence created through ``/api/geofence/create``."""

    id: int
    name: str
    alarmtype: int  # 0 out, 1 in, 2 in/out
    latitude: float
    longitude: float
    radius: int
    inside: bool = False


@dataclass(slots=True)
class Account:
    """A platform account; ``password_md5`` is md5(password)."""

    account: str
    password_md5: str
    roletype: int = 2  # 1 distributor, 2 end user, 3 virtual
    parent: str | None = None
    children: list[str] = field(default_factory=list)
    blocked: bool = False
    createtime: int = 0
    username: str = ""
    email: str = ""
    mobile: str = ""
    telephone: str = ""


@dataclass(slots=True)
class _Token:
    account: str
    expires: float
    valid: bool = True


@dataclass(slots=True)
class Command:
    """A command sent with ``/api/command/send``; answered when world or server time reaches its due time."""

    id: str
    imei: str
    account: str
    command: str
    param: str
    due_world: float
    due_server: float
    status: int = 0
    response: str = ""


@dataclass
class Faults(FaultSwitches):
    """Switchable faults for the ``/api/*`` endpoints.

    ``rate_limit``, ``http_500``, ``html_error``, ``malformed_json`` and ``drop_fields`` take either an int N (fire on
    the next N requests) or a float p in (0, 1] (fire with probability p on each request); ``True`` means always.
    ``drop_fields`` counts ``/api/track`` requests only. ``slow`` delays every API answer by that many seconds.
    ``html_status`` is the HTTP status of the HTML page (502, or 200 for a proxy that says "OK").
    """

    rate_limit: int | float = 0
    drop_fields: int | float = 0


# ---------------------------------------------------------------------------------------------- the simulator

class Simulator:
    """The simulated platform: accounts, tokens, fleet, commands, alarms, faults.

    Options: ``token_ttl`` (s), ``clock_offset`` (server clock = host clock + offset, s), ``time_window`` (s
    allowed between a signature's ``time`` and the server clock), ``command_delay`` ((min, max) s before a device
    replies), ``min_intervals`` ({endpoint: s} per account, e.g. ``{"auth": 12, "track": 10}``; keys are paths after
    ``/api/``, ``auth`` meaning ``authorization``), ``subaccounts`` (the first account becomes a distributor whose
    devices are spread over sub-accounts of at most 500 devices), ``host_time`` (clock function), ``send_fail_rate``
    (share of sends answered 20018), ``never_answers_rate``, ``speed_limit`` (km/h), ``center`` ((lat, lon)),
    ``alarm_cap`` (stored alarms per device), ``random_alarm_interval`` (mean s between random alarms per online
    device; 0 disables), ``empty_record`` (the shape of an empty playback/alarm answer, "" by default),
    ``request_log`` (size of ``requests``).
    """

    def __init__(self, accounts: dict[str, str], devices: int = 20, seed: int = 1, *, token_ttl: float = 7200,
                 clock_offset: float = 0, time_window: float = 300,
                 command_delay: tuple[float, float] = (2.0, 6.0), min_intervals: dict[str, float] | None = None,
                 subaccounts: bool = False, host_time: Callable[[], float] = time.time, send_fail_rate: float = 0.0,
                 never_answers_rate: float = 0.1, speed_limit: float = 100, center: tuple[float, float] = (52.37, 4.89),
                 alarm_cap: int = 200, random_alarm_interval: float = 6 * 3600, empty_record: Any = "",
                 request_log: int = 10_000) -> None:
        if not accounts:
            raise ValueError("at least one account is required")
        self.token_ttl, self.clock_offset, self.time_window = token_ttl, clock_offset, time_window
        self.command_delay = command_delay
        self.min_intervals = {_endpoint_key(k): v for k, v in (min_intervals or {}).items()}
        self.host_time, self.send_fail_rate, self.speed_limit = host_time, send_fail_rate, speed_limit
        self.center, self.alarm_cap, self.empty_record = center, alarm_cap, empty_record
        self.random_alarm_interval = random_alarm_interval
        self.faults = Faults()
        self.requests: deque[tuple[str, dict[str, str]]] = deque(maxlen=request_log)
        self.request_counts: Counter[str] = Counter()
        self.messages: deque[dict[str, Any]] = deque(maxlen=1000)
        self.commands: OrderedDict[str, Command] = OrderedDict()
        self._pending: list[Command] = []
        self._tokens: OrderedDict[str, _Token] = OrderedDict()
        self._current: dict[str, str] = {}  # account -> its valid token
        self._last_call: dict[tuple[str, str], float] = {}
        self._rng = random.Random(seed)  # the world (fleet, random alarms)
        self._req_rng = random.Random(seed + 1)  # request-driven draws (delays, faults), not perturbing the world
        self._cmd_ids = count(0x1B454 + self._rng.randrange(0x1000))
        self._fence_ids = count(1000)
        self._fenced: dict[str, SimDevice] = {}
        self.t = float(int(self.now()))  # world time
        self._day = int(self.t) // DAY
        self._next_random_alarm = self.t
        self.accounts: dict[str, Account] = {}
        owners = self._make_accounts(accounts, devices, subaccounts)
        self._trees = {name: frozenset(self._descendants(name)) for name in self.accounts}
        self.devices: dict[str, SimDevice] = {}
        self._make_fleet(owners, never_answers_rate)
        self._imeis = list(self.devices)
        self._schedule_random_alarm()

    # ------------------------------------------------------------------------------------------ clocks

    def now(self) -> float:
        """The server clock (host clock + ``clock_offset``)."""
        return self.host_time() + self.clock_offset

    # ---------------------------------------------------------------------------------------- accounts

    def _make_accounts(self, accounts: dict[str, str], n: int, subaccounts: bool) -> list[str]:
        """Create accounts; return the owner account of each of the ``n`` devices."""
        names = list(accounts)
        created = int(self.t) - 400 * DAY
        for i, (name, password) in enumerate(accounts.items()):
            self.accounts[name] = Account(name, md5(password), createtime=created + i * 3600, username=f"{name} user",
                                          email=f"{name}@example.com")
        shares = [n // len(names) + (1 if i < n % len(names) else 0) for i in range(len(names))]
        owners: list[str] = []
        for i, (name, share) in enumerate(zip(names, shares)):
            group = [name]
            if subaccounts and i == 0:
                first = self.accounts[name]
                first.roletype = 1
                for j in range(1, max(4, math.ceil(share / 500))):
                    sub = f"{name}_sub{j}"
                    self.accounts[sub] = Account(sub, first.password_md5, parent=name,
                                                 createtime=created + 86400 + j * 600, username=f"{sub} user",
                                                 email=f"{sub}@example.com")
                    first.children.append(sub)
                    group.append(sub)
            per = [share // len(group) + (1 if k < share % len(group) else 0) for k in range(len(group))]
            for owner, m in zip(group, per):
                owners.extend([owner] * m)
        return owners

    def _descendants(self, name: str) -> list[str]:
        out = [name]
        for child in self.accounts[name].children:
            out.extend(self._descendants(child))
        return out

    def in_tree(self, caller: str, account: str) -> bool:
        """Whether ``caller`` may act on ``account`` (itself or a sub-account)."""
        return account in self._trees.get(caller, ())

    # ------------------------------------------------------------------------------------------- fleet

    def _make_plans(self, n: int) -> list[_Plan]:
        rng, (lat0, lon0) = self._rng, self.center
        plans = []
        for _ in range(max(1, min(n, MAX_PLANS))):
            clat = lat0 + rng.uniform(-0.08, 0.08)
            clon = lon0 + rng.uniform(-0.13, 0.13)
            radius = rng.uniform(0.8, 5.0) / 111.32  # km -> degrees latitude
            k = rng.randint(4, 8)
            start = rng.uniform(0, 2 * math.pi)
            pts = []
            for j in range(k):
                a = start + 2 * math.pi * j / k + rng.uniform(-0.3, 0.3)
                r = radius * rng.uniform(0.6, 1.2)
                pts.append((clat + r * math.cos(a), clon + r * math.sin(a) / math.cos(math.radians(clat))))
            drive = rng.randrange(600, 2400, 10)
            plans.append(_Plan(_Route(pts), drive + rng.randrange(300, 1800, 10), drive, rng.randint(1, 3),
                               rng.uniform(30, 112), rng.choice((10, 15, 20, 30)), self.speed_limit))
        return plans

    def _statuses(self, n: int) -> list[int]:
        """``datastatus`` per device: the first is always online; a fleet of >= 20 has each special status."""
        status = [2] * n
        if n >= 20:
            special = self._rng.sample(range(1, n), 3 + max(2, n // 25))
            status[special[0]], status[special[1]], status[special[2]] = 1, 3, 5
            for i in special[3:]:
                status[i] = 4
        return status

    def _new_imei(self, taken: set[str]) -> str:
        while True:
            imei = with_luhn(self._rng.choice(_TACS) + f"{self._rng.randrange(10**6):06d}")
            if imei not in taken:
                taken.add(imei)
                return imei

    def _make_fleet(self, owners: list[str], never_rate: float) -> None:
        rng, t0 = self._rng, int(self.t)
        plans = self._make_plans(len(owners))
        statuses = self._statuses(len(owners))
        weights = [m.weight for m in MODELS]
        taken: set[str] = set()
        for i, owner in enumerate(owners):
            model = MODELS[0] if i == 0 else rng.choices(MODELS, weights)[0]
            imei = self._new_imei(taken)
            d = SimDevice(imei, f"{model.name}-{imei[-5:]}", model.name, owner,
                          platenumber=_plate(rng) if rng.random() < 0.8 else "",
                          simcard=f"06{rng.randrange(10**8):08d}" if rng.random() < 0.9 else "",
                          iccid=f"8931{rng.randrange(10**15):015d}{rng.randrange(10)}" if rng.random() < 0.9 else "",
                          never_answers=i > 0 and rng.random() < never_rate)
            d._plan = plans[rng.randrange(len(plans))]
            d._lag = rng.randint(1, 5)
            d._acc_alarms = model.acc
            c = rng.randrange(d._plan.period)  # tau = world time + c
            d.activatedtime = t0 - rng.randint(30, 400) * DAY
            d.onlinetime = d.activatedtime + rng.randint(0, 7 * DAY)
            d.userduetime = t0 + rng.randint(30, 700) * DAY
            d.platformduetime = d.userduetime + rng.randint(0, 60) * DAY
            battery = rng.uniform(15, 100) if model.battery else -1.0
            base_odo = rng.uniform(0, 50_000_000)
            self._init_device(d, statuses[i], c, model, battery, base_odo)
            self.devices[imei] = d
        self._ensure_silent_device()

    def _ensure_silent_device(self) -> None:
        """Make sure at least one online device never answers commands (when the fleet has 3+ devices)."""
        online = [d for d in self.devices.values() if d.datastatus == 2]
        if len(online) >= 3 and not any(d.never_answers for d in online):
            online[-1].never_answers = True

    def _init_device(self, d: SimDevice, status: int, c: int, model: Model, battery: float, base_odo: float) -> None:
        """Place a device at world time ``t`` according to its schedule and status."""
        rng, t0, plan = self._rng, int(self.t), d._plan
        d.datastatus = status
        if status == 1:  # never online: nothing was ever reported
            d.onlinetime, d._mode, d._tau = 0, SILENT, t0 + c
            d._s = plan.dist(d._tau)
            d.accstatus = d.doorstatus = d.chargestatus = d.oilpowerstatus = d.defencestatus = -1
            d.battery = d.mileage = d.todaymileage = -1
            return
        last = t0
        if status != 2:  # went quiet while parked at some time in the past
            if status == 3:
                d.platformduetime = d.userduetime = max(t0 - rng.randint(1, 60) * DAY, d.onlinetime + 2 * DAY)
                target = d.platformduetime
            else:
                target = t0 - rng.randint(2 * 3600, 20 * DAY)
            target = max(target, d.onlinetime + DAY)
            k = math.floor((target + c) / plan.period)
            last = k * plan.period + plan.drive + min(30, (plan.period - plan.drive) // 2) - c
        d._breaks = [(float(d.onlinetime), float(d.onlinetime + c), MOVING)]
        if status != 2:
            d._breaks.append((float(last), float(last + c), SILENT))
        d._mode = MOVING if status == 2 else SILENT
        d._tau = float(last + c)
        d._s = plan.dist(d._tau)
        acc = plan.acc(d._tau)
        d.latitude, d.longitude, d.course = plan.route.at(d._s)
        d.speed = plan.speed(d._tau)
        d.gpstime, d.systemtime, d.hearttime = last - d._lag, last, last
        d.acc_since = int(plan.last_change(d._tau) - c)
        d.accstatus = acc if model.acc else -1
        u = d._tau % plan.period - plan.drive
        d.doorstatus = (1 if 0 <= u < DOOR_OPEN_S else 0) if model.door else -1
        d.chargestatus = acc if model.charge and model.wired else (0 if model.charge else -1)
        d.oilpowerstatus = 1 if model.oil else -1
        d.defencestatus = 1 - acc if model.defence else -1
        d.battery = battery
        d.externalpower = _volts(d, acc) if model.wired else ""
        d.mileage = base_odo + d._s - plan.dist(d.onlinetime + c)
        midnight = max(last - last % DAY, d.onlinetime)
        d.todaymileage = d._s - plan.dist(midnight + c) if last // DAY == t0 // DAY else 0.0

    # -------------------------------------------------------------------------------------------- step

    def step(self, dt: float) -> None:
        """Advance the world by ``dt`` seconds: movement, sensors, command replies, alarms."""
        if dt <= 0:
            return
        t = self.t + dt
        self.t = t
        ti = int(t)
        if ti // DAY != self._day:
            self._new_day(ti // DAY)
        cos, sin, bisect_right = math.cos, math.sin, bisect.bisect_right
        for d in self.devices.values():
            if d.datastatus != 2:
                if d._mode != SILENT:
                    self._set_mode(d, SILENT)
                continue
            d.hearttime = ti
            if d.oilpowerstatus == 0:
                if d._mode != PARKED:
                    self._set_mode(d, PARKED)
                if ti - d.systemtime >= PARK_IV:
                    d.gpstime, d.systemtime = ti - d._lag, ti
                self._drain(d, dt, 0)
                continue
            if d._mode != MOVING:
                self._set_mode(d, MOVING)
            p = d._plan
            tau = d._tau + dt
            d._tau = tau
            k, u = divmod(tau, p.period)
            if u < p.drive:
                x = u % p.hump_len
                wx = p.w * x
                s = k * p.cycle_dist + (u - x) * p.per_hl + p.amp * (1.0 - cos(wx))
                d.speed = int(p.vpk_kmh * sin(wx) + 0.5)
                acc = 1
            else:
                s = (k + 1) * p.cycle_dist
                d.speed = 0
                acc = 0
                if d.doorstatus == 1 and u - p.drive >= DOOR_OPEN_S:
                    d.doorstatus = 0
            ds = s - d._s
            if ds > 0.0:
                d._s = s
                if d.mileage >= 0:
                    d.mileage += ds
                if d.todaymileage >= 0:
                    d.todaymileage += ds
                r = p.route
                rs = s % r.length
                i = bisect_right(r.cum, rs) - 1
                f = (rs - r.cum[i]) * r.inv[i]
                d.latitude = r.lats[i] + r.dlat[i] * f
                d.longitude = r.lons[i] + r.dlon[i] * f
                d.course = r.course[i]
                d.gpstime = ti - d._lag
                d.systemtime = ti
            elif ti - d.systemtime >= PARK_IV:
                d.gpstime, d.systemtime = ti - d._lag, ti
            if acc != d.accstatus and d.accstatus != -1:
                self._acc_changed(d, acc, ti, u - p.drive)
            b = d.battery
            if b >= 0:
                if acc and d.externalpower:
                    if b < 100:
                        d.battery = min(100.0, b + BATTERY_CHARGE * dt)
                else:
                    self._drain(d, dt, acc)
        if self._fenced:
            self._check_fences()
        if self._pending:
            self.settle_commands()
        if self.random_alarm_interval and self._imeis:
            self._random_alarms()

    def _new_day(self, day: int) -> None:
        self._day = day
        for d in self.devices.values():
            if d.todaymileage > 0:
                d.todaymileage = 0.0

    def _drain(self, d: SimDevice, dt: float, acc: int) -> None:
        b = d.battery
        if b < 0 or (acc and d.externalpower):
            return
        nb = b - BATTERY_DRAIN * dt
        if b >= LOW_BATTERY > nb:
            self._store_alarm(d, 2)
        if nb <= 3 and not d.externalpower:
            nb = 100.0  # somebody recharged the portable tracker
        d.battery = max(nb, 0.0)

    def _acc_changed(self, d: SimDevice, acc: int, ti: int, parked_for: float) -> None:
        """Schedule-driven ACC change (its engineOn/engineOff alarm is derived, not stored)."""
        d.accstatus = acc
        d.acc_since = ti
        if d.externalpower:
            d.externalpower = _volts(d, acc)
        if d.chargestatus != -1 and d.externalpower:
            d.chargestatus = acc
        if d.defencestatus != -1:
            d.defencestatus = 1 - acc
        if d.doorstatus != -1 and not acc and not d.locked and parked_for < DOOR_OPEN_S:
            d.doorstatus = 1

    def _set_mode(self, d: SimDevice, mode: int) -> None:
        """Record a history break; stopping or restarting the engine outside the schedule stores its alarm."""
        d._breaks.append((self.t, d._tau, mode))
        if len(d._breaks) > MAX_BREAKS:
            del d._breaks[0]
        previous, d._mode = d._mode, mode
        ti = int(self.t)
        if mode == PARKED:
            d.speed = 0
            if d.accstatus == 1:
                d.accstatus, d.acc_since = 0, ti
                self._store_alarm(d, 10)
        elif mode == MOVING and previous == PARKED and d.accstatus == 0 and d._plan.acc(d._tau):
            d.accstatus, d.acc_since = 1, ti
            self._store_alarm(d, 9)

    def _check_fences(self) -> None:
        for d in self._fenced.values():
            for fence in d.fences:
                inside = _distance(d.latitude, d.longitude, fence.latitude, fence.longitude) <= fence.radius
                if inside != fence.inside:
                    fence.inside = inside
                    if inside and fence.alarmtype in (1, 2):
                        self._store_alarm(d, 5, fence.id)
                    elif not inside and fence.alarmtype in (0, 2):
                        self._store_alarm(d, 6, fence.id)

    def _schedule_random_alarm(self) -> None:
        if self.random_alarm_interval and self._imeis:
            self._next_random_alarm += self._rng.expovariate(len(self._imeis) / self.random_alarm_interval)

    def _random_alarms(self) -> None:
        types, weights = zip(*RANDOM_ALARMS)
        while self._next_random_alarm <= self.t:
            d = self.devices[self._imeis[self._rng.randrange(len(self._imeis))]]
            kind = self._rng.choices(types, weights)[0]
            if d.datastatus == 2:
                self._store_alarm(d, kind)
            self._schedule_random_alarm()

    # ------------------------------------------------------------------------------------------ alarms

    def raise_alarm(self, imei: str, type_code: int, fenceid: int = 0, at: float | None = None) -> None:
        """Store an alarm of ``type_code`` for a device at its current position, at the current world
        time or at system time ``at`` (not later than the world time). The device sent it: its
        ``hearttime`` (last data of any kind) is at least the alarm's time."""
        d = self.devices[imei]
        self._store_alarm(d, type_code, fenceid, at)
        d.hearttime = max(d.hearttime, int(self.t if at is None else min(at, self.t)))

    def _store_alarm(self, d: SimDevice, kind: int, fenceid: int = 0, at: float | None = None) -> None:
        if d.alarms is None:
            d.alarms = deque(maxlen=self.alarm_cap)
        ti = int(self.t if at is None else min(at, self.t))
        record = (ti, kind, d.longitude, d.latitude, ti - d._lag, d.speed, d.course, fenceid)
        if not d.alarms or d.alarms[-1][0] <= ti:
            d.alarms.append(record)
        else:  # keep the stored alarms ordered by system time
            d.alarms.insert(bisect.bisect_right([a[0] for a in d.alarms], ti), record)

    def alarm_records(self, imeis: Iterable[str], begin: int, end: int, limit: int = 100) -> list[tuple]:
        """Alarms (systemtime, type, lon, lat, gpstime, speed, course, fenceid) with begin <= systemtime <= end.

        Nothing later than the world time is reported: an alarm the world has not reached yet does not exist.
        """
        end = min(end, int(self.t))
        streams = []
        for imei in imeis:
            d = self.devices[imei]
            stored = [a for a in (d.alarms or ()) if begin <= a[0] <= end]
            streams.append(heapq.merge(self._derived_alarms(d, begin - d._lag, end - d._lag), stored))
        return list(islice(heapq.merge(*streams, key=lambda a: a[0]), limit))

    def _derived_alarms(self, d: SimDevice, lo: int, hi: int) -> Iterator[tuple]:
        """Engine on/off and speeding alarms implied by the schedule, gpstime in [lo, hi]."""
        plan = d._plan
        if not d._acc_alarms and not plan.speeding:
            return
        for a, b, mode, c in self._segments(d, lo, hi + 1):
            if mode != MOVING:
                continue
            for tau, kind in plan.events(a + c, b + c):
                if kind != 7 and not d._acc_alarms:
                    continue
                gt = math.ceil(tau - c - 1e-6)
                if not lo <= gt <= hi:
                    continue
                lat, lon, course = plan.route.at(plan.dist(tau))
                yield (gt + d._lag, kind, lon, lat, gt, plan.speed(tau), course, 0)

    # ---------------------------------------------------------------------------------------- history

    def _segments(self, d: SimDevice, lo: float, hi: float) -> Iterator[tuple[float, float, int, float]]:
        """Pieces (a, b, mode, c) of [lo, hi) ∩ the device's history; in MOVING, tau = t + c; else tau = c."""
        br = d._breaks
        for i, (t0, tau0, mode) in enumerate(br):
            t1 = br[i + 1][0] if i + 1 < len(br) else self.t + 1e-9
            a, b = max(lo, t0), min(hi, t1)
            if a < b:
                yield a, b, mode, (tau0 - t0 if mode == MOVING else tau0)

    def tau_at(self, d: SimDevice, t: float) -> float:
        """Schedule time of a device at world time ``t`` (clamped to its history)."""
        br = d._breaks
        if not br:
            return d._tau
        if t >= self.t:
            return d._tau
        i = max(0, bisect.bisect_right(br, (t, math.inf, 9)) - 1)
        t0, tau0, mode = br[i]
        return tau0 + max(0.0, t - t0) if mode == MOVING else tau0

    def playback(self, imei: str, begin: int, end: int, limit: int = 1000) -> list[tuple[float, float, int, int, int]]:
        """Reported positions (lon, lat, gpstime, speed, course) with begin <= gpstime <= end, oldest first."""
        d = self.devices[imei]
        return list(islice(self._points(d, begin, end), limit))

    def _points(self, d: SimDevice, begin: int, end: int) -> Iterator[tuple[float, float, int, int, int]]:
        plan = d._plan
        for a, b, mode, c in self._segments(d, begin, end + 1):
            if mode == SILENT:
                continue
            if mode == PARKED:
                lat, lon, course = plan.route.at(plan.dist(c))
                for t in range(math.ceil(a / PARK_IV) * PARK_IV, math.ceil(b), PARK_IV):
                    yield lon, lat, t, 0, course
                continue
            for tau in plan.grid(a + c, b + c):
                t = int(round(tau - c))
                if begin <= t <= end:
                    lat, lon, course = plan.route.at(plan.dist(tau))
                    yield lon, lat, t, plan.speed(tau), course

    def mileage_km(self, imei: str, begin: int, end: int) -> float:
        """Distance driven in [begin, end), in km."""
        d = self.devices[imei]
        if not d._breaks:
            return 0.0
        return round((d._plan.dist(self.tau_at(d, end)) - d._plan.dist(self.tau_at(d, begin))) / 1000, 2)

    # ---------------------------------------------------------------------------------------- commands

    def send_command(self, d: SimDevice, account: str, command: str, param: str) -> Command:
        """Queue a command; its reply comes after a random ``command_delay`` (never, if ``never_answers``)."""
        cid = f"{next(self._cmd_ids):X}"
        delay = self._req_rng.uniform(*self.command_delay)
        cmd = Command(cid, d.imei, account, command, param, self.t + delay, self.now() + delay)
        self.commands[cid] = cmd
        while len(self.commands) > 10_000:
            self.commands.popitem(last=False)
        if not d.never_answers:
            self._pending.append(cmd)
        return cmd

    def settle_commands(self) -> None:
        """Deliver the replies that are due (by world time or by server clock) and apply their effects."""
        now, keep = self.now(), []
        for cmd in self._pending:
            d = self.devices.get(cmd.imei)
            if d is None or d.never_answers:
                continue  # it will never reply
            if d.datastatus == 2 and (self.t >= cmd.due_world or now >= cmd.due_server):
                cmd.response, cmd.status = _apply_command(d, cmd), 1
            else:
                keep.append(cmd)  # not due yet, or the device went offline: delivered when it is back
        self._pending = keep

    # ------------------------------------------------------------------------------------------ tokens

    def login(self, account: str) -> str:
        """Issue a token for ``account``, voiding its previous one."""
        self.invalidate_tokens(account)
        token = secrets.token_hex(16)
        self._tokens[token] = _Token(account, self.now() + self.token_ttl)
        self._current[account] = token
        while len(self._tokens) > 10_000:
            self._tokens.popitem(last=False)
        return token

    def invalidate_tokens(self, account: str | None = None) -> int:
        """Void the current token of ``account`` (all accounts if None), as a login elsewhere does: 10011."""
        names = list(self._current) if account is None else [account]
        voided = 0
        for name in names:
            token = self._current.pop(name, None)
            if token in self._tokens:
                self._tokens[token].valid = False
                voided += 1
        return voided

    def check_token(self, token: str) -> str:
        """The account behind a token, or ApiError 10010/10011/10012/10016."""
        info = self._tokens.get(token)
        if info is None:
            raise ApiError(10010)
        if not info.valid:
            raise ApiError(10011)
        if self.now() >= info.expires:
            raise ApiError(10012)
        if self.accounts[info.account].blocked:
            raise ApiError(10016)
        return info.account

    def check_interval(self, account: str, endpoint: str) -> None:
        """Enforce ``min_intervals``: a request sooner than the interval after the last accepted one gets 10009."""
        interval = self.min_intervals.get(endpoint)
        if not interval:
            return
        now, key = self.now(), (account, endpoint)
        last = self._last_call.get(key)
        if last is not None and now - last < interval:
            raise ApiError(10009)
        self._last_call[key] = now

    # ------------------------------------------------------------------------------------------ truth

    def device_truth(self, d: SimDevice) -> dict[str, Any]:
        """All public fields of a device, JSON-ready."""
        out = {name: getattr(d, name) for name in PUBLIC_DEVICE_FIELDS}
        out["fences"] = [{"id": f.id, "name": f.name, "alarmtype": f.alarmtype, "latitude": f.latitude,
                          "longitude": f.longitude, "radius": f.radius, "inside": f.inside} for f in d.fences]
        return out

    def add_fence(self, d: SimDevice, name: str, alarmtype: int, lat: float, lon: float, radius: int) -> Geofence:
        fence = Geofence(next(self._fence_ids), name, alarmtype, lat, lon, radius)
        fence.inside = _distance(d.latitude, d.longitude, lat, lon) <= radius
        d.fences.append(fence)
        self._fenced[d.imei] = d
        return fence


# ------------------------------------------------------------------------------------------- small helpers

def _endpoint_key(name: str) -> str:
    """``/api/track`` or ``track`` -> ``track``; ``auth`` -> ``authorization``."""
    key = name.strip("/").removeprefix("api/")
    return "authorization" if key == "auth" else key


def _plate(rng: random.Random) -> str:
    letters = "BDFGHJKLNPRSTVXZ"
    return (f"{rng.choice(letters)}{rng.choice(letters)}-{rng.randrange(100, 1000)}-"
            f"{rng.choice(letters)}")


def _volts(d: SimDevice, acc: int) -> str:
    return f"{(13.7 if acc else 12.3) + 0.1 * d._lag:.2f}"


def _distance(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Metres between two nearby points (equirectangular)."""
    north = (lat2 - lat1) * 111_320.0
    east = (lon2 - lon1) * 111_320.0 * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(north, east)


def _apply_command(d: SimDevice, cmd: Command) -> str:
    """The device executes a command: apply its effect and return its reply text."""
    relay_max = d.model.relay_max_speed
    if cmd.command == "RELAY,1":
        if relay_max is not None and d.speed > relay_max:
            return f"Cut off the fuel supply: fail! Speed: {d.speed}km/h > {relay_max}km/h."
        d.oilpowerstatus = 0
        reply = REPLIES["RELAY,1"].format(speed=d.speed)
        d.speed = 0
        return reply
    if cmd.command == "RELAY,0":
        d.oilpowerstatus = 1
    elif cmd.command in ("LOCKDOOR", "UNLOCKDOOR"):
        d.locked = cmd.command == "LOCKDOOR"
        if d.locked and d.doorstatus == 1:
            d.doorstatus = 0
    elif cmd.command == "SET_MILEAGE":
        return _set_mileage(d, cmd.param)
    return REPLIES[cmd.command]


def _set_mileage(d: SimDevice, param: str) -> str:
    """SET_MILEAGE reply with Concox-style error codes (102 format, 103 invalid, 101 too large)."""
    try:
        value = json.loads(param)["mileage"]
        km = float(value)
    except (ValueError, TypeError, KeyError):
        return "error:102"
    if not math.isfinite(km) or km < 0:
        return "error:103"
    if km > 9_999_999:
        return "error:101"
    d.mileage = km * 1000
    return REPLIES["SET_MILEAGE"].format(km=value)


# ------------------------------------------------------------------------------------------------ the API

def _int(params: dict[str, str], name: str, required: bool = True) -> int | None:
    value = params.get(name, "").strip()
    if not value:
        if required:
            raise ApiError(10005)
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(10004) from None


def _float(params: dict[str, str], name: str) -> float:
    value = params.get(name, "").strip()
    if not value:
        raise ApiError(10005)
    try:
        out = float(value)
    except ValueError:
        raise ApiError(10004) from None
    if not math.isfinite(out):
        raise ApiError(10004)
    return out


def _str(params: dict[str, str], name: str) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise ApiError(10005)
    return value


def _imei_list(params: dict[str, str], name: str, cap: int = 100) -> list[str]:
    imeis = list(dict.fromkeys(i.strip() for i in _str(params, name).split(",") if i.strip()))
    if not imeis:
        raise ApiError(10005)
    if len(imeis) > cap:
        raise ApiError(10006)
    return imeis


class OpenApi:
    """The ``/api/*`` handlers. Each takes (params, caller account) and returns the ``record`` or raises ApiError.

    IMEIs outside the caller's account tree: batch endpoints (track, detail, mileage, alarm list with several IMEIs)
    leave them out of the answer, single-IMEI endpoints answer 10013 (unknown IMEI: 20005). Whether the real
    platform fails a whole batch with 10013 or drops the IMEI is undocumented; dropping is the tolerant choice.
    """

    #: path after /api/ -> (handler name, needs a token)
    ROUTES: dict[str, tuple[str, bool]] = {
        "authorization": ("authorization", False), "track": ("track", True), "playback": ("playback", True),
        "geofence/create": ("geofence_create", True), "command/send": ("command_send", True),
        "command/query": ("command_query", True), "device/list": ("device_list", True),
        "alarm/list": ("alarm_list", True), "user/block": ("user_block", True),
        "user/unblock": ("user_unblock", True), "user/info": ("user_info", True),
        "device/detail": ("device_detail", True), "message/send": ("message_send", True),
        "device/mileage": ("device_mileage", True), "user/list": ("user_list", True),
        "user/password/set": ("password_set", True),
    }

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def call(self, endpoint: str, params: dict[str, str]) -> Any:
        """Dispatch one request (after faults); return the ``record`` (None: no record key)."""
        route = self.ROUTES.get(endpoint)
        if route is None:
            raise ApiError(10001)
        name, needs_token = route
        caller = ""
        if needs_token:
            caller = self.sim.check_token(_str(params, "access_token"))
            self.sim.check_interval(caller, endpoint)
        return getattr(self, name)(params, caller)

    # ----------------------------------------------------------------------------------- helpers

    def _owned(self, caller: str, imei: str) -> SimDevice:
        d = self.sim.devices.get(imei)
        if d is None:
            raise ApiError(20005)
        if not self.sim.in_tree(caller, d.account):
            raise ApiError(10013)
        return d

    def _visible(self, caller: str, imeis: list[str]) -> list[SimDevice]:
        devices = self.sim.devices
        return [devices[i] for i in imeis if i in devices and self.sim.in_tree(caller, devices[i].account)]

    def _target_account(self, caller: str, name: str, strict: bool = False) -> Account:
        """An account the caller may manage (itself or a sub-account; only sub-accounts when ``strict``)."""
        account = self.sim.accounts.get(name)
        if account is None:
            raise ApiError(20005)
        if not self.sim.in_tree(caller, name) or (strict and name == caller):
            raise ApiError(10007)
        return account

    def _time_range(self, params: dict[str, str]) -> tuple[int, int]:
        begin, end = _int(params, "begintime"), _int(params, "endtime")
        if end < begin:
            raise ApiError(10004)
        return begin, end

    # ------------------------------------------------------------------------------------ endpoints

    def authorization(self, params: dict[str, str], _: str) -> dict[str, Any]:
        sim = self.sim
        when, name, sig = _int(params, "time"), _str(params, "account"), _str(params, "signature")
        if name in sim.accounts:
            sim.check_interval(name, "authorization")
        if abs(when - sim.now()) > sim.time_window:
            raise ApiError(10014)
        account = sim.accounts.get(name)
        if account is None or sig != md5(account.password_md5 + str(when)):
            raise ApiError(20001)
        if account.blocked:
            raise ApiError(10016)
        return {"access_token": sim.login(name), "expires_in": int(sim.token_ttl)}

    def track(self, params: dict[str, str], caller: str) -> list[dict[str, Any]]:
        sim = self.sim
        server = int(sim.now())
        records = [track_record(d, server, int(sim.t)) for d in self._visible(caller, _imei_list(params, "imeis"))]
        if records and sim.faults.fire("drop_fields", sim._req_rng):
            droppable = TRACK_FIELDS[1:]
            for rec in records:
                for name in sim._req_rng.sample(droppable, sim._req_rng.randint(1, 3)):
                    rec.pop(name, None)
        return records

    def device_detail(self, params: dict[str, str], caller: str) -> list[dict[str, Any]]:
        return [info_record(d) for d in self._visible(caller, _imei_list(params, "imeis"))]

    def device_list(self, params: dict[str, str], caller: str) -> list[dict[str, Any]]:
        name = params.get("account", "").strip() or caller
        self._target_account(caller, name)
        # The document caps the list at 500 per account and offers no paging: an account with more gets 500.
        owned = (d for d in self.sim.devices.values() if d.account == name)
        return [info_record(d) for d in islice(owned, 500)]

    def playback(self, params: dict[str, str], caller: str) -> Any:
        d = self._owned(caller, _str(params, "imei"))
        begin, end = self._time_range(params)
        points = self.sim.playback(d.imei, begin, end, 1000)
        if not points:
            return self.sim.empty_record
        return ";".join(f"{_deg(lon)},{_deg(lat)},{t},{v},{c}" for lon, lat, t, v, c in points)

    def alarm_list(self, params: dict[str, str], caller: str) -> Any:
        imeis = _imei_list(params, "imei")
        devices = [self._owned(caller, imeis[0])] if len(imeis) == 1 else self._visible(caller, imeis)
        begin, end = self._time_range(params)
        rows = self.sim.alarm_records([d.imei for d in devices], begin, end, 100)
        if not rows:
            return self.sim.empty_record
        return ";".join(f"{k},{_deg(lon)},{_deg(lat)},{gt},{st},{v},{c},{f}" for st, k, lon, lat, gt, v, c, f in rows)

    def device_mileage(self, params: dict[str, str], caller: str) -> list[dict[str, Any]]:
        imeis = _imei_list(params, "imeis")
        begin, end = _int(params, "begintime"), _int(params, "endtime")
        if begin % 1800 or end % 1800 or end - begin > 7 * DAY:  # minute 0 or 30, seconds 0; span <= 7 days
            raise ApiError(10006)
        if end <= begin:
            raise ApiError(10004)
        return [{"imei": d.imei, "mileage": self.sim.mileage_km(d.imei, begin, end)}
                for d in self._visible(caller, imeis)]

    def command_send(self, params: dict[str, str], caller: str) -> dict[str, str]:
        sim = self.sim
        d = self._owned(caller, _str(params, "imei"))
        command = _str(params, "command")
        if command not in COMMANDS or command not in d.model.commands:
            raise ApiError(20048)
        param = params.get("paramData", "").strip()
        if command == "SET_MILEAGE":
            if not param:
                raise ApiError(10005)
            try:
                if not isinstance(json.loads(param), dict):
                    raise ValueError
            except ValueError:
                raise ApiError(10004) from None
        offline = {1: 20017, 3: 20046, 4: 20017, 5: 20089}
        if d.datastatus != 2:
            raise ApiError(offline.get(d.datastatus, 20017))
        if sim.send_fail_rate and sim._req_rng.random() < sim.send_fail_rate:
            raise ApiError(20018)
        return {"commandid": sim.send_command(d, caller, command, param).id}

    def command_query(self, params: dict[str, str], caller: str) -> dict[str, Any]:
        cmd = self.sim.commands.get(_str(params, "commandid"))
        if cmd is None or not self.sim.in_tree(caller, cmd.account):
            raise ApiError(20005)
        return {"response": cmd.response, "commandstatus": cmd.status}

    def geofence_create(self, params: dict[str, str], caller: str) -> None:
        d = self._owned(caller, _str(params, "imei"))
        name = _str(params, "efencename")
        alarmtype, radius = _int(params, "alarmtype"), _int(params, "radius")
        lat, lon = _float(params, "latitude"), _float(params, "longitude")
        if alarmtype not in (0, 1, 2) or not 100 <= radius <= 5000 or abs(lat) > 90 or abs(lon) > 180:
            raise ApiError(10006)
        self.sim.add_fence(d, name, alarmtype, lat, lon, radius)
        return None

    def user_info(self, params: dict[str, str], caller: str) -> dict[str, Any]:
        return user_record(self._target_account(caller, _str(params, "account")))

    def user_list(self, params: dict[str, str], caller: str) -> list[dict[str, Any]]:
        # The document's demo lists the queried account itself before its sub-customers; we do the same.
        account = self._target_account(caller, params.get("account", "").strip() or caller)
        members = [account] + [self.sim.accounts[c] for c in account.children]
        return [user_record(a) for a in members[:500]]

    def user_block(self, params: dict[str, str], caller: str) -> None:
        self._target_account(caller, _str(params, "account"), strict=True).blocked = True

    def user_unblock(self, params: dict[str, str], caller: str) -> None:
        self._target_account(caller, _str(params, "account"), strict=True).blocked = False

    def message_send(self, params: dict[str, str], caller: str) -> None:
        given = [a.strip() for a in _str(params, "accounts").split(",") if a.strip()]
        content = _str(params, "content")
        if len(given) > 200 or len(content) > 300:
            raise ApiError(10006)
        names = list(dict.fromkeys(given))
        for name in names:
            self._target_account(caller, name)
        self.sim.messages.append({"from": caller, "accounts": names, "content": content, "time": int(self.sim.now())})

    def password_set(self, params: dict[str, str], caller: str) -> None:
        account = self._target_account(caller, _str(params, "account"))
        password = _str(params, "password")
        if len(password) != 32 or any(ch not in "0123456789abcdef" for ch in password):
            raise ApiError(10004)
        account.password_md5 = password


def _deg(x: float) -> str:
    return repr(round(x, 6))


def track_record(d: SimDevice, servertime: int, world: int) -> dict[str, Any]:
    """One ``/api/track`` record, undocumented ``servertime``/``externalpower`` included; absent sensors read -1."""
    return {
        "imei": d.imei, "servertime": servertime, "gpstime": d.gpstime, "hearttime": d.hearttime,
        "systemtime": d.systemtime, "longitude": round(d.longitude, 6), "latitude": round(d.latitude, 6),
        "course": d.course, "speed": d.speed,
        "acctime": -1 if d.accstatus == -1 else (max(0, world - d.acc_since) if d.acc_since else 0),
        "accstatus": d.accstatus, "doorstatus": d.doorstatus, "chargestatus": d.chargestatus,
        "oilpowerstatus": d.oilpowerstatus, "defencestatus": d.defencestatus, "datastatus": d.datastatus,
        "battery": int(d.battery) if d.battery >= 0 else -1, "mileage": int(d.mileage) if d.mileage >= 0 else -1,
        "todaymileage": int(d.todaymileage) if d.todaymileage >= 0 else -1, "externalpower": d.externalpower,
    }


def info_record(d: SimDevice) -> dict[str, Any]:
    """One ``/api/device/list`` or ``/api/device/detail`` record."""
    return {name: getattr(d, name) for name in INFO_FIELDS}


def user_record(a: Account) -> dict[str, Any]:
    """One ``/api/user/info`` or ``/api/user/list`` record (blockstatus 0 = blocked, 1 = not)."""
    out = {name: getattr(a, name) for name in USER_FIELDS}
    out["blockstatus"] = 0 if a.blocked else 1
    return out


# ----------------------------------------------------------------------------------------------- HTTP layer

_TRUNCATED = '{"code":0,"record":[{"imei":"35889905102533'


class _Http:
    """aiohttp handlers: parameter merging, request log, faults, JSON answers with a server-clock Date."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.api = OpenApi(sim)

    def _headers(self, content_type: str) -> dict[str, str]:
        return {"Content-Type": content_type, "Date": formatdate(self.sim.now(), usegmt=True)}

    def json(self, payload: Any, status: int = 200) -> web.Response:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return web.Response(status=status, body=body.encode(), headers=self._headers(JSON_TYPE))

    async def api_handler(self, request: web.Request) -> web.Response:
        sim = self.sim
        params = dict(request.query)
        if request.method == "POST":
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        path = request.path
        sim.requests.append((path, params))
        sim.request_counts[path] += 1
        faulted = await self._fault()
        if faulted is not None:
            return faulted
        if sim._pending:
            sim.settle_commands()
        try:
            record = self.api.call(path.removeprefix("/api/").strip("/"), params)
        except ApiError as err:
            return self.json({"code": err.code, "message": ERRORS.get(err.code, "")})
        return self.json({"code": 0} if record is None else {"code": 0, "record": record})

    async def _fault(self) -> web.Response | None:
        faults, rng = self.sim.faults, self.sim._req_rng
        if faults.slow > 0:
            await asyncio.sleep(faults.slow)
        if faults.fire("http_500", rng):
            return web.Response(status=500, text="Internal Server Error", headers=self._headers("text/plain"))
        if faults.fire("html_error", rng):
            page = HTML_PAGE.format(status=faults.html_status)
            return web.Response(status=faults.html_status, body=page.encode(), headers=self._headers("text/html"))
        if faults.fire("malformed_json", rng):
            return web.Response(body=_TRUNCATED.encode(), headers=self._headers(JSON_TYPE))
        if faults.fire("rate_limit", rng):
            return self.json({"code": 10009, "message": ERRORS[10009]})
        return None

    # ------------------------------------------------------------------------------------- /_sim/*

    async def invalidate(self, request: web.Request) -> web.Response:
        return self.json({"invalidated": self.sim.invalidate_tokens(request.query.get("account") or None)})

    async def alarm(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("imei") not in self.sim.devices or not q.get("type", "").isdigit():
            return self.json({"error": "imei and numeric type required"}, 400)
        self.sim.raise_alarm(q["imei"], int(q["type"]), int(q.get("fenceid", "0") or 0))
        return self.json({"ok": True})


def create_app(accounts: dict[str, str] | None = None, devices: int = 20, seed: int = 1,
               tick: float | None = DEFAULT_TICK, **options: Any) -> web.Application:
    """The simulator as an aiohttp app; ``app["sim"]`` is the :class:`Simulator` (made with ``options``).
    ``tick`` 0 or None: a still world that only ``/_sim/step`` moves (see :mod:`fleetbridge.simkit`)."""
    sim = Simulator(accounts or {"demo": "secret"}, devices=devices, seed=seed, **options)
    http = _Http(sim)
    app = sim_app(sim)
    app.router.add_route("*", "/api/{tail:.*}", http.api_handler)
    app.router.add_post("/_sim/invalidate", http.invalidate)
    app.router.add_post("/_sim/alarm", http.alarm)
    add_admin_routes(app, sim, sim.faults, step_answer=lambda: {"world_time": sim.t}, devices=DeviceTable(
        sim.devices, sim.device_truth, PUBLIC_DEVICE_FIELDS, "imei", ids="imeis", unknown="unknown imei",
        header=lambda: {"servertime": int(sim.now()), "world_time": sim.t}, filters=("account",)))
    start_ticker(app, level_with(sim, sim.now), tick)
    return app


if __name__ == "__main__":  # pragma: no cover - manual demo:
    # ``python -m fleetbridge_plugins.opengps.simulator [port] [devices]``
    run_demo(create_app, 8765, 20)
