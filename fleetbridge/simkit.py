"""Shared parts of the vendor simulators: switchable faults, a proxy's HTML error page, the
``/_sim`` admin routes and the background ticker that moves a world.

Each plugin's simulator subclasses :class:`FaultSwitches` with the faults its vendor can show
(``rate_limit`` where the API throttles, token tricks, ...) and serves them with
:func:`add_admin_routes`:

* ``GET /_sim/faults``: the switches; ``POST /_sim/faults`` (``?reset=1`` first resets them) sets
  some from a JSON object and answers all of them (400 ``{"error"}`` for an unknown or bad one);
* ``POST /_sim/step?dt=1``: moves the world ``dt`` seconds (400 when ``dt`` is not a number);
* ``GET /_sim/requests``: ``{"counts": {endpoint: n}, "total": n}`` plus the simulator's extras;
* with a :class:`DeviceTable`, ``GET /_sim/devices`` (the truth of all or the listed devices) and
  ``POST /_sim/devices/{id}`` (set public fields of one).

``tick`` means the same for every simulator: > 0 keeps the world level with the server clock (stepped
about every ``tick`` seconds of wall time by :func:`start_ticker`, or continuously where the world is a
function of the clock); 0 or None keeps it still until ``/_sim/step``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import warnings
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Protocol

from aiohttp import web

#: the simulators' default ``tick`` (s): their worlds move on their own
DEFAULT_TICK = 1.0

Json = dict[str, Any]

#: what an nginx in front of a vendor answers when the backend is down (``{status}`` filled in)
HTML_PAGE = ("<html>\r\n<head><title>{status} Bad Gateway</title></head>\r\n<body>\r\n<center><h1>{status} Bad "
             "Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


@dataclass
class FaultSwitches:
    """Faults every simulator offers. A counter field takes an int N (fire on the next N requests),
    a float p in (0, 1] (fire with probability p on each request) or True (always). ``slow`` delays
    every answer (s); ``html_status`` is the HTTP status of the HTML page (502, or 200 for a proxy
    that says "OK")."""

    http_500: int | float = 0
    html_error: int | float = 0
    malformed_json: int | float = 0
    slow: float = 0.0
    html_status: int = 502

    def fire(self, name: str, rng: random.Random) -> bool:
        """Whether fault ``name`` fires for this request (consuming one count)."""
        value = getattr(self, name)
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if value > 0:
                setattr(self, name, value - 1)
                return True
            return False
        return value > 0 and rng.random() < value

    def update(self, values: dict[str, Any]) -> None:
        """Set fields from a dict, rejecting unknown names and non-numeric values (all or nothing)."""
        names = {f.name for f in fields(self)}
        for key, value in values.items():
            if key not in names or not isinstance(value, int | float):
                raise ValueError(f"bad fault {key}={value!r}")
        for key, value in values.items():
            setattr(self, key, value)

    def reset(self) -> None:
        self.update({f.name: f.default for f in fields(self)})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def luhn_digit(body: str) -> int:
    """The Luhn check digit of a string of digits (IMEIs, ICCIDs)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10


def with_luhn(body: str) -> str:
    """``body`` followed by its Luhn check digit."""
    return body + str(luhn_digit(body))


# ----------------------------------------------------------------------------------------- the app


def sim_app(sim: object, middlewares: Collection[Any] = ()) -> web.Application:
    """A new aiohttp app serving ``sim``; ``app["sim"]`` is the simulator (the public contract)."""
    app = web.Application(middlewares=list(middlewares))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # aiohttp prefers AppKey; "sim" is the public contract
        app["sim"] = sim
    return app


def answer(payload: Any, status: int = 200) -> web.Response:
    """A compact JSON answer of a ``/_sim`` route."""
    return web.json_response(payload, status=status, dumps=partial(json.dumps, separators=(",", ":")))


def run_demo(create_app: Callable[..., web.Application], port: int, devices: int) -> None:  # pragma: no cover
    """Serve ``create_app(devices=...)`` on 127.0.0.1: ``python -m <simulator module> [port] [devices]``."""
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else port
    devices = int(sys.argv[2]) if len(sys.argv) > 2 else devices
    web.run_app(create_app(devices=devices), host="127.0.0.1", port=port)


# ------------------------------------------------------------------------------------ world and ticker


