"""Vendor faults for every platform, end to end: each fault its simulator offers is switched on
while the real bridge runs against it and a real mosquitto. The account's status in bridge/info
says what is wrong, nothing crashes, and when the fault ends the account recovers by itself and
its states flow again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from fleetbridge.plugins import load_plugins

pytestmark = pytest.mark.e2e

#: platform -> account config (credentials the simulator is created with, fast polling)
PLATFORMS: dict[str, dict[str, Any]] = {
    "opengps": {"account": "fm", "password": "fm-password-1", "rate_limits": {"auth": 0, "track": 0,
                                                                             "device_list": 0}},
    "lattigo": {"key_name": "fm", "api_key": "fm-api-key-1"},
    "amm": {"client_id": "fm", "client_secret": "fm-secret-1", "username": "fm", "password": "fm-password-1",
            "group_rate_limit": 99_999, "system_rate_limit": 99_999},
    "airvantage": {"client_id": "fm", "client_secret": "fm-secret-1", "username": "fm",
                   "password": "fm-password-1"},
    "tangoe": {"tenant": "fm", "client_id": "fm", "client_secret": "fm-secret-1", "username": "fm",
               "password": "fm-password-1"},
}
#: fault -> the account status it must show
FAULTS = {"http_500": "unreachable", "html_error": "unreachable", "malformed_json": "unreachable",
          "rate_limit": "rate_limited"}


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
async def test_every_fault_is_reported_survived_and_recovered(platform: str, tmp_path: Path, broker: Any,
                                                              unique: str, bridge_runner: Any,
                                                              recorder_factory: Any) -> None:
    cls = load_plugins().platforms[platform]
    creds = PLATFORMS[platform]
    app = cls.create_simulator(creds, 4, 3)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    sim = app["sim"]
    url = str(server.make_url("")).rstrip("/")
    account = {"platform": platform, "name": "Fm", "base_url": url, "scan_interval": 1, "timeout": 2,
               "offline_grace": 2, **creds}
    if platform == "tangoe":
        account["token_url"] = f"{url}/as/token.oauth2"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": f"fm{unique}", "client_id": f"fm-{unique}",
                 "discovery": False},
        "storage": str(tmp_path / "fb.db"), "accounts": [account]}))
    info_topic = f"fm{unique}/bridge/info"
    rec = await recorder_factory(broker.port, [f"fm{unique}/#"])
    try:
        await bridge_runner(config)

        def status() -> str:
            return json.loads(rec.latest.get(info_topic, b"{}")).get("accounts", {}).get("fm", {}).get("status", "")

        await rec.wait_for(lambda: status() == "ok", timeout=30, what="the account ok")
        offered = [f for f in FAULTS if f in sim.faults.as_dict()]
        assert {"http_500", "html_error", "malformed_json"} <= set(offered)
        for fault in offered:
            states_before = sum(1 for t, _, _ in rec.messages if t.endswith("/state"))
            sim.faults.update({fault: 1.0})  # every request
            await rec.wait_for(lambda: status() == FAULTS[fault], timeout=30, what=f"{fault} reported")
            detail = json.loads(rec.latest[info_topic])["accounts"]["fm"]["detail"]
            assert detail and "Traceback" not in detail
            sim.faults.reset()
            await rec.wait_for(lambda: status() == "ok", timeout=60, what=f"recovery after {fault}")
            assert all(rec.latest.get(t) == b"online" for t in rec.latest if t.endswith("/availability"))
            assert sum(1 for t, _, _ in rec.messages if t.endswith("/state")) >= states_before
        assert any(t.endswith("/state") for t in rec.latest), "no state ever arrived"
    finally:
        await server.close()


async def test_slow_vendor_and_refused_connection(tmp_path: Path, broker: Any, unique: str, bridge_runner: Any,
                                                  recorder_factory: Any) -> None:
    """A vendor slower than the timeout, and one that refuses connections: both reported as
    unreachable, devices go offline only after the grace, nothing crashes."""
    cls = load_plugins().platforms["opengps"]
    creds = PLATFORMS["opengps"]
    app = cls.create_simulator(creds, 3, 3)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": f"sl{unique}", "client_id": f"sl-{unique}"},
        "storage": str(tmp_path / "fb.db"),
        "accounts": [{"platform": "opengps", "name": "Slow", "base_url": url, "scan_interval": 1, "timeout": 1,
                      "offline_grace": 2, **creds},
                     {"platform": "opengps", "name": "Refused", "base_url": "http://127.0.0.1:9", **creds}]}))
    rec = await recorder_factory(broker.port, [f"sl{unique}/#"])
    try:
        await bridge_runner(config)

        def accounts() -> dict[str, Any]:
            return json.loads(rec.latest.get(f"sl{unique}/bridge/info", b"{}")).get("accounts", {})

        await rec.wait_for(lambda: accounts().get("slow", {}).get("status") == "ok", timeout=30, what="slow ok")
        availability = [t for t in rec.latest if t.startswith(f"sl{unique}/slow/") and t.endswith("/availability")]
        app["sim"].faults.slow = 3.0  # longer than the 1 s timeout
        await rec.wait_for(lambda: accounts()["slow"]["status"] == "unreachable", timeout=20, what="slow reported")
        await rec.wait_for(lambda: all(rec.latest[t] == b"offline" for t in availability), timeout=20,
                           what="offline after the grace")
        assert accounts()["refused"]["status"] == "unreachable"
        assert "reachable" in accounts()["refused"]["detail"]
        app["sim"].faults.slow = 0
        await rec.wait_for(lambda: all(rec.latest[t] == b"online" for t in availability), timeout=30,
                           what="back online")
    finally:
        await server.close()
