"""LattigoPlatform: discovery, state mapping, usage/report/plan refreshes, services (exact request shapes),
batching, SIM changes confirmed later, safety rules."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetbridge.entities import STATE_KEY_BY_NAME, coerce_state
from fleetbridge.errors import AuthFailed, CommandFailed, RateLimited, Rejected
from fleetbridge.platform import DeviceInfo, ServiceCall
from fleetbridge.services import SERVICE_BY_NAME
from fleetbridge_plugins.lattigo.mapping import REPORT_KEYS, USAGE_KEYS
from fleetbridge_plugins.lattigo.platform import LattigoPlatform, Rotation
from fleetbridge_plugins.lattigo.sims import SimChange, SimWatcher

from .conftest import API_KEY, BASE, ICCID_A, ICCID_B, ICCID_C, KEY_NAME, NOW, Reply, load_fixture, paged

DEVICES = "/v2/devices"
SIMSTATE = "/v2/device_operations/change_simstate"
SEND_SMS = "/v2/device_operations/send_sms"
TODAY = {"start_date": "2026-12-02", "end_date": "2026-12-02"}


def device(name: str = ICCID_A) -> DeviceInfo:
    return DeviceInfo(id=name, name=name, keys=frozenset())


class Pending:
    """Records ``call.pending`` invocations."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, detail: str = "", vendor_ref: str | None = None) -> None:
        self.calls.append({"detail": detail, "vendor_ref": vendor_ref})


def service_call(service: str, params: dict[str, Any] | None = None) -> ServiceCall:
    return ServiceCall(service=service, params=params or {}, state={}, state_age=5, pending=Pending())


def listing(vendor, *pages: Any) -> None:
    vendor.on("GET", DEVICES, *pages)


def two_pages(vendor) -> None:
    listing(vendor, paged(load_fixture("devices_page1.json"), 1, 2), paged(load_fixture("devices_page2.json"), 2, 2))


def device_record(name: str, state: str = "active", **extra: Any) -> dict[str, Any]:
    return {"device_name": name, "state": state, "connected": True, "bytes_used": 1, **extra}


# --- contract and config --------------------------------------------------------------------------

def test_class_contract() -> None:
    assert LattigoPlatform.name == "lattigo" and LattigoPlatform.manufacturer == "OptConnect"
    assert set(LattigoPlatform.SERVICES) <= set(SERVICE_BY_NAME)
    assert set(LattigoPlatform.SERVICES) == {"send_sms", "sim_suspend", "sim_restore", "set_usage_limit",
                                             "remove_usage_limit", "locate", "set_note", "terminate"}
    assert LattigoPlatform.SECRET_KEYS == ("api_key",)
    assert set(LattigoPlatform.RATE_LIMITS) == {"list", "device", "operation"}


def test_config_defaults_and_validation() -> None:
    config = LattigoPlatform.CONFIG_SCHEMA({"platform": "lattigo", "name": "x", "key_name": "k", "api_key": "s"})
    assert config["base_url"] == "https://api.lattigo.com"
    assert (config["usage_interval"], config["report_interval"], config["plan_interval"]) == (3600, 900, 86400)
    assert (config["batch_window"], config["max_batch"], config["page_size"]) == (0.5, 100, 500)
    with pytest.raises(Exception, match="URL"):
        LattigoPlatform.CONFIG_SCHEMA({"platform": "lattigo", "name": "x", "key_name": "k", "api_key": "s",
                                       "base_url": "api.lattigo.com"})
    with pytest.raises(Exception, match="api_key"):
        LattigoPlatform.CONFIG_SCHEMA({"platform": "lattigo", "name": "x", "key_name": "k"})


async def test_setup_makes_no_request_and_registers_the_secrets(make_platform, vendor) -> None:
    platform = await make_platform()
    assert vendor.calls == []
    assert API_KEY in platform.ctx.secrets and len(platform.ctx.secrets) == 2
    info = platform.info()
    assert info["key_name"] == KEY_NAME and API_KEY not in str(info)


