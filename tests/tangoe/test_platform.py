"""TangoePlatform against the simulator (in-process) and, for exact shapes, the scripted vendor."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fleetbridge_plugins.tangoe.platform import TangoePlatform

from fleetbridge.entities import STATE_KEY_BY_NAME, coerce_state
from fleetbridge.errors import AuthFailed, CommandFailed, Rejected, Unreachable
from fleetbridge.events import EVENT_TYPES
from fleetbridge.platform import DeviceInfo, ServiceCall
from fleetbridge.services import SERVICE_BY_NAME

from .conftest import (
    SIM_PASSWORD,
    SIM_SECRET,
    FakeContext,
    Pending,
    load_fixture,
    page,
    sim_config,
)


@pytest.fixture
def start(session, sim_factory):
    """``await start(devices=.., sim_options={}, **config)`` -> (platform set up, sim)."""

    async def go(devices: int = 20, sim_options: dict[str, Any] | None = None, ctx: FakeContext | None = None,
                 sim: Any = None, **config: Any) -> tuple[TangoePlatform, Any]:
        sim = sim or await sim_factory(devices=devices, **(sim_options or {}))
        platform = TangoePlatform(ctx or FakeContext(session, sim_config(sim, **config)))
        await platform.async_setup()
        return platform, sim

    return go


def call_for(service: str, state: dict[str, Any] | None = None) -> ServiceCall:
    return ServiceCall(service=service, params={}, state=state or {}, state_age=1.0, pending=Pending())


def handset_with(sim: Any, carrier: str = "98", status: str = "ACTIVE") -> Any:
    return next(d for d in sim.devices.values() if d.line_id and sim.lines[d.line_id].carrier_id == carrier
                and sim.lines[d.line_id].status == status and d.status == "ACTIVE")


def test_class_contract() -> None:
    assert TangoePlatform.name == "tangoe"
    assert set(TangoePlatform.SERVICES) == {"sim_suspend", "sim_restore"} <= set(SERVICE_BY_NAME)
    assert set(TangoePlatform.EVENT_TYPES) <= set(EVENT_TYPES)
    assert set(TangoePlatform.SECRET_KEYS) == {"password", "client_secret"}


async def test_setup_reads_me_and_info_shows_who_we_act_as(start) -> None:
    platform, sim = await start()
    info = platform.info()
    assert info["user"] == "Fleet Bridge" and info["actor"] == "Fleet Bridge"
    assert {"SUSPEND", "UNSUSPEND"} <= set(info["transaction_types"])
    assert info["backend"] == "Command (Premium Mobile)" and info["tenant"] == "ACME"
    assert 3000 < info["token_expires_in_s"] <= 3599
    text = json.dumps(info)
    assert SIM_PASSWORD not in text and SIM_SECRET not in text
    assert sim.request_counts["GET /me"] == 1


async def test_setup_without_urls_is_a_clear_auth_failure(session) -> None:
    config = TangoePlatform.CONFIG_SCHEMA({"platform": "tangoe", "name": "P", "tenant": "A", "client_id": "c",
                                           "client_secret": "s", "username": "u", "password": "p",
                                           "base_url": "https://x.example.test"})
    with pytest.raises(AuthFailed, match="token_url"):
        await TangoePlatform(FakeContext(session, config)).async_setup()


@pytest.mark.parametrize(("config", "text"), [({"tenant": "OTHER"}, "tenant"),
                                              ({"context_employee_id": "1"}, "employee 1"),
                                              ({"password": "wrong"}, "password grant")])
async def test_refused_setup_is_auth_failed(start, config, text) -> None:
    with pytest.raises(AuthFailed, match=text):
        await start(**config)


async def test_discovery_maps_each_handset_and_its_line(start) -> None:
    platform, sim = await start(devices=80)
    infos = {i.id: i for i in await platform.async_discover()}
    assert set(infos) == set(sim.devices)
    asset = handset_with(sim)
    line, emp = sim.lines[asset.line_id], sim.employees[asset.employee_id]
    info = infos[asset.id]
    assert info.model == asset.model and info.manufacturer == asset.manufacturer
    assert info.name == f"{asset.model} ({emp.first} {emp.last})"
    assert info.identifiers == {"tangoe_device": asset.id, "imei": asset.imei, "msisdn": line.number,
                                "tangoe_service": line.id}
    assert info.suggested_area == emp.department[1]
    assert info.services == ("sim_suspend", "sim_restore")
    assert {"line_status", "plan", "carrier", "assigned_to", "open_orders", "imei", "msisdn", "sim_state"} <= info.keys
    assert all(k in STATE_KEY_BY_NAME for k in info.keys)
    spare = next(d for d in sim.devices.values() if d.status == "INVENTORY")
    assert infos[spare.id].services == () and "line_status" not in infos[spare.id].keys


async def test_poll_state_of_a_handset(start) -> None:
    platform, sim = await start(devices=80)
    infos = await platform.async_discover()
    states = await platform.async_poll(infos)
    asset = handset_with(sim, "99")
    line, emp = sim.lines[asset.line_id], sim.employees[asset.employee_id]
    state = states[asset.id]
    assert coerce_state(state) == state
    assert state["lifecycle_state"] == "active" and state["imei"] == asset.imei
    assert state["assigned_to"] == f"{emp.first} {emp.last}"
    assert (state["msisdn"], state["carrier"], state["plan"]) == (line.number, "AT&T Mobility", line.plan)
    assert (state["line_status"], state["sim_state"]) == ("active", "active")
    assert state["attributes"]["employee_id"] == emp.id and state["attributes"]["service_id"] == line.id
    lost = next(d for d in sim.devices.values() if d.status == "LOST")
    assert states[lost.id]["sim_state"] == "suspended" and states[lost.id]["lifecycle_state"] == "lost"


async def test_details_are_fetched_only_for_records_that_lack_what_entities_need(start) -> None:
    platform, sim = await start(devices=60, sim_options={"sparse": 0.2})
    sparse = {d.id for d in sim.devices.values() if d.sparse}
    assert sparse
    infos = {i.id: i for i in await platform.async_discover()}
    assert sim.request_counts["GET /assets/devices/{id}"] == len(sparse)
    assert all(infos[i].identifiers["imei"] == sim.devices[i].imei for i in sparse)
    await platform.async_poll(list(infos.values()))
    await platform.async_discover()
    assert sim.request_counts["GET /assets/devices/{id}"] == len(sparse)  # cached


async def test_a_poll_right_after_discovery_reuses_its_sweep(start) -> None:
    platform, sim = await start(devices=10)
    infos = await platform.async_discover()
    before = sim.request_counts["GET /assets/devices"]
    await platform.async_poll(infos)
    assert sim.request_counts["GET /assets/devices"] == before
    await platform.async_poll(infos)
    assert sim.request_counts["GET /assets/devices"] > before


async def test_context_employee_narrows_what_is_returned(start, sim_factory) -> None:
    sim = await sim_factory(devices=80)
    asset = handset_with(sim)
    platform, _ = await start(sim=sim, context_employee_id=asset.employee_id)
    ids = {i.id for i in await platform.async_discover()}
    assert asset.id in ids
    assert ids == {d.id for d in sim.devices.values() if d.employee_id == asset.employee_id}
    assert platform.info()["actor"] == "{0.first} {0.last}".format(sim.employees[asset.employee_id])


async def test_no_sim_services_when_me_does_not_allow_them(start) -> None:
    platform, _ = await start(sim_options={"transaction_types": ["UPGRADE", "SUSPEND"]})
    infos = await platform.async_discover()
    assert {i.services for i in infos} <= {("sim_suspend",), ()}
    with pytest.raises(Rejected, match="UNSUSPEND"):
        await platform.async_call(next(i for i in infos if i.services), call_for("sim_restore"))


async def test_a_device_missing_from_one_sweep_is_kept_then_dropped(start) -> None:
    platform, sim = await start(devices=10)
    await platform.async_discover()
    gone = sim.device_order.pop(3)
    assert gone in {i.id for i in await platform.async_discover()}
    assert gone not in {i.id for i in await platform.async_discover()}


# --- orders as events ---------------------------------------------------------------------------------

async def events_after(platform: TangoePlatform, infos: list[DeviceInfo], cursor: Any) -> tuple[list[Any], Any]:
    return await platform.async_fetch_events(infos, cursor)


async def test_order_status_changes_are_one_event_each_and_open_orders_counted(start) -> None:
    platform, sim = await start(devices=80, sim_options={"initial_orders": False})
    infos = await platform.async_discover()
    asset = handset_with(sim)
    events, cursor = await platform.async_fetch_events(infos, None)
    assert events == []  # the first run is a baseline
    order = sim.create_order(asset.id, "UPGRADE")
    events, cursor = await platform.async_fetch_events(infos, cursor)
    assert [(e.device_id, e.event_type) for e in events] == [(asset.id, "orderCreated")]
    assert events[0].data["order_id"] == order.id and events[0].data["transaction_type"] == "UPGRADE"
    states = await platform.async_poll(infos)
    assert states[asset.id]["open_orders"] == 1
    assert sum(s.get("open_orders", 0) for s in states.values()) == 1
    sim.set_order_status(order.id, "SHIPPED")
    events, cursor = await platform.async_fetch_events(infos, cursor)
    assert [(e.event_type, e.data["previous_status"]) for e in events] == [("orderShipped", "ORDER_SUBMITTED")]
    again, cursor = await platform.async_fetch_events(infos, cursor)
    assert again == []
    sim.set_order_status(order.id, "COMPLETED")
    events, cursor = await platform.async_fetch_events(infos, cursor)
    assert [e.event_type for e in events] == ["orderCompleted"]
    assert (await platform.async_poll(infos))[asset.id]["open_orders"] == 0


# --- services ------------------------------------------------------------------------------------------

async def test_suspend_dry_run_then_order_then_success(start) -> None:
    platform, sim = await start(devices=80, sim_options={"initial_orders": False, "order_delay": (5, 5)})
    infos = {i.id: i for i in await platform.async_discover()}
    asset = handset_with(sim, "98")
    line = sim.lines[asset.line_id]
    call = call_for("sim_suspend", {"sim_state": "active"})
    result = await platform.async_call(infos[asset.id], call)
    [dry, placed] = call.pending.calls
    assert dry["detail"].startswith(f"dry run ok: SUSPEND of line {line.number} for ") and dry["vendor_ref"] is None
    [order] = sim.orders.values()
    assert placed == {"detail": f"order {order.id} placed (order_submitted)", "vendor_ref": order.id}
    assert result.status == "pending" and order.id in result.detail
    assert len(sim.dry_runs) == 1 and order.transaction == "SUSPEND"
    fields = {f["id"]: f for g in order.properties for f in g["fields"]}
    assert fields["SERVICE_NUMBER"]["text"] == line.number
    assert fields["PREFERRED_SUSPENSION_DATE"]["date"].endswith("T00:00:00+00:00")
    _, cursor = await platform.async_fetch_events(list(infos.values()), None)
    assert platform.ctx.resolved == []
    sim.step(11)
    events, _ = await platform.async_fetch_events(list(infos.values()), cursor)
    platform._inflight.clear()
    events, _ = await platform.async_fetch_events(list(infos.values()), cursor)
    assert [e.event_type for e in events] == ["simSuspended"]
    assert platform.ctx.resolved == [(order.id, "success", f"order {order.id} completed: SUSPEND done")]
    await platform.async_poll(list(infos.values()))  # reuses the discovery's sweep
    states = await platform.async_poll(list(infos.values()))
    assert states[asset.id]["sim_state"] == "suspended"
    assert platform.ctx.kv["placed_orders"] == {}


async def test_unsuspend_fills_the_user_choice_from_the_assigned_employee(start) -> None:
    platform, sim = await start(devices=80)
    infos = {i.id: i for i in await platform.async_discover()}
    asset = next(d for d in sim.devices.values() if d.status == "LOST")
    await platform.async_call(infos[asset.id], call_for("sim_restore", {"sim_state": "suspended"}))
    order = next(o for o in sim.orders.values() if o.transaction == "UNSUSPEND")
    fields = {f["id"]: f for g in order.properties for f in g["fields"]}
    assert fields["USER"]["choice"]["id"] == sim.employees[asset.employee_id].company_id


async def test_required_property_we_cannot_fill_is_rejected_before_any_order(start) -> None:
    platform, sim = await start(devices=80)
    infos = {i.id: i for i in await platform.async_discover()}
    asset = handset_with(sim, "100")  # T-Mobile wants a contact number
    with pytest.raises(Rejected, match="CONTACT_NUMBER.*order_properties"):
        await platform.async_call(infos[asset.id], call_for("sim_suspend"))
    assert sim.request_counts["POST /orders"] == 0
    platform.config["order_properties"] = {"CONTACT_NUMBER": "2035550199"}
    assert (await platform.async_call(infos[asset.id], call_for("sim_suspend"))).status == "pending"


async def test_pointless_or_duplicate_calls_are_rejected_without_a_vendor_call(start) -> None:
    platform, sim = await start(devices=80)
    infos = {i.id: i for i in await platform.async_discover()}
    asset = handset_with(sim, "98")
    with pytest.raises(Rejected, match="already suspended"):
        await platform.async_call(infos[asset.id], call_for("sim_suspend", {"sim_state": "suspended"}))
    await platform.async_call(infos[asset.id], call_for("sim_suspend", {"sim_state": "active"}))
    before = sim.request_counts.copy()
    with pytest.raises(Rejected, match="still open"):
        await platform.async_call(infos[asset.id], call_for("sim_restore", {}))
    assert sim.request_counts == before


async def test_vendor_refusal_of_the_dry_run_is_command_failed(start) -> None:
    platform, sim = await start(devices=80)
    infos = {i.id: i for i in await platform.async_discover()}
    asset = handset_with(sim, "98")  # an active line: UNSUSPEND is refused by the dry run
    with pytest.raises(CommandFailed, match="needs an SUSPENDED service"):
        await platform.async_call(infos[asset.id], call_for("sim_restore"))
    assert sim.orders == {} or all(o.transaction != "UNSUSPEND" for o in sim.orders.values())


async def test_a_lost_answer_is_found_by_external_order_number(start, monkeypatch) -> None:
    platform, sim = await start(devices=80, sim_options={"initial_orders": False})
    infos = {i.id: i for i in await platform.async_discover()}
    real = platform.api.submit_order

    async def lossy(request: Any, *, confirm: bool) -> Any:
        answer = await real(request, confirm=confirm)
        if not confirm:
            raise Unreachable("POST /orders: timed out")
        return answer

    monkeypatch.setattr(platform.api, "submit_order", lossy)
    call = call_for("sim_suspend")
    result = await platform.async_call(infos[handset_with(sim, "98").id], call)
    [order] = sim.orders.values()
    assert result.status == "pending" and call.pending.calls[-1]["vendor_ref"] == order.id
    assert sim.request_counts["POST /orders"] == 2  # the dry run and one order: never re-sent


async def test_follow_after_restart_keeps_pending_and_the_order_poll_resolves(start, session) -> None:
    platform, sim = await start(devices=80, sim_options={"initial_orders": False, "order_delay": (5, 5)})
    infos = {i.id: i for i in await platform.async_discover()}
    asset = handset_with(sim, "98")
    await platform.async_call(infos[asset.id], call_for("sim_suspend"))
    [order] = sim.orders.values()
    ctx = FakeContext(session, platform.config)
    ctx.kv = {"placed_orders": {}}  # even without our own record of the order
    restarted, _ = await start(sim=sim, ctx=ctx)
    devices = await restarted.async_discover()
    result = await restarted.async_follow(infos[asset.id], "sim_suspend", order.id)
    assert result.status == "pending"
    sim.step(11)
    await restarted.async_fetch_events(devices, None)
    assert ctx.resolved == [(order.id, "success", f"order {order.id} completed: SUSPEND done")]


async def test_a_rejected_carrier_order_fails_the_call(start) -> None:
    platform, sim = await start(devices=80, sim_options={"initial_orders": False, "order_fail_rate": 1.0,
                                                         "order_delay": (1, 1)})
    infos = {i.id: i for i in await platform.async_discover()}
    await platform.async_call(infos[handset_with(sim, "98").id], call_for("sim_suspend"))
    [order] = sim.orders.values()
    platform._inflight.clear()
    sim.step(5)
    await platform.async_fetch_events(list(infos.values()), {"orders": {}})
    assert platform.ctx.resolved == [(order.id, "failed", f"order {order.id} rejected")]


# --- exact shapes on the scripted vendor ----------------------------------------------------------------

async def test_fixture_shapes_map_to_state(make_platform, vendor) -> None:
    vendor.on("GET", "/me", load_fixture("me.json"))
    vendor.on("GET", "/assets/devices", page("devices", load_fixture("devices.json"), limit=3))
    vendor.on("GET", "/assets/services", page("services", load_fixture("services.json")))
    vendor.on("GET", "/assets/devices/5100002", load_fixture("device_detail.json"))
    platform = await make_platform()
    infos = {i.id: i for i in await platform.async_discover()}
    assert len(vendor.to("/assets/devices/5100002")) == 1  # the one list record without an IMEI
    assert [c.path for c in vendor.api_calls if c.path.startswith("/assets/devices/")] == ["/assets/devices/5100002"]
    assert infos["5100002"].identifiers["imei"] == "350938122222224"
    assert infos["5100002"].identifiers["msisdn"] == "2125550102"
    states = await platform.async_poll(list(infos.values()))
    assert states["5100001"] == {
        "lifecycle_state": "active", "imei": "354071151234563", "assigned_to": "Barbara Andrews",
        "msisdn": "2035550101", "carrier": "Verizon Wireless", "plan": "Business Unlimited",
        "line_status": "active", "sim_state": "active", "iccid": "89014103211118510720",
        "attributes": {"employee_id": "48068931", "company_employee_id": "barbara.andrews@example.com",
                       "department": "Marketing", "service_id": "31647001", "carrier_id": "98"},
    }
    assert states["5100002"]["sim_state"] == "suspended"
    assert states["5100003"] == {"lifecycle_state": "inventory", "imei": "358909171111116"}


async def test_fixture_suspend_order_request(make_platform, vendor, clock) -> None:
    vendor.on("GET", "/me", load_fixture("me.json"))
    vendor.on("GET", "/orders/properties", load_fixture("properties_suspend.json"))
    vendor.on("POST", "/orders", lambda c: load_fixture("order_confirmation.json")
              if c.query["confirm"] == "true" else load_fixture("order_submitted.json"))
    platform = await make_platform()
    device = DeviceInfo(id="5100001", name="x", keys=frozenset(), attributes={
        "service_id": "31647001", "service_number": "2035550101", "employee_id": "48068931",
        "company_employee_id": "barbara.andrews@example.com"})
    call = call_for("sim_suspend")
    await platform.async_call(device, call)
    assert vendor.to("/orders/properties")[0].query == {"transactionType": "SUSPEND", "service": "31647001"}
    dry, real = vendor.to("/orders", "POST")
    assert dry.query == {"confirm": "true"} and real.query == {"confirm": "false"}
    assert dry.body == real.body
    request = real.body["orderRequest"]
    assert request["transactionType"] == "SUSPEND" and request["serviceId"] == "31647001"
    assert request["externalOrderNumber"].startswith("FB-")
    assert request["properties"] == [{"groupId": "MISCELLANEOUS", "fields": [
        {"id": "SERVICE_NUMBER", "type": "TEXT", "text": "2035550101"},
        {"id": "ADDITIONAL_INSTRUCTIONS", "type": "TEXT", "text": "Requested through fleetbridge"},
        {"id": "HOLD_SERVICE", "type": "CHOICE", "choice": {"id": "barbara.andrews@example.com"}},
        {"id": "PREFERRED_SUSPENSION_DATE", "type": "DATE", "date": "2027-01-15T00:00:00+00:00"},
    ]}]
    assert call.pending.calls == [
        {"detail": "dry run ok: SUSPEND of line 2035550101 for Barbara Andrews", "vendor_ref": None},
        {"detail": "order 8054740 placed (order_submitted)", "vendor_ref": "8054740"},
    ]
    assert platform.ctx.kv["placed_orders"]["8054740"]["device"] == "5100001"


async def test_an_unknown_outcome_is_timeout_never_a_resubmission(start, monkeypatch) -> None:
    platform, sim = await start(devices=80, sim_options={"initial_orders": False})
    infos = {i.id: i for i in await platform.async_discover()}
    real = platform.api.submit_order

    async def lossy(request: Any, *, confirm: bool) -> Any:
        answer = await real(request, confirm=confirm)
        if not confirm:
            sim.faults.http_500 = 5  # the lookup fails too
            raise Unreachable("POST /orders: timed out")
        return answer

    monkeypatch.setattr(platform.api, "submit_order", lossy)
    result = await platform.async_call(infos[handset_with(sim, "98").id], call_for("sim_suspend"))
    assert result.status == "timeout" and "unknown whether order FB-" in result.detail
    assert sim.request_counts["POST /orders"] == 2
