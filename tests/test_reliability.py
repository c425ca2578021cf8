"""Reliability and security, proven against real parts: the bridge as a separate process (so it can
be SIGKILLed), the tracker simulator, a real mosquitto."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from fleetbridge_plugins.opengps.simulator import create_app

pytestmark = pytest.mark.e2e

PASSWORD = "Reli-Secret-pw-77"


@pytest.fixture
async def sim() -> Any:
    app = create_app(accounts={"fleet": PASSWORD}, devices=8, seed=5, tick=0, command_delay=(3.0, 3.5),
                     alarm_cap=1000)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    app["sim"].url = str(server.make_url("")).rstrip("/")
    yield app["sim"]
    await server.close()


class BridgeProcess:
    """``python -m fleetbridge run`` in its own process, with its log captured."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.log = bytearray()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleetbridge", "--log-level", "debug", "run", "-c", str(self.config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc and self.proc.stderr
        while chunk := await self.proc.stderr.read(65536):
            self.log += chunk

    async def kill(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def stop(self) -> int:
        assert self.proc
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 20)
        await asyncio.gather(self._reader, return_exceptions=True)
        return self.proc.returncode


@pytest.fixture
async def processes() -> Any:
    started: list[BridgeProcess] = []

    async def start(config: Path) -> BridgeProcess:
        bp = BridgeProcess(config)
        await bp.start()
        started.append(bp)
        return bp

    yield start
    for bp in started:
        if bp.proc and bp.proc.returncode is None:
            await bp.kill()


def write_config(tmp_path: Path, broker: Any, sim: Any, unique: str, **account: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": f"rl{unique}",
                 "discovery_prefix": f"harl{unique}", "client_id": f"rl-{unique}", "keepalive": 5},
        "storage": str(tmp_path / "fb.db"),
        "accounts": [{"platform": "opengps", "name": "Vans", "base_url": sim.url, "account": "fleet",
                      "password": PASSWORD, "scan_interval": 1, "event_interval": 1, "timeout": 3,
                      "rate_limits": {"auth": 0, "track": 0, "device_list": 0}, "command_poll_interval": 0.3,
                      **account}]}))
    return path


def answering(sim: Any) -> str:
    return next(i for i, d in sim.devices.items() if d.datastatus == 2 and not d.never_answers)


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


async def test_sigkill_during_a_pending_command(tmp_path: Path, broker: Any, sim: Any, unique: str,
                                                processes: Any, recorder_factory: Any) -> None:
    """Killed while the device has not answered: the last will says offline, the restarted bridge
    follows the command up (never re-sends it) and reports the outcome; the store is intact."""
    config = write_config(tmp_path, broker, sim, unique)
    rec = await recorder_factory(broker.port, [f"rl{unique}/#"])
    first = await processes(config)
    imei = answering(sim)
    base = f"rl{unique}/vans/{imei}"
    await rec.wait_for(lambda: f"{base}/state" in rec.latest, timeout=20, what="state")
    await rec.publish(f"{base}/engine_resume/set", "PRESS")
    await rec.wait_for(lambda: rec.on(f"{base}/engine_resume/result"), what="pending")
    await first.kill()
    await rec.wait_for(lambda: rec.latest.get(f"rl{unique}/bridge/state") == b"offline", timeout=20,
                       what="the last will")
    assert integrity(tmp_path / "fb.db") == "ok"
    await asyncio.sleep(3.0)  # the device answers while the bridge is down
    second = await processes(config)
    await rec.wait_for(lambda: len(rec.on(f"{base}/engine_resume/result")) >= 2, timeout=30, what="outcome")
    final = rec.on(f"{base}/engine_resume/result")[-1]
    assert final["status"] == "success" and "after restart" in final["detail"]
    assert sim.request_counts["/api/command/send"] == 1
    assert await second.stop() == 0


async def test_sigkill_during_alarm_paging_loses_and_repeats_nothing(
        tmp_path: Path, broker: Any, sim: Any, unique: str, processes: Any, recorder_factory: Any) -> None:
    imei = answering(sim)
    for n in range(250):  # three pages of the 100-record alarm list, over the last ten minutes
        sim.raise_alarm(imei, (1, 4, 33)[n % 3], at=sim.t - 600 + 2 * n)
    sim.faults.slow = 0.4  # paging takes a while: the kill lands in the middle of it
    rec = await recorder_factory(broker.port, [f"rl{unique}/+/+/event"])
    config = write_config(tmp_path, broker, sim, unique)
    first = await processes(config)
    await rec.wait_for(lambda: rec.messages, timeout=40, what="the first alarms")
    await first.kill()
    assert integrity(tmp_path / "fb.db") == "ok"
    sim.faults.slow = 0
    second = await processes(config)
    topic = f"rl{unique}/vans/{imei}/event"

    def raised() -> list[Any]:
        return [e for e in rec.on(topic) if e["event_type"] in ("sos", "vibration", "jamming")]

    await rec.wait_for(lambda: len({e["id"] for e in raised()}) >= 250, timeout=60, what="all 250 alarms")
    await asyncio.sleep(2.5)
    ids = [e["id"] for e in raised()]
    assert len(set(ids)) == 250  # none lost
    # At-least-once across a SIGKILL: only the one event whose acknowledgement the kill cut off can
    # come twice, with the same id for consumers to drop (a clean stop repeats nothing).
    assert len(ids) - len(set(ids)) <= 1, len(ids) - len(set(ids))
    assert await second.stop() == 0


