#!/usr/bin/env python3
"""fleetbridge benchmark (issue 9): one command, a JSON document and a table of figures vs targets.

    python3 benchmarks/run.py --sizes 1000,10000 [--platforms opengps,...] [--json out.json] [--profile DIR]

Per size, in one run: a private mosquitto (``max_queued_messages 0``) on a free 127.0.0.1 port, the
vendor simulators in their own process (``benchmarks/simhost.py``), the bridge as a real process
(``python -m fleetbridge run``) so its CPU and RSS come from ``/proc``, a subscriber to ``#`` and,
after the bridge stopped, the bare publisher (``benchmarks/bare.py``: the bridge's publish mechanism, no
bridge logic) on the same broker.
Phases: start-up, fresh subscriber, state latency, command latency, steady state, change storm,
(profile), bare client, mosquitto-default queue demo, entity-mode discovery. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import math
import os
import platform as pyplatform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BASE, PREFIX, BARE = "fleetbridge", "homeassistant", "bare"
SCAN_INTERVAL = 1.0  # the tracker's: the smallest the config allows, so that the storm can outrun the bridge
OTHER_SCAN_INTERVAL = 5.0  # the other platforms' (their worlds stand still): 60-180x their defaults, and
#                            2-3 full refresh cycles in a measuring window for their vendor efficiency


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ platforms

@dataclass
class Adapter:
    """How the benchmark configures a platform and what its theoretical minimum is."""

    name: str
    account: Callable[[str, int], dict[str, Any]]  # (base_url, devices) -> account keys
    refresh: str  # regex over "METHOD /path" of the simulator's requests: the ones a state refresh makes
    minimum: Callable[[int, dict[str, Any], dict[str, Any]], int]  # (devices, account, simulator page caps)
    rule: str  # the minimum, in words
    storm: bool = False  # the simulator host can make every device change every cycle
    command: str | None = None  # a harmless service to press for the command latency
    default_scan: float = 60.0  # the platform's default scan_interval (to scale steady-state figures)
    default_event: float = 60.0  # its default event_interval
    startup_wait: bool = True  # False: a vendor rate budget spreads the first refresh (minutes): start-up
    #                            is reported for it, not waited for


def _tracker(base_url: str, n: int) -> dict[str, Any]:
    return {"base_url": base_url, "account": "bench", "password": "bench-password",  # see account_keys
            "include_subaccounts": n > 500, "event_interval": 3600,
            "rate_limits": {k: 0 for k in ("auth", "device_list", "track", "playback", "detail", "alarm",
                                           "mileage", "command", "geofence", "user")}}


def _sierra(base_url: str, n: int) -> dict[str, Any]:
    # AMM's 360 requests/h is an hourly cap the config cannot lift: its plugin plans under it
    return {"base_url": base_url, "client_id": "bench", "client_secret": "bench-secret", "username": "bench",
            "password": "bench-password", "rate_limits": {"auth": 0, "api": 0}}


def _tangoe(base_url: str, n: int) -> dict[str, Any]:
    return {"base_url": base_url, "token_url": base_url + "/as/token.oauth2", "tenant": "BENCH",
            "client_id": "bench", "client_secret": "bench-secret", "username": "bench",
            "password": "bench-password", "event_interval": 3600,
            "rate_limits": {k: 0 for k in ("token", "me", "list", "detail", "orders", "order_write")}}


def _lattigo(base_url: str, n: int) -> dict[str, Any]:
    return {"base_url": base_url, "key_name": "bench", "api_key": "bench-key",
            "rate_limits": {"list": 0, "device": 0, "operation": 0}}


ADAPTERS: dict[str, Adapter] = {a.name: a for a in (
    Adapter("opengps", _tracker, r"^GET /api/track$",
            lambda n, acc, caps: math.ceil(n / 100), "ceil(N/100) /api/track calls (100 IMEIs per call)",
            storm=True, command="reboot", default_scan=30.0),
    Adapter("amm", _sierra, r"^GET /api/v1/systems/.+/data$",
            lambda n, acc, caps: math.ceil(n / 100), "ceil(N/100) group data calls (100 gateways per group call)",
            default_scan=300.0, startup_wait=False),
    Adapter("lattigo", _lattigo, r"^GET /v2/devices$",
            lambda n, acc, caps: math.ceil(n / (caps.get("max_per_page") or 10_000)),
            "ceil(N/per_page cap) /v2/devices pages (the simulator caps per_page at 100)",
            default_scan=300.0),
    Adapter("airvantage", _sierra, r"^GET /api/v1/gateways$",
            lambda n, acc, caps: math.ceil(n / (caps.get("max_page") or 500)),
            "ceil(N/size cap) /api/v1/gateways pages (simulator and plugin cap size at 500; vendor default 100)",
            default_scan=300.0),
    Adapter("tangoe", _tangoe, r"^GET /assets/(devices|services)$",
            lambda n, acc, caps: 2 * math.ceil(n / (caps.get("max_limit") or 1000)),
            "2 x ceil(N/limit cap) /assets/devices + /assets/services pages (the simulator caps limit at 500)",
            default_scan=900.0),
)}


def account_keys(name: str, base_url: str, n: int, index: int = 0) -> dict[str, Any]:
    """A bridge account's platform keys; the ``index``-th simulated account of a platform (> 0: the
    tracker's storm spread over several accounts) has credentials of its own."""
    keys = ADAPTERS[name].account(base_url, n)
    if index and "account" in keys:
        keys.update(account=f"bench{index + 1}", password=f"bench-password-{index + 1}")
    return keys


def tracker_accounts(args: argparse.Namespace, n: int) -> int:
    """How many bridge accounts (each its own simulated vendor account) share the tracker's ``n``
    devices: ``--tracker-accounts``, ``auto`` = one per 10,000 devices."""
    k = math.ceil(n / 10_000) if args.tracker_accounts == "auto" else int(args.tracker_accounts)
    return max(1, min(k, n))


def sim_keys(name: str, k: int) -> list[str]:
    """The simulated accounts of a platform (simulator-host keys); bridge account ids are ``b_<key>``:
    ``b_opengps``, ``b_opengps_2``, ... (the first keeps the one-account id)."""
    return [name] + [f"{name}_{i}" for i in range(2, k + 1)]


# ------------------------------------------------------------------------------------------------ processes

class Procs:
    """Every child process, stopped in reverse order (TERM, then KILL)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen]] = []
        self.pids: dict[str, int] = {}

    def add(self, name: str, proc: subprocess.Popen) -> subprocess.Popen:
        self.items.append((name, proc))
        return proc

    def spawn(self, name: str, argv: list[str], log: Path, merge: bool = False, **kw: Any) -> subprocess.Popen:
        """Start and track a child; its stderr (``merge``: stdout and stderr) goes to ``log``."""
        with open(log, "w") as fh:  # the child keeps its own descriptor
            streams = {"stdout": fh, "stderr": subprocess.STDOUT} if merge else {"stderr": fh}
            return self.add(name, subprocess.Popen(argv, **streams, **kw))

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def stop_all(self) -> None:
        for _, proc in reversed(self.items):
            self.stop(proc)
        self.items.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"rss_mb": round(out.get("VmRSS", 0.0), 1), "hwm_mb": round(out.get("VmHWM", 0.0), 1)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


class CpuMeter:
    """CPU seconds of named processes and of the machine over a window: who used the 2 cores."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.t0 = time.time()
        self.c0 = {k: self._cpu(pid) for k, pid in self.pids.items()}
        self.m0 = machine_cpu()

    @staticmethod
    def _cpu(pid: int | list[int]) -> float:
        if isinstance(pid, list):  # a group of processes (the simulator hosts)
            return sum(CpuMeter._cpu(p) for p in pid)
        if pid == os.getpid():
            t = os.times()
            return t.user + t.system
        try:
            return cpu_seconds(pid)
        except OSError:
            return 0.0

    def read(self) -> dict[str, Any]:
        dt = time.time() - self.t0
        m1 = machine_cpu()
        used = {k: self._cpu(pid) - self.c0[k] for k, pid in self.pids.items()}
        busy = m1[0] - self.m0[0]
        out = {f"{k}_percent": round(v / dt * 100, 1) for k, v in used.items()}
        out["machine_busy_percent"] = round(busy / dt * 100, 1)
        out["machine_capacity_percent"] = round((m1[1] - self.m0[1]) / dt * 100)
        out["others_percent"] = round(max(0.0, busy - sum(used.values())) / dt * 100, 1)
        return out


def mosquitto_binary() -> str:
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
    if binary is None:
        sys.exit("mosquitto not found: apt install mosquitto")
    return binary


BROKER_OPTIONS: list[str] = []  # extra mosquitto.conf lines (--broker-option)


async def start_broker(procs: Procs, tmp: Path, name: str, max_queued: int | None) -> int:
    port = free_port()
    conf = tmp / f"{name}.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if max_queued is not None:
        lines.append(f"max_queued_messages {max_queued}")
    lines += BROKER_OPTIONS if max_queued == 0 else []  # --broker-option: not the default-settings demo
    conf.write_text("\n".join(lines) + "\n")
    proc = procs.spawn(name, [mosquitto_binary(), "-c", str(conf)], tmp / f"{name}.log", stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
    procs.pids[name] = proc.pid
    await wait_port(port)
    return port


async def start_simhost(procs: Procs, tmp: Path, spec: dict[str, Any], name: str = "simhost") -> dict[str, Any]:
    proc = procs.spawn(name, [sys.executable, str(HERE / "simhost.py"), json.dumps(spec)], tmp / f"{name}.log",
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tmp, text=True)
    loop = asyncio.get_running_loop()
    line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 120)
    if not line:
        raise RuntimeError(f"the simulator host failed: {(tmp / f'{name}.log').read_text()[-2000:]}")
    return json.loads(line)


# ------------------------------------------------------------------------------------------------ MQTT side

