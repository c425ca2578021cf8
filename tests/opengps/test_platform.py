"""OpenGpsPlatform: discovery, state mapping, events, services and history extras."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fleetbridge.entities import STATE_KEY_BY_NAME, coerce_state
from fleetbridge.errors import AuthFailed, CommandFailed, RateLimited, Rejected
from fleetbridge.events import EVENT_TYPES
from fleetbridge.platform import DeviceInfo, ServiceCall, ServiceResult
from fleetbridge.services import SERVICE_BY_NAME
from fleetbridge_plugins.opengps.platform import OpenGpsPlatform, iso
from .conftest import ACCOUNT, NOW, PASSWORD, FakeContext, fail, load_fixture, make_config, ok

VAN = "512345678901234"
OTHER = "123456789123456"
SEND, QUERY = "/api/command/send", "/api/command/query"


def device(imei: str = VAN, **attributes: Any) -> DeviceInfo:
    return DeviceInfo(id=imei, name=imei, keys=frozenset(), attributes=attributes)


class Pending:
    """Records ``call.pending`` invocations."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, detail: str = "", vendor_ref: str | None = None) -> None:
        self.calls.append({"detail": detail, "vendor_ref": vendor_ref})


def service_call(service: str, params: dict[str, Any] | None = None, *, speed: Any = 0,
                 fix_age: float | None = 20, state_age: float | None = 10) -> ServiceCall:
    state: dict[str, Any] = {}
    if speed is not None:
        state["speed"] = speed
    if fix_age is not None:
        state["gps_time"] = iso(NOW - fix_age)
    return ServiceCall(service=service, params=params or {}, state=state, state_age=state_age,
                       pending=Pending())


def vendor_requests(vendor) -> list[tuple[str, str]]:
    """Every request except the setup's authorization."""
    return [(c.method, c.path) for c in vendor.calls[1:]]


# --- class attributes and setup -------------------------------------------------------------------

def test_class_contract() -> None:
    assert OpenGpsPlatform.name == "opengps"
    assert set(OpenGpsPlatform.SERVICES) <= set(SERVICE_BY_NAME)
    assert set(OpenGpsPlatform.EVENT_TYPES) <= set(EVENT_TYPES)
    limits = OpenGpsPlatform.RATE_LIMITS
    assert (limits["auth"].min_interval, limits["device_list"].min_interval,
            limits["track"].min_interval, limits["playback"].min_interval) == (12, 6, 10, 12)
    assert {"detail", "alarm", "mileage", "command", "geofence", "user"} <= set(limits)
    assert (OpenGpsPlatform.DEFAULT_SCAN_INTERVAL, OpenGpsPlatform.DEFAULT_EVENT_INTERVAL) == (30, 60)


def test_config_defaults_and_url() -> None:
    config = make_config(base_url="https://api.example.test/")
    assert config["base_url"] == "https://api.example.test"
    assert (config["include_subaccounts"], config["engine_stop_max_speed"], config["engine_stop_max_fix_age"],
            config["command_poll_attempts"], config["token_refresh"]) == (False, 20, 300, 30, 5400)
    with pytest.raises(Exception, match="URL"):
        make_config(base_url="api.example.test")


async def test_setup_without_base_url_is_a_clear_auth_failure(session, vendor) -> None:
    config = make_config()
    del config["base_url"]
    with pytest.raises(AuthFailed, match="base_url"):
        await OpenGpsPlatform(FakeContext(session, config)).async_setup()
    assert vendor.calls == []


async def test_setup_authorizes_and_info_has_no_secret(make_platform, vendor) -> None:
    platform = await make_platform()
    assert [c.path for c in vendor.calls] == ["/api/authorization"]
    info = platform.info()
    assert info["account"] == ACCOUNT and info["clock_offset_s"] == 0.0
    assert PASSWORD not in str(info) and vendor.tokens[0] not in str(info)


# --- discovery ------------------------------------------------------------------------------------

