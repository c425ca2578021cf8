"""The reference publisher of the benchmark: a bare aiomqtt client, no bridge logic.

Same library, QoS, retain flag and in-flight window as the bridge's sender (``fleetbridge/mqtt.py``),
and the payloads the bridge published in the same run. Started by ``run.py``::

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


async def main(spec: dict) -> dict:
    with open(spec["payloads"], encoding="utf-8") as fh:
        items = [(topic, payload.encode()) for topic, payload in json.load(fh)]
    count, window_size = int(spec["count"]), int(spec.get("window", 32))
    qos, retain = int(spec.get("qos", 1)), bool(spec.get("retain", True))
    client = aiomqtt.Client(spec["host"], int(spec["port"]), identifier=f"bench-bare-{os.getpid()}",
                            max_inflight_messages=window_size, timeout=30)
    client.pending_calls_threshold = window_size * 4
    async with client:
        window = asyncio.Semaphore(window_size)
        tasks: set[asyncio.Task[None]] = set()

        async def send(topic: str, payload: bytes) -> None:
            try:
                await client.publish(topic, payload, qos=qos, retain=retain)
            finally:
                window.release()

        cpu0, t0 = os.times(), time.perf_counter()
        n = len(items)
        for i in range(count):
            await window.acquire()
            topic, payload = items[i % n]
            task = asyncio.create_task(send(topic, payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        t1, cpu1 = time.perf_counter(), os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    seconds = t1 - t0
    return {"messages": count, "seconds": round(seconds, 3), "rate": round(count / seconds, 1),
            "cpu_s": round(cpu, 3), "cpu_per_1000": round(cpu / count * 1000, 4),
            "payload_bytes_mean": round(sum(len(p) for _, p in items) / n, 1)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
