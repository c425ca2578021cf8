"""The tracker Open API simulator against the vendor document (and vendor-notes facts)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetbridge_plugins.opengps.simulator import (
    TRACK_FIELDS,
    SimDevice,
    Simulator,
    create_app,
    md5,
    signature,
)

PASSWORD = "secret"


class Clock:
    """An injectable host clock that tests move by hand."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


class Api:
    """A thin client: GET (or POST form) to /api/*, returning the decoded JSON."""

    def __init__(self, client: TestClient, sim: Simulator) -> None:
        self.client, self.sim = client, sim
        self.token = ""

    async def get(self, path: str, **params: Any) -> Any:
        params = {k: str(v) for k, v in params.items()}
        async with self.client.get(f"/api/{path}", params=params) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json; charset=UTF-8"
            return await resp.json(content_type=None)

    async def post(self, path: str, **params: Any) -> Any:
        async with self.client.post(f"/api/{path}", data={k: str(v) for k, v in params.items()}) as resp:
            assert resp.status == 200
            return await resp.json(content_type=None)

    async def login(self, account: str = "demo", password: str = PASSWORD) -> str:
        when = int(self.sim.now())
        body = await self.get("authorization", time=when, account=account, signature=signature(password, when))
        assert body["code"] == 0, body
        self.token = body["record"]["access_token"]
        return self.token

    async def call(self, path: str, **params: Any) -> Any:
        return await self.get(path, access_token=self.token, **params)


@pytest.fixture
async def make_api() -> AsyncIterator[Callable[..., Any]]:
    """Factory: start a simulator app (no background ticking unless asked) and return a logged-out Api."""
    clients: list[TestClient] = []

    async def go(**kwargs: Any) -> Api:
        kwargs.setdefault("accounts", {"demo": PASSWORD})
        kwargs.setdefault("tick", 0)
        kwargs.setdefault("host_time", Clock())  # deterministic world unless a test needs the real clock
        app = create_app(**kwargs)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return Api(client, app["sim"])

    yield go
    for client in reversed(clients):
        await client.close()


async def logged_in(make_api: Callable[..., Any], **kwargs: Any) -> Api:
    api = await make_api(**kwargs)
    await api.login()
    return api


def online(sim: Simulator, **where: Any) -> list[SimDevice]:
    return [d for d in sim.devices.values() if d.datastatus == 2 and all(getattr(d, k) == v for k, v in where.items())]


# ------------------------------------------------------------------------------------------ authorization

async def test_document_signature_example_is_accepted(make_api: Callable[..., Any]) -> None:
    assert signature("Abc@34590", 1556243443) == "3844afd2c3bf68f0f3f4aa0a9ee8ee6c"
    api = await make_api(accounts={"test": "Abc@34590"}, host_time=Clock(1556243443 + 20))
    async with api.client.get("/api/authorization", params={
            "time": "1556243443", "account": "test", "signature": "3844afd2c3bf68f0f3f4aa0a9ee8ee6c"}) as resp:
        assert resp.headers["Content-Type"] == "application/json; charset=UTF-8"
        assert parsedate_to_datetime(resp.headers["Date"]).timestamp() == 1556243463
        body = await resp.json()
    assert body["code"] == 0
    assert body["record"]["expires_in"] == 7200 and len(body["record"]["access_token"]) >= 16


async def test_authorization_errors(make_api: Callable[..., Any]) -> None:
    api = await make_api()
    now = int(api.sim.now())
    assert (await api.get("authorization", time=now, account="demo"))["code"] == 10005
    assert (await api.get("authorization", time="soon", account="demo", signature="x"))["code"] == 10004
    late = now - 301
    bad_time = await api.get("authorization", time=late, account="demo", signature=signature(PASSWORD, late))
    assert bad_time == {"code": 10014, "message": "Request time error"}
    assert (await api.get("authorization", time=now, account="demo", signature=signature("nope", now)))["code"] == 20001
    assert (await api.get("authorization", time=now, account="ghost", signature=signature(PASSWORD, now)))["code"] \
        == 20001
    assert (await api.get("authorization", time=now, account="demo",
                          signature=signature(PASSWORD, now).upper()))["code"] == 20001


