"""End to end: Sierra simulators -> the real bridge -> a real mosquitto -> a subscriber.

The AMM tests run the platform and its simulator on one :class:`ManualClock` that the test drives,
so hours of planned requests take seconds and the budget is checked on simulated time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer
from fleetbridge_plugins.sierra.airvantage_sim import create_app as create_av_app
from fleetbridge_plugins.sierra.amm import AmmPlatform
from fleetbridge_plugins.sierra.amm_sim import create_app as create_amm_app
from fleetbridge_plugins.sierra.clock import ManualClock
from fleetbridge_plugins.sierra.oauth import OAuthClient

from fleetbridge.platform import RateLimit

from .conftest import CLIENT_ID, CLIENT_SECRET, NOW, PASSWORD, USERNAME

pytestmark = pytest.mark.e2e

CLIENTS = {CLIENT_ID: CLIENT_SECRET}
USERS = {USERNAME: PASSWORD}


async def start(app: Any) -> tuple[Any, TestServer]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    sim = app["sim"]
    sim.url = str(server.make_url("")).rstrip("/")
    return sim, server


def write_config(tmp_path: Path, broker: Any, unique: str, account: dict[str, Any]) -> Path:
    mqtt = {"host": "127.0.0.1", "port": broker.port, "base_topic": f"fb{unique}", "discovery_prefix": f"ha{unique}",
            "client_id": f"fb-{unique}"}
    creds = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "username": USERNAME, "password": PASSWORD}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"mqtt": mqtt, "storage": str(tmp_path / "fb.db"),
                                    "accounts": [{**creds, **account}]}, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def driving(clock: ManualClock, step: float = 30.0) -> AsyncIterator[None]:
    """Keep simulated time moving (``step`` s at a time) while the block runs."""
    stop = asyncio.Event()

    async def drive() -> None:
        while not stop.is_set():
            await clock.run_until(clock.time() + step)
            await asyncio.sleep(0)

    task = asyncio.create_task(drive())
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def states(rec: Any, base: str) -> dict[str, Any]:
    return {t.split("/")[-2]: json.loads(p) for t, p in rec.latest.items()
            if t.startswith(base + "/") and t.endswith("/state") and p}


# --- AMM ------------------------------------------------------------------------------------

@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    manual = ManualClock(NOW)
    monkeypatch.setattr(AmmPlatform, "clock", manual)
    return manual


async def test_amm_fleet_in_nested_groups_refreshed_in_batches_within_the_hourly_budget(
        tmp_path: Path, broker: Any, unique: str, bridge_runner: Any, recorder_factory: Any, clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The host's own per_hour cap counts wall-clock time; this test compresses hours of simulated
    # time into seconds, so the platform's planner (on the simulated clock) is what is measured.
    monkeypatch.setattr(AmmPlatform, "RATE_LIMITS", {"auth": RateLimit(), "api": RateLimit()})
    sim, server = await start(create_amm_app(CLIENTS, USERS, devices=300, seed=11, clock=clock))
    try:
        rec = await recorder_factory(broker.port, [f"fb{unique}/#", f"ha{unique}/#"])
        config = write_config(tmp_path, broker, unique, {
            "platform": "amm", "name": "Gateways", "base_url": sim.url, "scan_interval": 1})
        base = f"fb{unique}/gateways"
        bridge = await bridge_runner(config)
        # the first batch goes out at once; one refresh interval of simulated time covers the fleet
        await rec.wait_for(lambda: states(rec, base), what="the first batch")
        await rec.wait_for(lambda: "platform_info" in rec.json(f"fb{unique}/bridge/info")["accounts"]["gateways"],
                           what="the plan in bridge/info")
        interval = rec.json(f"fb{unique}/bridge/info")["accounts"]["gateways"]["platform_info"]["refresh_interval_s"]
        await clock.run_until(NOW + interval - 1)
        await rec.wait_for(lambda: len(states(rec, base)) == 300, what="a state per gateway")
        group_calls = sim.request_counts["GET /api/v1/systems/groups/{group}/data"]
        single_calls = sim.request_counts["GET /api/v1/systems/{uid}/data"]
        assert 4 <= group_calls <= 8 and single_calls <= 2  # 300 gateways in a handful of requests
        info = rec.json(f"fb{unique}/bridge/info")["accounts"]["gateways"]
        plan = info["platform_info"]
        assert plan["gateways"] == 300 and plan["requests_per_refresh"] == group_calls + single_calls
        assert "cannot be met" in info["warnings"]["scan_interval"]
        assert f"refreshing every {plan['achievable_interval_s']:g} s instead" in info["warnings"]["scan_interval"]
        assert plan["refresh_interval_s"] == plan["achievable_interval_s"] > 1
        # one gateway end to end: location, radio, health, group as area
        uid = next(iter(sim.groups[3].gateways)) if sim.groups[3].gateways else next(iter(sim.gateways))
        slug = uid.lower()
        state = states(rec, base)[slug]
        assert {"latitude", "longitude", "signal", "rsrp", "cpu_temperature", "last_seen"} <= set(state)
        assert state["attributes"]["groups"][0] == "All Gateways"
        cfg = rec.json(f"ha{unique}/device/gateways_{slug}/config")
        assert cfg["cmps"]["location"]["p"] == "device_tracker" and "signal" in cfg["cmps"]
        assert cfg["dev"]["sa"] == sim.group_of(uid).name
        assert not [c for c in cfg["cmps"].values() if "cmd_t" in c]  # read-only: no controls

        # Hours of simulated time, with a restart in the middle: never over the hourly budget.
        start_t = clock.time()
        async with driving(clock, step=120.0):
            while clock.time() < start_t + 3900:
                await asyncio.sleep(0.05)
            await bridge.stop()
            bridge = await bridge_runner(config)
            restarted_at = clock.time()
            account = bridge.bridge.accounts["gateways"]
            await rec.wait_for(lambda: account.platform is not None and account.platform.oauth is not None,
                               what="the restarted platform")
            assert account.platform.ledger.count() >= 250  # the budget already used survived the restart
            while clock.time() < restarted_at + 3900:
                await asyncio.sleep(0.05)
        hours = (clock.time() - start_t) / 3600
        assert sim.throttled == 0
        assert sim.max_in_hour <= 360 * 0.9
        total = sum(n for key, n in sim.request_counts.items() if "/api/v1/" in key)
        assert total >= 300 * hours * 0.8  # it did use the budget, not idle
        info = rec.json(f"fb{unique}/bridge/info")["accounts"]["gateways"]
        assert info["status"] == "ok" and info["platform_info"]["requests_last_hour"] <= 324
    finally:
        await server.close()


async def test_amm_crash_between_refresh_and_use_keeps_the_refresh_token(
        tmp_path: Path, broker: Any, unique: str, bridge_runner: Any, recorder_factory: Any, clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sim, server = await start(create_amm_app(CLIENTS, USERS, devices=5, seed=2, clock=clock, access_lifetime=600))
    try:
        rec = await recorder_factory(broker.port, [f"fb{unique}/#"])
        config = write_config(tmp_path, broker, unique, {"platform": "amm", "name": "Gateways", "base_url": sim.url,
                                                         "scan_interval": 60})
        base = f"fb{unique}/gateways"
        bridge = await bridge_runner(config)
        await rec.wait_for(lambda: len(states(rec, base)) == 5, what="first states")
        crashed = asyncio.Event()

        def crash(self: OAuthClient, *args: Any) -> None:
            crashed.set()
            raise RuntimeError("process killed after storing the refresh token")

        monkeypatch.setattr(OAuthClient, "_adopt", crash)
        async with driving(clock, step=10.0):
            await asyncio.wait_for(crashed.wait(), 10)  # the token is due at 80 % of 600 s
        await bridge.stop()
        monkeypatch.undo()
        monkeypatch.setattr(AmmPlatform, "clock", clock)
        rotated = sim.oauth.grants[-1]
        assert (rotated.grant_type, rotated.ok) == ("refresh_token", True)
        seen = len(sim.oauth.grants)
        polls = sim.request_counts["GET /api/v1/systems/groups/{group}/data"]
        await bridge_runner(config)
        info_topic = f"fb{unique}/bridge/info"
        async with driving(clock, step=5.0):  # the restarted platform keeps the planned spacing
            await rec.wait_for(lambda: restarted_ok(rec.json(info_topic)["accounts"]["gateways"]),
                               what="a poll after the restart")
        assert sim.request_counts["GET /api/v1/systems/groups/{group}/data"] > polls
        after = sim.oauth.grants[seen]
        assert (after.grant_type, after.ok, after.presented) == ("refresh_token", True, rotated.issued_refresh)
        assert sim.oauth.count("password") == 1 and all(g.ok for g in sim.oauth.grants)
    finally:
        await server.close()


def restarted_ok(info: dict[str, Any]) -> bool:
    """The restarted platform polled, having logged in only with the stored refresh token."""
    grants = info.get("platform_info", {}).get("grants")
    return info["status"] == "ok" and grants is not None and grants["password"] == 0 and grants["refresh_token"] >= 1


# --- AirVantage -----------------------------------------------------------------------------

async def test_airvantage_label_from_mqtt_follows_the_operation_and_gateways_come_and_go(
        tmp_path: Path, broker: Any, unique: str, bridge_runner: Any, recorder_factory: Any) -> None:
    sim, server = await start(create_av_app(CLIENTS, USERS, devices=8, seed=4, op_delay=(0.2, 0.6)))
    try:
        rec = await recorder_factory(broker.port, [f"fb{unique}/#", f"ha{unique}/#"])
        config = write_config(tmp_path, broker, unique, {
            "platform": "airvantage", "name": "Inventory", "base_url": sim.url, "scan_interval": 1,
            "operation_poll_interval": 0.1, "rate_limits": {"api": 0}})
        base = f"fb{unique}/inventory"
        bridge = await bridge_runner(config)
        await rec.wait_for(lambda: len(states(rec, base)) == 8, what="a state per gateway")
        gw = next(g for g in sim.own() if g.state == "INVENTORY" and "urgent" not in g.labels)
        slug = gw.uid.lower()
        cfg = rec.json(f"ha{unique}/device/inventory_{slug}/config")
        assert "lifecycle_state" in cfg["cmps"] and cfg["cmps"]["set_note"]["p"] == "text"
        assert states(rec, base)[slug]["lifecycle_state"] == "INVENTORY"

        await rec.publish(f"{base}/{slug}/add_label/set", "urgent")
        topic = f"{base}/{slug}/add_label/result"
        await rec.wait_for(lambda: any(r["status"] == "success" for r in rec.on(topic)), what="label success")
        results = rec.on(topic)
        assert [r["status"] for r in results] == ["pending", "success"]
        assert "started" in results[0]["detail"] and "1 of 1" in results[1]["detail"]
        assert "urgent" in sim.gateways[gw.uid].labels
        await rec.wait_for(lambda: "urgent" in states(rec, base)[slug]["attributes"]["labels"], what="label state")

        await rec.publish(f"{base}/{slug}/set_note/set", "spare for the north depot")
        await rec.wait_for(lambda: any(r["status"] == "success" for r in rec.on(f"{base}/{slug}/set_note/result")),
                           what="note")
        assert {"key": "note", "value": "spare for the north depot"} in sim.gateways[gw.uid].metadata

        # a gateway deleted and one created elsewhere: the periodic rediscovery follows
        account = bridge.bridge.accounts["inventory"]
        gone = next(g for g in sim.own() if g.system_state is None and g.uid != gw.uid)
        del sim.gateways[gone.uid]
        new = sim._generate(99)
        await account.discover()
        await rec.wait_for(lambda: rec.latest.get(f"ha{unique}/device/inventory_{gone.uid}/config") == b"",
                           what="the deleted gateway's discovery cleared")
        await rec.wait_for(lambda: f"ha{unique}/device/inventory_{new.uid}/config" in rec.latest,
                           what="the new gateway's discovery")
    finally:
        await server.close()
