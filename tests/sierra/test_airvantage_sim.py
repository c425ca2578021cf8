"""The AirVantage simulator behaves like the documented server."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from fleetbridge_plugins.sierra.airvantage_sim import create_app
from fleetbridge_plugins.sierra.clock import ManualClock

from .conftest import NOW, basic_header

PARTNER = "787ef34132fe89734acb9871"


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url, self.token = session, url, ""

    async def login(self) -> None:
        async with self.session.post(f"{self.url}/api/oauth/token", headers={"Authorization": basic_header("c", "s")},
                                     data={"grant_type": "password", "username": "u", "password": "p"}) as resp:
            self.token = (await resp.json())["access_token"]

    async def call(self, method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, params=params, json=body,
                                        headers={"Authorization": f"Bearer {self.token}"}) as resp:
            raw = await resp.read()
            return resp.status, (None if not raw else await resp.json(content_type=None))


@pytest.fixture
async def av(serve, session) -> tuple[Any, Client, ManualClock]:
    clock = ManualClock(NOW)
    app = create_app({"c": "s"}, {"u": "p"}, devices=25, seed=3, clock=clock, op_delay=(1.0, 3.0))
    client = Client(session, await serve(app))
    await client.login()
    return app["sim"], client, clock


async def test_find_fields_paging_and_criteria(av) -> None:
    sim, client, _ = av
    status, first = await client.call("GET", "/api/v1/gateways", size="10")
    assert status == 200 and (first["count"], first["size"], first["offset"]) == (25, 10, 0)
    assert set(first["items"][0]) == {"uid", "state", "imei", "macAddress", "serialNumber", "type", "creationDate"}
    _, last = await client.call("GET", "/api/v1/gateways", size="10", offset="20", fields="uid,labels,metadata")
    assert len(last["items"]) == 5 and set(last["items"][0]) == {"uid", "labels", "metadata"}
    _, moving = await client.call("GET", "/api/v1/gateways", states="BEING_TRANSFERRED")
    _, moving_doc_form = await client.call("GET", "/api/v1/gateways", state="BEING_TRANSFERRED")
    assert moving == moving_doc_form and moving["count"] == 2
    _, typed = await client.call("GET", "/api/v1/gateways", type="mp7", assigned="false", metadata="env:prod")
    assert all(sim.gateways[i["uid"]].type == "MP70" and sim.gateways[i["uid"]].system_state is None
               for i in typed["items"])
    _, labelled = await client.call("GET", "/api/v1/gateways", labels="north,spare", fields="labels")
    assert labelled["count"] and all({"north", "spare"} & set(i["labels"]) for i in labelled["items"])
    assert (await client.call("GET", "/api/v1/gateways", company="nope"))[1]["error"] == "company.unknown"


@pytest.mark.parametrize(("body", "error"), [
    ({"type": "X"}, "gateway.missing.identifiers"),
    ({"serialNumber": "N1", "macAddress": "01-23-45-67-89-ab"}, "gateway.invalid.mac.address"),
    ({"serialNumber": "N1", "metadata": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]},
     "gateway.invalid.metadata"),
    ({"serialNumber": "N1", "metadata": [{"key": " ", "value": "1"}]}, "gateway.invalid.metadata"),
])
async def test_create_validation(av, body: dict[str, Any], error: str) -> None:
    _, client, _ = av
    status, answer = await client.call("POST", "/api/v1/gateways", body)
    assert (status, answer["error"]) == (400, error)


async def test_create_get_edit_delete(av) -> None:
    _, client, _ = av
    body = {"serialNumber": "CA0125698737", "imei": "187496536874560", "macAddress": "01:a2:03:78:05:06",
            "type": "gatewayType1", "labels": ["Label1"], "metadata": [{"key": "env", "value": "x"}]}
    status, created = await client.call("POST", "/api/v1/gateways", body)
    assert status == 200 and created["state"] == "INVENTORY" and isinstance(created["creationDate"], str)
    assert (await client.call("POST", "/api/v1/gateways", {"imei": "187496536874560"}))[1]["error"] == \
        "gateway.not.unique.identifiers"
    uid = created["uid"]
    status, edited = await client.call("PUT", f"/api/v1/gateways/{uid}", {"type": "M2MBoxPro"})
    assert edited["type"] == "M2MBoxPro" and edited["labels"] == ["Label1"]  # only the sent fields change
    assert (await client.call("DELETE", f"/api/v1/gateways/{uid}")) == (200, None)
    assert (await client.call("GET", f"/api/v1/gateways/{uid}")) == (404, {"error": "gateway.unknown",
                                                                         "errorParameters": [uid]})


async def test_edit_rules_transferred_and_assigned(av) -> None:
    sim, client, _ = av
    moving = next(g for g in sim.gateways.values() if g.state == "BEING_TRANSFERRED")
    assert (await client.call("PUT", f"/api/v1/gateways/{moving.uid}", {"labels": []}))[1]["error"] == \
        "gateway.being.transferred"
    active = next(g for g in sim.gateways.values() if g.system_state == "ACTIVE" and g.state == "INVENTORY")
    assert (await client.call("PUT", f"/api/v1/gateways/{active.uid}", {"metadata": []}))[1]["error"] == \
        "system.invalid.state"
    assert (await client.call("PUT", f"/api/v1/gateways/{active.uid}", {"labels": ["ok"]}))[0] == 200
    assert (await client.call("DELETE", f"/api/v1/gateways/{active.uid}"))[1]["error"] == "gateway.assigned"


async def test_label_operation_states_advance_with_the_clock(av) -> None:
    sim, client, clock = av
    targets = [g.uid for g in sim.own()[:3]]
    sim.label_failures.add(targets[2])
    status, answer = await client.call("POST", "/api/v1/operations/gateways/label",
                                       {"labels": {"add": ["france"]}, "criteria": {"uids": targets}})
    assert status == 200
    op = answer["operation"]
    states = []
    for _ in range(3):
        _, record = await client.call("GET", f"/api/v1/operations/{op}")
        states.append((record["state"], {c["state"]: c["count"] for c in record["counters"]}))
        clock.advance(1.5)
    assert states == [("SCHEDULED", {"PENDING": 3}), ("IN_PROGRESS", {"IN_PROGRESS": 3}),
                      ("FINISHED", {"SUCCESS": 2, "FAILURE": 1})]
    assert record["total"] == 3 and record["endDate"] > record["startDate"] > 0
    assert ["france" in sim.gateways[u].labels for u in targets] == [True, True, False]


@pytest.mark.parametrize(("body", "error"), [
    ({"labels": {"add": []}, "criteria": {"uids": ["x"]}}, "label.missing"),
    ({"labels": {"add": [f"l{i}" for i in range(101)]}, "criteria": {}}, "label.amount.exceeded"),
    ({"labels": {"add": ["x"]}}, "selection.invalid"),
    ({"labels": {"add": ["x"]}, "criteria": {"uids": ["nope"]}}, "selection.empty"),
])
async def test_label_operation_errors(av, body: dict[str, Any], error: str) -> None:
    _, client, _ = av
    assert (await client.call("POST", "/api/v1/operations/gateways/label", body))[1]["error"] == error


async def test_delete_operation_fails_assigned_gateways_in_their_tasks(av) -> None:
    sim, client, clock = av
    free = next(g.uid for g in sim.own() if g.system_state is None)
    assigned = next(g.uid for g in sim.own() if g.system_state is not None)
    assert (await client.call("POST", "/api/v1/operations/gateways/delete",
                              {"gateways": {"uids": [free], "label": "x"}}))[1]["error"] == "selection.invalid"
    assert (await client.call("POST", "/api/v1/operations/gateways/delete",
                              {"gateways": {"uids": [f"u{i}" for i in range(101)]}}))[1]["error"] == \
        "selection.max.uid.reached"
    _, answer = await client.call("POST", "/api/v1/operations/gateways/delete", {"gateways": {"uids": [free, assigned]}})
    clock.advance(3)
    _, record = await client.call("GET", f"/api/v1/operations/{answer['operation']}")
    assert {c["state"]: c["count"] for c in record["counters"]} == {"SUCCESS": 1, "FAILURE": 1}
    assert free not in sim.gateways and assigned in sim.gateways


async def test_transfer_operation_moves_gateways_out(av) -> None:
    sim, client, clock = av
    uid = sim.own()[0].uid
    assert (await client.call("POST", "/api/v1/operations/gateways/transfer",
                              {"gateways": {"uids": [uid]}}))[1]["error"] == "company.missing"
    assert (await client.call("POST", "/api/v1/operations/gateways/transfer",
                              {"destination": "stranger", "gateways": {"uids": [uid]}}))[1]["error"] == \
        "partner.unknown"
    _, answer = await client.call("POST", "/api/v1/operations/gateways/transfer",
                                  {"destination": PARTNER, "message": "Accept this!!", "gateways": {"uids": [uid]}})
    assert (await client.call("GET", f"/api/v1/gateways/{uid}"))[1]["state"] == "BEING_TRANSFERRED"
    clock.advance(3)
    _, record = await client.call("GET", f"/api/v1/operations/{answer['operation']}")
    assert record["state"] == "FINISHED"
    assert (await client.call("GET", f"/api/v1/gateways/{uid}"))[0] == 404
    _, partner = await client.call("GET", "/api/v1/gateways", company=PARTNER)
    assert [i["uid"] for i in partner["items"]] == [uid]


async def test_import_operation_creates_gateways_from_csv(av, session) -> None:
    sim, client, clock = av
    csv_text = "IMEI,SERIAL NUMBER,TYPE,METADATA[ENV],LABELS\n353270041099991,SN-1,MP70,prod,a|b\n,,,,\n"
    form = aiohttp.FormData()
    form.add_field("file", csv_text.encode(), filename="file.csv", content_type="text/csv")
    form.add_field("parameters", b'{"notify": false}', filename="parameters.json", content_type="application/json")
    async with session.post(f"{client.url}/api/v1/operations/gateways/import", data=form,
                            headers={"Authorization": f"Bearer {client.token}"}) as resp:
        op = (await resp.json())["operation"]
    clock.advance(3)
    _, record = await client.call("GET", f"/api/v1/operations/{op}")
    assert record["state"] == "FINISHED" and record["total"] == 1
    created = next(g for g in sim.gateways.values() if g.serialNumber == "SN-1")
    assert created.labels == ["a", "b"] and created.metadata == [{"key": "ENV", "value": "prod"}]
    for text, error in (("BOGUS\n1\n", "csv.header.unknown.column"), ("IMEI\n", "file.missing.data")):
        form = aiohttp.FormData()
        form.add_field("file", text.encode(), filename="file.csv", content_type="text/csv")
        async with session.post(f"{client.url}/api/v1/operations/gateways/import", data=form,
                                headers={"Authorization": f"Bearer {client.token}"}) as resp:
            assert (await resp.json())["error"] == error
    assert (await client.call("GET", "/api/v1/operations/nope"))[1]["error"] == "operation.unknown"
