"""Shared fixtures: a real mosquitto on loopback, an MQTT recorder, the bridge run in-process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from hypothesis import settings

# The generated-input tests draw the same examples in every run (a test run, CI included, is
# reproducible); HYPOTHESIS_PROFILE=explore draws new ones each run, to search for new failures.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """A mosquitto process on 127.0.0.1 that tests can stop and start again."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = port or _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "max_queued_messages 0\n")
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The session's broker: the one .ci/run started (FLEETBRIDGE_TEST_MQTT_PORT) or our own."""
    port = os.environ.get("FLEETBRIDGE_TEST_MQTT_PORT")
    if port:
        yield Mosquitto(tmp_path_factory.mktemp("mqtt"), int(port))
        return
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.fail("mosquitto is required for the MQTT tests: apt-get install mosquitto (.ci/run does)")
    mosq = Mosquitto(tmp_path_factory.mktemp("mqtt"))
    mosq.start()
    yield mosq
    mosq.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Any:
    """A private broker for tests that stop and restart it."""
    mosq = Mosquitto(tmp_path)
    mosq.start()
    yield mosq
    mosq.stop()


class Recorder:
    """Subscribes to topics and keeps every message (and the latest per topic)."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.port = port
        self.topics = topics
        self.messages: list[tuple[str, bytes, bool]] = []
        self.latest: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()
        self.client: aiomqtt.Client | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)

    async def _run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"rec-{uuid.uuid4().hex[:8]}") as client:
            self.client = client
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            self._ready.set()
            async for msg in client.messages:
                payload = bytes(msg.payload or b"")
                self.messages.append((str(msg.topic), payload, msg.retain))
                self.latest[str(msg.topic)] = payload
                self._changed.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        assert self.client is not None
        await self.client.publish(topic, payload, qos=1, retain=retain)

    def json(self, topic: str) -> Any:
        return json.loads(self.latest[topic])

    def on(self, topic: str) -> list[Any]:
        """Every payload received on ``topic``, JSON-decoded when possible."""
        out = []
        for t, p, _ in self.messages:
            if t == topic:
                try:
                    out.append(json.loads(p))
                except ValueError:
                    out.append(p.decode(errors="replace"))
        return out

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what or predicate}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except asyncio.TimeoutError:
                pass


@pytest.fixture
async def recorder_factory() -> AsyncIterator[Callable[..., Any]]:
    made: list[Recorder] = []

    async def make(port: int, topics: list[str]) -> Recorder:
        rec = Recorder(port, topics)
        await rec.start()
        made.append(rec)
        return rec

    yield make
    for rec in made:
        await rec.stop()


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as a YAML config file."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def yaml_writer() -> Callable[[Path, dict[str, Any]], Path]:
    return write_config


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


class RunningBridge:
    """The real bridge, in this event loop, on a config file; stoppable and restartable."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.bridge: Any = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Any:
        from fleetbridge.bridge import Bridge
        from fleetbridge.config import load_config
        from fleetbridge.plugins import load_plugins, unavailable_platforms
        from fleetbridge.runtime import register_secrets

        registry = load_plugins()
        config = load_config(self.config_path, registry.platforms, unavailable_platforms(registry))
        register_secrets(config)
        self.bridge = Bridge(config, registry)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.bridge.run(self._stop))
        return self.bridge

    async def stop(self) -> None:
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, 20)
            self._task = None


@pytest.fixture
async def bridge_runner() -> AsyncIterator[Callable[[Path], Any]]:
    running: list[RunningBridge] = []

    async def start(config_path: Path) -> RunningBridge:
        rb = RunningBridge(config_path)
        await rb.start()
        running.append(rb)
        return rb

    yield start
    for rb in running:
        await rb.stop()
