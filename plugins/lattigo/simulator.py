"""A faithful simulator of the OptConnect Lattigo API v2, for demos, end-to-end tests and benchmarks.

The sources of truth are ``shared/vendor-docs/optconnect-lattigo.txt`` and the "OptConnect Lattigo" section of
``shared/docs/vendor-notes.md``. Every endpoint of the document is served under ``/v2/`` with HTTP Basic auth
(``key_name:api_key``); switchable faults and a truth/control interface live under ``/_sim/`` (no auth, no
faults).

The world is cheap and deterministic (by ``seed``) so that 10k+ devices step in milliseconds:

* Devices are named by ICCID. Each has a data rate; while it is connected and its SIM active, its counters grow at
  that rate, accrued every ``usage_granularity`` seconds of world time (the carrier's usage records).
* Connectivity toggles at exponentially distributed times (``mean_online``/``mean_offline``).
* Daily usage before the simulation started is a hash of (device, day); days lived through are recorded.
* Carrier actions (SIM suspend/restore, terminate, activation, cellular locate, SMS delivery) run from a time
  queue after a delay: Lattigo answers "Success" when it *accepts* a change, ``state`` follows later.
* Device reports exist for GPS-capable devices on a fixed grid of times and are computed on demand.

World time (``Simulator.t``) starts at the host clock and advances only through :meth:`Simulator.step`; the
background ticker of :func:`create_app` keeps it level with the host clock. Rate limiting counts host time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import heapq
import json
import math
import random
import re
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from itertools import count
from typing import Any

from aiohttp import web

from fleetbridge.simkit import (DEFAULT_TICK, HTML_PAGE, DeviceTable, FaultSwitches, add_admin_routes, level_with,
                               luhn_digit, run_demo, sim_app, start_ticker, with_luhn)

__all__ = ["ApiError", "Faults", "SimDevice", "Simulator", "create_app", "RATE_PLANS", "CARRIERS", "ROUTES"]

DAY = 86400
MB, GB = 1024 ** 2, 1024 ** 3
JSON_TYPE = "application/json; charset=utf-8"
REPORT_EVERY = 300  # s between device reports of a GPS-capable device
MAX_REPORTS = 500  # newest reports answered per request
HISTORY_DAYS = 70  # recorded days kept per device
NOTE_FIELDS = ("note", "note1", "note2", "note3")
MAX_NOTE = 250
DUTY = 0.85  # share of a day a device is online, for usage before the simulation started
SMS_RETRY = 60.0  # s between delivery attempts to an offline device
SMS_VALIDITY = DAY
CENTER = (40.7608, -111.8910)  # Salt Lake City


@dataclass(frozen=True)
class Carrier:
    """A carrier behind Lattigo: what it supports."""

    code: str
    weight: float
    locate: bool  # cellular_locate supported
    sms_status: bool  # get_sms supported (the document: VDF only)


CARRIERS: tuple[Carrier, ...] = (
    Carrier("VZW", 0.45, True, False),
    Carrier("ATT", 0.30, True, False),
    Carrier("VDF", 0.15, True, True),
    Carrier("TMO", 0.10, False, False),
)
CARRIER_BY_CODE = {c.code: c for c in CARRIERS}

#: Rate plans of the simulated account (a string or two, as such APIs often do).
RATE_PLANS: tuple[dict[str, Any], ...] = (
    {"name": "ACME Co 5MB Rate Plan", "days_in_term": 730, "activation_fee": "0.0", "termination_fee": "100.0",
     "monthly_data_plan_cost": "2.50", "monthly_data_allowance_bytes": 5 * MB, "overage_data_unit_bytes": MB,
     "overage_data_unit_cost": "0.50", "monthly_sms_plan_cost": "0.0", "monthly_sms_allowance": 50,
     "overage_sms_unit": 1, "overage_sms_unit_cost": "0.05"},
    {"name": "ACME Co 1GB Plan", "days_in_term": 730, "activation_fee": "0.0", "termination_fee": "150.0",
     "monthly_data_plan_cost": "9.00", "monthly_data_allowance_bytes": str(GB), "overage_data_unit_bytes": MB,
     "overage_data_unit_cost": "0.01", "monthly_sms_plan_cost": "0.0", "monthly_sms_allowance": 100,
     "overage_sms_unit": 1, "overage_sms_unit_cost": "0.05"},
    {"name": "ACME Co 10GB Plan", "days_in_term": 1095, "activation_fee": "10.0", "termination_fee": "200.0",
     "monthly_data_plan_cost": "35.00", "monthly_data_allowance_bytes": 10 * GB, "overage_data_unit_bytes": GB,
     "overage_data_unit_cost": "8.00", "monthly_sms_plan_cost": "1.0", "monthly_sms_allowance": 500,
     "overage_sms_unit": 1, "overage_sms_unit_cost": "0.02"},
    {"name": "ACME Co Pooled Unlimited", "days_in_term": 365, "activation_fee": "0.0", "termination_fee": "0.0",
     "monthly_data_plan_cost": "60.00", "monthly_data_allowance_bytes": 0, "overage_data_unit_bytes": 0,
     "overage_data_unit_cost": "0.0", "monthly_sms_plan_cost": "0.0", "monthly_sms_allowance": 0,
     "overage_sms_unit": 0, "overage_sms_unit_cost": "0.0"},
)
PLAN_BY_NAME = {p["name"]: p for p in RATE_PLANS}
SKUS = ("OC-NEO2-V", "OC-NEO2-A", "OC-GEN4-V", "OC-CYBR-LTE")
USERS = ("admin@acme.example", "ops@acme.example", "billing@acme.example")
COST_CENTERS = ("", "Field Ops", "Retail", "Kiosks", "ATM Network")
CARRIER_STATES = {"active": "Active", "suspend": "Suspended", "deactivated": "Deactivated", "pending": "Pending"}
_TACS = ("35170008", "35291110", "86154305", "35905311")

#: (method, path, handler name): every endpoint of the document.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/v2/devices", "list_devices"),
    ("GET", "/v2/devices/{name}", "get_device"),
    ("GET", "/v2/devices/{name}/get_sms", "get_sms"),
    ("PUT", "/v2/devices/{name}/note", "put_note"),
    ("GET", "/v2/devices/{name}/device_reports", "device_reports"),
    ("GET", "/v2/devices/{name}/daily_data_usages", "daily_usages"),
    ("GET", "/v2/devices/{name}/monthly_data_usages", "monthly_usages"),
    ("POST", "/v2/devices/{name}/cellular_locate", "cellular_locate"),
    ("GET", "/v2/devices/{name}/calculate_etf", "calculate_etf"),
    ("POST", "/v2/devices/{name}/calculate_etf", "calculate_etf"),  # the document's examples POST
    ("POST", "/v2/device_operations/activation_request", "activation_request"),
    ("PUT", "/v2/device_operations/change_cost_center", "change_cost_center"),
    ("PUT", "/v2/device_operations/change_simstate", "change_simstate"),
    ("POST", "/v2/device_operations/remove_usage_limit", "remove_usage_limit"),
    ("POST", "/v2/device_operations/send_sms", "send_sms"),
    ("POST", "/v2/device_operations/set_usage_limit", "set_usage_limit"),
    ("PUT", "/v2/device_operations/terminate_service", "terminate_service"),
    ("POST", "/v2/device_operations/upload_request", "upload_request"),
    ("GET", "/v2/rate_plans", "rate_plans"),
    ("GET", "/v2/users", "users"),
)


class ApiError(Exception):
    """An HTTP error answer: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


