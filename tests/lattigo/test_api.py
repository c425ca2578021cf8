"""LattigoClient and the normalisation helpers against a scripted vendor: request shapes, pagination,
typed errors without the key, loose types."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetbridge.errors import AuthFailed, BadResponse, RateLimited, Unreachable, VendorError
from fleetbridge_plugins.lattigo.api import LattigoClient, Refused, retry_after
from fleetbridge_plugins.lattigo.normalize import (
    as_bool,
    as_int,
    parse_time,
    status_map,
    succeeded,
    unwrap_list,
    unwrap_object,
)

from .conftest import API_KEY, BASE, ICCID_A, ICCID_B, KEY_NAME, Reply, load_fixture, paged

DEVICES = "/v2/devices"
DAY = datetime(2026, 12, 2, 6, 15, tzinfo=UTC)


class Sleeps:
    """A recording stand-in for asyncio.sleep."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make_client(session: aiohttp.ClientSession, sleeps: Sleeps | None = None, **kwargs: Any) -> LattigoClient:
    async def rate(_: str) -> None:
        return None

    return LattigoClient(session, BASE + "/", KEY_NAME, API_KEY, rate=rate, sleep=sleeps or Sleeps(), **kwargs)


# --- auth and request shapes ----------------------------------------------------------------------

async def test_basic_auth_on_every_request_and_secrets_for_redaction(client, vendor, ctx) -> None:
    vendor.on("GET", DEVICES, [])
    await client.devices()
    [call] = vendor.calls
    encoded = base64.b64encode(f"{KEY_NAME}:{API_KEY}".encode()).decode()
    assert call.authorization == f"Basic {encoded}"  # the document's recipe
    assert set(client.secrets) == {API_KEY, encoded}
    assert ctx.rates == ["list"]


#: Every client call and the exact request it makes: query string for GET, JSON for the rest.
SHAPES: list[tuple[str, Any, tuple[str, str, dict[str, str], Any], Any]] = [
    ("devices", lambda c: c.devices(), ("GET", DEVICES, {"details": "true", "page": "1", "per_page": "2"}, None), []),
    ("device", lambda c: c.device(ICCID_A), ("GET", f"{DEVICES}/{ICCID_A}", {}, None), {}),
    ("rate_plans", lambda c: c.rate_plans(), ("GET", "/v2/rate_plans", {"page": "1", "per_page": "2"}, None), []),
    ("users", lambda c: c.users(), ("GET", "/v2/users", {"page": "1", "per_page": "2"}, None), []),
    ("daily", lambda c: c.dated(ICCID_A, "daily_data_usages", DAY, DAY),
     ("GET", f"{DEVICES}/{ICCID_A}/daily_data_usages", {"start_date": "2026-12-02", "end_date": "2026-12-02"}, None),
     []),
    ("monthly", lambda c: c.dated(ICCID_A, "monthly_data_usages", DAY.replace(day=1), DAY),
     ("GET", f"{DEVICES}/{ICCID_A}/monthly_data_usages", {"start_date": "2026-12-01", "end_date": "2026-12-02"},
      None), []),
    ("reports", lambda c: c.dated(ICCID_A, "device_reports", DAY, DAY),
     ("GET", f"{DEVICES}/{ICCID_A}/device_reports", {"start_date": "2026-12-02", "end_date": "2026-12-02"}, None),
     []),
    ("get_sms", lambda c: c.dated(ICCID_A, "get_sms", DAY, DAY),
     ("GET", f"{DEVICES}/{ICCID_A}/get_sms", {"start_date": "2026-12-02", "end_date": "2026-12-02"}, None), []),
    ("etf", lambda c: c.calculate_etf(ICCID_A), ("GET", f"{DEVICES}/{ICCID_A}/calculate_etf", {}, None),
     {ICCID_A: "100.0"}),
    ("note", lambda c: c.set_note(ICCID_A, "lobby", "note2"),
     ("PUT", f"{DEVICES}/{ICCID_A}/note", {}, {"field_name": "note2", "note": "lobby"}), {ICCID_A: "Success"}),
    ("locate", lambda c: c.cellular_locate(ICCID_A), ("POST", f"{DEVICES}/{ICCID_A}/cellular_locate", {}, {}),
     {ICCID_A: "ok"}),
    ("simstate", lambda c: c.bulk("change_simstate", [ICCID_A, ICCID_B], {"state": "restore"}),
     ("PUT", "/v2/device_operations/change_simstate", {}, {"device_names": [ICCID_A, ICCID_B], "state": "restore"}),
     {"change_status": {}}),
    ("cost_center", lambda c: c.bulk("change_cost_center", [ICCID_A], {"cost_center": "Acme"}),
     ("PUT", "/v2/device_operations/change_cost_center", {}, {"device_names": [ICCID_A], "cost_center": "Acme"}),
     {"change_status": {}}),
    ("sms", lambda c: c.bulk("send_sms", [ICCID_A], {"sms_text": "hi"}),
     ("POST", "/v2/device_operations/send_sms", {}, {"device_names": [ICCID_A], "sms_text": "hi"}), {"status": {}}),
    ("limit", lambda c: c.bulk("set_usage_limit", [ICCID_A], {"kb_limit": 1024, "action": "suspend"}),
     ("POST", "/v2/device_operations/set_usage_limit", {}, {"device_names": [ICCID_A], "kb_limit": 1024,
                                                             "action": "suspend"}), {"status": {}}),
    ("unlimit", lambda c: c.bulk("remove_usage_limit", [ICCID_A]),
     ("POST", "/v2/device_operations/remove_usage_limit", {}, {"device_names": [ICCID_A]}), {"status": {}}),
    ("terminate", lambda c: c.bulk("terminate_service", [ICCID_A]),
     ("PUT", "/v2/device_operations/terminate_service", {}, {"device_names": [ICCID_A]}), {"terminate_status": {}}),
]


