"""A faithful simulator of Tangoe MobProc and its PingFederate token service, for demos and tests.

Sources: ``shared/vendor-docs/tangoe-mobproc.txt`` and the "Tangoe MobProc" section of
``shared/docs/vendor-notes.md``. Served on one aiohttp app:

* ``POST /as/token.oauth2``: password and refresh grants (parameters in the query string or a form
  body, ``client_secret`` required, scope ``MOBPROC``, usernames with their backend prefix); access
  tokens live ``token_ttl`` seconds (one hour) on the server clock; refresh tokens rotate (single use).
* the API under ``/mobproc/v1`` (and, for ``simulator: true`` configs, at the root): ``/me``,
  ``/employees``, ``/assets/devices``, ``/assets/services``, ``/orders`` (GET, POST with ``confirm``),
  ``/orders/{id}``, ``/orders/properties``; ``X-TNGO-TENANT`` and ``client_id`` checked (a missing one
  is a 400 in the document's error format), context headers narrow what is returned, ``limit``/
  ``offset`` paging with ``_meta`` links in the standard or the Premium Mobile (Command) behaviour.
* ``/_sim/*``: faults, settings, clock, world steps, order control and request counts.

Orders advance through their statuses on world time (``step(dt)``, or the background ticker that
keeps world time level with the server clock); a completed SUSPEND/UNSUSPEND changes its line.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from typing import Any

from aiohttp import web

from fleetbridge.simkit import (DEFAULT_TICK, HTML_PAGE, FaultSwitches, add_admin_routes, level_with, sim_app,
                               run_demo, start_ticker, with_luhn)
from yarl import URL

__all__ = ["API_PREFIX", "TOKEN_PATH", "ApiError", "Faults", "Simulator", "create_app"]

TOKEN_PATH = "/as/token.oauth2"
API_PREFIX = "/mobproc/v1"
JSON_TYPE = "application/json"
FOREIGN_HOST = "tngo--mobproc.cloudhub.io"  # the vendor document's misspelt link host

# ----------------------------------------------------------------------------------------------- tables

CARRIERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("98", "Verizon Wireless", ("Business Unlimited", "Flexible Business 5GB")),
    ("99", "AT&T Mobility", ("Business Unlimited Elite", "Mobile Share 10GB")),
    ("100", "T-Mobile", ("Business Essentials", "Magenta for Business")),
)
CARRIER_NAMES = {cid: name for cid, name, _ in CARRIERS}
MODELS: tuple[tuple[str, str, str], ...] = (  # manufacturer, model, IMEI type allocation code
    ("Apple", "iPhone 15 (128GB)", "35407115"), ("Apple", "iPhone 13 (64GB)", "35391611"),
    ("Samsung", "Galaxy S23", "35093812"), ("Google", "Pixel 8", "35890917"),
    ("Apple", "iPad Air (Wi-Fi + Cellular)", "35446610"),
)
DEPARTMENTS = (("80022", "Marketing"), ("80023", "Sales"), ("80024", "Field Service"), ("80025", "Finance"),
               ("80026", "Engineering"))
FIRST = ("Barbara", "James", "Maria", "Wei", "Ahmed", "Olga", "Kofi", "Lucia", "Sven", "Priya", "Tom", "Aiko")
LAST = ("Andrews", "Carpenter", "Garcia", "Chen", "Haddad", "Petrova", "Mensah", "Rossi", "Larsen", "Patel",
        "Walker", "Tanaka")
AREA_CODES = ("203", "212", "312", "415", "617", "737")
TRANSACTION_TYPES = ("NEW_ACTIVATION", "UPGRADE", "ORDER_ACCESSORIES", "PORT_NUMBER", "SUSPEND", "UNSUSPEND",
                     "DEACTIVATE", "UPDATE_FEATURES", "SWAP_DEVICES")
#: Statuses an order passes through after ORDER_SUBMITTED (the last one is final).
ORDER_FLOWS: dict[str, tuple[str, ...]] = {
    "SUSPEND": ("IN_PROGRESS", "COMPLETED"),
    "UNSUSPEND": ("IN_PROGRESS", "COMPLETED"),
    "DEACTIVATE": ("IN_PROGRESS", "COMPLETED"),
    "NEW_ACTIVATION": ("APPROVED", "IN_PROGRESS", "SHIPPED", "COMPLETED"),
    "UPGRADE": ("APPROVED", "IN_PROGRESS", "SHIPPED", "COMPLETED"),
    "ORDER_ACCESSORIES": ("IN_PROGRESS", "SHIPPED", "COMPLETED"),
}
DEFAULT_FLOW = ("IN_PROGRESS", "COMPLETED")
FINAL = frozenset({"COMPLETED", "CANCELLED", "REJECTED"})
#: A completed order of this type sets its line to this status.
LINE_EFFECTS = {"SUSPEND": "SUSPENDED", "UNSUSPEND": "ACTIVE", "DEACTIVATE": "DEACTIVATED"}
#: The line status an order of this type needs.
LINE_NEEDS = {"SUSPEND": "ACTIVE", "UNSUSPEND": "SUSPENDED", "DEACTIVATE": "ACTIVE"}


def _field(fid: str, label: str, kind: str = "TEXT", validation: str = "OPTIONAL", **extra: Any) -> dict[str, Any]:
    return {"id": fid, "label": label, "type": kind, "validation": validation, **extra}


#: Order properties per transaction type (``/orders/properties``), before carrier rules.
PROPERTIES: dict[str, tuple[dict[str, Any], ...]] = {
    "SUSPEND": (
        _field("SERVICE_NUMBER", "Service Number", validation="REQUIRED", minLength=10, maxLength=20),
        _field("CONTACT_NUMBER", "Contact Phone Number", maxLength=20),
        _field("ADDITIONAL_INSTRUCTIONS", "Additional Instructions", maxLength=4000),
        _field("PREFERRED_SUSPENSION_DATE", "Preferred Suspension Date", "DATE", pattern="ISO 8601"),
    ),
    "UNSUSPEND": (
        _field("SERVICE_NUMBER", "Service Number", validation="REQUIRED", minLength=10, maxLength=20),
        _field("USER", "User", "CHOICE", validation="REQUIRED"),
        _field("ADDITIONAL_INSTRUCTIONS", "Additional Instructions", maxLength=4000),
    ),
}
#: carrier id -> transaction type -> (fields made REQUIRED, extra fields)
CARRIER_RULES: dict[str, dict[str, tuple[tuple[str, ...], tuple[dict[str, Any], ...]]]] = {
    "98": {"SUSPEND": (("PREFERRED_SUSPENSION_DATE",), ())},
    "99": {"SUSPEND": ((), (_field("HOLD_SERVICE", "Hold Service", "CHOICE", validation="REQUIRED"),))},
    "100": {"SUSPEND": (("CONTACT_NUMBER",), ())},
}
EMPLOYEE_CHOICE_FIELDS = frozenset({"USER", "HOLD_SERVICE"})

_TRUNCATED = '{"devices":[{"_meta":{"href":"https://tngo-mobproc.cloudhub.io/mobproc/v1/assets/devices/51'


class ApiError(Exception):
    """An API error answered in the document's format ``{errorCode, id, message, status}``."""

    def __init__(self, status: int, code: str, message: str, *, order: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.order = status, code, message, order


# ------------------------------------------------------------------------------------------ world model

@dataclass(slots=True)
class Employee:
    id: str
    company_id: str
    first: str
    last: str
    department: tuple[str, str]
    status: str = "ACTIVE"


@dataclass(slots=True)
class Asset:
    """A device asset (handset, tablet)."""

    id: str
    employee_id: str | None
    manufacturer: str
    model: str
    imei: str
    status: str = "ACTIVE"
    sparse: bool = False  # its list record lacks the serial number (the detail has it)
    line_id: str | None = None


@dataclass(slots=True)
class Line:
    """A service asset (a cellular line)."""

    id: str
    number: str
    employee_id: str | None
    device_id: str | None
    carrier_id: str
    plan: str
    sim_id: str
    status: str = "ACTIVE"
    activated: float = 0.0


@dataclass(slots=True)
class Order:
    id: str
    transaction: str
    status: str
    employee_id: str | None
    line_id: str | None
    external: str
    submitted: float
    updated: float
    flow: list[str] = field(default_factory=list)
    next_at: float = 0.0
    properties: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Token:
    user: str
    expires: float


@dataclass
class Faults(FaultSwitches):
    """Switchable faults of the API (never of ``/_sim`` or the token service).

    Counters (``http_500``, ``html_error``, ``malformed_json``, ``token_expiry``, ``shift``,
    ``foreign_links``) take an int N (fire on the next N requests), a float p in (0, 1) (fire with
    probability p) or True (always). ``token_expiry`` expires every access token (as if an hour
    passed); ``shift`` inserts a new asset at the front after serving an asset page (later pages
    shift by one); ``foreign_links`` puts ``_meta`` links on the document's misspelt host.
    ``expire_in`` N > 0 expires every access token once N more API requests have arrived (mid-sweep).
    ``slow`` delays every answer (s); ``html_status`` is the status of the HTML page.
    """

    token_expiry: int | float = 0
    shift: int | float = 0
    foreign_links: int | float = 0
    expire_in: int = 0


@dataclass(frozen=True, slots=True)
class Seen:
    """One API request as the simulator received it (for tests)."""

    method: str
    route: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


TRACED_HEADERS = ("X-TNGO-TENANT", "client_id", "X-TNGO-CONTEXT-EMPLOYEEID", "X-TNGO-CONTEXT-COMPANYEMPLOYEEID",
                  "X-TNGO-CONTEXT-HIERARCHYID", "X-TNGO-CONTEXT-ACTIVITYID", "X-TNGO-CONTEXT-CORRELATIONID")


# ---------------------------------------------------------------------------------------------- simulator

class Simulator:
    """The simulated tenant: employees, devices, lines, orders, tokens and faults.

    ``users`` maps usernames (with their backend prefix: ``command://`` selects the Premium Mobile
    offset behaviour unless ``offset_mode`` says otherwise) to passwords; ``clients`` maps client ids
    to secrets. Options: ``token_ttl`` (s, one hour), ``refresh_enabled``, ``max_limit`` (largest page),
    ``sparse`` (share of device list records without the serial number), ``order_delay`` ((min, max)
    s of world time per order step), ``order_fail_rate``, ``approval`` (orders wait in
    APPROVAL_QUEUED first), ``transaction_types`` (what ``/me`` allows), ``host_time`` and
    ``clock_offset`` (server clock), ``initial_orders``, ``request_log`` (size of ``requests``).
    """

    def __init__(self, users: dict[str, str] | None = None, clients: dict[str, str] | None = None,
                 tenant: str = "ACME", devices: int = 50, seed: int = 1, *, offset_mode: str | None = None,
                 token_ttl: float = 3600.0, refresh_enabled: bool = True, max_limit: int = 500,
                 sparse: float = 0.02, order_delay: tuple[float, float] = (60.0, 300.0),
                 order_fail_rate: float = 0.0, approval: bool = False,
                 transaction_types: Iterable[str] = TRANSACTION_TYPES, host_time: Callable[[], float] = time.time,
                 clock_offset: float = 0.0, initial_orders: bool = True, request_log: int = 10_000) -> None:
        self.users = dict(users or {"command://fleet.admin": "secret"})
        self.clients = dict(clients or {"fleetbridge": "client-secret"})
        self.tenant = tenant
        premium = any(u.lower().startswith("command://") for u in self.users)
        self.offset_mode = offset_mode or ("premium" if premium else "standard")
        self.token_ttl, self.refresh_enabled, self.max_limit = token_ttl, refresh_enabled, max_limit
        self.order_delay, self.order_fail_rate, self.approval = order_delay, order_fail_rate, approval
        self.transaction_types = tuple(t.upper() for t in transaction_types)
        self.host_time, self.clock_offset = host_time, clock_offset
        self.faults = Faults()
        self.requests: deque[Seen] = deque(maxlen=request_log)
        self.request_counts: Counter[str] = Counter()
        self.grant_counts: Counter[str] = Counter()
        self.status_counts: Counter[int] = Counter()  # HTTP statuses the API answered
        self.dry_runs: list[dict[str, Any]] = []
        self._rng = random.Random(seed)
        self._req_rng = random.Random(seed + 1)
        self._tokens: dict[str, _Token] = {}
        self._refresh: dict[str, str] = {}  # refresh token -> user
        self._ids = {kind: count(start) for kind, start in
                     (("employee", 48068931), ("device", 5100001), ("line", 31647001), ("order", 8054740))}
        self.t = float(int(self.now()))  # world time
        self.employees: dict[str, Employee] = {}
        self.by_company_id: dict[str, Employee] = {}
        self.devices: dict[str, Asset] = {}
        self.lines: dict[str, Line] = {}
        self.orders: dict[str, Order] = {}
        self.device_order: list[str] = []  # list order of /assets/devices (front insertions shift pages)
        self.line_order: list[str] = []
        self._due: list[tuple[float, str]] = []  # (next_at, order id)
        self._numbers: set[str] = set()
        self.admin = self._add_employee("Fleet", "Bridge", DEPARTMENTS[0], company_id="svc.fleetbridge")
        self._make_fleet(devices, sparse)
        if initial_orders:
            self._make_history()

    # --- clocks ----------------------------------------------------------------------------

    def now(self) -> float:
        """The server clock (``host_time() + clock_offset``): token expiry, the Date header."""
        return self.host_time() + self.clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the server clock (tokens age; world time follows on the next step/tick)."""
        self.clock_offset += seconds

    def iso(self, t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    # --- the fleet -------------------------------------------------------------------------

    def _next(self, kind: str) -> str:
        return str(next(self._ids[kind]))

    def _add_employee(self, first: str, last: str, department: tuple[str, str],
                      company_id: str | None = None) -> Employee:
        emp_id = self._next("employee")
        emp = Employee(emp_id, company_id or f"{first}.{last}.{emp_id[-4:]}@example.com".lower(), first, last,
                       department)
        self.employees[emp_id] = emp
        self.by_company_id[emp.company_id] = emp
        return emp

    def _imei(self, tac: str) -> str:
        return with_luhn(tac + f"{self._rng.randrange(10**6):06d}")

    def _number(self) -> str:
        while True:
            number = self._rng.choice(AREA_CODES) + f"555{self._rng.randrange(10**4):04d}"
            if number not in self._numbers:
                self._numbers.add(number)
                return number

    def _make_fleet(self, n: int, sparse: float) -> None:
        rng = self._rng
        staff = [self._add_employee(rng.choice(FIRST), rng.choice(LAST), rng.choice(DEPARTMENTS))
                 for _ in range(max(1, int(n * 0.85)))]
        for i in range(n):
            roll = rng.random()
            status = "INVENTORY" if roll < 0.04 else "LOST" if roll < 0.08 else "ACTIVE"
            owner = None if status == "INVENTORY" else staff[i % len(staff)].id
            self.add_asset(owner, status=status, sparse=rng.random() < sparse)

    def add_asset(self, employee_id: str | None, *, status: str = "ACTIVE", sparse: bool = False,
                  front: bool = False) -> Asset:
        """A new device (with a line unless in inventory); ``front`` puts it first in the lists."""
        rng = self._rng
        manufacturer, model, tac = rng.choice(MODELS)
        asset = Asset(self._next("device"), employee_id, manufacturer, model, self._imei(tac), status, sparse)
        self.devices[asset.id] = asset
        _place(self.device_order, asset.id, front)
        if status != "INVENTORY":
            carrier_id, _, plans = rng.choice(CARRIERS)
            line = Line(self._next("line"), self._number(), employee_id, asset.id, carrier_id, rng.choice(plans),
                        "8901" + "".join(str(rng.randrange(10)) for _ in range(15)),
                        "SUSPENDED" if status == "LOST" else "ACTIVE", self.t - rng.randrange(30, 900) * 86400)
            self.lines[line.id] = line
            asset.line_id = line.id
            _place(self.line_order, line.id, front)
        return asset

    def _make_history(self) -> None:
        """A few completed and open hardware orders, so a fresh bridge sees some."""
        rng = self._rng
        for line in list(self.lines.values()):
            roll = rng.random()
            if roll < 0.03:
                order = self.create_order(line.device_id or "", "UPGRADE", when=self.t - rng.randrange(10, 60) * 86400)
                self._finish(order, "COMPLETED")
            elif roll < 0.05:
                self.create_order(line.device_id or "", "UPGRADE", when=self.t - rng.randrange(1, 5) * 86400)

    # --- orders ----------------------------------------------------------------------------

    def create_order(self, device_id: str, transaction: str, *, external: str | None = None,
                     when: float | None = None, properties: list[Any] | None = None) -> Order:
        """Place an order for a device's line (or the device alone); it then advances over time."""
        device = self.devices.get(device_id)
        line = self.lines.get(device.line_id) if device and device.line_id else None
        when = self.t if when is None else when
        flow = list(ORDER_FLOWS.get(transaction, DEFAULT_FLOW))
        if self.order_fail_rate and self._req_rng.random() < self.order_fail_rate:
            flow[-1] = "REJECTED"
        order = Order(self._next("order"), transaction, "APPROVAL_QUEUED" if self.approval else "ORDER_SUBMITTED",
                      device.employee_id if device else None, line.id if line else None,
                      external or f"SIM-{self._rng.randrange(10**8):08d}", when, when, flow,
                      properties=properties or [])
        self.orders[order.id] = order
        self._schedule(order, when)
        return order

    def _schedule(self, order: Order, base: float) -> None:
        if order.flow:
            low, high = self.order_delay
            order.next_at = base + self._req_rng.uniform(low, high)
            heapq.heappush(self._due, (order.next_at, order.id))

    def set_order_status(self, order_id: str, status: str) -> Order:
        """Force an order's status (tests); later steps continue from the flow after it."""
        order = self.orders[order_id]
        if status in order.flow:
            del order.flow[:order.flow.index(status) + 1]
        else:
            order.flow = []
        self._apply(order, status)
        if status not in FINAL:
            self._schedule(order, self.t)
        return order

    def _finish(self, order: Order, status: str) -> None:
        order.flow = []
        self._apply(order, status)

    def _apply(self, order: Order, status: str) -> None:
        order.status, order.updated = status, self.t
        line = self.lines.get(order.line_id or "")
        if status == "COMPLETED" and line and order.transaction in LINE_EFFECTS:
            line.status = LINE_EFFECTS[order.transaction]

    def step(self, dt: float) -> None:
        """Advance world time by ``dt`` seconds; due orders take their next status."""
        self.t += max(0.0, dt)
        while self._due and self._due[0][0] <= self.t:
            at, order_id = heapq.heappop(self._due)
            order = self.orders.get(order_id)
            if order is None or order.next_at != at or not order.flow or order.status in FINAL:
                continue
            self._apply(order, order.flow.pop(0))
            self._schedule(order, at)

    def open_orders(self) -> list[Order]:
        return [o for o in self.orders.values() if o.status not in FINAL]

    # --- tokens ----------------------------------------------------------------------------

    def issue(self, user: str) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
        self._tokens[access] = _Token(user, self.now() + self.token_ttl)
        self._refresh[refresh] = user
        return {"access_token": access, "token_type": "Bearer", "expires_in": int(self.token_ttl) - 1,
                "refresh_token": refresh}

    def expire_tokens(self) -> int:
        """Every access token expires now (as if their hour had passed)."""
        for token in self._tokens.values():
            token.expires = min(token.expires, self.now() - 1)
        return len(self._tokens)

    def user_of(self, access: str) -> str | None:
        token = self._tokens.get(access)
        if token is None or token.expires <= self.now():
            return None
        return token.user

    # --- visibility ------------------------------------------------------------------------

    def actor(self, headers: Any) -> Employee | None:
        """The context employee: the employee id header wins; an empty header counts as unset."""
        emp_id = (headers.get("X-TNGO-CONTEXT-EMPLOYEEID") or "").strip()
        if emp_id:
            emp = self.employees.get(emp_id)
            if emp is None:
                raise ApiError(403, "403-context-employee", f"Not authorized to act for employee {emp_id}.")
            return emp
        company = (headers.get("X-TNGO-CONTEXT-COMPANYEMPLOYEEID") or "").strip()
        if company:
            emp = self.by_company_id.get(company)
            if emp is None:
                raise ApiError(403, "403-context-employee", f"Not authorized to act for employee {company}.")
            return emp
        return None

    def scope(self, actor: Employee | None, query: Any) -> str | None:
        """The one employee whose records are visible (None: all). The filter and the context meet."""
        wanted = query.get("employee") or None
        if query.get("companyEmployeeId"):
            emp = self.by_company_id.get(query["companyEmployeeId"])
            wanted = emp.id if emp else "-"
        if actor is not None and actor.id != self.admin.id:
            if wanted and wanted != actor.id:
                return "-"
            return actor.id
        return wanted


def _place(order: list[str], item: str, front: bool) -> None:
    if front:
        order.insert(0, item)
    else:
        order.append(item)


def _plan_id(line: Line) -> str:
    plans = next(p for cid, _, p in CARRIERS if cid == line.carrier_id)
    return f"{line.carrier_id}{plans.index(line.plan) + 1:02d}" if line.plan in plans else line.carrier_id


# ------------------------------------------------------------------------------------------------ records

class Records:
    """JSON shapes of the API, built for one request's base URL (``<origin><prefix>``)."""

    def __init__(self, sim: Simulator, base: str) -> None:
        self.sim, self.base = sim, base

    def employee(self, emp: Employee | None, full: bool = True) -> dict[str, Any] | None:
        if emp is None:
            return None
        out: dict[str, Any] = {"_meta": {"href": f"{self.base}/employees/{emp.id}"}, "id": emp.id,
                               "companyEmployeeId": emp.company_id, "firstName": emp.first, "lastName": emp.last,
                               "department": {"id": emp.department[0], "name": emp.department[1]}}
        if full:
            out["status"] = emp.status
            if "@" in emp.company_id:
                out["email"] = emp.company_id
            out["_meta"].update({"hrefDevices": f"{self.base}/assets/devices?limit=10&offset=0&employee={emp.id}",
                                 "hrefServices": f"{self.base}/assets/services?limit=10&offset=0&employee={emp.id}"})
        return out

    def device(self, asset: Asset, detail: bool = False) -> dict[str, Any]:
        emp = self.sim.employees.get(asset.employee_id or "")
        out: dict[str, Any] = {
            "_meta": {"href": f"{self.base}/assets/devices/{asset.id}"}, "id": asset.id, "status": asset.status,
            "manufacturer": {"id": asset.manufacturer, "name": asset.manufacturer},
            "model": {"id": asset.model, "name": asset.model},
        }
        if detail or not asset.sparse:
            out["serialNumber"] = {"type": "IMEI", "value": asset.imei}
        if emp is not None:
            out["employee"] = self.employee(emp, full=False)
        if detail and asset.line_id:
            out["service"] = {"_meta": {"href": f"{self.base}/assets/services/{asset.line_id}"}, "id": asset.line_id}
        return out

    def line(self, line: Line) -> dict[str, Any]:
        emp = self.sim.employees.get(line.employee_id or "")
        out: dict[str, Any] = {
            "_meta": {"href": f"{self.base}/assets/services/{line.id}"}, "id": line.id,
            "serviceNumber": line.number, "status": line.status,
            "vendor": {"id": line.carrier_id, "name": CARRIER_NAMES[line.carrier_id]},
            "plan": {"id": _plan_id(line), "name": line.plan},
            "simId": line.sim_id, "contractDates": {"activated": self.sim.iso(line.activated)},
        }
        if line.device_id:
            out["device"] = {"_meta": {"href": f"{self.base}/assets/devices/{line.device_id}"}, "id": line.device_id}
        if emp is not None:
            out["employee"] = self.employee(emp, full=False)
        return out

    def order(self, order: Order) -> dict[str, Any]:
        line = self.sim.lines.get(order.line_id or "")
        out: dict[str, Any] = {
            "_meta": {"href": f"{self.base}/orders/{order.id}"}, "orderId": order.id,
            "externalOrderNumber": order.external, "transactionType": order.transaction, "status": order.status,
            "dateSubmitted": self.sim.iso(order.submitted), "dateUpdated": self.sim.iso(order.updated),
            "accountHolder": self.employee(self.sim.employees.get(order.employee_id or ""), full=False),
            "properties": order.properties,
        }
        if line is not None:
            out.update({"serviceNumber": line.number, "service": {"id": line.id}})
        return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------------------------------- HTTP layer

@dataclass(slots=True)
class Req:
    """What a handler needs of one API request."""

    method: str
    query: dict[str, str]
    actor: Employee | None
    records: Records
    path: str
    request: web.Request


class Http:
    """aiohttp handlers: faults, header and token checks, routing, paging, errors."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.routes: tuple[tuple[str, str, Callable[..., Any]], ...] = (
            ("GET", "/me", self.me),
            ("GET", "/employees", self.employees),
            ("GET", "/employees/{id}", self.employee),
            ("GET", "/assets/devices", self.devices),
            ("GET", "/assets/devices/{id}", self.device),
            ("GET", "/assets/services", self.lines),
            ("GET", "/assets/services/{id}", self.line),
            ("GET", "/orders", self.orders),
            ("GET", "/orders/properties", self.properties),
            ("GET", "/orders/{id}", self.order),
            ("POST", "/orders", self.place),
        )

    # --- plumbing --------------------------------------------------------------------------

    def json(self, payload: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=json.dumps(payload, separators=(",", ":")).encode(),
                            content_type=JSON_TYPE)

    def error(self, err: ApiError) -> web.Response:
        body = {"errorCode": err.code, "id": _error_id(self.sim._req_rng), "message": err.message,
                "status": err.status}
        if err.order:
            return self.json({"status": "ERROR", "errors": [body]}, err.status)
        return self.json(body, err.status)

    def _route(self, method: str, path: str) -> tuple[str, Callable[..., Any], str | None] | None:
        parts = path.strip("/").split("/")
        for verb, pattern, handler in self.routes:
            pp = pattern.strip("/").split("/")
            if verb != method or len(pp) != len(parts):
                continue
            if all(p == q or p == "{id}" for p, q in zip(pp, parts, strict=True)):
                ident = next((q for p, q in zip(pp, parts, strict=True) if p == "{id}"), None)
                return pattern, handler, ident
        return None

    async def api(self, request: web.Request) -> web.StreamResponse:
        response = await self._api(request)
        self.sim.status_counts[response.status] += 1
        return response

    async def _api(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        path, prefix = request.path, ""
        if path.startswith(API_PREFIX + "/"):
            path, prefix = path[len(API_PREFIX):], API_PREFIX
        found = self._route(request.method, path)
        route = found[0] if found else path
        sim.request_counts[f"{request.method} {route}"] += 1
        sim.requests.append(Seen(request.method, route, path, dict(request.query),
                                 {h: request.headers[h] for h in TRACED_HEADERS if h in request.headers}))
        faulted = await self._fault()
        if faulted is not None:
            return faulted
        try:
            if found is None:
                raise ApiError(404, "404-not-found", f"No resource at {path}.")
            actor = self._authorize(request)
            base = _origin(request, self.sim.faults.fire("foreign_links", sim._req_rng)) + prefix
            req = Req(request.method, dict(request.query), actor, Records(sim, base), path, request)
            payload = await found[1](req, found[2]) if found[2] is not None else await found[1](req)
        except ApiError as err:
            return self.error(err)
        return self.json(payload)

    async def _fault(self) -> web.Response | None:
        faults, rng = self.sim.faults, self.sim._req_rng
        if faults.slow > 0:
            await asyncio.sleep(faults.slow)
        if faults.expire_in > 0:
            faults.expire_in -= 1
            if faults.expire_in == 0:
                self.sim.expire_tokens()
        if faults.fire("token_expiry", rng):
            self.sim.expire_tokens()
        if faults.fire("http_500", rng):
            return self.error(ApiError(500, "500-internal", "An unexpected error occurred."))
        if faults.fire("html_error", rng):
            return web.Response(status=faults.html_status, text=HTML_PAGE.format(status=faults.html_status),
                                content_type="text/html")
        if faults.fire("malformed_json", rng):
            return web.Response(body=_TRUNCATED.encode(), content_type=JSON_TYPE)
        return None

    def _authorize(self, request: web.Request) -> Employee | None:
        """Header checks (400 for a missing tenant or client_id), the token (401), the context (403)."""
        headers, sim = request.headers, self.sim
        client_id = (headers.get("client_id") or "").strip()
        tenant = (headers.get("X-TNGO-TENANT") or "").strip()
        if not client_id:
            raise ApiError(400, "400-client_id-missing", "The client_id header is required.")
        if not tenant:
            raise ApiError(400, "400-tenant-missing", "The X-TNGO-TENANT header is required.")
        if client_id not in sim.clients:
            raise ApiError(403, "403-client_id-invalid", "The client_id is not registered for this API.")
        if tenant != sim.tenant:
            raise ApiError(403, "403-tenant-invalid", f"Not authorized for tenant {tenant}.")
        auth = headers.get("Authorization") or ""
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token or sim.user_of(token) is None:
            raise ApiError(401, "401-invalid-token", "The access token is missing, invalid or expired.")
        return sim.actor(headers)

    # --- paging ----------------------------------------------------------------------------

    def page(self, req: Req, key: str, ids: Sequence[str], build: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """One page of ``ids`` (standard: from ``offset``; Premium Mobile: the page holding it)."""
        limit, offset = _paging(req.query, self.sim.max_limit)
        total = len(ids)
        start = offset if self.sim.offset_mode == "standard" else offset // limit * limit
        chunk = ids[start:start + limit]
        link = lambda o: _link(req.records.base + req.path, req.query, limit, o)  # noqa: E731
        meta: dict[str, Any] = {"href": link(offset), "limit": limit, "offset": offset, "totalCount": total}
        if start + limit < total:
            meta["hrefNext"] = link(offset + limit)
            last = (total - 1) // limit * limit
            meta["hrefEnd"] = link(last if self.sim.offset_mode == "premium" else max(0, total - limit))
        if start > 0:
            meta["hrefStart"] = link(0)
            meta["hrefPrevious"] = link(max(0, offset - limit))
        return {key: [build(i) for i in chunk], "_meta": meta}

    def _after_asset_page(self) -> None:
        if self.sim.faults.fire("shift", self.sim._req_rng):
            owner = self.sim._rng.choice(list(self.sim.employees))
            self.sim.add_asset(owner, front=True)

    # --- handlers --------------------------------------------------------------------------

    async def me(self, req: Req) -> dict[str, Any]:
        rec, sim = req.records, self.sim
        return {"me": {"_meta": {"href": f"{rec.base}/me"}, "authenticatedUser": rec.employee(sim.admin),
                       "actor": rec.employee(req.actor or sim.admin),
                       "transactionTypes": [{"id": t, "name": t.replace("_", " ").title()}
                                            for t in sim.transaction_types]}}

    async def employees(self, req: Req) -> dict[str, Any]:
        who = self.sim.scope(req.actor, req.query)
        ids = [e for e in self.sim.employees if who is None or e == who]
        return self.page(req, "employees", ids, lambda i: req.records.employee(self.sim.employees[i]))

    async def employee(self, req: Req, emp_id: str) -> dict[str, Any]:
        emp = self.sim.employees.get(emp_id)
        if emp is None or self.sim.scope(req.actor, {}) not in (None, emp_id):
            raise ApiError(404, "404-employee", f"Employee {emp_id} not found.")
        return {"employee": req.records.employee(emp)}

    def _visible(self, order: list[str], table: dict[str, Any], req: Req) -> list[str]:
        who = self.sim.scope(req.actor, req.query)
        return order if who is None else [i for i in order if table[i].employee_id == who]

    async def devices(self, req: Req) -> dict[str, Any]:
        ids = self._visible(self.sim.device_order, self.sim.devices, req)
        page = self.page(req, "devices", ids, lambda i: req.records.device(self.sim.devices[i]))
        self._after_asset_page()
        return page

    async def device(self, req: Req, device_id: str) -> dict[str, Any]:
        asset = self.sim.devices.get(device_id)
        if asset is None or self.sim.scope(req.actor, {}) not in (None, asset.employee_id):
            raise ApiError(404, "404-device", f"Device {device_id} not found.")
        return {"device": req.records.device(asset, detail=True)}

    async def lines(self, req: Req) -> dict[str, Any]:
        ids = self._visible(self.sim.line_order, self.sim.lines, req)
        page = self.page(req, "services", ids, lambda i: req.records.line(self.sim.lines[i]))
        self._after_asset_page()
        return page

    def _line(self, req: Req, line_id: str) -> Line:
        line = self.sim.lines.get(line_id)
        if line is None or self.sim.scope(req.actor, {}) not in (None, line.employee_id):
            raise ApiError(404, "404-service", f"Service {line_id} not found.", order=req.method == "POST")
        return line

    async def line(self, req: Req, line_id: str) -> dict[str, Any]:
        return {"service": req.records.line(self._line(req, line_id))}

    async def orders(self, req: Req) -> dict[str, Any]:
        who = self.sim.scope(req.actor, req.query)
        ids = [o.id for o in self.sim.orders.values() if who is None or o.employee_id == who]
        return self.page(req, "orders", ids, lambda i: req.records.order(self.sim.orders[i]))

    async def order(self, req: Req, order_id: str) -> dict[str, Any]:
        order = self.sim.orders.get(order_id)
        if order is None or self.sim.scope(req.actor, {}) not in (None, order.employee_id):
            raise ApiError(404, "404-order", f"Order {order_id} not found.")
        return {"order": req.records.order(order)}

    async def properties(self, req: Req) -> dict[str, Any]:
        transaction = (req.query.get("transactionType") or "").upper()
        if not transaction:
            raise ApiError(400, "400-transactionType-missing", "The transactionType parameter is required.")
        if not req.query.get("service") and not req.query.get("vendor"):
            raise ApiError(400, "400-vendor-service-missing", "Vendor ID or Service ID must be passed in.")
        line = self._line(req, req.query["service"]) if req.query.get("service") else None
        carrier = line.carrier_id if line else req.query.get("vendor", "")
        items = property_fields(self.sim, transaction, carrier, line)
        href = _link(req.records.base + req.path, req.query, None, None)
        return {"properties": {"_meta": {"href": href}, "items": [{"groupId": "MISCELLANEOUS", "fields": items}]}}

    async def place(self, req: Req) -> dict[str, Any]:
        """POST /orders: validate; ``confirm=true`` answers the confirmation and places nothing."""
        sim = self.sim
        try:
            body = await req.request.json()
        except ValueError:
            raise ApiError(400, "400-body-invalid", "The request body is not valid JSON.", order=True) from None
        request = body.get("orderRequest") if isinstance(body, dict) else None
        if not isinstance(request, dict):
            raise ApiError(400, "400-orderRequest-missing", "orderRequest is required.", order=True)
        transaction = str(request.get("transactionType") or "").upper()
        if transaction not in sim.transaction_types:
            raise ApiError(403, "403-transactionType", f"Transaction type {transaction or '(none)'} is not "
                           "permitted for the actor.", order=True)
        line = self._line(req, str(request.get("serviceId") or "")) if transaction in LINE_NEEDS else None
        if line is not None:
            check_order(sim, transaction, line, request.get("properties"))
        preview = {"transactionType": transaction, "externalOrderNumber": request.get("externalOrderNumber"),
                   "properties": request.get("properties") or [],
                   "requestedBy": req.records.employee(req.actor or sim.admin)}
        if line is not None:
            preview.update({"service": req.records.line(line),
                            "accountHolder": req.records.employee(sim.employees.get(line.employee_id or ""))})
        if req.query.get("confirm", "false").lower() == "true":
            sim.dry_runs.append(preview)
            return {"orderConfirmation": preview, "status": "SUCCESS"}
        order = sim.create_order(line.device_id or "" if line else "", transaction,
                                 external=str(request.get("externalOrderNumber") or "") or None,
                                 properties=request.get("properties") or [])
        return {"order": req.records.order(order), "status": "SUCCESS"}

    # --- token service ---------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        """PingFederate's token endpoint: password and refresh grants."""
        sim = self.sim
        params = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        grant = params.get("grant_type", "")
        sim.request_counts[f"{request.method} {TOKEN_PATH}"] += 1
        if request.method != "POST":
            return _oauth_error(400, "invalid_request", "Use POST.")
        secret = params.get("client_secret")
        if not secret or sim.clients.get(params.get("client_id", "")) != secret:
            return _oauth_error(401, "invalid_client", "Invalid client or client credentials.")
        if "MOBPROC" not in params.get("scope", "").split():
            return _oauth_error(400, "invalid_scope", "The requested scope(s) must be MOBPROC.")
        if grant == "password":
            user = params.get("username", "")
            if user not in sim.users or sim.users[user] != params.get("password"):
                return _oauth_error(400, "invalid_grant", "Invalid resource owner credentials.")
        elif grant == "refresh_token":
            if not sim.refresh_enabled:
                return _oauth_error(400, "unauthorized_client", "The refresh_token grant is not allowed for this "
                                    "client.")
            user = sim._refresh.pop(params.get("refresh_token", ""), "")
            if not user:
                return _oauth_error(400, "invalid_grant", "unknown, invalid, or expired refresh token")
        else:
            return _oauth_error(400, "unsupported_grant_type", f"Unsupported grant type {grant!r}.")
        sim.grant_counts[grant] += 1
        return self.json(sim.issue(user))

    # --- /_sim ------------------------------------------------------------------------------

    async def settings(self, request: web.Request) -> web.Response:
        """``{"offset_mode": "standard"|"premium", "refresh_enabled": bool, "max_limit": n,
        "token_ttl": s, "order_delay": [min, max], "order_fail_rate": p}``."""
        sim = self.sim
        body = await request.json() if request.can_read_body else {}
        allowed = {"offset_mode": ("standard", "premium"), "refresh_enabled": None, "max_limit": None,
                   "token_ttl": None, "order_delay": None, "order_fail_rate": None}
        for key, value in (body or {}).items():
            choices = allowed.get(key, ())
            if key not in allowed or (choices and value not in choices):
                return self.json({"error": f"bad setting {key}={value!r}"}, 400)
            setattr(sim, key, tuple(value) if key == "order_delay" else value)
        return self.json({k: getattr(sim, k) for k in allowed})

    async def clock(self, request: web.Request) -> web.Response:
        try:
            self.sim.advance_clock(float(request.query.get("advance", "0")))
        except ValueError:
            return self.json({"error": "advance must be a number"}, 400)
        return self.json({"now": self.sim.now(), "clock_offset": self.sim.clock_offset})

    async def sim_orders(self, request: web.Request) -> web.Response:
        """GET: every order; POST ``{"device": id, "transactionType": "UPGRADE"}`` creates one."""
        sim = self.sim
        if request.method == "POST":
            body = await request.json()
            if body.get("device") not in sim.devices:
                return self.json({"error": "unknown device"}, 400)
            order = sim.create_order(body["device"], str(body.get("transactionType") or "UPGRADE").upper())
            return self.json(Records(sim, "").order(order))
        return self.json([Records(sim, "").order(o) for o in sim.orders.values()])

    async def sim_order(self, request: web.Request) -> web.Response:
        """POST ``{"status": "SHIPPED"}``: force an order's status."""
        order_id = request.match_info["id"]
        if order_id not in self.sim.orders:
            return self.json({"error": "unknown order"}, 404)
        body = await request.json()
        order = self.sim.set_order_status(order_id, str(body.get("status") or "").upper())
        return self.json(Records(self.sim, "").order(order))


def property_fields(sim: Simulator, transaction: str, carrier: str, line: Line | None) -> list[dict[str, Any]]:
    """The property fields of ``transaction`` for ``carrier``; employee choices list the line's holder."""
    required, extra = CARRIER_RULES.get(carrier, {}).get(transaction, ((), ()))
    out = []
    for spec in (*PROPERTIES.get(transaction, ()), *extra):
        spec = dict(spec)
        if spec["id"] in required:
            spec["validation"] = "REQUIRED"
        if spec["id"] in EMPLOYEE_CHOICE_FIELDS:
            holder = sim.employees.get(line.employee_id or "") if line else None
            spec["choices"] = ([{"id": holder.company_id, "isOther": False, "label": f"{holder.first} {holder.last}"}]
                               if holder else []) + [{"id": "OTHER", "isOther": True, "label": "Other"}]
        out.append(spec)
    return out


def check_order(sim: Simulator, transaction: str, line: Line, properties: Any) -> None:
    """The line state the order needs and its required properties (ApiError as an order ERROR)."""
    if line.status != LINE_NEEDS[transaction]:
        raise ApiError(400, f"400-{transaction}-state", f"Service {line.number} is {line.status}; "
                       f"{transaction} needs an {LINE_NEEDS[transaction]} service.", order=True)
    given: dict[str, Any] = {}
    for group in properties if isinstance(properties, list) else []:
        for item in group.get("fields", []) if isinstance(group, dict) else []:
            if isinstance(item, dict) and item.get("id"):
                given[item["id"]] = item.get("text") or item.get("date") or (item.get("choice") or {}).get("id")
    for spec in property_fields(sim, transaction, line.carrier_id, line):
        value = given.get(spec["id"])
        if spec["validation"] == "REQUIRED" and not value:
            raise ApiError(400, "400-property-missing", f"Required property {spec['id']} ({spec['label']}) is "
                           "missing.", order=True)
        if value and spec.get("choices") and value not in {c["id"] for c in spec["choices"]}:
            raise ApiError(400, "400-property-choice", f"{value!r} is not a valid choice for {spec['id']}.",
                           order=True)
        if spec["id"] == "SERVICE_NUMBER" and value and "".join(filter(str.isdigit, str(value))) != line.number:
            raise ApiError(400, "400-property-value", "SERVICE_NUMBER does not match the service.", order=True)


def _paging(query: dict[str, str], max_limit: int) -> tuple[int, int]:
    """``limit`` and ``offset`` are required (vendor-notes); the limit is capped at ``max_limit``."""
    try:
        limit, offset = int(query["limit"]), int(query["offset"])
    except KeyError:
        raise ApiError(400, "400-paging-missing", "The limit and offset parameters are required.") from None
    except ValueError:
        raise ApiError(400, "400-paging-invalid", "limit and offset must be integers.") from None
    if limit < 1 or offset < 0:
        raise ApiError(400, "400-paging-invalid", "limit must be positive and offset not negative.")
    return min(limit, max_limit), offset


def _link(url: str, query: dict[str, str], limit: int | None, offset: int | None) -> str:
    params = dict(query)
    if limit is not None:
        params.update(limit=str(limit), offset=str(offset))
    return str(URL(url).with_query(params))


def _origin(request: web.Request, foreign: bool) -> str:
    if foreign:
        return f"https://{FOREIGN_HOST}"
    return f"{request.scheme}://{request.host}"


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.Response(status=status, content_type=JSON_TYPE,
                        body=json.dumps({"error": error, "error_description": description}).encode())


def _error_id(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))


