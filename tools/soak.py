#!/usr/bin/env python3
"""Soak: a long run of many simulated devices across every platform with faults switching on and
off. Not part of the test run.

    python3 tools/soak.py --duration 1800 --devices 10000          # the full soak (30 min)
    python3 tools/soak.py --duration 120 --devices 1000            # a quick look

Starts mosquitto, one simulator process per platform (``fleetbridge simulate``, or
``tools/soak_sims.py`` for the tracker platform and AMM) and the bridge as its own process; every
``--fault-every`` seconds switches one fault on one simulator for a while (rate limiting, HTTP 5xx,
HTML pages, malformed JSON, slow answers), presses a harmless control now and then, samples the
bridge's resident memory, and at the end (faults off, a few poll cycles to settle) compares the
states on the broker with fresh polls of every simulator. Prints a JSON summary: memory over time,
faults injected, errors by account, devices by platform, commands sent and answered, and
mismatching devices with the keys that differ.

The tracker platform lists at most 500 devices per account: its simulator runs as a distributor over
sub-accounts of 500 (``tools/soak_sims.py``), read by the bridge with ``include_subaccounts``.
Its truth comes from the simulator's ``/_sim/devices`` through the plugin's own parsing, because a
login of the soak's would void the bridge's token (one token per account).

The worlds keep moving (a tracker's door, for one, is open only for the 60 s after a stop), so a
state on the broker may equal neither of two polls taken around the bridge's last one: a device
counts as mismatched only when it still differs after ``--check-rounds`` such comparisons, each a
bridge poll later than the one before.

``--probe-every SECONDS`` runs the bridge under ``tools/memory_probe.py`` and signals it every
SECONDS: ``<logs>/memory/memory.jsonl`` gets resident memory next to pymalloc's and glibc's heaps;
with ``--tracemalloc`` (``-X tracemalloc=5``, which inflates resident memory) also the Python heap
and the allocation sites that grew most since the first probe (``top-NNN.txt``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import aiomqtt
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from memory_probe import rss_mb  # noqa: E402  (sibling scripts, not a package)
from soak_sims import AMM_RATE_LIMIT, SIMULATORS  # noqa: E402

#: credentials each simulator is started with and the account config that uses them
CREDENTIALS: dict[str, dict[str, str]] = {
    "opengps": {"account": "soak", "password": "soak-password"},
    "lattigo": {"key_name": "soak", "api_key": "soak-api-key"},
    "amm": {"client_id": "soak", "client_secret": "soak-secret", "username": "soak", "password": "soak-password"},
    "airvantage": {"client_id": "soak", "client_secret": "soak-secret", "username": "soak",
                   "password": "soak-password"},
    "tangoe": {"tenant": "soak", "client_id": "soak", "client_secret": "soak-secret", "username": "soak",
               "password": "soak-password"},
}
EXTRA: dict[str, dict[str, Any]] = {
    "amm": {"group_rate_limit": AMM_RATE_LIMIT, "system_rate_limit": AMM_RATE_LIMIT},
    "opengps": {"include_subaccounts": True},
}
FAULTS = ({"rate_limit": 5}, {"http_500": 5}, {"html_error": 3}, {"malformed_json": 3}, {"slow": 5.0})
HARMLESS = ("reboot", "engine_resume", "lock_doors")
VOLATILE = {"gps_time", "last_seen"}  # advance with every answer: compared by the other keys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unexplained(published: Mapping[str, Any], polls: Iterable[Mapping[str, Any]]) -> list[str]:
    """Stable keys (bool or str values, not VOLATILE) whose value on the broker equals the value in
    none of ``polls`` (fresh polls taken around the bridge's own), sorted."""
    polls = list(polls)
    keys = set(published).union(*polls) - VOLATILE
    stable = [k for k in keys if any(isinstance(p.get(k), (bool, str)) for p in polls)]
    return sorted(k for k in stable if all(published.get(k) != p.get(k) for p in polls))


def account_of(topic: str) -> str:
    """``soak/<account>/<device>/state`` -> ``<account>``."""
    return topic.split("/")[1]


async def opengps_truth(session: aiohttp.ClientSession, port: int, account: str) -> dict[str, dict[str, Any]]:
    """The tracker simulator's truth (``/_sim/devices``, no login) as the plugin parses a track answer."""
    from fleetbridge.entities import coerce_state
    from fleetbridge.platform import slugify
    from fleetbridge_plugins.opengps.platform import device_info, expiry, track_state
    from fleetbridge_plugins.opengps.simulator import info_record, track_record

    async with session.get(f"http://127.0.0.1:{port}/_sim/devices") as resp:
        body = await resp.json()
    states = {}
    for fields in body["devices"]:
        device = SimpleNamespace(**fields)
        state = track_state(track_record(device, body["servertime"], int(body["world_time"])))
        info = device_info(info_record(device), ())
        if expires := expiry(info.attributes):
            state["expires_at"] = expires
        states[f"soak/{account}/{slugify(info.id)}/state"] = coerce_state(state)
    return states


async def wait_port(port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sims: dict[str, int] = {}  # platform -> port
        self.latest: dict[str, bytes] = {}
        self.results: dict[str, list[str]] = {}
        self.summary: dict[str, Any] = {"faults": [], "memory_mb": [], "commands_sent": 0, "check_rounds": []}
        self.platforms: dict[str, str] = {}  # account id -> platform

    def spawn(self, *cmd: str, log: str) -> subprocess.Popen[bytes]:
        out = open(self.workdir / log, "wb")
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    async def start(self) -> subprocess.Popen[bytes]:
        from fleetbridge.plugins import load_plugins

        platforms = load_plugins().platforms
        chosen = [p for p in self.args.platforms.split(",") if p in platforms and p in CREDENTIALS]
        self.summary["platforms"] = chosen
        per = max(1, self.args.devices // len(chosen))
        self.broker = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.broker} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
        self.spawn(shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf), log="mosquitto.log")
        accounts = []
        for name in chosen:
            port = self.sims[name] = free_port()
            self.spawn(*self.simulator(name, per, port), log=f"sim-{name}.log")
            cls = platforms[name]
            base = f"http://127.0.0.1:{port}"
            accounts.append({"platform": name, "name": f"Soak {name}", "base_url": base,
                             **CREDENTIALS[name], **EXTRA.get(name, {}).copy(), "scan_interval": self.args.scan_interval,
                             "rate_limits": {kind: 0 for kind in cls.RATE_LIMITS}, "timeout": 10})
            if name == "tangoe":
                accounts[-1]["token_url"] = f"{base}/as/token.oauth2"
        for port in [self.broker, *self.sims.values()]:
            await wait_port(port)
        self.config = self.workdir / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "mqtt": {"host": "127.0.0.1", "port": self.broker, "base_topic": "soak"},
            "storage": str(self.workdir / "soak.db"), "accounts": accounts}))
        return self.spawn(*self.bridge_command(), log="bridge.log")

    @staticmethod
    def simulator(name: str, devices: int, port: int) -> list[str]:
        """The command that serves ``name``'s simulator on ``port`` (tools/soak_sims.py where it needs options)."""
        serve = [str(TOOLS / "soak_sims.py")] if name in SIMULATORS else ["-m", "fleetbridge", "simulate"]
        return [sys.executable, *serve, name, "--devices", str(devices), "--port", str(port),
                *(f"--credential={k}={v}" for k, v in CREDENTIALS[name].items())]

    def bridge_command(self) -> list[str]:
        run = ["run", "--no-live", "-c", str(self.config)]
        if not self.args.probe_every:
            return [sys.executable, "-m", "fleetbridge", *run]
        trace = ["-X", "tracemalloc=5"] if self.args.tracemalloc else []
        return [sys.executable, *trace, str(TOOLS / "memory_probe.py"), str(self.workdir / "memory"), "--", *run]

    async def record(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.broker, identifier="soak-recorder") as client:
            await client.subscribe("soak/#", qos=1)
            async for msg in client.messages:
                topic = str(msg.topic)
                self.latest[topic] = bytes(msg.payload)
                if topic.endswith("/result"):
                    self.results.setdefault(topic, []).append(json.loads(msg.payload)["status"])

    async def fault(self, session: aiohttp.ClientSession) -> None:
        name, port = random.choice(sorted(self.sims.items()))
        async with session.get(f"http://127.0.0.1:{port}/_sim/faults") as resp:
            supported = await resp.json()
        fault = random.choice([f for f in FAULTS if set(f) <= set(supported)])
        self.summary["faults"].append({"at": round(time.monotonic() - self.t0), "platform": name, **fault})
        async with session.post(f"http://127.0.0.1:{port}/_sim/faults", json=fault) as resp:
            resp.raise_for_status()

    async def clear_faults(self, session: aiohttp.ClientSession) -> None:
        for port in self.sims.values():
            async with session.post(f"http://127.0.0.1:{port}/_sim/faults?reset=1", json={}) as resp:
                resp.raise_for_status()

    async def press(self, client: aiomqtt.Client) -> None:
        devices = json.loads(self.latest.get("soak/bridge/devices", b"[]"))
        choices = [(d, s) for d in devices for s in d["services"] if s in HARMLESS]
        if choices:
            device, service = random.choice(choices)
            await client.publish(f"soak/{device['account']}/{device['id']}/{service}/set", "PRESS", qos=1)
            self.summary["commands_sent"] += 1

    async def truth(self, session: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        """A fresh poll of every simulator with the platforms' own code (no MQTT)."""
        from fleetbridge.bridge import Bridge
        from fleetbridge.config import MqttConfig, load_config
        from fleetbridge.plugins import load_plugins, unavailable_platforms

        registry = load_plugins()
        config = load_config(self.config, registry.platforms, unavailable_platforms(registry))
        config = replace(config, mqtt=MqttConfig(), storage=self.workdir / "truth.db")
        bridge = Bridge(config, registry)
        states: dict[str, dict[str, Any]] = {}
        for acc in bridge.accounts.values():
            self.platforms[acc.id] = acc.config.platform
            if acc.config.platform == "opengps":
                states.update(await opengps_truth(session, self.sims["opengps"], acc.id))
                continue
            await acc.open(retry=False)
            await acc.discover_once()
            await acc.poll()
            for dev in acc.devices.values():
                states[f"soak/{acc.id}/{dev.slug}/state"] = dev.state
            await acc.close()
        bridge.store.close()
        return states

    async def check(self, session: aiohttp.ClientSession) -> tuple[int, dict[str, dict[str, list[Any]]]]:
        """Compare the broker with fresh polls, up to ``--check-rounds`` times a bridge poll apart.

        Returns how many devices were compared and those that differed every round, with
        ``{key: [fresh poll before, on the broker, fresh poll after]}`` of the last round."""
        previous = await self.truth(session)
        compared, suspects = len(previous), list(previous)
        differing: dict[str, dict[str, list[Any]]] = {}
        for _ in range(self.args.check_rounds):
            await asyncio.sleep(self.args.scan_interval + 5)  # the bridge polls once in between
            published = {t: json.loads(self.latest.get(t) or b"{}") for t in suspects}
            fresh = await self.truth(session)
            differing = {}
            for topic in suspects:
                polls = (previous.get(topic, {}), fresh.get(topic, {}))
                if keys := unexplained(published[topic], polls):
                    differing[topic] = {k: [polls[0].get(k), published[topic].get(k), polls[1].get(k)] for k in keys}
            self.summary["check_rounds"].append({
                "differing": len(differing),
                "keys": Counter(k for keys in differing.values() for k in keys),
                "examples": dict(list(differing.items())[:5])})
            if not differing:
                break
            suspects, previous = list(differing), fresh
        return compared, differing

    async def last_probe(self, bridge: subprocess.Popen[bytes], timeout: float = 180) -> None:
        """Signal the bridge for a last memory probe and wait until it is written."""
        log = self.workdir / "memory" / "memory.jsonl"
        lines = len(log.read_text().splitlines()) if log.exists() else 0
        bridge.send_signal(signal.SIGUSR1)
        end = time.monotonic() + timeout
        while time.monotonic() < end and (not log.exists() or len(log.read_text().splitlines()) <= lines):
            await asyncio.sleep(1)

    def by_platform(self, topics: Iterable[str]) -> dict[str, int]:
        return dict(Counter(self.platforms.get(account_of(t), "?") for t in topics))

    async def run(self) -> dict[str, Any]:
        bridge = await self.start()
        recorder = asyncio.create_task(self.record())
        self.t0 = time.monotonic()
        end = self.t0 + self.args.duration
        next_fault = self.t0 + self.args.fault_every
        next_probe = self.t0 + (self.args.probe_every or math.inf)
        async with aiohttp.ClientSession() as session, \
                aiomqtt.Client("127.0.0.1", self.broker, identifier="soak-presser") as presser:
            while time.monotonic() < end:
                await asyncio.sleep(self.args.sample)
                now = time.monotonic()
                self.summary["memory_mb"].append([round(now - self.t0), round(rss_mb(bridge.pid), 1)])
                states = sum(1 for t in self.latest if t.endswith("/state"))
                print(f"{now - self.t0:7.0f} s  rss {self.summary['memory_mb'][-1][1]:7.1f} MB  "
                      f"states {states}  faults {len(self.summary['faults'])}", flush=True)
                if now >= next_fault:
                    await self.clear_faults(session)
                    await self.fault(session)
                    await self.press(presser)
                    next_fault = now + self.args.fault_every
                if now >= next_probe:
                    bridge.send_signal(signal.SIGUSR1)
                    next_probe = now + self.args.probe_every
            await self.clear_faults(session)
            await asyncio.sleep(self.args.scan_interval * 3 + 5)
            compared, mismatched = await self.check(session)
        if self.args.probe_every:
            await self.last_probe(bridge)
        info = json.loads(self.latest.get("soak/bridge/info", b"{}"))
        answered = sum(1 for statuses in self.results.values()
                       for s in statuses if s in ("success", "failed", "timeout", "rejected"))
        memory = [m for _, m in self.summary["memory_mb"]]
        half = memory[len(memory) // 2:] or memory
        self.summary.update({
            "duration_s": self.args.duration, "devices": compared,
            "memory_start_mb": memory[0] if memory else None, "memory_end_mb": memory[-1] if memory else None,
            "memory_max_mb": max(memory, default=None),
            "memory_second_half_growth_mb": round(half[-1] - half[0], 1) if half else None,
            "errors": {aid: acc.get("errors") for aid, acc in info.get("accounts", {}).items()},
            "account_status": {aid: acc.get("status") for aid, acc in info.get("accounts", {}).items()},
            "requests_last_hour": {aid: {kind: use.get("last_hour") for kind, use in acc.get("rate_budget", {}).items()}
                                   for aid, acc in info.get("accounts", {}).items()},
            "commands_answered": answered, "commands_lost": self.summary["commands_sent"] - answered,
            "devices_bridged": self.by_platform(t for t, v in self.latest.items() if t.endswith("/state") and v
                                                and account_of(t) in self.platforms),
            "states_compared": compared, "states_mismatched": len(mismatched),
            "mismatched_by_platform": self.by_platform(mismatched), "mismatched": dict(list(mismatched.items())[:20]),
        })
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(30)
        recorder.cancel()
        return self.summary

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=1800, help="seconds (default 1800)")
    parser.add_argument("--devices", type=int, default=10_000, help="devices over all platforms")
    parser.add_argument("--platforms", default=",".join(CREDENTIALS))
    parser.add_argument("--scan-interval", type=float, default=30)
    parser.add_argument("--fault-every", type=float, default=60, help="seconds between fault switches")
    parser.add_argument("--sample", type=float, default=10, help="seconds between memory samples")
    parser.add_argument("--check-rounds", type=int, default=3,
                        help="comparisons (a bridge poll apart) a device must fail to count as mismatched")
    parser.add_argument("--probe-every", type=float, default=0, metavar="SECONDS",
                        help="probe the bridge's heaps every SECONDS (tools/memory_probe.py; 0: off)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="with --probe-every: under tracemalloc, with the sites that grew most")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fleetbridge-soak-"))
    soak = Soak(args, workdir)
    try:
        summary = asyncio.run(soak.run())
    finally:
        soak.stop()
    summary["logs"] = str(workdir)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if summary["commands_lost"] == 0 and summary["states_mismatched"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