@pytest.mark.parametrize(("name", "invoke", "shape", "answer"), SHAPES, ids=[s[0] for s in SHAPES])
async def test_request_shape(client, vendor, name, invoke, shape, answer) -> None:
    method, path, _, _ = shape
    vendor.on(method, path, answer)
    await invoke(client)
    [call] = vendor.calls
    assert call.shape == shape
    assert call.data is None  # never form-encoded


async def test_device_names_are_escaped_in_paths(client, vendor) -> None:
    vendor.on("GET", "/v2/devices/a/b c", {"device_name": "a/b c"})
    assert await client.device("a/b c") == {"device_name": "a/b c"}
    assert vendor.calls[0].raw_path == "/v2/devices/a%2Fb%20c"


# --- pagination -----------------------------------------------------------------------------------

async def test_pagination_follows_next_page_to_the_last(client, vendor) -> None:
    vendor.on("GET", DEVICES, paged([{"device_name": "1"}, {"device_name": "2"}], 1, 3),
              paged([{"device_name": "3"}, {"device_name": "4"}], 2, 3), paged([{"device_name": "5"}], 3, 3))
    devices = await client.devices()
    assert [d["device_name"] for d in devices] == ["1", "2", "3", "4", "5"]
    assert [c.query["page"] for c in vendor.calls] == ["1", "2", "3"]
    assert all(c.query == {"details": "true", "page": c.query["page"], "per_page": "2"} for c in vendor.calls)
    stats = client.last_sweep[DEVICES]
    assert (stats.requests, stats.items, stats.per_page, stats.total, stats.paged) == (3, 5, 2, 6, True)


async def test_pagination_stops_on_an_empty_page(client, vendor) -> None:
    vendor.on("GET", DEVICES, paged([{"device_name": "1"}], 1, 5), paged([], 2, 5))
    assert len(await client.devices()) == 1
    assert len(vendor.calls) == 2