class World(Protocol):
    """A world that keeps its own time ``t`` and moves through ``step``."""

    t: float

    def step(self, dt: float) -> None: ...


def tick_option(tick: float | None) -> dict[str, float]:
    """``create_app`` keywords for ``Platform.create_simulator``'s ``tick`` (None: the simulator's default)."""
    return {} if tick is None else {"tick": tick}


def level_with(world: World, clock: Callable[[], float]) -> Callable[[], None]:
    """A ticker step that moves ``world`` up to ``clock()`` (never back)."""

    def catch_up() -> None:
        lag = clock() - world.t
        if lag > 0:
            world.step(lag)

    return catch_up


async def _every(tick: float, step: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(tick)
        step()


def start_ticker(app: web.Application, step: Callable[[], None], tick: float | None) -> None:
    """Call ``step`` about every ``tick`` seconds while ``app`` runs; 0 or None never (a still world)."""
    if not tick:
        return

    async def ticking(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_every(tick, step))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(ticking)


# ---------------------------------------------------------------------------------------- /_sim/*


class Steppable(Protocol):
    """What the shared admin routes need of a simulator."""

    @property
    def request_counts(self) -> Mapping[str, int]: ...

    def step(self, dt: float) -> None: ...


@dataclass(frozen=True)
class DeviceTable:
    """A simulator's devices as ``/_sim/devices`` shows and edits them.

    ``ids`` is the query parameter listing the wanted ids (comma-separated; all when absent),
    ``filters`` query parameters that keep the devices whose attribute of that name equals them,
    ``header`` the fields before ``"devices"`` in the listing, ``unknown`` the 404 message.
    """

    devices: Mapping[str, Any]
    truth: Callable[[Any], Json]
    fields: Collection[str]
    id_field: str
    ids: str
    unknown: str
    header: Callable[[], Json] = dict
    filters: tuple[str, ...] = ()

    async def listing(self, request: web.Request) -> web.Response:
        q = request.query
        wanted = [i for i in q.get(self.ids, "").split(",") if i] or list(self.devices)
        chosen = [self.devices[i] for i in wanted if i in self.devices]
        for name in self.filters:
            if q.get(name):
                chosen = [d for d in chosen if getattr(d, name) == q[name]]
        return answer({**self.header(), "devices": [self.truth(d) for d in chosen]})

    async def edit(self, request: web.Request) -> web.Response:
        device = self.devices.get(request.match_info["id"])
        if device is None:
            return answer({"error": self.unknown}, 404)
        body = await request.json()
        bad = [k for k in body if k not in self.fields or k == self.id_field]
        if bad:
            return answer({"error": f"unknown fields {bad}"}, 400)
        for key, value in body.items():
            setattr(device, key, value)
        return answer(self.truth(device))


def add_admin_routes(app: web.Application, sim: Steppable, faults: FaultSwitches, *,
                     step_answer: Callable[[], Json], request_extras: Callable[[], Json] = dict,
                     devices: DeviceTable | None = None) -> None:
    """Add the shared ``/_sim`` routes (see the module docstring) of ``sim`` to ``app``.

    ``step_answer`` is the answer of ``/_sim/step`` (where the world stands after the step);
    ``request_extras`` adds fields to ``/_sim/requests``.
    """

    async def get_faults(_: web.Request) -> web.Response:
        return answer(faults.as_dict())

    async def set_faults(request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if request.query.get("reset"):
                faults.reset()
            faults.update(body)
        except ValueError as err:
            return answer({"error": str(err)}, 400)
        return answer(faults.as_dict())

    async def step(request: web.Request) -> web.Response:
        try:
            dt = float(request.query.get("dt", "1"))
        except ValueError:
            return answer({"error": "dt must be a number"}, 400)
        sim.step(dt)
        return answer(step_answer())

    async def get_requests(_: web.Request) -> web.Response:
        counts = sim.request_counts
        return answer({"counts": dict(counts), "total": sum(counts.values()), **request_extras()})

    app.router.add_get("/_sim/faults", get_faults)
    app.router.add_post("/_sim/faults", set_faults)
    app.router.add_post("/_sim/step", step)
    app.router.add_get("/_sim/requests", get_requests)
    if devices is not None:
        app.router.add_get("/_sim/devices", devices.listing)
        app.router.add_post("/_sim/devices/{id}", devices.edit)