# --- discovery and the fleet sweep ----------------------------------------------------------------

async def test_discover_maps_devices_over_pages(make_platform, vendor) -> None:
    two_pages(vendor)
    platform = await make_platform()
    a, b, c = await platform.async_discover()
    assert [x.id for x in (a, b, c)] == [ICCID_A, ICCID_B, ICCID_C]
    assert (a.name, a.model, a.serial_number) == (ICCID_A, "OC-NEO2-V", "351700086350170")
    assert a.identifiers == {"imei": "351700086350170", "iccid": ICCID_A, "msisdn": "18015550142",
                             "mdn": "8015550142", "imsi": "310120123456789", "meid": "A1000049E6B2C4",
                             "esn": "80A1B2C3"}
    assert {"online", "last_seen", "data_used", "sms_used", "sim_state", "ip_address", "imei", "iccid", "msisdn",
            "mdn", "attributes", "plan", "latitude", "longitude"} == set(a.keys)
    assert "latitude" not in b.keys and "mdn" not in b.keys  # no location, empty mdn
    assert all(set(x.keys) <= set(STATE_KEY_BY_NAME) for x in (a, b, c))
    assert {"locate", "terminate"} <= set(a.services)  # offered; the host keeps both off unless enabled


async def test_one_sweep_serves_discovery_and_the_next_poll(make_platform, vendor, clock) -> None:
    two_pages(vendor)
    platform = await make_platform()
    devices = await platform.async_discover()
    states = await platform.async_poll(devices)
    assert len(states) == 3 and len(vendor.calls_to(DEVICES)) == 2  # one paginated sweep, not two
    clock.advance(60)
    two_pages(vendor)
    await platform.async_poll(devices)
    assert len(vendor.calls_to(DEVICES)) == 4


async def test_poll_maps_state_and_normalises_loose_values(make_platform, vendor) -> None:
    two_pages(vendor)
    platform = await make_platform()
    states = await platform.async_poll([device(ICCID_A), device(ICCID_B), device(ICCID_C)])
    a, b, c = states[ICCID_A], states[ICCID_B], states[ICCID_C]
    assert a == {
        "online": True, "last_seen": "2026-12-02T06:15:00Z", "data_used": 123456789, "sms_used": 12,
        "sim_state": "active", "ip_address": "10.20.30.40", "plan": "ACME Co 1GB Plan", "imei": "351700086350170",
        "iccid": ICCID_A, "msisdn": "18015550142", "mdn": "8015550142", "latitude": 40.7608, "longitude": -111.891,
        "attributes": {"note": "Kiosk 12, lobby", "note2": "rack B", "cost_center": "Field Ops",
                       "address": "50 S Main St, Salt Lake City, UT", "carrier_state": "Active",
                       "last_activation_date": "2025-03-01T17:00:00Z", "contract_end_date": "2027-03-01T17:00:00Z",
                       "ipv6": "2600:1000:b0aa::1"},
    }
    assert (b["online"], b["sim_state"], b["data_used"], b["sms_used"]) == (False, "suspended", 98765, 3)
    assert b["last_seen"] == "2026-12-01T23:59:59Z"  # no zone means UTC
    assert b["plan"] == "VZW-M2M-101" and "latitude" not in b and "attributes" not in b and "mdn" not in b
    assert (c["online"], c["data_used"], c["latitude"], c["last_seen"]) == (True, 1024, 40.5, "2026-12-02T06:15:00Z")
    assert all(coerce_state(s) == s for s in states.values())  # already canonical


async def test_poll_ignores_unknown_devices_and_keeps_missing_ones_out(make_platform, vendor) -> None:
    listing(vendor, [device_record(ICCID_A), device_record("8901-not-discovered")])
    platform = await make_platform()
    states = await platform.async_poll([device(ICCID_A), device(ICCID_B)])
    assert set(states) == {ICCID_A}


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_fails_the_poll_as_auth_failed(make_platform, vendor, status) -> None:
    listing(vendor, Reply({"error": "Unauthorized"}, status=status))
    platform = await make_platform()
    with pytest.raises(AuthFailed) as info:
        await platform.async_discover()
    assert API_KEY not in str(info.value)


