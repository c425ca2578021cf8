"""A faithful AMM (AirLink Mobility Manager) simulator, for demos, end-to-end tests and benchmarks.

Sources: ``shared/vendor-docs/amm-sierra-wireless-airlink.txt`` and the AMM section of
``shared/docs/vendor-notes.md``. Served (all GET; other methods answer 405):

* ``/api/v1/systems/groups``: the nested group tree ``{name: {id, subgroups: [{name: node}]}}``;
* ``/api/v1/systems``: gateways nested by group name (filters ``platforms=A,B`` or ``(A,B)``, ``groupid``);
* ``/api/v1/systems/groups/{id}/data?ids=..|idPrefix=..``: latest values of the group's gateways and its
  subgroups', nested by group name; more than ``target_cap`` gateways -> 400
  ``aggregation.too.many.targets``; one unknown id -> 400 ``system.invalid.data.param``;
* ``/api/v1/systems/{uid}/data?ids=..``: one gateway's values (unknown ids omitted).

Values are strings with epoch-millisecond timestamps, derived from the simulator's clock; a few
gateways carry a GPS fix years old, some report ``ReportIdleTime`` as prose. Every authorised
``/api/v1`` request counts against the owner group's hourly limit (``rate_limit`` on a rolling hour
of the simulator's clock): answers carry ``X-Rate-Limit-Remaining``, and past the limit a 429 carries
``X-Rate-Limit-Retry-After-Seconds``. ``legacy=True`` serves an AMM before 2.17.4 (no group endpoints).
Faults, clock and the request log come from :mod:`.sim_common`.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fleetbridge.simkit import DEFAULT_TICK

from .sim_common import SimBase, SimError

PLATFORMS = ("MG90", "MP70", "GX450", "RV55", "LX60")
OPERATORS = ("Telus", "Rogers", "Bell", "AT&T", "Verizon")
NETWORK_TYPES = ("LTE", "LTE", "LTE", "5G NR", "HSPA+")
KNOWN_IDS = (
    "GPS Location-latitude", "GPS Location-longitude", "GPS Location-speedmph", "ReportIdleTime",
    "CellLink-RSSI", "CellLink-RSRP", "CellLink-RSRQ", "CellLink-SINR", "CellLink-txBytes", "CellLink-rxBytes",
    "CellLink-IPAddress", "CellLink-ICCID", "CellLink-CurrentNetworkOperator", "CellLink-NetworkServiceType",
    "ResetCount", "SoftwareVersion", "CPU-Temperature", "IMEI", "Platform",
)
YEAR = 365 * 86400


@dataclass(eq=False)
class SimGroup:
    """A group of the tree; ``gateways`` are the uids directly in it."""

    id: int
    name: str
    children: list[SimGroup] = field(default_factory=list)
    gateways: list[str] = field(default_factory=list)

    def walk(self) -> Iterator[SimGroup]:
        yield self
        for child in self.children:
            yield from child.walk()

    def size(self) -> int:
        return sum(len(g.gateways) for g in self.walk())


@dataclass(eq=False)
class SimGateway:
    """One gateway: its identity, a deterministic behaviour, and values a test pinned."""

    uid: str
    name: str
    platform: str
    lat: float
    lon: float
    phase: float
    period: int  # seconds between its reports
    stale_gps: bool = False  # the last GPS fix is years old
    prose_idle: bool = False
    overrides: dict[str, tuple[str, int]] = field(default_factory=dict)


class AmmSimulator(SimBase):
    """The simulated AMM: groups, gateways, values, OAuth and the owner group's rate limit."""

    def __init__(self, *, clients: dict[str, str], users: dict[str, str], devices: int = 20, seed: int = 1,
                 clock: Any = None, groups: dict[str, Any] | None = None, legacy: bool = False,
                 target_cap: int = 100, rate_limit: int = 360, access_lifetime: float = 86400.0) -> None:
        super().__init__(clients=clients, users=users, clock=clock, seed=seed, access_lifetime=access_lifetime)
        self.legacy = legacy
        self.target_cap = target_cap
        self.rate_limit = rate_limit
        self.gateways: dict[str, SimGateway] = {}
        self._group_ids = iter(range(1, 1_000_000))
        self.root = self._from_spec(groups) if groups else self._generate(devices)
        self.groups = {g.id: g for g in self.root.walk()}
        self.started = self.now()
        self.window: deque[float] = deque()  # counted requests of the last hour
        self.max_in_hour = 0
        self.throttled = 0

    # --- world -------------------------------------------------------------------------------

    def _new_group(self, name: str) -> SimGroup:
        return SimGroup(id=next(self._group_ids), name=name)

    def _add_gateways(self, group: SimGroup, count: int) -> None:
        for _ in range(count):
            n = len(self.gateways)
            platform = PLATFORMS[n % len(PLATFORMS)]
            uid = f"N{self.rng.randrange(10**12, 10**13)}{n:04d}"
            gw = SimGateway(uid=uid, name=f"{platform} {group.name} {n + 1:03d}", platform=platform,
                            lat=49.0 + self.rng.uniform(-1.5, 1.5), lon=-123.0 + self.rng.uniform(-2, 2),
                            phase=self.rng.uniform(0, 3600), period=self.rng.choice((60, 120, 300)),
                            stale_gps=n % 23 == 7, prose_idle=n % 3 == 1)
            self.gateways[uid] = gw
            group.gateways.append(uid)

    def _generate(self, devices: int) -> SimGroup:
        """All Gateways > Region N > Depot N-M (> Workshop), 40-80 gateways a depot, one gateway at the top."""
        root = self._new_group("All Gateways")
        left = devices
        if left > 1:
            self._add_gateways(root, 1)  # the document's "unregistered" gateway at the top
            left -= 1
        region = None
        depot_no = 0
        while left > 0:
            if region is None or len(region.children) == 2:
                region = self._new_group(f"Region {len(root.children) + 1}")
                root.children.append(region)
            depot_no += 1
            depot = self._new_group(f"Depot {len(root.children)}-{len(region.children) + 1}")
            region.children.append(depot)
            size = min(left, self.rng.randint(40, 80))
            workshop = size // 8 if depot_no % 2 == 1 else 0
            self._add_gateways(depot, size - workshop)
            if workshop:
                sub = self._new_group("Workshop")
                depot.children.append(sub)
                self._add_gateways(sub, workshop)
            left -= size
        return root

    def _from_spec(self, spec: dict[str, Any]) -> SimGroup:
        """``{"All Gateways": {"gateways": 1, "subgroups": {"North": {"gateways": 50}}}}``."""
        [(name, node)] = spec.items()

        def build(name: str, node: dict[str, Any]) -> SimGroup:
            group = self._new_group(name)
            self._add_gateways(group, int(node.get("gateways", 0)))
            group.children = [build(n, sub) for n, sub in (node.get("subgroups") or {}).items()]
            return group

        return build(name, node)

    def group_of(self, uid: str) -> SimGroup:
        return next(g for g in self.root.walk() if uid in g.gateways)

    def set_value(self, uid: str, stat_id: str, value: str, timestamp_ms: int | None = None) -> None:
        """Pin a value (string) of a gateway, stamped now unless given."""
        self.gateways[uid].overrides[stat_id] = (value, timestamp_ms if timestamp_ms is not None else self.now_ms())

    def values(self, gw: SimGateway) -> dict[str, tuple[str, int]]:
        """Every known stat of ``gw`` at the world's time: (string value, timestamp ms)."""
        now = self.world.time()
        last = now - ((now - gw.phase) % gw.period)
        ts = int(last * 1000)
        gps_ts = int((last - 3 * YEAR) * 1000) if gw.stale_gps else ts
        wave = math.sin(last / 900 + gw.phase)
        mph = max(0.0, 45 * wave)
        idle = int((now - gw.phase) % (90 * 86400)) if mph == 0 else 0
        seed = sum(map(ord, gw.uid))
        uptime = max(0.0, now - self.started) + gw.phase
        out = {
            "GPS Location-latitude": (f"{gw.lat + 0.02 * wave:.6f}", gps_ts),
            "GPS Location-longitude": (f"{gw.lon + 0.02 * math.cos(last / 900):.6f}", gps_ts),
            "GPS Location-speedmph": (f"{mph:.1f}", gps_ts),
            "ReportIdleTime": (_prose(idle) if gw.prose_idle else str(idle), ts),
            "CellLink-RSSI": (str(-60 - seed % 40 + int(5 * wave)), ts),
            "CellLink-RSRP": (str(-85 - seed % 30), ts),
            "CellLink-RSRQ": (str(-5 - seed % 12), ts),
            "CellLink-SINR": (f"{18 - seed % 20 + 2 * wave:.1f}", ts),
            "CellLink-txBytes": (str(int(1_000_000 + uptime * 120)), ts),
            "CellLink-rxBytes": (str(int(5_000_000 + uptime * 900)), ts),
            "CellLink-IPAddress": (f"10.{seed % 250}.{len(gw.uid) * 7 % 250}.{seed % 200 + 2}", ts),
            "CellLink-ICCID": (f"8930{seed:06d}{int(gw.phase):08d}"[:20], ts - 86_400_000),
            "CellLink-CurrentNetworkOperator": (OPERATORS[seed % len(OPERATORS)], ts),
            "CellLink-NetworkServiceType": (NETWORK_TYPES[seed % len(NETWORK_TYPES)], ts),
            "ResetCount": (str(seed % 17), ts - 3_600_000),
            "SoftwareVersion": (f"4.{9 + seed % 4}.{seed % 5}", ts - 30 * 86_400_000),
            "CPU-Temperature": (f"{42 + seed % 15 + 3 * wave:.1f}", ts),
            "IMEI": (f"35{seed:07d}{int(gw.phase):06d}"[:15], ts - 86_400_000),
            "Platform": (gw.platform, ts - 86_400_000),
        }
        out.update(gw.overrides)
        return out

    # --- rate limit --------------------------------------------------------------------------

    def before_api(self, request: web.Request) -> web.Response | None:
        if not request.path.startswith("/api/v1/"):
            return None
        now = self.now()
        while self.window and self.window[0] <= now - 3600:
            self.window.popleft()
        if len(self.window) >= self.rate_limit:
            self.throttled += 1
            wait = max(1, math.ceil(self.window[0] + 3600 - now))
            return self.json({"error": "too_many_requests", "errorParameters": []}, 429,
                             {"X-Rate-Limit-Retry-After-Seconds": str(wait)})
        self.window.append(now)
        self.max_in_hour = max(self.max_in_hour, len(self.window))
        return None

    def answer_headers(self, request: web.Request, status: int) -> dict[str, str]:
        if status == 429 or not request.path.startswith("/api/v1/"):
            return {}
        return {"X-Rate-Limit-Remaining": str(max(0, self.rate_limit - len(self.window)))}

    # --- endpoints ---------------------------------------------------------------------------

    def _only_get(self, request: web.Request) -> None:
        if request.method != "GET":
            raise SimError(405, "method.not.allowed")

    async def groups_tree(self, request: web.Request) -> web.Response:
        self._only_get(request)
        if self.legacy:
            raise SimError(404, "not.found")

        def node(g: SimGroup) -> dict[str, Any]:
            return {"id": g.id, "subgroups": [{c.name: node(c)} for c in g.children]}

        return self.json({self.root.name: node(self.root)})

    async def systems(self, request: web.Request) -> web.Response:
        self._only_get(request)
        q = request.query
        wanted = {p.strip() for p in q.get("platforms", "").strip("()").split(",") if p.strip()}
        start = self.root
        if q.get("groupid") not in (None, "", "0"):
            start = self.groups.get(int(q["groupid"])) if q["groupid"].isdigit() else None
            if start is None:
                raise SimError(404, "group.unknown", [q["groupid"]])

        def items(g: SimGroup) -> list[Any]:
            gws = [self.gateways[u] for u in g.gateways]
            out: list[Any] = [{c.name: items(c)} for c in g.children]
            out += [{"uid": gw.uid, "name": gw.name} for gw in gws if not wanted or gw.platform in wanted]
            return out

        return self.json({start.name: items(start)})

    def _ids(self, request: web.Request) -> list[str]:
        q = request.query
        if "ids" in q and "idPrefix" in q:
            raise SimError(400, "lastdata.incompatible.parameters")
        if "idPrefix" in q:
            if not q["idPrefix"]:
                raise SimError(400, "lastdata.empty.parameters")
            return [i for i in KNOWN_IDS if i.startswith(q["idPrefix"])]
        ids = [i for i in q.get("ids", "").split(",") if i]
        if not ids:
            raise SimError(400, "lastdata.empty.parameters")
        return ids

    def _data(self, gw: SimGateway, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        values = self.values(gw)
        return {i: [{"value": values[i][0], "timestamp": values[i][1]}] for i in ids if i in values}

    async def group_data(self, request: web.Request) -> web.Response:
        self._only_get(request)
        if self.legacy:
            raise SimError(404, "not.found")
        gid = request.match_info["group"]
        group = self.groups.get(int(gid)) if gid.isdigit() else None
        if group is None:
            raise SimError(404, "group.unknown", [gid])
        ids = self._ids(request)
        if any(i not in KNOWN_IDS and not any(i in g.overrides for g in self.gateways.values()) for i in ids):
            raise SimError(400, "system.invalid.data.param")
        if group.size() > self.target_cap:
            raise SimError(400, "aggregation.too.many.targets")

        def items(g: SimGroup) -> list[Any]:
            out: list[Any] = [{"uid": u, "data": [{k: v} for k, v in self._data(self.gateways[u], ids).items()]}
                              for u in g.gateways]
            return out + [{c.name: items(c)} for c in g.children]

        return self.json({group.name: items(group)})

    async def system_data(self, request: web.Request) -> web.Response:
        self._only_get(request)
        gw = self.gateways.get(request.match_info["uid"])
        if gw is None:
            raise SimError(404, "system.unknown", [request.match_info["uid"]])
        return self.json(self._data(gw, self._ids(request)))

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/v1/systems/groups", self.groups_tree)
        app.router.add_route("*", "/api/v1/systems/groups/{group}/data", self.group_data)
        app.router.add_route("*", "/api/v1/systems", self.systems)
        app.router.add_route("*", "/api/v1/systems/{uid}/data", self.system_data)


def _prose(seconds: int) -> str:
    """``"57 days 0 hour"`` as ALEOS writes it."""
    days, rest = divmod(seconds, 86400)
    return f"{days} days {rest // 3600} hour"


def create_app(clients: dict[str, str] | None = None, users: dict[str, str] | None = None, devices: int = 20,
               seed: int = 1, tick: float | None = DEFAULT_TICK, **options: Any) -> web.Application:
    """The simulator as an aiohttp app; ``app["sim"]`` is the :class:`AmmSimulator`. The values move
    with the simulator's clock; ``tick`` 0 or None holds them still until ``/_sim/step``."""
    sim = AmmSimulator(clients=clients or {"demo": "demo-secret"}, users=users or {"demo": "demo-password"},
                       devices=devices, seed=seed, **options)
    return sim.make_app(sim.routes, tick)


def main() -> None:  # pragma: no cover - manual demo
    """``python -m fleetbridge_plugins.sierra.amm_sim [port] [devices]``."""
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8766
    devices = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    web.run_app(create_app(devices=devices, seed=random.randrange(1000)), host="127.0.0.1", port=port)


if __name__ == "__main__":  # pragma: no cover
    main()
