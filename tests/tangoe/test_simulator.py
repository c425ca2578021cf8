"""The MobProc simulator against the vendor document and vendor-notes."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fleetbridge_plugins.tangoe.simulator import API_PREFIX, TOKEN_PATH, Simulator, create_app

USER, PASSWORD, CLIENT, SECRET = "command://fleet.admin", "pw-1", "fb", "client-secret-1"
GRANT = {"client_id": CLIENT, "client_secret": SECRET, "scope": "MOBPROC"}


class Api:
    """A thin client of the simulator."""

    def __init__(self, client: TestClient, sim: Simulator) -> None:
        self.client, self.sim = client, sim
        self.token = ""

    async def grant(self, **params: str) -> tuple[int, dict[str, Any]]:
        async with self.client.post(TOKEN_PATH, data={**GRANT, **params}) as resp:
            return resp.status, await resp.json()

    async def login(self) -> dict[str, Any]:
        status, body = await self.grant(grant_type="password", username=USER, password=PASSWORD)
        assert status == 200, body
        self.token = body["access_token"]
        return body

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-TNGO-TENANT": "ACME", "client_id": CLIENT, **extra}

    async def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> tuple[int, Any]:
        async with self.client.get(API_PREFIX + path, params={k: str(v) for k, v in params.items()},
                                   headers=self.headers() if headers is None else headers) as resp:
            text = await resp.text()
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, text

    async def post(self, path: str, body: Any, **params: Any) -> tuple[int, Any]:
        async with self.client.post(API_PREFIX + path, json=body, params=params, headers=self.headers()) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def api_factory():
    clients: list[TestClient] = []

    async def make(devices: int = 30, **options: Any) -> Api:
        options.setdefault("tick", 0)
        app = create_app(users={USER: PASSWORD}, clients={CLIENT: SECRET}, tenant="ACME", devices=devices, **options)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        api = Api(client, app["sim"])
        await api.login()
        return api

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def api(api_factory) -> Api:
    return await api_factory()


# --- token service ----------------------------------------------------------------------------------

async def test_password_grant_answers_a_bearer_pair_for_one_hour(api) -> None:
    body = await api.login()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and body["refresh_token"]
    async with api.client.post(TOKEN_PATH, params={**GRANT, "grant_type": "password", "username": USER,
                                                   "password": PASSWORD}) as resp:
        assert resp.status == 200  # the vendor tutorials put the parameters in the query string


@pytest.mark.parametrize(("params", "status", "error"), [
    ({"grant_type": "password", "username": USER, "password": "nope"}, 400, "invalid_grant"),
    ({"grant_type": "password", "username": "fleet.admin", "password": PASSWORD}, 400, "invalid_grant"),
    ({"grant_type": "password", "username": USER, "password": PASSWORD, "client_secret": "x"}, 401, "invalid_client"),
    ({"grant_type": "password", "username": USER, "password": PASSWORD, "scope": "OTHER"}, 400, "invalid_scope"),
    ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
])
async def test_refused_grants_answer_oauth_errors(api, params, status, error) -> None:
    got, body = await api.grant(**params)
    assert (got, body["error"]) == (status, error) and body["error_description"]


async def test_refresh_grant_rotates_the_refresh_token(api) -> None:
    first = await api.login()
    status, second = await api.grant(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    status, body = await api.grant(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")  # single use
    api.sim.refresh_enabled = False
    status, body = await api.grant(grant_type="refresh_token", refresh_token=second["refresh_token"])
    assert (status, body["error"]) == (400, "unauthorized_client")
    assert api.sim.grant_counts == {"password": 2, "refresh_token": 1}  # the fixture logged in too


async def test_access_token_expires_after_an_hour_on_the_server_clock(api) -> None:
    assert (await api.get("/me"))[0] == 200
    api.sim.advance_clock(3600)
    status, body = await api.get("/me")
    assert status == 401 and set(body) == {"errorCode", "id", "message", "status"}


# --- headers and context -------------------------------------------------------------------------------

@pytest.mark.parametrize(("drop", "code"), [("X-TNGO-TENANT", "400-tenant-missing"),
                                            ("client_id", "400-client_id-missing")])
async def test_missing_tenant_or_client_id_is_a_400_in_the_document_format(api, drop, code) -> None:
    headers = api.headers()
    headers[drop] = ""  # an empty header counts as unset
    status, body = await api.get("/me", headers)
    assert status == 400
    assert set(body) == {"errorCode", "id", "message", "status"}
    assert body["errorCode"] == code and body["status"] == 400 and len(body["id"]) == 5


async def test_unknown_tenant_is_forbidden(api) -> None:
    status, body = await api.get("/me", api.headers(**{"X-TNGO-TENANT": "OTHER"}))
    assert (status, body["status"]) == (403, 403)


async def test_context_headers_narrow_and_employee_id_wins(api) -> None:
    sim = api.sim
    asset = next(d for d in sim.devices.values() if d.employee_id)
    emp = sim.employees[asset.employee_id]
    other = next(e for e in sim.employees.values() if e.id not in (emp.id, sim.admin.id))
    mine = {d.id for d in sim.devices.values() if d.employee_id == emp.id}
    for headers in ({"X-TNGO-CONTEXT-EMPLOYEEID": emp.id},
                    {"X-TNGO-CONTEXT-COMPANYEMPLOYEEID": emp.company_id},
                    {"X-TNGO-CONTEXT-EMPLOYEEID": emp.id, "X-TNGO-CONTEXT-COMPANYEMPLOYEEID": other.company_id},
                    {"X-TNGO-CONTEXT-EMPLOYEEID": "", "X-TNGO-CONTEXT-COMPANYEMPLOYEEID": emp.company_id}):
        status, body = await api.get("/assets/devices", api.headers(**headers), limit=100, offset=0)
        assert status == 200 and {d["id"] for d in body["devices"]} == mine, headers
    status, body = await api.get("/me", api.headers(**{"X-TNGO-CONTEXT-EMPLOYEEID": emp.id}))
    assert body["me"]["actor"]["id"] == emp.id and body["me"]["authenticatedUser"]["id"] == sim.admin.id
    status, body = await api.get("/me", api.headers(**{"X-TNGO-CONTEXT-EMPLOYEEID": "999"}))
    assert (status, body["errorCode"]) == (403, "403-context-employee")
    status, body = await api.get("/assets/devices", limit=100, offset=0, employee=emp.id)  # a filter, no context
    assert {d["id"] for d in body["devices"]} == mine


# --- paging ----------------------------------------------------------------------------------------------

async def test_limit_and_offset_are_required(api) -> None:
    status, body = await api.get("/assets/devices", limit=10)
    assert (status, body["errorCode"]) == (400, "400-paging-missing")


@pytest.mark.parametrize(("mode", "first"), [("standard", 15), ("premium", 10)])
async def test_offset_behaviours(api, mode, first) -> None:
    api.sim.offset_mode = mode
    status, body = await api.get("/assets/devices", limit=10, offset=15)
    ids = [d["id"] for d in body["devices"]]
    assert ids == api.sim.device_order[first:first + 10]
    meta = body["_meta"]
    assert (meta["limit"], meta["offset"], meta["totalCount"]) == (10, 15, 30)
    assert "offset=25" in meta["hrefNext"] and meta["hrefNext"].startswith(str(api.client.make_url(API_PREFIX)))


async def test_position_links_only_when_they_lead_elsewhere(api) -> None:
    _, first = await api.get("/assets/devices", limit=10, offset=0)
    assert {"hrefNext", "hrefEnd"} <= first["_meta"].keys()
    assert not {"hrefStart", "hrefPrevious"} & first["_meta"].keys()
    _, last = await api.get("/assets/devices", limit=10, offset=20)
    assert "hrefNext" not in last["_meta"] and {"hrefStart", "hrefPrevious"} <= last["_meta"].keys()


async def test_limit_is_capped(api_factory) -> None:
    api = await api_factory(max_limit=7)
    _, body = await api.get("/assets/services", limit=100, offset=0)
    assert len(body["services"]) == 7 and body["_meta"]["limit"] == 7


async def test_shift_fault_moves_later_pages_by_one(api) -> None:
    api.sim.offset_mode = "standard"
    api.sim.faults.shift = 1
    _, one = await api.get("/assets/devices", limit=10, offset=0)
    _, two = await api.get("/assets/devices", limit=10, offset=10)
    assert two["devices"][0]["id"] == one["devices"][-1]["id"]
    assert two["_meta"]["totalCount"] == 31


async def test_sparse_list_records_lack_the_serial_that_the_detail_has(api_factory) -> None:
    api = await api_factory(sparse=1.0)
    _, body = await api.get("/assets/devices", limit=5, offset=0)
    record = body["devices"][0]
    assert "serialNumber" not in record
    _, detail = await api.get(f"/assets/devices/{record['id']}")
    assert detail["device"]["serialNumber"]["value"] == api.sim.devices[record["id"]].imei


# --- orders ---------------------------------------------------------------------------------------------

def line_of(sim: Simulator, carrier: str, status: str = "ACTIVE") -> Any:
    return next(ln for ln in sim.lines.values() if ln.carrier_id == carrier and ln.status == status and ln.employee_id)


def suspend_request(line: Any, **fields: Any) -> dict[str, Any]:
    props = [{"id": "SERVICE_NUMBER", "type": "TEXT", "text": line.number}]
    props += [{"id": k, "type": "DATE", "date": v} for k, v in fields.items()]
    return {"orderRequest": {"externalOrderNumber": "X-1", "transactionType": "SUSPEND", "serviceId": line.id,
                             "properties": [{"groupId": "MISCELLANEOUS", "fields": props}]}}


async def test_order_properties_depend_on_carrier(api) -> None:
    line = line_of(api.sim, "98")
    _, body = await api.get("/orders/properties", transactionType="SUSPEND", service=line.id)
    fields = {f["id"]: f["validation"] for f in body["properties"]["items"][0]["fields"]}
    assert fields["SERVICE_NUMBER"] == "REQUIRED" and fields["PREFERRED_SUSPENSION_DATE"] == "REQUIRED"
    status, body = await api.get("/orders/properties", transactionType="SUSPEND")
    assert (status, body["message"]) == (400, "Vendor ID or Service ID must be passed in.")


async def test_dry_run_places_nothing_then_the_order_advances_and_suspends(api_factory) -> None:
    api = await api_factory(initial_orders=False, order_delay=(10, 10))
    sim = api.sim
    line = line_of(sim, "98")
    status, body = await api.post("/orders", suspend_request(line), confirm="true")
    assert (status, body["status"]) == (400, "ERROR") and "PREFERRED_SUSPENSION_DATE" in body["errors"][0]["message"]
    request = suspend_request(line, PREFERRED_SUSPENSION_DATE="2027-01-15T00:00:00+00:00")
    status, body = await api.post("/orders", request, confirm="true")
    assert status == 200 and body["status"] == "SUCCESS" and "orderConfirmation" in body and sim.orders == {}
    status, body = await api.post("/orders", request)
    order = body["order"]
    assert (order["status"], order["transactionType"], order["serviceNumber"]) == ("ORDER_SUBMITTED", "SUSPEND",
                                                                                 line.number)
    sim.step(10)
    assert sim.orders[order["orderId"]].status == "IN_PROGRESS" and line.status == "ACTIVE"
    sim.step(10)
    assert sim.orders[order["orderId"]].status == "COMPLETED" and line.status == "SUSPENDED"
    _, listed = await api.get("/orders", limit=10, offset=0)
    assert [o["status"] for o in listed["orders"]] == ["COMPLETED"]
    status, body = await api.post("/orders", request, confirm="true")
    assert status == 400 and "SUSPENDED" in body["errors"][0]["message"]


async def test_transaction_types_not_allowed_are_forbidden(api_factory) -> None:
    api = await api_factory(transaction_types=["UPGRADE"])
    _, me = await api.get("/me")
    assert [t["id"] for t in me["me"]["transactionTypes"]] == ["UPGRADE"]
    status, body = await api.post("/orders", suspend_request(line_of(api.sim, "99")), confirm="true")
    assert status == 403 and body["status"] == "ERROR"


async def test_hardware_orders_ship_before_they_complete(api_factory) -> None:
    api = await api_factory(initial_orders=False, order_delay=(1, 1))
    order = api.sim.create_order(next(iter(api.sim.devices)), "UPGRADE")
    seen = []
    for _ in range(5):
        api.sim.step(1)
        seen.append(order.status)
    assert seen == ["APPROVED", "IN_PROGRESS", "SHIPPED", "COMPLETED", "COMPLETED"]


# --- faults and control ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("fault", "status", "check"), [
    ({"http_500": 1}, 500, lambda b: b["errorCode"] == "500-internal"),
    ({"html_error": 1}, 502, lambda b: "<html>" in b),
    ({"malformed_json": 1}, 200, lambda b: isinstance(b, str) and b.startswith('{"devices"')),
    ({"token_expiry": 1}, 401, lambda b: b["errorCode"] == "401-invalid-token"),
])
async def test_faults_switch_on_over_http_and_fire_once(api, fault, status, check) -> None:
    async with api.client.post("/_sim/faults", json=fault) as resp:
        assert resp.status == 200
    got, body = await api.get("/assets/devices", limit=5, offset=0)
    assert got == status and check(body)
    if "token_expiry" in fault:
        await api.login()
    assert (await api.get("/assets/devices", limit=5, offset=0))[0] == 200


async def test_bad_fault_is_refused_and_counts_are_served(api) -> None:
    async with api.client.post("/_sim/faults", json={"nonsense": 1}) as resp:
        assert resp.status == 400
    await api.get("/assets/devices", limit=5, offset=0)
    async with api.client.get("/_sim/requests") as resp:
        body = await resp.json()
    assert body["counts"]["GET /assets/devices"] == 1 and body["grants"] == {"password": 1}


async def test_settings_switch_the_offset_behaviour(api) -> None:
    async with api.client.post("/_sim/settings", json={"offset_mode": "standard"}) as resp:
        assert (await resp.json())["offset_mode"] == "standard"
    async with api.client.post("/_sim/settings", json={"offset_mode": "sideways"}) as resp:
        assert resp.status == 400


async def test_thousands_of_assets_are_cheap() -> None:
    started = time.perf_counter()
    sim = Simulator(devices=5000, tenant="ACME")
    assert len(sim.devices) == 5000 and len(sim.employees) > 4000
    assert time.perf_counter() - started < 2.0