async def test_a_429_storm_reaches_the_host_with_retry_after(make_platform, vendor) -> None:
    listing(vendor, Reply(None, status=429, headers={"Retry-After": "45"}))
    platform = await make_platform()
    with pytest.raises(RateLimited) as info:
        await platform.async_poll([device()])
    assert info.value.retry_after == 45


# --- usage, reports and plans on their own intervals ------------------------------------------------

def script_extras(vendor, name: str = ICCID_A, reports: Any = None) -> None:
    vendor.on("GET", "/v2/rate_plans", load_fixture("rate_plans.json"))
    vendor.on("GET", f"{DEVICES}/{name}/daily_data_usages", load_fixture("daily_data_usages.json"))
    vendor.on("GET", f"{DEVICES}/{name}/monthly_data_usages", load_fixture("monthly_data_usages.json"))
    vendor.on("GET", f"{DEVICES}/{name}/device_reports", load_fixture("device_reports.json") if reports is None
              else reports)


async def test_usage_reports_and_allowance_share(make_platform, vendor) -> None:
    listing(vendor, [load_fixture("devices_page1.json")[0]])
    script_extras(vendor)
    platform = await make_platform(usage_interval=3600, report_interval=900)
    [info] = await platform.async_discover()
    assert USAGE_KEYS | {"data_allowance_used"} <= info.keys and not REPORT_KEYS & info.keys
    state = (await platform.async_poll([info]))[ICCID_A]
    assert (state["data_used_today"], state["data_used_month"]) == (1_500_000, 268_435_456)
    assert state["data_allowance_used"] == 25.0  # 256 MiB of the 1 GiB plan
    newest = {"speed": 42.5, "heading": 270, "altitude": 1321.5, "battery": 77, "voltage": 13.8,
              "temperature": -2.0, "fuel_level": 64.0, "signal": -71, "gps_time": "2026-12-02T06:10:00Z"}
    assert newest.items() <= state.items()
    assert (state["latitude"], state["longitude"]) == (40.7608, -111.891)  # the device's own position wins
    shapes = [(c.method, c.path, c.query) for c in vendor.calls if c.path != DEVICES]
    assert shapes == [
        ("GET", "/v2/rate_plans", {"page": "1", "per_page": "500"}),
        ("GET", f"{DEVICES}/{ICCID_A}/daily_data_usages", TODAY),
        ("GET", f"{DEVICES}/{ICCID_A}/monthly_data_usages", {"start_date": "2026-12-01", "end_date": "2026-12-02"}),
        ("GET", f"{DEVICES}/{ICCID_A}/device_reports", {"start_date": "2026-12-01", "end_date": "2026-12-02"}),
    ]
    assert platform.ctx.kv["report_devices"] == [ICCID_A]
    [again] = await platform.async_discover()  # the next discovery offers the report entities
    assert REPORT_KEYS <= again.keys


async def test_extras_wait_for_their_interval(make_platform, vendor, clock) -> None:
    listing(vendor, [device_record(ICCID_A)])
    script_extras(vendor)
    platform = await make_platform(usage_interval=3600, report_interval=900)
    await platform.async_poll([device()])
    count = len(vendor.calls)
    clock.advance(120)
    await platform.async_poll([device()])
    assert len(vendor.calls) == count + 1  # only the sweep
    clock.advance(900)
    await platform.async_poll([device()])
    assert [c.path.rsplit("/", 1)[-1] for c in vendor.calls[count + 1:]] == ["devices", "device_reports"]


