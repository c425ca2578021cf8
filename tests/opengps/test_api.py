"""OpenGpsClient and the alarm/playback parsers against a scripted vendor."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetbridge.errors import (
    AuthFailed,
    BadResponse,
    CommandFailed,
    RateLimited,
    TokenInvalid,
    Unreachable,
    VendorError,
)
from fleetbridge.events import EVENT_TYPES
from fleetbridge_plugins.opengps import alarms as alarm_table
from fleetbridge_plugins.opengps.alarms import (
    ALARM_TYPES,
    AlarmRecord,
    PlaybackPoint,
    describe_alarm,
    parse_alarms,
    parse_playback,
)
from fleetbridge_plugins.opengps.api import OpenGpsClient, mileage_windows, signature

from .conftest import ACCOUNT, BASE, NOW, PASSWORD, Reply, fail, http_date, ok

TRACK = "/api/track"
AUTH = "/api/authorization"


def imeis(n: int) -> list[str]:
    return [f"35{i:013d}" for i in range(n)]


def alarm_text(code: int, systemtime: int, gpstime: int | None = None, fence: str = "0") -> str:
    return f"{code},113.885888,22.580592,{gpstime or systemtime - 10},{systemtime},40,90,{fence}"


def playback_text(gpstime: int, lon: float = 113.97196) -> str:
    return f"{lon},22.56861,{gpstime},30,228"


# --- signature and auth ---------------------------------------------------------------------------

def test_signature_reproduces_the_doc_example() -> None:
    assert signature("Abc@34590", 1556243443) == "3844afd2c3bf68f0f3f4aa0a9ee8ee6c"


async def test_authorize_request_shape_and_token_registered(client, vendor, ctx) -> None:
    await client.authorize()
    [call] = vendor.calls
    assert (call.method, call.path, call.form) == ("GET", AUTH, None)
    assert call.query == {"time": str(NOW), "account": ACCOUNT, "signature": signature(PASSWORD, NOW)}
    assert ctx.secrets == {vendor.tokens[0]}
    assert ctx.rates == ["auth"]
    # the same request as aioresponses recorded it
    [(method, url)] = vendor.mock.requests
    assert method == "GET" and url.path == AUTH and dict(url.query) == call.query


async def test_call_adds_token_and_waits_for_its_rate_kind(client, vendor, ctx) -> None:
    vendor.on("/api/device/list", ok([{"imei": "1"}]))
    assert await client.device_list(account="north") == [{"imei": "1"}]
    call = vendor.calls[-1]
    assert (call.method, call.path) == ("GET", "/api/device/list")
    assert call.query == {"account": "north", "access_token": vendor.tokens[0]}
    assert ctx.rates == ["auth", "device_list"]


async def test_token_is_refreshed_proactively_after_90_minutes(client, vendor, clock) -> None:
    vendor.on("/api/user/list", ok([]))
    await client.user_list()
    clock.advance(5399)
    await client.user_list()
    assert len(vendor.auth_calls) == 1
    clock.advance(1)
    await client.user_list()
    assert len(vendor.auth_calls) == 2
    assert vendor.calls[-1].query["access_token"] == vendor.tokens[1]


@pytest.mark.parametrize("code", [10010, 10011, 10012])
async def test_token_error_reauthenticates_once_then_succeeds(client, vendor, code) -> None:
    vendor.on(TRACK, fail(code), ok([{"imei": "1"}]))
    assert await client.track(["1"]) == [{"imei": "1"}]
    assert [(c.path, c.query.get("access_token")) for c in vendor.calls] == [
        (AUTH, None), (TRACK, vendor.tokens[0]), (AUTH, None), (TRACK, vendor.tokens[1]),
    ]


async def test_token_refused_twice_is_token_invalid_not_a_loop(client, vendor) -> None:
    vendor.on(TRACK, fail(10011))
    with pytest.raises(TokenInvalid) as err:
        await client.track(["1"])
    assert len(vendor.auth_calls) == 2
    assert len(vendor.calls_to(TRACK)) == 2
    assert all(token not in str(err.value) for token in vendor.tokens)


async def test_concurrent_token_errors_share_one_reauthentication(client, vendor) -> None:
    await client.authorize()
    stale = vendor.tokens[0]
    vendor.on("/api/device/detail", lambda c: fail(10011) if c.query["access_token"] == stale else ok([]))
    await asyncio.gather(client.device_detail(["1"]), client.device_detail(["2"]))
    assert len(vendor.auth_calls) == 2  # the first login and one renewal, never two new tokens


@pytest.mark.parametrize("code", [20001, 10016])
async def test_refused_credentials_are_auth_failed(client, vendor, code) -> None:
    vendor.on(AUTH, fail(code, "Account or password error"))
    with pytest.raises(AuthFailed) as err:
        await client.authorize()
    assert err.value.code == code
    assert PASSWORD not in str(err.value) and signature(PASSWORD, NOW) not in str(err.value)


async def test_time_error_corrects_clock_from_date_header_and_retries_once(client, vendor) -> None:
    server = NOW + 600
    vendor.on(AUTH, Reply(json.dumps(fail(10014)), headers={"Date": http_date(server)}),
              ok({"access_token": "tok-after-skew", "expires_in": 7200}))
    await client.authorize()
    first, second = vendor.auth_calls
    assert first.query["time"] == str(NOW)
    assert second.query == {"time": str(server), "account": ACCOUNT,
                            "signature": signature(PASSWORD, server)}
    assert client.clock_offset == 600


async def test_time_error_twice_is_an_error_not_a_loop(client, vendor) -> None:
    vendor.on(AUTH, Reply(json.dumps(fail(10014)), headers={"Date": http_date(NOW + 600)}))
    with pytest.raises(VendorError) as err:
        await client.authorize()
    assert err.value.code == 10014
    assert len(vendor.auth_calls) == 2


async def test_rate_limit_code_is_rate_limited(client, vendor) -> None:
    vendor.on(TRACK, fail(10009, "Request is too frequency"))
    with pytest.raises(RateLimited) as err:
        await client.track(["1"])
    assert err.value.code == 10009


@pytest.mark.parametrize(
    ("code", "error"),
    [(10000, Unreachable), (10002, Unreachable), (10003, Unreachable), (10004, VendorError),
     (10005, VendorError), (10006, VendorError), (10007, VendorError), (20005, VendorError),
     (20046, VendorError), (20089, VendorError), (20017, CommandFailed), (20018, CommandFailed),
     (20048, CommandFailed), (99999, VendorError)],
)
async def test_error_codes_map_to_typed_errors(client, vendor, code, error) -> None:
    vendor.on("/api/device/detail", fail(code))
    with pytest.raises(error) as err:
        await client.device_detail(["1"])
    assert type(err.value) is error and err.value.code == code
    assert str(code) in str(err.value)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply("<html><body>502 Bad Gateway</body></html>", status=502, content_type="text/html"),
         Unreachable),
        (Reply("", status=503), Unreachable),
        (asyncio.TimeoutError(), Unreachable),
        (aiohttp.ClientConnectionError("Cannot connect"), Unreachable),
        (Reply('{"code":0,"record":[{"imei":"1",', status=200), BadResponse),
        (Reply("[]", status=200), BadResponse),
        (Reply('{"record": []}', status=200), BadResponse),
    ],
)
async def test_transport_failures(client, vendor, reply, expected) -> None:
    vendor.on(TRACK, reply)
    with pytest.raises(expected):
        await client.track(["1"])


async def test_html_page_is_bad_response_naming_status_and_body_without_token(client, vendor) -> None:
    await client.authorize()
    token = vendor.tokens[0]
    page = f"<html><head><title>Login</title></head><body>session {token} expired</body></html>"
    vendor.on(TRACK, Reply(page, status=200, content_type="text/html"))
    with pytest.raises(BadResponse) as err:
        await client.track(["1"])
    message = str(err.value)
    assert "HTTP 200" in message and "<html><head><title>Login" in message
    assert token not in message and "access_token" not in message


async def test_json_with_a_lying_content_type_is_parsed(client, vendor) -> None:
    vendor.on(TRACK, Reply(json.dumps(ok([{"imei": "1"}])), content_type="text/html"))
    assert await client.track(["1"]) == [{"imei": "1"}]


async def test_no_secret_in_connection_error_messages(client, vendor) -> None:
    await client.authorize()
    token = vendor.tokens[0]
    vendor.on(TRACK, aiohttp.ClientConnectionError(f"failed {BASE}/api/track?access_token={token}"))
    with pytest.raises(Unreachable) as err:
        await client.track(["1"])
    assert token not in str(err.value)


# --- shared account -------------------------------------------------------------------------------

async def test_shared_account_warning_after_three_invalidations(client, vendor, ctx, clock) -> None:
    for _ in range(2):  # voided twice: each time one re-login, then success
        vendor.on("/api/user/list", fail(10011), ok([]))
        await client.user_list()
        clock.advance(60)
    assert "shared_account" not in ctx.warnings
    assert len(vendor.auth_calls) == 3

    # the third time: warn, and no re-login within 10 min of the last one
    vendor.on("/api/user/list", fail(10011))
    with pytest.raises(TokenInvalid, match="in use elsewhere"):
        await client.user_list()
    assert ctx.warnings["shared_account"] == (
        "the access token was voided 3 times in 30 min: the account is probably logged in elsewhere "
        "(the vendor app, another integration); fleetbridge now re-authenticates at most every 10 minutes")
    clock.advance(300)
    with pytest.raises(TokenInvalid):
        await client.user_list()
    assert len(vendor.auth_calls) == 3

    # 10 min after the last login one re-login is allowed again
    clock.advance(300)
    vendor.on("/api/user/list", fail(10011), ok([]))
    await client.user_list()
    assert len(vendor.auth_calls) == 4

    # 30 quiet minutes clear the warning
    clock.advance(1800)
    await client.user_list()
    assert "shared_account" not in ctx.warnings
    assert ctx.warn_calls[-1] == ("shared_account", None)


async def test_an_old_token_voided_does_not_count_as_sharing(client, vendor, ctx, clock) -> None:
    vendor.on("/api/user/list", ok([]))
    for _ in range(3):
        await client.user_list()
        clock.advance(5400)  # each token dies of old age: proactive refresh, no invalidation
    assert ctx.warn_calls == []


# --- track ----------------------------------------------------------------------------------------

async def test_track_batches_250_imeis_into_3_requests(client, vendor, ctx) -> None:
    vendor.on(TRACK, lambda c: ok([{"imei": i} for i in c.query["imeis"].split(",")]))
    wanted = imeis(250)
    result = await client.track(wanted)
    batches = [c.query["imeis"].split(",") for c in vendor.calls_to(TRACK)]
    assert [len(b) for b in batches] == [100, 100, 50]
    assert sum(batches, []) == wanted
    assert [r["imei"] for r in result] == wanted
    assert ctx.rates.count("track") == 3


@pytest.mark.parametrize("record", ["", [], {}, None])
async def test_track_empty_record_shapes(client, vendor, record) -> None:
    vendor.on(TRACK, {"code": 0, "record": record})
    assert await client.track(["1"]) == []


async def test_track_single_object_record_and_no_data(client, vendor) -> None:
    vendor.on(TRACK, ok({"imei": "1"}), fail(20023))
    assert await client.track(["1"]) == [{"imei": "1"}]
    assert await client.track(["1"]) == []


async def test_track_servertime_measures_clock_skew(client, vendor) -> None:
    vendor.on(TRACK, ok([{"imei": "1", "servertime": NOW - 45}]))
    await client.track(["1"])
    assert client.clock_offset == -45
    assert client.now() == NOW - 45


async def test_track_bisects_a_batch_refused_for_one_unauthorized_imei(client, vendor) -> None:
    bad = "350000000000002"
    vendor.on(TRACK, lambda c: fail(10013) if bad in c.query["imeis"].split(",")
              else ok([{"imei": i} for i in c.query["imeis"].split(",")]))
    wanted = imeis(4)
    assert [r["imei"] for r in await client.track(wanted)] == [i for i in wanted if i != bad]
    before = len(vendor.calls_to(TRACK))
    await client.track(wanted)  # the refused IMEI is left out for an hour
    assert [c.query["imeis"] for c in vendor.calls_to(TRACK)[before:]] == [
        ",".join(i for i in wanted if i != bad)]


# --- paging ---------------------------------------------------------------------------------------

async def test_alarm_paging_restarts_at_last_systemtime_and_dedupes_boundary(client, vendor) -> None:
    begin, end = NOW - 3600, NOW
    page1 = [alarm_text(1 + i % 44, begin + 10 * i) for i in range(100)]
    last = begin + 990
    page2 = [page1[-1], alarm_text(7, last + 5), alarm_text(8, last + 6), alarm_text(9, last + 7)]
    vendor.on("/api/alarm/list", ok(";".join(page1) + ";"), ok(";".join(page2)))
    result = await client.alarms("351", begin, end)
    calls = vendor.calls_to("/api/alarm/list")
    assert [(c.method, c.query) for c in calls] == [
        ("GET", {"imei": "351", "begintime": str(begin), "endtime": str(end), "access_token": vendor.tokens[0]}),
        ("GET", {"imei": "351", "begintime": str(last), "endtime": str(end), "access_token": vendor.tokens[0]}),
    ]
    assert len(result) == 103
    assert [a.systemtime for a in result] == sorted(a.systemtime for a in result)
    assert result[0] == AlarmRecord(1, 113.885888, 22.580592, begin - 10, begin, 40.0, 90, None)


async def test_alarm_paging_steps_one_second_when_the_cursor_is_stuck(client, vendor, caplog) -> None:
    begin, end = NOW - 60, NOW
    stuck = [alarm_text(1, begin, gpstime=begin - i) for i in range(100)]
    vendor.on("/api/alarm/list", ok(";".join(stuck)), ok(""))
    result = await client.alarms("351", begin, end)
    assert [c.query["begintime"] for c in vendor.calls_to("/api/alarm/list")] == [str(begin), str(begin + 1)]
    assert len(result) == 100
    assert "stepping 1 s" in caplog.text


async def test_playback_pages_of_1000_at_last_gpstime(client, vendor, ctx) -> None:
    begin, end = NOW - 86400, NOW
    page1 = [playback_text(begin + i) for i in range(1000)]
    page2 = [page1[-1], page1[-1], playback_text(begin + 1000), playback_text(begin + 1001)]
    vendor.on("/api/playback", ok(";".join(page1)), ok(";".join(page2)))
    points = await client.playback("351", begin, end)
    assert [c.query["begintime"] for c in vendor.calls_to("/api/playback")] == [str(begin), str(begin + 999)]
    assert len(points) == 1002
    assert points[-1] == PlaybackPoint(113.97196, 22.56861, begin + 1001, 30.0, 228)
    assert ctx.rates.count("playback") == 2


# --- mileage --------------------------------------------------------------------------------------

def test_mileage_windows_align_to_half_hours_and_split_at_7_days() -> None:
    begin = 1_799_998_200 + 17 * 60  # :17 past a half hour
    assert mileage_windows(begin, begin + 10 * 60) == [(1_799_998_200, 1_800_000_000)]
    eight_days = mileage_windows(1_799_998_200, 1_799_998_200 + 8 * 86400 - 60)
    assert eight_days == [(1_799_998_200, 1_799_998_200 + 7 * 86400),
                          (1_799_998_200 + 7 * 86400, 1_799_998_200 + 8 * 86400)]


async def test_mileage_splits_windows_and_batches_and_sums_km(client, vendor) -> None:
    wanted = imeis(150)
    vendor.on("/api/device/mileage",
              lambda c: ok([{"imei": i, "mileage": 1.25} for i in c.query["imeis"].split(",")]))
    begin = 1_799_998_200 + 600  # 10 min past the half hour
    totals = await client.mileage(wanted, begin, begin + 8 * 86400)
    calls = vendor.calls_to("/api/device/mileage")
    assert [(c.query["begintime"], c.query["endtime"], len(c.query["imeis"].split(","))) for c in calls] == [
        ("1799998200", str(1_799_998_200 + 7 * 86400), 100),
        ("1799998200", str(1_799_998_200 + 7 * 86400), 50),
        (str(1_799_998_200 + 7 * 86400), str(1_799_998_200 + 8 * 86400 + 1800), 100),
        (str(1_799_998_200 + 7 * 86400), str(1_799_998_200 + 8 * 86400 + 1800), 50),
    ]
    assert totals == {i: 2.5 for i in wanted}


# --- commands -------------------------------------------------------------------------------------

async def test_send_command_posts_a_form_with_param_data_json(client, vendor, ctx) -> None:
    vendor.on("/api/command/send", ok({"commandid": "1B454"}), method="POST")
    assert await client.send_command("351", "SET_MILEAGE", {"mileage": "30"}) == "1B454"
    call = vendor.calls[-1]
    assert (call.method, call.path) == ("POST", "/api/command/send")
    assert call.query == {"access_token": vendor.tokens[0]}
    assert call.form == {"imei": "351", "command": "SET_MILEAGE", "paramData": '{"mileage":"30"}'}
    assert ctx.rates[-1] == "command"


async def test_query_command_returns_status_and_text(client, vendor) -> None:
    vendor.on("/api/command/query", ok({"response": "Success!", "commandstatus": 1}), method="POST")
    assert await client.query_command("1B454") == (1, "Success!")
    call = vendor.calls[-1]
    assert (call.method, call.form) == ("POST", {"commandid": "1B454"})


@pytest.mark.parametrize("code", [10013, 20005])
async def test_command_to_unknown_device_fails_clearly(client, vendor, code) -> None:
    vendor.on("/api/command/send", fail(code), method="POST")
    with pytest.raises(CommandFailed, match="does not know device 351"):
        await client.send_command("351", "RESET")


async def test_create_geofence_posts_the_documented_form(client, vendor) -> None:
    vendor.on("/api/geofence/create", ok(), method="POST")
    await client.create_geofence("351", "home & yard", 2, 22.56861, 113.97196, 300)
    call = vendor.calls[-1]
    assert (call.method, call.path) == ("POST", "/api/geofence/create")
    assert call.form == {"imei": "351", "efencename": "home & yard", "alarmtype": "2",
                         "longitude": "113.97196", "latitude": "22.56861", "radius": "300"}


def test_info_holds_no_secret(client: OpenGpsClient) -> None:
    assert client.info() == {"account": ACCOUNT, "clock_offset_s": 0.0, "shared_account": False}


# --- alarm table and parsers ----------------------------------------------------------------------

def test_alarm_table_covers_the_44_documented_codes_with_canonical_types() -> None:
    assert sorted(ALARM_TYPES) == list(range(1, 45))
    assert all(event in EVENT_TYPES for _, event in ALARM_TYPES.values())
    assert describe_alarm(7) == ("speedingAlarm", "overspeed")
    assert describe_alarm(42) == ("lackBreakFatigueDrivingAlarm", "fatigueDriving")
    assert describe_alarm(77)[1] == "general"
    assert "general" in alarm_table.ALARM_EVENT_TYPES


@pytest.mark.parametrize("empty", ["", [], {}, None, " ; ;"])
def test_parsers_accept_empty_shapes(empty) -> None:
    assert parse_alarms(empty) == [] and parse_playback(empty) == []


def test_alarm_parser_tolerates_spaces_and_trailing_semicolons() -> None:
    [alarm] = parse_alarms(" 27, 113.885888 ,22.580592,1541575497,1541575507,40,40,0 ;")
    assert alarm == AlarmRecord(27, 113.885888, 22.580592, 1541575497, 1541575507, 40.0, 40, None)
    assert (alarm.vendor_name, alarm.event_type) == ("doorcloseAlarm", "doorClose")
    [fence] = parse_alarms("5,1,2,3,4,,-1,17")
    assert (fence.speed, fence.course, fence.fence_id) == (None, None, "17")


@pytest.mark.parametrize(
    "garbage",
    ["27,113.8,22.5", "x,1,2,3,4,5,6,0", "1,200,22,3,4,5,6,0", "1,1,95,3,4,5,6,0", "1,1,1,nan,4,5,6,0",
     "1,1,1,-5,4,5,6,0", 42, {"a": 1}, [1, 2], "1.5,1,1,3,4,5,6,0"],
)
def test_alarm_parser_rejects_garbage_with_bad_response(garbage) -> None:
    with pytest.raises(BadResponse):
        parse_alarms(garbage)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789.,;-e xn", max_size=80), st.text(max_size=40),
                 st.lists(st.text(max_size=10), max_size=3), st.integers(), st.none()))
def test_parsers_raise_only_bad_response(record) -> None:
    for parse in (parse_alarms, parse_playback):
        try:
            parse(record)
        except BadResponse:
            pass