# ------------------------------------------------------------------------------------------------- the fleet

@dataclass(slots=True, eq=False)
class SimDevice:
    """One simulated device and SIM. Public fields are the truth behind the API; tests may set them."""

    device_name: str  # the ICCID
    id: int  # the web portal's number: never used in a path
    owner: str  # key_name of the account
    imei: str
    imsi: str
    msisdn: str
    mdn: str
    meid: str
    esn: str
    min: str
    ip_address: str
    ipv6: str
    carrier: str
    rate_plan_name: str
    carrier_rate_plan: str
    sku: str
    state: str = "active"  # active | suspend | deactivated | pending
    connected: bool = False
    connected_since: float = 0.0
    offline_since: float = 0.0
    last_activation_date: float = 0.0
    contract_end_date: float = 0.0
    latitude: float | None = None
    longitude: float | None = None
    location_confidence: int | None = None
    address: str = ""
    bytes_used: int = 0  # lifetime
    sms_used: int = 0  # lifetime
    note: str = ""
    note1: str = ""
    note2: str = ""
    note3: str = ""
    cost_center: str = ""
    usage_limit_kb: int | None = None
    usage_limit_users: list[str] = field(default_factory=list)
    sms_capable: bool = True
    has_reports: bool = False
    rate: float = 500.0  # bytes/s while connected
    style: int = 0  # 0 strict types; 1 loose (strings, zone-less times); 2 strict, milliseconds and offsets
    pending: str | None = None  # a carrier change in flight ("suspend", "restore", "terminate", "activate")
    sms: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))
    _toggle_at: float = field(default=math.inf, repr=False)
    _days: dict[int, list[int]] = field(default_factory=dict, repr=False)  # day index -> [bytes, sms] lived

    @property
    def carrier_info(self) -> Carrier:
        return CARRIER_BY_CODE.get(self.carrier, CARRIERS[0])


PUBLIC_DEVICE_FIELDS = tuple(f.name for f in fields(SimDevice) if not f.name.startswith("_") and f.name != "sms")


@dataclass
class Faults(FaultSwitches):
    """Switchable faults for the ``/v2/*`` endpoints.

    ``rate_limit``, ``http_500``, ``html_error`` and ``malformed_json`` take an int N (fire on the next N requests)
    or a float p in (0, 1] (fire with probability p); ``True`` means always. ``slow`` delays every answer by that
    many seconds. ``html_status`` is the status of the HTML page (502, or 200 for a proxy that says "OK").
    ``retry_after`` > 0 adds a ``Retry-After`` header (seconds) to every 429; 0 leaves it out (undocumented).
    """

    rate_limit: int | float = 0
    retry_after: float = 0.0


# ---------------------------------------------------------------------------------------------- the simulator