async def test_a_device_without_a_position_takes_the_reports(make_platform, vendor) -> None:
    listing(vendor, [device_record(ICCID_B)])
    script_extras(vendor, ICCID_B)
    platform = await make_platform(report_interval=900)
    state = (await platform.async_poll([device(ICCID_B)]))[ICCID_B]
    assert (state["latitude"], state["longitude"]) == (40.7612, -111.8833)
    assert "data_used_today" not in state  # usage disabled here


async def test_extras_errors_never_fail_the_poll_and_pause_the_refresh(make_platform, vendor, clock) -> None:
    listing(vendor, [device_record(ICCID_A)])
    vendor.on("GET", "/v2/rate_plans", Reply(None, status=500))
    vendor.on("GET", f"{DEVICES}/{ICCID_A}/daily_data_usages", Reply(None, status=429, headers={"Retry-After": "300"}))
    platform = await make_platform(usage_interval=3600)
    state = (await platform.async_poll([device()]))[ICCID_A]
    assert state["online"] is True and "data_used_today" not in state
    count = len(vendor.calls)
    clock.advance(30)
    await platform.async_poll([device()])
    assert len(vendor.calls) == count + 1  # plans wait a minute, usage its Retry-After: only the sweep
    clock.advance(60)
    await platform.async_poll([device()])
    assert [c.path for c in vendor.calls[count + 1:]] == [DEVICES, "/v2/rate_plans"]


async def test_a_foreign_device_only_skips_that_device(make_platform, vendor) -> None:
    listing(vendor, [device_record(ICCID_A), device_record(ICCID_B)])
    vendor.on("GET", "/v2/rate_plans", [])
    vendor.on("GET", f"{DEVICES}/{ICCID_A}/daily_data_usages", Reply({"error": "403 Forbidden"}, status=403))
    script_extras(vendor, ICCID_B)
    vendor.on("GET", "/v2/rate_plans", [])
    platform = await make_platform(usage_interval=3600)
    states = await platform.async_poll([device(ICCID_A), device(ICCID_B)])
    assert "data_used_today" not in states[ICCID_A] and states[ICCID_B]["data_used_today"] == 1_500_000


async def test_a_new_day_drops_yesterdays_today(make_platform, vendor, clock) -> None:
    listing(vendor, [device_record(ICCID_A)])
    script_extras(vendor)
    platform = await make_platform(usage_interval=3600)
    await platform.async_poll([device()])
    clock.advance(18 * 3600)  # 2026-12-03 00:15
    vendor.on("GET", f"{DEVICES}/{ICCID_A}/daily_data_usages", Reply(None, status=503))
    state = (await platform.async_poll([device()]))[ICCID_A]
    assert "data_used_today" not in state and state["data_used_month"] == 268_435_456


def test_rotation_spreads_devices_and_catches_up() -> None:
    now = [0.0]
    rotation = Rotation(3600, lambda: now[0])
    names = [f"d{i}" for i in range(1000)]
    first = rotation.take(names)
    assert len(first) == 25  # at least MIN_SLICE, never the whole fleet at once
    for name in first:
        rotation.done(name)
    now[0] = 60
    second = rotation.take(names)
    assert len(second) == 34 and not set(second) & set(first)  # 2 x 1000 x 60 / 3600
    rotation.hold(100)
    assert rotation.take(names) == []
    assert Rotation(0, lambda: 0).take(names) == []


# --- SIM suspend / restore ----------------------------------------------------------------------------

