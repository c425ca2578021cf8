"""The AMM simulator behaves like the documented server."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from fleetbridge_plugins.sierra.amm_sim import KNOWN_IDS, create_app
from fleetbridge_plugins.sierra.clock import ManualClock

from .conftest import NOW, basic_header

CLIENTS = {"cid": "csecret"}
USERS = {"user": "pw"}
IDS = "GPS Location-latitude,CellLink-RSSI"


class Client:
    """A tiny client of a simulator: token handling and JSON requests."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url
        self.token: str | None = None

    async def login(self, **form: str) -> tuple[int, Any]:
        body = form or {"grant_type": "password", "username": "user", "password": "pw"}
        async with self.session.post(f"{self.url}/api/oauth/token", data=body,
                                     headers={"Authorization": basic_header("cid", "csecret")}) as resp:
            payload = await resp.json()
            if resp.status == 200:
                self.token = payload["access_token"]
            return resp.status, payload

    async def get(self, path: str, **params: str) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.get(self.url + path, params=params, headers=headers) as resp:
            body = await resp.read()
            try:
                payload = await resp.json(content_type=None)
            except ValueError:
                payload = body
            return resp.status, payload, resp.headers


@pytest.fixture
async def amm(serve, session) -> tuple[Any, Client, ManualClock]:
    clock = ManualClock(NOW)
    app = create_app(CLIENTS, USERS, devices=300, seed=5, clock=clock, rate_limit=1000)
    client = Client(session, await serve(app))
    await client.login()
    return app["sim"], client, clock


async def test_group_tree_and_nested_systems_list(amm) -> None:
    sim, client, _ = amm
    status, tree, headers = await client.get("/api/v1/systems/groups")
    assert status == 200 and int(headers["X-Rate-Limit-Remaining"]) == 999
    [(top, node)] = tree.items()
    assert top == "All Gateways" and isinstance(node["id"], int)
    depth = 0

    def walk(node: dict[str, Any], level: int) -> None:
        nonlocal depth
        depth = max(depth, level)
        for sub in node["subgroups"]:
            [(_, child)] = sub.items()
            walk(child, level + 1)

    walk(node, 1)
    assert depth >= 4  # All Gateways > Region > Depot > Workshop
    _, systems, _ = await client.get("/api/v1/systems")
    uids: list[str] = []

    def gateways(items: list[Any]) -> None:
        for item in items:
            if "uid" in item:
                uids.append(item["uid"])
            else:
                [(_, sub)] = item.items()
                gateways(sub)

    gateways(systems["All Gateways"])
    assert sorted(uids) == sorted(sim.gateways) and len(uids) == 300
    _, mg90, _ = await client.get("/api/v1/systems", platforms="(MG90,MP70)")
    _, mg90_bare, _ = await client.get("/api/v1/systems", platforms="MG90,MP70")
    assert mg90 == mg90_bare and mg90 != systems


async def test_group_data_strings_with_ms_timestamps_and_the_cap(amm) -> None:
    sim, client, _ = amm
    depot = next(g for g in sim.root.walk() if g.name.startswith("Depot"))
    status, data, _ = await client.get(f"/api/v1/systems/groups/{depot.id}/data", ids=IDS)
    assert status == 200
    [(name, items)] = data.items()
    assert name == depot.name
    first = items[0]
    assert first["uid"] in depot.gateways
    [rssi] = [d["CellLink-RSSI"][0] for d in first["data"] if "CellLink-RSSI" in d]
    assert isinstance(rssi["value"], str) and isinstance(rssi["timestamp"], int) and rssi["timestamp"] > 1e12
    status, data, _ = await client.get(f"/api/v1/systems/groups/{sim.root.id}/data", ids=IDS)
    assert (status, data["error"]) == (400, "aggregation.too.many.targets")


@pytest.mark.parametrize(("params", "error"), [
    ({"ids": "CellLink-RSSI,Bogus-Id"}, "system.invalid.data.param"),
    ({"ids": "CellLink-RSSI", "idPrefix": "Cell"}, "lastdata.incompatible.parameters"),
    ({"idPrefix": ""}, "lastdata.empty.parameters"),
    ({}, "lastdata.empty.parameters"),
])
async def test_group_data_errors(amm, params: dict[str, str], error: str) -> None:
    sim, client, _ = amm
    depot = next(g for g in sim.root.walk() if g.name.startswith("Depot"))
    status, data, _ = await client.get(f"/api/v1/systems/groups/{depot.id}/data", **params)
    assert (status, data["error"], data["errorParameters"]) == (400, error, [])


async def test_single_gateway_data_omits_unknown_ids(amm) -> None:
    sim, client, _ = amm
    uid = next(iter(sim.gateways))
    status, data, _ = await client.get(f"/api/v1/systems/{uid}/data", ids="CellLink-RSSI,Bogus-Id")
    assert status == 200 and list(data) == ["CellLink-RSSI"]
    _, data, _ = await client.get(f"/api/v1/systems/{uid}/data", idPrefix="GPS")
    assert set(data) == {i for i in KNOWN_IDS if i.startswith("GPS")}
    sim.set_value(uid, "ReportIdleTime", "57 days 0 hour", 1581500240000)
    _, data, _ = await client.get(f"/api/v1/systems/{uid}/data", ids="ReportIdleTime")
    assert data == {"ReportIdleTime": [{"value": "57 days 0 hour", "timestamp": 1581500240000}]}