async def test_discover_maps_device_list(make_platform, vendor) -> None:
    vendor.on("/api/device/list", load_fixture("device_list.json"))
    platform = await make_platform()
    van, other = await platform.async_discover()
    assert vendor.calls[-1].query == {"access_token": vendor.tokens[0]}
    assert (van.id, van.name, van.model, van.manufacturer) == (VAN, "Van 1", "VT05S", None)
    assert van.identifiers == {"imei": VAN, "iccid": "89966415211160402250", "sim": "7557862586",
                               "plate": "AB-123-CD"}
    assert van.attributes == {"plate_number": "AB-123-CD", "sim": "7557862586",
                              "iccid": "89966415211160402250"}  # 0 dates are absent
    assert van.services == OpenGpsPlatform.SERVICES and van.has_events
    assert van.keys >= {"latitude", "longitude", "speed", "online", "fuel_cut", "odometer", "expires_at"}
    assert van.keys <= set(STATE_KEY_BY_NAME)
    assert (other.name, other.identifiers) == (OTHER, {"imei": OTHER})
    assert other.attributes == {"activated_at": "2014-12-28T22:29:14Z",
                                "platform_expires_at": "2020-05-04T14:50:48Z",
                                "user_expires_at": "2020-05-16T04:37:28Z"}


async def test_discover_walks_subaccounts_once_and_dedupes_by_imei(make_platform, vendor) -> None:
    users = {None: load_fixture("user_list.json"),  # lists the account itself and "north"
             "north": ok([{"account": "north-east"}, {"account": "fleet"}]),
             "north-east": ok([{"account": "north"}])}
    devices = {None: ok([{"imei": VAN}]), "north": ok([{"imei": OTHER}, {"imei": VAN}]),
               "north-east": fail(10007, "Permission denied")}
    vendor.on("/api/user/list", lambda c: users[c.query.get("account")])
    vendor.on("/api/device/list", lambda c: devices[c.query.get("account")])
    platform = await make_platform(include_subaccounts=True)
    found = await platform.async_discover()
    assert [d.id for d in found] == [VAN, OTHER]
    assert [(c.path, c.query.get("account")) for c in vendor.calls[1:]] == [
        ("/api/user/list", None), ("/api/user/list", "north"), ("/api/user/list", "north-east"),
        ("/api/device/list", None), ("/api/device/list", "north"), ("/api/device/list", "north-east"),
    ]


# --- polling --------------------------------------------------------------------------------------

async def test_poll_maps_track_records_to_canonical_state(make_platform, vendor) -> None:
    vendor.on("/api/track", load_fixture("track.json"))
    platform = await make_platform()
    devices = [device(VAN, platform_expires_at="2027-03-01T00:00:00Z", user_expires_at="2027-02-01T00:00:00Z"),
               device(OTHER)]
    states = await platform.async_poll(devices)
    assert vendor.calls[-1].query["imeis"] == f"{VAN},{OTHER}"
    assert states[VAN] == {
        "latitude": 22.583197, "longitude": 113.909813, "speed": 36.0, "heading": 195,
        "gps_time": "2027-01-15T07:58:20Z", "last_seen": "2027-01-15T07:59:10Z",
        "battery": 87, "voltage": 12.64, "odometer": 51.654, "trip_distance_today": 15.654,
        "ignition": True, "door_open": False, "charging": True, "fuel_cut": False, "armed": False,
        "online": True, "expires_at": "2027-02-01T00:00:00Z",
    }
    assert states[VAN] == coerce_state(states[VAN])  # already canonical types
    # -1, "" and 0,0 sentinels are absent; oilpowerstatus 0 is a cut; datastatus 4 is offline
    assert states[OTHER] == {"last_seen": "2027-01-15T05:13:20Z", "fuel_cut": True, "online": False}


async def test_poll_skips_a_malformed_record_and_keeps_the_batch(make_platform, vendor, caplog) -> None:
    vendor.on("/api/track", ok([{"imei": VAN, "latitude": "north", "longitude": 1},
                                {"imei": OTHER, "speed": 12, "datastatus": 2},
                                "not a record", {"imei": "999", "speed": 1}]))
    platform = await make_platform()
    for _ in range(2):
        states = await platform.async_poll([device(VAN), device(OTHER)])
        assert states == {OTHER: {"speed": 12.0, "online": True}}
    assert caplog.text.count("malformed track record") == 1


async def test_poll_batches_by_100(make_platform, vendor) -> None:
    vendor.on("/api/track", lambda c: ok([{"imei": i, "speed": 1} for i in c.query["imeis"].split(",")]))
    platform = await make_platform()
    states = await platform.async_poll([device(f"{i:015d}") for i in range(250)])
    assert len(states) == 250
    assert [len(c.query["imeis"].split(",")) for c in vendor.calls_to("/api/track")] == [100, 100, 50]