async def test_suspend_is_pending_until_a_later_sweep_shows_it(make_platform, vendor, clock) -> None:
    vendor.on("PUT", SIMSTATE, {"change_status": {ICCID_A: "Success"}})
    platform = await make_platform()
    call = service_call("sim_suspend")
    result = await platform.async_call(device(), call)
    assert result.status == "pending" and "suspended" in result.detail
    [request] = vendor.calls
    assert request.shape == ("PUT", SIMSTATE, {}, {"device_names": [ICCID_A], "state": "suspend"})
    [pending] = call.pending.calls
    ref = pending["vendor_ref"]
    assert ref.startswith("simstate:sim_suspend:suspended:") and ref.endswith(ICCID_A)
    platform.ctx.open_refs.add(ref)
    clock.advance(30)
    listing(vendor, [device_record(ICCID_A, "active")])
    await platform.async_poll([device()])
    assert platform.ctx.resolved == []  # the carrier has not acted yet
    clock.advance(30)
    listing(vendor, [device_record(ICCID_A, "suspend")])
    await platform.async_poll([device()])
    assert platform.ctx.resolved == [(ref, "success", "sim_state is now suspended")]
    assert platform.info()["open_sim_changes"] == 0


async def test_a_sweep_that_started_before_the_change_cannot_confirm_it(make_platform, vendor, clock) -> None:
    listing(vendor, [device_record(ICCID_A, "suspend")])
    platform = await make_platform()
    await platform.async_discover()  # listing fetched at NOW, before the call
    clock.advance(1)
    vendor.on("PUT", SIMSTATE, {"change_status": {ICCID_A: "Success"}})
    await platform.async_call(device(), service_call("sim_suspend"))
    await platform.async_poll([device()])  # reuses the older listing
    assert platform.ctx.resolved == []


async def test_restore_failure_text_is_failed_and_nothing_is_watched(make_platform, vendor) -> None:
    vendor.on("PUT", SIMSTATE, {"change_status": {ICCID_A: {"message": "Error: Device does not exist."}}})
    platform = await make_platform()
    call = service_call("sim_restore")
    result = await platform.async_call(device(), call)
    assert (result.status, result.detail) == ("failed", "Error: Device does not exist.")
    assert call.pending.calls == [] and vendor.calls[0].json["state"] == "restore"


async def test_calls_arriving_together_go_out_as_one_request(make_platform, vendor) -> None:
    names = [f"8901000000000000000{i}" for i in range(5)]
    vendor.on("PUT", SIMSTATE, lambda call: {"change_status": {
        n: "Error: Device does not exist." if n == names[3] else "Success" for n in call.json["device_names"]}})
    vendor.on("POST", SEND_SMS, lambda call: {"status": {n: "Success: Attempting SMS Send."
                                                         for n in call.json["device_names"]}})
    platform = await make_platform(batch_window=0.05, sms_status_attempts=0)
    suspends = [platform.async_call(device(n), service_call("sim_suspend")) for n in names]
    sms = [platform.async_call(device(n), service_call("send_sms", {"message": "hi"})) for n in names[:2]]
    results = await asyncio.gather(*suspends, *sms)
    simstate = vendor.calls_to(SIMSTATE)
    assert len(simstate) == 1 and simstate[0].json == {"device_names": names, "state": "suspend"}
    assert len(vendor.calls_to(SEND_SMS)) == 1  # another operation: its own request
    assert [r.status for r in results[:5]] == ["pending", "pending", "pending", "failed", "pending"]
    assert results[3].detail == "Error: Device does not exist."
    assert [r.status for r in results[5:]] == ["success", "success"]


async def test_max_batch_splits_requests(make_platform, vendor) -> None:
    names = [f"8901000000000000000{i}" for i in range(5)]
    vendor.on("POST", "/v2/device_operations/remove_usage_limit", lambda call: {"status": {
        n: "Success: Device data limit removed." for n in call.json["device_names"]}})
    platform = await make_platform(batch_window=0.05, max_batch=2)
    results = await asyncio.gather(*(platform.async_call(device(n), service_call("remove_usage_limit"))
                                     for n in names))
    assert [len(c.json["device_names"]) for c in vendor.calls] == [2, 2, 1]
    assert {r.status for r in results} == {"success"}


