"""The vendor side of the benchmark, in its own process: every platform's simulator on a loopback
port, a request log with timestamps, and a control API for ``run.py``.

Started by ``run.py`` (not by hand)::

    python benchmarks/simhost.py '<json spec>'

The spec is ``{"platforms": [{"name", "devices", "seed", "config"[, "key", "index", "of"]}]}``.
``name`` is the platform; ``key`` (default: ``name``) labels one simulated vendor account, so a
platform can run several (the tracker's storm is spread over ``of`` accounts: keys ``opengps``,
``opengps_2``, ...; ``index`` 0..of-1, each with its own app, port, seed and credentials, its IMEIs
disjoint from the others' by construction). The process prints one JSON line (``{"control": port,
"ports": {key: port}, "errors": {...}}``) and serves until its stdin closes or it gets SIGTERM/SIGINT,
so it never outlives ``run.py``. The control API takes a key or a platform name (all its accounts)
wherever it takes a platform, and answers per key.

Every simulator is created with ``tick=0``: its world stands still unless this process steps it
(only the trackers' are stepped, below), so the steady state is quiet for every platform. In each
tracker account, a middleware sees every ``/api/track`` request and detects the start of a bridge
refresh cycle of that account (a batch naming an IMEI already served since the last cycle start). At
that moment, depending on the mode set through ``POST /bench/mode``:

* ``quiet``: nothing changes (steady state);
* ``storm``: the whole world steps forward by the wall time since the last step (>= 1 s), so every
  online device reports a new ``hearttime`` (and most a new position): every device changes every cycle;
* ``latency``: ``k`` random online devices get a new ``speed``; the time of the change and the time
  the vendor answered the batch carrying it are recorded.

Other platforms run their ``Platform.create_simulator`` app (with ``tick=0``); their requests are
counted by method and path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from typing import Any

from aiohttp import web

MAX_LOG = 200_000  # bounded request logs
ID_SEGMENT = re.compile(r"/(?=[^/]*\d)[^/]{8,}")  # long segments with digits: ids (ICCIDs, uids, UUIDs)
CAP_ATTRS = ("max_per_page", "max_page", "max_limit")  # simulators' page caps: what the vendor allows


def group_floor(group: Any, cap: int) -> int:
    """The fewest AMM requests that read every gateway of ``group``'s tree: a group request returns
    the whole subtree (at most ``cap`` gateways), the only other read is one gateway. A subtree that
    fits costs one; otherwise its children's floors plus one per gateway directly in it."""
    if sum(len(g.gateways) for g in group.walk()) <= cap:
        return 1 if any(g.gateways for g in group.walk()) else 0
    return len(group.gateways) + sum(group_floor(child, cap) for child in group.children)
VOLATILE = re.compile(r"token|time|signature|^ts$|^_|since|until|begin|end", re.IGNORECASE)  # not part of a request's identity


class Platform:
    """What the bench keeps per simulated platform."""

    def __init__(self, name: str, app: web.Application, refresh: str | None = None, key: str | None = None) -> None:
        self.name = name  # the platform
        self.key = key or name  # this simulated vendor account
        self.app = app
        self.counts: Counter[str] = Counter()  # "METHOD /path" -> requests
        self.first_at: dict[str, float] = {}
        self.last_at: dict[str, float] = {}
        # refresh cycles, generically: a refresh request (``refresh`` matches "METHOD /path") that
        # repeats one already made since the cycle began (same path and non-volatile query) starts a
        # new cycle; per_cycle holds (start, requests) of every finished cycle
        self.refresh = re.compile(refresh) if refresh else None
        self.seen: set[str] = set()
        self.cycles = 0
        self.cycle_started = 0.0
        self.cycle_count = 0
        self.per_cycle: list[tuple[float, int]] = []

    def note(self, method: str, path: str, now: float, query: Any = None) -> None:
        raw = f"{method} {path}"
        key = f"{method} {ID_SEGMENT.sub('/{id}', path)}"  # one counter per endpoint, not per device
        self.counts[key] += 1
        self.first_at.setdefault(key, now)
        self.last_at[key] = now
        if self.refresh is not None and self.refresh.search(key):
            ident = raw + "?" + "&".join(f"{k}={v}" for k, v in sorted((query or {}).items()) if not VOLATILE.search(k))
            if ident in self.seen:
                self.per_cycle.append((self.cycle_started, self.cycle_count))
                del self.per_cycle[:-10_000]
                self.cycles += 1
                self.seen.clear()
                self.cycle_count = 0
                self.cycle_started = now
            elif not self.cycle_started:
                self.cycle_started = now
            self.seen.add(ident)
            self.cycle_count += 1

    def stats(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "first_at": self.first_at, "last_at": self.last_at,
                "cycles": self.cycles, "per_cycle": self.per_cycle, "cycle_started": self.cycle_started,
                "platform": self.name}

    def clear(self) -> None:
        self.per_cycle.clear()

    def devices(self) -> list[dict[str, Any]]:
        return []

    def set_mode(self, mode: str, k: int) -> None:
        pass


