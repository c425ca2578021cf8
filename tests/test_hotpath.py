"""The host's hot path against a real mosquitto: per-batch publishing, back-pressure, compact retained
payloads, and states written behind to the store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetbridge import hookimpl
from fleetbridge.bridge import Bridge
from fleetbridge.config import MqttConfig, load_config
from fleetbridge.entities import coerce_state
from fleetbridge.mqtt import LOW_WATER, PACK_OVER, MqttLink
from fleetbridge.platform import DeviceInfo, Platform
from fleetbridge.plugins import load_plugins
from fleetbridge.storage import Store


class GatedPlatform(Platform):
    """Two devices polled in two batches; the second batch waits for ``gate``."""

    name = "gated"
    title = "Gated test platform"
    gate: asyncio.Event
    polls = 0

    async def async_discover(self) -> list[DeviceInfo]:
        return [DeviceInfo(id=i, name=i, keys=frozenset({"speed"})) for i in ("first", "second")]

    async def async_poll_batches(self, devices: list[DeviceInfo]):
        type(self).polls += 1
        yield {"first": {"speed": 10.0 + self.polls}}
        await type(self).gate.wait()
        yield {"second": {"speed": 20.0 + self.polls}}


class GatedPlugin:
    @hookimpl
    def fleetbridge_register_platforms(self, register: Any) -> None:
        register(GatedPlatform)


def _bridge(tmp_path: Path, port: int, unique: str) -> Bridge:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": port, "base_topic": f"hp{unique}", "discovery": False,
                 "client_id": f"hp-{unique}"},
        "storage": str(tmp_path / "fb.db"),
        "accounts": [{"platform": "gated", "name": "Gate", "scan_interval": 1}]}))
    registry = load_plugins(extra={"gated": GatedPlugin()})
    return Bridge(load_config(path, registry.platforms, {}), registry)


async def test_each_batch_is_published_before_the_next_is_fetched(
        tmp_path: Path, broker: Any, unique: str, recorder_factory: Any) -> None:
    GatedPlatform.gate = asyncio.Event()
    GatedPlatform.polls = 0
    rec = await recorder_factory(broker.port, [f"hp{unique}/#"])
    bridge = _bridge(tmp_path, broker.port, unique)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        first, second = f"hp{unique}/gate/first/state", f"hp{unique}/gate/second/state"
        await rec.wait_for(lambda: first in rec.latest, what="the first batch's state")
        assert second not in rec.latest  # its batch is still being fetched
        GatedPlatform.gate.set()
        await rec.wait_for(lambda: second in rec.latest, what="the second batch's state")
        await rec.wait_for(lambda: GatedPlatform.polls >= 3, what="more polls")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    # changed states are written behind, and all of them at the stop
    stored = {row["device"]: row["state"] for row in Store(tmp_path / "fb.db").load_devices("gate")}
    live = {slug: dev.state for slug, dev in bridge.accounts["gate"].devices.items()}
    assert stored == live and stored["second"]["speed"] > 20


class FloodPlatform(Platform):
    """Three batches of 3,000 changed devices; the second comes after the 1 s interval is over.
    Records the MQTT backlog each time the sweep asks for its next batch."""

    name = "flood"
    title = "Flood test platform"
    BATCH = 3000
    bridge: Bridge
    backlog_when_asked: list[int] = []
    polls = 0

    async def async_discover(self) -> list[DeviceInfo]:
        return [DeviceInfo(id=f"d{i}", name=f"d{i}", keys=frozenset({"speed"})) for i in range(3 * self.BATCH)]

    async def async_poll_batches(self, devices: list[DeviceInfo]):
        type(self).polls += 1
        for batch in range(3):
            if batch:
                type(self).backlog_when_asked.append(self.bridge.mqtt.backlog)
            if batch == 1:
                await asyncio.sleep(1.2)  # the sweep outlasts its interval
            yield {f"d{i}": {"speed": float(self.polls)} for i in range(batch * self.BATCH, (batch + 1) * self.BATCH)}


class FloodPlugin:
    @hookimpl
    def fleetbridge_register_platforms(self, register: Any) -> None:
        register(FloodPlatform)


async def test_a_sweep_past_its_interval_still_waits_for_room(tmp_path: Path, broker: Any, unique: str) -> None:
    """A bridge short of CPU must not fetch states faster than it publishes them: each batch
    waits for the backlog to drain, also once the sweep has overrun its interval."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": f"fl{unique}", "discovery": False,
                 "client_id": f"fl-{unique}"},
        "storage": str(tmp_path / "fb.db"),
        "accounts": [{"platform": "flood", "name": "Flood", "scan_interval": 1}]}))
    registry = load_plugins(extra={"flood": FloodPlugin()})
    bridge = FloodPlatform.bridge = Bridge(load_config(path, registry.platforms, {}), registry)
    FloodPlatform.backlog_when_asked = []
    FloodPlatform.polls = 0
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(FloodPlatform.backlog_when_asked) < 4 and loop.time() < deadline:
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    asked = FloodPlatform.backlog_when_asked
    assert len(asked) >= 4, "two sweeps did not finish"
    assert all(n <= LOW_WATER for n in asked), asked  # the third batch too, asked after the interval