async def test_a_batch_request_failing_fails_every_call_of_it(make_platform, vendor) -> None:
    vendor.on("PUT", SIMSTATE, Reply("<html>bad gateway</html>", status=502, content_type="text/html"))
    platform = await make_platform(batch_window=0.02)
    outcomes = await asyncio.gather(*(platform.async_call(device(n), service_call("sim_suspend"))
                                      for n in (ICCID_A, ICCID_B)), return_exceptions=True)
    assert len(vendor.calls) == 1 and all("HTTP 502" in str(o) for o in outcomes)


async def test_an_answer_that_omits_the_device_is_command_failed(make_platform, vendor) -> None:
    vendor.on("PUT", SIMSTATE, {"change_status": {ICCID_B: "Success"}})
    platform = await make_platform()
    with pytest.raises(CommandFailed, match="does not mention"):
        await platform.async_call(device(), service_call("sim_suspend"))


async def test_sim_watcher_times_out_and_supersedes() -> None:
    resolved: list[tuple[str, str, str]] = []
    now = [1000.0]
    watcher = SimWatcher(lambda ref, status, detail: resolved.append((ref, status, detail)) or True, lambda: now[0])
    first = SimChange(device="d", service="sim_suspend", target="suspended", deadline=1000.02, since=1000.0)
    watcher.watch(first)
    await asyncio.sleep(0.06)
    assert resolved[0][:2] == (first.ref, "timeout") and len(watcher) == 0
    second = SimChange(device="d", service="sim_suspend", target="suspended", deadline=2000, since=1000.0)
    third = SimChange(device="d", service="sim_restore", target="active", deadline=2000, since=1001.0)
    watcher.watch(second)
    watcher.watch(third)
    assert resolved[1][:2] == (second.ref, "timeout") and "superseded" in resolved[1][2]
    watcher.observe({"d": "active"}, fetched_at=1002.0)
    assert resolved[2][:2] == (third.ref, "success")
    watcher.close()


async def test_follow_after_restart_watches_again_or_times_out(make_platform, vendor, clock) -> None:
    platform = await make_platform(sim_check_interval=0.05)
    vendor.on("GET", f"{DEVICES}/{ICCID_A}", {"device": device_record(ICCID_A, "suspend")})
    ref = SimChange(device=ICCID_A, service="sim_suspend", target="suspended", deadline=NOW + 600, since=NOW).ref
    result = await platform.async_follow(device(), "sim_suspend", ref)
    assert result.status == "pending"
    for _ in range(50):
        if platform.ctx.resolved:
            break
        await asyncio.sleep(0.02)
    assert platform.ctx.resolved == [(ref, "success", "sim_state is now suspended")]  # by the one-device follower
    assert platform.ctx.poll_requests == 1  # so that the published sim_state follows at once
    assert vendor.calls[0].shape == ("GET", f"{DEVICES}/{ICCID_A}", {}, None)
    expired = SimChange(device=ICCID_A, service="sim_suspend", target="suspended", deadline=NOW - 1, since=NOW).ref
    assert (await platform.async_follow(device(), "sim_suspend", expired)).status == "timeout"


# --- SMS ------------------------------------------------------------------------------------------------

async def test_sms_ends_with_the_delivery_status(make_platform, vendor) -> None:
    vendor.on("POST", SEND_SMS, {"status": {ICCID_A: "Success: Attempting SMS Send."}})
    vendor.on("GET", f"{DEVICES}/{ICCID_A}/get_sms", [], load_fixture("sms_mt.json"))
    platform = await make_platform()
    call = service_call("send_sms", {"message": "reboot now"})
    result = await platform.async_call(device(), call)
    assert (result.status, result.detail) == ("success", "SMS DELIVERED at 2026-12-02T06:15:31Z")
    assert vendor.calls[0].shape == ("POST", SEND_SMS, {}, {"device_names": [ICCID_A], "sms_text": "reboot now"})
    assert [c.shape for c in vendor.calls[1:]] == [("GET", f"{DEVICES}/{ICCID_A}/get_sms", TODAY, None)] * 2
    assert call.pending.calls[0]["detail"] == "queued: Success: Attempting SMS Send."
    assert call.pending.calls[0]["vendor_ref"].startswith(f"sms:{NOW}:")


