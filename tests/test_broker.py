"""The embedded broker: mosquitto when installed, amqtt 0.12.1 in-process otherwise. amqtt re-sends the
retained messages matching *other* clients' subscriptions to every newly connecting client; the bridge
must never act on a retained command, on either broker."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from aiohttp.test_utils import TestServer

from fleetbridge import broker
from fleetbridge.errors import ConfigError
from fleetbridge_plugins.opengps.simulator import create_app

pytestmark = pytest.mark.e2e

PASSWORD = "Broker-test-pw-7"
EXAMPLE = Path(__file__).parent.parent / "config.example.yaml"


@pytest.fixture
def no_mosquitto(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without mosquitto, as far as the embedded broker can tell."""
    monkeypatch.setattr(broker, "find_mosquitto", lambda: None)


@pytest.fixture(params=["mosquitto", "amqtt"])
async def embedded(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, int]]:
    """Each embedded broker in turn: (kind, port)."""
    if request.param == "mosquitto" and broker.find_mosquitto() is None:
        pytest.fail("mosquitto is required for this test: apt-get install mosquitto (.ci/run does)")
    async with AsyncExitStack() as stack:
        yield request.param, (await broker.start_embedded_broker(stack, request.param)).port


async def roundtrip(port: int) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="roundtrip") as client:
        await client.subscribe("probe/#", qos=1)
        await client.publish("probe/x", b"hello", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(client.messages))
        assert (str(message.topic), message.payload) == ("probe/x", b"hello")


async def test_prefers_mosquitto_and_stops_it(caplog: pytest.LogCaptureFixture) -> None:
    if broker.find_mosquitto() is None:
        pytest.fail("mosquitto is required for this test: apt-get install mosquitto (.ci/run does)")
    caplog.set_level(logging.INFO, "fleetbridge.broker")
    async with AsyncExitStack() as stack:
        cfg = await broker.start_embedded_broker(stack)
        assert cfg.host == "127.0.0.1" and "(mosquitto)" in caplog.text
        await roundtrip(cfg.port)
    assert not await broker.wait_for_port(cfg.port, timeout=0.3), "stopped with the stack"
    assert broker.mosquitto_conf(1234).startswith("listener 1234 127.0.0.1\n")


async def test_falls_back_to_amqtt_without_mosquitto(no_mosquitto: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fleetbridge.broker")
    async with AsyncExitStack() as stack:
        cfg = await broker.start_embedded_broker(stack)
        assert "(amqtt, in-process)" in caplog.text
        await roundtrip(cfg.port)
    assert not await broker.wait_for_port(cfg.port, timeout=0.3)
    assert broker.amqtt_config(1234)["listeners"] == {"default": {"type": "tcp", "bind": "127.0.0.1:1234"}}


async def test_the_choice_can_be_forced(no_mosquitto: None, monkeypatch: pytest.MonkeyPatch) -> None:
    async with AsyncExitStack() as stack:
        monkeypatch.setenv(broker.ENV_KIND, "mosquitto")
        with pytest.raises(ConfigError, match="no mosquitto was found"):
            await broker.start_embedded_broker(stack)
        monkeypatch.setenv(broker.ENV_KIND, "rabbit")
        with pytest.raises(ConfigError, match="expected one of auto, mosquitto, amqtt"):
            await broker.start_embedded_broker(stack)


async def test_amqtt_resends_retained_messages_of_other_subscriptions(no_mosquitto: None) -> None:
    """The 0.12.1 behaviour the bridge is tested against (pinned): if this changes, revisit the tests."""
    async with AsyncExitStack() as stack:
        port = (await broker.start_embedded_broker(stack)).port
        async with aiomqtt.Client("127.0.0.1", port, identifier="subscriber") as sub:
            await sub.subscribe("fb/#", qos=1)
            await sub.publish("fb/a/b/reboot/set", b"PRESS", qos=1, retain=True)
            async with aiomqtt.Client("127.0.0.1", port, identifier="newcomer") as newcomer:  # subscribes nothing
                async with asyncio.timeout(5):
                    message = await anext(aiter(newcomer.messages))
                assert (str(message.topic), message.retain) == ("fb/a/b/reboot/set", True)


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    app = create_app(accounts={"fleet": PASSWORD}, devices=4, seed=3, tick=0, command_delay=(0.1, 0.2))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    app["sim"].url = str(server.make_url("")).rstrip("/")
    yield app["sim"]
    await server.close()


async def test_bridge_never_acts_on_retained_commands(embedded: tuple[str, int], sim: Any, tmp_path: Path,
                                                      bridge_runner: Any, recorder_factory: Any) -> None:
    _, port = embedded
    imei = next(i for i, d in sim.devices.items() if d.datastatus == 2 and not d.never_answers)
    ha = await recorder_factory(port, ["fb/#", "elsewhere/#"])  # subscriptions amqtt replays to newcomers
    for topic in (f"fb/vans/{imei}/reboot/set", f"elsewhere/vans/{imei}/reboot/set"):
        await ha.publish(topic, "PRESS", retain=True)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "mqtt": {"host": "127.0.0.1", "port": port, "base_topic": "fb", "discovery_prefix": "ha", "client_id": "fb"},
        "storage": str(tmp_path / "fb.db"),
        "accounts": [{"platform": "opengps", "name": "Vans", "base_url": sim.url, "account": "fleet",
                      "password": PASSWORD, "scan_interval": 1, "event_interval": 30, "command_poll_interval": 0.05,
                      "rate_limits": {"auth": 0, "track": 0, "device_list": 0}}],
    }))
    bridge = (await bridge_runner(config)).bridge
    await ha.wait_for(lambda: f"fb/vans/{imei}/state" in ha.latest, what="the bridge's states")
    await asyncio.sleep(0.5)
    assert bridge.store.journal() == [] and bridge.stats["commands"] == 0
    assert sim.request_counts["/api/command/send"] == 0
    assert not ha.on(f"fb/vans/{imei}/reboot/result")

    await ha.publish(f"fb/vans/{imei}/reboot/set", "PRESS")  # a live command still works
    await ha.wait_for(lambda: any(r["status"] == "success" for r in ha.on(f"fb/vans/{imei}/reboot/result")),
                      what="the live command's success")
    assert sim.request_counts["/api/command/send"] == 1


async def test_demo_runs_on_amqtt(tmp_path: Path, recorder_factory: Any) -> None:
    """``fleetbridge run`` on the example config with no mosquitto: amqtt, and a client attaches to it."""
    shutil.copy(EXAMPLE, tmp_path / "config.yaml")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetbridge", "run", "-c", str(tmp_path / "config.yaml"),
        env={**os.environ, broker.ENV_KIND: "amqtt"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    log = b""
    try:
        while not (found := re.search(rb"Embedded MQTT broker \(amqtt, in-process\) on 127\.0\.0\.1:(\d+)", log)):
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, f"the bridge exited: {log.decode(errors='replace')}"
            log += line
        rec = await recorder_factory(int(found[1]), ["fleetbridge/#", "homeassistant/#"])
        await rec.wait_for(lambda: len([t for t in rec.latest if t.startswith("fleetbridge/demo_trackers/")
                                        and t.endswith("/state")]) >= 9, timeout=30, what="the demo fleet's states")
        assert len([t for t in rec.latest if t.startswith("homeassistant/device/demo_trackers_")]) == 10
        assert rec.latest["fleetbridge/bridge/state"] == b"online"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, (log + err).decode(errors="replace")[-3000:]
    assert b"Traceback" not in log + err
