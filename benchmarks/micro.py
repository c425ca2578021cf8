#!/usr/bin/env python3
"""Per-device cost of each step of the bridge's hot path, in isolation (no broker, no HTTP).

    python3 benchmarks/micro.py [--devices 10000] [--rounds 5]

Feeds real tracker records (from the opengps simulator, every device changed) through the steps
``Account.poll`` runs per device, and times each step the way the host does it today next to a
cheaper variant that gives the same result, so that the recommendations in benchmarks/README.md
carry measured gains. Prints a JSON document and a table (microseconds per device, best of rounds).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from fleetbridge.bridge import _json
from fleetbridge.entities import coerce_state
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


# -- cheaper variants (same output) -------------------------------------------------------------

@lru_cache(maxsize=65536)
def _iso_cached(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_FLAGS = tuple((field, key, true) for field, (key, true) in tracker.FLAGS.items())


def track_state_fast(r: dict[str, Any]) -> dict[str, Any]:
    """tracker.track_state without closures and lambdas, with ISO strings cached per second (the
    records of a cycle share a handful of timestamps). Assumes well-typed numbers, falling back to
    the original for anything else."""
    try:
        s: dict[str, Any] = {}
        lat, lon = r.get("latitude"), r.get("longitude")
        if lat is not None and lon is not None and lat != "" and lon != "":
            lat, lon = float(lat), float(lon)
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError
            if lat or lon:
                s["latitude"], s["longitude"] = lat, lon
        v = r.get("speed")
        if v is not None and v != -1 and v != "":
            s["speed"] = float(v)
        v = r.get("course")
        if v is not None and v != -1 and v != "":
            s["heading"] = int(v)
        for field, key in (("gpstime", "gps_time"), ("hearttime", "last_seen")):
            v = r.get(field)
            if v is not None and v != -1 and v != "" and int(v) > 0:
                s[key] = _iso_cached(int(v))
        v = r.get("battery")
        if v is not None and v != -1 and v != "":
            s["battery"] = int(v)
        v = r.get("externalpower")
        if v not in (None, "", -1, "-1"):
            s["voltage"] = tracker._leading_number(v)
        for field, key in (("mileage", "odometer"), ("todaymileage", "trip_distance_today")):
            v = r.get(field)
            if v is not None and v != -1 and v != "":
                s[key] = float(v) / 1000
        for field, key, true in _FLAGS:
            v = r.get(field)
            if v is not None and v != -1 and v != "" and v != "-1":
                s[key] = int(v) == true
        v = r.get("datastatus")
        if v is not None and v != -1 and v != "":
            s["online"] = int(v) == 2
        return {k: x for k, x in s.items() if x is not None}
    except (TypeError, ValueError):
        return tracker.track_state(r)


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
    assert all(track_state_fast(r) == s for r, s in zip(records, states)), "the fast variant differs"
    coerced = [coerce_state(s) for s in states]
    old = [dict(c, last_seen="2000-01-01T00:00:00Z") for c in coerced]
    payloads = [_json(c) for c in coerced]
    out: dict[str, Any] = {"devices": n, "state_bytes_mean": round(sum(map(len, payloads)) / n, 1), "steps": {}}
    steps = out["steps"]

    steps["decode vendor JSON (json.loads, per record)"] = best_us(lambda: [json.loads(body) for _ in range(n // 100)],
                                                                    n, rounds)
    steps["track_state (today)"] = best_us(lambda: [tracker.track_state(r) for r in records], n, rounds)
    steps["track_state (straight-line, cached ISO)"] = best_us(lambda: [track_state_fast(r) for r in records], n,
                                                               rounds)
    attrs = {"platform_expires_at": "2027-01-01T00:00:00Z", "user_expires_at": "2026-12-31T00:00:00Z"}
    steps["expiry() per device per poll (today)"] = best_us(lambda: [tracker.expiry(attrs) for _ in records], n, rounds)
    steps["coerce_state (today)"] = best_us(lambda: [coerce_state(s) for s in states], n, rounds)
    steps["state != old (dict compare)"] = best_us(lambda: [a != b for a, b in zip(coerced, old)], n, rounds)
    steps["changes dict (today, for the hook)"] = best_us(lambda: [
        {k: a.get(k) for k in set(a) | set(b) if a.get(k) != b.get(k)} for a, b in zip(coerced, old)], n, rounds)
    steps["dict(state) copy for the notify hook (today)"] = best_us(lambda: [dict(c) for c in coerced], n, rounds)
    steps["_json(state) for MQTT (sort_keys)"] = best_us(lambda: [_json(c) for c in coerced], n, rounds)
    steps["json.dumps(state) again for SQLite (today)"] = best_us(
        lambda: [json.dumps(c, separators=(",", ":")) for c in coerced], n, rounds)

    tmp = Path(tempfile.mkdtemp(prefix="fleetbridge-micro-"))
    store = Store(tmp / "s.db")
    store.save_devices("a", {f"d{i}": {"id": str(i)} for i in range(n)})
    rows = [(f"d{i}", c, 1.0) for i, c in enumerate(coerced)]
    steps["Store.save_states (today: dumps + UPDATE, one transaction)"] = best_us(
        lambda: store.save_states("a", rows), n, rounds)
    db: sqlite3.Connection = store.db
    pre = [(p.decode(), 1.0, "a", f"d{i}") for i, p in enumerate(payloads)]

    def save_encoded() -> None:
        with db:
            db.execute("BEGIN")
            db.executemany("UPDATE device SET state=?, state_at=? WHERE account=? AND device=?", pre)

    steps["UPDATE with the MQTT payload reused (no second dumps)"] = best_us(save_encoded, n, rounds)
    store.close()

    today = ["track_state (today)", "expiry() per device per poll (today)", "coerce_state (today)",
             "state != old (dict compare)", "changes dict (today, for the hook)",
             "dict(state) copy for the notify hook (today)", "_json(state) for MQTT (sort_keys)",
             "Store.save_states (today: dumps + UPDATE, one transaction)"]
    cheaper = ["track_state (straight-line, cached ISO)", "coerce_state (today)", "state != old (dict compare)",
               "_json(state) for MQTT (sort_keys)", "UPDATE with the MQTT payload reused (no second dumps)"]
    out["host_and_parse_us_per_changed_device_today"] = round(sum(steps[k] for k in today), 1)
    out["host_and_parse_us_per_changed_device_fixed"] = round(sum(steps[k] for k in cheaper), 1)
    print(json.dumps(out, indent=1))
    print(f"\n{n:,} tracker records, every device changed; microseconds per device (best of {rounds})\n")
    print("| step | us/device |\n|---|---:|")
    for k, v in steps.items():
        print(f"| {k} | {v} |")
    print(f"| **parse + host work per changed device, today** | **{out['host_and_parse_us_per_changed_device_today']}** |")
    print(f"| **the same with the fixes** | **{out['host_and_parse_us_per_changed_device_fixed']}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