async def test_absent_headers_mean_one_page(client, vendor) -> None:
    vendor.on("GET", DEVICES, [{"device_name": str(i)} for i in range(7)])
    assert len(await client.devices()) == 7
    assert len(vendor.calls) == 1
    assert client.last_sweep[DEVICES].paged is False


async def test_a_next_page_that_does_not_advance_stops(client, vendor, caplog) -> None:
    stuck = Reply([{"device_name": "1"}], headers={"X-Page": "1", "X-Next-Page": "1"})
    vendor.on("GET", DEVICES, stuck)
    assert len(await client.devices()) == 1
    assert len(vendor.calls) == 1
    assert "stopped" in caplog.text


async def test_pages_with_wrapper_drift_and_loose_items(client, vendor) -> None:
    page1 = paged(load_fixture("devices_page1.json"), 1, 2)
    page2 = paged(load_fixture("devices_page2.json"), 2, 2)
    vendor.on("GET", DEVICES, page1, page2)
    names = [d["device_name"] for d in await client.devices()]
    assert names == [ICCID_A, ICCID_B, "89014103211118510746"]


async def test_users_accepts_strings_and_objects(client, vendor) -> None:
    vendor.on("GET", "/v2/users", ["a@x", {"username": "b@x"}, "", None])
    assert await client.users() == ["a@x", "b@x"]


# --- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
async def test_refused_key_is_auth_failed_with_a_clear_message_and_no_key(client, vendor, status) -> None:
    vendor.on("GET", DEVICES, Reply({"error": f"bad key {API_KEY}"}, status=status))
    with pytest.raises(AuthFailed) as info:
        await client.devices()
    message = str(info.value)
    assert f"HTTP {status}" in message and KEY_NAME in message and "api_key" in message
    assert API_KEY not in message
    assert info.value.code == status and not info.value.retryable


async def test_429_is_retried_in_place_honouring_retry_after(session, vendor) -> None:
    sleeps = Sleeps()
    client = make_client(session, sleeps)
    vendor.on("GET", DEVICES, Reply({"error": "slow down"}, status=429, headers={"Retry-After": "7"}), [])
    assert await client.devices() == []
    assert sleeps.waits == [7.0]
    assert len(vendor.calls) == 2


async def test_429_without_header_backs_off_then_reaches_the_host(session, vendor) -> None:
    sleeps = Sleeps()
    client = make_client(session, sleeps, retries=3, backoff=1.0)
    vendor.on("GET", DEVICES, Reply({"error": "slow down"}, status=429))
    with pytest.raises(RateLimited) as info:
        await client.devices()
    assert info.value.retry_after is None
    assert len(vendor.calls) == 4
    assert len(sleeps.waits) == 3  # 1, 2, 4 s with +-20 % jitter
    assert all(0.8 * 2 ** i <= wait <= 1.2 * 2 ** i for i, wait in enumerate(sleeps.waits))


async def test_a_long_retry_after_is_left_to_the_host(session, vendor) -> None:
    sleeps = Sleeps()
    vendor.on("GET", DEVICES, Reply(None, status=429, headers={"Retry-After": "120"}))
    with pytest.raises(RateLimited) as info:
        await make_client(session, sleeps).devices()
    assert info.value.retry_after == 120 and sleeps.waits == [] and len(vendor.calls) == 1


async def test_terminate_is_never_sent_twice_even_after_a_429(session, vendor) -> None:
    vendor.on("PUT", "/v2/device_operations/terminate_service", Reply(None, status=429, headers={"Retry-After": "1"}))
    with pytest.raises(RateLimited):
        await make_client(session).bulk("terminate_service", [ICCID_A])
    assert len(vendor.calls) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_unreachable(client, vendor, status) -> None:
    vendor.on("GET", DEVICES, Reply("upstream trouble", status=status, content_type="text/plain"))
    with pytest.raises(Unreachable, match=f"HTTP {status}"):
        await client.devices()


