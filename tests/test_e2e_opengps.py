"""End to end: tracker simulator -> bridge -> real mosquitto -> a subscriber."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from fleetbridge_plugins.opengps.simulator import create_app

import yaml

pytestmark = pytest.mark.e2e

PASSWORD = "Sim-pass-0731"


@pytest.fixture
async def sim() -> Any:
    app = create_app(accounts={"fleet": PASSWORD}, devices=12, seed=7, tick=0, command_delay=(0.2, 0.4))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    simulator = app["sim"]
    simulator.url = str(server.make_url("")).rstrip("/")
    yield simulator
    await server.close()


def config_for(tmp_path: Path, broker: Any, sim: Any, unique: str, **extra: Any) -> Path:
    account = {
        "platform": "opengps", "name": "Vans", "base_url": sim.url, "account": "fleet", "password": PASSWORD,
        "scan_interval": 1, "event_interval": 1, "rate_limits": {"auth": 0, "track": 0, "playback": 0,
                                                                 "device_list": 0},
        "command_poll_interval": 0.05, "services": {"engine_stop": True},
    }
    account.update(extra.pop("account", {}))
    mqtt = {"host": "127.0.0.1", "port": broker.port, "base_topic": f"fb{unique}",
            "discovery_prefix": f"ha{unique}", "client_id": f"fb-{unique}"}
    mqtt.update(extra.pop("mqtt", {}))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"mqtt": mqtt, "storage": str(tmp_path / "fb.db"), "accounts": [account],
                                    **extra}, sort_keys=False))
    return path


def advance(sim: Any, seconds: float) -> None:
    """Move the still world and the server clock together: the bridge asks for alarms up to the server's
    now, so an alarm stamped in a world ahead of that clock would stay hidden until it caught up."""
    sim.clock_offset += seconds
    sim.step(seconds)


def drive_until_moving(sim: Any, speed: float = 40) -> str:
    """An online vehicle driving at ``speed`` km/h or more, advancing the still world until one is: where the
    fleet stands when the test starts depends on the wall clock."""
    for _ in range(1000):
        moving = [i for i, d in sim.devices.items() if d.datastatus == 2 and d.oilpowerstatus != 0 and d.speed >= speed]
        if moving:
            return moving[0]
        advance(sim, 10.0)
    pytest.fail(f"no vehicle of the fleet reached {speed} km/h in 10,000 s of world time")


def online_imei(sim: Any) -> str:
    return next(imei for imei, d in sim.devices.items() if d.datastatus == 2 and not d.never_answers)


@pytest.fixture
async def running(tmp_path: Path, broker: Any, sim: Any, unique: str, bridge_runner: Any, recorder_factory: Any):
    rec = await recorder_factory(broker.port, [f"fb{unique}/#", f"ha{unique}/#"])
    rb = await bridge_runner(config_for(tmp_path, broker, sim, unique))
    base = f"fb{unique}/vans"
    await rec.wait_for(lambda: len([t for t in rec.latest if t.startswith(base) and t.endswith("/state")])
                       == len(sim.devices), what="a state per device")
    return rec, rb, base


async def test_every_contract_topic_is_published(running: Any, sim: Any, unique: str) -> None:
    rec, _, base = running
    assert rec.latest[f"fb{unique}/bridge/state"] == b"online"
    info = rec.json(f"fb{unique}/bridge/info")
    assert info["accounts"]["vans"]["status"] == "ok"
    assert info["accounts"]["vans"]["last_poll"]
    assert PASSWORD not in json.dumps(info)
    devices = rec.json(f"fb{unique}/bridge/devices")
    assert {d["vendor_id"] for d in devices} == set(sim.devices)
    imei = online_imei(sim)
    state = rec.json(f"{base}/{imei}/state")
    truth = sim.devices[imei]
    assert state["latitude"] == pytest.approx(truth.latitude, abs=1e-5)
    assert state["online"] is True
    assert all(v != -1 for v in state.values())
    assert rec.latest[f"{base}/{imei}/availability"] == b"online"
    config = rec.json(f"ha{unique}/device/vans_{imei}/config")
    assert config["o"]["name"] == "fleetbridge"
    assert config["dev"]["via_device"] == f"fleetbridge_bridge_fb-{unique}"
    assert config["avty_mode"] == "all"
    cmps = config["cmps"]
    assert cmps["location"]["p"] == "device_tracker"
    assert cmps["engine_stop"]["cmd_t"] == f"{base}/{imei}/engine_stop/set"
    assert cmps["alarm"]["p"] == "event"
    assert all(c["qos"] == 1 and "object_id" not in c for c in cmps.values() if c["p"] != "device_automation")
    assert "stat_t" not in config  # never shared at device level (it would break the tracker)
    bridge_config = rec.json(f"ha{unique}/device/fleetbridge_bridge_fb-{unique}/config")
    assert "account_vans" in bridge_config["cmps"]


async def test_movement_ignition_and_battery_arrive(running: Any, sim: Any) -> None:
    rec, _, base = running
    imei = online_imei(sim)
    dev = sim.devices[imei]
    dev.latitude, dev.longitude, dev.battery = 52.1, 5.2, 7
    dev.accstatus = 0 if dev.accstatus == 1 else 1
    want_ignition = dev.accstatus == 1
    topic = f"{base}/{imei}/state"

    def arrived() -> bool:
        state = rec.json(topic)
        return state.get("latitude") == 52.1 and state.get("battery") == 7 and state.get("ignition") is want_ignition

    await rec.wait_for(arrived, what="the changed state")


async def test_engine_stop_pending_then_success_and_fuel_cut_confirmed(running: Any, sim: Any) -> None:
    rec, _, base = running
    imei = online_imei(sim)
    dev = sim.devices[imei]
    dev.speed = 0
    await asyncio.sleep(1.5)  # a fresh fix with speed 0
    await rec.publish(f"{base}/{imei}/engine_stop/set", "PRESS")
    result_topic = f"{base}/{imei}/engine_stop/result"
    await rec.wait_for(lambda: any(r["status"] == "success" for r in rec.on(result_topic)), what="success")
    statuses = [r["status"] for r in rec.on(result_topic)]
    assert statuses == ["pending", "success"], statuses
    await rec.wait_for(lambda: rec.json(f"{base}/{imei}/state").get("fuel_cut") is True, what="fuel_cut")


async def test_device_that_never_answers_times_out(running: Any, sim: Any) -> None:
    rec, _, base = running
    imei = next(i for i, d in sim.devices.items() if d.datastatus == 2 and d.never_answers)
    before = sim.request_counts["/api/command/query"]
    await rec.publish(f"{base}/{imei}/reboot/set", "PRESS")
    topic = f"{base}/{imei}/reboot/result"
    await rec.wait_for(lambda: any(r["status"] == "timeout" for r in rec.on(topic)), timeout=20, what="timeout")
    assert [r["status"] for r in rec.on(topic)] == ["pending", "timeout"]
    assert sim.request_counts["/api/command/query"] - before == 30


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"{not json", b"x" * 10_000, b"[1,2]", b"STOP NOW"])
async def test_garbage_command_is_rejected_without_vendor_call(running: Any, sim: Any, payload: bytes) -> None:
    rec, _, base = running
    imei = online_imei(sim)
    before = sim.request_counts["/api/command/send"]
    await rec.publish(f"{base}/{imei}/reboot/set", payload)
    topic = f"{base}/{imei}/reboot/result"
    await rec.wait_for(lambda: rec.on(topic), what="a result")
    assert rec.on(topic)[-1]["status"] == "rejected"
    await asyncio.sleep(0.3)
    assert sim.request_counts["/api/command/send"] == before


async def test_disabled_dangerous_and_unsafe_calls_are_rejected(running: Any, sim: Any) -> None:
    rec, _, base = running
    imei = online_imei(sim)
    sim.devices[imei].speed = 80
    await asyncio.sleep(1.5)
    before = sim.request_counts["/api/command/send"]
    await rec.publish(f"{base}/{imei}/unlock_doors/set", "PRESS")  # not enabled in this config
    await rec.publish(f"{base}/{imei}/engine_stop/set", "PRESS")  # enabled, but the van is moving
    for service in ("unlock_doors", "engine_stop"):
        topic = f"{base}/{imei}/{service}/result"
        await rec.wait_for(lambda: rec.on(topic), what=f"{service} result")
        assert rec.on(topic)[-1]["status"] == "rejected", rec.on(topic)
    assert "80" in rec.on(f"{base}/{imei}/engine_stop/result")[-1]["detail"]
    assert sim.request_counts["/api/command/send"] == before


async def test_rate_limit_storm_and_token_invalidation_lose_no_poll(running: Any, sim: Any) -> None:
    rec, _, base = running
    imei = online_imei(sim)
    sim.faults.rate_limit = 5
    sim.invalidate_tokens()
    sim.devices[imei].latitude = 51.5
    topic = f"{base}/{imei}/state"
    await rec.wait_for(lambda: rec.json(topic).get("latitude") == 51.5, timeout=30, what="state after the storm")
    info = rec.json(rec_topic := next(t for t in rec.latest if t.endswith("/bridge/info")))
    assert rec_topic and info["accounts"]["vans"]["status"] in ("ok", "rate_limited")
    await rec.wait_for(lambda: rec.json(rec_topic)["accounts"]["vans"]["status"] == "ok", timeout=30,
                       what="recovery to ok")


async def test_alarms_exactly_once_across_restart(tmp_path: Path, broker: Any, sim: Any, unique: str,
                                                  bridge_runner: Any, recorder_factory: Any) -> None:
    rec = await recorder_factory(broker.port, [f"fb{unique}/+/+/event"])
    config = config_for(tmp_path, broker, sim, unique)
    imeis = [i for i, d in sim.devices.items() if d.datastatus == 2][:2]
    raised = [(i, "sos") for i in imeis] + [(i, "accident") for i in imeis]
    for imei in imeis:
        sim.raise_alarm(imei, 1)
        sim.raise_alarm(imei, 20)

    def delivered(kinds: list[tuple[str, str]]) -> bool:
        got = [(e["device"], e["event_type"]) for e in map(json.loads, (p for _, p, _ in rec.messages))]
        return all(k in got for k in kinds)

    first = await bridge_runner(config)
    await rec.wait_for(lambda: delivered(raised), what="the first alarms")
    await asyncio.sleep(1.5)  # more event polls: the boundary records come back and must not repeat
    await first.stop()
    later = [(i, "jamming") for i in imeis]
    for imei in imeis:
        sim.raise_alarm(imei, 33)
    await bridge_runner(config)
    await rec.wait_for(lambda: delivered(later), what="alarms raised while the bridge was down")
    await asyncio.sleep(2.5)
    events = [json.loads(p) for _, p, _ in rec.messages]
    keys = [(e["device"], e["vendor_code"], e["at"], e.get("latitude"), e.get("longitude")) for e in events]
    assert len(keys) == len(set(keys)), "an alarm was delivered twice"
    kinds = [(e["device"], e["event_type"]) for e in events]
    for kind in raised + later:
        assert kinds.count(kind) == 1, kind
    assert all(not retain for _, _, retain in rec.messages)


async def test_entity_discovery_mode(tmp_path: Path, broker: Any, sim: Any, unique: str, bridge_runner: Any,
                                     recorder_factory: Any) -> None:
    rec = await recorder_factory(broker.port, [f"ha{unique}/#"])
    await bridge_runner(config_for(tmp_path, broker, sim, unique, mqtt={"discovery_mode": "entity"}))
    imei = online_imei(sim)
    topic = f"ha{unique}/sensor/vans_{imei}/battery/config"
    await rec.wait_for(lambda: topic in rec.latest, what="per-entity config")
    cfg = rec.json(topic)
    assert cfg["uniq_id"] == f"fleetbridge_vans_{imei}_battery"
    assert cfg["dev"]["ids"] == [f"vans_{imei}"]
    assert not any(t.startswith(f"ha{unique}/device/") for t in rec.latest)


async def test_stale_discovery_is_cleared_and_birth_republishes(tmp_path: Path, broker: Any, sim: Any,
                                                                 unique: str, bridge_runner: Any,
                                                                 recorder_factory: Any) -> None:
    rec = await recorder_factory(broker.port, [f"ha{unique}/#", f"fb{unique}/#"])
    bridge_id = f"fleetbridge_bridge_fb-{unique}"
    stale = f"ha{unique}/device/vans_gone/config"
    foreign = f"ha{unique}/device/other_thing/config"
    await rec.publish(stale, json.dumps({"dev": {"ids": ["vans_gone"], "via_device": bridge_id}, "cmps": {}}),
                      retain=True)
    await rec.publish(foreign, json.dumps({"dev": {"ids": ["x"]}, "cmps": {}}), retain=True)
    await bridge_runner(config_for(tmp_path, broker, sim, unique))
    await rec.wait_for(lambda: rec.latest.get(stale) == b"", what="stale config cleared")
    assert rec.latest[foreign] != b""
    imei = online_imei(sim)
    topic = f"ha{unique}/device/vans_{imei}/config"
    await rec.wait_for(lambda: topic in rec.latest, what="discovery")
    count = sum(1 for t, _, _ in rec.messages if t == topic)
    await rec.publish(f"ha{unique}/status", "online")
    await rec.wait_for(lambda: sum(1 for t, _, _ in rec.messages if t == topic) > count, timeout=10,
                       what="re-published discovery after the birth message")


async def test_clean_stop_publishes_offline(tmp_path: Path, broker: Any, sim: Any, unique: str,
                                            bridge_runner: Any, recorder_factory: Any) -> None:
    rec = await recorder_factory(broker.port, [f"fb{unique}/bridge/state"])
    rb = await bridge_runner(config_for(tmp_path, broker, sim, unique))
    await rec.wait_for(lambda: rec.latest.get(f"fb{unique}/bridge/state") == b"online", what="online")
    await rb.stop()
    await rec.wait_for(lambda: rec.latest.get(f"fb{unique}/bridge/state") == b"offline", what="offline")


async def sim_server(**options: Any) -> tuple[Any, TestServer]:
    app = create_app(accounts={"fleet": PASSWORD}, devices=12, seed=7, tick=0, command_delay=(0.2, 0.4), **options)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    app["sim"].url = str(server.make_url("")).rstrip("/")
    return app["sim"], server


async def test_subaccounts_and_clock_skew(tmp_path: Path, broker: Any, unique: str, bridge_runner: Any,
                                          recorder_factory: Any) -> None:
    """A distributor account's sub-accounts are walked; a server clock 15 minutes ahead (10014) is
    corrected from the Date header."""
    sim, server = await sim_server(subaccounts=True, clock_offset=900)
    try:
        rec = await recorder_factory(broker.port, [f"fb{unique}/bridge/#"])
        await bridge_runner(config_for(tmp_path, broker, sim, unique, account={"include_subaccounts": True}))
        await rec.wait_for(lambda: f"fb{unique}/bridge/devices" in rec.latest
                           and len(rec.json(f"fb{unique}/bridge/devices")) == len(sim.devices), timeout=20,
                           what="every device of the account tree")
        owners = {d.account for d in sim.devices.values()}
        assert len(owners) > 1  # the fleet really is spread over sub-accounts
        info = rec.json(f"fb{unique}/bridge/info")["accounts"]["vans"]
        assert info["status"] == "ok"
        assert abs(info["platform_info"]["clock_offset_s"] - 900) < 5
    finally:
        await server.close()


async def test_geofence_created_over_mqtt_raises_alarms(running: Any, sim: Any) -> None:
    rec, _, base = running
    imei = drive_until_moving(sim)
    dev = sim.devices[imei]
    payload = {"name": "depot", "latitude": dev.latitude, "longitude": dev.longitude, "radius": 100,
               "alarm": "out"}
    await rec.publish(f"{base}/{imei}/create_geofence/set", json.dumps(payload))
    topic = f"{base}/{imei}/create_geofence/result"
    await rec.wait_for(lambda: rec.on(topic) and rec.on(topic)[-1]["status"] == "success", what="geofence created")
    assert dev.fences and dev.fences[0].radius == 100
    for _ in range(60):  # at 40+ km/h the vehicle leaves the 100 m circle within seconds: an exit alarm
        advance(sim, 5.0)
        if not dev.fences[0].inside:
            break
    event_topic = f"{base}/{imei}/event"
    await rec.wait_for(lambda: any(e["event_type"] == "geofenceExit" for e in rec.on(event_topic)), timeout=25,
                       what="geofenceExit event")
    event = next(e for e in rec.on(event_topic) if e["event_type"] == "geofenceExit")
    assert event["vendor_code"] == 6 and event["geofence_id"] == str(dev.fences[0].id)
    await rec.publish(f"{base}/{imei}/create_geofence/set", json.dumps({**payload, "radius": 99}))
    await rec.wait_for(lambda: rec.on(topic)[-1]["status"] == "rejected", what="radius below 100 rejected")


async def test_devices_appear_and_disappear_by_themselves(tmp_path: Path, broker: Any, sim: Any, unique: str,
                                                          bridge_runner: Any, recorder_factory: Any) -> None:
    rec = await recorder_factory(broker.port, [f"fb{unique}/#", f"ha{unique}/#"])
    await bridge_runner(config_for(tmp_path, broker, sim, unique, account={"discovery_interval": 5}))
    imei = online_imei(sim)
    config_topic = f"ha{unique}/device/vans_{imei}/config"
    await rec.wait_for(lambda: rec.latest.get(config_topic), what="discovery")
    sim.devices[imei].account = "someone-else"  # moved out of our account at the vendor
    await rec.wait_for(lambda: rec.latest.get(config_topic) == b"", timeout=20, what="discovery cleared")
    await rec.wait_for(lambda: rec.latest.get(f"fb{unique}/vans/{imei}/state") == b""
                       and imei not in {d["vendor_id"] for d in rec.json(f"fb{unique}/bridge/devices")},
                       what="state cleared and the device gone from bridge/devices")
    sim.devices[imei].account = "fleet"
    await rec.wait_for(lambda: rec.latest.get(config_topic), timeout=20, what="discovery back")
    await rec.wait_for(lambda: rec.latest.get(f"fb{unique}/vans/{imei}/state"), what="state back")


async def test_retained_command_is_never_executed(tmp_path: Path, broker: Any, sim: Any, unique: str,
                                                  bridge_runner: Any, recorder_factory: Any) -> None:
    """A command left retained on the broker would run at every reconnect: it is ignored."""
    rec = await recorder_factory(broker.port, [f"fb{unique}/#"])
    imei = online_imei(sim)
    await rec.publish(f"fb{unique}/vans/{imei}/reboot/set", "PRESS", retain=True)
    try:
        await bridge_runner(config_for(tmp_path, broker, sim, unique))
        await rec.wait_for(lambda: f"fb{unique}/vans/{imei}/state" in rec.latest, what="state")
        await asyncio.sleep(1.0)
        assert sim.request_counts["/api/command/send"] == 0
        assert not rec.on(f"fb{unique}/vans/{imei}/reboot/result")
    finally:
        await rec.publish(f"fb{unique}/vans/{imei}/reboot/set", "", retain=True)
