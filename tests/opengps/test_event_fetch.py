"""The tracker's alarm fetch against its simulator: one IMEI per request, ``event_concurrency`` of
them in flight, the alarms handed over in batches each with the cursor of the devices asked so far."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fleetbridge.platform import DeviceInfo
from fleetbridge_plugins.opengps import platform as tracker
from fleetbridge_plugins.opengps.simulator import create_app
from .conftest import ACCOUNT, PASSWORD, FakeContext, make_config

DEVICES = 40


@pytest.fixture
async def fleet() -> Any:
    """A still 40-device world with three SOS alarms per device, and the peak of alarm requests in flight."""
    app = create_app(accounts={ACCOUNT: PASSWORD}, devices=DEVICES, seed=3, tick=0)
    sim = app["sim"]
    for imei in sim.devices:
        for ago in (30, 20, 10):
            sim.raise_alarm(imei, 1, at=sim.t - ago)
    flight = {"now": 0, "peak": 0}

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/api/alarm/list":
            return await handler(request)
        flight["now"] += 1
        flight["peak"] = max(flight["peak"], flight["now"])
        try:
            await asyncio.sleep(0.01)  # long enough for the others to start
            return await handler(request)
        finally:
            flight["now"] -= 1

    app.middlewares.append(count)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield sim, flight, session, str(server.make_url("")).rstrip("/")
    await server.close()


async def fetch(fleet: Any, **config: Any) -> tuple[list[tuple[list[Any], dict[str, int]]], list[DeviceInfo]]:
    sim, _, session, url = fleet
    platform = tracker.OpenGpsPlatform(FakeContext(session, make_config(base_url=url, **config)))
    await platform.async_setup()
    devices = [DeviceInfo(id=imei, name=imei, keys=frozenset()) for imei in sim.devices]
    return [batch async for batch in platform.async_fetch_event_batches(devices, None)], devices


@pytest.mark.parametrize("width", [1, 4])
async def test_alarm_requests_in_flight_follow_event_concurrency(fleet: Any, width: int) -> None:
    batches, _ = await fetch(fleet, event_concurrency=width)
    assert fleet[1]["peak"] == width
    assert sum(1 for events, _ in batches for e in events if e.event_type == "sos") == 3 * DEVICES


async def test_alarms_come_in_batches_each_with_the_cursor_so_far(fleet: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(tracker, "EVENT_BATCH", 25)
    batches, devices = await fetch(fleet)
    order = [d.id for d in devices]
    assert len(batches) > 2
    for events, cursor in batches[:-1]:
        assert len(events) >= 25
        assert list(cursor) == order[:len(cursor)]  # the devices asked so far, in order
    asked: set[str] = set()
    uids: Counter[str] = Counter()
    for events, cursor in batches:
        asked |= {e.device_id for e in events}
        uids.update(e.uid for e in events)
        assert asked <= set(cursor)
        for e in events:
            assert cursor[e.device_id] >= int(e.at.timestamp())  # the cursor covers what came before it
    assert set(batches[-1][1]) == set(order) and max(uids.values()) == 1
