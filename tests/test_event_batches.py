"""Events fetched in batches against a real mosquitto: each batch is stored with its cursor and
published before the next is asked for, a fetch failing halfway keeps what it had, and a repeated uid
reaches neither MQTT nor the observers twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from fleetbridge import hookimpl
from fleetbridge.bridge import Bridge
from fleetbridge.config import load_config
from fleetbridge.errors import VendorError
from fleetbridge.platform import DeviceInfo, Event, Platform
from fleetbridge.plugins import load_plugins
from fleetbridge.storage import Store

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def sos(device: str, uid: str) -> Event:
    return Event(device_id=device, event_type="sos", at=AT, uid=uid, data={"vendor_code": 1})


class BatchedPlatform(Platform):
    """Two devices; each fetch yields a batch for ``a``, waits for ``gate``, then fails or yields ``b``'s."""

    name = "batched"
    title = "Batched events test platform"
    EVENT_TYPES = ("sos",)
    gate: asyncio.Event
    fail = True
    asked: list[Any] = []

    async def async_discover(self) -> list[DeviceInfo]:
        return [DeviceInfo(id=i, name=i, keys=frozenset({"speed"})) for i in ("a", "b")]

    async def async_poll(self, devices: list[DeviceInfo]) -> dict[str, dict[str, Any]]:
        return {d.id: {"speed": 1.0} for d in devices}

    async def async_fetch_event_batches(self, devices: list[DeviceInfo], cursor: Any):
        type(self).asked.append(cursor)
        yield [sos("a", "a1"), sos("a", "a2")], {"a": 2}
        await type(self).gate.wait()
        if type(self).fail:
            raise VendorError("the vendor went away halfway")
        yield [sos("a", "a2"), sos("b", "b1"), sos("b", "b1")], {"a": 2, "b": 1}  # a2 again, b1 twice


class Observer:
    seen: list[str] = []

    @hookimpl
    def fleetbridge_event(self, account: str, device: str, event: dict[str, Any]) -> None:
        type(self).seen.append(f"{device}:{event['id']}")


class BatchedPlugin:
    @hookimpl
    def fleetbridge_register_platforms(self, register: Any) -> None:
        register(BatchedPlatform)


async def test_each_event_batch_is_stored_and_published_with_its_cursor(
        tmp_path: Path, broker: Any, unique: str, recorder_factory: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": f"eb{unique}", "discovery": False,
                 "client_id": f"eb-{unique}"},
        "storage": str(tmp_path / "fb.db"),
        "accounts": [{"platform": "batched", "name": "Batch", "scan_interval": 60, "event_interval": 1}]}))
    BatchedPlatform.gate, BatchedPlatform.fail, BatchedPlatform.asked = asyncio.Event(), True, []
    Observer.seen = []
    rec = await recorder_factory(broker.port, [f"eb{unique}/batch/+/event"])
    registry = load_plugins(extra={"batched": BatchedPlugin(), "observer": Observer()})
    bridge = Bridge(load_config(path, registry.platforms, {}), registry)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    store = Store(tmp_path / "fb.db")
    a_topic, b_topic = f"eb{unique}/batch/a/event", f"eb{unique}/batch/b/event"
    try:
        # the first batch is out while the fetch still waits for its second
        await rec.wait_for(lambda: len(rec.on(a_topic)) == 2, timeout=20, what="the first batch published")
        assert store.event_cursor("batch") == {"a": 2} and BatchedPlatform.asked == [None]
        BatchedPlatform.gate.set()  # ... which fails: the first batch and its cursor stand
        await rec.wait_for(lambda: len(BatchedPlatform.asked) >= 2, timeout=20, what="the next fetch")
        assert BatchedPlatform.asked[1] == {"a": 2}
        BatchedPlatform.fail = False
        await rec.wait_for(lambda: rec.on(b_topic), timeout=20, what="the second batch published")
        await rec.wait_for(lambda: store.event_cursor("batch") == {"a": 2, "b": 1}, what="the final cursor")
        await asyncio.sleep(1.5)  # more fetches repeat every uid: none goes out again
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert len(rec.on(a_topic)) == 2 and len(rec.on(b_topic)) == 1
    assert len(Observer.seen) == len(set(Observer.seen)) == 3
    assert bridge.stats["events"] == 3
    assert store.outbox() == []
    store.close()