class Tracker(Platform):
    """``opengps``: cycle detection, storm, latency probes, command arrivals."""

    def __init__(self, name: str, app: web.Application, key: str | None = None, index: int = 0) -> None:
        super().__init__(name, app, key=key)
        self.sim = app["sim"]
        self.mode = "quiet"
        self.k = 50
        self.served: set[str] = set()
        self.cycles = 0
        self.cycle_track = 0  # track requests in the current cycle
        self.per_cycle: list[tuple[float, int]] = []  # (cycle start, track requests) of finished cycles
        self.cycle_started = 0.0
        self.last_step = time.time()
        self.changed: dict[str, tuple[int, float]] = {}  # imei -> (cycle, change time), this cycle
        self.probes: list[tuple[str, int, float, float]] = []  # imei, cycle, changed at, served at
        self.commands: list[tuple[float, str, str]] = []  # arrival, imei, command
        self.steps: list[tuple[float, float]] = []  # (wall time, seconds the step took)
        self.rng = random.Random(7 + index)
        self.online = [d.imei for d in self.sim.devices.values() if d.datastatus == 2]

    def devices(self) -> list[dict[str, Any]]:
        return [{"id": d.imei, "online": d.datastatus == 2, "answers": not d.never_answers,
                 "model": d.devicetype} for d in self.sim.devices.values()]

    def clear(self) -> None:
        self.per_cycle.clear()
        self.probes.clear()
        self.commands.clear()
        self.steps.clear()

    def set_mode(self, mode: str, k: int) -> None:
        if mode == "storm" and self.mode != "storm":
            # every device reports: the storm is the whole fleet changing every cycle
            for d in self.sim.devices.values():
                if d.datastatus != 2:
                    d.datastatus = 2
            self.online = list(self.sim.devices)
            self.last_step = time.time()
        self.mode, self.k = mode, k

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update({"cycles": self.cycles, "per_cycle": self.per_cycle, "probes": self.probes,
                    "commands": self.commands, "steps": self.steps, "mode": self.mode,
                    "world_time": self.sim.t})
        return out

    def before_track(self, imeis: list[str], now: float) -> None:
        if self.served.intersection(imeis):
            if self.cycle_started:
                self.per_cycle.append((self.cycle_started, self.cycle_track))
                del self.per_cycle[:-10_000]
            self.cycles += 1
            self.cycle_track = 0
            self.cycle_started = now
            self.served.clear()
            self.changed.clear()
            if self.mode == "storm":
                dt = max(1.0, now - self.last_step)
                self.last_step = now
                t0 = time.perf_counter()
                self.sim.step(dt)
                self.steps.append((now, time.perf_counter() - t0))
                del self.steps[:-10_000]
            elif self.mode == "latency":
                devices = self.sim.devices
                for imei in self.rng.sample(self.online, min(self.k, len(self.online))):
                    d = devices[imei]
                    d.speed = (d.speed + 1 + self.rng.randrange(50)) % 150
                    self.changed[imei] = (self.cycles, time.time())
        elif not self.cycle_started and not self.served:
            self.cycle_started = now
        self.cycle_track += 1
        self.served.update(imeis)

    def after_track(self, imeis: list[str], now: float) -> None:
        if self.changed:
            for imei in imeis:
                hit = self.changed.pop(imei, None)
                if hit is not None:
                    self.probes.append((imei, hit[0], hit[1], now))
            del self.probes[:-MAX_LOG]


def make_middleware(platform: Platform):
    @web.middleware
    async def middleware(request: web.Request, handler):
        now = time.time()
        path = request.path
        if isinstance(platform, Tracker):
            if path == "/api/track":
                platform.note(request.method, path, now)
                imeis = [i for i in request.query.get("imeis", "").split(",") if i]
                platform.before_track(imeis, now)
                response = await handler(request)
                platform.after_track(imeis, time.time())
                return response
            if path == "/api/command/send":
                params = dict(request.query)
                if request.method == "POST":
                    params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
                platform.commands.append((now, params.get("imei", ""), params.get("command", "")))
                del platform.commands[:-MAX_LOG]
        if not path.startswith("/_sim"):
            platform.note(request.method, path, now, request.query)
        return await handler(request)

    return middleware


@contextlib.contextmanager
def disjoint_imeis(sim_cls: Any, index: int, of: int):
    """While a tracker simulator is created: only IMEIs whose 6-digit serial is ``index`` modulo ``of``,
    so that the fleets of ``of`` simulated accounts never share an IMEI (whatever their seeds).
    One account (``of`` 1): the simulator's own draws, unchanged."""
    original = getattr(sim_cls, "_new_imei", None)
    if of <= 1 or original is None:  # no hook: main() still checks that the fleets are disjoint
        yield
        return

    def new_imei(self: Any, taken: set[str]) -> str:
        while True:
            imei = original(self, taken)
            if int(imei[8:14]) % of == index:
                return imei

    sim_cls._new_imei = new_imei
    try:
        yield
    finally:
        sim_cls._new_imei = original