# --- events ---------------------------------------------------------------------------------------

async def test_first_event_fetch_starts_an_hour_back_and_maps_alarms(make_platform, vendor) -> None:
    vendor.on("/api/alarm/list", lambda c: ok(
        f"7,113.9,22.5,{NOW - 130},{NOW - 120},88,90,0;6,113.8,22.4,0,{NOW - 60},0,-1,42"
        if c.query["imei"] == VAN else ""))
    platform = await make_platform()
    events, cursor = await platform.async_fetch_events([device(VAN), device(OTHER)], None)
    assert [(c.query["imei"], c.query["begintime"], c.query["endtime"]) for c in vendor.calls[1:]] == [
        (VAN, str(NOW - 3600), str(NOW)), (OTHER, str(NOW - 3600), str(NOW))]
    speeding, fence = events
    assert (speeding.device_id, speeding.event_type, speeding.uid) == (
        VAN, "overspeed", f"{VAN}:{NOW - 120}:7:{NOW - 130}")
    assert speeding.at == datetime.fromtimestamp(NOW - 130, UTC)
    assert speeding.data == {"vendor_code": 7, "vendor_name": "speedingAlarm", "latitude": 22.5,
                             "longitude": 113.9, "speed": 88.0, "heading": 90, "geofence_id": None}
    assert fence.event_type == "geofenceExit" and fence.data["geofence_id"] == "42"
    assert fence.at == datetime.fromtimestamp(NOW - 60, UTC)  # no gpstime: the system time
    assert cursor == {VAN: NOW - 60, OTHER: NOW - 3600}


async def test_event_fetch_resumes_at_the_cursor(make_platform, vendor, clock) -> None:
    vendor.on("/api/alarm/list", ok(""))
    platform = await make_platform()
    clock.advance(7200)
    _, cursor = await platform.async_fetch_events([device(VAN)], {VAN: NOW - 60})
    assert vendor.calls[-1].query["begintime"] == str(NOW - 60)
    assert cursor == {VAN: NOW + 7200 - 3600}  # a quiet device's cursor lags at most an hour


async def test_a_device_silent_since_its_cursor_is_not_asked_for_alarms(make_platform, vendor, clock) -> None:
    vendor.on("/api/track", ok([{"imei": VAN, "hearttime": NOW - 7200, "datastatus": 4},
                                {"imei": OTHER, "hearttime": NOW - 10, "datastatus": 2}]))
    vendor.on("/api/alarm/list", ok(""))
    platform = await make_platform()
    await platform.async_poll([device(VAN), device(OTHER)])
    _, cursor = await platform.async_fetch_events([device(VAN), device(OTHER)], {VAN: NOW - 600})
    assert [c.query["imei"] for c in vendor.calls_to("/api/alarm/list")] == [OTHER]
    assert cursor == {VAN: NOW - 600, OTHER: NOW - 3600}
    # it reports again (an alarm, say): the next fetch asks for it from its cursor
    vendor.on("/api/track", ok([{"imei": VAN, "hearttime": NOW + 5, "datastatus": 2}]))
    vendor.on("/api/alarm/list", ok(f"1,113.9,22.5,{NOW + 4},{NOW + 4},0,0,0"))
    clock.advance(10)
    await platform.async_poll([device(VAN)])
    events, _ = await platform.async_fetch_events([device(VAN)], cursor)
    assert [e.event_type for e in events] == ["sos"]
    assert vendor.calls_to("/api/alarm/list")[-1].query["begintime"] == str(NOW - 600)


async def test_one_device_refused_or_garbled_does_not_block_the_others(make_platform, vendor) -> None:
    replies = {VAN: ok("not,an,alarm"), OTHER: fail(20046, "Target is expired."),
               "999": ok(f"1,113.9,22.5,{NOW - 30},{NOW - 20},0,0,0")}
    vendor.on("/api/alarm/list", lambda c: replies[c.query["imei"]])
    platform = await make_platform()
    events, cursor = await platform.async_fetch_events([device(VAN), device(OTHER), device("999")],
                                                       {VAN: NOW - 100, OTHER: NOW - 100})
    assert [e.event_type for e in events] == ["sos"]
    assert cursor == {VAN: NOW - 100, OTHER: NOW - 100, "999": NOW - 20}