@pytest.mark.parametrize("error", [asyncio.TimeoutError(), aiohttp.ServerDisconnectedError(),
                                   aiohttp.ClientConnectionError("connection reset")])
async def test_timeouts_and_connection_errors_are_unreachable(client, vendor, error) -> None:
    vendor.on("GET", DEVICES, error)
    with pytest.raises(Unreachable):
        await client.devices()


@pytest.mark.parametrize(("reply", "expect"), [
    (Reply(f"<html><body><h1>502 Bad Gateway</h1> Authorization: {API_KEY}</body></html>", status=200,
           content_type="text/html"), "<html><body><h1>502 Bad Gateway</h1> Authorization: ***"),
    (Reply('[{"device_name": "8901', content_type="application/json"), '[{"device_name": "8901'),
])
async def test_html_and_malformed_json_are_bad_responses_with_status_and_first_bytes(client, vendor, reply,
                                                                                      expect) -> None:
    vendor.on("GET", DEVICES, reply)
    with pytest.raises(BadResponse) as info:
        await client.devices()
    message = str(info.value)
    assert "GET /v2/devices: HTTP 200, not a JSON answer" in message
    assert expect in message and API_KEY not in message and info.value.retryable


async def test_other_4xx_is_refused_with_the_vendor_error_text(client, vendor) -> None:
    vendor.on("GET", f"{DEVICES}/{ICCID_A}", Reply({"error": "404 Not Found"}, status=404))
    with pytest.raises(Refused, match="HTTP 404: 404 Not Found") as info:
        await client.device(ICCID_A)
    assert isinstance(info.value, VendorError) and not info.value.retryable


def test_retry_after_forms() -> None:
    assert retry_after({"Retry-After": "3"}) == 3.0
    assert retry_after({"Retry-After": "2.5"}) == 2.5
    assert retry_after({}) is None and retry_after({"Retry-After": "soon"}) is None
    future = formatdate(datetime.now(UTC).timestamp() + 60, usegmt=True)
    assert 50 < (retry_after({"Retry-After": future}) or 0) <= 60


# --- bulk results -----------------------------------------------------------------------------------

async def test_bulk_results_as_strings_or_objects(client, vendor) -> None:
    path = "/v2/device_operations/change_simstate"
    vendor.on("PUT", path, {"change_status": {ICCID_A: "Success", ICCID_B: {"message": "Error: Device does not exist."}}})
    assert await client.bulk("change_simstate", [ICCID_A, ICCID_B, ICCID_A], {"state": "suspend"}) == {
        ICCID_A: "Success", ICCID_B: "Error: Device does not exist."}
    assert vendor.calls[0].json["device_names"] == [ICCID_A, ICCID_B]  # each name once


async def test_a_partly_failed_bulk_call_may_answer_4xx_with_its_map(client, vendor) -> None:
    path = "/v2/device_operations/send_sms"
    vendor.on("POST", path, Reply({"status": {ICCID_A: "Error: Device does not exist, or does not support SMS."}},
                                  status=422))
    assert await client.bulk("send_sms", [ICCID_A], {"sms_text": "x"}) == {
        ICCID_A: "Error: Device does not exist, or does not support SMS."}


async def test_a_bulk_error_without_a_map_is_refused(client, vendor) -> None:
    vendor.on("PUT", "/v2/device_operations/change_simstate", Reply({"error": "state must be suspend or restore"},
                                                                    status=400))
    with pytest.raises(Refused, match="state must be suspend or restore"):
        await client.bulk("change_simstate", [ICCID_A], {"state": "pause"})


async def test_a_bulk_answer_without_results_is_a_bad_response(client, vendor) -> None:
    vendor.on("POST", "/v2/device_operations/remove_usage_limit", [1, 2])
    with pytest.raises(BadResponse, match="no status"):
        await client.bulk("remove_usage_limit", [ICCID_A])


