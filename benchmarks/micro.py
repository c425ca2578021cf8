#!/usr/bin/env python3
"""Per-device cost of each step of the bridge's hot path, in isolation (no broker, no HTTP).

    python3 benchmarks/micro.py [--devices 10000] [--rounds 5]

Feeds real tracker records (from the opengps simulator, every device changed) through the steps
``Account.poll`` runs per device and times each one; the rows marked "before" are the stdlib JSON
the host used until codec.py, for comparison. Prints a JSON document and a table (microseconds per
device, best of rounds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetbridge import codec
from fleetbridge.config import MqttConfig
from fleetbridge.entities import coerce_state
from fleetbridge.mqtt import MqttLink
from fleetbridge.storage import Store
from fleetbridge_plugins.opengps import platform as tracker
from fleetbridge_plugins.opengps.simulator import Simulator, track_record


def best_us(fn: Callable[[], Any], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(best / n * 1e6, 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    n, rounds = args.devices, args.rounds

    sim = Simulator({"bench": "pw"}, devices=n, seed=1, subaccounts=n > 500, random_alarm_interval=0)
    for d in sim.devices.values():
        d.datastatus = 2
    sim.step(1.0)
    server = int(sim.now())
    records = [track_record(d, server, int(sim.t)) for d in sim.devices.values()]
    body = json.dumps({"code": 0, "record": records[:100]}).encode()
    states = [tracker.track_state(r) for r in records]
    coerced = [coerce_state(s) for s in states]
    old = [dict(c, last_seen="2000-01-01T00:00:00Z") for c in coerced]
    payloads = [codec.dumps(c) for c in coerced]
    out: dict[str, Any] = {"devices": n, "state_bytes_mean": round(sum(map(len, payloads)) / n, 1), "steps": {}}
    steps = out["steps"]
    tmp = Path(tempfile.mkdtemp(prefix="fleetbridge-micro-"))
    store = Store(tmp / "s.db")
    store.save_devices("a", {f"d{i}": {"id": str(i)} for i in range(n)})
    rows = [(f"d{i}", p.decode(), 1.0) for i, p in enumerate(payloads)]
    link = MqttLink(MqttConfig(), will_topic="w", subscriptions=[], on_message=lambda *a: None)
    topics = [f"fleetbridge/acc/d{i}/state" for i in range(n)]

    def set_retained() -> None:
        link.retained.clear()
        for topic, payload in zip(topics, payloads):
            link.set_retained(topic, payload)

    steps["decode vendor JSON, stdlib json.loads (before)"] = best_us(lambda: [json.loads(body) for _ in range(n // 100)],
                                                                       n, rounds)
    steps["decode vendor JSON, codec.loads (orjson)"] = best_us(lambda: [codec.loads(body) for _ in range(n // 100)],
                                                                 n, rounds)
    steps["track_state"] = best_us(lambda: [tracker.track_state(r) for r in records], n, rounds)
    attrs = {"platform_expires_at": "2027-01-01T00:00:00Z", "user_expires_at": "2026-12-31T00:00:00Z"}
    steps["expiry()"] = best_us(lambda: [tracker.expiry(attrs) for _ in records], n, rounds)
    steps["coerce_state"] = best_us(lambda: [coerce_state(s) for s in states], n, rounds)
    steps["state != old (dict compare)"] = best_us(lambda: [a != b for a, b in zip(coerced, old)], n, rounds)
    steps["encode state, stdlib json.dumps (before)"] = best_us(
        lambda: [json.dumps(c, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode() for c in coerced],
        n, rounds)
    steps["encode state, codec.dumps (orjson)"] = best_us(lambda: [codec.dumps(c) for c in coerced], n, rounds)
    steps["MqttLink.set_retained (queue for the sender)"] = best_us(set_retained, n, rounds)
    steps["Store.save_states (every 30 s, not every poll)"] = best_us(lambda: store.save_states("a", rows), n, rounds)
    store.close()
    now = ["decode vendor JSON, codec.loads (orjson)", "track_state", "expiry()", "coerce_state",
           "state != old (dict compare)", "encode state, codec.dumps (orjson)",
           "MqttLink.set_retained (queue for the sender)"]
    out["parse_and_host_us_per_changed_device"] = round(sum(steps[k] for k in now), 1)
    print(json.dumps(out, indent=1))
    print(f"\n{n:,} tracker records, every device changed; microseconds per device (best of {rounds})\n")
    print("| step | us/device |\n|---|---:|")
    for k, v in steps.items():
        print(f"| {k} | {v} |")
    print(f"| **parse + host work per changed device (the steps without 'before' and the store)** | "
          f"**{out['parse_and_host_us_per_changed_device']}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