async def test_clock_offset_moves_window_date_and_servertime(make_api: Callable[..., Any]) -> None:
    api = await make_api(clock_offset=-3600, host_time=time.time)
    real = int(time.time())
    assert (await api.get("authorization", time=real, account="demo",
                          signature=signature(PASSWORD, real)))["code"] == 10014
    skewed = real - 3600
    body = await api.get("authorization", time=skewed, account="demo", signature=signature(PASSWORD, skewed))
    api.token = body["record"]["access_token"]
    async with api.client.get("/api/track", params={"access_token": api.token,
                                                    "imeis": next(iter(api.sim.devices))}) as resp:
        date = parsedate_to_datetime(resp.headers["Date"]).timestamp()
        servertime = (await resp.json())["record"][0]["servertime"]
    assert abs(date - skewed) < 5 and abs(servertime - skewed) < 5


async def test_tokens_single_session_expiry_and_unknown(make_api: Callable[..., Any]) -> None:
    clock = Clock()
    api = await make_api(host_time=clock, token_ttl=7200)
    imei = next(iter(api.sim.devices))
    first = await api.login()
    assert (await api.call("track", imeis=imei))["code"] == 0
    second = await api.login()  # "another program" logs in with the same account
    assert (await api.get("track", access_token=first, imeis=imei))["code"] == 10011
    assert (await api.get("track", access_token=second, imeis=imei))["code"] == 0
    assert (await api.get("track", access_token="0" * 32, imeis=imei))["code"] == 10010
    assert (await api.get("track", imeis=imei))["code"] == 10005
    clock.t += 7200
    assert (await api.get("track", access_token=second, imeis=imei)) == {
        "code": 10012, "message": "Access token is out of date"}
    await api.login()
    api.sim.invalidate_tokens()
    assert (await api.call("track", imeis=imei))["code"] == 10011


async def test_blocked_account_and_password_change(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, subaccounts=True)
    sub = Api(api.client, api.sim)
    await sub.login("demo_sub1")
    assert (await api.post("user/block", access_token=api.token, account="demo_sub1"))["code"] == 0
    assert (await sub.call("device/list"))["code"] == 10016
    when = int(api.sim.now())
    assert (await api.get("authorization", time=when, account="demo_sub1",
                          signature=signature(PASSWORD, when)))["code"] == 10016
    info = await api.call("user/info", account="demo_sub1")
    assert info["record"]["blockstatus"] == 0 and info["record"]["roletype"] == 2
    assert (await sub.call("user/block", account="demo"))["code"] == 10016
    assert (await api.post("user/unblock", access_token=api.token, account="demo_sub1"))["code"] == 0
    assert (await api.call("user/block", account="demo"))["code"] == 10007  # not on itself
    assert (await api.call("user/password/set", account="demo_sub1", password="short"))["code"] == 10004
    assert (await api.call("user/password/set", account="demo_sub1", password=md5("Abc@34590")))["code"] == 0
    await sub.login("demo_sub1", "Abc@34590")
    assert (await sub.call("user/password/set", account="demo", password=md5("x")))["code"] == 10007


# --------------------------------------------------------------------------------------- accounts & lists

async def test_device_and_user_lists_with_subaccounts(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, subaccounts=True, devices=20)
    sim = api.sim
    own = await api.call("device/list")
    assert {r["imei"] for r in own["record"]} == {d.imei for d in sim.devices.values() if d.account == "demo"}
    assert set(own["record"][0]) == {"imei", "devicename", "devicetype", "platenumber", "onlinetime",
                                     "platformduetime", "simcard", "iccid", "activatedtime", "userduetime"}
    subs = await api.call("user/list")
    assert [u["account"] for u in subs["record"]] == ["demo", "demo_sub1", "demo_sub2", "demo_sub3"]
    assert subs["record"][0]["roletype"] == 1
    listed = set()
    for user in subs["record"]:
        listed |= {r["imei"] for r in (await api.call("device/list", account=user["account"]))["record"]}
    assert listed == set(sim.devices)
    sub = Api(api.client, sim)
    await sub.login("demo_sub2")
    assert (await sub.call("device/list", account="demo"))["code"] == 10007
    assert (await sub.call("device/list", account="nobody"))["code"] == 20005
    sub_imei = next(d.imei for d in sim.devices.values() if d.account == "demo_sub2")
    demo_imei = next(d.imei for d in sim.devices.values() if d.account == "demo")
    track = await sub.call("track", imeis=f"{sub_imei},{demo_imei}")
    assert [r["imei"] for r in track["record"]] == [sub_imei]  # not authorised: left out
    assert len((await api.call("track", imeis=f"{sub_imei},{demo_imei}"))["record"]) == 2
    assert (await sub.call("playback", imei=demo_imei, begintime=0, endtime=1))["code"] == 10013
    assert (await sub.call("playback", imei="123456789012345", begintime=0, endtime=1))["code"] == 20005


