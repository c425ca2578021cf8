"""AMM endpoints and the platform's handling of their answers, against a scripted server."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from fleetbridge_plugins.sierra.amm import UNKNOWN_IDS_KEY, AmmPlatform
from fleetbridge_plugins.sierra.amm_api import (
    parse_group_data,
    parse_group_tree,
    parse_systems,
)
from fleetbridge_plugins.sierra.amm_data import MPH_TO_KMH
from fleetbridge_plugins.sierra.amm_plan import Batch
from fleetbridge_plugins.sierra.common import transport_warnings

from fleetbridge.errors import RateLimited

from .conftest import FakeContext, Reply, Vendor, amm_config, load_fixture

GROUPS = "/api/v1/systems/groups"
SYSTEMS = "/api/v1/systems"
ALEOS = "/api/v1/systems/groups/13/data"
ALL_UIDS = {"ND6123999011020", "ND90410999011035", "CA13999002410", "WM80520999021016", "N655119991021018",
            "N660940999011023", "ND90410999011039"}


async def make_platform(session: aiohttp.ClientSession, vendor: Vendor, **config: Any) -> tuple[AmmPlatform, FakeContext]:
    vendor.on(GROUPS, load_fixture("amm_groups.json"))
    vendor.on(SYSTEMS, load_fixture("amm_systems.json"))
    ctx = FakeContext(session, amm_config(**config))
    platform = AmmPlatform(ctx)
    await platform.async_setup()
    return platform, ctx


def ids_of(call: Any) -> list[str]:
    return call.query["ids"].split(",")


# --- shapes --------------------------------------------------------------------------------

def test_parsers_walk_nested_answers() -> None:
    [root] = parse_group_tree(load_fixture("amm_groups.json"))
    assert (root.id, root.name) == ("1", "All gateways")
    assert [(g.id, g.path) for g in root.walk()][1:] == [
        ("12", ("All gateways", "My MG90 devices")), ("13", ("All gateways", "My ALEOS devices")),
        ("131", ("All gateways", "My ALEOS devices", "Spare"))]
    gateways = {g.uid: g for g in parse_systems(load_fixture("amm_systems.json"))}
    assert set(gateways) == ALL_UIDS
    assert gateways["CA13999002410"].path == ("All gateways", "My ALEOS devices")
    assert gateways["ND90410999011039"].path == ("All gateways",)
    data = parse_group_data(load_fixture("amm_group_data.json"))
    assert set(data) == {"CA13999002410", "WM80520999021016", "N655119991021018"}


async def test_discovery_requests_and_devices(session, vendor: Vendor, clock) -> None:
    platform, _ = await make_platform(session, vendor)
    devices = {d.id: d for d in await platform.async_discover()}
    assert set(devices) == ALL_UIDS
    for path in (GROUPS, SYSTEMS):
        [call] = vendor.calls_to(path)
        assert call.query == {} and call.headers["Authorization"].startswith("Bearer ")
    gx = devices["CA13999002410"]
    assert (gx.name, gx.suggested_area, gx.manufacturer) == ("my GX440", "My ALEOS devices", "Sierra Wireless")
    assert gx.attributes == {"group": "My ALEOS devices", "groups": ["All gateways", "My ALEOS devices"]}
    assert devices["ND90410999011039"].suggested_area is None  # sits in the top group
    assert {"latitude", "speed", "signal", "rsrp", "idle_time", "cpu_temperature", "gps_time"} <= gx.keys
    assert gx.services == ()
    # 7 gateways fit one request on the top group
    assert platform.scheduler.batches == [Batch("1", "All gateways", tuple(platform.scheduler.batches[0].uids))]
    assert set(platform.scheduler.batches[0].uids) == ALL_UIDS


async def test_group_and_single_gateway_data_requests(session, vendor: Vendor, clock) -> None:
    platform, _ = await make_platform(session, vendor)
    vendor.on(ALEOS, load_fixture("amm_group_data.json"))
    vendor.on(f"{SYSTEMS}/CA13999002410/data", load_fixture("amm_system_data.json"))
    ids = ["GPS Location-latitude", "CellLink-RSSI"]
    assert set(await platform.api.group_data("13", ids)) == {"CA13999002410", "WM80520999021016", "N655119991021018"}
    assert ids_of(vendor.calls_to(ALEOS)[0]) == ids
    data = await platform.api.system_data("CA13999002410", ids)
    assert data["ReportIdleTime"] == [{"value": "2796808", "timestamp": 1581500240000}]
    assert ids_of(vendor.calls_to(f"{SYSTEMS}/CA13999002410/data")[0]) == ids


async def test_states_conversions_timestamps_and_staleness(session, vendor: Vendor, clock) -> None:
    platform, _ = await make_platform(session, vendor)
    await platform.async_discover()
    vendor.on(ALEOS, load_fixture("amm_group_data.json"))
    states = await platform._fetch(Batch("13", "aleos", ()))
    gx = states["CA13999002410"]
    assert gx["latitude"] == 49.273376 and gx["longitude"] == -123.103834
    assert gx["speed"] == pytest.approx(31 * MPH_TO_KMH)
    assert gx["idle_time"] == 57 * 86400
    assert gx["signal"] == -71 and gx["network_type"] == "LTE"
    assert gx["gps_time"] == "2027-01-15T07:59:00Z" and gx["last_seen"] == "2027-01-15T07:59:00Z"
    assert gx["attributes"]["software_version"] == "4.9.3"
    lx = states["WM80520999021016"]  # its fix is over a year old: not shown as fresh
    assert "latitude" not in lx and "gps_time" not in lx and lx["signal"] == -90
    await platform.async_discover()
    assert next(d for d in await platform.async_discover() if d.id == "CA13999002410").sw_version == "4.9.3"


async def test_staleness_zero_keeps_old_values(session, vendor: Vendor, clock) -> None:
    platform, _ = await make_platform(session, vendor, staleness=0)
    await platform.async_discover()
    vendor.on(ALEOS, load_fixture("amm_group_data.json"))
    lx = (await platform._fetch(Batch("13", "aleos", ())))["WM80520999021016"]
    assert lx["latitude"] == 49.1 and lx["gps_time"] == "2023-11-14T22:13:20Z"


async def test_older_server_without_group_endpoints(session, vendor: Vendor, clock) -> None:
    vendor.on(GROUPS, Reply("<html>404 Not Found</html>", 404, content_type="text/html"))
    ctx = FakeContext(session, amm_config(staleness=0))
    platform = AmmPlatform(ctx)
    vendor.on(SYSTEMS, load_fixture("amm_systems.json"))
    await platform.async_setup()
    assert len(await platform.async_discover()) == 7
    assert all(b.group_id is None for b in platform.scheduler.batches) and len(platform.scheduler.batches) == 7
    assert "bulk_endpoint" in ctx.warnings
    vendor.on(f"{SYSTEMS}/CA13999002410/data", load_fixture("amm_system_data.json"))
    state = (await platform._fetch(Batch(None, "CA13999002410", ("CA13999002410",))))["CA13999002410"]
    assert state["idle_time"] == 2796808
    await platform.async_discover()
    assert len(vendor.calls_to(GROUPS)) == 1  # not asked again


def invalid_id(name_it: bool):
    def reply(call: Any) -> Any:
        if "Bogus-Id" in ids_of(call):
            return Reply({"error": "system.invalid.data.param", "errorParameters": ["Bogus-Id"] if name_it else []},
                         400)
        return load_fixture("amm_group_data.json")
    return reply


@pytest.mark.parametrize("named", [True, False])
async def test_unknown_data_id_is_found_dropped_and_the_rest_keeps_working(session, vendor: Vendor, clock,
                                                                           named: bool) -> None:
    platform, ctx = await make_platform(session, vendor, data_ids={"Bogus-Id": "attributes.bogus"})
    await platform.async_discover()
    vendor.on(ALEOS, invalid_id(named))
    states = await platform._fetch(Batch("13", "aleos", ()))
    assert states["CA13999002410"]["signal"] == -71
    calls = vendor.calls_to(ALEOS)
    assert "Bogus-Id" not in ids_of(calls[-1]) and len(ids_of(calls[-1])) == 17
    assert len(calls) == (2 if named else 2 + 5)  # bisection over 18 ids: 5 probes
    assert "'Bogus-Id'" in ctx.warnings["unknown_data_ids"]
    assert list(ctx.kv[UNKNOWN_IDS_KEY]) == ["Bogus-Id"]
    await platform._fetch(Batch("13", "aleos", ()))
    assert len(vendor.calls_to(ALEOS)) == len(calls) + 1  # no new bisection
    restarted = AmmPlatform(FakeContext(session, ctx.config, kv=ctx.kv))
    await restarted.async_setup()
    assert "Bogus-Id" not in restarted._active_ids()  # remembered across a restart


async def test_429_holds_requests_for_the_header_time(session, vendor: Vendor, clock) -> None:
    platform, _ = await make_platform(session, vendor)
    devices = await platform.async_discover()
    seen: list[float] = []

    def data(call: Any) -> Any:
        seen.append(clock.time())
        if len(seen) == 1:
            return Reply({"error": "too_many_requests"}, 429, {"X-Rate-Limit-Retry-After-Seconds": "600"})
        return load_fixture("amm_group_data.json")

    vendor.on("/api/v1/systems/groups/1/data", data)
    start = clock.time()
    with pytest.raises(RateLimited) as err:
        await platform.async_poll(devices)
    assert err.value.retry_after == 600
    await clock.run_until(start + 601)
    assert set(await platform.async_poll(devices)) == {"CA13999002410", "WM80520999021016", "N655119991021018"}
    assert seen[1] - seen[0] >= 600
    await platform.async_close()


async def test_rate_limit_remaining_is_read(session, vendor: Vendor, clock) -> None:
    platform, ctx = await make_platform(session, vendor)
    vendor.on(SYSTEMS, Reply(load_fixture("amm_systems.json"), headers={"X-Rate-Limit-Remaining": "356"}))
    await platform.async_discover()
    assert platform.info()["rate_limit_remaining"] == 356 and "shared_budget" not in ctx.warnings
    vendor.on(SYSTEMS, Reply(load_fixture("amm_systems.json"), headers={"X-Rate-Limit-Remaining": "17"}))
    await platform.async_discover()
    assert platform.info()["rate_limit_remaining"] == 17
    assert "another API client" in ctx.warnings["shared_budget"]
    vendor.on(SYSTEMS, Reply(load_fixture("amm_systems.json"), headers={"X-Rate-Limit-Remaining": "0"}))
    await platform.async_discover()
    assert platform.ledger.blocked_until > clock.time()


async def test_too_many_targets_lowers_the_batch_size(session, vendor: Vendor, clock) -> None:
    platform, ctx = await make_platform(session, vendor)
    await platform.async_discover()
    vendor.on("/api/v1/systems/groups/1/data", Reply({"error": "aggregation.too.many.targets"}, 400))
    assert await platform._fetch(platform.scheduler.batches[0]) == {}
    assert platform.cap == 6 and "batch_size" in ctx.warnings
    assert [b.label for b in platform.scheduler.batches if b.group_id] == [
        "All gateways/My MG90 devices", "All gateways/My ALEOS devices"]


@pytest.mark.parametrize(("overrides", "warnings"), [
    ({}, set()),
    ({"verify_tls": False}, {"tls"}),
    ({"base_url": "http://amm.example.test"}, {"plain_http"}),
    ({"base_url": "http://127.0.0.1:8080"}, set()),
])
async def test_transport_warnings(session, overrides: dict[str, Any], warnings: set[str]) -> None:
    ctx = FakeContext(session, amm_config(**overrides))
    transport_warnings(ctx, ctx.config["base_url"])
    assert set(ctx.warnings) == warnings
    if "tls" in warnings:
        assert "verify_tls: false" in ctx.warnings["tls"]
