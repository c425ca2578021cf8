"""The reference publisher of the benchmark: a bare MQTT client, no bridge logic.

Same libraries, QoS, retain flag, in-flight window and publish mechanism as the bridge's sender
(``fleetbridge/mqtt.py``: an aiomqtt connection, paho's non-blocking ``publish()`` with the window
counted down in ``on_publish``), and the payloads the bridge published in the same run. ``"mode":
"direct"`` (the default, the issue's reference "bare client, same library") is paho's plain socket
I/O; ``"mode": "wire"`` is the same with the bridge's ``fleetbridge.mqtt._Wire`` attached (coalesced
sends, buffered reads, PUBACKs without throw-away objects); ``"mode": "fast"`` also builds each QoS 1
PUBLISH in the wire (``_Wire.publish``): the bridge's own publish path, nothing else of the bridge;
``"mode": "awaited"`` awaits aiomqtt's ``publish()`` in one task per message (the bridge's sender
before it was rewritten), for comparison. Started by ``run.py``::

    python benchmarks/bare.py '{"host": "127.0.0.1", "port": 1883, "payloads": "file.json",
                                "count": 50000, "window": 32, "qos": 1, "retain": true}'

Prints one JSON line: messages, seconds (first publish to last acknowledgement), rate, CPU seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import aiomqtt


async def direct(client: aiomqtt.Client, items: list[tuple[str, bytes]], count: int, window_size: int,
                 qos: int, retain: bool) -> None:
    """paho's publish(), at most ``window_size`` unacknowledged (the bridge's way)."""
    paho = client._client
    inflight: set[int] = set()
    free = asyncio.Event()
    chained = paho.on_publish

    def on_publish(c, userdata, mid, *rest) -> None:
        if mid in inflight:
            inflight.discard(mid)
            free.set()
        else:
            chained(c, userdata, mid, *rest)

    paho.on_publish = on_publish
    n = len(items)
    for i in range(count):
        while len(inflight) >= window_size:
            free.clear()
            await free.wait()
        topic, payload = items[i % n]
        info = paho.publish(topic, payload, qos, retain)
        if not info.is_published():
            inflight.add(info.mid)
    while inflight:
        free.clear()
        await free.wait()


async def wire(client: aiomqtt.Client, items: list[tuple[str, bytes]], count: int, window_size: int,
               qos: int, retain: bool) -> None:
    """``direct`` with the bridge's socket I/O (``fleetbridge.mqtt._Wire``) on the paho client."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    from fleetbridge.mqtt import _Wire  # only this mode needs the package

    attached = _Wire.attach(client._client)
    if attached is None:
        raise RuntimeError("fleetbridge.mqtt._Wire does not fit this paho-mqtt")
    try:
        await direct(client, items, count, window_size, qos, retain)
    finally:
        attached.detach()


async def fast(client: aiomqtt.Client, items: list[tuple[str, bytes]], count: int, window_size: int,
               qos: int, retain: bool) -> None:
    """``wire`` with the QoS 1 PUBLISH built by the wire (``_Wire.publish``, PUBACKs to ``on_ack``):
    the bridge's own publish path, without the rest of the bridge."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    from fleetbridge.mqtt import _Wire

    attached = _Wire.attach(client._client)
    if attached is None or not attached.fast or qos != 1:
        raise RuntimeError("fleetbridge.mqtt._Wire.publish does not fit this paho-mqtt or QoS")
    inflight: set[int] = set()
    free = asyncio.Event()

    def acked(mid: int) -> bool:
        if mid not in inflight:
            return False
        inflight.discard(mid)
        free.set()
        return True

    attached.on_ack = acked
    n = len(items)
    try:
        for i in range(count):
            while len(inflight) >= window_size:
                free.clear()
                await free.wait()
            topic, payload = items[i % n]
            mid = attached.publish(topic, payload, retain)
            if mid is None:
                raise RuntimeError("not connected")
            inflight.add(mid)
        while inflight:
            free.clear()
            await free.wait()
    finally:
        attached.on_ack = None
        attached.detach()


async def awaited(client: aiomqtt.Client, items: list[tuple[str, bytes]], count: int, window_size: int,
                  qos: int, retain: bool) -> None:
    """aiomqtt's awaited publish(), one task per message, a semaphore for the window."""
    window = asyncio.Semaphore(window_size)
    tasks: set[asyncio.Task[None]] = set()

    async def send(topic: str, payload: bytes) -> None:
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        finally:
            window.release()

    n = len(items)
    for i in range(count):
        await window.acquire()
        topic, payload = items[i % n]
        task = asyncio.create_task(send(topic, payload))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


def load_payloads(path: str) -> list[tuple[str, bytes]]:
    with open(path, encoding="utf-8") as fh:
        return [(topic, payload.encode()) for topic, payload in json.load(fh)]


async def main(spec: dict) -> dict:
    items = load_payloads(spec["payloads"])
    count, window_size = int(spec["count"]), int(spec.get("window", 32))
    qos, retain = int(spec.get("qos", 1)), bool(spec.get("retain", True))
    publisher = {"awaited": awaited, "wire": wire, "fast": fast}.get(spec.get("mode", "direct"), direct)
    client = aiomqtt.Client(spec["host"], int(spec["port"]), identifier=f"bench-bare-{os.getpid()}",
                            max_inflight_messages=window_size, timeout=30)
    client.pending_calls_threshold = window_size * 4
    async with client:
        cpu0, t0 = os.times(), time.perf_counter()
        await publisher(client, items, count, window_size, qos, retain)
        t1, cpu1 = time.perf_counter(), os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    seconds = t1 - t0
    return {"mode": publisher.__name__, "messages": count, "seconds": round(seconds, 3),
            "rate": round(count / seconds, 1), "cpu_s": round(cpu, 3), "cpu_per_1000": round(cpu / count * 1000, 4),
            "payload_bytes_mean": round(sum(len(p) for _, p in items) / n, 1) if (n := len(items)) else 0}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
