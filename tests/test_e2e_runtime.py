"""The host's run-time promises, end to end on the tracker simulator and a real mosquitto:
broker loss, vendor outage and recovery, pending calls across restarts, account isolation."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from fleetbridge_plugins.opengps.simulator import create_app

pytestmark = pytest.mark.e2e

PASSWORD = "Run-time-pw-42"


async def start_sim(**options: Any) -> tuple[Any, TestServer]:
    app = create_app(accounts={"fleet": PASSWORD}, devices=6, seed=11, tick=0, **options)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    sim = app["sim"]
    sim.url = str(server.make_url("")).rstrip("/")
    return sim, server


@pytest.fixture
async def sims() -> Any:
    servers: list[TestServer] = []

    async def make(**options: Any) -> Any:
        sim, server = await start_sim(**options)
        servers.append(server)
        return sim

    yield make
    for server in servers:
        await server.close()


def account(name: str, sim: Any, **extra: Any) -> dict[str, Any]:
    return {"platform": "opengps", "name": name, "base_url": sim.url, "account": "fleet", "password": PASSWORD,
            "scan_interval": 1, "event_interval": 30, "timeout": 2,
            "rate_limits": {"auth": 0, "track": 0, "device_list": 0}, "command_poll_interval": 0.3, **extra}


def write(tmp_path: Path, port: int, unique: str, accounts: list[dict[str, Any]], **mqtt: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": port, "base_topic": f"rt{unique}", "discovery_prefix": f"hart{unique}",
                 "client_id": f"rt-{unique}", **mqtt},
        "storage": str(tmp_path / "fb.db"), "accounts": accounts}))
    return path


def answering(sim: Any) -> str:
    return next(i for i, d in sim.devices.items() if d.datastatus == 2 and not d.never_answers)


async def test_broker_restart_republishes_everything_and_loses_no_change(
        tmp_path: Path, own_broker: Any, sims: Any, unique: str, bridge_runner: Any, recorder_factory: Any) -> None:
    sim = await sims()
    await bridge_runner(write(tmp_path, own_broker.port, unique, [account("Vans", sim)]))
    base = f"rt{unique}/vans"
    imei = answering(sim)
    rec = await recorder_factory(own_broker.port, [f"rt{unique}/#", f"hart{unique}/#"])
    await rec.wait_for(lambda: f"{base}/{imei}/state" in rec.latest, what="first state")
    await rec.stop()

    own_broker.stop()  # no persistence: everything retained is gone with it
    sim.devices[imei].latitude = 50.5  # a change while the broker is away
    await asyncio.sleep(2.5)
    own_broker.start()

    rec = await recorder_factory(own_broker.port, [f"rt{unique}/#", f"hart{unique}/#"])
    await rec.wait_for(lambda: rec.latest.get(f"rt{unique}/bridge/state") == b"online", timeout=90,
                       what="the bridge back online")
    await rec.wait_for(lambda: all(f"{base}/{i}/state" in rec.latest for i, d in sim.devices.items()
                                   if d.datastatus == 2), timeout=30, what="every state re-published")
    assert rec.json(f"{base}/{imei}/state")["latitude"] == 50.5
    assert f"hart{unique}/device/vans_{imei}/config" in rec.latest
    assert f"rt{unique}/bridge/info" in rec.latest and f"rt{unique}/bridge/devices" in rec.latest


async def test_vendor_outage_marks_offline_after_grace_and_recovers(
        tmp_path: Path, broker: Any, sims: Any, unique: str, bridge_runner: Any, recorder_factory: Any) -> None:
    sim = await sims()
    rec = await recorder_factory(broker.port, [f"rt{unique}/#"])
    await bridge_runner(write(tmp_path, broker.port, unique, [account("Vans", sim, offline_grace=2)]))
    imei = answering(sim)
    avail = f"rt{unique}/vans/{imei}/availability"
    info = f"rt{unique}/bridge/info"
    await rec.wait_for(lambda: rec.latest.get(avail) == b"online", what="online")
    sim.faults.http_500 = 1.0  # every request fails
    await rec.wait_for(lambda: rec.latest.get(avail) == b"offline", timeout=30, what="offline after the grace")
    status = rec.json(info)["accounts"]["vans"]
    assert status["status"] == "unreachable" and status["errors"]
    sim.faults.http_500 = 0
    sim.devices[imei].battery = 3
    await rec.wait_for(lambda: rec.latest.get(avail) == b"online", timeout=40, what="recovery")
    await rec.wait_for(lambda: rec.json(f"rt{unique}/vans/{imei}/state").get("battery") == 3, what="fresh state")
    await rec.wait_for(lambda: rec.json(info)["accounts"]["vans"]["status"] == "ok", what="status ok")


async def test_pending_command_is_resolved_after_restart(
        tmp_path: Path, broker: Any, sims: Any, unique: str, bridge_runner: Any, recorder_factory: Any) -> None:
    sim = await sims(command_delay=(3.0, 3.5))
    config = write(tmp_path, broker.port, unique, [account("Vans", sim)])
    rec = await recorder_factory(broker.port, [f"rt{unique}/#"])
    first = await bridge_runner(config)
    imei = answering(sim)
    topic = f"rt{unique}/vans/{imei}/reboot/result"
    await rec.wait_for(lambda: f"rt{unique}/vans/{imei}/state" in rec.latest, what="state")
    await rec.publish(f"rt{unique}/vans/{imei}/reboot/set", "PRESS")
    await rec.wait_for(lambda: rec.on(topic), what="pending")
    await first.stop()  # the device has not answered yet
    assert [r["status"] for r in rec.on(topic)] == ["pending"]
    await asyncio.sleep(3.5)
    await bridge_runner(config)
    await rec.wait_for(lambda: len(rec.on(topic)) >= 2, timeout=20, what="the result after the restart")
    final = rec.on(topic)[-1]
    assert final["status"] == "success" and "after restart" in final["detail"], final
    assert sim.request_counts["/api/command/send"] == 1  # followed up, never re-sent


async def test_failing_account_never_delays_another(
        tmp_path: Path, broker: Any, sims: Any, unique: str, bridge_runner: Any, recorder_factory: Any) -> None:
    good, bad = await sims(), await sims()
    bad.faults.slow = 5.0  # every answer takes longer than the 2 s timeout
    rec = await recorder_factory(broker.port, [f"rt{unique}/+/+/state", f"rt{unique}/bridge/info"])
    await bridge_runner(write(tmp_path, broker.port, unique, [account("Good", good), account("Bad", bad)]))
    imei = answering(good)
    topic = f"rt{unique}/good/{imei}/state"
    await rec.wait_for(lambda: topic in rec.latest, what="the good account's state")
    for n in range(3):
        good.devices[imei].battery = 50 + n
        await rec.wait_for(lambda: rec.json(topic).get("battery") == 50 + n, timeout=4,
                           what="each change within a few poll intervals")
    info = rec.json(f"rt{unique}/bridge/info")["accounts"]
    assert info["good"]["status"] == "ok"
    assert info["bad"]["status"] in ("starting", "unreachable")
    assert not any(t.startswith(f"rt{unique}/bad/") for t in rec.latest)


async def test_journal_records_every_call(tmp_path: Path, broker: Any, sims: Any, unique: str,
                                          bridge_runner: Any, recorder_factory: Any) -> None:
    from fleetbridge.storage import Store

    sim = await sims()
    rec = await recorder_factory(broker.port, [f"rt{unique}/#"])
    rb = await bridge_runner(write(tmp_path, broker.port, unique, [account("Vans", sim)]))
    imei = answering(sim)
    await rec.wait_for(lambda: f"rt{unique}/vans/{imei}/state" in rec.latest, what="state")
    await rec.publish(f"rt{unique}/vans/{imei}/reboot/set", "PRESS")
    await rec.publish(f"rt{unique}/vans/{imei}/engine_stop/set", "PRESS")  # disabled: rejected, journaled too
    await rec.wait_for(lambda: any(r["status"] == "success" for r in rec.on(f"rt{unique}/vans/{imei}/reboot/result")),
                       what="reboot done")
    await rb.stop()
    rows = {r["service"]: r for r in Store(tmp_path / "fb.db").journal()}
    assert (rows["reboot"]["status"], rows["reboot"]["source"]) == ("success", f"rt{unique}/vans/{imei}/reboot/set")
    assert rows["reboot"]["vendor_ref"] and json.loads(rows["reboot"]["params"]) == {}
    assert rows["engine_stop"]["status"] == "rejected" and "disabled" in rows["engine_stop"]["detail"]


@pytest.mark.parametrize("heartbeat", [0, 1])
async def test_steady_state_is_quiet_except_heartbeats(tmp_path: Path, broker: Any, sims: Any, unique: str,
                                                       bridge_runner: Any, recorder_factory: Any,
                                                       heartbeat: int) -> None:
    sim = await sims()  # the world clock stands still: nothing changes
    rec = await recorder_factory(broker.port, [f"rt{unique}/+/+/state"])
    await bridge_runner(write(tmp_path, broker.port, unique, [account("Vans", sim)], heartbeat=heartbeat))
    topic = f"rt{unique}/vans/{answering(sim)}/state"
    await rec.wait_for(lambda: topic in rec.latest, what="first state")
    before = len(rec.on(topic))
    await asyncio.sleep(3.5)  # three poll cycles
    extra = len(rec.on(topic)) - before
    assert extra == 0 if heartbeat == 0 else extra >= 2, extra


async def test_alarms_are_fetched_while_the_broker_is_away_from_the_start(
        tmp_path: Path, own_broker: Any, sims: Any, unique: str, bridge_runner: Any) -> None:
    """Discovery cannot settle without a broker: the event fetch does not wait for it (it used to
    wait 30 s), the alarms go to the outbox and the cursor moves on."""
    sim = await sims(random_alarm_interval=0)
    imei = answering(sim)
    for n in range(5):
        sim.raise_alarm(imei, 1, at=sim.t - 100 + n)
    own_broker.stop()
    rb = await bridge_runner(write(tmp_path, own_broker.port, unique, [account("Vans", sim, event_interval=1)]))
    await rb.bridge.accounts["vans"].ready.wait()
    loop = asyncio.get_running_loop()
    end = loop.time() + 8
    while loop.time() < end and not rb.bridge.store.outbox(100):
        await asyncio.sleep(0.1)
    stored = [json.loads(row[2]) for row in rb.bridge.store.outbox(100)
              if row[1] == f"rt{unique}/vans/{imei}/event"]
    assert sum(e["event_type"] == "sos" for e in stored) >= 5, stored  # these 5 (and any of the history)
    assert not rb.bridge.mqtt.connected.is_set()


async def test_alarms_raised_while_the_broker_is_down_arrive_once_each(
        tmp_path: Path, own_broker: Any, sims: Any, unique: str, bridge_runner: Any, recorder_factory: Any) -> None:
    """Events wait in the outbox through a broker outage, then go out (32 in flight, the event
    ledger's marker first): every one arrives, none twice."""
    sim = await sims(random_alarm_interval=0)  # the 400 s step below raises no alarm of its own
    await bridge_runner(write(tmp_path, own_broker.port, unique, [account("Vans", sim, event_interval=1)]))
    imei = answering(sim)
    topic = f"rt{unique}/vans/{imei}/event"
    rec = await recorder_factory(own_broker.port, [f"rt{unique}/#"])
    await rec.wait_for(lambda: f"rt{unique}/vans/{imei}/state" in rec.latest, what="first state")
    await rec.stop()

    own_broker.stop()
    # world and server clock 400 s on: the alarms are later than any the bridge has fetched (its cursor)
    sim.clock_offset += 400
    sim.step(400)
    for n in range(120):  # two pages of the alarm list
        sim.raise_alarm(imei, (1, 4, 33)[n % 3], at=sim.t - 399 + 3 * n)
    with sqlite3.connect(tmp_path / "fb.db") as db:  # fetched and stored while the broker is away
        for _ in range(50):
            if db.execute("SELECT count(*) FROM outbox WHERE topic=?", (topic,)).fetchone()[0] >= 120:
                break
            await asyncio.sleep(0.2)
        assert db.execute("SELECT count(*) FROM outbox WHERE topic=?", (topic,)).fetchone()[0] >= 120
    own_broker.start()

    rec = await recorder_factory(own_broker.port, [f"rt{unique}/+/+/event"])

    def raised() -> list[str]:
        return [e["id"] for e in rec.on(topic) if e["event_type"] in ("sos", "vibration", "jamming")]

    await rec.wait_for(lambda: len(set(raised())) >= 120, timeout=90, what="all 120 alarms")
    await asyncio.sleep(2.0)
    assert len(raised()) == len(set(raised())) == 120