class Subscriber:
    """A paho subscriber (network loop in its own thread) that classifies and times every message."""

    def __init__(self, port: int, topics: list[str], name: str, qos: int = 0, keep_discovery: bool = False,
                 sample: int = 0) -> None:
        self.topics, self.qos, self.keep_discovery, self.sample_max = topics, qos, keep_discovery, sample
        self.n: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.retained = 0
        self.state_first: dict[str, float] = {}
        self.disc_first: dict[str, float] = {}
        self.state_by_account: Counter[str] = Counter()  # devices with a state, per account id
        self.disc_by_account: Counter[str] = Counter()  # device nodes with discovery, per account id
        self.account_ids: list[str] = []  # the bridge's account ids (set before it starts), longest first
        self.disc_msgs: Counter[str] = Counter()  # node -> non-empty discovery messages
        self.disc_bytes: Counter[str] = Counter()
        self.disc_payloads: dict[str, bytes] = {}
        self.disc_topics: set[str] = set()  # discovery topics holding a config (retained)
        self.samples: dict[str, bytes] = {}
        self.sample_prefix = f"{BASE}/b_opengps/"  # the storm's state messages: the bare client's payloads
        self.state_log: list[tuple[float, str]] | None = None
        self.storm_times: list[float] | None = None
        self.info: bytes | None = None
        self.info_at = 0.0
        self.last_at = 0.0
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}",
                                  clean_session=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        client.subscribe([(t, self.qos) for t in self.topics])

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        if not self._subscribed.wait(timeout):
            raise RuntimeError("the subscriber did not get its subscription")

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        self.last_at = now
        topic, payload = msg.topic, msg.payload
        if msg.retain:
            self.retained += 1
        parts = topic.split("/")
        head = parts[0]
        if head == PREFIX:
            kind = "discovery"
            if not payload:
                self.disc_topics.discard(topic)
            elif len(parts) >= 4:
                self.disc_topics.add(topic)
                node = parts[2]
                if node not in self.disc_first:
                    self.disc_first[node] = now
                    self.disc_by_account[self.account_of(node)] += 1
                self.disc_msgs[node] += 1
                self.disc_bytes[node] += len(payload) + len(topic)
                if self.keep_discovery:
                    self.disc_payloads[topic] = payload
        elif head == BASE:
            if parts[1] == "bridge":
                kind = "bridge"
                if parts[-1] == "info":
                    self.info, self.info_at = payload, now
            else:
                leaf = parts[-1]
                if leaf == "state" and len(parts) == 4:
                    kind = "state"
                    if topic not in self.state_first:
                        self.state_first[topic] = now
                        self.state_by_account[parts[1]] += 1
                    if self.state_log is not None:
                        self.state_log.append((now, topic))
                    if self.storm_times is not None:
                        self.storm_times.append(now)
                    if len(self.samples) < self.sample_max and topic.startswith(self.sample_prefix):
                        self.samples[topic] = payload
                elif leaf == "availability":
                    kind = "availability"
                elif leaf == "result":
                    kind = "result"
                elif leaf == "event":
                    kind = "event"
                else:
                    kind = "other"
        elif head == BARE:
            kind = "bare"
        else:
            kind = "other"
        self.n[kind] += 1
        self.bytes[kind] += len(payload) + len(topic)

    def account_of(self, node: str) -> str:
        """The account id of a discovery node (``<account id>_<device id>``): the longest known id it
        starts with (``b_opengps_2_<imei>`` is not ``b_opengps``'s), else its first two parts."""
        for acc in self.account_ids:
            if node.startswith(acc + "_"):
                return acc
        return "_".join(node.split("_", 2)[:2])

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        return Counter(self.n), Counter(self.bytes)

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def bridge_info(sub: Subscriber) -> dict[str, Any]:
    try:
        return json.loads(sub.info) if sub.info else {}
    except ValueError:
        return {}


async def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        await asyncio.sleep(step)
    return cond()


