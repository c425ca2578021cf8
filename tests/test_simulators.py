"""The ``/_sim`` admin routes and the ``tick`` option that every vendor simulator shares
(:mod:`fleetbridge.simkit`), checked on all five through ``Platform.create_simulator``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fleetbridge.platform import Platform
from fleetbridge_plugins.lattigo.platform import LattigoPlatform
from fleetbridge_plugins.opengps.platform import OpenGpsPlatform
from fleetbridge_plugins.sierra.airvantage import AirVantagePlatform
from fleetbridge_plugins.sierra.amm import AmmPlatform
from fleetbridge_plugins.tangoe.platform import TangoePlatform

#: credentials every create_simulator finds its keys in
CONFIG = {"account": "demo", "password": "pw", "key_name": "demo", "api_key": "key", "username": "demo",
          "client_id": "client", "client_secret": "secret", "tenant": "ACME"}
BASE_FAULTS = {"http_500": 0, "html_error": 0, "malformed_json": 0, "slow": 0.0, "html_status": 502}


@dataclass(frozen=True)
class Case:
    """One simulator: its platform, an API path it counts, and how to read its world's time."""

    platform: type[Platform]
    api_path: str
    step_key: str  # the /_sim/step answer's field
    request_extras: dict[str, Any]

    def world_time(self, sim: Any) -> float:
        return sim.world.time() if hasattr(sim, "world") else sim.t


CASES = {
    "opengps": Case(OpenGpsPlatform, "/api/track", "world_time", {}),
    "lattigo": Case(LattigoPlatform, "/v2/rate_plans", "world_time", {}),
    "tangoe": Case(TangoePlatform, "/mobproc/v1/me", "world_time", {"grants": {}}),
    "amm": Case(AmmPlatform, "/api/v1/systems", "time", {"grants": []}),
    "airvantage": Case(AirVantagePlatform, "/api/v1/gateways", "time", {"grants": []}),
}

Serve = Callable[..., Awaitable[tuple[TestClient, Any]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Factory: serve a simulator app, answering (client, ``app["sim"]``)."""
    clients: list[TestClient] = []

    async def go(app: web.Application | None) -> tuple[TestClient, Any]:
        assert app is not None
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client, app["sim"]

    yield go
    for client in clients:
        await client.close()


async def call(client: TestClient, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None) if "json" in resp.content_type else None


@pytest.fixture(params=list(CASES))
async def still(request: pytest.FixtureRequest, serve: Serve) -> tuple[Case, TestClient, Any]:
    """Each simulator, created by its platform with a still world (``tick=0``)."""
    case = CASES[request.param]
    client, sim = await serve(case.platform.create_simulator(CONFIG, 5, 1, tick=0))
    return case, client, sim


async def test_fault_switches_are_read_set_reset_and_refused_alike(still) -> None:
    _, client, _ = still
    status, body = await call(client, "GET", "/_sim/faults")
    assert status == 200 and body.items() >= BASE_FAULTS.items()
    status, body = await call(client, "POST", "/_sim/faults", json={"http_500": 2, "slow": 0})
    assert status == 200 and body["http_500"] == 2
    assert await call(client, "POST", "/_sim/faults") == (200, body)  # no body: nothing changes
    status, bad = await call(client, "POST", "/_sim/faults", json={"http_500": 0, "bogus": 1})
    assert status == 400 and "bogus" in bad["error"]
    assert (await call(client, "GET", "/_sim/faults"))[1]["http_500"] == 2  # all or nothing
    assert await call(client, "POST", "/_sim/faults", json=[1]) == (400, {"error": "the body must be a JSON object"})
    status, body = await call(client, "POST", "/_sim/faults?reset=1", json={"html_status": 200})
    assert status == 200 and body.items() >= (BASE_FAULTS | {"html_status": 200}).items()


async def test_faults_hit_the_api_never_the_admin_routes(still) -> None:
    case, client, _ = still
    await call(client, "POST", "/_sim/faults", json={"http_500": True})
    assert (await call(client, "GET", case.api_path))[0] == 500
    assert (await call(client, "GET", "/_sim/faults"))[0] == 200
    assert (await call(client, "GET", "/_sim/requests"))[0] == 200


async def test_request_counts_leave_the_admin_routes_out(still) -> None:
    case, client, _ = still
    assert await call(client, "GET", "/_sim/requests") == (200, {"counts": {}, "total": 0, **case.request_extras})
    await call(client, "GET", case.api_path)
    status, body = await call(client, "GET", "/_sim/requests")
    assert status == 200 and body["total"] == 1 and sum(body["counts"].values()) == 1


async def test_step_moves_a_still_world_and_refuses_a_bad_dt(still) -> None:
    case, client, sim = still
    before = case.world_time(sim)
    await asyncio.sleep(0.3)
    assert case.world_time(sim) == before  # tick=0: nothing moves on its own
    assert await call(client, "POST", "/_sim/step?dt=soon") == (400, {"error": "dt must be a number"})
    status, body = await call(client, "POST", "/_sim/step", params={"dt": "30"})
    assert status == 200 and case.world_time(sim) == before + 30
    assert body[case.step_key] >= before + 30
    await call(client, "POST", "/_sim/step")  # dt defaults to 1 s
    assert case.world_time(sim) == before + 31


@pytest.mark.parametrize("name", list(CASES))
async def test_default_tick_moves_the_world(name: str, serve: Serve) -> None:
    case = CASES[name]
    _, sim = await serve(case.platform.create_simulator(CONFIG, 5, 1))
    before = case.world_time(sim)
    await asyncio.sleep(1.3)  # the default tick is 1 s
    assert case.world_time(sim) > before


@pytest.mark.parametrize("name, ids, id_field, unknown", [
    ("opengps", "imeis", "imei", "unknown imei"),
    ("lattigo", "names", "device_name", "unknown device"),
])
async def test_device_truth_is_read_and_set_alike(name: str, ids: str, id_field: str, unknown: str,
                                                  serve: Serve) -> None:
    client, sim = await serve(CASES[name].platform.create_simulator(CONFIG, 5, 1, tick=0))
    first, second = list(sim.devices)[:2]
    status, body = await call(client, "GET", "/_sim/devices", params={ids: f"{first},nonesuch"})
    assert status == 200 and [d[id_field] for d in body["devices"]] == [first] and body["world_time"] == sim.t
    assert len((await call(client, "GET", "/_sim/devices"))[1]["devices"]) == len(sim.devices)
    assert await call(client, "POST", f"/_sim/devices/{second}", json={"latitude": 12.5}) == \
        (200, sim.device_truth(sim.devices[second]))
    assert sim.devices[second].latitude == 12.5
    assert await call(client, "POST", "/_sim/devices/nonesuch", json={}) == (404, {"error": unknown})
    status, body = await call(client, "POST", f"/_sim/devices/{second}", json={id_field: "x", "colour": 1})
    assert status == 400 and body == {"error": f"unknown fields {[id_field, 'colour']}"}
