"""End to end: Tangoe simulator -> the real bridge -> real mosquitto -> a subscriber."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleetbridge_plugins.tangoe.simulator import API_PREFIX, TOKEN_PATH

from .conftest import SIM_CLIENT, SIM_PASSWORD, SIM_SECRET, SIM_USER, TENANT

pytestmark = pytest.mark.e2e

ACCOUNT = "phones"


def config_for(tmp_path: Path, broker: Any, sim: Any, unique: str, **account: Any) -> Path:
    data = {
        "platform": "tangoe", "name": "Phones", "base_url": sim.url + API_PREFIX, "token_url": sim.url + TOKEN_PATH,
        "tenant": TENANT, "client_id": SIM_CLIENT, "client_secret": SIM_SECRET, "username": SIM_USER,
        "password": SIM_PASSWORD, "scan_interval": 1, "event_interval": 1, "page_size": 100,
        "services": {"sim_suspend": True}, "order_properties": {"CONTACT_NUMBER": "2035550199"}, **account,
    }
    mqtt = {"host": "127.0.0.1", "port": broker.port, "base_topic": f"fb{unique}", "discovery_prefix": f"ha{unique}",
            "client_id": f"fb-{unique}"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"mqtt": mqtt, "storage": str(tmp_path / "fb.db"), "accounts": [data]},
                                   sort_keys=False))
    return path


async def run(tmp_path: Path, broker: Any, sim: Any, unique: str, bridge_runner: Any, recorder_factory: Any,
              **account: Any) -> tuple[Any, str]:
    """Start the bridge; wait until every handset's state is on the broker."""
    rec = await recorder_factory(broker.port, [f"fb{unique}/#", f"ha{unique}/#"])
    await bridge_runner(config_for(tmp_path, broker, sim, unique, **account))
    base = f"fb{unique}/{ACCOUNT}"
    expected = {f"{base}/{d}/state" for d in list(sim.devices)}
    await rec.wait_for(lambda: expected <= rec.latest.keys(), timeout=30, what="a state per handset")
    return rec, base


def handset(sim: Any, carrier: str = "98") -> Any:
    return next(d for d in sim.devices.values() if d.status == "ACTIVE" and d.line_id
                and sim.lines[d.line_id].carrier_id == carrier and sim.lines[d.line_id].status == "ACTIVE")


async def test_2000_assets_appear_once_each_while_pages_shift(tmp_path, broker, sim_factory, unique, bridge_runner,
                                                              recorder_factory) -> None:
    sim = await sim_factory(devices=2000, initial_orders=False)
    assert sim.offset_mode == "premium"
    originals = set(sim.devices)
    sim.faults.shift = 6  # six new assets land at the front while the sweeps page through
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory)
    assert sim.faults.shift == 0 and sim.request_counts["GET /assets/devices"] >= 20
    devices = rec.json(f"fb{unique}/bridge/devices")
    ids = [d["vendor_id"] for d in devices if d["account"] == ACCOUNT]
    assert len(ids) == len(set(ids)), "a handset was listed twice"
    assert originals <= set(ids)
    assert not [d for d in devices if d["id"].endswith("_2")]  # the host de-duplicates slugs like this
    configs = [t for t in rec.latest if t.startswith(f"ha{unique}/device/{ACCOUNT}_")]
    assert len(configs) == len(set(ids))
    asset = handset(sim)
    line, emp = sim.lines[asset.line_id], sim.employees[asset.employee_id]
    state = rec.json(f"{base}/{asset.id}/state")
    assert (state["assigned_to"], state["msisdn"], state["line_status"]) == (f"{emp.first} {emp.last}",
                                                                             line.number, "active")
    cmps = rec.json(f"ha{unique}/device/{ACCOUNT}_{asset.id}/config")["cmps"]
    assert {"line_status", "assigned_to", "plan", "carrier", "lifecycle_state", "open_orders", "sim"} <= set(cmps)
    # the sweep's end (status ok) is published just after its last states
    await rec.wait_for(lambda: rec.json(f"fb{unique}/bridge/info")["accounts"][ACCOUNT]["status"] == "ok",
                       what="status ok")
    info = rec.json(f"fb{unique}/bridge/info")["accounts"][ACCOUNT]
    assert info["platform_info"]["user"] == "Fleet Bridge"
    assert SIM_PASSWORD not in json.dumps(info) and SIM_SECRET not in json.dumps(info)