@pytest.mark.parametrize(("records", "status", "detail"), [
    ([{"event_status": "FAILED", "failure_reason": "Absent subscriber", "event_timestamp": "2026-12-02T06:15:02Z",
       "message_body": "hi"}], "failed", "SMS FAILED: Absent subscriber"),
    ([{"event_status": "PENDING", "event_timestamp": "2026-12-02T06:15:02Z", "message_body": "hi"}], "timeout",
     "queued; no final delivery status yet (SMS PENDING)"),
    ([], "success", "Success: Attempting SMS Send. (no delivery report)"),
    (Reply({"error": "SMS status is only supported for VDF devices"}, status=400), "success",
     "Success: Attempting SMS Send. (Lattigo keeps delivery reports for VDF devices only)"),
])
async def test_sms_outcomes(make_platform, vendor, records, status, detail) -> None:
    vendor.on("POST", SEND_SMS, {"status": {ICCID_A: "Success: Attempting SMS Send."}})
    vendor.on("GET", f"{DEVICES}/{ICCID_A}/get_sms", records)
    platform = await make_platform(sms_status_attempts=2)
    result = await platform.async_call(device(), service_call("send_sms", {"message": "hi"}))
    assert (result.status, result.detail) == (status, detail)


async def test_sms_refused_for_the_device_is_failed(make_platform, vendor) -> None:
    vendor.on("POST", SEND_SMS, {"status": {ICCID_A: "Error: Device does not exist, or does not support SMS."}})
    platform = await make_platform()
    result = await platform.async_call(device(), service_call("send_sms", {"message": "hi"}))
    assert result.status == "failed" and "does not support SMS" in result.detail


# --- usage limits, notes, locate, terminate -----------------------------------------------------------

async def test_set_usage_limit_request_and_outcome(make_platform, vendor) -> None:
    path = "/v2/device_operations/set_usage_limit"
    vendor.on("POST", path, {"status": {ICCID_A: "Success: Device data limit is set."}})
    platform = await make_platform(usage_limit_usernames=["ops@acme.example"])
    result = await platform.async_call(device(), service_call("set_usage_limit", {"limit_mb": 1.5}))
    assert (result.status, result.detail) == ("success", "Success: Device data limit is set.")
    assert vendor.calls[0].shape == ("POST", path, {}, {"device_names": [ICCID_A], "kb_limit": 1536,
                                                       "action": "suspend", "usernames": ["ops@acme.example"]})
    with pytest.raises(Rejected):
        await platform.async_call(device(), service_call("set_usage_limit", {"limit_mb": 0}))
    assert len(vendor.calls) == 1


async def test_remove_usage_limit_for_an_unknown_device_is_failed(make_platform, vendor) -> None:
    path = "/v2/device_operations/remove_usage_limit"
    vendor.on("POST", path, {"status": {ICCID_A: "Error: Device does not exist."}})
    platform = await make_platform()
    result = await platform.async_call(device(), service_call("remove_usage_limit"))
    assert (result.status, result.detail) == ("failed", "Error: Device does not exist.")
    assert vendor.calls[0].shape == ("POST", path, {}, {"device_names": [ICCID_A]})


async def test_set_note_writes_the_configured_field(make_platform, vendor) -> None:
    vendor.on("PUT", f"{DEVICES}/{ICCID_A}/note", {ICCID_A: "Success"})
    platform = await make_platform(note_field="note3")
    result = await platform.async_call(device(), service_call("set_note", {"note": "moved to dock 4"}))
    assert result.status == "success"
    assert vendor.calls[0].shape == ("PUT", f"{DEVICES}/{ICCID_A}/note", {}, {"field_name": "note3",
                                                                             "note": "moved to dock 4"})
    with pytest.raises(Rejected, match="250"):
        await platform.async_call(device(), service_call("set_note", {"note": "x" * 251}))


