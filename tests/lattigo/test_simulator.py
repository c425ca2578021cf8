"""The Lattigo simulator against the vendor document (and the vendor-notes facts)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetbridge_plugins.lattigo.simulator import ROUTES, Simulator, create_app

from .conftest import load_fixture

KEY, SECRET = "sim-key", "sim-secret"
AUTH = aiohttp.encode_basic_auth(KEY, SECRET)


class Clock:
    def __init__(self, start: float = 1_796_192_100.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


class Api:
    """A thin client: JSON in, (status, headers, JSON) out."""

    def __init__(self, client: TestClient, sim: Simulator) -> None:
        self.client, self.sim = client, sim

    async def call(self, method: str, path: str, *, auth: str | None = AUTH, **kwargs: Any) -> tuple[int, Any, Any]:
        headers = {"Authorization": auth} if auth else {}
        async with self.client.request(method, path, headers=headers, **kwargs) as resp:
            text = await resp.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return resp.status, resp.headers, body

    async def get(self, path: str, **params: Any) -> Any:
        status, _, body = await self.call("GET", path, params={k: str(v) for k, v in params.items()})
        assert status == 200, body
        return body

    async def op(self, method: str, operation: str, body: dict[str, Any]) -> tuple[int, Any]:
        status, _, answer = await self.call(method, f"/v2/device_operations/{operation}", json=body)
        return status, answer

    def name(self, index: int = 0) -> str:
        return list(self.sim.devices)[index]


@pytest.fixture
async def make_api() -> AsyncIterator[Callable[..., Any]]:
    """Factory: a simulator app (no ticker, a test clock) behind a TestClient."""
    clients: list[TestClient] = []

    async def go(devices: int = 12, **options: Any) -> Api:
        options.setdefault("tick", 0)
        options.setdefault("host_time", Clock())
        options.setdefault("carrier_delay", (10.0, 20.0))
        options.setdefault("sms_delay", (2.0, 4.0))
        app = create_app(accounts={KEY: SECRET, "other-key": "other-secret"}, devices=devices, seed=5, **options)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return Api(client, app["sim"])

    yield go
    for client in clients:
        await client.close()


# --- auth and routes --------------------------------------------------------------------------------

async def test_every_documented_endpoint_is_routed() -> None:
    paths = {path for _, path, _ in ROUTES}
    operations = {"activation_request", "change_cost_center", "change_simstate", "remove_usage_limit", "send_sms",
                  "set_usage_limit", "terminate_service", "upload_request"}
    leaves = {"get_sms", "note", "device_reports", "daily_data_usages", "monthly_data_usages", "cellular_locate",
              "calculate_etf"}
    assert {f"/v2/device_operations/{o}" for o in operations} <= paths
    assert {f"/v2/devices/{{name}}/{leaf}" for leaf in leaves} <= paths
    assert {"/v2/devices", "/v2/devices/{name}", "/v2/rate_plans", "/v2/users"} <= paths


@pytest.mark.parametrize("auth", [None, "Basic " + "bm9wZTpub3Bl", aiohttp.encode_basic_auth(KEY, "wrong"),
                                  "Bearer abc", "Basic !!!"])
async def test_basic_auth_is_required(make_api, auth) -> None:
    api = await make_api()
    status, headers, body = await api.call("GET", "/v2/devices", auth=auth)
    assert status == 401 and body == {"error": "401 Unauthorized"}
    assert headers["WWW-Authenticate"].startswith("Basic")


async def test_devices_are_named_by_iccid_and_split_between_accounts(make_api) -> None:
    api = await make_api(devices=6)
    names = await api.get("/v2/devices")
    assert len(names) == 3 and all(n.startswith("89") and len(n) == 20 for n in names)
    mine = await api.get("/v2/devices", details="true")
    assert [d["device_name"] for d in mine] == names and all(d["iccid"] == d["device_name"] for d in mine)
    documented = {"id", "device_name", "ip_address", "ipv6", "note", "state", "mdn", "meid", "imsi", "imei", "iccid",
                  "esn", "msisdn", "min", "connected", "last_connection_date", "cost_center", "last_activation_date",
                  "latitude", "longitude", "address", "bytes_used", "sms_used", "note1", "note2", "note3"}
    assert all(documented <= set(d) for d in mine)
    foreign = next(n for n, d in api.sim.devices.items() if d.owner == "other-key")
    status, _, _ = await api.call("GET", f"/v2/devices/{foreign}")
    assert status == 403  # another account's ICCID: 403, not 404
    status, _, _ = await api.call("GET", "/v2/devices/89000000000000000000")
    assert status == 404


async def test_types_and_times_drift_like_production(make_api) -> None:
    api = await make_api(devices=6)
    strict, loose, offset = await api.get("/v2/devices", details="true")
    assert isinstance(strict["connected"], bool) and isinstance(strict["bytes_used"], int)
    assert strict["last_connection_date"].endswith("Z")
    assert loose["connected"] in ("true", "false") and isinstance(loose["bytes_used"], str)
    assert "T" not in loose["last_connection_date"]  # "2026-12-02 06:15:00": no zone means UTC
    assert offset["last_connection_date"].endswith(".000+00:00")
    assert strict["state"] == "active" and {"carrier_state", "raw_carrier_state", "sku"} <= set(strict)


async def test_wrappers_and_result_objects_when_asked(make_api) -> None:
    api = await make_api(devices=4, wrap_lists=True, wrap_objects=True, status_objects=True)
    assert set(await api.get("/v2/devices", details="true")) == {"devices"}
    assert set(await api.get(f"/v2/devices/{api.name()}")) == {"device"}
    _, body = await api.op("PUT", "change_cost_center", {"device_names": [api.name()], "cost_center": "X"})
    assert body == {"change_status": {api.name(): {"message": "Success"}}}


# --- pagination ---------------------------------------------------------------------------------------

async def test_pagination_headers_follow_grape_kaminari(make_api) -> None:
    api = await make_api(devices=50, per_page=10, max_per_page=20)  # 25 devices for our key
    status, headers, page = await api.call("GET", "/v2/devices", params={"details": "true"})
    assert status == 200 and len(page) == 10
    assert {k: headers[k] for k in ("X-Total", "X-Total-Pages", "X-Page", "X-Per-Page", "X-Next-Page",
                                    "X-Prev-Page", "X-Offset")} == {
        "X-Total": "25", "X-Total-Pages": "3", "X-Page": "1", "X-Per-Page": "10", "X-Next-Page": "2",
        "X-Prev-Page": "", "X-Offset": "0"}
    _, headers, page = await api.call("GET", "/v2/devices", params={"page": "2", "per_page": "100"})
    assert len(page) == 5 and headers["X-Per-Page"] == "20" and headers["X-Next-Page"] == ""  # capped
    _, headers, page = await api.call("GET", "/v2/devices", params={"page": "9"})
    assert page == [] and headers["X-Page"] == "9"
    status, _, body = await api.call("GET", "/v2/devices", params={"page": "zero"})
    assert status == 400 and "page" in body["error"]


async def test_unpaged_mode_has_no_headers(make_api) -> None:
    api = await make_api(devices=60, per_page=None)
    _, headers, page = await api.call("GET", "/v2/devices", params={"page": "2", "per_page": "5"})
    assert len(page) == 30 and "X-Next-Page" not in headers


async def test_rate_plans_and_users_are_paged_lists(make_api) -> None:
    api = await make_api(per_page=2)
    _, headers, plans = await api.call("GET", "/v2/rate_plans")
    assert len(plans) == 2 and headers["X-Total"] == "4" and headers["X-Next-Page"] == "2"
    assert {"name", "monthly_data_allowance_bytes", "days_in_term", "overage_sms_unit_cost"} <= set(plans[0])
    assert await api.get("/v2/users", per_page=10) == ["admin@acme.example", "ops@acme.example",
                                                       "billing@acme.example"]


# --- the world moves --------------------------------------------------------------------------------

async def test_usage_grows_while_connected(make_api) -> None:
    api = await make_api(usage_granularity=60)
    d = api.sim.devices[api.name()]
    d.connected = True
    before, today_before = d.bytes_used, api.sim.day_usage(d, int(api.sim.t // 86400))[0]
    api.sim.step(600)
    if d.connected:
        assert d.bytes_used > before
        assert api.sim.day_usage(d, int(api.sim.t // 86400))[0] > today_before
    [day] = await api.get(f"/v2/devices/{api.name()}/daily_data_usages", start_date="2026-12-02",
                          end_date="2026-12-02")
    assert set(day) == {"id", "date_for", "bytes_used", "sms_used"} and day["date_for"] == "2026-12-02"
    months = await api.get(f"/v2/devices/{api.name()}/monthly_data_usages", start_date="2026-10-01",
                           end_date="2026-12-02")
    assert [m["date_for"] for m in months][-1] == "2026-12-01"
    assert int(months[-1]["bytes_used"]) >= int(day["bytes_used"])


async def test_devices_go_offline_and_come_back(make_api) -> None:
    api = await make_api(devices=40, mean_online=60, mean_offline=60)
    active = [d for d in api.sim.devices.values() if d.state == "active"]
    seen: dict[str, set[bool]] = {d.device_name: {d.connected} for d in active}
    for _ in range(30):
        api.sim.step(30)
        for d in active:
            seen[d.device_name].add(d.connected)
    assert sum(1 for s in seen.values() if s == {True, False}) > len(active) / 2
    suspended = [d for d in api.sim.devices.values() if d.state != "active"]
    assert all(not d.connected for d in suspended)


async def test_suspend_and_restore_follow_after_the_carrier_delay(make_api) -> None:
    api = await make_api()
    name, foreign = api.name(), next(n for n, d in api.sim.devices.items() if d.owner == "other-key")
    status, body = await api.op("PUT", "change_simstate", {"device_names": [name, foreign, "8900"], "state": "suspend"})
    assert status == 200
    assert body == {"change_status": {name: "Success", foreign: "Error: Device does not exist.",
                                      "8900": "Error: Device does not exist."}}
    device = await api.get(f"/v2/devices/{name}")
    assert device["state"] == "active" and device["carrier_state"] == "Suspend Pending"  # accepted, not done
    api.sim.step(25)
    device = await api.get(f"/v2/devices/{name}")
    assert device["state"] == "suspend" and device["connected"] is False
    await api.op("PUT", "change_simstate", {"device_names": [name], "state": "restore"})
    api.sim.step(25)
    assert api.sim.devices[name].state == "active" and api.sim.devices[name].connected
    status, body = await api.op("PUT", "change_simstate", {"device_names": [name], "state": "pause"})
    assert status == 400 and "suspend or restore" in body["error"]


async def test_form_encoded_operations_as_in_the_curl_examples(make_api) -> None:
    api = await make_api()
    a, b = api.name(0), api.name(2)
    status, _, body = await api.call("PUT", "/v2/device_operations/change_cost_center",
                                     data=[("device_names[]", a), ("device_names[]", b), ("cost_center", "Acme")])
    assert status == 200 and body == {"change_status": {a: "Success", b: "Success"}}
    assert api.sim.devices[a].cost_center == api.sim.devices[b].cost_center == "Acme"


async def test_sms_mt_status_objects(make_api) -> None:
    api = await make_api()
    vdf, plain = api.name(0), api.name(2)  # the first device is on VDF, the others mostly not
    assert api.sim.devices[vdf].carrier == "VDF"
    sent_before = api.sim.devices[vdf].sms_used
    status, body = await api.op("POST", "send_sms", {"device_names": [vdf, "8900"], "sms_text": "ping"})
    assert body == {"status": {vdf: "Success: Attempting SMS Send.",
                               "8900": "Error: Device does not exist, or does not support SMS."}}
    [record] = await api.get(f"/v2/devices/{vdf}/get_sms", start_date="2026-12-02", end_date="2026-12-02")
    assert set(record) == {"event_id", "event_status", "event_timestamp", "event_type", "imsi", "message_body",
                           "msisdn", "report_timestamp", "failure_reason"}
    assert (record["event_status"], record["message_body"]) == ("PENDING", "ping")
    api.sim.step(5)
    [record] = await api.get(f"/v2/devices/{vdf}/get_sms", start_date="2026-12-02", end_date="2026-12-02")
    assert record["event_status"] == "DELIVERED" and record["report_timestamp"]
    assert api.sim.devices[vdf].sms_used == sent_before + 1
    if api.sim.devices[plain].carrier != "VDF":
        status, _, body = await api.call("GET", f"/v2/devices/{plain}/get_sms")
        assert status == 400 and "VDF" in body["error"]


async def test_sms_to_an_offline_device_waits_then_expires(make_api) -> None:
    api = await make_api(mean_online=0, mean_offline=0)
    d = api.sim.devices[api.name()]
    d.connected = False
    await api.op("POST", "send_sms", {"device_names": [d.device_name], "sms_text": "later"})
    api.sim.step(600)
    assert d.sms[-1]["event_status"] == "PENDING"
    for _ in range(25):
        api.sim.step(3600)
    assert (d.sms[-1]["event_status"], d.sms[-1]["failure_reason"]) == ("EXPIRED", "Validity period expired")


async def test_usage_limits_suspend_the_device(make_api) -> None:
    api = await make_api(usage_granularity=60)
    name = api.name()
    d = api.sim.devices[name]
    status, body = await api.op("POST", "set_usage_limit", {"device_names": [name], "kb_limit": 1,
                                                             "usernames": ["ops@acme.example"], "action": "suspend"})
    assert body == {"status": {name: "Success: Device data limit is set."}}
    assert d.state == "suspend"  # this month's usage is already above 1 KB
    status, body = await api.op("POST", "set_usage_limit", {"device_names": [name], "kb_limit": 10,
                                                             "usernames": ["nobody"]})
    assert status == 400
    _, body = await api.op("POST", "remove_usage_limit", {"device_names": [name]})
    assert body == {"status": {name: "Success: Device data limit removed."}} and d.usage_limit_kb is None


async def test_terminate_etf_and_locate(make_api) -> None:
    api = await make_api()
    name = api.name()
    for method in ("GET", "POST"):  # documented as GET, exemplified as POST
        status, _, body = await api.call(method, f"/v2/devices/{name}/calculate_etf")
        assert status == 200 and isinstance(body[name], str) and float(body[name]) >= 0
    _, _, body = await api.call("POST", f"/v2/devices/{name}/cellular_locate", json={})
    assert body == {name: "Location request submitted to carrier."} and api.sim.locate_charges == 1
    api.sim.step(25)
    assert api.sim.devices[name].location_confidence is not None
    _, body = await api.op("PUT", "terminate_service", {"device_names": [name]})
    assert body == {"terminate_status": {name: "Success"}}
    api.sim.step(25)
    assert api.sim.devices[name].state == "deactivated" and not api.sim.devices[name].connected


async def test_notes(make_api) -> None:
    api = await make_api()
    name = api.name()
    status, _, body = await api.call("PUT", f"/v2/devices/{name}/note", json={"field_name": "note2", "note": "dock"})
    assert status == 200 and body == {name: "Success"} and api.sim.devices[name].note2 == "dock"
    status, _, _ = await api.call("PUT", f"/v2/devices/{name}/note", data={"field_name": "note", "note": "form"})
    assert status == 200 and api.sim.devices[name].note == "form"
    status, _, _ = await api.call("PUT", f"/v2/devices/{name}/note", json={"field_name": "note9", "note": "x"})
    assert status == 400


async def test_device_reports_for_gps_devices(make_api) -> None:
    api = await make_api()
    reports = await api.get(f"/v2/devices/{api.name(0)}/device_reports")
    fields = {"id", "latitude", "longitude", "speed", "heading", "altitude", "gps_quality", "unit_status",
              "time_of_fix", "battery", "voltage", "event_code", "temperature", "created_at", "type", "fuel_level",
              "distance", "rssi"}
    assert reports and all(set(r) == fields for r in reports)
    assert reports == sorted(reports, key=lambda r: r["time_of_fix"])
    assert await api.get(f"/v2/devices/{api.name(1)}/device_reports") == []  # no GPS


async def test_activation_request_answers_422_with_processed_and_unprocessed(make_api) -> None:
    api = await make_api()
    body = {"rate_plan_name": "ACME Co 5MB Rate Plan", "activation_requests": [
        {"imei": "490154203237518", "iccid": "89222222222222222222"},
        {"imei": "333333333333333", "iccid": "89444444444444444444", "note": "bad IMEI"},
        {"imei": "356938035643809", "iccid": "89666666666666666666", "note3": "any order"},
    ]}
    status, answer = await api.op("POST", "activation_request", body)
    documented = load_fixture("activation_422.json")
    assert status == 422 and set(answer) == set(documented)
    assert set(answer["processed"][0]) == set(documented["processed"][0])
    assert [p["iccid"] for p in answer["processed"]] == ["89222222222222222222", "89666666666666666666"]
    [bad] = answer["unprocessed"]
    assert set(bad) == set(documented["unprocessed"][0]) and bad["device_index"] == 1
    assert json.loads(bad["error"]) == {"imei": ["is invalid"]}  # a JSON string needing a second decode
    new = api.sim.devices["89222222222222222222"]
    assert new.state == "pending"
    api.sim.step(25)
    assert new.state == "active"
    status, answer = await api.op("POST", "activation_request", {
        "rate_plan_name": "ACME Co 5MB Rate Plan", "activation_requests": [
            {"imei": "490154203237518", "iccid": "89222222222222222222"}]})
    assert status == 422 and json.loads(answer["unprocessed"][0]["error"]) == {"iccid": ["has already been taken"]}
    status, answer = await api.op("POST", "activation_request", {"rate_plan_name": "nope",
                                                                  "activation_requests": [{}]})
    assert status == 400


async def test_activation_not_permitted_is_403(make_api) -> None:
    api = await make_api(can_activate=False)
    status, _ = await api.op("POST", "activation_request", {"rate_plan_name": "ACME Co 5MB Rate Plan",
                                                             "activation_requests": [{}]})
    assert status == 403


async def test_upload_request(make_api) -> None:
    api = await make_api()
    body = {"upload_email": "name@vendor.example", "upload_sku": "XYZ000000012345",
            "upload_ids": [{"imei": "490154203237518"}, {"imei": "333333333333333"}]}
    status, answer = await api.op("POST", "upload_request", body)
    assert status == 422
    assert answer["processed"] == [{"imei": "490154203237518", "sku": "XYZ000000012345",
                                    "email": "name@vendor.example"}]
    assert answer["unprocessed"] == [{"device_index": 1, "error": '{"imei": ["is invalid"]}',
                                      "input": {"imei": "333333333333333"}}]
    status, _ = await api.op("POST", "upload_request", {**body, "upload_ids": [{"imei": "490154203237518"}]})
    assert status == 200
    status, _ = await api.op("POST", "upload_request", {**body, "upload_email": "nope"})
    assert status == 400


async def test_device_names_validation_and_cap(make_api) -> None:
    api = await make_api(max_names=2)
    status, _ = await api.op("POST", "remove_usage_limit", {"device_names": []})
    assert status == 400
    status, _ = await api.op("POST", "remove_usage_limit", {"device_names": ["1", "2", "3"]})
    assert status == 400
    status, body = await api.op("POST", "remove_usage_limit", {"device_names": api.name()})  # one, not an array
    assert status == 200 and list(body["status"]) == [api.name()]


# --- rate limiting and faults ---------------------------------------------------------------------------

async def test_rate_limit_answers_429_with_retry_after(make_api) -> None:
    clock = Clock()
    api = await make_api(rate_limit=(2, 10.0), host_time=clock)
    assert [(await api.call("GET", "/v2/users"))[0] for _ in range(3)] == [200, 200, 429]
    status, headers, _ = await api.call("GET", "/v2/users")
    assert status == 429 and headers["Retry-After"] == "10"
    clock.t += 10
    assert (await api.call("GET", "/v2/users"))[0] == 200


async def test_switchable_faults(make_api) -> None:
    api = await make_api()
    faults = api.sim.faults
    faults.update({"http_500": 1})
    assert (await api.call("GET", "/v2/users"))[0] == 500
    faults.update({"html_error": 1, "html_status": 200})
    status, headers, body = await api.call("GET", "/v2/users")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and "<html>" in body
    faults.update({"malformed_json": 1})
    status, _, body = await api.call("GET", "/v2/users")
    assert status == 200 and isinstance(body, str) and body.startswith('["admin')
    faults.update({"rate_limit": 2, "retry_after": 3})
    assert [(await api.call("GET", "/v2/users"))[:2][0] for _ in range(3)] == [429, 429, 200]
    faults.update({"slow": 0.2})
    started = time.perf_counter()
    assert (await api.call("GET", "/v2/users"))[0] == 200
    assert time.perf_counter() - started >= 0.2


async def test_faults_over_http_and_request_counts(make_api) -> None:
    api = await make_api()
    status, _, body = await api.call("POST", "/_sim/faults", auth=None, json={"rate_limit": 1, "retry_after": 2})
    assert status == 200 and body["rate_limit"] == 1
    status, headers, _ = await api.call("GET", "/v2/rate_plans")
    assert status == 429 and headers["Retry-After"] == "2"
    status, _, body = await api.call("POST", "/_sim/faults?reset=1", auth=None, json={})
    assert body["rate_limit"] == 0 and body["retry_after"] == 0
    status, _, body = await api.call("POST", "/_sim/faults", auth=None, json={"nonsense": 1})
    assert status == 400
    await api.call("GET", f"/v2/devices/{api.name()}/daily_data_usages")
    assert api.sim.request_counts["/v2/rate_plans"] == 1
    assert api.sim.request_counts["/v2/devices/{name}/daily_data_usages"] == 1
    _, _, body = await api.call("GET", "/_sim/requests", auth=None)
    assert body["total"] == 2
    _, _, truth = await api.call("GET", f"/_sim/devices?names={api.name()}", auth=None)
    assert truth["devices"][0]["device_name"] == api.name()


async def test_ten_thousand_devices_are_cheap() -> None:
    started = time.perf_counter()
    sim = Simulator({KEY: SECRET}, devices=10_000, seed=2, host_time=Clock())
    for _ in range(10):
        sim.step(60)
    sim.step(2 * 86400)
    assert time.perf_counter() - started < 3.0
    assert len(sim.devices) == 10_000 and len({d.ip_address for d in sim.devices.values()}) == 10_000