async def test_sigkill_during_a_sweep_keeps_the_store_intact(
        tmp_path: Path, broker: Any, sim: Any, unique: str, processes: Any, recorder_factory: Any) -> None:
    sim.faults.slow = 1.0
    rec = await recorder_factory(broker.port, [f"rl{unique}/#"])
    config = write_config(tmp_path, broker, sim, unique)
    first = await processes(config)
    await rec.wait_for(lambda: f"rl{unique}/bridge/devices" in rec.latest
                       and rec.json(f"rl{unique}/bridge/devices"), timeout=30, what="devices")
    await first.kill()  # in the middle of a slow track sweep
    assert integrity(tmp_path / "fb.db") == "ok"
    sim.faults.slow = 0
    imei = answering(sim)
    sim.devices[imei].battery = 11
    second = await processes(config)
    await rec.wait_for(lambda: rec.latest.get(f"rl{unique}/bridge/state") == b"online", what="online again")
    await rec.wait_for(lambda: json.loads(rec.latest.get(f"rl{unique}/vans/{imei}/state", b"{}")).get("battery")
                       == 11, timeout=20, what="fresh state after the restart")
    assert await second.stop() == 0
    assert integrity(tmp_path / "fb.db") == "ok"


async def test_no_secret_leaks_under_faults(tmp_path: Path, broker: Any, sim: Any, unique: str, processes: Any,
                                            recorder_factory: Any) -> None:
    """Debug logs and every MQTT message of a run with faults switching: no password, md5 of it,
    token or signature anywhere."""
    rec = await recorder_factory(broker.port, [f"rl{unique}/#", f"harl{unique}/#"])
    bp = await processes(write_config(tmp_path, broker, sim, unique, services={"engine_stop": True}))
    imei = answering(sim)
    await rec.wait_for(lambda: f"rl{unique}/vans/{imei}/state" in rec.latest, timeout=20, what="state")
    for fault in ({"rate_limit": 3}, {"http_500": 2}, {"html_error": 2}, {"malformed_json": 2},
                  {"drop_fields": 2}):
        for key, value in fault.items():
            setattr(sim.faults, key, value)
        sim.invalidate_tokens()
        await rec.publish(f"rl{unique}/vans/{imei}/reboot/set", "PRESS")
        await asyncio.sleep(1.5)
    await rec.publish(f"rl{unique}/vans/{imei}/engine_stop/set", b"\xff garbage")
    await asyncio.sleep(3)
    assert await bp.stop() == 0
    secrets = {PASSWORD, hashlib.md5(PASSWORD.encode()).hexdigest(), *sim._tokens}
    secrets |= {params["signature"] for path, params in sim.requests if "signature" in params}
    assert len(secrets) > 5  # several logins happened: there was something to leak
    haystacks = {"log": bp.log.decode(errors="replace"),
                 "mqtt": "\n".join(p.decode(errors="replace") for _, p, _ in rec.messages)}
    assert "DEBUG" in haystacks["log"]
    for where, text in haystacks.items():
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{len(leaked)} secret(s) in the {where}"


async def test_no_secret_leaks_on_any_platform(tmp_path: Path, broker: Any, unique: str, processes: Any,
                                               recorder_factory: Any) -> None:
    """Every platform at once, debug logs, faults switching: no configured password, API key or
    client secret, and no bearer or query-string token, in the logs or on the broker."""
    import re

    from fleetbridge.plugins import load_plugins

    from .test_fault_matrix import PLATFORMS

    platforms = load_plugins().platforms
    servers, sims, accounts = [], [], []
    for name, creds in sorted(PLATFORMS.items()):
        app = platforms[name].create_simulator(creds, 3, 4)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        sims.append(app["sim"])
        url = str(server.make_url("")).rstrip("/")
        accounts.append({"platform": name, "name": name, "base_url": url, "scan_interval": 1, "timeout": 2,
                         **creds, **({"token_url": f"{url}/as/token.oauth2"} if name == "tangoe" else {})})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": f"sx{unique}", "client_id": f"sx-{unique}",
                 "discovery_prefix": f"hasx{unique}"},
        "storage": str(tmp_path / "fb.db"), "accounts": accounts}))
    rec = await recorder_factory(broker.port, [f"sx{unique}/#", f"hasx{unique}/#"])
    try:
        bp = await processes(config)
        await rec.wait_for(lambda: len(json.loads(rec.latest.get(f"sx{unique}/bridge/devices", b"[]"))) >= 15,
                           timeout=40, what="devices of every platform")
        for fault in ("http_500", "html_error", "malformed_json"):
            for sim in sims:
                sim.faults.update({fault: 2})
            await asyncio.sleep(2.5)
        for sim in sims:
            sim.faults.reset()
        await asyncio.sleep(2)
        assert await bp.stop() == 0
    finally:
        for server in servers:
            await server.close()
    secrets = {v for creds in PLATFORMS.values() for k, v in creds.items()
               if k in ("password", "api_key", "client_secret")}
    secrets.add(hashlib.md5(PLATFORMS["opengps"]["password"].encode()).hexdigest())
    log = bp.log.decode(errors="replace")
    mqtt = "\n".join(p.decode(errors="replace") for _, p, _ in rec.messages)
    assert "DEBUG" in log and len(rec.messages) > 50
    for where, text in (("log", log), ("mqtt", mqtt)):
        assert not [s for s in secrets if s in text], f"a configured secret in the {where}"
        assert not re.search(r"Bearer\s+(?!\*\*\*)[A-Za-z0-9._~+/=-]{8,}", text), f"a bearer token in the {where}"
        assert not re.search(r"(access_token|refresh_token|signature)=(?!\*\*\*)[A-Za-z0-9]{8,}", text), where