async def test_a_refused_request_is_command_failed(make_platform, vendor) -> None:
    vendor.on("PUT", f"{DEVICES}/{ICCID_A}/note", Reply({"error": "404 Not Found"}, status=404))
    platform = await make_platform()
    with pytest.raises(CommandFailed, match="HTTP 404"):
        await platform.async_call(device(), service_call("set_note", {"note": "x"}))


async def test_locate_when_enabled(make_platform, vendor) -> None:
    vendor.on("POST", f"{DEVICES}/{ICCID_A}/cellular_locate", {ICCID_A: "Location request submitted to carrier."})
    platform = await make_platform()
    result = await platform.async_call(device(), service_call("locate"))
    assert result.status == "success" and "Location request submitted" in result.detail
    assert vendor.calls[0].shape == ("POST", f"{DEVICES}/{ICCID_A}/cellular_locate", {}, {})
    vendor.on("POST", f"{DEVICES}/{ICCID_A}/cellular_locate", {ICCID_A: "Error: Location not supported by carrier."})
    assert (await platform.async_call(device(), service_call("locate"))).status == "failed"


@pytest.mark.parametrize(("services", "params", "match"), [
    ({"terminate": True}, {}, "irreversible"),
    ({"terminate": True}, {"confirm": "PRESS"}, "irreversible"),
    ({"terminate": True}, {"confirm": ICCID_B}, "irreversible"),
    ({}, {"confirm": ICCID_A}, "disabled"),
])
async def test_terminate_without_confirmation_is_rejected_before_any_request(make_platform, vendor, services, params,
                                                                             match) -> None:
    platform = await make_platform(services=services)
    with pytest.raises(Rejected, match=match):
        await platform.async_call(device(), service_call("terminate", params))
    assert vendor.calls == []


async def test_terminate_checks_the_fee_then_terminates(make_platform, vendor) -> None:
    vendor.on("GET", f"{DEVICES}/{ICCID_A}/calculate_etf", {ICCID_A: "100.0"})
    vendor.on("PUT", "/v2/device_operations/terminate_service", {"terminate_status": {ICCID_A: "Success"}})
    platform = await make_platform(services={"terminate": True})
    call = service_call("terminate", {"confirm": ICCID_A})
    result = await platform.async_call(device(), call)
    assert (result.status, result.detail) == ("success", "Success (early termination fee 100.0)")
    assert [c.shape for c in vendor.calls] == [
        ("GET", f"{DEVICES}/{ICCID_A}/calculate_etf", {}, None),
        ("PUT", "/v2/device_operations/terminate_service", {}, {"device_names": [ICCID_A]}),
    ]
    assert call.pending.calls[0]["detail"] == "early termination fee 100.0; terminating"


async def test_terminate_refused_above_the_fee_cap(make_platform, vendor) -> None:
    vendor.on("GET", f"{DEVICES}/{ICCID_A}/calculate_etf", {ICCID_A: "100.0"})
    platform = await make_platform(services={"terminate": True}, terminate_max_etf=50)
    with pytest.raises(Rejected, match="100.0 exceeds terminate_max_etf 50"):
        await platform.async_call(device(), service_call("terminate", {"confirm": ICCID_A}))
    assert [c.path for c in vendor.calls] == [f"{DEVICES}/{ICCID_A}/calculate_etf"]


async def test_unknown_service_is_rejected(make_platform, vendor) -> None:
    platform = await make_platform()
    with pytest.raises(Rejected):
        await platform.async_call(device(), service_call("engine_stop"))


async def test_no_secret_in_any_error(make_platform, vendor) -> None:
    vendor.on("PUT", SIMSTATE, Reply(f"<html>{API_KEY} {BASE}</html>", status=200, content_type="text/html"))
    platform = await make_platform()
    with pytest.raises(Exception) as info:
        await platform.async_call(device(), service_call("sim_suspend"))
    assert API_KEY not in str(info.value)