async def wait_quiet(sub: Subscriber, quiet: float, timeout: float) -> None:
    """Until ``sub`` received nothing for ``quiet`` seconds (or ``timeout``)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and time.time() - sub.last_at < quiet:
        await asyncio.sleep(0.1)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[idx]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def command_split(db: Path, sent: dict[str, float], arrived: dict[str, float]) -> dict[str, Any] | None:
    """Each press in two parts, by the bridge's journal (``requested_at``: the call began):
    publish -> the bridge starts the call (broker, MQTT receipt, event loop), then -> the vendor
    request arrives at the simulator (plugin, HTTP, the simulator's own loop)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            began = dict(conn.execute("SELECT device, min(requested_at) FROM journal GROUP BY device"))
    except sqlite3.Error:
        return None
    first = [began[i] - sent[i] for i in sent if i in began]
    second = [arrived[i] - began[i] for i in sent if i in began and i in arrived]
    return {"publish_to_call_p50_ms": ms(pct(first, 50)), "publish_to_call_max_ms": ms(max(first, default=None)),
            "call_to_vendor_p50_ms": ms(pct(second, 50)), "call_to_vendor_max_ms": ms(max(second, default=None)),
            "samples": len(second)}


# ------------------------------------------------------------------------------------------------ one size

@dataclass
class Run:
    size: int
    args: argparse.Namespace
    tmp: Path
    procs: Procs = field(default_factory=Procs)
    http: aiohttp.ClientSession | None = None
    control: str = ""
    # simulator hosts: (control URL, their platforms); the tracker has a process of its own, so that
    # another platform's page being encoded never delays a tracker answer (or a command's arrival)
    hosts: list[tuple[str, set[str]]] = field(default_factory=list)
    subs: list[Subscriber] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    caps: dict[str, dict[str, Any]] = field(default_factory=dict)  # simulators' page caps, by key
    tracker_control: str = ""  # the tracker's simulator host
    keys_of: dict[str, list[str]] = field(default_factory=dict)  # platform -> its simulated accounts (keys)
    n_of: dict[str, int] = field(default_factory=dict)  # simulated account (key) -> devices

    async def sim(self, method: str, path: str, **kw) -> Any:
        """One control call, to the hosts of the platforms it names (all when it names none);
        answers of several hosts are merged (``/bench/self``: CPU seconds added)."""
        assert self.http is not None
        named = {**kw.get("params", {}), **kw.get("json", {})}
        wanted = named.get("platforms") or named.get("platform")
        if isinstance(wanted, str):
            wanted = wanted.split(",")
        hosts = [url for url, names in self.hosts if not wanted or names & set(wanted)] or [self.control]
        answers = []
        for url in hosts:
            async with self.http.request(method, url + path, **kw) as resp:
                resp.raise_for_status()
                answers.append(await resp.json())
        if len(answers) == 1:
            return answers[0]
        if path == "/bench/self":
            return {"cpu": sum(a["cpu"] for a in answers), "pid": [a["pid"] for a in answers]}
        merged: dict[str, Any] = {}
        for answer in answers:
            merged.update(answer)
        return merged

    async def host_cpu(self, url: str) -> float:
        """CPU seconds of one simulator host (0 when there is none)."""
        if not url:
            return 0.0
        assert self.http is not None
        async with self.http.get(url + "/bench/self") as resp:
            resp.raise_for_status()
            return (await resp.json())["cpu"]

    def subscriber(self, *a, **kw) -> Subscriber:
        sub = Subscriber(*a, **kw)
        self.subs.append(sub)
        return sub

    def close_subs(self) -> None:
        for sub in self.subs:
            sub.close()
        self.subs.clear()


def split_devices(total: int, names: list[str]) -> dict[str, int]:
    share = [total // len(names) + (1 if i < total % len(names) else 0) for i in range(len(names))]
    return dict(zip(names, share))


def bridge_config(tmp: Path, port: int, accounts: list[dict[str, Any]], mode: str, name: str) -> Path:
    config = {"mqtt": {"host": "127.0.0.1", "port": port, "discovery_mode": mode, "client_id": f"fb_{name}"},
              "storage": str(tmp / f"{name}.db"), "log_level": "warning", "accounts": accounts}
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def start_bridge(run: Run, config: Path, name: str) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    proc = run.procs.spawn(name, [sys.executable, "-m", "fleetbridge", "--log-level", "warning", "run", "-c",
                                  str(config)], run.tmp / f"{name}.log", merge=True, stdin=subprocess.DEVNULL,
                           cwd=run.tmp, env=env)
    return proc, t0


async def plan_platforms(run: Run, wanted: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Platforms whose plugin loads (and that the benchmark knows), with their device share."""
    from fleetbridge.plugins import load_plugins

    registry = load_plugins()
    notes: dict[str, str] = {}
    ok = []
    for name in wanted:
        if name not in ADAPTERS:
            notes[name] = "no benchmark adapter (add one to ADAPTERS in benchmarks/run.py)"
        elif name not in registry.platforms:
            notes[name] = "plugin not loadable: " + registry.unavailable.get(name, "not installed")
        else:
            ok.append(name)
    devices: dict[str, int] = {}
    if "opengps" in ok and len(ok) > 1:
        # the tracker is the platform whose simulator can change every device every cycle: it carries
        # the storm, so it gets the larger share (--tracker-share) and the others split the rest
        devices["opengps"] = max(1, round(run.size * run.args.tracker_share))
        others = [n for n in ok if n != "opengps"]
        devices.update(split_devices(max(len(others), run.size - devices["opengps"]), others))
    elif ok:
        devices = split_devices(run.size, ok)
    return {"names": ok, "devices": devices}, notes


async def machine_quiet(limit: float, timeout: float) -> dict[str, Any]:
    """Wait (at most ``timeout`` s) until the machine is below ``limit`` % busy (all cores) over 2 s:
    other work on a shared box distorts every figure. Returns what was seen."""
    t0 = time.monotonic()
    busy = None
    while True:
        a = machine_cpu()
        await asyncio.sleep(2.0)
        b = machine_cpu()
        busy = round((b[0] - a[0]) / max(1e-9, b[1] - a[1]) * 100 * (os.cpu_count() or 1), 1)
        if busy <= limit or time.monotonic() - t0 >= timeout:
            return {"busy_percent_before": busy, "waited_s": round(time.monotonic() - t0, 1),
                    "quiet": busy <= limit}


async def run_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"fleetbridge-bench-{size}-"))
    run = Run(size, args, tmp)
    if args.wait_quiet:
        run.result["machine_before"] = await machine_quiet(args.quiet_limit, args.wait_quiet)
        log(f"{size}: machine before the run: {run.result['machine_before']}")
    try:
        async with aiohttp.ClientSession() as http:
            run.http = http
            await _run_size(run)
    finally:
        run.close_subs()
        run.procs.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")
    return run.result


async def _run_size(run: Run) -> None:
    args, size, res = run.args, run.size, run.result
    plan, notes = await plan_platforms(run, args.platforms)
    res["skipped_platforms"] = notes
    for name, why in notes.items():
        log(f"{size}: platform {name} skipped: {why}")
    if not plan["names"]:
        raise SystemExit("no platform to benchmark")
    devices = plan["devices"]
    res["devices"] = devices
    log(f"{size}: devices {devices}")

    # broker, subscriber, simulators -------------------------------------------------------------
    port = await start_broker(run.procs, run.tmp, "mosquitto", 0)
    sub = run.subscriber(port, ["#"], "bench-sub", sample=5000)
    sub.wait_subscribed()
    # every platform is one simulated vendor account and one bridge account, except the tracker: its
    # devices are split over --tracker-accounts of them (polled concurrently by the bridge), each with
    # its own simulator app, port, seed, credentials and disjoint IMEIs
    keys_of = {n: sim_keys(n, tracker_accounts(args, devices[n]) if n == "opengps" else 1) for n in plan["names"]}
    n_of: dict[str, int] = {}
    for n, keys in keys_of.items():
        n_of.update(split_devices(devices[n], keys))
    entries = [{"name": n, "key": key, "index": i, "of": len(keys), "devices": n_of[key],
                "seed": args.seed + 7919 * i, "config": account_keys(n, "http://127.0.0.1:1", n_of[key], i),
                "refresh": ADAPTERS[n].refresh} for n, keys in keys_of.items() for i, key in enumerate(keys)]
    host: dict[str, Any] = {"ports": {}, "errors": {}, "caps": {}}
    for group, entries_ in (("simhost-tracker", [e for e in entries if e["name"] == "opengps"]),
                            ("simhost", [e for e in entries if e["name"] != "opengps"])):
        if entries_:
            started = await start_simhost(run.procs, run.tmp, {"platforms": entries_}, group)
            url = f"http://127.0.0.1:{started['control']}"
            run.hosts.append((url, {e["name"] for e in entries_} | {e["key"] for e in entries_}))
            if group == "simhost-tracker":
                run.tracker_control = url
            for key in ("ports", "errors", "caps"):
                host[key].update(started.get(key) or {})
    run.control = run.hosts[0][0]
    sim_pid = (await run.sim("GET", "/bench/self"))["pid"]
    run.caps = host.get("caps") or {}
    res["simulator_page_caps"] = run.caps
    for key, err in host["errors"].items():
        name = next(n for n, keys in keys_of.items() if key in keys)
        notes[name] = f"simulator failed ({key}): {err}"
        log(f"{size}: platform {name} skipped: simulator {key} failed: {err}")
    names = [n for n in plan["names"] if all(k in host["ports"] for k in keys_of[n])]
    if not names:
        raise SystemExit("no simulator started")
    res["devices"] = devices = {n: devices[n] for n in names}
    run.keys_of = keys_of = {n: keys_of[n] for n in names}
    run.n_of = n_of
    ids_of = {n: [f"b_{k}" for k in keys] for n, keys in keys_of.items()}  # bridge account ids per platform
    res["devices_by_account"] = {f"b_{k}": n_of[k] for keys in keys_of.values() for k in keys}
    expected: dict[str, int | None] = {}
    tracker_devices: list[dict[str, Any]] = []  # every tracker, "sim": its simulated account
    for name in names:
        listing = await run.sim("GET", "/bench/devices", params={"platform": name})
        expected[name] = len(listing) if listing else devices[name]
        if name == "opengps":
            tracker_devices = listing
            if len({d["id"] for d in listing}) != len(listing):
                raise RuntimeError("an IMEI is in two simulated tracker accounts")
    accounts: dict[str, dict[str, Any]] = {}  # simulator key -> bridge account
    for name in names:
        for i, key in enumerate(keys_of[name]):
            accounts[key] = {"platform": name, "name": f"Bench {key}", "id": f"b_{key}",
                             "scan_interval": SCAN_INTERVAL if ADAPTERS[name].storm else OTHER_SCAN_INTERVAL,
                             **account_keys(name, f"http://127.0.0.1:{host['ports'][key]}", n_of[key], i)}
    sub.account_ids = sorted((a["id"] for a in accounts.values()), key=len, reverse=True)
    total_expected = sum(v for v in expected.values() if v)
    waited = [n for n in names if ADAPTERS[n].startup_wait]
    wait_expected = sum(expected[n] or 0 for n in waited)

    # 4. start-up --------------------------------------------------------------------------------
    config = bridge_config(run.tmp, port, list(accounts.values()), "device", "bridge")
    bridge, t_start = start_bridge(run, config, "bridge")
    pid = bridge.pid
    log(f"{size}: bridge pid {pid} started ({len(accounts)} accounts); waiting for discovery and state of "
        f"{total_expected} devices")
    bridge_node = "fleetbridge_bridge_fb_bridge"

    def dev_nodes() -> int:
        return sum(1 for node in list(sub.disc_first) if node != bridge_node)

    waited_ids = {i for n in waited for i in ids_of[n]}

    def complete() -> bool:
        nodes = sum(sub.disc_by_account[a] for a in waited_ids)
        states = sum(sub.state_by_account[a] for a in waited_ids)
        return nodes >= wait_expected and states >= wait_expected

    ok = await wait_until(lambda: complete() or bridge.poll() is not None, args.startup_timeout, 0.2)
    if bridge.poll() is not None:
        raise RuntimeError(f"the bridge exited: {(run.tmp / 'bridge.log').read_text()[-3000:]}")
    disc_first, state_first = dict(sub.disc_first), dict(sub.state_first)  # copies: the paho thread writes
    disc_acc = {node: sub.account_of(node) for node in disc_first if node != bridge_node}
    t_disc = max((t for node, t in disc_first.items() if disc_acc.get(node) in waited_ids), default=None)
    t_state = max((t for topic, t in state_first.items() if topic.split("/")[1] in waited_ids), default=None)
    startup = {
        "complete": ok, "devices_expected": total_expected, "waited_for": waited, "discovered": dev_nodes(),
        "with_state": len(state_first),
        "discovery_all_s": round(t_disc - t_start, 2) if t_disc else None,
        "state_all_s": round(t_state - t_start, 2) if t_state else None,
        "first_discovery_s": round(min(disc_first.values()) - t_start, 2) if disc_first else None,
    }
    startup["all_s"] = max(startup["discovery_all_s"] or 0, startup["state_all_s"] or 0) if ok else None

    def startup_of(acc_ids: set[str]) -> dict[str, Any]:
        d = [t for node, t in disc_first.items() if disc_acc.get(node) in acc_ids]
        st = [t for topic, t in state_first.items() if topic.split("/")[1] in acc_ids]
        return {"devices": len(d), "with_state": len(st),
                "discovery_all_s": round(max(d) - t_start, 2) if d else None,
                "state_all_s": round(max(st) - t_start, 2) if st else None}

    by_acc: dict[str, dict[str, Any]] = {}
    for name in names:
        by_acc[name] = startup_of(set(ids_of[name]))
        if len(ids_of[name]) > 1:
            by_acc[name]["accounts"] = {i: startup_of({i}) for i in ids_of[name]}
    startup["by_platform"] = by_acc
    res["startup"] = startup
    log(f"{size}: start-up {startup}")
    await asyncio.sleep(1.0)
    res["memory_after_startup"] = memory_mb(pid)

    # discovery per device (device mode), from what the subscriber saw
    disc_msgs, disc_bytes = dict(sub.disc_msgs), dict(sub.disc_bytes)
    nodes = [n for n in disc_msgs if n != bridge_node]
    res["discovery_device_mode"] = {
        "messages_per_device": round(sum(disc_msgs[n] for n in nodes) / max(1, len(nodes)), 2),
        "bytes_per_device": round(sum(disc_bytes.get(n, 0) for n in nodes) / max(1, len(nodes)), 1)}

    # fresh subscriber to homeassistant/# (max_queued_messages 0)
    fresh_t0 = time.time()
    fresh = run.subscriber(port, [f"{PREFIX}/#"], "bench-fresh", qos=1, keep_discovery=True)
    want = len(sub.disc_topics)  # distinct discovery topics the broker retains
    got = await wait_until(lambda: fresh.retained >= want, 60, 0.05)
    res["fresh_subscriber"] = {"broker": "max_queued_messages 0", "retained_expected": want,
                               "received": fresh.retained, "complete": got,
                               "seconds": round(fresh.last_at - fresh_t0, 2) if fresh.retained else None,
                               "nodes": len(sub.disc_first)}
    log(f"{size}: fresh subscriber {res['fresh_subscriber']}")
    discovery_payloads = dict(fresh.disc_payloads)
    fresh.close()
    run.subs.remove(fresh)

    tr_keys = keys_of.get("opengps", [])

    async def tracker_stats() -> dict[str, Any]:
        """Every tracker account's simulator stats, by key."""
        return await run.sim("GET", "/bench/stats", params={"platforms": "opengps"})

    # initial event fetch (tracker: one alarm request per device) must be over before measuring
    if "opengps" in names:
        n_tr = devices["opengps"]
        t_ev0 = time.monotonic()
        alarm_list = "GET /api/alarm/list"

        async def alarms() -> int:
            stats = await tracker_stats()
            return sum(stats[k]["counts"].get(alarm_list, 0) for k in tr_keys)

        end = time.monotonic() + args.startup_timeout
        count = 0
        samples: list[tuple[float, float, int]] = []  # (time, bridge CPU, alarm requests so far)
        while time.monotonic() < end:
            count = await alarms()
            samples.append((time.time(), cpu_seconds(pid), count))
            if count >= n_tr:
                break
            # a tracker silent since the fetch window began is not asked (13211a9): the fetch is over
            # when the requests stop (5 s without one)
            if count and len(samples) > 10 and samples[-11][2] == count:
                break
            await asyncio.sleep(0.5)
        # the events of the past hour are recorded and published a batch at a time as the fetch goes:
        # wait until they stop coming (5 s without one, once some came or 10 s passed)
        ev_t0 = time.monotonic()
        ev_end = ev_t0 + 300
        published = (time.time(), cpu_seconds(pid))
        while time.monotonic() < ev_end:
            before = sub.n["event"]
            await asyncio.sleep(5.0)
            published = (time.time(), cpu_seconds(pid))
            if sub.n["event"] == before and (before > 0 or time.monotonic() - ev_t0 > 10):
                break
        stats = await tracker_stats()
        first = min((stats[k]["first_at"][alarm_list] for k in tr_keys if alarm_list in stats[k]["first_at"]),
                    default=None)
        last = max((stats[k]["last_at"][alarm_list] for k in tr_keys if alarm_list in stats[k]["last_at"]),
                   default=None)
        # bridge CPU per alarm request from the first sample of the fetch under way to the end of the
        # event wait (its events published: they go out batch by batch as the fetch goes; the quiet
        # tail is polling only, which the steady phase's rate takes out later)
        moving = [x for x in samples if 0 < x[2] < n_tr] + [x for x in samples if x[2] >= n_tr][:1]
        while len(moving) > 1 and moving[-2][2] == moving[-1][2]:  # not the wait after the last request
            moving.pop()
        event_window = None  # (seconds, bridge CPU, requests) of the fetch and its publishing
        if len(moving) >= 2 and moving[-1][2] > moving[0][2]:
            event_window = (published[0] - moving[0][0], published[1] - moving[0][1], moving[-1][2] - moving[0][2])
        res["event_fetch"] = {"requests": count, "devices": n_tr,
                              "requests_per_device": round(count / n_tr, 2),
                              "first_after_start_s": round(first - t_start, 2) if first else None,
                              "seconds": round(last - first, 2) if first and last else None,
                              "bridge_cpu_ms_per_request": None,  # set after the steady phase
                              "event_messages_published": sub.n["event"],
                              "waited_s": round(time.monotonic() - t_ev0, 1)}
        log(f"{size}: initial event fetch {res['event_fetch']}")
        await asyncio.sleep(1.5)

    # 3a. state latency --------------------------------------------------------------------------
    if "opengps" in names:
        await run.sim("POST", "/bench/clear")
        sub.state_log = []
        # every tracker account changes k of its online devices at each of its cycle starts
        k = min(args.probes_per_cycle, max(1, len([d for d in tracker_devices if d["online"]])))
        await run.sim("POST", "/bench/mode", json={"platforms": ["opengps"], "mode": "latency", "k": k})
        c0 = {key: st["cycles"] for key, st in (await tracker_stats()).items()}
        end = time.monotonic() + args.latency_timeout
        while time.monotonic() < end:
            st = await tracker_stats()
            if min(st[key]["cycles"] - c0[key] for key in tr_keys) >= args.latency_cycles + 1:
                break
            await asyncio.sleep(0.2)
        await run.sim("POST", "/bench/mode", json={"platforms": ["opengps"], "mode": "quiet"})

        def probes_of(st: dict[str, Any]) -> list[tuple[str, str, int, float, float]]:
            # (account id, imei, cycle, changed at, served at)
            return [(f"b_{key}", *probe) for key in tr_keys for probe in st[key]["probes"]]

        wanted = {(acc, imei) for acc, imei, *_ in probes_of(await tracker_stats())}
        await wait_until(lambda: wanted <= {tuple(t.split("/")[1:3]) for _, t in list(sub.state_log or [])}, 20, 0.25)
        await asyncio.sleep(0.5)
        st = await tracker_stats()
        log_ = sub.state_log
        sub.state_log = None
        arrivals: dict[tuple[str, str], list[float]] = defaultdict(list)
        for t, topic in log_:
            parts = topic.split("/")
            arrivals[(parts[1], parts[2])].append(t)
        beyond, from_change, poll_wait, missing = [], [], [], 0
        for acc, imei, _cycle, changed_at, served_at in probes_of(st):
            hits = [t for t in arrivals.get((acc, imei), []) if t >= served_at - 0.001]
            if not hits:
                missing += 1
                continue
            beyond.append(hits[0] - served_at)
            from_change.append(hits[0] - changed_at)
            poll_wait.append(served_at - changed_at)
        res["state_latency"] = {
            "samples": len(beyond), "missing": missing, "cycles": sum(st[key]["cycles"] - c0[key] for key in tr_keys),
            "beyond_poll_p50_ms": ms(pct(beyond, 50)), "beyond_poll_p99_ms": ms(pct(beyond, 99)),
            "beyond_poll_max_ms": ms(max(beyond) if beyond else None),
            "change_to_message_p50_ms": ms(pct(from_change, 50)), "change_to_message_p99_ms": ms(pct(from_change, 99)),
            "poll_reaches_device_p50_ms": ms(pct(poll_wait, 50)),
            "account": ids_of["opengps"][0], "accounts": ids_of["opengps"]}
        log(f"{size}: state latency {res['state_latency']}")
        if not beyond:
            res.setdefault("diagnostics", []).append(await diagnose(run, pid, "no state-latency samples"))

    # 3b. command latency --------------------------------------------------------------------------
    if "opengps" in names and args.commands:
        await run.sim("POST", "/bench/clear")
        cand = [d for d in tracker_devices if d["online"] and d["answers"]]
        n_cmd = min(args.commands, len(cand))
        chosen = [cand[i * len(cand) // n_cmd] for i in range(n_cmd)]  # evenly over every tracker account
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-cmd-{os.getpid()}")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        sent: dict[str, float] = {}
        try:
            await asyncio.sleep(0.3)
            for d in chosen:
                topic = f"{BASE}/b_{d['sim']}/{d['id']}/{ADAPTERS['opengps'].command}/set"
                sent[d["id"]] = time.time()
                pub.publish(topic, b"PRESS", qos=1)
                await asyncio.sleep(args.command_gap)

            async def arrived() -> int:
                st = await tracker_stats()
                return len({imei for key in tr_keys for _, imei, _ in st[key]["commands"]})

            end = time.monotonic() + 15
            while time.monotonic() < end and await arrived() < len(chosen):
                await asyncio.sleep(0.2)
        finally:
            pub.disconnect()
            pub.loop_stop()
        st = await tracker_stats()
        first_arrival: dict[str, float] = {}
        for t, imei, _command in sorted(c for key in tr_keys for c in st[key]["commands"]):
            first_arrival.setdefault(imei, t)
        lat = [first_arrival[d["id"]] - sent[d["id"]] for d in chosen if d["id"] in first_arrival]
        res["command_latency"] = {"sent": len(chosen), "arrived": len(lat),
                                  "p50_ms": ms(pct(lat, 50)), "p99_ms": ms(pct(lat, 99)),
                                  "max_ms": ms(max(lat) if lat else None),
                                  "split": command_split(run.tmp / "bridge.db", sent, first_arrival),
                                  "by_account": dict(Counter(f"b_{d['sim']}" for d in chosen))}
        log(f"{size}: command latency {res['command_latency']}")
        await asyncio.sleep(3.0)  # replies come in, results are published

    # 6. steady state ------------------------------------------------------------------------------
    await run.sim("POST", "/bench/mode", json={"mode": "quiet"})
    await run.sim("POST", "/bench/clear")
    await asyncio.sleep(1.0)
    n0, b0 = sub.snapshot()
    meter = CpuMeter({"bridge": pid, "simulator": sim_pid, "mosquitto": run.procs.pids["mosquitto"],
                      "harness": os.getpid()})
    cpu0, t0 = cpu_seconds(pid), time.time()
    info0 = bridge_info(sub)
    s0 = await run.sim("GET", "/bench/stats")
    sub.state_log = []
    await asyncio.sleep(args.steady)
    steady_log, sub.state_log = sub.state_log, None
    machine_steady = meter.read()
    n1, b1 = sub.snapshot()
    cpu1, t1 = cpu_seconds(pid), time.time()
    info1 = bridge_info(sub)
    s1 = await run.sim("GET", "/bench/stats")
    dt = t1 - t0
    dn, db = n1 - n0, b1 - b0
    # poll cycles: each account of a platform polled once (the mean over its accounts)
    polls = {n: statistics.mean(_polls(info1, i) - _polls(info0, i) for i in ids_of[n]) for n in names}
    tracker_cycles = (round(statistics.mean(s1[k]["cycles"] - s0[k]["cycles"] for k in tr_keys))
                      if "opengps" in names else None)
    cycles = tracker_cycles or round(max(polls.values())) or 1
    steady = {"seconds": round(dt, 1), "messages_per_min": round(sum(dn.values()) * 60 / dt, 1),
              "bytes_per_min": round(sum(db.values()) * 60 / dt), "by_kind_per_min":
              {k: round(v * 60 / dt, 1) for k, v in sorted(dn.items()) if v},
              "cpu_percent": round((cpu1 - cpu0) / dt * 100, 1), "poll_cycles": cycles,
              "messages_per_cycle": round(sum(dn.values()) / cycles, 2),
              "cpu_s_per_cycle": round((cpu1 - cpu0) / cycles, 4),
              "cpu_s_per_cycle_per_1000_devices": round((cpu1 - cpu0) / cycles / size * 1000, 4)}
    default_scan = min(ADAPTERS[n].default_scan for n in names)
    steady["at_default_scan_interval"] = {
        "scan_interval_s": default_scan,
        "messages_per_min": round(steady["messages_per_cycle"] * 60 / default_scan, 2),
        "cpu_percent": round(steady["cpu_s_per_cycle"] / default_scan * 100, 2)}
    steady["cpu_by_process"] = machine_steady
    # state messages by platform: a platform whose simulator ticks on its own (create_simulator's
    # default) is not quiet; the tracker world stands still
    steady["state_messages_per_min_by_platform"] = {
        n: round(sum(1 for t, topic in steady_log if topic.split("/")[1] in ids_of[n]) * 60 / dt, 1) for n in names}
    res["steady"] = steady
    if "opengps" in names and event_window:
        # the initial event fetch ran beside back-to-back polls: take the steady polling CPU out
        secs, cpu, reqs = event_window
        per_req = max(0.0, cpu - steady["cpu_percent"] / 100 * secs) / reqs
        if steady["cpu_percent"] >= 90 or not per_req:
            # the polls alone take the bridge's core: the fetch only took time from them, its own
            # cost cannot be told apart
            res["event_fetch"]["note"] = "not separable: the steady polls alone take a full core"
        else:
            res["event_fetch"]["bridge_cpu_ms_per_request"] = round(per_req * 1000, 3)
    log(f"{size}: steady {steady}")
    res["vendor_steady"] = vendor_efficiency(run, names, accounts, s0, s1, info1)

    # 1. storm -------------------------------------------------------------------------------------
    storm_names = [n for n in names if ADAPTERS[n].storm]
    if storm_names:
        storm_keys = [k for n in storm_names for k in keys_of[n]]
        await run.sim("POST", "/bench/mode", json={"platforms": storm_names, "mode": "storm"})

        async def storm_cycles() -> dict[str, int]:
            st = await run.sim("GET", "/bench/stats", params={"platforms": ",".join(storm_names)})
            return {k: st[k]["cycles"] for k in storm_keys}

        c_start = await storm_cycles()
        end = time.monotonic() + 60
        while time.monotonic() < end:  # 2 warm-up cycles on every account
            c_now = await storm_cycles()
            if min(c_now[k] - c_start[k] for k in storm_keys) >= 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        n0, b0 = sub.snapshot()
        cpu0, t0 = cpu_seconds(pid), time.time()
        s0 = await run.sim("GET", "/bench/stats")
        info0 = bridge_info(sub)
        sim_cpu0 = (await run.sim("GET", "/bench/self"))["cpu"]
        tr_cpu0 = await run.host_cpu(run.tracker_control)
        meter = CpuMeter({"bridge": pid, "simulator": sim_pid, "mosquitto": run.procs.pids["mosquitto"],
                          "harness": os.getpid()})
        sub.storm_times = []
        await asyncio.sleep(args.storm)
        machine_storm = meter.read()
        n1, b1 = sub.snapshot()
        cpu1, t1 = cpu_seconds(pid), time.time()
        s1 = await run.sim("GET", "/bench/stats")
        info1 = bridge_info(sub)
        sim_cpu1 = (await run.sim("GET", "/bench/self"))["cpu"]
        tr_cpu1 = await run.host_cpu(run.tracker_control)
        times, sub.storm_times = sub.storm_times, None
        dt = t1 - t0
        states = n1["state"] - n0["state"]
        # offered load: each account's devices / its own cycle (accounts run out of phase), summed
        by_account: dict[str, dict[str, Any]] = {}
        for k in storm_keys:
            n_cycles = s1[k]["cycles"] - s0[k]["cycles"]
            period = cycle_period(s1[k], t0, t1) or (dt / n_cycles if n_cycles else None)
            by_account[f"b_{k}"] = {"devices": n_of[k], "poll_cycles": n_cycles,
                                    "cycle_s": round(period, 3) if period else None,
                                    "offered_updates_s": round(n_of[k] / period, 1) if period else 0.0}
        cycles = sum(a["poll_cycles"] for a in by_account.values())
        offered = round(sum(a["offered_updates_s"] for a in by_account.values()), 1)
        periods = [a["cycle_s"] for a in by_account.values() if a["cycle_s"]]
        storm = {"seconds": round(dt, 1), "state_messages": states, "rate_msgs_s": round(states / dt, 1),
                 "state_bytes_mean": round((b1["state"] - b0["state"]) / max(1, states), 1),
                 "tracker_accounts": len(storm_keys),
                 "poll_cycles": cycles, "cycle_s": round(statistics.mean(periods), 3) if periods else None,
                 "offered_updates_s": offered,
                 "updates_per_cycle_per_device": round(states / dt / offered, 3) if offered else None,
                 "cpu_s": round(cpu1 - cpu0, 2), "cpu_percent": round((cpu1 - cpu0) / dt * 100, 1),
                 "cpu_s_per_1000_updates": round((cpu1 - cpu0) / states * 1000, 4) if states else None,
                 # per update the bridge fetched (it drops the ones overtaken before they were sent)
                 "cpu_s_per_1000_fetched_updates": round((cpu1 - cpu0) / (offered * dt) * 1000, 4) if offered else None,
                 "simulator_cpu_percent": round((sim_cpu1 - sim_cpu0) / dt * 100, 1),
                 "tracker_simulator_cpu_percent": round((tr_cpu1 - tr_cpu0) / dt * 100, 1),
                 "burst_rate_msgs_s": burst_rate(times, min(n_of[k] for k in storm_keys)),
                 "cpu_by_process": machine_storm, "accounts": by_account}
        # load-limited: the bridge fetched what the fleet offers at the scan interval (every account's
        # cycle within 1.1 intervals), published what it fetched (>= 0.9) and was not CPU-bound.
        # Otherwise the bridge is the limit (saturated): a bridge short of CPU lengthens the cycles
        # (it waits for MQTT room before each fetch), so what it fetched is not what was offered
        storm["fleet_offer_updates_s"] = round(sum(n_of[k] for k in storm_keys) / SCAN_INTERVAL, 1)
        storm["kept_up"] = bool(offered) and states / dt >= 0.9 * offered
        storm["fetched_all"] = bool(periods) and max(periods) <= 1.1 * SCAN_INTERVAL
        storm["bridge_cpu_bound"] = storm["cpu_percent"] >= 90
        storm["load_limited"] = storm["kept_up"] and storm["fetched_all"] and not storm["bridge_cpu_bound"]
        storm["saturated"] = not storm["load_limited"]
        res["vendor_storm"] = vendor_efficiency(run, names, accounts, s0, s1, info1)
        res["memory_after_storm"] = memory_mb(pid)
        res["storm"] = storm
        log(f"{size}: storm {storm}")
        if not states:
            res.setdefault("diagnostics", []).append(await diagnose(run, pid, "no state messages in the storm"))
        if args.profile:
            res["profile"] = await profile(run, pid, args.profile_seconds)
        await run.sim("POST", "/bench/mode", json={"mode": "quiet"})
    res["memory_end"] = memory_mb(pid)
    res["memory_per_device_kb"] = round(res["memory_after_startup"]["rss_mb"] * 1024 / size, 2)

    # stop the bridge ------------------------------------------------------------------------------
    run.procs.stop(bridge, 15)
    await asyncio.sleep(0.5)

    # 1b. bare client on the same broker, same subscriber ------------------------------------------
    if storm_names and sub.samples:
        payload_file = run.tmp / "payloads.json"
        storm_ids = {i for n in storm_names for i in ids_of[n]}  # the storm's payloads: the tracker's states
        items = [(t, p) for t, p in list(sub.samples.items()) if t.split("/")[1] in storm_ids] or list(sub.samples.items())
        payload_file.write_text(json.dumps([[BARE + t[len(BASE):], p.decode()] for t, p in items]))
        runs = []
        nb0 = sub.n["bare"]
        meter = CpuMeter({"simulator": sim_pid, "mosquitto": run.procs.pids["mosquitto"], "harness": os.getpid()})
        # the same client with the bridge's socket I/O (fleetbridge.mqtt._Wire), and with the
        # bridge's own publish path (_Wire.publish): references for what the rest of the bridge costs
        wire_runs: list[dict[str, Any]] = []
        fast_runs: list[dict[str, Any]] = []
        for mode in ["direct", "wire", "fast"] * args.bare_runs:
            spec = {"host": "127.0.0.1", "port": port, "payloads": str(payload_file), "count": args.bare_count,
                    "window": 32, "qos": 1, "retain": True, "mode": mode}
            out = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
                subprocess.run, [sys.executable, str(HERE / "bare.py"), json.dumps(spec)], check=False,
                capture_output=True, text=True, timeout=300, cwd=run.tmp))
            if out.returncode != 0:
                raise RuntimeError(f"bare client failed: {out.stderr[-2000:]}")
            {"direct": runs, "wire": wire_runs, "fast": fast_runs}[mode].append(json.loads(out.stdout))
        await wait_quiet(sub, 1.0, 30)
        best = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]  # the median run
        best_wire = sorted(wire_runs, key=lambda r: r["rate"])[len(wire_runs) // 2]
        best_fast = sorted(fast_runs, key=lambda r: r["rate"])[len(fast_runs) // 2]
        machine_bare = meter.read()
        window = max(1e-9, time.time() - meter.t0)
        bare_cpu = sum(r["cpu_s"] for r in runs + wire_runs + fast_runs)
        machine_bare["bare_percent"] = round(bare_cpu / window * 100, 1)
        machine_bare["others_percent"] = round(max(0.0, machine_bare["others_percent"] - bare_cpu / window * 100), 1)
        bare = {**best, "runs": [r["rate"] for r in runs], "subscriber_received": sub.n["bare"] - nb0,
                "subscriber_expected": args.bare_count * args.bare_runs * 3, "cpu_by_process": machine_bare,
                "wire": {**best_wire, "runs": [r["rate"] for r in wire_runs]},
                "fast": {**best_fast, "runs": [r["rate"] for r in fast_runs]}}
        res["bare"] = bare
        storm = res["storm"]
        storm["efficiency"] = round(storm["rate_msgs_s"] / bare["rate"], 3) if bare["rate"] else None
        storm["efficiency_vs_wire"] = (round(storm["rate_msgs_s"] / best_wire["rate"], 3)
                                       if best_wire["rate"] else None)
        storm["efficiency_vs_fast"] = (round(storm["rate_msgs_s"] / best_fast["rate"], 3)
                                       if best_fast["rate"] else None)
        # below 0.7, a load-limited storm cannot decide the efficiency target
        storm["offered_vs_bare"] = round(storm["offered_updates_s"] / bare["rate"], 3) if bare["rate"] else None
        ceiling = min(bare["rate"], storm["offered_updates_s"])
        storm["efficiency_vs_offered"] = round(storm["rate_msgs_s"] / ceiling, 3) if ceiling else None
        log(f"{size}: bare {bare}")

    # 4b. the default queue limit drops retained messages for a fresh subscriber ---------------------
    if args.queue_demo and discovery_payloads:
        res["default_queue_demo"] = await queue_demo(run, discovery_payloads)
        log(f"{size}: default queue demo {res['default_queue_demo']}")

    run.close_subs()
    run.procs.stop_all()

    # 4c. entity-mode discovery (a separate, smaller bridge run) -------------------------------------
    if args.entity_devices and "opengps" in names:
        res["discovery_entity_mode"] = await entity_mode(run, min(size, args.entity_devices))
        log(f"{size}: entity mode {res['discovery_entity_mode']}")


async def diagnose(run: Run, pid: int, what: str) -> dict[str, Any]:
    """What the bridge is doing when a phase saw nothing: its log tail and a py-spy dump."""
    out: dict[str, Any] = {"what": what, "log_tail": (run.tmp / "bridge.log").read_text()[-3000:]}
    spy = shutil.which("py-spy")
    if spy:
        done = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
            [spy, "dump", "--pid", str(pid)], check=False, capture_output=True, text=True, timeout=30))
        out["py_spy_dump"] = done.stdout[-4000:]
    log(f"{run.size}: DIAGNOSTICS {what}: {json.dumps(out)[:3000]}")
    return out


def _polls(info: dict[str, Any], account: str) -> int:
    return int(((info.get("accounts") or {}).get(account) or {}).get("polls") or 0)


def vendor_efficiency(run: Run, names: list[str], accounts: dict[str, dict[str, Any]], s0: dict[str, Any],
                      s1: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Refresh requests per refresh cycle / the theoretical minimum, per platform. Cycles are detected
    in the simulator host, per simulated account: a refresh request repeating one of the current cycle
    starts the next. A platform with several accounts (the tracker's storm): the requests per cycle of
    each account (the mean over its own cycles, which run out of phase) summed, over the sum of their
    minimums (tracker: sum of ceil(n_i/100))."""
    out = {}
    for name in names:
        parts = {f"b_{key}": _vendor_account(run, name, key, accounts[key], s0, s1, info)
                 for key in run.keys_of[name]}
        out[name] = next(iter(parts.values())) if len(parts) == 1 else _vendor_sum(parts)
    return out


def _vendor_account(run: Run, name: str, key: str, acc: dict[str, Any], s0: dict[str, Any], s1: dict[str, Any],
                    info: dict[str, Any]) -> dict[str, Any]:
    ad = ADAPTERS[name]
    minimum = ad.minimum(run.n_of[key], acc, run.caps.get(key, {}))
    prev = s0[key].get("per_cycle") or []
    last_t = prev[-1][0] if prev else -1.0
    new = [c for t, c in (s1[key].get("per_cycle") or []) if t > last_t]
    if not new:  # no cycle finished in the window: every one since the start
        new = [c for t, c in (s1[key].get("per_cycle") or [])]
    if new:
        mean = statistics.mean(new)
        c0, c1 = s0[key]["counts"], s1[key]["counts"]
        out = {"requests_per_cycle": round(mean, 2), "max": max(new), "cycles": len(new),
               "minimum": minimum, "efficiency": round(mean / minimum, 3), "rule": ad.rule,
               "all_requests_per_cycle": {k: round((v - c0.get(k, 0)) / len(new), 2)
                                          for k, v in sorted(c1.items()) if v > c0.get(k, 0)}}
    else:
        out = {"requests_per_cycle": None, "cycles": 0, "minimum": minimum, "efficiency": None,
               "rule": ad.rule, "refresh_requests": {k: v for k, v in s1[key]["counts"].items()
                                                     if re.search(ad.refresh, k)},
               "note": "no complete refresh cycle seen"}
        # a rate-budgeted platform (AMM: 360 requests/h) spreads one refresh over minutes; its own
        # plan, as it warns in bridge/info, is the figure then
        warnings = " ".join(((info.get("accounts") or {}).get(acc["id"]) or {}).get("warnings", {}).values())
        planned = re.search(r"(\d+) requests per refresh", warnings)
        if planned:
            n_req = int(planned.group(1))
            out.update({"requests_per_cycle": n_req, "efficiency": round(n_req / minimum, 3),
                        "note": "planned by the plugin (its bridge/info warning), cycle not observed: "
                                + warnings[:300]})
    floor = run.caps.get(key, {}).get("api_floor")
    if floor and out.get("requests_per_cycle"):  # AMM: the fewest the API allows for the
        out["api_floor"] = floor                   # simulator's group tree (simhost.group_floor)
        out["efficiency_vs_api_floor"] = round(out["requests_per_cycle"] / floor, 3)
    return out


def _vendor_sum(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One platform's accounts together: requests per cycle and minimums summed."""
    vals = list(parts.values())
    minimum = sum(p["minimum"] for p in vals)
    out: dict[str, Any] = {"accounts": len(vals), "minimum": minimum,
                           "rule": f"{vals[0]['rule']}, summed over {len(vals)} accounts", "by_account": parts}
    if any(p.get("requests_per_cycle") is None for p in vals):
        out.update(requests_per_cycle=None, efficiency=None, cycles=sum(p.get("cycles") or 0 for p in vals),
                   note="no complete refresh cycle seen on every account")
        return out
    requests = sum(p["requests_per_cycle"] for p in vals)
    every: Counter[str] = Counter()
    for p in vals:
        every.update(p.get("all_requests_per_cycle") or {})
    out.update(requests_per_cycle=round(requests, 2), max=sum(p.get("max") or 0 for p in vals),
               cycles=sum(p["cycles"] for p in vals), efficiency=round(requests / minimum, 3),
               all_requests_per_cycle={k: round(v, 2) for k, v in sorted(every.items())})
    return out


def cycle_period(stats: dict[str, Any], t0: float, t1: float) -> float | None:
    """Mean refresh cycle of one simulated account over [t0, t1], from the starts of its cycles (the
    last one before t0 included): None with fewer than two."""
    starts = sorted([t for t, _ in stats.get("per_cycle") or []] + [stats.get("cycle_started") or 0.0])
    points = [t for t in starts if 0 < t < t0][-1:] + [t for t in starts if t0 <= t <= t1]
    return (points[-1] - points[0]) / (len(points) - 1) if len(points) >= 2 else None


def burst_rate(times: list[float], devices: int) -> float | None:
    """Publish rate within bursts (gaps > 0.2 s split them) of at least half the fleet: the sender's
    drain rate when the poll is not competing (the median burst)."""
    if not times:
        return None
    bursts, start, prev, count = [], times[0], times[0], 1
    for t in times[1:]:
        if t - prev > 0.2:
            bursts.append((count, prev - start))
            start, count = t, 0
        count += 1
        prev = t
    bursts.append((count, prev - start))
    rates = [c / d for c, d in bursts if c >= devices / 2 and d > 0]
    return round(statistics.median(rates), 1) if rates else None


async def profile(run: Run, pid: int, seconds: float) -> dict[str, Any]:
    """py-spy over an extra storm window (not the measured one); top functions by own and total time."""
    spy = shutil.which("py-spy")
    if spy is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    out_dir = Path(run.args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"storm-{run.size}.txt"
    svg = out_dir / f"storm-{run.size}.svg"
    # run in the output folder with bare names: py-spy writes its command line into the flame graph,
    # which must not carry this machine's paths
    base = ["py-spy", "record", "--pid", str(pid), "--rate", "100", "--nonblocking"]
    where = {"executable": spy, "cwd": out_dir, "capture_output": True, "text": True}
    loop = asyncio.get_running_loop()
    done = await loop.run_in_executor(None, lambda: subprocess.run(
        base + ["--duration", str(int(seconds)), "--format", "raw", "-o", raw.name],
        check=False, timeout=seconds + 60, **where))
    if done.returncode != 0:
        return {"error": done.stderr[-500:]}
    await loop.run_in_executor(None, lambda: subprocess.run(
        base + ["--duration", str(min(int(seconds), 10)), "-o", svg.name], check=False, timeout=seconds + 60,
        **where))
    # file names only: they lie in the --profile folder (a JSON document carries no machine paths)
    return {"raw": raw.name, "svg": svg.name if svg.exists() else None, **analyse_profile(raw)}


STAGES = (  # (stage, frames that put a sample in it); the first match wins
    ("SQLite state store (Store.save_states)", ("Store.save_states",)),
    ("tracker response parsing (track_state, expiry)", ("track_state", "expiry (")),
    ("vendor HTTP + JSON decode (tracker)", ("OpenGpsClient.",)),
    ("other platforms' polls", ("TangoePlatform.", "LattigoPlatform.", "AirVantagePlatform.", "AmmPlatform.")),
    ("host: coerce_state, diff, state_changed (_json), notify", ("Account.poll", "Bridge.state_changed")),
    ("events (alarm fetch, outbox)", ("_event_loop", "fetch_events", "flush_outbox")),
    ("MQTT publish path (sender, aiomqtt, paho)", ("MqttLink._sender", "aiomqtt/client", "paho/mqtt", "Client.loop_read", "Client.loop_write")),
    ("bridge/info, status page", ("_publish_info", "Bridge.info", "status")),
)


def analyse_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
        joined = ";".join(frames)
        stages[next((name for name, keys in STAGES if any(k in joined for k in keys)),
                    "event loop, idle and the rest")] += n
    def share(c: Counter[str]) -> list[list[Any]]:
        return [[name, round(n / samples * 100, 1)] for name, n in c.most_common(top)] if samples else []
    return {"samples": samples, "stages_percent": share(stages), "own_percent": share(own),
            "total_percent": share(total)}


def _frame(frame: str) -> str:
    # py-spy raw frames: "function (path/file.py:line)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    path = path or where
    for marker in ("/fleetbridge/", "/plugins/", "site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


async def queue_demo(run: Run, payloads: dict[str, bytes]) -> dict[str, Any]:
    """Copy the retained discovery into a mosquitto with default queue limits, then subscribe fresh."""
    port = await start_broker(run.procs, run.tmp, "mosquitto-default", None)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-copy-{os.getpid()}")
    acked = [0]
    pub.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        for topic, payload in payloads.items():
            pub.publish(topic, payload, qos=1, retain=True)
        await wait_until(lambda: acked[0] >= len(payloads), 120, 0.1)
    finally:
        pub.disconnect()
        pub.loop_stop()
    out: dict[str, Any] = {"broker": "mosquitto defaults (max_queued_messages 1000, max_inflight_messages 20)",
                           "retained": len(payloads), "copied": acked[0]}
    for qos in (0, 1):
        t0 = time.time()
        fresh = run.subscriber(port, [f"{PREFIX}/#"], f"bench-default-q{qos}", qos=qos)
        await wait_until(lambda fresh=fresh: fresh.retained > 0, 10)
        await wait_quiet(fresh, 2.0, 60)
        out[f"qos{qos}_received"] = fresh.retained
        out[f"qos{qos}_seconds"] = round(fresh.last_at - t0, 2) if fresh.retained else None
        fresh.close()
        run.subs.remove(fresh)
    return out


async def entity_mode(run: Run, n: int) -> dict[str, Any]:
    """Discovery messages and bytes per device with discovery_mode: entity (trackers, n devices)."""
    port = await start_broker(run.procs, run.tmp, "mosquitto-entity", 0)
    sub = run.subscriber(port, ["#"], "bench-entity")
    sub.wait_subscribed()
    ad = ADAPTERS["opengps"]
    host = await start_simhost(run.procs, run.tmp, {"platforms": [
        {"name": "opengps", "devices": n, "seed": run.args.seed, "config": ad.account("http://127.0.0.1:1", n)}]})
    control = f"http://127.0.0.1:{host['control']}"
    assert run.http is not None
    async with run.http.get(control + "/bench/devices", params={"platform": "opengps"}) as resp:
        expected = len(await resp.json())
    acc = {"platform": "opengps", "name": "Bench entity", "id": "b_entity", "scan_interval": 5.0,
           **ad.account(f"http://127.0.0.1:{host['ports']['opengps']}", n)}
    config = bridge_config(run.tmp, port, [acc], "entity", "bridge-entity")
    bridge, t_start = start_bridge(run, config, "bridge-entity")
    node = "fleetbridge_bridge_fb_bridge-entity".replace("-", "_")

    def nodes() -> list[str]:
        return [k for k in list(sub.disc_msgs) if k.startswith("b_entity_")]

    await wait_until(lambda: sub.disc_by_account["b_entity"] >= expected and len(sub.state_first) >= expected,
                     120, 0.2)
    await wait_quiet(sub, 1.5, 30)
    t_all = max((sub.disc_first[k] for k in nodes()), default=None)
    devs = nodes()
    out = {"devices": n, "discovered": len(devs),
           "messages_per_device": round(sum(sub.disc_msgs[k] for k in devs) / max(1, len(devs)), 2),
           "bytes_per_device": round(sum(sub.disc_bytes[k] for k in devs) / max(1, len(devs)), 1),
           "discovery_all_s": round(t_all - t_start, 2) if t_all else None,
           "rss_mb": memory_mb(bridge.pid)["rss_mb"], "bridge_node": node}
    run.procs.stop(bridge, 15)
    return out


# ------------------------------------------------------------------------------------------------ report

TARGETS = [
    # (key, label, getter, op, threshold, unit, scope)
    ("efficiency", "publish efficiency (bridge / bare client)", lambda r: _g(r, "storm", "efficiency"), ">=", 0.7, "", "all"),
    ("cpu", "CPU s per 1,000 device updates (storm)", lambda r: _g(r, "storm", "cpu_s_per_1000_updates"), "<=", 0.1, "s", "all"),
    ("startup", "start-up: all discovery + state on the broker", lambda r: _g(r, "startup", "all_s"), "<=", 60, "s", "10k"),
    ("rss", "bridge RSS after start-up", lambda r: _g(r, "memory_after_startup", "rss_mb"), "<=", 150, "MB", "10k"),
    ("state_p99", "state latency beyond the poll, p99", lambda r: _g(r, "state_latency", "beyond_poll_p99_ms"), "<=", 250, "ms", "10k"),
    ("cmd_p99", "command latency /set -> vendor, p99", lambda r: _g(r, "command_latency", "p99_ms"), "<=", 50, "ms", "10k"),
]


def _g(res: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(res, dict):
            return None
        res = res.get(k)
    return res


def verdict(value: Any, op: str, threshold: float) -> str:
    if value is None:
        return "n/a"
    return "met" if (value >= threshold if op == ">=" else value <= threshold) else "MISSED"


def marginal_memory(doc: dict[str, Any]) -> None:
    """RSS added per extra device between consecutive sizes (the fixed ~55 MB of an empty bridge
    out): the per-device memory figure that growth is judged on."""
    sizes = sorted(int(s) for s in doc["sizes"])
    for lo, hi in itertools.pairwise(sizes):
        a = _g(doc["sizes"][str(lo)], "memory_after_startup", "rss_mb")
        b = _g(doc["sizes"][str(hi)], "memory_after_startup", "rss_mb")
        if a and b:
            doc["sizes"][str(hi)]["memory_marginal_kb_per_device"] = round((b - a) * 1024 / (hi - lo), 2)


def evaluate(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    marginal_memory(doc)
    sizes = sorted(int(s) for s in doc["sizes"])
    for key, label, get, op, threshold, unit, scope in TARGETS:
        for size in sizes:
            res = doc["sizes"][str(size)]
            value = get(res)
            v = verdict(value, op, threshold)
            if key == "efficiency" and v == "MISSED" and _g(res, "storm", "load_limited"):
                v = "n/a (load-limited)"
            if scope == "10k" and size != 10_000:
                v = f"info ({v})"
            rows.append({"target": key, "label": label, "size": size, "value": value, "op": op,
                         "threshold": threshold, "unit": unit, "verdict": v})
    for size in sizes:
        res = doc["sizes"][str(size)]
        for name, ve in {**(res.get("vendor_storm") or {}), **{k: v for k, v in (res.get("vendor_steady") or {}).items()
                                                                if k not in (res.get("vendor_storm") or {})}}.items():
            eff = ve.get("efficiency")
            rows.append({"target": f"vendor:{name}", "label": f"vendor efficiency {name} ({ve['rule']})", "size": size,
                         "value": eff, "op": "==", "threshold": 1.0, "unit": "",
                         "verdict": "n/a" if eff is None else ("met" if abs(eff - 1.0) < 0.005 else "MISSED")})
    if len(sizes) >= 2:
        lo, hi = str(sizes[0]), str(sizes[-1])
        if len(sizes) >= 3:
            a = _g(doc["sizes"][str(sizes[1])], "memory_marginal_kb_per_device")
            b = _g(doc["sizes"][hi], "memory_marginal_kb_per_device")
            ratio = round(b / a, 2) if a and b else None
            rows.append({"target": "growth", "label": f"growth: RSS added per device, {sizes[-2]}->{hi} vs "
                         f"{lo}->{sizes[1]} (ratio)", "size": int(hi), "value": ratio, "op": "<=", "threshold": 1.1,
                         "unit": "x", "verdict": verdict(ratio, "<=", 1.1)})
        for label, keys in (("CPU per 1,000 updates", ("storm", "cpu_s_per_1000_updates")),
                            ("start-up s per 1,000 devices", None),
                            ("steady CPU per cycle per 1,000 devices", ("steady", "cpu_s_per_cycle_per_1000_devices"))):
            if keys is None:
                a = _startup_per_k(doc["sizes"][lo], int(lo))
                b = _startup_per_k(doc["sizes"][hi], int(hi))
            else:
                a, b = _g(doc["sizes"][lo], *keys), _g(doc["sizes"][hi], *keys)
            ratio = round(b / a, 2) if a and b else None
            rows.append({"target": "growth", "label": f"growth {lo}->{hi}: {label} (ratio)", "size": int(hi),
                         "value": ratio, "op": "<=", "threshold": 1.1, "unit": "x",
                         "verdict": verdict(ratio, "<=", 1.1)})
    return rows


def _startup_per_k(res: dict[str, Any], size: int) -> float | None:
    s = _g(res, "startup", "all_s")
    return s / size * 1000 if s else None


FIGURES = [
    ("storm: tracker accounts (polled concurrently)", ("storm", "tracker_accounts")),
    ("storm: bridge publish rate (msgs/s)", ("storm", "rate_msgs_s")),
    ("storm: offered updates/s (devices x cycles/s)", ("storm", "offered_updates_s")),
    ("storm: fleet offer at the scan interval (updates/s)", ("storm", "fleet_offer_updates_s")),
    ("storm: load-limited (fetched and published the fleet's offer, not CPU-bound)", ("storm", "load_limited")),
    ("storm: poll cycle (s)", ("storm", "cycle_s")),
    ("storm: bridge burst drain rate (msgs/s)", ("storm", "burst_rate_msgs_s")),
    ("bare client QoS 1, 32 in flight (msgs/s)", ("bare", "rate")),
    ("bare client CPU s per 1,000", ("bare", "cpu_per_1000")),
    ("bare client with the bridge's socket I/O (msgs/s)", ("bare", "wire", "rate")),
    ("  its CPU s per 1,000", ("bare", "wire", "cpu_per_1000")),
    ("publish efficiency vs that client", ("storm", "efficiency_vs_wire")),
    ("bare client with the bridge's publish path (msgs/s)", ("bare", "fast", "rate")),
    ("  its CPU s per 1,000", ("bare", "fast", "cpu_per_1000")),
    ("publish efficiency vs that client", ("storm", "efficiency_vs_fast")),
    ("publish efficiency (bridge/bare)", ("storm", "efficiency")),
    ("publish efficiency vs min(bare, offered)", ("storm", "efficiency_vs_offered")),
    ("storm: bridge CPU s per 1,000 updates", ("storm", "cpu_s_per_1000_updates")),
    ("storm: bridge CPU s per 1,000 fetched updates (offered)", ("storm", "cpu_s_per_1000_fetched_updates")),
    ("storm: bridge CPU %", ("storm", "cpu_percent")),
    ("storm: state message bytes, payload + topic (mean)", ("storm", "state_bytes_mean")),
    ("storm: mosquitto CPU %", ("storm", "cpu_by_process", "mosquitto_percent")),
    ("storm: tracker simulator CPU %", ("storm", "tracker_simulator_cpu_percent")),
    ("storm: harness (subscriber) CPU %", ("storm", "cpu_by_process", "harness_percent")),
    ("storm: other processes on the box CPU % (noise)", ("storm", "cpu_by_process", "others_percent")),
    ("bare run: other processes CPU % (noise)", ("bare", "cpu_by_process", "others_percent")),
    ("state latency beyond poll p50 (ms)", ("state_latency", "beyond_poll_p50_ms")),
    ("state latency beyond poll p99 (ms)", ("state_latency", "beyond_poll_p99_ms")),
    ("command /set -> vendor p50 (ms)", ("command_latency", "p50_ms")),
    ("command /set -> vendor p99 (ms)", ("command_latency", "p99_ms")),
    ("start-up: all discovery on broker (s)", ("startup", "discovery_all_s")),
    ("start-up: all state on broker (s)", ("startup", "state_all_s")),
    ("fresh HA subscriber, max_queued 0: received", ("fresh_subscriber", "received")),
    ("fresh HA subscriber, max_queued 0: seconds", ("fresh_subscriber", "seconds")),
    ("default broker: retained discovery", ("default_queue_demo", "retained")),
    ("default broker: fresh QoS 0 subscriber got", ("default_queue_demo", "qos0_received")),
    ("default broker: fresh QoS 1 subscriber got", ("default_queue_demo", "qos1_received")),
    ("discovery msgs/device (device mode)", ("discovery_device_mode", "messages_per_device")),
    ("discovery bytes/device (device mode)", ("discovery_device_mode", "bytes_per_device")),
    ("discovery msgs/device (entity mode)", ("discovery_entity_mode", "messages_per_device")),
    ("discovery bytes/device (entity mode)", ("discovery_entity_mode", "bytes_per_device")),
    ("initial event fetch: alarm requests", ("event_fetch", "requests")),
    ("initial event fetch: seconds", ("event_fetch", "seconds")),
    ("initial event fetch: event messages (past hour)", ("event_fetch", "event_messages_published")),
    ("initial event fetch: bridge CPU ms per alarm request, its events published", ("event_fetch",
                                                                                   "bridge_cpu_ms_per_request")),
    ("RSS after start-up (MB)", ("memory_after_startup", "rss_mb")),
    ("RSS peak (MB)", ("memory_end", "hwm_mb")),
    ("RSS / devices (KB, fixed part included)", ("memory_per_device_kb",)),
    ("RSS added per device vs the previous size (KB)", ("memory_marginal_kb_per_device",)),
    ("steady: msgs/min (at scan_interval 1 s)", ("steady", "messages_per_min")),
    ("steady: bytes/min (at scan_interval 1 s)", ("steady", "bytes_per_min")),
    ("steady: msgs per poll cycle", ("steady", "messages_per_cycle")),
    ("steady: tracker state msgs/min (its world stopped)", ("steady", "state_messages_per_min_by_platform", "opengps")),
    ("steady: CPU % (at scan_interval 1 s)", ("steady", "cpu_percent")),
    ("steady: CPU s per poll cycle", ("steady", "cpu_s_per_cycle")),
    ("steady at default scan_interval: msgs/min", ("steady", "at_default_scan_interval", "messages_per_min")),
    ("steady at default scan_interval: CPU %", ("steady", "at_default_scan_interval", "cpu_percent")),
]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,}" if isinstance(value, (int, float)) else str(value)


#: what ``repeats`` keeps of every run of a size
REPEAT_FIGURES: dict[str, tuple[str, ...]] = {
    "publish_rate": ("storm", "rate_msgs_s"), "bare_rate": ("bare", "rate"), "efficiency": ("storm", "efficiency"),
    "cpu_s_per_1000_updates": ("storm", "cpu_s_per_1000_updates"), "command_p99_ms": ("command_latency", "p99_ms"),
    "rss_mb": ("memory_after_startup", "rss_mb")}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Of several runs of one size, the one whose storm CPU per update is the median (the lower one of
    an even count): a whole run, so its figures belong together. Every run's key figures go in
    ``repeats``."""
    if len(runs) == 1:
        return runs[0]
    ranked = sorted(runs, key=lambda r: _g(r, "storm", "cpu_s_per_1000_updates") or math.inf)
    chosen = dict(ranked[(len(runs) - 1) // 2])
    chosen["repeats"] = [{name: _g(r, *keys) for name, keys in REPEAT_FIGURES.items()} for r in runs]
    return chosen


def table(doc: dict[str, Any]) -> str:
    sizes = sorted(doc["sizes"], key=int)
    lines = [(f"fleetbridge benchmark, commit {doc['commit']}, {doc['machine']['cpus']} CPUs, "
              f"python {doc['machine']['python']}, {doc['machine']['mosquitto']}"), ""]
    head = "| figure | " + " | ".join(f"{int(s):,}" for s in sizes) + " |"
    lines += [head, "|---|" + "---:|" * len(sizes)]
    for label, keys in FIGURES:
        vals = [_g(doc["sizes"][s], *keys) for s in sizes]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {label} | " + " | ".join(_cell(v) for v in vals) + " |")
    names = []
    for s in sizes:
        for name in (doc["sizes"][s].get("vendor_storm") or doc["sizes"][s].get("vendor_steady") or {}):
            if name not in names:
                names.append(name)
    for name in names:
        cells = []
        for s in sizes:
            ve = (doc["sizes"][s].get("vendor_storm") or {}).get(name) or \
                (doc["sizes"][s].get("vendor_steady") or {}).get(name)
            if not ve or ve.get("requests_per_cycle") is None:
                cells.append("-")
            else:
                mark = "*" if "planned" in (ve.get("note") or "") else ""
                floor = f" (API floor {ve['api_floor']}: {ve['efficiency_vs_api_floor']:.2f})" if ve.get("api_floor") else ""
                over = f" ({ve['accounts']} accounts)" if ve.get("accounts") else ""
                cells.append(f"{ve['requests_per_cycle']:g}{mark} / {ve['minimum']} = {ve['efficiency']:.2f}{floor}{over}")
        lines.append(f"| vendor {name}: refresh requests / minimum = efficiency | " + " | ".join(cells) + " |")
    lines += ["", "| target | size | value | target | verdict |", "|---|---:|---:|---:|---|"]
    for row in doc["targets"]:
        val = "-" if row["value"] is None else f"{row['value']:,}"
        lines.append(f"| {row['label']} | {row['size']:,} | {val} {row['unit']} | {row['op']} {row['threshold']:g} "
                     f"{row['unit']} | {row['verdict']} |")
    if any("*" in line for line in lines if line.startswith("| vendor")):
        lines.append("\n\\* planned by the plugin under its vendor rate budget (bridge/info warning); no full cycle "
                     "was observed in the window")
    for s in sizes:
        repeats = doc["sizes"][s].get("repeats") or []
        if repeats:
            lines.append(f"\n{int(s):,}: {len(repeats)} runs, the median one (by storm CPU per update) above:")
        for name in REPEAT_FIGURES if repeats else ():
            lines.append(f"- {name}: " + ", ".join(_cell(r[name]) for r in repeats))
    skipped = {n: why for s in sizes for n, why in (doc["sizes"][s].get("skipped_platforms") or {}).items()}
    for name, why in skipped.items():
        lines.append(f"\nskipped platform {name}: {why}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    try:
        mq = subprocess.run([mosquitto_binary(), "-h"], check=False, capture_output=True, text=True,
                            timeout=5).stdout.splitlines()[0]
    except Exception:  # noqa: BLE001
        mq = "mosquitto ?"
    import importlib.metadata as md
    return {"cpus": os.cpu_count(), "python": pyplatform.python_version(), "mosquitto": mq,
            "aiomqtt": md.version("aiomqtt"), "paho-mqtt": md.version("paho-mqtt"),
            "kernel": pyplatform.release()}


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fleetbridge", "plugins"], check=False, cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000", help="device counts, comma separated (default 1000,10000)")
    p.add_argument("--platforms", default=",".join(ADAPTERS), help="platforms to include when their plugin loads")
    p.add_argument("--json", help="also write the JSON document to this file")
    p.add_argument("--tracker-share", type=float, default=0.8,
                   help="share of the devices given to the tracker (the storm platform) when others run too")
    p.add_argument("--tracker-accounts", default="auto", metavar="K",
                   help="bridge accounts (each its own simulated vendor account, polled concurrently) that share "
                        "the tracker's devices; auto = ceil(tracker devices / 10,000)")
    p.add_argument("--profile", metavar="DIR", help="py-spy the bridge during an extra storm window; output in DIR")
    p.add_argument("--profile-seconds", type=float, default=15)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--storm", type=float, default=10, help="seconds of measured storm")
    p.add_argument("--steady", type=float, default=15, help="seconds of measured steady state")
    p.add_argument("--latency-cycles", type=int, default=5)
    p.add_argument("--latency-timeout", type=float, default=90)
    p.add_argument("--probes-per-cycle", type=int, default=40)
    p.add_argument("--broker-option", action="append", default=[], metavar="LINE",
                   help="an extra mosquitto.conf line for the measured broker, e.g. 'set_tcp_nodelay true'")
    p.add_argument("--commands", type=int, default=200,
                   help="reboot presses for the command latency (0: skip); p99 of 200 is the second largest")
    p.add_argument("--command-gap", type=float, default=0.05)
    p.add_argument("--bare-count", type=int, default=20000)
    p.add_argument("--bare-runs", type=int, default=3)
    p.add_argument("--entity-devices", type=int, default=300, help="devices of the entity-mode run (0: skip)")
    p.add_argument("--no-queue-demo", dest="queue_demo", action="store_false")
    p.add_argument("--startup-timeout", type=float, default=300)
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each size, wait up to S seconds for the machine to be quiet (shared boxes)")
    p.add_argument("--quiet-limit", type=float, default=30, help="percent busy (all cores) that counts as quiet")
    p.add_argument("--report", nargs="+", metavar="JSON",
                   help="no run: merge JSON documents of earlier runs (sizes), re-evaluate and print the table")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories (logs, configs)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each size N times and keep the median run (by storm CPU per update); the key "
                        "figures of every run are in 'repeats' (this box's speed varies between runs)")
    args = p.parse_args(argv)
    args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    args.platforms = [s.strip() for s in args.platforms.split(",") if s.strip()]
    if args.tracker_accounts != "auto" and not (args.tracker_accounts.isdigit() and int(args.tracker_accounts) >= 1):
        p.error("--tracker-accounts: a positive integer or auto")
    return args


def report(files: list[str], out: str | None) -> int:
    doc: dict[str, Any] = {"sizes": {}}
    for f in files:
        part = json.loads(Path(f).read_text())
        for k, v in part.items():
            if k == "sizes":
                doc["sizes"].update(v)
            elif k not in doc:
                doc[k] = v
        doc.setdefault("commits", {})[f] = part.get("commit")
    doc["targets"] = evaluate(doc)
    text = json.dumps(doc, indent=1, default=str)
    if out:
        Path(out).write_text(text)
    print(table(doc))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    BROKER_OPTIONS[:] = args.broker_option
    if args.report:
        return report(args.report, args.json)
    doc: dict[str, Any] = {"commit": commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": machine(), "scan_interval_s": SCAN_INTERVAL, "sizes": {}}

    def interrupted(signum, frame):  # SIGTERM: unwind so every child is stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    t0 = time.monotonic()
    for size in args.sizes:
        runs = []
        for _ in range(max(1, args.repeat)):
            ts = time.monotonic()
            res = asyncio.run(run_size(size, args))
            res["wall_s"] = round(time.monotonic() - ts, 1)
            log(f"{size}: done in {res['wall_s']} s")
            runs.append(res)
        doc["sizes"][str(size)] = median_run(runs)
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    doc["targets"] = evaluate(doc)
    text = json.dumps(doc, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