async def test_device_list_caps_at_500(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, devices=620)
    assert len((await api.call("device/list"))["record"]) == 500
    spread = await logged_in(make_api, devices=1700, subaccounts=True)
    counts = Counter(d.account for d in spread.sim.devices.values())
    assert max(counts.values()) <= 500 and sum(counts.values()) == 1700


async def test_message_send_limits(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, subaccounts=True)
    assert (await api.post("message/send", access_token=api.token, accounts="demo_sub1,demo_sub2",
                           content="Hello"))["code"] == 0
    assert api.sim.messages[-1]["accounts"] == ["demo_sub1", "demo_sub2"]
    assert (await api.call("message/send", accounts="demo_sub1", content="x" * 301))["code"] == 10006
    assert (await api.call("message/send", accounts=",".join(["demo"] * 150 + [f"a{i}" for i in range(60)]),
                           content="hi"))["code"] == 10006
    assert (await api.call("message/send", accounts="demo_sub1"))["code"] == 10005


async def test_unknown_endpoint(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api)
    assert (await api.call("device/teleport")) == {"code": 10001, "message": "Unknown request"}


# -------------------------------------------------------------------------------------------------- track

async def test_imei_cap_of_100(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, devices=120)
    imeis = ",".join(list(api.sim.devices)[:101])
    for path in ("track", "device/detail"):
        assert (await api.call(path, imeis=imeis))["code"] == 10006
    assert (await api.call("device/mileage", imeis=imeis, begintime=1800, endtime=3600))["code"] == 10006
    assert len((await api.call("track", imeis=",".join(list(api.sim.devices)[:100])))["record"]) == 100


async def test_track_fields_statuses_and_sentinels(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, devices=100)
    sim = api.sim
    imeis = list(sim.devices)
    records = (await api.call("track", imeis=",".join(imeis)))["record"]
    assert [r["imei"] for r in records] == imeis
    for rec in records:
        assert set(rec) == set(TRACK_FIELDS)
        assert isinstance(rec["externalpower"], str) and isinstance(rec["mileage"], int)
        assert len(rec["imei"]) == 15 and rec["imei"].isdigit()
    statuses = Counter(r["datastatus"] for r in records)
    assert statuses[1] == statuses[3] == statuses[5] == 1 and statuses[4] >= 2 and statuses[2] >= 90
    assert sum(r["doorstatus"] == -1 for r in records) >= 5
    assert any(r["battery"] == -1 for r in records) and any(r["externalpower"] == "" for r in records)
    assert any(r["externalpower"] not in ("", None) for r in records)
    never = next(r for r in records if r["datastatus"] == 1)
    assert never["gpstime"] == never["hearttime"] == 0 and never["mileage"] == -1
    offline = [r for r in records if r["datastatus"] == 4]
    assert all(r["servertime"] - r["hearttime"] >= 3600 and r["speed"] == 0 for r in offline)
    sim.devices[imeis[0]].battery = 5
    sim.devices[imeis[0]].doorstatus = 1
    rec = (await api.call("track", imeis=imeis[0]))["record"][0]
    assert rec["battery"] == 5 and rec["doorstatus"] == 1
    detail = await api.call("device/detail", imeis=f"{imeis[1]},{imeis[0]},999")
    assert [r["imei"] for r in detail["record"]] == [imeis[1], imeis[0]]


async def test_fleet_is_deterministic_by_seed() -> None:
    a, b, c = (Simulator({"demo": "x"}, 30, seed, host_time=Clock()) for seed in (7, 7, 8))
    assert list(a.devices) == list(b.devices) != list(c.devices)
    assert [d.never_answers for d in a.devices.values()] == [d.never_answers for d in b.devices.values()]
    a.step(120)
    b.step(120)
    assert [(d.latitude, d.speed) for d in a.devices.values()] == [(d.latitude, d.speed) for d in b.devices.values()]
    assert any(d.never_answers for d in online(a))


