"""End to end: Lattigo simulator -> bridge -> real mosquitto -> a subscriber."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from fleetbridge_plugins.lattigo.simulator import Simulator, create_app

pytestmark = pytest.mark.e2e

KEY, SECRET = "fleet-key", "Lattigo-api-key-0731"
LIST = "/v2/devices"


@pytest.fixture
async def start_sim() -> AsyncIterator[Callable[..., Any]]:
    """``await start_sim(devices, **options)``: an in-process simulator on 127.0.0.1 whose world follows the clock."""
    servers: list[TestServer] = []

    async def start(devices: int = 8, **options: Any) -> Simulator:
        options = {"tick": 0.05, "carrier_delay": (0.3, 0.6), "sms_delay": (0.1, 0.3), **options}
        app = create_app(accounts={KEY: SECRET}, devices=devices, seed=11, **options)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        sim = app["sim"]
        sim.url = str(server.make_url("")).rstrip("/")
        return sim

    yield start
    for server in servers:
        await server.close()


def write_config(tmp_path: Path, broker: Any, sim: Simulator, unique: str, **account: Any) -> Path:
    data = {
        "platform": "lattigo", "name": "SIMs", "base_url": sim.url, "key_name": KEY, "api_key": SECRET,
        "scan_interval": 1, "rate_limits": {"list": 0, "device": 0, "operation": 0},
        "usage_interval": 0, "report_interval": 0, "batch_window": 0.05,
        "sms_status_interval": 0.2, "sms_status_attempts": 15, "services": {"sim_suspend": True},
        **account,
    }
    mqtt = {"host": "127.0.0.1", "port": broker.port, "base_topic": f"fb{unique}", "discovery_prefix": f"ha{unique}",
            "client_id": f"fb-{unique}"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"mqtt": mqtt, "storage": str(tmp_path / "fb.db"), "accounts": [data]},
                                   sort_keys=False))
    return path


async def run(tmp_path: Path, broker: Any, sim: Simulator, unique: str, bridge_runner: Any, recorder_factory: Any,
              **account: Any) -> tuple[Any, str]:
    """Start the bridge; return the recorder once every device has a state."""
    rec = await recorder_factory(broker.port, [f"fb{unique}/#", f"ha{unique}/#"])
    await bridge_runner(write_config(tmp_path, broker, sim, unique, **account))
    base = f"fb{unique}/sims"
    await rec.wait_for(lambda: sum(1 for t in rec.latest if t.startswith(base) and t.endswith("/state"))
                       == len(sim.devices), timeout=20, what="a state per device")
    return rec, base


def results(rec: Any, topic: str) -> list[str]:
    return [r["status"] for r in rec.on(topic)]


def first_active(sim: Simulator) -> str:
    return next(n for n, d in sim.devices.items() if d.state == "active" and d.connected and d.sms_capable)


async def test_a_thousand_devices_in_the_minimum_number_of_requests(tmp_path, broker, start_sim, unique,
                                                                    bridge_runner, recorder_factory) -> None:
    # no usage added at a 5-minute boundary between the listing and the comparison below
    sim = await start_sim(devices=1000, per_page=25, max_per_page=100, usage_granularity=10**9)
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory, scan_interval=60)
    pages = math.ceil(1000 / 100)  # the client asks for 500 per page; the server allows 100
    assert sim.request_counts[LIST] == pages  # discovery and the first poll share one sweep
    assert sum(sim.request_counts.values()) == pages  # and nothing per device
    name = next(iter(sim.devices))
    state = rec.json(f"{base}/{name}/state")
    truth = sim.devices[name]
    assert (state["iccid"], state["data_used"], state["sim_state"]) == (name, truth.bytes_used, "active")
    info = rec.json(f"fb{unique}/bridge/info")["accounts"]["sims"]
    assert info["status"] == "ok" and info["platform_info"]["list_requests"] == pages
    assert SECRET not in json.dumps(info)


async def test_discovery_shows_connectivity_usage_sim_switch_and_sms(tmp_path, broker, start_sim, unique,
                                                                     bridge_runner, recorder_factory) -> None:
    sim = await start_sim(usage_granularity=1)
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory, usage_interval=60,
                          report_interval=60)
    name = next(iter(sim.devices))  # the simulator's reference device: GPS reports, VDF, a position
    config = rec.json(f"ha{unique}/device/sims_{name}/config")
    cmps = config["cmps"]
    assert cmps["online"]["p"] == "binary_sensor" and cmps["online"]["dev_cla"] == "connectivity"
    assert cmps["data_used"]["unit_of_meas"] == "B" and "data_used_month" in cmps
    assert cmps["sim"]["p"] == "switch" and cmps["sim"]["cmd_t"] == f"{base}/{name}/sim/set"
    assert cmps["send_sms"]["p"] == "text" and cmps["location"]["p"] == "device_tracker"
    assert "terminate" not in cmps and "locate" not in cmps, " ".join(sorted(cmps))
    assert config["dev"]["mf"] == "OptConnect" and config["dev"]["ids"] == [f"sims_{name}"]

    def extras_arrived() -> bool:
        state = rec.json(f"{base}/{name}/state")
        return "data_used_today" in state and "signal" in state

    await rec.wait_for(extras_arrived, what="usage and device reports")
    state = rec.json(f"{base}/{name}/state")
    assert {"online", "last_seen", "sim_state", "ip_address", "attributes", "latitude", "gps_time"} <= set(state)


async def test_sim_switch_off_suspends_and_on_restores(tmp_path, broker, start_sim, unique, bridge_runner,
                                                       recorder_factory) -> None:
    sim = await start_sim()
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory)
    name = first_active(sim)
    await rec.publish(f"{base}/{name}/sim/set", "OFF")
    suspend = f"{base}/{name}/sim_suspend/result"
    await rec.wait_for(lambda: "success" in results(rec, suspend), timeout=15, what="suspend confirmed")
    assert results(rec, suspend)[0] == "pending" and results(rec, suspend)[-1] == "success"
    assert sim.devices[name].state == "suspend"
    await rec.wait_for(lambda: rec.json(f"{base}/{name}/state").get("sim_state") == "suspended", what="sim_state")
    assert rec.json(f"{base}/{name}/state")["online"] is False  # the switch template reads OFF now
    assert sim.request_counts["/v2/device_operations/change_simstate"] == 1
    await rec.publish(f"{base}/{name}/sim/set", "ON")
    restore = f"{base}/{name}/sim_restore/result"
    await rec.wait_for(lambda: "success" in results(rec, restore), timeout=15, what="restore confirmed")
    await rec.wait_for(lambda: rec.json(f"{base}/{name}/state").get("sim_state") == "active", what="active again")


async def test_an_sms_from_home_assistant_ends_in_a_result(tmp_path, broker, start_sim, unique, bridge_runner,
                                                           recorder_factory) -> None:
    sim = await start_sim()
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory)
    name = first_active(sim)
    await rec.publish(f"{base}/{name}/send_sms/set", "Reboot at 02:00")
    topic = f"{base}/{name}/send_sms/result"
    await rec.wait_for(lambda: len(results(rec, topic)) >= 2, timeout=10, what="a final SMS result")
    final = rec.on(topic)[-1]
    assert results(rec, topic) == ["pending", "success"], rec.on(topic)
    assert final["detail"].startswith("SMS DELIVERED")  # the reference device is on VDF: a delivery report
    assert sim.devices[name].sms[-1]["message_body"] == "Reboot at 02:00"


async def test_terminate_without_confirmation_never_reaches_the_vendor(tmp_path, broker, start_sim, unique,
                                                                       bridge_runner, recorder_factory) -> None:
    sim = await start_sim(devices=3)
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory,
                          services={"sim_suspend": True, "terminate": True})
    name = first_active(sim)

    def vendor_calls() -> int:
        return sum(n for path, n in sim.request_counts.items() if path != LIST)

    before = vendor_calls()
    topic = f"{base}/{name}/terminate/result"
    payloads = ["PRESS", "{}", '{"confirm": "someone else"}', "", name[:-1]]
    for count, payload in enumerate(payloads, start=1):
        await rec.publish(f"{base}/{name}/terminate/set", payload)
        await rec.wait_for(lambda n=count: len(rec.on(topic)) == n, what=f"a result for {payload!r}")
    assert results(rec, topic) == ["rejected"] * len(payloads)
    assert vendor_calls() == before and sim.devices[name].state == "active"


async def test_confirmed_terminate_checks_the_fee_first(tmp_path, broker, start_sim, unique, bridge_runner,
                                                        recorder_factory) -> None:
    sim = await start_sim(devices=3)
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory,
                          services={"terminate": True})
    name = first_active(sim)
    await rec.publish(f"{base}/{name}/terminate/set", name)
    topic = f"{base}/{name}/terminate/result"
    await rec.wait_for(lambda: "success" in results(rec, topic), what="terminated")
    assert "early termination fee" in rec.on(topic)[-1]["detail"]
    assert sim.request_counts["/v2/devices/{name}/calculate_etf"] == 1
    assert sim.request_counts["/v2/device_operations/terminate_service"] == 1


async def test_a_429_storm_loses_nothing(tmp_path, broker, start_sim, unique, bridge_runner,
                                         recorder_factory) -> None:
    sim = await start_sim()
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory)
    name = first_active(sim)
    sim.faults.update({"rate_limit": 6, "retry_after": 0.2})  # more than the 1 + 3 tries of one poll
    sim.devices[name].note = "after the storm"
    topic = f"{base}/{name}/state"
    await rec.wait_for(lambda: rec.json(topic).get("attributes", {}).get("note") == "after the storm", timeout=15,
                       what="the state after the storm")
    assert sim.faults.rate_limit == 0
    statuses = [json.loads(p)["accounts"]["sims"]["status"] for t, p, _ in rec.messages
                if t == f"fb{unique}/bridge/info"]
    assert "rate_limited" in statuses  # the host saw it, slowed down and polled again
    await rec.wait_for(lambda: rec.json(f"fb{unique}/bridge/info")["accounts"]["sims"]["status"] == "ok",
                       what="back to ok")