def create_app(users: dict[str, str] | None = None, clients: dict[str, str] | None = None, tenant: str = "ACME",
               devices: int = 50, seed: int = 1, tick: float | None = DEFAULT_TICK,
               **options: Any) -> web.Application:
    """The simulator as an aiohttp app; ``app["sim"]`` is the :class:`Simulator` (made with ``options``).
    ``tick`` 0 or None: a still world that only ``/_sim/step`` moves (see :mod:`fleetbridge.simkit`)."""
    sim = Simulator(users, clients, tenant, devices, seed, **options)
    http = Http(sim)
    app = sim_app(sim)
    app.router.add_route("*", TOKEN_PATH, http.token)
    app.router.add_post("/_sim/settings", http.settings)
    app.router.add_post("/_sim/clock", http.clock)
    app.router.add_route("*", "/_sim/orders", http.sim_orders)
    app.router.add_post("/_sim/orders/{id}", http.sim_order)
    add_admin_routes(app, sim, sim.faults, step_answer=lambda: {"world_time": sim.t},
                     request_extras=lambda: {"grants": dict(sim.grant_counts)})
    app.router.add_route("*", "/{tail:.*}", http.api)
    start_ticker(app, level_with(sim, sim.now), tick)
    return app


if __name__ == "__main__":  # pragma: no cover - manual demo:
    # ``python -m fleetbridge_plugins.tangoe.simulator [port] [devices]``
    run_demo(create_app, 8766, 50)