async def test_owner_group_hourly_limit_and_headers(serve, session) -> None:
    clock = ManualClock(NOW)
    app = create_app(CLIENTS, USERS, devices=5, clock=clock, rate_limit=3)
    client = Client(session, await serve(app))
    await client.login()
    remaining = []
    for _ in range(3):
        status, _, headers = await client.get("/api/v1/systems")
        remaining.append(int(headers["X-Rate-Limit-Remaining"]))
        clock.advance(100)
    assert remaining == [2, 1, 0]
    status, body, headers = await client.get("/api/v1/systems")
    assert (status, body["error"]) == (429, "too_many_requests")
    assert headers["X-Rate-Limit-Retry-After-Seconds"] == "3300" and "Retry-After" not in headers
    clock.advance(3300)
    assert (await client.get("/api/v1/systems"))[0] == 200
    assert app["sim"].throttled == 1 and app["sim"].max_in_hour == 3


async def test_still_world_keeps_its_values_while_the_clock_runs(serve, session) -> None:
    clock = ManualClock(NOW)
    app = create_app(CLIENTS, USERS, devices=5, clock=clock, rate_limit=2, tick=0)
    client = Client(session, await serve(app))
    await client.login()
    path = f"/api/v1/systems/{next(iter(app['sim'].gateways))}/data"
    _, values, _ = await client.get(path, ids=IDS)
    clock.advance(3600)  # tokens and the hourly limit follow the clock; the values stand still
    assert [(await client.get(path, ids=IDS))[:2] for _ in range(2)] == [(200, values)] * 2
    assert (await client.get(path, ids=IDS))[0] == 429
    async with session.post(f"{client.url}/_sim/step", params={"dt": "3600"}) as resp:
        assert (await resp.json())["time"] == clock.time()
    status, moved, _ = await client.get(path, ids=IDS)
    assert status == 200 and moved != values


async def test_rotating_single_use_refresh_tokens_and_expiry_on_the_clock(serve, session) -> None:
    clock = ManualClock(NOW)
    app = create_app(CLIENTS, USERS, devices=2, clock=clock, access_lifetime=600)
    client = Client(session, await serve(app))
    _, first = await client.login()
    assert first["expires_in"] == 600
    status, second = await client.login(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    status, reused = await client.login(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert (status, reused["error"]) == (400, "invalid_grant")
    assert (await client.get("/api/v1/systems"))[0] == 200
    clock.advance(601)
    status, body, _ = await client.get("/api/v1/systems")
    assert (status, body["error"]) == (401, "unauthorized")
    # the token endpoint also takes its parameters on the query string
    async with session.post(f"{client.url}/api/oauth/token?grant_type=password&username=user&password=pw",
                            headers={"Authorization": basic_header("cid", "csecret")}) as resp:
        assert resp.status == 200
    async with session.post(f"{client.url}/api/oauth/token", data={"grant_type": "password"},
                            headers={"Authorization": basic_header("cid", "wrong")}) as resp:
        assert resp.status == 401


async def test_token_in_the_query_string_is_refused(amm) -> None:
    _, client, _ = amm
    token, client.token = client.token, None
    status, _, _ = await client.get("/api/v1/systems", access_token=token)
    assert status == 401


async def test_older_server_has_no_group_endpoints(serve, session) -> None:
    app = create_app(CLIENTS, USERS, devices=3, legacy=True)
    client = Client(session, await serve(app))
    await client.login()
    assert (await client.get("/api/v1/systems/groups"))[0] == 404
    assert (await client.get("/api/v1/systems/groups/1/data", ids=IDS))[0] == 404
    assert (await client.get("/api/v1/systems"))[0] == 200


async def test_switchable_faults_and_request_counts(amm, session) -> None:
    sim, client, _ = amm
    async with session.post(f"{client.url}/_sim/faults", json={"http_500": 1, "html_error": 1,
                                                               "malformed_json": 1}) as resp:
        assert resp.status == 200
    statuses = [(await client.get("/api/v1/systems"))[:2] for _ in range(4)]
    assert statuses[0][0] == 500
    assert statuses[1][0] == 502 and statuses[1][1].startswith(b"<html>")
    assert statuses[2][0] == 200 and isinstance(statuses[2][1], bytes)  # truncated JSON
    assert statuses[3][0] == 200
    sim.faults.update({"rate_limit": 1})
    assert (await client.get("/api/v1/systems"))[0] == 429
    async with session.post(f"{client.url}/_sim/faults", json={"bogus": 1}) as resp:
        assert resp.status == 400
    async with session.get(f"{client.url}/_sim/requests") as resp:
        counts = (await resp.json())["counts"]
    assert counts["GET /api/v1/systems"] == 5 and counts["POST /api/oauth/token"] == 1
    async with session.delete(f"{client.url}/api/v1/systems/groups",
                              headers={"Authorization": f"Bearer {client.token}"}) as resp:
        assert resp.status == 405