def create(entry: dict[str, Any]) -> web.Application:
    name, devices, seed, config = entry["name"], int(entry["devices"]), int(entry.get("seed", 1)), entry["config"]
    if name == "opengps":
        from fleetbridge_plugins.opengps import simulator

        # tick=0: the world moves only when this process steps it; > 500 devices need sub-accounts
        # (the vendor lists at most 500 devices per account); commands answer in 0.3-0.8 s
        with disjoint_imeis(simulator.Simulator, int(entry.get("index", 0)), int(entry.get("of", 1))):
            return simulator.create_app(accounts={config["account"]: config["password"]}, devices=devices,
                                        seed=seed, tick=0, subaccounts=devices > 500, command_delay=(0.3, 0.8),
                                        random_alarm_interval=0)
    from fleetbridge.plugins import load_plugins

    cls = load_plugins().platforms[name]
    app = cls.create_simulator(config, devices, seed, tick=0)  # a still world: a quiet steady state
    if app is None:
        raise RuntimeError(f"platform {name} has no simulator")
    return app


async def main(spec: dict[str, Any]) -> None:
    platforms: dict[str, Platform] = {}
    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}
    errors: dict[str, str] = {}
    caps: dict[str, dict[str, Any]] = {}
    imei_owner: dict[str, str] = {}  # every tracker IMEI -> its simulated account: must be disjoint
    for entry in spec["platforms"]:
        name = entry["name"]
        key = entry.get("key") or name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                app = create(entry)
            if name == "opengps":
                plat: Platform = Tracker(name, app, key, int(entry.get("index", 0)))
                for imei in app["sim"].devices:
                    if imei_owner.setdefault(imei, key) != key:
                        raise RuntimeError(f"IMEI {imei} in both {imei_owner[imei]} and {key}")
            else:
                plat = Platform(name, app, entry.get("refresh"), key)
            app.middlewares.append(make_middleware(plat))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            ports[key] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            platforms[key] = plat
            sim = app.get("sim")
            caps[key] = {a: getattr(sim, a) for a in CAP_ATTRS if sim is not None and hasattr(sim, a)}
            if sim is not None and hasattr(sim, "root") and hasattr(sim, "target_cap"):
                caps[key]["api_floor"] = group_floor(sim.root, sim.target_cap)
        except Exception as err:  # noqa: BLE001 - a plugin in progress: report it, run the others
            errors[key] = f"{type(err).__name__}: {err}"
            traceback.print_exc(file=sys.stderr)

    def select(names: list[str] | None) -> list[str]:
        """Keys named, or of the platforms named (all their accounts); all when none is named."""
        if not names:
            return list(platforms)
        return [k for k, p in platforms.items() if k in names or p.name in names]

    async def get_devices(request: web.Request) -> web.Response:
        # every device once, labelled with its simulated account ("sim": the key)
        return web.json_response([{**d, "sim": k} for k in select([request.query["platform"]])
                                  for d in platforms[k].devices()])

    async def post_mode(request: web.Request) -> web.Response:
        body = await request.json()
        for key in select(body.get("platforms")):
            platforms[key].set_mode(body["mode"], int(body.get("k", 50)))
        return web.json_response({"ok": True})

    async def get_stats(request: web.Request) -> web.Response:
        names = request.query.get("platforms")
        return web.json_response({k: platforms[k].stats() for k in select(names.split(",") if names else None)})

    async def post_clear(_: web.Request) -> web.Response:
        for plat in platforms.values():
            plat.clear()
        return web.json_response({"ok": True})

    async def get_self(_: web.Request) -> web.Response:
        t = os.times()
        return web.json_response({"cpu": t.user + t.system, "pid": os.getpid()})

    control = web.Application()
    control.router.add_get("/bench/devices", get_devices)
    control.router.add_post("/bench/mode", post_mode)
    control.router.add_get("/bench/stats", get_stats)
    control.router.add_post("/bench/clear", post_clear)
    control.router.add_get("/bench/self", get_self)
    crunner = web.AppRunner(control, access_log=None)
    await crunner.setup()
    csite = web.TCPSite(crunner, "127.0.0.1", 0)
    await csite.start()
    runners.append(crunner)
    cport = csite._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:  # the parent went away: stop
        try:
            sys.stdin.read()
        finally:
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(json.dumps({"control": cport, "ports": ports, "errors": errors, "caps": caps}), flush=True)
    await stop.wait()
    for runner in reversed(runners):
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