async def test_expired_token_mid_sweep_is_refreshed_and_the_sweep_completes(tmp_path, broker, sim_factory, unique,
                                                                           bridge_runner, recorder_factory) -> None:
    sim = await sim_factory(devices=400, initial_orders=False)
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory)
    last = sim.lines[sim.line_order[-1]]  # on the sweep's last page
    assert sim.grant_counts == {"password": 1}
    sim.faults.expire_in = 3  # the third request of the next sweep finds its token expired
    last.status = "SUSPENDED"
    topic = f"{base}/{last.device_id}/state"
    await rec.wait_for(lambda: rec.json(topic).get("line_status") == "suspended", timeout=15,
                       what="the change on the sweep's last page")
    assert sim.status_counts[401] >= 1
    assert sim.grant_counts["refresh_token"] >= 1 and sim.grant_counts["password"] == 1
    info = rec.json(f"fb{unique}/bridge/info")["accounts"][ACCOUNT]
    assert info["status"] == "ok" and info["errors"] == {}


async def test_an_order_advancing_to_shipped_is_one_event(tmp_path, broker, sim_factory, unique, bridge_runner,
                                                          recorder_factory) -> None:
    sim = await sim_factory(devices=50, initial_orders=False)
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory)
    asset = handset(sim)
    events = f"{base}/{asset.id}/event"
    await rec.wait_for(lambda: sim.request_counts["GET /orders"], what="the first order poll (a baseline)")
    order = sim.create_order(asset.id, "UPGRADE")
    await rec.wait_for(lambda: any(e["event_type"] == "orderCreated" for e in rec.on(events)), what="orderCreated")
    await rec.wait_for(lambda: rec.json(f"{base}/{asset.id}/state").get("open_orders") == 1, what="open_orders 1")
    sim.set_order_status(order.id, "SHIPPED")
    await rec.wait_for(lambda: any(e["event_type"] == "orderShipped" for e in rec.on(events)), what="orderShipped")
    await asyncio.sleep(1.5)  # more order polls: the status is unchanged and must not repeat
    shipped = [e for e in rec.on(events) if e["event_type"] == "orderShipped"]
    assert len(shipped) == 1
    assert shipped[0]["order_id"] == order.id and shipped[0]["transaction_type"] == "UPGRADE"
    assert shipped[0]["previous_status"] == "ORDER_SUBMITTED"
    assert [e["event_type"] for e in rec.on(events)] == ["orderCreated", "orderShipped"]


async def test_suspend_via_the_sim_switch_reports_dry_run_order_and_success(tmp_path, broker, sim_factory, unique,
                                                                             bridge_runner, recorder_factory) -> None:
    sim = await sim_factory(devices=50, initial_orders=False, order_delay=(3600, 3600))
    rec, base = await run(tmp_path, broker, sim, unique, bridge_runner, recorder_factory)
    asset = handset(sim, "99")
    results = f"{base}/{asset.id}/sim_suspend/result"
    await rec.publish(f"{base}/{asset.id}/sim/set", "OFF")
    await rec.wait_for(lambda: any("placed" in r["detail"] for r in rec.on(results)), what="order placed")
    [order] = sim.orders.values()
    assert order.transaction == "SUSPEND" and order.line_id == asset.line_id
    sim.set_order_status(order.id, "COMPLETED")
    await rec.wait_for(lambda: any(r["status"] == "success" for r in rec.on(results)), what="success")
    statuses = [(r["status"], r["detail"]) for r in rec.on(results)]
    assert statuses[0][0] == "pending" and statuses[0][1].startswith("dry run ok: SUSPEND of line")
    assert ("pending", f"order {order.id} placed (order_submitted)") in statuses
    assert statuses[-1] == ("success", f"order {order.id} completed: SUSPEND done")
    assert [s for s, _ in statuses].count("success") == 1
    await rec.wait_for(lambda: rec.json(f"{base}/{asset.id}/state").get("sim_state") == "suspended",
                       what="sim_state suspended")
    await rec.wait_for(lambda: any(e["event_type"] == "simSuspended" for e in rec.on(f"{base}/{asset.id}/event")),
                       what="simSuspended")