async def test_event_fetch_fails_whole_on_rate_limit(make_platform, vendor) -> None:
    vendor.on("/api/alarm/list", fail(10009))
    platform = await make_platform()
    with pytest.raises(RateLimited):
        await platform.async_fetch_events([device(VAN)], None)


# --- services -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"speed": 45}, "45 km/h"), ({"speed": None}, "speed is unknown"), ({"fix_age": 900}, "900 s old"),
     ({"fix_age": None}, "fix is unknown"), ({"state_age": None}, "no recent state")],
)
async def test_engine_stop_is_rejected_before_any_request(make_platform, vendor, kwargs, reason) -> None:
    platform = await make_platform()
    with pytest.raises(Rejected, match=reason):
        await platform.async_call(device(), service_call("engine_stop", **kwargs))
    assert vendor_requests(vendor) == []


async def test_command_flow_success(make_platform, vendor) -> None:
    vendor.on(SEND, ok({"commandid": "1B454"}), method="POST")
    vendor.on(QUERY, ok({"response": "", "commandstatus": 0}),
              ok({"response": "Cut off the fuel supply: Success! Speed: 2km/h.", "commandstatus": 1}),
              method="POST")
    platform = await make_platform()
    call = service_call("engine_stop", speed=2)
    result = await platform.async_call(device(), call)
    assert result == ServiceResult(status="success", detail="Cut off the fuel supply: Success! Speed: 2km/h.")
    assert call.pending.calls == [{"detail": "sent, waiting for the device", "vendor_ref": "1B454"}]
    assert vendor_requests(vendor) == [("POST", SEND), ("POST", QUERY), ("POST", QUERY)]
    assert vendor.calls[1].form == {"imei": VAN, "command": "RELAY,1"}
    assert vendor.calls[2].form == {"commandid": "1B454"}


@pytest.mark.parametrize(
    ("reply", "detail"),
    [("error:102", "error:102 (the command format was not recognised)"),
     ("Device OFFLINE", "Device OFFLINE"), ("Set failed", "Set failed")],
)
async def test_command_reply_saying_failure_is_failed(make_platform, vendor, reply, detail) -> None:
    vendor.on(SEND, ok({"commandid": "7"}), method="POST")
    vendor.on(QUERY, ok({"response": reply, "commandstatus": 1}), method="POST")
    platform = await make_platform()
    result = await platform.async_call(device(), service_call("reboot"))
    assert result == ServiceResult(status="failed", detail=detail)
    assert vendor.calls[1].form == {"imei": VAN, "command": "RESET"}


async def test_command_without_reply_times_out_after_exactly_n_queries(make_platform, vendor) -> None:
    vendor.on(SEND, ok({"commandid": "7"}), method="POST")
    vendor.on(QUERY, ok({"response": "", "commandstatus": 0}), method="POST")
    platform = await make_platform(command_poll_attempts=5)
    result = await platform.async_call(device(), service_call("lock_doors"))
    assert result == ServiceResult(status="timeout", detail="no reply from the device after 5 queries")
    assert len(vendor.calls_to(QUERY)) == 5
    assert len(vendor.calls_to(SEND)) == 1  # never resent


@pytest.mark.parametrize("code", [20017, 20018, 20048])
async def test_vendor_refusal_propagates_as_command_failed(make_platform, vendor, code) -> None:
    vendor.on(SEND, fail(code), method="POST")
    platform = await make_platform()
    with pytest.raises(CommandFailed):
        await platform.async_call(device(), service_call("unlock_doors"))
    assert vendor_requests(vendor) == [("POST", SEND)]


async def test_set_odometer_sends_km_as_param_data(make_platform, vendor) -> None:
    vendor.on(SEND, ok({"commandid": "9"}), method="POST")
    vendor.on(QUERY, ok({"response": "OK", "commandstatus": 1}), method="POST")
    platform = await make_platform()
    result = await platform.async_call(device(), service_call("set_odometer", {"odometer": 12345.6}))
    assert result.status == "success"
    assert vendor.calls[1].form == {"imei": VAN, "command": "SET_MILEAGE", "paramData": '{"mileage":"12345.6"}'}