async def test_calculate_etf_keeps_the_vendors_text(client, vendor) -> None:
    vendor.on("GET", f"{DEVICES}/{ICCID_A}/calculate_etf", {ICCID_A: "100.0"})
    assert await client.calculate_etf(ICCID_A) == "100.0"


# --- normalisation ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (False, False), ("true", True), ("FALSE", False), (" yes ", True), (1, True), (0, False),
    ("0", False), (None, None), ("", None), ("maybe", None), (2, None),
])
def test_as_bool(value: Any, expected: bool | None) -> None:
    assert as_bool(value) is expected


@pytest.mark.parametrize(("value", "expected"), [
    (12, 12), ("12", 12), ("1,024", 1024), ("1.6e3", 1600), (12.6, 13), ("", None), ("null", None), (None, None),
    (True, None), ("NaN", None), ("abc", None), ([1], None),
])
def test_as_int(value: Any, expected: int | None) -> None:
    assert as_int(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-12-02T06:15:00Z", "2026-12-02T06:15:00Z"),
    ("2026-12-02T06:15:00.000Z", "2026-12-02T06:15:00Z"),
    ("2026-12-02T07:15:00+01:00", "2026-12-02T06:15:00Z"),
    ("2026-12-02T07:15:00.123456789+01:00", "2026-12-02T06:15:00Z"),
    ("2026-12-02 06:15:00", "2026-12-02T06:15:00Z"),  # no zone means UTC
    ("2026-12-02 06:15:00 UTC", "2026-12-02T06:15:00Z"),
    ("2026-12-02 01:15:00 -0500", "2026-12-02T06:15:00Z"),
    ("2026-12-02", "2026-12-02T00:00:00Z"),
    ("20261202T061500Z", "2026-12-02T06:15:00Z"),
    ("2026/12/02 06:15:00", "2026-12-02T06:15:00Z"),
    ("12/02/2026 06:15:00", "2026-12-02T06:15:00Z"),
    ("Wed, 02 Dec 2026 06:15:00 GMT", "2026-12-02T06:15:00Z"),
    (1796192100, "2026-12-02T06:15:00Z"), ("1796192100000", "2026-12-02T06:15:00Z"),
    ("", None), (None, None), ("yesterday", None), ("0000-00-00 00:00:00", None), (0, None), (True, None),
])
def test_parse_time_tolerates_the_documented_looseness(value: Any, expected: str | None) -> None:
    assert parse_time(value) == expected


@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2199, 12, 31)))
def test_parse_time_round_trips_any_iso_time(moment: datetime) -> None:
    text = moment.replace(microsecond=0).isoformat()
    assert parse_time(text) == moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert parse_time(text + "Z") == parse_time(text)


def test_unwrap_list_and_object() -> None:
    assert unwrap_list([1, 2]) == [1, 2]
    assert unwrap_list({"devices": [1]}) == [1]
    assert unwrap_list({"whatever": [1], "total": 1}) == [1]
    assert unwrap_list({"device_name": "x"}) == [{"device_name": "x"}]
    assert unwrap_list(None) == [] and unwrap_list({}) == []
    assert unwrap_object({"device": {"a": 1}}) == {"a": 1}
    assert unwrap_object({"a": 1}) == {"a": 1}
    assert unwrap_object([{"a": 1}]) == {"a": 1}
    assert unwrap_object([]) is None and unwrap_object("x") is None


def test_status_map_tolerates_drift() -> None:
    assert status_map({"change_status": {"1": "Success"}}, "change_status") == {"1": "Success"}
    assert status_map({"status": {"1": {"message": "Success: Device data limit removed."}}}, "change_status") == {
        "1": "Success: Device data limit removed."}
    assert status_map({"1": "Success"}, "terminate_status") == {"1": "Success"}
    assert status_map([1], "status") is None and status_map({"status": 3, "x": [1]}, "status") is None
    assert succeeded("Success: Attempting SMS Send.") and succeeded("success")
    assert not succeeded("Error: Device does not exist.") and not succeeded("")