class Simulator:
    """The simulated Lattigo backend: accounts, fleet, carrier queue, usage, SMS, faults.

    Options: ``per_page`` (default page size of the paginated lists; None: unpaged, no headers, page parameters
    ignored), ``max_per_page`` (cap on a requested ``per_page``; None: no cap), ``carrier_delay`` and ``sms_delay``
    ((min, max) s), ``mean_online``/``mean_offline`` (s), ``usage_granularity`` (s between usage accruals),
    ``rate_limit`` ((requests, seconds) per key, or None), ``wrap_lists``/``wrap_objects`` (answer
    ``{"devices": [...]}`` / ``{"device": {...}}``), ``status_objects`` (per-device results as
    ``{"message": ...}``), ``max_names`` (cap on ``device_names``), ``can_activate``, ``host_time``,
    ``request_log`` (size of ``requests``).
    """

    def __init__(self, accounts: dict[str, str], devices: int = 20, seed: int = 1, *, per_page: int | None = 25,
                 max_per_page: int | None = 100, carrier_delay: tuple[float, float] = (20.0, 90.0),
                 sms_delay: tuple[float, float] = (5.0, 30.0), mean_online: float = 24 * 3600,
                 mean_offline: float = 600, usage_granularity: float = 300, rate_limit: tuple[int, float] | None = None,
                 wrap_lists: bool = False, wrap_objects: bool = False, status_objects: bool = False,
                 max_names: int | None = None, can_activate: bool = True, host_time: Callable[[], float] = time.time,
                 request_log: int = 10_000) -> None:
        if not accounts:
            raise ValueError("at least one account (key_name: api_key) is required")
        self.accounts = dict(accounts)
        self.per_page, self.max_per_page = per_page, max_per_page
        self.carrier_delay, self.sms_delay = carrier_delay, sms_delay
        self.mean_online, self.mean_offline = mean_online, mean_offline
        self.usage_granularity = usage_granularity
        self.rate_limit = rate_limit
        self.wrap_lists, self.wrap_objects, self.status_objects = wrap_lists, wrap_objects, status_objects
        self.max_names, self.can_activate = max_names, can_activate
        self.host_time = host_time
        self.faults = Faults()
        self.requests: deque[tuple[str, str, dict[str, Any]]] = deque(maxlen=request_log)
        self.request_counts: Counter[str] = Counter()
        self.locate_charges = 0
        self.uploads: list[dict[str, Any]] = []
        self._rng = random.Random(seed)  # the world
        self.req_rng = random.Random(seed + 1)  # request-driven draws (delays, faults)
        self._queue: list[tuple[float, int, str, str]] = []  # (due, seq, action, device name)
        self._seq = count()
        self.sms_ids = count(7_000_000 + self._rng.randrange(1_000_000))
        self._hits: dict[str, deque[float]] = {}
        self.t = float(int(host_time()))
        self.start_day = int(self.t // DAY)
        self._accrued_to = math.floor(self.t / usage_granularity) * usage_granularity
        self.devices: dict[str, SimDevice] = {}
        self._make_fleet(devices)

    # ------------------------------------------------------------------------------------------ fleet

    def _make_fleet(self, n: int) -> None:
        owners = list(self.accounts)
        taken: set[str] = set()
        for i in range(n):  # accounts own contiguous blocks: the first devices are the first account's
            d = self._new_device(i, owners[i * len(owners) // n], taken)
            self._init_device(d, i, n)
            self.devices[d.device_name] = d

    def _new_device(self, i: int, owner: str, taken: set[str], iccid: str | None = None,
                    imei: str | None = None) -> SimDevice:
        rng = self._rng
        carrier = CARRIERS[2] if i == 0 else CARRIERS[0] if i == 1 else rng.choices(CARRIERS, [c.weight for c in CARRIERS])[0]
        name = iccid or _unique(lambda: with_luhn("8901" + f"{rng.randrange(10 ** 15):015d}"), taken)
        area = rng.choice(("801", "385", "435", "720", "602"))
        msisdn = f"1{area}{rng.randrange(10 ** 7):07d}"
        plan = rng.choice(RATE_PLANS)["name"]
        return SimDevice(
            device_name=name, id=30_000 + i, owner=owner,
            imei=imei or with_luhn(rng.choice(_TACS) + f"{rng.randrange(10 ** 6):06d}"),
            imsi=f"310012{rng.randrange(10 ** 9):09d}", msisdn=msisdn, mdn=msisdn[1:],
            meid=f"{rng.randrange(16 ** 14):014X}", esn=f"{rng.randrange(16 ** 8):08X}", min=msisdn[1:],
            ip_address=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", ipv6=f"2600:1000:{i:x}::1",
            carrier=carrier.code, rate_plan_name=plan, carrier_rate_plan=f"{carrier.code}-M2M-{rng.randrange(100, 999)}",
            sku=rng.choice(SKUS), style=i % 3,
        )

    def _init_device(self, d: SimDevice, i: int, n: int) -> None:
        """Place a device in the world at ``t``: the first is a fully featured reference, the second a plain one."""
        rng, t = self._rng, self.t
        d.last_activation_date = float(int(t - rng.randint(30, 900) * DAY))
        term = int(PLAN_BY_NAME[d.rate_plan_name]["days_in_term"])
        d.contract_end_date = d.last_activation_date + term * DAY
        d.rate = math.exp(rng.uniform(math.log(20), math.log(5000)))
        d.sms_capable = i < 2 or rng.random() < 0.9
        d.has_reports = i == 0 or (i > 1 and rng.random() < 0.3)
        d.note = f"Site {i:05d}" if rng.random() < 0.6 else ""
        d.cost_center = rng.choice(COST_CENTERS)
        if i < 2 or rng.random() < 0.7:
            d.latitude = round(CENTER[0] + rng.uniform(-1.5, 1.5), 6)
            d.longitude = round(CENTER[1] + rng.uniform(-1.5, 1.5), 6)
            d.address = f"{rng.randint(1, 9999)} S State St, Salt Lake City, UT" if rng.random() < 0.5 else ""
        roll = rng.random()
        d.state = "active" if i < 2 or n < 5 or roll < 0.92 else "suspend" if roll < 0.98 else "deactivated"
        if i == 2 and n >= 5:
            d.state = "suspend"
        d.bytes_used = int(d.rate * DUTY * (t - d.last_activation_date) * rng.uniform(0.5, 1.0))
        d.sms_used = rng.randint(0, 300)
        today = int(t // DAY)
        d._days[today] = [int(self._history_day(d, today)[0] * (t % DAY) / DAY), 0]
        online = d.state == "active" and (i < 2 or rng.random() < 0.85)
        d.connected = online
        if online:
            d.connected_since = t - rng.uniform(0, self.mean_online)
        else:
            d.offline_since = t - rng.uniform(0, self.mean_offline if d.state == "active" else 30 * DAY)
        self._schedule_toggle(d)

    def _schedule_toggle(self, d: SimDevice) -> None:
        if d.state != "active":
            d._toggle_at = math.inf
            return
        mean = self.mean_online if d.connected else self.mean_offline
        d._toggle_at = self.t + self._rng.expovariate(1.0 / mean) if mean > 0 else math.inf

    def _set_connected(self, d: SimDevice, online: bool) -> None:
        if online and not d.connected:
            d.connected, d.connected_since = True, self.t
        elif not online and d.connected:
            d.connected, d.offline_since = False, self.t
        self._schedule_toggle(d)

    # ------------------------------------------------------------------------------------------ usage

    def _history_day(self, d: SimDevice, day: int) -> tuple[int, int]:
        """Usage of a day before the simulation started: a hash of (device, day)."""
        if day * DAY < d.last_activation_date - DAY:
            return 0, 0
        h = zlib.crc32(f"{d.device_name}:{day}".encode())
        return int(d.rate * DAY * DUTY * (0.3 + (h % 1000) / 1000)), (h >> 10) % 4

    def day_usage(self, d: SimDevice, day: int) -> tuple[int, int]:
        """(bytes, sms) of one day: recorded when lived through, hashed before the start, 0 otherwise."""
        lived = d._days.get(day)
        if lived is not None:
            return lived[0], lived[1]
        return self._history_day(d, day) if day < self.start_day else (0, 0)

    def month_usage(self, d: SimDevice, year: int, month: int) -> tuple[int, int]:
        first = _day_index(year, month, 1)
        last = min(_day_index(*_next_month(year, month), 1), int(self.t // DAY) + 1)
        used = [self.day_usage(d, day) for day in range(first, last)]
        return sum(u[0] for u in used), sum(u[1] for u in used)

    def _accrue(self) -> None:
        """Add usage for connected, active devices up to the last ``usage_granularity`` boundary."""
        g = self.usage_granularity
        target = math.floor(self.t / g) * g
        while self._accrued_to < target:
            day = int(self._accrued_to // DAY)
            end = min(target, (day + 1) * DAY)
            span = end - self._accrued_to
            for d in self.devices.values():
                if d.connected and d.state == "active":
                    add = int(d.rate * span)
                    d.bytes_used += add
                    d._days.setdefault(day, [0, 0])[0] += add
                    if d.usage_limit_kb is not None:
                        self._check_limit(d)
            self._accrued_to = end
            if end == (day + 1) * DAY:
                self._prune(day + 1)

    def _check_limit(self, d: SimDevice) -> None:
        now = _utc(self.t)
        if self.month_usage(d, now.year, now.month)[0] >= (d.usage_limit_kb or 0) * 1024:
            d.state = "suspend"  # "Once the usage limit is reached, the device is suspended."
            self._set_connected(d, False)

    def _prune(self, today: int) -> None:
        for d in self.devices.values():
            for day in [k for k in d._days if k < today - HISTORY_DAYS]:
                del d._days[day]

    # ------------------------------------------------------------------------------------------- time

    def step(self, dt: float) -> None:
        """Advance the world by ``dt`` seconds: connectivity, carrier actions, usage."""
        if dt <= 0:
            return
        self.t += dt
        t = self.t
        for d in self.devices.values():
            if d._toggle_at <= t:
                self._set_connected(d, not d.connected)
        while self._queue and self._queue[0][0] <= t:
            _, _, action, name = heapq.heappop(self._queue)
            d = self.devices.get(name)
            if d is not None:
                getattr(self, f"_do_{action}")(d)
        self._accrue()

    def schedule(self, action: str, d: SimDevice, delay: tuple[float, float] | float) -> None:
        """Run carrier action ``_do_<action>`` on ``d`` after ``delay`` s (or a random one in (min, max))."""
        wait = delay if isinstance(delay, (int, float)) else self.req_rng.uniform(*delay)
        heapq.heappush(self._queue, (self.t + wait, next(self._seq), action, d.device_name))

    def _do_suspend(self, d: SimDevice) -> None:
        if d.state in ("active", "suspend"):
            d.state, d.pending = "suspend", None
            self._set_connected(d, False)

    def _do_restore(self, d: SimDevice) -> None:
        if d.state in ("active", "suspend"):
            d.state, d.pending = "active", None
            self._set_connected(d, True)

    def _do_terminate(self, d: SimDevice) -> None:
        d.state, d.pending, d.usage_limit_kb = "deactivated", None, None
        self._set_connected(d, False)

    def _do_activate(self, d: SimDevice) -> None:
        if d.state == "pending":
            d.state, d.pending, d.last_activation_date = "active", None, self.t
            self._set_connected(d, True)

    def _do_locate(self, d: SimDevice) -> None:
        rng = self.req_rng
        base = (d.latitude, d.longitude) if d.latitude is not None else CENTER
        d.latitude = round(base[0] + rng.uniform(-0.01, 0.01), 6)
        d.longitude = round(base[1] + rng.uniform(-0.01, 0.01), 6)
        d.location_confidence = rng.randint(100, 3000)

    def _do_sms(self, d: SimDevice) -> None:
        """Deliver the device's pending SMS: delivered when connected, failed when suspended, retried if offline."""
        for record in d.sms:
            if record["event_status"] != "PENDING" or record["_due"] > self.t:
                continue
            age = self.t - record["_sent"]
            if d.state != "active":
                record.update(event_status="FAILED", failure_reason="Subscriber not active",
                              report_timestamp=_iso(self.t))
            elif d.connected:
                record.update(event_status="DELIVERED", report_timestamp=_iso(self.t))
                d.sms_used += 1
                d._days.setdefault(int(self.t // DAY), [0, 0])[1] += 1
            elif age >= SMS_VALIDITY:
                record.update(event_status="EXPIRED", failure_reason="Validity period expired",
                              report_timestamp=_iso(self.t))
            else:
                record["_due"] = self.t + SMS_RETRY
                self.schedule("sms", d, SMS_RETRY)

    # ------------------------------------------------------------------------------------ auth & rate

    def caller(self, authorization: str | None) -> str | None:
        """The key_name of valid Basic credentials, else None."""
        if not authorization or not authorization.lower().startswith("basic "):
            return None
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        key_name, _, api_key = decoded.partition(":")
        expected = self.accounts.get(key_name)
        return key_name if expected is not None and hmac.compare_digest(expected, api_key) else None

    def throttled(self, caller: str) -> float | None:
        """Seconds until ``caller`` may call again when over ``rate_limit``, else None (and the call counts)."""
        if self.rate_limit is None:
            return None
        limit, window = self.rate_limit
        now = self.host_time()
        hits = self._hits.setdefault(caller, deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            return hits[0] + window - now
        hits.append(now)
        return None

    # ---------------------------------------------------------------------------------------- helpers

    def owned(self, caller: str, name: str) -> SimDevice:
        """The caller's device ``name``: 404 when unknown, 403 when it belongs to another account."""
        d = self.devices.get(name)
        if d is None:
            raise ApiError(404, "404 Not Found")
        if d.owner != caller:
            raise ApiError(403, "403 Forbidden")
        return d

    def result(self, text: str) -> Any:
        return {"message": text} if self.status_objects else text

    def device_truth(self, d: SimDevice) -> dict[str, Any]:
        out = {name: getattr(d, name) for name in PUBLIC_DEVICE_FIELDS}
        out["sms"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in d.sms]
        return out

    def last_connection(self, d: SimDevice) -> float:
        """Lattigo refreshes it about every 15 minutes while a device is connected."""
        if d.connected:
            return max(d.connected_since, math.floor(self.t / 900) * 900)
        return d.offline_since or d.last_activation_date


# --------------------------------------------------------------------------------------------- serialisation

def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _iso(ts: float) -> str:
    return _utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def _styled_time(ts: float | None, style: int) -> str | None:
    """ISO 8601 UTC; style 1 zone-less with a space (the API's "tolerated" form); style 2 with ms and an offset."""
    if ts is None or ts <= 0:
        return None
    moment = _utc(ts)
    if style == 1:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    if style == 2:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.000+00:00")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _styled(value: Any, style: int) -> Any:
    """Numbers as strings in the loose style."""
    return str(value) if style == 1 and value is not None else value


def device_json(sim: Simulator, d: SimDevice) -> dict[str, Any]:
    """One device object: the document's fields plus the undocumented ones seen in practice."""
    s = d.style
    state_word = CARRIER_STATES.get(d.state, d.state.title())
    return {
        "id": d.id, "device_name": d.device_name, "ip_address": d.ip_address, "ipv6": d.ipv6, "note": d.note,
        "state": d.state, "mdn": d.mdn, "meid": d.meid, "imsi": d.imsi, "imei": d.imei, "iccid": d.device_name,
        "esn": d.esn, "msisdn": d.msisdn, "min": d.min,
        "connected": ("true" if d.connected else "false") if s == 1 else d.connected,
        "last_connection_date": _styled_time(sim.last_connection(d), s), "cost_center": d.cost_center,
        "last_activation_date": _styled_time(d.last_activation_date, s),
        "latitude": _styled(d.latitude, s), "longitude": _styled(d.longitude, s), "address": d.address,
        "bytes_used": _styled(d.bytes_used, s), "sms_used": _styled(d.sms_used, s),
        "note1": d.note1, "note2": d.note2, "note3": d.note3,
        "carrier_state": f"{d.pending.title()} Pending" if d.pending else state_word,
        "raw_carrier_state": state_word.upper(), "contract_end_date": _styled_time(d.contract_end_date, s),
        "location_confidence": d.location_confidence, "carrier_rate_plan": d.carrier_rate_plan,
        "rate_plan_name": d.rate_plan_name, "sku": d.sku, "eid": "",
    }


def report_json(d: SimDevice, k: int) -> dict[str, Any]:
    """Device report number ``k`` (at ``k * REPORT_EVERY + phase``), computed from (device, k)."""
    rng = random.Random(zlib.crc32(f"{d.device_name}/{k}".encode()))
    when = k * REPORT_EVERY + d.id % REPORT_EVERY
    base = (d.latitude, d.longitude) if d.latitude is not None else CENTER
    angle = k * 0.07 + d.id
    s = d.style
    values = {
        "latitude": round(base[0] + 0.02 * math.sin(angle), 6), "longitude": round(base[1] + 0.02 * math.cos(angle), 6),
        "speed": rng.choice((0, 0, rng.randint(5, 110))), "heading": int(math.degrees(angle) + 90) % 360,
        "altitude": rng.randint(1280, 1500), "gps_quality": rng.randint(1, 5), "battery": rng.randint(20, 100),
        "voltage": round(rng.uniform(11.8, 14.4), 2), "temperature": round(rng.uniform(-5, 45), 1),
        "fuel_level": round(rng.uniform(5, 100), 1), "distance": round(k % 100_000 * 0.4, 1), "rssi": rng.randint(-110, -55),
    }
    return {"id": d.id * 1_000_000 + k % 1_000_000, **{key: _styled(v, s) for key, v in values.items()},
            "unit_status": "OK", "time_of_fix": _styled_time(when, s), "event_code": rng.choice((0, 0, 0, 10, 20)),
            "created_at": _styled_time(when + rng.randint(1, 20), s), "type": "periodic"}


def usage_json(d: SimDevice, key: int, date_for: str, used: tuple[int, int]) -> dict[str, Any]:
    return {"id": d.id * 100_000 + key % 100_000, "date_for": date_for, "bytes_used": _styled(used[0], d.style),
            "sms_used": _styled(used[1], d.style)}


def _sms_json(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


# -------------------------------------------------------------------------------------------------- the API

class LattigoApi:
    """The endpoints. Each takes (params, caller, name) and returns (payload, status, headers)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    # --- lists ---------------------------------------------------------------------------------

    def paginate(self, items: list[Any], params: dict[str, Any]) -> tuple[list[Any], dict[str, str]]:
        """grape-kaminari style: ``page`` (from 1), ``per_page`` (capped), ``offset``; X-* headers."""
        sim = self.sim
        if sim.per_page is None:
            return items, {}
        page = _int_param(params, "page", 1)
        per_page = _int_param(params, "per_page", sim.per_page)
        offset = _int_param(params, "offset", 0, minimum=0)
        if sim.max_per_page is not None:
            per_page = min(per_page, sim.max_per_page)
        total = max(0, len(items) - offset)
        pages = max(1, math.ceil(total / per_page))
        start = offset + (page - 1) * per_page
        headers = {"X-Total": str(total), "X-Total-Pages": str(pages), "X-Page": str(page),
                   "X-Per-Page": str(per_page), "X-Next-Page": str(page + 1) if page < pages else "",
                   "X-Prev-Page": str(page - 1) if page > 1 else "", "X-Offset": str(offset)}
        return items[start:start + per_page], headers

    def _list(self, items: list[Any], params: dict[str, Any], wrapper: str) -> tuple[Any, int, dict[str, str]]:
        page, headers = self.paginate(items, params)
        return ({wrapper: page} if self.sim.wrap_lists else page), 200, headers

    def list_devices(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        sim = self.sim
        mine = [d for d in sim.devices.values() if d.owner == caller]
        details = str(params.get("details", "")).lower() in ("true", "1", "yes")
        if not details:
            return self._list([d.device_name for d in mine], params, "devices")
        page, headers = self.paginate(mine, params)  # serialise only the page asked for
        body = [device_json(sim, d) for d in page]
        return ({"devices": body} if sim.wrap_lists else body), 200, headers

    def rate_plans(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        return self._list([dict(p) for p in RATE_PLANS], params, "rate_plans")

    def users(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        return self._list(list(USERS), params, "users")

    # --- one device ------------------------------------------------------------------------------

    def get_device(self, params: dict[str, Any], caller: str, name: str) -> tuple[Any, int, dict[str, str]]:
        body = device_json(self.sim, self.sim.owned(caller, name))
        return ({"device": body} if self.sim.wrap_objects else body), 200, {}

    def put_note(self, params: dict[str, Any], caller: str, name: str) -> tuple[Any, int, dict[str, str]]:
        d = self.sim.owned(caller, name)
        field_name = str(params.get("field_name") or "note")
        text = params.get("note", params.get(field_name))
        if field_name not in NOTE_FIELDS:
            raise ApiError(400, f"field_name must be one of {', '.join(NOTE_FIELDS)}")
        if not isinstance(text, str):
            raise ApiError(400, "note is missing")
        if len(text) > MAX_NOTE:
            raise ApiError(400, f"note is too long (maximum is {MAX_NOTE} characters)")
        setattr(d, field_name, text)
        return {d.device_name: self.sim.result("Success")}, 200, {}

    def get_sms(self, params: dict[str, Any], caller: str, name: str) -> tuple[Any, int, dict[str, str]]:
        d = self.sim.owned(caller, name)
        if not d.carrier_info.sms_status:
            raise ApiError(400, "SMS status is only supported for VDF devices")
        first, last = self._dates(params, default_days=0)
        rows = [_sms_json(r) for r in d.sms if first <= int(r["_sent"] // DAY) <= last]
        return rows, 200, {}

    def device_reports(self, params: dict[str, Any], caller: str, name: str) -> tuple[Any, int, dict[str, str]]:
        d, sim = self.sim.owned(caller, name), self.sim
        if not d.has_reports:
            return [], 200, {}
        first, last_day = self._dates(params, default_days=1)
        newest = sim.t if d.connected else min(sim.t, d.offline_since or sim.t)
        lo = max(first * DAY, d.last_activation_date)
        hi = min((last_day + 1) * DAY - 1, newest)
        phase = d.id % REPORT_EVERY
        k_lo, k_hi = math.ceil((lo - phase) / REPORT_EVERY), math.floor((hi - phase) / REPORT_EVERY)
        ks = range(max(k_lo, k_hi - MAX_REPORTS + 1), k_hi + 1)
        return [report_json(d, k) for k in ks], 200, {}

    def daily_usages(self, params: dict[str, Any], caller: str, name: str) -> tuple[Any, int, dict[str, str]]:
        d, sim = self.sim.owned(caller, name), self.sim
        first, last = self._dates(params, default_days=29)
        start = max(first, int(d.last_activation_date // DAY))
        days = range(start, min(last, int(sim.t // DAY)) + 1)
        return [usage_json(d, day, _utc(day * DAY).strftime("%Y-%m-%d"), sim.day_usage(d, day)) for day in days], 200, {}

    def monthly_usages(self, params: dict[str, Any], caller: str, name: str) -> tuple[Any, int, dict[str, str]]:
        d, sim = self.sim.owned(caller, name), self.sim
        first, last = self._dates(params, default_days=335)
        last = min(last, int(sim.t // DAY))
        first = max(first, int(d.last_activation_date // DAY))
        months = []
        year, month = _utc(first * DAY).year, _utc(first * DAY).month
        while _day_index(year, month, 1) <= last:
            key = year * 12 + month
            months.append(usage_json(d, key, f"{year:04d}-{month:02d}-01", sim.month_usage(d, year, month)))
            year, month = _next_month(year, month)
        return months, 200, {}

    def _dates(self, params: dict[str, Any], default_days: int) -> tuple[int, int]:
        """Day indexes of ``start_date``/``end_date`` (inclusive); default the last ``default_days`` days."""
        today = int(self.sim.t // DAY)
        first = _day_param(params, "start_date", today - default_days)
        last = _day_param(params, "end_date", today)
        if last < first:
            raise ApiError(400, "end_date is before start_date")
        return first, min(last, first + 400)

    def cellular_locate(self, params: dict[str, Any], caller: str, name: str) -> tuple[Any, int, dict[str, str]]:
        d, sim = self.sim.owned(caller, name), self.sim
        if not d.carrier_info.locate or d.state != "active":
            return {d.device_name: "Error: Location not supported by carrier."}, 200, {}
        sim.locate_charges += 1
        sim.schedule("locate", d, sim.carrier_delay)
        return {d.device_name: "Location request submitted to carrier."}, 200, {}

    def calculate_etf(self, params: dict[str, Any], caller: str, name: str) -> tuple[Any, int, dict[str, str]]:
        d, sim = self.sim.owned(caller, name), self.sim
        months_left = max(0.0, (d.contract_end_date - sim.t) / (30 * DAY))
        fee = 0.0 if d.state == "deactivated" else math.ceil(months_left) * 10.0
        return {d.device_name: f"{fee:.1f}"}, 200, {}

    # --- device operations -------------------------------------------------------------------------

    def _names(self, params: dict[str, Any]) -> list[str]:
        value = params.get("device_names")
        names = [value] if isinstance(value, (str, int)) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
            raise ApiError(400, "device_names is missing or invalid")
        if self.sim.max_names is not None and len(names) > self.sim.max_names:
            raise ApiError(400, f"at most {self.sim.max_names} device_names per request")
        return [str(n) for n in names]

    def _each(self, params: dict[str, Any], caller: str, key: str, act: Callable[[SimDevice], str],
              missing: str = "Error: Device does not exist.") -> tuple[Any, int, dict[str, str]]:
        out: dict[str, Any] = {}
        for name in self._names(params):
            d = self.sim.devices.get(name)
            out[name] = self.sim.result(missing if d is None or d.owner != caller else act(d))
        return {key: out}, 200, {}

    def change_simstate(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        state = params.get("state")
        if state not in ("suspend", "restore"):
            raise ApiError(400, "state must be suspend or restore")
        sim = self.sim

        def act(d: SimDevice) -> str:
            if d.state not in ("active", "suspend"):
                return f"Error: Device is {d.state}."
            d.pending = state
            sim.schedule(state, d, sim.carrier_delay)
            return "Success"

        return self._each(params, caller, "change_status", act)

    def change_cost_center(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        center = params.get("cost_center")
        if not isinstance(center, str):
            raise ApiError(400, "cost_center is missing")

        def act(d: SimDevice) -> str:
            d.cost_center = center
            return "Success"

        return self._each(params, caller, "change_status", act)

    def send_sms(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        text = params.get("sms_text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "sms_text is missing")
        if len(text) > 160:
            raise ApiError(400, "sms_text is too long (maximum is 160 characters)")
        sim = self.sim

        def act(d: SimDevice) -> str:
            if not d.sms_capable or d.state != "active":
                return "Error: Device does not exist, or does not support SMS."
            delay = sim.req_rng.uniform(*sim.sms_delay)
            d.sms.append({"event_id": str(next(sim.sms_ids)), "event_status": "PENDING",
                          "event_timestamp": _iso(sim.t), "event_type": "SMS_MT", "imsi": d.imsi,
                          "message_body": text, "msisdn": d.msisdn, "report_timestamp": None,
                          "failure_reason": None, "_sent": sim.t, "_due": sim.t + delay})
            sim.schedule("sms", d, delay)
            return "Success: Attempting SMS Send."

        return self._each(params, caller, "status", act,
                          missing="Error: Device does not exist, or does not support SMS.")

    def set_usage_limit(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        kb = params.get("kb_limit")
        try:
            kb_limit = int(str(kb))
        except ValueError:
            raise ApiError(400, "kb_limit is missing or not a number") from None
        if kb_limit < 1:
            raise ApiError(400, "kb_limit must be positive")
        if params.get("action", "suspend") != "suspend":
            raise ApiError(400, "action must be suspend")
        users = params.get("usernames") or []
        if not isinstance(users, list) or any(u not in USERS for u in users):
            raise ApiError(400, "usernames contains an unknown user")
        sim = self.sim

        def act(d: SimDevice) -> str:
            d.usage_limit_kb, d.usage_limit_users = kb_limit, list(users)
            sim._check_limit(d)
            return "Success: Device data limit is set."

        return self._each(params, caller, "status", act)

    def remove_usage_limit(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        def act(d: SimDevice) -> str:
            d.usage_limit_kb, d.usage_limit_users = None, []
            return "Success: Device data limit removed."

        return self._each(params, caller, "status", act)

    def terminate_service(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        sim = self.sim

        def act(d: SimDevice) -> str:
            if d.state == "deactivated":
                return "Error: Device is already deactivated."
            d.pending = "terminate"
            sim.schedule("terminate", d, sim.carrier_delay)
            return "Success"

        return self._each(params, caller, "terminate_status", act)

    def activation_request(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        sim = self.sim
        if not sim.can_activate:
            raise ApiError(403, "This account may not request activations")
        plan = params.get("rate_plan_name")
        if not isinstance(plan, str) or not plan:
            raise ApiError(400, "rate_plan_name is missing")
        if plan not in PLAN_BY_NAME:
            raise ApiError(400, "rate_plan_name is not available for this account")
        requests = params.get("activation_requests")
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, "activation_requests is missing")
        processed, unprocessed, seen = [], [], set()
        for index, item in enumerate(requests):
            item = item if isinstance(item, dict) else {}
            entry = {"iccid": str(item.get("iccid") or ""), "imei": str(item.get("imei") or ""),
                     **{f: str(item.get(f) or "") for f in NOTE_FIELDS}}
            errors = _activation_errors(item, sim, seen)
            if errors:
                unprocessed.append({"device_index": index, "error": json.dumps(errors), "input": entry})
                continue
            seen.add(entry["iccid"])
            self._activate(caller, plan, entry, item)
            processed.append({**entry, "request_type": "activate"})
        return {"processed": processed, "unprocessed": unprocessed}, 422 if unprocessed else 200, {}

    def _activate(self, caller: str, plan: str, entry: dict[str, str], item: dict[str, Any]) -> None:
        sim = self.sim
        d = sim._new_device(len(sim.devices), caller, set(sim.devices), iccid=entry["iccid"],
                            imei=entry["imei"] or None)
        d.rate_plan_name, d.state, d.pending = plan, "pending", "activate"
        if item.get("device_sku"):
            d.sku = str(item["device_sku"])
        for note in NOTE_FIELDS:
            setattr(d, note, entry[note])
        d.last_activation_date = sim.t
        d.contract_end_date = sim.t + int(PLAN_BY_NAME[plan]["days_in_term"]) * DAY
        d.rate = 200.0
        d._days[int(sim.t // DAY)] = [0, 0]
        sim.devices[d.device_name] = d
        sim.schedule("activate", d, sim.carrier_delay)

    def upload_request(self, params: dict[str, Any], caller: str, _: str) -> tuple[Any, int, dict[str, str]]:
        email, sku, ids = params.get("upload_email"), params.get("upload_sku"), params.get("upload_ids")
        if not isinstance(email, str) or "@" not in email:
            raise ApiError(400, "upload_email is missing or invalid")
        if not isinstance(sku, str) or not sku.strip():
            raise ApiError(400, "upload_sku is missing")
        if not isinstance(ids, list) or not ids:
            raise ApiError(400, "upload_ids is missing")
        processed, unprocessed = [], []
        for index, item in enumerate(ids):
            imei = str(item.get("imei") or "") if isinstance(item, dict) else ""
            if not _valid_imei(imei):
                unprocessed.append({"device_index": index, "error": json.dumps({"imei": ["is invalid"]}),
                                    "input": {"imei": imei}})
                continue
            record = {"imei": imei, "sku": sku, "email": email}
            processed.append(record)
            self.sim.uploads.append(record)
        return {"processed": processed, "unprocessed": unprocessed}, 422 if unprocessed else 200, {}


def _activation_errors(item: dict[str, Any], sim: Simulator, seen: set[str]) -> dict[str, list[str]]:
    """Validation of one activation request, Rails style: ``{"field": ["message", ...]}``."""
    errors: dict[str, list[str]] = {}
    iccid, imei = str(item.get("iccid") or ""), str(item.get("imei") or "")
    if not iccid:
        errors["iccid"] = ["can't be blank"]
    elif not re.fullmatch(r"89\d{17,18}", iccid):
        errors["iccid"] = ["is invalid"]
    elif iccid in sim.devices or iccid in seen:
        errors["iccid"] = ["has already been taken"]
    if not imei and not item.get("device_sku"):
        errors["imei"] = ["can't be blank"]
    elif imei and not _valid_imei(imei):
        errors["imei"] = ["is invalid"]
    if item.get("device_sku") and item["device_sku"] not in SKUS:
        errors["device_sku"] = ["is not available"]
    if item.get("region_code") and not re.fullmatch(r"\d{5}", str(item["region_code"])):
        errors["region_code"] = ["is invalid"]
    for note in NOTE_FIELDS:
        if len(str(item.get(note) or "")) > MAX_NOTE:
            errors[note] = [f"is too long (maximum is {MAX_NOTE} characters)"]
    return errors


# ---------------------------------------------------------------------------------------------- HTTP layer

PARAMS = web.RequestKey("params", dict)
CALLER = web.RequestKey("caller", str)


class _Http:
    """aiohttp glue: parameters, request log, faults, rate limit, auth, JSON answers."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.api = LattigoApi(sim)

    @staticmethod
    def json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return web.Response(status=status, body=body, headers={"Content-Type": JSON_TYPE, **(headers or {})})

    def endpoint(self, handler_name: str) -> Callable[[web.Request], Any]:
        handler = getattr(self.api, handler_name)

        async def serve(request: web.Request) -> web.Response:
            try:
                payload, status, headers = handler(request[PARAMS], request[CALLER], request.match_info.get("name", ""))
            except ApiError as err:
                return self.json({"error": err.message}, err.status)
            return self.json(payload, status, headers)

        return serve

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if not request.path.startswith("/v2/"):
            return await handler(request)
        sim = self.sim
        resource = request.match_info.route.resource
        sim.request_counts[resource.canonical if resource is not None else request.path] += 1
        try:
            params = await _params(request)
        except ValueError as err:
            return self.json({"error": str(err)}, 400)
        sim.requests.append((request.method, request.path, params))
        faulted = await self._fault()
        if faulted is not None:
            return faulted
        caller = sim.caller(request.headers.get("Authorization"))
        if caller is None:
            return self.json({"error": "401 Unauthorized"}, 401, {"WWW-Authenticate": 'Basic realm="Lattigo API"'})
        wait = sim.throttled(caller)
        if wait is not None:
            return self._too_many(wait)
        request[PARAMS], request[CALLER] = params, caller
        response = await handler(request)
        if isinstance(response, web.Response) and response.body and sim.faults.fire("malformed_json", sim.req_rng):
            body = bytes(response.body)
            return web.Response(status=response.status, body=body[:max(1, len(body) // 2)],
                                headers={"Content-Type": JSON_TYPE})
        return response

    def _too_many(self, wait: float) -> web.Response:
        seconds = self.sim.faults.retry_after or (math.ceil(wait) if self.sim.rate_limit else 0)
        headers = {"Retry-After": f"{seconds:g}"} if seconds else {}
        return self.json({"error": "429 Too Many Requests"}, 429, headers)

    async def _fault(self) -> web.Response | None:
        faults, rng = self.sim.faults, self.sim.req_rng
        if faults.slow > 0:
            await asyncio.sleep(faults.slow)
        if faults.fire("http_500", rng):
            return web.Response(status=500, text="Internal Server Error", content_type="text/plain")
        if faults.fire("html_error", rng):
            page = HTML_PAGE.format(status=faults.html_status)
            return web.Response(status=faults.html_status, text=page, content_type="text/html")
        if faults.fire("rate_limit", rng):
            return self._too_many(0)
        return None


async def _params(request: web.Request) -> dict[str, Any]:
    """Query string for GET; a JSON body, or form data (``device_names[]=...``), otherwise."""
    if request.method == "GET":
        return _flatten(request.query.items())
    raw = await request.read()
    if not raw.strip():
        return _flatten(request.query.items())
    if request.content_type == "application/json" or raw.lstrip()[:1] in (b"{", b"["):
        try:
            body = json.loads(raw)
        except ValueError:
            raise ValueError("the JSON body is malformed") from None
        if not isinstance(body, dict):
            raise ValueError("the JSON body must be an object")
        return body
    return _flatten((await request.post()).items())


def _flatten(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Form/query pairs -> dict; ``name[]`` keys collect into lists under ``name``."""
    out: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(value, str):
            continue
        if key.endswith("[]"):
            out.setdefault(key[:-2], []).append(value)
        else:
            out[key] = value
    return out


def _int_param(params: dict[str, Any], name: str, default: int, minimum: int = 1) -> int:
    value = params.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise ApiError(400, f"{name} is invalid") from None
    if number < minimum:
        raise ApiError(400, f"{name} must be at least {minimum}")
    return number


def _day_param(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value in (None, ""):
        return default
    text = str(value).strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name} is not a date") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return int(moment.timestamp() // DAY)


def _day_index(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp() // DAY)


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _valid_imei(imei: str) -> bool:
    return bool(re.fullmatch(r"\d{15}", imei)) and luhn_digit(imei[:-1]) == int(imei[-1])


def _unique(make: Callable[[], str], taken: set[str]) -> str:
    while True:
        value = make()
        if value not in taken:
            taken.add(value)
            return value


def create_app(accounts: dict[str, str] | None = None, devices: int = 20, seed: int = 1,
               tick: float | None = DEFAULT_TICK, **options: Any) -> web.Application:
    """The simulator as an aiohttp app; ``app["sim"]`` is the :class:`Simulator` (made with ``options``).
    ``tick`` 0 or None: a still world that only ``/_sim/step`` moves (see :mod:`fleetbridge.simkit`)."""
    sim = Simulator(accounts or {"demo": "demo-key"}, devices=devices, seed=seed, **options)
    http = _Http(sim)
    app = sim_app(sim, [http.middleware])
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, http.endpoint(handler))
    add_admin_routes(app, sim, sim.faults, step_answer=lambda: {"world_time": sim.t}, devices=DeviceTable(
        sim.devices, sim.device_truth, PUBLIC_DEVICE_FIELDS, "device_name", ids="names", unknown="unknown device",
        header=lambda: {"world_time": sim.t, "locate_charges": sim.locate_charges}))
    start_ticker(app, level_with(sim, sim.host_time), tick)
    return app


if __name__ == "__main__":  # pragma: no cover - manual demo:
    # ``python -m fleetbridge_plugins.lattigo.simulator [port] [devices]``
    run_demo(create_app, 8766, 20)