async def test_vehicles_move_and_park(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, devices=40, random_alarm_interval=0)
    sim = api.sim
    d = next(d for d in online(sim, accstatus=1) if d.speed > 5)
    before = (d.latitude, d.longitude, d.mileage, d.todaymileage, d.hearttime)
    sim.step(30)
    rec = (await api.call("track", imeis=d.imei))["record"][0]
    assert (rec["latitude"], rec["longitude"]) != (round(before[0], 6), round(before[1], 6))
    assert rec["mileage"] > before[2] and rec["todaymileage"] >= int(before[3])
    assert rec["hearttime"] == before[4] + 30 and rec["gpstime"] <= rec["systemtime"] <= rec["hearttime"]
    seen: set[tuple[int, int]] = set()
    speeds: list[int] = []
    for _ in range(d._plan.period // 20 + 2):  # one whole duty cycle
        sim.step(20)
        seen.add((d.accstatus, d.defencestatus))
        speeds.append(d.speed)
    assert {(1, 0), (0, 1)} <= seen and min(speeds) == 0 and 0 < max(speeds) <= 120
    frozen = next(d for d in sim.devices.values() if d.datastatus == 4)
    where = (frozen.latitude, frozen.hearttime)
    sim.step(100)
    assert (frozen.latitude, frozen.hearttime) == where


# ----------------------------------------------------------------------------------------------- commands

async def test_command_round_trip_and_engine_cut(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, command_delay=(0.5, 0.5))
    sim = api.sim
    d = next(iter(sim.devices.values()))  # the reference device: VT05S, online, answers
    sent = await api.post("command/send", access_token=api.token, imei=d.imei, command="RELAY,1")
    cid = sent["record"]["commandid"]
    assert sent["code"] == 0 and isinstance(cid, str)
    assert (await api.call("command/query", commandid=cid))["record"] == {"response": "", "commandstatus": 0}
    sim.step(1)
    reply = (await api.call("command/query", commandid=cid))["record"]
    assert reply["commandstatus"] == 1
    assert reply["response"].startswith("Cut off the fuel supply: Success! Speed: ")
    sim.step(60)
    rec = (await api.call("track", imeis=d.imei))["record"][0]
    assert rec["oilpowerstatus"] == 0 and rec["speed"] == 0 and rec["accstatus"] == 0
    where = (d.latitude, d.longitude)
    sim.step(600)
    assert (d.latitude, d.longitude) == where
    cid = (await api.call("command/send", imei=d.imei, command="RELAY,0"))["record"]["commandid"]
    sim.step(1)
    assert (await api.call("command/query", commandid=cid))["record"]["response"] == "Restore fuel supply: Success!"
    assert d.oilpowerstatus == 1
    cid = (await api.call("command/send", imei=d.imei, command="LOCKDOOR"))["record"]["commandid"]
    sim.step(1)
    assert (await api.call("command/query", commandid=cid))["record"]["response"] == "Door locked: Success!"
    assert d.locked
    assert (await api.call("command/query", commandid="NOPE"))["code"] == 20005


async def test_set_mileage_by_form_and_wall_clock_reply(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, command_delay=(0.05, 0.05), host_time=time.time)
    d = next(iter(api.sim.devices.values()))
    missing = await api.post("command/send", access_token=api.token, imei=d.imei, command="SET_MILEAGE")
    assert missing["code"] == 10005
    sent = await api.post("command/send", access_token=api.token, imei=d.imei, command="SET_MILEAGE",
                          paramData=json.dumps({"mileage": "30"}))
    await asyncio.sleep(0.1)  # no step: the reply is due by the server clock
    reply = await api.post("command/query", access_token=api.token, commandid=sent["record"]["commandid"])
    assert reply["record"]["commandstatus"] == 1 and "Success" in reply["record"]["response"]
    assert (await api.call("track", imeis=d.imei))["record"][0]["mileage"] == 30000
    bad = await api.post("command/send", access_token=api.token, imei=d.imei, command="SET_MILEAGE",
                         paramData='{"mileage":"thirty"}')
    await asyncio.sleep(0.1)
    reply = await api.call("command/query", commandid=bad["record"]["commandid"])
    assert reply["record"] == {"response": "error:102", "commandstatus": 1}
    assert d.mileage == 30000


async def test_command_refusals(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, devices=200)
    sim = api.sim
    gt06n = online(sim, devicetype="GT06N")[0]
    assert (await api.call("command/send", imei=gt06n.imei, command="LOCKDOOR"))["code"] == 20048
    assert (await api.call("command/send", imei=gt06n.imei, command="SELF_DESTRUCT"))["code"] == 20048
    at4 = online(sim, devicetype="AT4")[0]
    assert (await api.call("command/send", imei=at4.imei, command="RELAY,1"))["code"] == 20048
    expected = {1: 20017, 3: 20046, 4: 20017, 5: 20089}
    for status, code in expected.items():
        d = next(d for d in sim.devices.values() if d.datastatus == status)
        assert (await api.call("command/send", imei=d.imei, command="RESET"))["code"] == code
    failing = await logged_in(make_api, send_fail_rate=1.0)
    first = next(iter(failing.sim.devices))
    assert (await failing.call("command/send", imei=first, command="RESET"))["code"] == 20018


async def test_never_answering_device(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, command_delay=(0.1, 0.2))
    d = online(api.sim, never_answers=True)[0]
    cid = (await api.call("command/send", imei=d.imei, command="RESET"))["record"]["commandid"]
    api.sim.step(120)
    assert (await api.call("command/query", commandid=cid))["record"]["commandstatus"] == 0
    other = next(iter(api.sim.devices.values()))
    other.never_answers = True
    cid = (await api.call("command/send", imei=other.imei, command="RESET"))["record"]["commandid"]
    api.sim.step(120)
    assert (await api.call("command/query", commandid=cid))["record"]["commandstatus"] == 0


async def test_command_waits_while_the_device_is_offline(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, command_delay=(1, 1))
    d = next(iter(api.sim.devices.values()))
    cid = (await api.call("command/send", imei=d.imei, command="RESET"))["record"]["commandid"]
    d.datastatus = 4
    api.sim.step(5)
    assert (await api.call("command/query", commandid=cid))["record"]["commandstatus"] == 0
    d.datastatus = 2
    api.sim.step(1)
    assert (await api.call("command/query", commandid=cid))["record"] == {"response": "RESET OK",
                                                                         "commandstatus": 1}


# ---------------------------------------------------------------------------------------- history & alarms

def parse(record: str, width: int) -> list[list[str]]:
    rows = [row.split(",") for row in record.split(";")] if record else []
    assert all(len(row) == width for row in rows)
    return rows


async def test_playback_pages_of_1000_repeat_the_boundary(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api)
    sim = api.sim
    d = next(iter(sim.devices.values()))
    end = int(sim.t)
    begin = end - 2 * 86400
    first = parse((await api.call("playback", imei=d.imei, begintime=begin, endtime=end))["record"], 5)
    assert len(first) == 1000
    times = [int(r[2]) for r in first]
    assert times == sorted(times) and begin <= times[0] and times[-1] <= end
    assert any(int(r[3]) > 0 for r in first) and all(-90 < float(r[1]) < 90 for r in first)
    second = parse((await api.call("playback", imei=d.imei, begintime=times[-1], endtime=end))["record"], 5)
    assert second[0] == first[-1]
    assert (await api.call("playback", imei=d.imei, begintime=d.onlinetime - 9999,
                           endtime=d.onlinetime - 1))["record"] == ""
    gap = (await api.call("playback", imei=d.imei, begintime=end - 3600, endtime=end))["record"]
    assert 0 < len(parse(gap, 5)) < 1000
    never = next(x for x in sim.devices.values() if x.datastatus == 1)
    assert (await api.call("playback", imei=never.imei, begintime=begin, endtime=end))["record"] == ""
    assert (await api.call("playback", imei=d.imei, begintime=end, endtime=begin))["code"] == 10004


async def test_alarm_pages_of_100_repeat_the_boundary(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, random_alarm_interval=0)
    sim = api.sim
    d = next(iter(sim.devices.values()))
    end = int(sim.t)
    begin = end - 14 * 86400
    first = parse((await api.call("alarm/list", imei=d.imei, begintime=begin, endtime=end))["record"], 8)
    assert len(first) == 100
    systimes = [int(r[4]) for r in first]
    assert systimes == sorted(systimes) and {r[0] for r in first} <= {"7", "9", "10"}
    assert all(int(r[4]) >= int(r[3]) for r in first)
    second = parse((await api.call("alarm/list", imei=d.imei, begintime=systimes[-1], endtime=end))["record"], 8)
    assert second[0] == first[-1]
    sim.step(5)
    sim.raise_alarm(d.imei, 1)
    latest = parse((await api.call("alarm/list", imei=d.imei, begintime=end, endtime=end + 10))["record"], 8)
    assert latest[-1][0] == "1"
    other = list(sim.devices)[1]
    both = parse((await api.call("alarm/list", imei=f"{d.imei},{other}", begintime=end - 86400,
                                 endtime=end))["record"], 8)
    assert [int(r[4]) for r in both] == sorted(int(r[4]) for r in both)
    assert (await api.call("alarm/list", imei=d.imei, begintime=1, endtime=2))["record"] == ""


async def test_live_alarms_battery_geofence_engine(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api, random_alarm_interval=0, speed_limit=100)
    sim = api.sim
    d = next(iter(sim.devices.values()))
    t0 = int(sim.t)
    while d.accstatus != 0:  # wait until it parks, so that the battery drains
        sim.step(10)
    d.battery = 20.001
    sim.step(1)
    assert (await api.call("geofence/create", imei=d.imei, efencename="depot", alarmtype=2, latitude=d.latitude,
                           longitude=d.longitude, radius=100)) == {"code": 0}
    fence_id = d.fences[0].id
    for _ in range(d._plan.period // 10 + 2):
        sim.step(10)
    rows = parse((await api.call("alarm/list", imei=d.imei, begintime=t0, endtime=int(sim.t)))["record"], 8)
    kinds = [r[0] for r in rows]
    assert "2" in kinds and "9" in kinds and "10" in kinds
    assert any(r[0] == "6" and r[7] == str(fence_id) for r in rows)


async def test_geofence_validation(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api)
    imei = next(iter(api.sim.devices))
    base = {"imei": imei, "efencename": "home", "alarmtype": 0, "latitude": 52.37, "longitude": 4.89, "radius": 300}
    assert (await api.post("geofence/create", access_token=api.token, **base))["code"] == 0
    for change, code in (({"radius": 99}, 10006), ({"radius": 5001}, 10006), ({"alarmtype": 3}, 10006),
                         ({"latitude": "north"}, 10004), ({"efencename": ""}, 10005)):
        assert (await api.call("geofence/create", **{**base, **change}))["code"] == code, change


async def test_mileage_report_windows(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api)
    sim = api.sim
    imeis = list(sim.devices)[:3]
    end = int(sim.t) // 1800 * 1800
    begin = end - 86400
    report = await api.call("device/mileage", imeis=",".join(imeis), begintime=begin, endtime=end)
    assert [r["imei"] for r in report["record"]] == imeis
    assert isinstance(report["record"][0]["mileage"], float) and report["record"][0]["mileage"] > 0
    halves = [sim.mileage_km(imeis[0], b, b + 43200) for b in (begin, begin + 43200)]
    assert abs(sum(halves) - report["record"][0]["mileage"]) < 0.02
    for b, e, code in ((begin + 60, end, 10006), (begin + 900, end, 10006), (begin, end + 1, 10006),
                       (end - 8 * 86400, end, 10006), (end, end, 10004), (end, begin, 10004)):
        assert (await api.call("device/mileage", imeis=imeis[0], begintime=b, endtime=e))["code"] == code, (b, e)
    assert (await api.call("device/mileage", imeis=imeis[0], begintime=begin))["code"] == 10005


# ---------------------------------------------------------------------------------------- faults & admin

async def test_faults(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api)
    sim, client = api.sim, api.client
    imei = next(iter(sim.devices))
    params = {"access_token": api.token, "imeis": imei}

    sim.faults.rate_limit = 2
    assert [(await api.get("track", **params))["code"] for _ in range(3)] == [10009, 10009, 0]
    sim.faults.http_500 = 1
    async with client.get("/api/track", params=params) as resp:
        assert resp.status == 500 and "json" not in resp.headers["Content-Type"]
    for status in (502, 200):
        sim.faults.html_error, sim.faults.html_status = 1, status
        async with client.get("/api/track", params=params) as resp:
            assert resp.status == status and resp.headers["Content-Type"].startswith("text/html")
            assert "<html>" in await resp.text()
    sim.faults.malformed_json = 1
    async with client.get("/api/track", params=params) as resp:
        assert resp.status == 200
        with pytest.raises(ValueError):
            json.loads(await resp.text())
    sim.faults.drop_fields = 1
    dropped = (await api.get("track", **params))["record"][0]
    assert "imei" in dropped and set(dropped) < set(TRACK_FIELDS)
    assert set((await api.get("track", **params))["record"][0]) == set(TRACK_FIELDS)
    sim.faults.rate_limit = 1.0  # a probability: always
    assert [(await api.get("track", **params))["code"] for _ in range(3)] == [10009] * 3
    sim.faults.reset()
    sim.faults.slow = 0.3
    started = time.monotonic()
    assert (await api.get("track", **params))["code"] == 0
    assert time.monotonic() - started >= 0.3
    sim.faults.slow = 0


async def test_admin_endpoints(make_api: Callable[..., Any]) -> None:
    api = await logged_in(make_api)
    sim, client = api.sim, api.client
    imei = next(iter(sim.devices))
    async with client.post("/_sim/faults", json={"http_500": True, "slow": 0}) as resp:
        assert (await resp.json())["http_500"] is True
    async with client.get("/_sim/faults") as resp:  # faults never hit /_sim/*
        assert resp.status == 200 and (await resp.json())["http_500"] is True
    async with client.get("/api/track", params={"access_token": api.token, "imeis": imei}) as resp:
        assert resp.status == 500
    async with client.post("/_sim/faults?reset=1") as resp:
        assert (await resp.json())["http_500"] == 0
    async with client.post("/_sim/faults", json={"bogus": 1}) as resp:
        assert resp.status == 400
    async with client.post("/_sim/invalidate") as resp:
        assert (await resp.json())["invalidated"] == 1
    assert (await api.call("track", imeis=imei))["code"] == 10011
    world = sim.t
    async with client.post("/_sim/step", params={"dt": "60"}) as resp:
        assert (await resp.json())["world_time"] == world + 60
    async with client.get("/_sim/devices", params={"imeis": imei}) as resp:
        truth = (await resp.json())["devices"]
    assert truth[0]["imei"] == imei and truth[0]["latitude"] == sim.devices[imei].latitude
    async with client.post(f"/_sim/devices/{imei}", json={"battery": 7}) as resp:
        assert resp.status == 200 and sim.devices[imei].battery == 7
    async with client.post("/_sim/alarm", params={"imei": imei, "type": "4"}) as resp:
        assert resp.status == 200 and sim.devices[imei].alarms[-1][1] == 4
    assert sim.request_counts["/api/track"] == 2 and sim.requests[-1][0] == "/api/track"


async def test_min_intervals(make_api: Callable[..., Any]) -> None:
    clock = Clock()
    api = await make_api(host_time=clock, min_intervals={"auth": 12, "track": 10})
    imei = next(iter(api.sim.devices))
    await api.login()
    when = int(clock())
    again = await api.get("authorization", time=when, account="demo", signature=signature(PASSWORD, when))
    assert again == {"code": 10009, "message": "Request is too frequency"}
    assert (await api.call("track", imeis=imei))["code"] == 0
    clock.t += 9
    assert (await api.call("track", imeis=imei))["code"] == 10009
    assert (await api.call("device/list"))["code"] == 0  # other endpoints are not limited
    clock.t += 1
    assert (await api.call("track", imeis=imei))["code"] == 0
    clock.t += 2
    await api.login()


async def test_background_ticker_follows_the_clock(make_api: Callable[..., Any]) -> None:
    api = await make_api(tick=0.05, host_time=time.time)
    start = api.sim.t
    await asyncio.sleep(0.3)
    assert api.sim.t > start
    assert abs(api.sim.t - api.sim.now()) < 1.5


def test_step_50k_devices_timing() -> None:
    sim = Simulator({"demo": "x"}, devices=50_000, seed=3)
    sim.step(1.0)
    started = time.perf_counter()
    sim.step(1.0)
    elapsed = time.perf_counter() - started
    print(f"\nstep(1.0) of 50,000 devices: {elapsed * 1000:.0f} ms")
    assert elapsed < 5