@pytest.mark.parametrize("ledger", [True, False])
async def test_a_large_outbox_is_queued_a_page_at_a_time_and_all_delivered_once(
        tmp_path: Path, broker: Any, unique: str, recorder_factory: Any, monkeypatch: pytest.MonkeyPatch,
        ledger: bool) -> None:
    """Stored events (a first fetch's hour of alarms) go out in order, each once, with at most a page
    of them queued in memory at any moment."""
    from fleetbridge import bridge as bridge_module

    monkeypatch.setattr(bridge_module, "OUTBOX_PAGE", 40)
    n = 1000
    topic = f"ob{unique}/gate/first/event"
    Store(tmp_path / "fb.db").record_events("gate", [(f"u{i}", topic, json.dumps({"seq": i}).encode())
                                                     for i in range(n)], cursor=None)
    rec = await recorder_factory(broker.port, [topic])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": f"ob{unique}", "discovery": False,
                 "client_id": f"ob-{unique}", "event_ledger": ledger},
        "storage": str(tmp_path / "fb.db"),
        "accounts": [{"platform": "gated", "name": "Gate", "scan_interval": 1}]}))
    GatedPlatform.gate = asyncio.Event()
    registry = load_plugins(extra={"gated": GatedPlugin()})
    bridge = Bridge(load_config(path, registry.platforms, {}), registry)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    most = 0
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(rec.on(topic)) < n and loop.time() < deadline:
            most = max(most, len(bridge._outbox_queued), len(bridge.mqtt._acked) + len(bridge.mqtt._acked_out))
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert [e["seq"] for e in rec.on(topic)] == list(range(n))  # each once, in order
    assert 0 < most <= 40
    assert Store(tmp_path / "fb.db").outbox() == []


async def test_async_poll_collects_the_batches() -> None:
    GatedPlatform.gate = asyncio.Event()
    GatedPlatform.gate.set()
    GatedPlatform.polls = 0
    platform = GatedPlatform.__new__(GatedPlatform)
    assert await platform.async_poll([]) == {"first": {"speed": 11.0}, "second": {"speed": 21.0}}

    class Neither(Platform):
        name = "neither"
        title = "implements no poll"

    with pytest.raises(NotImplementedError):
        await Neither.__new__(Neither).async_poll([])


async def _connected_link(port: int, unique: str) -> tuple[MqttLink, asyncio.Task[None]]:
    link = MqttLink(MqttConfig(host="127.0.0.1", port=port, client_id=f"link-{unique}"),
                    will_topic=f"hl{unique}/state", subscriptions=[], on_message=lambda *a: None)
    task = asyncio.create_task(link.run())
    await asyncio.wait_for(link.connected.wait(), 10)
    return link, task


async def test_large_retained_payloads_are_packed_in_memory_and_sent_whole(
        broker: Any, unique: str, recorder_factory: Any) -> None:
    rec = await recorder_factory(broker.port, [f"hl{unique}/#"])
    link, task = await _connected_link(broker.port, unique)
    try:
        big = json.dumps({"cmps": {f"k{i}": {"name": f"Entity {i}", "val_tpl": "{{ value_json.x }}"}
                                   for i in range(200)}}).encode()
        assert len(big) > PACK_OVER
        link.set_retained(f"hl{unique}/big", big)
        link.set_retained(f"hl{unique}/small", b"{}")
        assert len(link.retained[f"hl{unique}/big"]) < len(big) / 4  # kept compressed
        assert link.payload(f"hl{unique}/big") == big
        await rec.wait_for(lambda: rec.latest.get(f"hl{unique}/big") == big, what="the whole payload")
        await rec.wait_for(lambda: rec.latest.get(f"hl{unique}/small") == b"{}", what="the small one")
        # acknowledged: the will's "online", big and small
        await rec.wait_for(lambda: link.stats["published"] >= 3, what="the broker's acknowledgements")
        published = link.stats["published"]
        link.set_retained(f"hl{unique}/big", big)  # unchanged: nothing to send
        await asyncio.sleep(0.3)
        assert link.stats["published"] == published and not link.backlog
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_producers_wait_for_room_while_the_backlog_drains(
        broker: Any, unique: str, recorder_factory: Any) -> None:
    n = 6 * LOW_WATER
    rec = await recorder_factory(broker.port, [f"hl{unique}/#"])
    link, task = await _connected_link(broker.port, unique)
    try:
        loop = asyncio.get_running_loop()
        for i in range(n):
            link.set_retained(f"hl{unique}/d{i}", b'{"speed":1}')
        assert link.backlog > LOW_WATER
        await link.wait_for_room(loop.time() + 30)
        assert link.backlog <= LOW_WATER
        assert link.stats["published"] >= n - LOW_WATER - 64
        await rec.wait_for(lambda: sum(t.startswith(f"hl{unique}/d") for t in rec.latest) == n, timeout=30,
                           what="every message")
        link.set_retained(f"hl{unique}/late", b"x")
        start = loop.time()
        await link.wait_for_room(start + 30)  # no backlog: no wait
        assert loop.time() - start < 0.1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_coerce_state_survives_infinite_and_huge_numbers() -> None:
    state = coerce_state({"battery": float("inf"), "speed": 10**400, "heading": "nan", "odometer": 5})
    assert state == {"odometer": 5.0}