async def test_create_geofence_is_one_call(make_platform, vendor) -> None:
    vendor.on("/api/geofence/create", ok(), method="POST")
    platform = await make_platform()
    params = {"name": "Depot", "latitude": 22.5, "longitude": 113.9, "radius": 300, "alarm": "out"}
    result = await platform.async_call(device(), service_call("create_geofence", params))
    assert result.status == "success"
    assert vendor.calls[-1].form == {"imei": VAN, "efencename": "Depot", "alarmtype": "0",
                                     "longitude": "113.9", "latitude": "22.5", "radius": "300"}


async def test_follow_resolves_a_pending_command(make_platform, vendor) -> None:
    vendor.on(QUERY, ok({"response": "Restore fuel supply: Success!", "commandstatus": 1}), method="POST")
    platform = await make_platform()
    result = await platform.async_follow(device(), "engine_resume", "1B454")
    assert result.status == "success"
    assert vendor.calls[-1].form == {"commandid": "1B454"}


async def test_unknown_service_is_rejected(make_platform, vendor) -> None:
    platform = await make_platform()
    with pytest.raises(Rejected):
        await platform.async_call(device(), service_call("sim_suspend"))
    assert vendor_requests(vendor) == []


# --- history extras -------------------------------------------------------------------------------

async def test_history_points_are_ordered_and_deduplicated(make_platform, vendor) -> None:
    vendor.on("/api/playback", ok(f"113.2,22.2,{NOW - 10},40,90;113.1,22.1,{NOW - 20},30,80;"
                                  f"113.1,22.1,{NOW - 20},30,80;113.3,22.3,0,0,0"))
    platform = await make_platform()
    since = datetime.fromtimestamp(NOW - 3600, UTC)
    points = await platform.async_history(device(), since, since + timedelta(hours=1))
    assert vendor.calls[-1].query == {"imei": VAN, "begintime": str(NOW - 3600), "endtime": str(NOW),
                                      "access_token": vendor.tokens[0]}
    assert points == [
        {"time": datetime.fromtimestamp(NOW - 20, UTC), "latitude": 22.1, "longitude": 113.1,
         "speed": 30.0, "heading": 80},
        {"time": datetime.fromtimestamp(NOW - 10, UTC), "latitude": 22.2, "longitude": 113.2,
         "speed": 40.0, "heading": 90},
    ]


async def test_distance_sums_mileage_windows(make_platform, vendor) -> None:
    vendor.on("/api/device/mileage", ok([{"imei": VAN, "mileage": 338.21}]))
    platform = await make_platform()
    since = datetime.fromtimestamp(NOW - 10 * 86400, UTC)
    assert await platform.async_distance(device(), since, since + timedelta(days=10)) == 676.42
    assert len(vendor.calls_to("/api/device/mileage")) == 2


def test_create_simulator_uses_the_simulator_module(monkeypatch) -> None:
    """Named for -k "not simulator": runs only where the simulator module exists."""
    pytest.importorskip("fleetbridge_plugins.opengps.simulator")
    import fleetbridge_plugins.opengps.simulator as simulator

    seen = {}
    monkeypatch.setattr(simulator, "create_app", lambda **kw: seen.update(kw) or "app")
    assert OpenGpsPlatform.create_simulator(make_config(), devices=3, seed=7) == "app"
    assert seen == {"accounts": {ACCOUNT: PASSWORD}, "devices": 3, "seed": 7}


def test_track_field_fast_paths_agree_with_the_general_rules() -> None:
    """The shortcuts for the usual values (plain ints, "12.60") give what the general rules give."""
    import random
    import re

    from fleetbridge_plugins.opengps import platform as tracker

    def leading_number(value: Any) -> float | None:  # the general rule: a regex
        match = re.match(r"\s*(-?\d+(?:\.\d+)?)", str(value))
        return float(match.group(1)) if match else None

    rng = random.Random(3)
    texts = ["".join(rng.choice("0123456789..-V e٢²") for _ in range(rng.randint(0, 7))) for _ in range(20_000)]
    for text in texts + ["12.60", "12", "5.", ".5", "1e5", "١٢", " 12.6"]:
        assert tracker._leading_number(text) == leading_number(text), text
    for value in (1, 1796231574, 32503679999, 32503680000, 10**30, 0, -5):
        assert tracker._time(value) == tracker._iso_or_none(float(value)), value
        assert tracker._km(value) == float(value) / 1000
