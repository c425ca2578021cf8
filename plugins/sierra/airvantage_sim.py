"""A faithful AirVantage gateway-inventory simulator, for demos, end-to-end tests and benchmarks.

Sources: ``shared/vendor-docs/airvantage-gateways.txt`` and the AirVantage section of
``shared/docs/vendor-notes.md``. Served:

* ``GET /api/v1/gateways``: ``fields``, the criteria (uid, imei, macAddress, serialNumber, labels, type,
  ``states`` or ``state``, metadata ``k:v,..``, assigned, company), offset/size paging (size capped at
  ``max_page``), ordered by creationDate;
* ``POST /api/v1/gateways``, ``GET|PUT|DELETE /api/v1/gateways/{uid}`` with the document's validation
  errors (a DELETE answers 200 with an empty body);
* operations ``POST /api/v1/operations/gateways/{import,label,delete,transfer}`` answering
  ``{"operation": uid}``, and ``GET /api/v1/operations/{uid}``: SCHEDULED, then IN_PROGRESS after
  ``op_delay[0]`` s, FINISHED after ``op_delay[1]`` s of the simulator's clock, with ``counters``
  ``[{state, count}]`` over the tasks (one per gateway; per-gateway failures such as ``gateway.assigned``
  live in the tasks). Transfers move gateways to BEING_TRANSFERRED at once; when the operation
  finishes the partner has accepted and they leave the company.

Errors are ``{"error": key, "errorParameters": [...]}``. Gateways in ``label_failures`` fail their
label tasks (partial failure). OAuth, faults and the clock come from :mod:`.sim_common`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fleetbridge.simkit import DEFAULT_TICK

from .sim_common import SimBase, SimError

TYPES = ("GX440", "MP70", "RV55", "LX60", "FXT009", "M2MBoxPro")
LABELS = ("fleet", "north", "south", "spare", "test", "pilot")
ALL_FIELDS = ("uid", "imei", "macAddress", "serialNumber", "type", "state", "creationDate", "labels", "metadata")
DEFAULT_FIELDS = ("uid", "state", "imei", "macAddress", "serialNumber", "type", "creationDate")
EDITABLE = ("imei", "macAddress", "serialNumber", "type", "metadata", "labels")
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
EDITABLE_SYSTEM_STATES = ("INVENTORY", "MAINTENANCE")
CSV_COLUMNS = ("IMEI", "MAC ADDRESS", "SERIAL NUMBER", "TYPE", "LABELS")


@dataclass(eq=False)
class SimGateway:
    """One gateway; ``system_state`` is the state of the system it is assigned to (None: unassigned)."""

    uid: str
    company: str
    creation: int  # ms
    imei: str | None = None
    macAddress: str | None = None
    serialNumber: str | None = None
    type: str | None = None
    state: str = "INVENTORY"
    labels: list[str] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    system_state: str | None = None

    def record(self, wanted: Iterable[str], creation_as_text: bool = False) -> dict[str, Any]:
        values = {"uid": self.uid, "imei": self.imei, "macAddress": self.macAddress,
                  "serialNumber": self.serialNumber, "type": self.type, "state": self.state,
                  "creationDate": str(self.creation) if creation_as_text else self.creation,
                  "labels": list(self.labels), "metadata": [dict(m) for m in self.metadata]}
        return {k: values[k] for k in wanted if k in values}


@dataclass(eq=False)
class SimTask:
    gateway: str
    apply: Callable[[], str | None]  # returns an error key for FAILURE
    state: str = "PENDING"
    error: str | None = None


@dataclass(eq=False)
class SimOperation:
    uid: str
    type: str
    created: float
    start: float
    end: float
    tasks: list[SimTask]
    state: str = "SCHEDULED"
    on_start: Callable[[], None] | None = None

    def record(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task.state] = counts.get(task.state, 0) + 1
        ms = lambda t: int(t * 1000)
        return {"uid": self.uid, "type": self.type, "state": self.state, "createdAt": ms(self.created),
                "startDate": ms(self.start) if self.state != "SCHEDULED" else None,
                "endDate": ms(self.end) if self.state == "FINISHED" else None,
                "timeoutDate": ms(self.created + 86400), "total": len(self.tasks),
                "counters": [{"state": s, "count": c} for s, c in sorted(counts.items())]}


class AirVantageSimulator(SimBase):
    """The simulated AirVantage company: gateways, operations, partners, OAuth, faults."""

    def __init__(self, *, clients: dict[str, str], users: dict[str, str], devices: int = 20, seed: int = 1,
                 clock: Any = None, company: str = "0a1b2c3d4e5f40718293a4b5c6d7e8f9",
                 partners: Iterable[str] = ("787ef34132fe89734acb9871",), op_delay: tuple[float, float] = (1.0, 3.0),
                 max_page: int = 500, access_lifetime: float = 86400.0) -> None:
        super().__init__(clients=clients, users=users, clock=clock, seed=seed, access_lifetime=access_lifetime)
        self.company = company
        self.partners = set(partners)
        self.op_delay = op_delay
        self.max_page = max_page
        self.gateways: dict[str, SimGateway] = {}
        self.operations: dict[str, SimOperation] = {}
        self.label_failures: set[str] = set()
        for n in range(devices):
            self._generate(n)

    # --- world -------------------------------------------------------------------------------

    def _uid(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _generate(self, n: int) -> SimGateway:
        rng = self.rng
        gw = SimGateway(
            uid=self._uid(), company=self.company, creation=self.now_ms() - (1000 - n) * 3_600_000,
            imei=f"35327004{rng.randrange(10**6, 10**7)}" if n % 7 else None,
            macAddress=":".join(f"{rng.randrange(256):02X}" for _ in range(6)) if n % 3 == 0 else None,
            serialNumber=f"CA{rng.randrange(10**9, 10**10)}", type=TYPES[n % len(TYPES)],
            labels=sorted(set(rng.sample(LABELS, rng.randint(0, 2)))),
            metadata=[{"key": "env", "value": rng.choice(("prod", "staging"))}],
            system_state=("ACTIVE" if n % 5 == 1 else None),
        )
        if n % 11 == 10:
            gw.state = "BEING_TRANSFERRED"
        self.gateways[gw.uid] = gw
        return gw

    def own(self, company: str | None = None) -> list[SimGateway]:
        """Gateways of ``company`` (ours by default), oldest first."""
        company = company or self.company
        return sorted((g for g in self.gateways.values() if g.company == company), key=lambda g: g.creation)

    def settle(self) -> None:
        """Advance every operation to its state at the simulator's time."""
        now = self.now()
        for op in self.operations.values():
            if op.state == "SCHEDULED" and now >= op.start:
                op.state = "IN_PROGRESS"
                for task in op.tasks:
                    task.state = "IN_PROGRESS"
                if op.on_start:
                    op.on_start()
            if op.state == "IN_PROGRESS" and now >= op.end:
                for task in op.tasks:
                    task.error = task.apply()
                    task.state = "FAILURE" if task.error else "SUCCESS"
                op.state = "FINISHED"

    def before_api(self, request: web.Request) -> web.Response | None:
        self.settle()
        return None

    def _operation(self, kind: str, tasks: list[SimTask], on_start: Callable[[], None] | None = None) -> str:
        now = self.now()
        op = SimOperation(uid=self._uid(), type=kind, created=now, start=now + self.op_delay[0],
                          end=now + self.op_delay[1], tasks=tasks, on_start=on_start)
        self.operations[op.uid] = op
        self.settle()
        return op.uid

    # --- validation --------------------------------------------------------------------------

    def _company(self, request: web.Request) -> str:
        company = request.query.get("company") or self.company
        if company != self.company and company not in self.partners:
            raise SimError(400, "company.unknown", [company])
        return company

    def _gateway(self, uid: str) -> SimGateway:
        gw = self.gateways.get(uid)
        if gw is None or gw.company != self.company:
            raise SimError(404, "gateway.unknown", [uid])
        return gw

    def _check_fields(self, values: dict[str, Any], uid: str | None) -> None:
        if values.get("macAddress") and not MAC_RE.match(str(values["macAddress"])):
            raise SimError(400, "gateway.invalid.mac.address", [values["macAddress"]])
        if "metadata" in values:
            keys = [str(m.get("key") or "").strip() if isinstance(m, dict) else "" for m in values["metadata"] or []]
            if any(not k for k in keys) or len(keys) != len(set(keys)):
                raise SimError(400, "gateway.invalid.metadata")
        if not any(values.get(k) for k in ("imei", "macAddress", "serialNumber")):
            raise SimError(400, "gateway.missing.identifiers")
        for key in ("imei", "macAddress", "serialNumber"):
            value = values.get(key)
            if value and any(getattr(g, key) == value and g.uid != uid for g in self.gateways.values()):
                raise SimError(400, "gateway.not.unique.identifiers", [key])

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise SimError(400, "request.invalid.json") from None
        if not isinstance(body, dict):
            raise SimError(400, "request.invalid.json")
        return body

    # --- gateways ----------------------------------------------------------------------------

    async def find(self, request: web.Request) -> web.Response:
        q = request.query
        company = self._company(request)
        wanted = [f for f in q.get("fields", "").split(",") if f] or list(DEFAULT_FIELDS)
        items = [g for g in self.own(company) if self._matches(g, q)]
        try:
            offset = max(0, int(q.get("offset", "0")))
            size = min(self.max_page, max(1, int(q.get("size", "100"))))
        except ValueError:
            raise SimError(400, "request.invalid.parameter", ["offset/size"]) from None
        page = items[offset:offset + size]
        return self.json({"items": [g.record(wanted) for g in page], "count": len(items), "size": len(page),
                          "offset": offset})

    @staticmethod
    def _matches(g: SimGateway, q: Any) -> bool:
        def like(attr: str) -> bool:
            return not q.get(attr) or q[attr].lower() in str(getattr(g, attr) or "").lower()

        states = q.get("states") or q.get("state")
        labels = [x for x in q.get("labels", "").split(",") if x]
        meta = {m["key"]: m["value"] for m in g.metadata}
        for pair in filter(None, q.get("metadata", "").split(",")):
            key, _, value = pair.partition(":")
            if key not in meta or value.lower() not in meta[key].lower():
                return False
        return (all(like(a) for a in ("imei", "macAddress", "serialNumber", "type"))
                and (not q.get("uid") or q["uid"] == g.uid)
                and (not states or g.state in states.split(","))
                and (not labels or bool(set(labels) & set(g.labels)))
                and (q.get("assigned") is None or (q["assigned"] == "true") == (g.system_state is not None)))

    async def details(self, request: web.Request) -> web.Response:
        gw = self._gateway(request.match_info["uid"])
        return self.json(gw.record(ALL_FIELDS, creation_as_text=True))

    async def create(self, request: web.Request) -> web.Response:
        company = self._company(request)
        body = await self._body(request)
        values = {k: body.get(k) for k in EDITABLE if k in body}
        self._check_fields(values, None)
        gw = SimGateway(uid=self._uid(), company=company, creation=self.now_ms(),
                        **{k: v for k, v in values.items() if k not in ("labels", "metadata")},
                        labels=list(values.get("labels") or []), metadata=list(values.get("metadata") or []))
        self.gateways[gw.uid] = gw
        return self.json(gw.record(ALL_FIELDS, creation_as_text=True))

    async def edit(self, request: web.Request) -> web.Response:
        gw = self._gateway(request.match_info["uid"])
        body = await self._body(request)
        if gw.state == "BEING_TRANSFERRED":
            raise SimError(400, "gateway.being.transferred", [gw.uid])
        changes = {k: body[k] for k in EDITABLE if k in body}
        if gw.system_state and gw.system_state not in EDITABLE_SYSTEM_STATES and set(changes) - {"labels"}:
            raise SimError(400, "system.invalid.state", [gw.system_state])
        merged = {k: getattr(gw, k) for k in EDITABLE} | changes
        self._check_fields(merged, gw.uid)
        for key, value in changes.items():
            setattr(gw, key, list(value or []) if key in ("labels", "metadata") else value)
        return self.json(gw.record(ALL_FIELDS, creation_as_text=True))

    async def delete(self, request: web.Request) -> web.Response:
        gw = self._gateway(request.match_info["uid"])
        if gw.system_state is not None:
            raise SimError(400, "gateway.assigned", [gw.uid])
        del self.gateways[gw.uid]
        return web.Response(status=200)

    # --- operations --------------------------------------------------------------------------

    def _select(self, selection: dict[str, Any], *, allow: tuple[str, ...]) -> list[SimGateway]:
        """Gateways of a ``{uids | label | criteria | dependsOn}`` selection (exactly one set)."""
        given = [k for k in allow if selection.get(k) not in (None, [], {}, "")]
        if len(given) != 1:
            raise SimError(400, "selection.invalid")
        kind = given[0]
        own = self.own()
        if kind == "uids":
            uids = list(selection["uids"])
            if len(uids) > 100:
                raise SimError(400, "selection.max.uid.reached")
            return [g for g in own if g.uid in uids]
        if kind == "label":
            if not any(selection["label"] in g.labels for g in own):
                raise SimError(400, "label.unknown", [selection["label"]])
            return [g for g in own if selection["label"] in g.labels]
        if kind == "dependsOn":
            op = self.operations.get(str(selection["dependsOn"].get("operation")))
            if op is None:
                raise SimError(400, "operation.unknown")
            states = selection["dependsOn"].get("states") or ["SUCCESS", "FAILURE", "CANCELLED"]
            uids = {t.gateway for t in op.tasks if t.state in states}
            return [g for g in own if g.uid in uids]
        return [g for g in own if self._criteria(g, selection["criteria"])]

    @staticmethod
    def _criteria(g: SimGateway, c: dict[str, Any]) -> bool:
        meta = {m["key"]: m["value"] for m in g.metadata}

        def like(attr: str) -> bool:
            return not c.get(attr) or str(c[attr]).lower() in str(getattr(g, attr) or "").lower()

        return (all(like(a) for a in ("serialNumber", "imei", "macAddress", "type"))
                and (not c.get("uids") or g.uid in c["uids"])
                and (not c.get("labels") or bool(set(c["labels"]) & set(g.labels)))
                and (not c.get("states") or g.state in c["states"])
                and (c.get("assigned") is None or bool(c["assigned"]) == (g.system_state is not None))
                and all(k in meta and str(v).lower() in meta[k].lower() for k, v in (c.get("metadata") or {}).items()))

    def _label_task(self, uid: str, add: list[str], remove: list[str]) -> SimTask:
        def apply() -> str | None:
            gw = self.gateways.get(uid)
            if gw is None or gw.company != self.company:
                return "gateway.unknown"
            if uid in self.label_failures:
                return "gateway.label.failed"
            gw.labels = sorted((set(gw.labels) | set(add)) - set(remove))
            return None

        return SimTask(uid, apply)

    async def op_label(self, request: web.Request) -> web.Response:
        self._company(request)
        body = await self._body(request)
        labels = body.get("labels") or {}
        add, remove = list(labels.get("add") or []), list(labels.get("remove") or [])
        if not add and not remove:
            raise SimError(400, "label.missing")
        if len(add) > 100 or len(remove) > 100:
            raise SimError(400, "label.amount.exceeded")
        if body.get("criteria") is None and body.get("dependsOn") is None:
            raise SimError(400, "selection.invalid")
        targets = self._select({k: body.get(k) for k in ("criteria", "dependsOn")}, allow=("criteria", "dependsOn"))
        identifiers = body.get("identifiers") or {}
        for key, attr in (("serialNumber", "serialNumber"), ("imei", "imei"), ("macAddress", "macAddress")):
            values = set(identifiers.get(key) or [])
            if values:
                targets = [g for g in targets if getattr(g, attr) in values]
        if not targets:
            raise SimError(400, "selection.empty")
        tasks = [self._label_task(g.uid, add, remove) for g in targets]
        return self.json({"operation": self._operation("gateways.label", tasks)})

    async def op_delete(self, request: web.Request) -> web.Response:
        self._company(request)
        body = await self._body(request)
        targets = self._select(body.get("gateways") or {}, allow=("label", "uids", "dependsOn", "criteria"))
        if not targets:
            raise SimError(400, "selection.empty")

        def task(uid: str) -> SimTask:
            def apply() -> str | None:
                gw = self.gateways.get(uid)
                if gw is None or gw.company != self.company:
                    return "gateway.unknown"
                if gw.system_state is not None:
                    return "gateway.assigned"
                del self.gateways[uid]
                return None
            return SimTask(uid, apply)

        return self.json({"operation": self._operation("gateways.delete", [task(g.uid) for g in targets])})

    async def op_transfer(self, request: web.Request) -> web.Response:
        self._company(request)
        body = await self._body(request)
        destination = body.get("destination")
        if not destination:
            raise SimError(400, "company.missing")
        if destination not in self.partners:
            raise SimError(400, "partner.unknown", [destination])
        selection = body.get("gateways") or {}
        if selection.get("uids") and selection.get("label"):
            raise SimError(400, "selection.invalid")
        unknown = [u for u in selection.get("uids") or [] if u not in self.gateways]
        if unknown:
            raise SimError(400, "gateway.unknown", unknown)
        targets = self._select(selection, allow=("uids", "label", "criteria"))
        if not targets:
            raise SimError(400, "selection.empty")
        uids = [g.uid for g in targets]

        def begin() -> None:
            for uid in uids:
                if uid in self.gateways:
                    self.gateways[uid].state = "BEING_TRANSFERRED"

        def task(uid: str) -> SimTask:
            def apply() -> str | None:  # the partner accepted
                gw = self.gateways.get(uid)
                if gw is None:
                    return "gateway.unknown"
                gw.company, gw.state = str(destination), "INVENTORY"
                return None
            return SimTask(uid, apply)

        begin()
        return self.json({"operation": self._operation("gateways.transfer", [task(u) for u in uids], begin)})

    async def op_import(self, request: web.Request) -> web.Response:
        self._company(request)
        rows = await self._csv_rows(request)

        def task(row: dict[str, str]) -> SimTask:
            def apply() -> str | None:
                values: dict[str, Any] = {"imei": row.get("IMEI") or None, "macAddress": row.get("MAC ADDRESS") or None,
                                          "serialNumber": row.get("SERIAL NUMBER") or None}
                meta = [{"key": k[9:-1], "value": v} for k, v in row.items() if k.startswith("METADATA[") and v]
                try:
                    self._check_fields({**values, "metadata": meta}, None)
                except SimError as err:
                    return err.key
                gw = SimGateway(uid=self._uid(), company=self.company, creation=self.now_ms(),
                                type=row.get("TYPE") or None, metadata=meta,
                                labels=[x for x in (row.get("LABELS") or "").split("|") if x], **values)
                self.gateways[gw.uid] = gw
                return None
            ident = next((v for v in (row.get("IMEI"), row.get("SERIAL NUMBER"), row.get("MAC ADDRESS")) if v), "")
            return SimTask(ident, apply)

        return self.json({"operation": self._operation("gateways.import", [task(r) for r in rows])})

    async def _csv_rows(self, request: web.Request) -> list[dict[str, str]]:
        text: str | None = None
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if getattr(part, "name", None) == "file":
                    data = await part.read()
                    if len(data) > 10 * 1024 * 1024:
                        raise SimError(400, "file.too.large")
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise SimError(400, "file.unreadable") from None
        else:
            text = (await request.read()).decode("utf-8", errors="replace")
        if text is None:
            raise SimError(400, "file.unreadable")
        reader_csv = csv.DictReader(io.StringIO(text))
        header = reader_csv.fieldnames
        if not header:
            raise SimError(400, "file.header.missing")
        bad = [c for c in header if c not in CSV_COLUMNS and not re.fullmatch(r"METADATA\[.+\]", c)]
        if bad:
            raise SimError(400, "csv.header.unknown.column", bad)
        rows = [r for r in reader_csv if any(v for v in r.values())]
        if not rows:
            raise SimError(400, "file.missing.data")
        return rows

    async def get_operation(self, request: web.Request) -> web.Response:
        op = self.operations.get(request.match_info["uid"])
        if op is None:
            raise SimError(404, "operation.unknown", [request.match_info["uid"]])
        return self.json(op.record())

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v1/gateways", self.find)
        r.add_post("/api/v1/gateways", self.create)
        r.add_get("/api/v1/gateways/{uid}", self.details)
        r.add_put("/api/v1/gateways/{uid}", self.edit)
        r.add_delete("/api/v1/gateways/{uid}", self.delete)
        r.add_post("/api/v1/operations/gateways/import", self.op_import)
        r.add_post("/api/v1/operations/gateways/label", self.op_label)
        r.add_post("/api/v1/operations/gateways/delete", self.op_delete)
        r.add_post("/api/v1/operations/gateways/transfer", self.op_transfer)
        r.add_get("/api/v1/operations/{uid}", self.get_operation)


def create_app(clients: dict[str, str] | None = None, users: dict[str, str] | None = None, devices: int = 20,
               seed: int = 1, tick: float | None = DEFAULT_TICK, **options: Any) -> web.Application:
    """The simulator as an aiohttp app; ``app["sim"]`` is the :class:`AirVantageSimulator`. Gateways
    change only through requests, and operations run on the simulator's clock, so ``tick`` (0 or None:
    a still world) changes nothing here; it is taken like every simulator's."""
    sim = AirVantageSimulator(clients=clients or {"demo": "demo-secret"}, users=users or {"demo": "demo-password"},
                              devices=devices, seed=seed, **options)
    return sim.make_app(sim.routes, tick)
