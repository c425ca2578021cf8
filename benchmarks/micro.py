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
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import aiohttp
from aiohttp.test_utils import TestServer
from fleetbridge_plugins.opengps import platform as tracker
from fleetbridge_plugins.opengps.simulator import Simulator, track_record
from yarl import URL

from fleetbridge import codec
from fleetbridge.config import MqttConfig
from fleetbridge.entities import coerce_state
from fleetbridge.mqtt import MqttLink
from fleetbridge.storage import Store


def best_us(fn: Callable[[], Any], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(best / n * 1e6, 2)


# --- per-platform poll path (issue 9: Lattigo, Tangoe, AirVantage polls at 50k) ---------------------

#: the benchmark's account keys (benchmarks/run.py), the poll's per-device extras off (Lattigo usage
#: and reports are per-device requests on their own intervals, not the listing's parsing)
PLATFORM_ACCOUNTS: dict[str, dict[str, Any]] = {
    "lattigo": {"key_name": "bench", "api_key": "bench-key", "usage_interval": 0, "report_interval": 0},
    "tangoe": {"tenant": "BENCH", "client_id": "bench", "client_secret": "bench-secret", "username": "bench",
               "password": "bench-password"},
    "airvantage": {"client_id": "bench", "client_secret": "bench-secret", "username": "bench",
                   "password": "bench-password"},
}
#: the listings each poll decodes (path prefixes), and the attribute that makes the next poll sweep again
POLL_LISTINGS = {"lattigo": (("/v2/devices",), "_listing"),
                 "tangoe": (("/assets/devices", "/assets/services"), "_sweep"),
                 "airvantage": (("/api/v1/gateways",), "_listing")}


class _Answer:
    """A recorded answer, as much of ``aiohttp.ClientResponse`` as the clients use."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    async def read(self) -> bytes:
        return self.body

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Recording:
    def __init__(self, answers: dict[tuple[str, str], _Answer], key: tuple[str, str], call: Any) -> None:
        self.answers, self.key, self.call = answers, key, call

    async def __aenter__(self) -> _Answer:
        resp = await self.call.__aenter__()
        answer = self.answers[self.key] = _Answer(resp.status, resp.headers, await resp.read())
        return answer

    async def __aexit__(self, *exc: object) -> None:
        await self.call.__aexit__(*exc)


class Tape:
    """An aiohttp session stand-in: records the simulator's answers, then replays them without HTTP."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.answers: dict[tuple[str, str], _Answer] = {}
        self.replay = False

    def request(self, method: str, url: Any, **kw: Any) -> Any:
        key = (method, str(URL(str(url)).update_query(kw.get("params") or {})))
        if self.replay:
            return self.answers[key]
        return _Recording(self.answers, key, self.session.request(method, url, **kw))

    def post(self, url: Any, **kw: Any) -> Any:
        return self.request("POST", url, **kw)


class BenchContext:
    """A minimal AccountContext (no store, no rate budget)."""

    def __init__(self, session: Any, config: dict[str, Any]) -> None:
        self.account_id, self.config, self.session = "bench", config, session
        self.kv: dict[str, Any] = {}

    async def rate(self, kind: str) -> None:
        return None

    def add_secret(self, value: str) -> None:
        return None

    def warn(self, code: str, message: str | None) -> None:
        return None

    async def kv_get(self, key: str) -> Any:
        return self.kv.get(key)

    async def kv_set(self, key: str, value: Any) -> None:
        self.kv[key] = value

    def resolve_call(self, vendor_ref: str, status: str, detail: str = "") -> bool:
        return False

    def request_poll(self) -> None:
        return None


async def platform_polls(n: int, rounds: int) -> dict[str, float]:
    """µs per device of each platform's poll replayed from its simulator's real answers (no HTTP):
    the whole ``async_poll``, and its decode alone (the plugin's decoder; stdlib json for comparison)."""
    steps: dict[str, float] = {}
    for name in PLATFORM_ACCOUNTS:
        steps.update(await _platform_poll(name, n, rounds))
    return steps


async def _platform_poll(name: str, n: int, rounds: int) -> dict[str, float]:
    from fleetbridge_plugins.lattigo.platform import LattigoPlatform
    from fleetbridge_plugins.sierra.airvantage import AirVantagePlatform
    from fleetbridge_plugins.tangoe.platform import TangoePlatform

    cls: Any = {"lattigo": LattigoPlatform, "tangoe": TangoePlatform, "airvantage": AirVantagePlatform}[name]
    keys, (prefixes, reuse) = PLATFORM_ACCOUNTS[name], POLL_LISTINGS[name]
    server = TestServer(cls.create_simulator(keys, n, 1, tick=0), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            tape = Tape(session)
            config = cls.CONFIG_SCHEMA({"platform": name, "name": "bench", **keys,
                                        **_base_urls(name, str(server.make_url("")).rstrip("/"))})
            platform = cls(BenchContext(tape, config))
            await platform.async_setup()
            devices = await platform.async_discover()
            tape.answers.clear()
            setattr(platform, reuse, None)  # the poll sweeps again, recorded
            await platform.async_poll(devices)
            tape.replay = True
            bodies = [a.body for (_, url), a in tape.answers.items() if any(p in url for p in prefixes)]
            best = float("inf")
            for _ in range(rounds):
                setattr(platform, reuse, None)
                t0 = time.perf_counter()
                await platform.async_poll(devices)
                best = min(best, time.perf_counter() - t0)
            await platform.async_close()
    finally:
        await server.close()
    count, decode = len(devices), _decoders()[name]
    return {f"{name}: async_poll replayed ({count} devices, {len(bodies)} pages)": round(best / count * 1e6, 2),
            f"{name}: decode the pages, stdlib json.loads (before)": best_us(
                lambda: [json.loads(b) for b in bodies], count, rounds),
            f"{name}: decode the pages, the plugin's decoder": best_us(
                lambda: [decode(b) for b in bodies], count, rounds)}


def _base_urls(name: str, base: str) -> dict[str, str]:
    return {"base_url": base, **({"token_url": base + "/as/token.oauth2"} if name == "tangoe" else {})}


def _decoders() -> dict[str, Callable[[bytes], Any]]:
    from fleetbridge_plugins.lattigo import api as lattigo_api
    from fleetbridge_plugins.sierra import rest
    from fleetbridge_plugins.tangoe import api as tangoe_api

    return {"lattigo": lattigo_api._decode, "tangoe": tangoe_api._decode,
            "airvantage": lambda body: rest.decode_json(body, "GET", 200)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--platform-devices", type=int, default=2500,
                   help="devices per Lattigo, Tangoe and AirVantage poll case (0: skip them)")
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
    if args.platform_devices:
        out["platform_polls_us_per_device"] = asyncio.run(platform_polls(args.platform_devices, rounds))
        steps.update(out["platform_polls_us_per_device"])
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
