"""The plugin contract through a real installation (entry points), and the CLI as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).parent.parent / "examples" / "fleetbridge-acme"

BUGGY = '''
"""A plugin whose platform's set-up raises: only its own account may suffer."""
from fleetbridge import hookimpl
from fleetbridge_acme import AcmePlatform


class BuggyPlatform(AcmePlatform):
    name = "acme_buggy"

    async def async_setup(self):
        raise RuntimeError("bug in the plugin")


@hookimpl
def fleetbridge_register_platforms(register):
    register(BuggyPlatform)
'''


def install_dist(site: Path, dist: str, module: str, source: str, entry: str) -> None:
    """Lay out a package and its .dist-info exactly as pip would (importlib.metadata finds it)."""
    pkg = site / module
    pkg.mkdir()
    (pkg / "__init__.py").write_text(source)
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[fleetbridge]\n{entry} = {module}\n")


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin of docs/plugins.md, installed by pip as a user would."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", "--target", str(site), str(EXAMPLE)], check=True,
                   capture_output=True, timeout=300)
    assert list(site.glob("fleetbridge_acme-*.dist-info"))
    return site


@pytest.fixture
def site(tmp_path: Path, example_site: Path) -> Path:
    site = tmp_path / "site"
    shutil.copytree(example_site, site)
    install_dist(site, "broken_plugin", "broken_plugin", "raise ImportError('vendor SDK missing')\n", "broken")
    install_dist(site, "buggy_plugin", "buggy_plugin", BUGGY, "buggy")
    return site


def env_with(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def fleetbridge(*args: str, site: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetbridge", *args], capture_output=True, text=True,
                          timeout=timeout, env=env_with(site) if site else None)


def test_plugins_command_lists_builtin_and_third_party(site: Path) -> None:
    out = fleetbridge("plugins", "--json", site=site)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data["platforms"]) >= {"opengps", "acme"}
    assert data["platforms"]["opengps"]["plugin"] == "opengps"  # built-in, through its entry point
    assert data["platforms"]["opengps"]["services"]["engine_stop"].startswith("dangerous")
    assert "vendor SDK missing" in data["unavailable"]["broken"]
    assert data["platforms"]["acme"]["plugin"] == "acme"  # the pip-installed example
    assert len([line for line in out.stderr.splitlines() if "broken" in line]) == 1  # one clear log line


async def test_third_party_plugin_devices_published_and_broken_one_isolated(
        tmp_path: Path, site: Path, broker: Any, unique: str, recorder_factory: Any) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": f"tp{unique}",
                 "discovery_prefix": f"hatp{unique}", "client_id": f"tp-{unique}"},
        "accounts": [
            {"platform": "acme", "name": "Acme", "token": "tok-SECRET-123", "scan_interval": 1},
            {"platform": "broken", "name": "Broken", "whatever": 1},
            {"platform": "acme_buggy", "name": "Buggy", "token": "tok-other-456"},
        ],
    }))
    rec = await recorder_factory(broker.port, [f"tp{unique}/#", f"hatp{unique}/#"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetbridge", "--log-level", "debug", "run", "-c", str(config),
        env=env_with(site), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await rec.wait_for(lambda: f"tp{unique}/acme/acme-2/state" in rec.latest, timeout=20,
                           what="third-party device state")
        assert rec.json(f"tp{unique}/acme/acme-1/state") == {"battery": 80, "latitude": 48.137,
                                                             "longitude": 11.575, "online": True}
        cfg = rec.json(f"hatp{unique}/device/acme_acme-1/config")
        assert cfg["dev"]["mf"] == "Acme" and "reboot" in cfg["cmps"] and cfg["cmps"]["alarm"]["p"] == "event"
        await rec.wait_for(lambda: rec.on(f"tp{unique}/acme/acme-1/event"), what="the plugin's event")
        assert rec.on(f"tp{unique}/acme/acme-1/event")[0]["event_type"] == "sos"
        await rec.wait_for(lambda: rec.json(f"tp{unique}/bridge/info")["accounts"]["broken"]["status"]
                           == "disabled", what="broken account disabled")
        await rec.wait_for(lambda: rec.json(f"tp{unique}/bridge/info")["accounts"]["buggy"]["status"]
                           == "disabled", what="account whose set-up raises disabled")
        await rec.publish(f"tp{unique}/acme/acme-1/reboot/set", "PRESS")
        topic = f"tp{unique}/acme/acme-1/reboot/result"
        await rec.wait_for(lambda: len(rec.on(topic)) >= 2, what="reboot results")
        assert [r["status"] for r in rec.on(topic)] == ["pending", "success"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert rec.latest[f"tp{unique}/bridge/state"] == b"offline"
    logs = stderr.decode()
    assert "tok-SECRET-123" not in logs
    assert all("tok-SECRET-123" not in p.decode(errors="replace") for _, p, _ in rec.messages)


@pytest.mark.parametrize(
    "body, expect",
    [
        ("accounts:\n  - platform: opengps\n    name: Vans\n    base_url: http://x\n    account: a\n"
         "    pasword: secret-typo\n", ["line 6", "pasword", "password"]),
        ("accounts:\n  - platform: opengps\n    name: Vans\n    base_url: http://x\n    account: a\n",
         ["line 2", "password"]),
        ("accounts:\n  - platform: opengps\n    name: Vans\n    base_url: http://x\n    account: a\n"
         "    password: pw-000\n    scan_interval: often\n", ["line 7", "scan_interval"]),
        ("accounts:\n  - platform: opengps\n    name: Vans\n    base_url: http://x\n    account: a\n"
         "    password: pw-000\n    scan_interval: 1" + "0" * 400 + "\n", ["line 7", "scan_interval", "a number"]),
        ("accounts:\n  - platform: opengps\n    name: Vans\n    base_url: http://x\n    account: a\n"
         "    password: pw-000\n    event_concurrency: .nan\n", ["line 7", "event_concurrency", "an integer"]),
        ("accounts:\n  - platform: opengps\n    name: [unclosed\n", ["line"]),
        ("accounts:\n  - platform: opengsp\n    name: Vans\n", ["line 2", "opengps"]),
    ],
    ids=["typo", "missing-credential", "wrong-type", "huge-number", "nan", "malformed-yaml", "unknown-platform"],
)
def test_bad_config_exits_2_with_file_and_line(tmp_path: Path, body: str, expect: list[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(body)
    out = fleetbridge("check-config", "-c", str(config))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "bad.yaml" in out.stderr
    for word in expect:
        assert word in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert "secret-typo" not in out.stderr or "pasword" in out.stderr


def test_example_config_is_valid() -> None:
    out = fleetbridge("check-config", "-c", str(Path(__file__).parent.parent / "config.example.yaml"))
    assert out.returncode == 0, out.stderr
    assert all(acc in out.stdout for acc in ("demo_trackers", "demo_sims", "demo_gateways", "demo_inventory",
                                             "demo_handsets"))


def test_help_everywhere() -> None:
    for command in ("run", "check-config", "plugins", "devices", "call", "history", "simulate"):
        out = fleetbridge(command, "--help")
        assert out.returncode == 0 and "usage:" in out.stdout, command


SIM_CONFIG = """
storage: {storage}
accounts:
  - platform: opengps
    name: Vans
    simulator: {{devices: 3, seed: 3}}
    account: demo
    password: demo-password
    rate_limits: {{auth: 0, track: 0, playback: 0}}
"""
ANSWERING = "351732065615943"  # answers commands in the seed-3 simulator fleet


def test_call_devices_and_history_commands(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(SIM_CONFIG.format(storage=tmp_path / "fb.db"))
    out = fleetbridge("call", "-c", str(config), "vans", ANSWERING, "reboot")
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["status"] for r in results] == ["pending", "success"]
    rejected = fleetbridge("call", "-c", str(config), "vans", ANSWERING, "engine_stop")
    assert rejected.returncode == 1 and json.loads(rejected.stdout)["status"] == "rejected"

    table = fleetbridge("devices", "-c", str(config))
    assert table.returncode == 0 and ANSWERING in table.stdout and "latitude=" in table.stdout

    track = fleetbridge("history", "-c", str(config), "vans", ANSWERING, "--since", "3h", "--until", "1h",
                        "--format", "geojson", "--distance")
    assert track.returncode == 0, track.stderr
    feature = json.loads(track.stdout)
    coords = feature["geometry"]["coordinates"]
    assert len(coords) > 100 and all(50 < lat < 55 for _, lat in coords)
    assert "distance:" in track.stderr
    csv = fleetbridge("history", "-c", str(config), "vans", ANSWERING, "--since", "2h", "--format", "csv")
    assert csv.stdout.splitlines()[0].startswith("time,latitude,longitude")


async def test_simulate_command_serves_the_vendor_api() -> None:
    import hashlib
    import socket
    import time

    import aiohttp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetbridge", "simulate", "opengps", "--devices", "7", "--port", str(port),
        "--credential", "account=alice", "--credential", "password=pw-alice-1", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b"simulator" in line
        t = int(time.time())
        sig = hashlib.md5((hashlib.md5(b"pw-alice-1").hexdigest() + str(t)).encode()).hexdigest()
        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/api/authorization",
                                           params={"time": t, "account": "alice", "signature": sig}) as resp:
                        token = (await resp.json(content_type=None))["record"]["access_token"]
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            async with session.get(f"http://127.0.0.1:{port}/api/device/list",
                                   params={"access_token": token}) as resp:
                assert len((await resp.json(content_type=None))["record"]) == 7
    finally:
        proc.terminate()
        await proc.wait()


async def test_readme_one_command_runs_the_example(tmp_path: Path, recorder_factory: Any) -> None:
    """The README's `fleetbridge run -c config.example.yaml`: embedded mosquitto, bundled simulator."""
    import re
    import shutil

    shutil.copy(Path(__file__).parent.parent / "config.example.yaml", tmp_path / "config.yaml")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetbridge", "run", "-c", str(tmp_path / "config.yaml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    log = b""
    try:
        while b"Embedded MQTT broker" not in log:
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, f"the bridge exited: {log.decode(errors='replace')}"
            log += line
        port = int(re.search(rb"127\.0\.0\.1:(\d+)", log.splitlines()[-1]).group(1))
        rec = await recorder_factory(port, ["fleetbridge/#", "homeassistant/#"])
        platforms = {"opengps", "lattigo", "amm", "airvantage", "tangoe"}

        def every_platform_published() -> bool:
            devices = json.loads(rec.latest.get("fleetbridge/bridge/devices", b"[]"))
            states = {t.rsplit("/", 1)[0] for t in rec.latest if t.endswith("/state") and rec.latest[t]}
            return {d["platform"] for d in devices} == platforms and all(
                f"fleetbridge/{d['account']}/{d['id']}" in states for d in devices)

        await rec.wait_for(every_platform_published, timeout=60, what="devices and states of all five platforms")
        devices = json.loads(rec.latest["fleetbridge/bridge/devices"])
        assert all(f"homeassistant/device/{d['account']}_{d['id']}/config" in rec.latest for d in devices)
        await rec.wait_for(lambda: {a["status"] for a in json.loads(rec.latest["fleetbridge/bridge/info"])
                                    ["accounts"].values()} == {"ok"}, what="every account ok")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    assert (tmp_path / "fleetbridge.db").exists()


async def test_common_mistakes_end_in_one_readable_line(tmp_path: Path) -> None:
    """Wrong password, unreachable vendor, unknown service, disabled dangerous service."""
    from aiohttp.test_utils import TestServer

    from fleetbridge_plugins.opengps.simulator import create_app

    server = TestServer(create_app(accounts={"demo": "right-pw-1"}, devices=3, seed=3, tick=0), host="127.0.0.1")
    await server.start_server()
    try:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"storage": str(tmp_path / "fb.db"), "accounts": [
            {"platform": "opengps", "name": "Vans", "base_url": str(server.make_url("")).rstrip("/"),
             "account": "demo", "password": "wrong-pw-1", "rate_limits": {"auth": 0}},
            {"platform": "opengps", "name": "Gone", "base_url": "http://127.0.0.1:9", "account": "demo",
             "password": "right-pw-1", "timeout": 2}]}))
        wrong, gone = await asyncio.gather(*(asyncio.to_thread(
            fleetbridge, "call", "-c", str(config), acc, "x", "reboot") for acc in ("vans", "gone")))
    finally:
        await server.close()
    for out, words in ((wrong, "account or password"), (gone, "reachable")):
        assert out.returncode == 1
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in errors[0], out.stderr
        assert "Traceback" not in out.stderr and "wrong-pw-1" not in out.stderr

    sim_config = tmp_path / "sim.yaml"
    sim_config.write_text(SIM_CONFIG.format(storage=tmp_path / "sim.db"))
    for service, words in (("fly", "not supported"), ("unlock_doors", "enable it under services:")):
        out = fleetbridge("call", "-c", str(sim_config), "vans", ANSWERING, service)
        result = json.loads(out.stdout)
        assert out.returncode == 1 and result["status"] == "rejected" and words in result["detail"], result


def test_the_bridge_runs_on_uvloop_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetbridge.cli import run_loop

    async def loop_kind() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert run_loop(loop_kind()) == "uvloop"  # a dependency wherever the bridge runs in CI
    monkeypatch.setenv("FLEETBRIDGE_EVENT_LOOP", "asyncio")
    assert run_loop(loop_kind()) == "asyncio"