def test_coerced_floats_have_at_most_six_decimals() -> None:
    import random

    from fleetbridge import codec

    rng = random.Random(5)
    for _ in range(20_000):
        x = rng.uniform(-1000, 1000) * 10 ** rng.randint(-7, 9)
        y = coerce_state({"odometer": x})["odometer"]
        assert abs(y - x) <= 5.01e-7 + abs(x) * 1e-15
        text = codec.dumps({"v": y}).decode()  # what reaches MQTT
        assert "e" in text or len(text.split(".")[-1].rstrip("}")) <= 6, (x, text)
    assert coerce_state({"odometer": 12.300000000000001, "speed": 1e300}) == {"odometer": 12.3, "speed": 1e300}


def test_encoded_states_are_right_sized() -> None:
    """A retained payload must not carry an encoder's work buffer (orjson's is 4 KB)."""
    import tracemalloc

    from fleetbridge import codec

    state = {"speed": 12.5, "latitude": 52.1, "online": True, "gps_time": "2026-12-02T10:00:00Z"}
    tracemalloc.start()
    try:
        kept = [codec.dumps(state) for _ in range(1000)]
        per_payload = tracemalloc.get_traced_memory()[0] / len(kept)
    finally:
        tracemalloc.stop()
    assert codec.loads(kept[0]) == state
    assert per_payload < 4 * len(kept[0]) + 200


def test_request_counts_stay_small_without_an_hourly_cap() -> None:
    from fleetbridge.ratelimit import HOUR, MinuteCounts

    counts = MinuteCounts()
    for n in range(100_000):  # ~28 requests a second for an hour
        counts.add(1000.0 + n * 0.036)
    now = 1000.0 + 100_000 * 0.036
    assert len(counts._buckets) <= 61
    assert abs(counts.total(now) - 100_000) <= 2000  # the oldest minute ages out in one piece
    assert counts.total(now + HOUR + 60) == 0


async def test_a_sweep_saves_states_in_chunks_and_keeps_what_a_cancel_left(tmp_path: Path, unique: str) -> None:
    """A large save serves the event loop between transactions; rows not written when the save is
    cancelled stay unsaved (and ``close`` writes them), newer states winning."""
    from fleetbridge.account import STATE_SAVE_CHUNK

    bridge = _bridge(tmp_path, 1, unique)  # never connected: only the store is used
    account = bridge.accounts["gate"]
    n = STATE_SAVE_CHUNK * 2 + 7
    bridge.store.save_devices("gate", {f"d{i}": {"id": f"d{i}"} for i in range(n)})
    account._unsaved = {f"d{i}": (b'{"speed":%d}' % i, 1.0) for i in range(n)}
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await account._save_states_in_chunks()
    task.cancel()
    stored = {row["device"]: row["state"] for row in bridge.store.load_devices("gate")}
    assert all(stored[f"d{i}"] == {"speed": i} for i in range(n)) and not account._unsaved
    assert ticks >= 3  # the loop ran between the three transactions

    account._unsaved = {f"d{i}": (b'{"speed":%d}' % (i + 1), 2.0) for i in range(n)}
    save = asyncio.create_task(account._save_states_in_chunks())
    await asyncio.sleep(0)  # the first chunk is written, then the save yields
    account._unsaved["d0"] = (b'{"speed":-1}', 3.0)  # a newer state meanwhile
    save.cancel()
    await asyncio.gather(save, return_exceptions=True)
    assert len(account._unsaved) == n - STATE_SAVE_CHUNK + 1
    assert account._unsaved["d0"] == (b'{"speed":-1}', 3.0)
    account.save_states()
    stored = {row["device"]: row["state"] for row in bridge.store.load_devices("gate")}
    assert stored["d0"] == {"speed": -1} and stored[f"d{n - 1}"] == {"speed": n}
    bridge.store.close()
