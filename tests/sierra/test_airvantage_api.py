"""AirVantage gateways and operations against a scripted server (aioresponses)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from fleetbridge_plugins.sierra.airvantage import AirVantagePlatform
from fleetbridge_plugins.sierra.airvantage_api import FIELDS, Operation, parse_operation

from fleetbridge.errors import AuthFailed, CommandFailed, Rejected
from fleetbridge.platform import DeviceInfo, ServiceCall

from .conftest import FakeContext, Reply, Vendor, av_config, load_fixture

GATEWAYS = "/api/v1/gateways"
LABEL = "/api/v1/operations/gateways/label"
OP = "4b89657f63aac4b299c1d46e98a495326"
UID = "082ff307d428461a9eb24f3c8b68f756"


async def make_platform(session: aiohttp.ClientSession, **config: Any) -> tuple[AirVantagePlatform, FakeContext]:
    ctx = FakeContext(session, av_config(**config))
    platform = AirVantagePlatform(ctx)
    await platform.async_setup()
    return platform, ctx


def page(uids: list[str], count: int, offset: int) -> dict[str, Any]:
    items = [{"uid": u, "imei": None, "serialNumber": f"SN{u}", "state": "INVENTORY"} for u in uids]
    return {"items": items, "count": count, "size": len(items), "offset": offset}


class Pending:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def __call__(self, detail: str = "", vendor_ref: str | None = None) -> None:
        self.calls.append((detail, vendor_ref))


def service_call(service: str, params: dict[str, Any], state: dict[str, Any] | None = None) -> tuple[ServiceCall, Pending]:
    pending = Pending()
    return ServiceCall(service=service, params=params, state=state or {"lifecycle_state": "INVENTORY"},
                       state_age=1.0, pending=pending), pending


def device(uid: str = UID) -> DeviceInfo:
    return DeviceInfo(id=uid, name="GX440 353270041012745", keys=frozenset())


def operation(state: str, **counters: int) -> dict[str, Any]:
    return {"uid": OP, "state": state, "total": sum(counters.values()) or 1,
            "counters": [{"state": k, "count": v} for k, v in counters.items()]}


# --- listing -------------------------------------------------------------------------------

async def test_listing_request_shape_with_criteria_and_company(session, vendor: Vendor) -> None:
    platform, _ = await make_platform(session, company="c0ffee", page_size=50, criteria={
        "labels": ["north", "spare"], "type": "GX440", "states": ["INVENTORY"], "assigned": False,
        "metadata": {"env": "prod", "site": "7"}})
    vendor.on(GATEWAYS, load_fixture("av_gateways_page.json"))
    await platform.async_discover()
    [call] = vendor.calls_to(GATEWAYS)
    assert call.query == {"fields": ",".join(FIELDS), "offset": "0", "size": "50", "labels": "north,spare",
                          "type": "GX440", "states": "INVENTORY", "assigned": "false",
                          "metadata": "env:prod,site:7", "company": "c0ffee"}
    assert call.headers["Authorization"] == "Bearer access-1-7f3a9c"


async def test_offset_paging_until_count(session, vendor: Vendor) -> None:
    platform, _ = await make_platform(session, page_size=2)
    vendor.on(GATEWAYS, page(["a", "b"], 5, 0), page(["c", "d"], 5, 2), page(["e"], 5, 4))
    assert [d.id for d in await platform.async_discover()] == ["a", "b", "c", "d", "e"]
    assert [c.query["offset"] for c in vendor.calls_to(GATEWAYS)] == ["0", "2", "4"]


async def test_paging_survives_count_drift(session, vendor: Vendor) -> None:
    platform, _ = await make_platform(session, page_size=2)
    # a gateway deleted while paging: count shrinks, the next page repeats one, then nothing
    vendor.on(GATEWAYS, page(["a", "b"], 6, 0), page(["b", "c"], 5, 2), page([], 5, 4))
    assert [d.id for d in await platform.async_discover()] == ["a", "b", "c"]
    assert len(vendor.calls_to(GATEWAYS)) == 3


async def test_gateways_become_devices_with_state_labels_and_metadata(session, vendor: Vendor) -> None:
    platform, _ = await make_platform(session)
    vendor.on(GATEWAYS, load_fixture("av_gateways_page.json"))
    devices = {d.id: d for d in await platform.async_discover()}
    gx = devices[UID]
    assert (gx.name, gx.model, gx.services) == ("GX440 353270041012745", "GX440",
                                                ("add_label", "remove_label", "set_note"))
    assert gx.identifiers == {"imei": "353270041012745"}
    other = devices["96393342be2649fea1cb144ce13d0b5d"]
    assert other.identifiers == {"imei": "353270041012749", "serial": "CA0125698737", "mac": "01:a2:03:78:05:06"}
    states = await platform.async_poll(list(devices.values()))
    assert len(vendor.calls_to(GATEWAYS)) == 1  # the poll right after discovery reuses the listing
    assert states[UID] == {"lifecycle_state": "INVENTORY", "imei": "353270041012745", "attributes": {
        "labels": ["Label1", "Label2"], "type": "GX440", "created": "2012-05-25T12:20:36Z",
        "note": "spare unit", "metadata.env": "gatewayEnv"}}
    moving = states["96393342be2649fea1cb144ce13d0b5d"]
    assert moving["lifecycle_state"] == "BEING_TRANSFERRED"
    assert moving["attributes"]["created"] == "2012-05-25T12:20:36Z"  # numeric string accepted
    await platform.async_poll(list(devices.values()))
    assert len(vendor.calls_to(GATEWAYS)) == 2


async def test_unknown_company_is_auth_failed(session, vendor: Vendor) -> None:
    platform, _ = await make_platform(session, company="nope")
    vendor.on(GATEWAYS, Reply({"error": "company.unknown", "errorParameters": ["nope"]}, 400))
    with pytest.raises(AuthFailed) as err:
        await platform.async_discover()
    assert "company" in str(err.value)


# --- labels ---------------------------------------------------------------------------------

async def test_add_label_runs_the_operation_and_follows_it(session, vendor: Vendor) -> None:
    platform, _ = await make_platform(session, company="c0ffee")
    vendor.on(LABEL, {"operation": OP}, method="POST")
    vendor.on(f"/api/v1/operations/{OP}", operation("SCHEDULED", PENDING=1), operation("IN_PROGRESS", IN_PROGRESS=1),
              operation("FINISHED", SUCCESS=1))
    call, pending = service_call("add_label", {"label": "urgent"})
    result = await platform.async_call(device(), call)
    [post] = vendor.calls_to(LABEL)
    assert post.json == {"labels": {"add": ["urgent"]}, "criteria": {"uids": [UID]}}
    assert post.query == {"company": "c0ffee"}
    assert pending.calls == [(f"label operation {OP} started", OP)]
    assert len(vendor.calls_to(f"/api/v1/operations/{OP}")) == 3
    assert (result.status, result.detail) == (
        "success", "label 'urgent' added to GX440 353270041012745: 1 of 1 gateway(s) done")


async def test_remove_label_body(session, vendor: Vendor) -> None:
    platform, _ = await make_platform(session)
    vendor.on(LABEL, {"operation": OP}, method="POST")
    vendor.on(f"/api/v1/operations/{OP}", operation("FINISHED", SUCCESS=1))
    result = await platform.async_call(device(), service_call("remove_label", {"label": "spare"})[0])
    assert vendor.calls_to(LABEL)[0].json == {"labels": {"remove": ["spare"]}, "criteria": {"uids": [UID]}}
    assert vendor.calls_to(LABEL)[0].query == {}
    assert result.status == "success"


def test_finished_is_not_success_the_counters_say() -> None:
    op = parse_operation(load_fixture("av_operation.json"), OP)
    assert op == Operation(OP, "FINISHED", {"SUCCESS": 2, "FAILURE": 1}, 3)
    result = op.outcome("label 'x' added")
    assert (result.status, result.detail) == ("failed", "label 'x' added: partial failure (2 of 3 done, 1 failed)")
    assert parse_operation(operation("FINISHED", FAILURE=1), OP).outcome("w").detail == "w: failed (0 of 1 done, 1 failed)"
    assert parse_operation(operation("FINISHED", SUCCESS=1, CANCELLED=1), OP).outcome("w").status == "failed"
    assert parse_operation({"state": "FINISHED", "counters": {"SUCCESS": "4"}}, OP).outcome("w").status == "success"


@pytest.mark.parametrize(("key", "text"), [
    ("label.amount.exceeded", "more than 100 labels to add or remove"),
    ("selection.empty", "no gateway matches the selection"),
    ("gateway.unknown", "the gateway is unknown to AirVantage"),
])
async def test_label_refusals_are_readable_failures_without_pending(session, vendor: Vendor, key: str,
                                                                    text: str) -> None:
    platform, _ = await make_platform(session)
    vendor.on(LABEL, Reply({"error": key, "errorParameters": []}, 400), method="POST")
    call, pending = service_call("add_label", {"label": "x"})
    with pytest.raises(CommandFailed) as err:
        await platform.async_call(device(), call)
    assert text in str(err.value) and key in str(err.value)
    assert pending.calls == []


async def test_operation_still_running_is_followed_in_the_background(session, vendor: Vendor, clock) -> None:
    platform, ctx = await make_platform(session, operation_poll_interval=1, operation_timeout=5)
    vendor.on(LABEL, {"operation": OP}, method="POST")
    vendor.on(f"/api/v1/operations/{OP}", operation("IN_PROGRESS", IN_PROGRESS=1))
    call, _ = service_call("add_label", {"label": "x"})
    task = asyncio.create_task(platform.async_call(device(), call))
    await clock.run_until(clock.time() + 6)
    result = await task
    assert result.status == "pending" and "still running" in result.detail
    assert platform.info()["following_operations"] == 1
    vendor.on(f"/api/v1/operations/{OP}", Reply("", 503), operation("FINISHED", SUCCESS=1))
    await clock.run_until(clock.time() + 61)
    assert ctx.resolved == [(OP, "success", "label 'x' added to GX440 353270041012745: 1 of 1 gateway(s) done")]
    await platform.async_close()


async def test_follow_after_a_restart(session, vendor: Vendor) -> None:
    platform, _ = await make_platform(session)
    vendor.on(f"/api/v1/operations/{OP}", operation("FINISHED", SUCCESS=1))
    result = await platform.async_follow(device(), "add_label", OP)
    assert result.status == "success" and OP in result.detail
    vendor.on(f"/api/v1/operations/{OP}", Reply({"error": "operation.unknown"}, 404))
    assert (await platform.async_follow(device(), "add_label", OP)).status == "failed"


# --- notes ----------------------------------------------------------------------------------

async def test_set_note_edits_the_metadata_keeping_the_rest(session, vendor: Vendor) -> None:
    platform, _ = await make_platform(session)
    vendor.on(f"{GATEWAYS}/{UID}", load_fixture("av_gateways_page.json")["items"][0])
    vendor.on(f"{GATEWAYS}/{UID}", {"uid": UID}, method="PUT")
    result = await platform.async_call(device(), service_call("set_note", {"note": "  in the van  "})[0])
    assert (result.status, result.detail) == ("success", "note set")
    [put] = vendor.calls_to(f"{GATEWAYS}/{UID}", "PUT")
    assert put.json == {"metadata": [{"key": "env", "value": "gatewayEnv"}, {"key": "note", "value": "in the van"}]}
    result = await platform.async_call(device(), service_call("set_note", {"note": ""})[0])
    assert result.detail == "note cleared"
    assert vendor.calls_to(f"{GATEWAYS}/{UID}", "PUT")[-1].json == {"metadata": [{"key": "env", "value": "gatewayEnv"}]}


async def test_set_note_refusals(session, vendor: Vendor) -> None:
    platform, _ = await make_platform(session)
    call, _ = service_call("set_note", {"note": "x"}, {"lifecycle_state": "BEING_TRANSFERRED"})
    with pytest.raises(Rejected):
        await platform.async_call(device(), call)
    assert vendor.calls_to(f"{GATEWAYS}/{UID}") == []
    vendor.on(f"{GATEWAYS}/{UID}", {"uid": UID, "metadata": []})
    vendor.on(f"{GATEWAYS}/{UID}", Reply({"error": "system.invalid.state", "errorParameters": ["ACTIVE"]}, 400),
              method="PUT")
    with pytest.raises(CommandFailed) as err:
        await platform.async_call(device(), service_call("set_note", {"note": "x"})[0])
    assert str(err.value) == (f"PUT {GATEWAYS}/{UID}: only labels can be changed while the gateway's system is not "
                              "in INVENTORY or MAINTENANCE (system.invalid.state): ACTIVE")
