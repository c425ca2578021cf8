"""The status web server on the real bridge: /health, /metrics (parsed by Prometheus' own parser),
/api/status, and the page rendered by a real headless chromium (DOM after its script ran, and a
screenshot kept in the test's tmp_path)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from fleetbridge.broker import free_port
from fleetbridge.web import start_web
from fleetbridge_plugins.opengps.simulator import create_app

pytestmark = pytest.mark.e2e

PASSWORD = "Status-page-pw-93"
DEVICES = 6
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    app = create_app(accounts={"fleet": PASSWORD}, devices=DEVICES, seed=5, tick=0, command_delay=(0.1, 0.2))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    simulator = app["sim"]
    simulator.url = str(server.make_url("")).rstrip("/")
    yield simulator
    await server.close()


def write_config(tmp_path: Path, mqtt_port: int, sim: Any, unique: str, **account: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "base_topic": f"web{unique}",
                 "discovery_prefix": f"haweb{unique}", "client_id": f"web-{unique}"},
        "storage": str(tmp_path / "fb.db"),
        "http": {"port": 0},  # a free port, chosen when the server starts
        "accounts": [{"platform": "opengps", "name": "Vans", "base_url": sim.url, "account": "fleet",
                      "password": PASSWORD, "scan_interval": 1, "event_interval": 1, "timeout": 2,
                      "rate_limits": {"auth": 0, "track": 0, "device_list": 0, "playback": 0},
                      "command_poll_interval": 0.05, **account}],
    }, sort_keys=False))
    return path


@pytest.fixture
async def serve(bridge_runner: Any) -> AsyncIterator[Callable[[Path], Any]]:
    """Start the bridge on a config and its web server (as ``fleetbridge run`` does); -> (bridge, url)."""
    async with AsyncExitStack() as stack:
        async def start(config: Path) -> tuple[Any, str]:
            bridge = (await bridge_runner(config)).bridge
            return bridge, await start_web(bridge, bridge.config.http, stack)

        yield start


async def until(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not (result := predicate()):
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return result


async def fetch(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def get_health(url: str) -> tuple[int, dict[str, Any]]:
    status, _, text = await fetch(url + "health")
    return status, json.loads(text)


def all_polled(bridge: Any) -> bool:
    acc = bridge.accounts["vans"]
    return len(acc.devices) == DEVICES and all(d.state for d in acc.devices.values())


def samples(text: str) -> dict[str, list[Any]]:
    """Metric family name -> its samples, parsed by prometheus_client."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(families: dict[str, list[Any]], sample_name: str, **labels: str) -> float:
    family = sample_name.removesuffix("_total")
    matching = [s.value for s in families[family] if s.name == sample_name
                and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (sample_name, labels, families[family])
    return matching[0]


async def test_health_metrics_and_status_json(tmp_path: Path, broker: Any, sim: Any, unique: str,
                                              serve: Any) -> None:
    bridge, url = await serve(write_config(tmp_path, broker.port, sim, unique))
    await until(lambda: all_polled(bridge) and bridge.mqtt.connected.is_set(), "every device polled")
    imei = next(i for i, d in sim.devices.items() if d.datastatus == 2 and not d.never_answers)
    bridge.handle_command("vans", imei, "reboot", b"PRESS", source="test")
    bridge.handle_command("vans", imei, "engine_stop", b"PRESS", source="test")  # not enabled: rejected
    await until(lambda: bridge.stats["results"].get("success"), "the reboot's success")
    bridge.recent_events.append({"event_type": "general", "account": "vans", "device": imei,
                                 "at": "2026-01-01T00:00:00Z", "vendor_name": f"note {PASSWORD}"})

    status, health = await get_health(url)
    assert status == 200 and health["status"] == "ok" and health["mqtt"] == "connected", health
    assert health["accounts"] == {"vans": "ok"}

    status, content_type, text = await fetch(url + "metrics")
    assert status == 200 and content_type.startswith("text/plain") and "version=0.0.4" in content_type
    families = samples(text)
    vans = {"account": "vans", "platform": "opengps"}
    assert value(families, "fleetbridge_devices", **vans) == DEVICES
    assert value(families, "fleetbridge_account_up", **vans) == 1
    assert value(families, "fleetbridge_account_status", status="ok", **vans) == 1
    assert value(families, "fleetbridge_polls_total", **vans) >= 1
    assert value(families, "fleetbridge_vendor_requests_total", kind="track", **vans) >= 1
    assert value(families, "fleetbridge_mqtt_connected") == 1
    assert value(families, "fleetbridge_mqtt_messages_published_total") > DEVICES
    assert value(families, "fleetbridge_command_results_total", status="success") == 1
    assert value(families, "fleetbridge_command_results_total", status="rejected") == 1
    assert value(families, "fleetbridge_commands_total") == 2
    assert value(families, "fleetbridge_pending_commands", **vans) == 0
    assert "fleetbridge_errors" in families and "fleetbridge_rate_budget_requests" in families
    assert families["fleetbridge_mqtt_messages_published"][0].name.endswith("_total")  # a counter

    status, _, text = await fetch(url + "api/status")
    data = json.loads(text)
    assert status == 200 and len(data["devices"]) == DEVICES and data["accounts"][0]["id"] == "vans"
    assert sorted((j["service"], j["status"]) for j in data["journal"]) == [("engine_stop", "rejected"),
                                                                         ("reboot", "success")]
    for page in ("", "api/status", "metrics", "health"):
        assert PASSWORD not in (await fetch(url + page))[2], page


async def test_health_is_503_without_the_broker(tmp_path: Path, sim: Any, unique: str, serve: Any) -> None:
    _, url = await serve(write_config(tmp_path, free_port(), sim, unique))  # nothing listens there
    status, health = await get_health(url)
    assert status == 503 and health["mqtt"] == "disconnected"
    assert any("MQTT broker" in p for p in health["problems"]), health
    assert value(samples((await fetch(url + "metrics"))[2]), "fleetbridge_mqtt_connected") == 0


async def test_health_is_503_when_an_account_fails_past_its_grace(tmp_path: Path, broker: Any, sim: Any,
                                                                  unique: str, serve: Any) -> None:
    sim.faults.http_500 = 1.0  # the vendor is down from the start
    bridge, url = await serve(write_config(tmp_path, broker.port, sim, unique, offline_grace=1))
    await until(lambda: bridge.mqtt.connected.is_set() and not bridge.accounts["vans"].available,
                "the account past its grace")
    status, health = await get_health(url)
    assert status == 503 and health["mqtt"] == "connected"
    assert health["problems"] and all(p.startswith("account vans: unreachable") for p in health["problems"])
    families = samples((await fetch(url + "metrics"))[2])
    assert value(families, "fleetbridge_account_up", account="vans") == 0
    assert sum(s.value for s in families["fleetbridge_errors"] if s.labels["account"] == "vans") >= 1


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("the status page test needs Debian's chromium: apt-get install -y chromium (.ci/run does)")
    return binary


async def run_chromium(tmp_path: Path, *args: str) -> bytes:
    """Headless chromium with ``args``; its stdout. Async, so the bridge keeps answering meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


def png_rows(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and the (filtered) scanlines of a PNG: enough to tell a blank image."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        header, idat = (chunk, idat) if kind == b"IHDR" else (header, idat + chunk if kind == b"IDAT" else idat)
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    stride = 1 + width * {2: 3, 6: 4}[color] * depth // 8
    raw = zlib.decompress(idat)
    assert len(raw) == stride * height
    return width, height, [raw[i:i + stride] for i in range(0, len(raw), stride)]


async def test_status_page_renders_in_chromium(tmp_path: Path, broker: Any, sim: Any, unique: str,
                                               serve: Any) -> None:
    bridge, url = await serve(write_config(tmp_path, broker.port, sim, unique))
    await until(lambda: all_polled(bridge), "every device polled")
    imei = next(i for i, d in sim.devices.items() if d.datastatus == 2 and not d.never_answers)
    bridge.handle_command("vans", imei, "reboot", b"PRESS", source="test")
    await until(lambda: bridge.stats["results"].get("success"), "the reboot's success")
    located = [d for d in bridge.accounts["vans"].devices.values() if "latitude" in d.state]
    assert located

    dom = (await run_chromium(tmp_path, "--dump-dom", url)).decode()
    (tmp_path / "status.html").write_text(dom)
    assert 'data-rendered="' in dom, "the page's script did not run"
    assert len(re.findall(r'<tr class="device-row"', dom)) == DEVICES
    assert len(re.findall(r'<circle [^>]*class="marker"', dom)) == len(located)
    assert len(re.findall(r'<line [^>]*class="grid"', dom)) >= 2  # the lat/lon grid
    assert re.search(r'<tr data-account="vans">.*?badge st-ok', dom), "the account row"
    journal = dom[dom.index('id="journal"'):]
    assert "reboot" in journal and "st-success" in journal
    assert PASSWORD not in dom

    shot = tmp_path / "status.png"
    await run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", url)
    width, height, rows = png_rows(shot)
    assert (width, height) == (1280, 1600)
    assert len(set(rows)) > 200, "the screenshot is (nearly) blank"
