"""What ``fleetbridge run`` needs around the bridge: logging, bundled simulators, an embedded broker,
signals."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from .config import Config, MqttConfig
from .errors import ConfigError
from .plugins import PluginRegistry
from .redact import RedactingFilter, add_secret

_LOGGER = logging.getLogger(__name__)

EMBEDDED_PORT = 1883


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def register_secrets(config: Config) -> None:
    for value in config.secrets:
        add_secret(value)


def free_port(preferred: int = 0) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port")


async def start_simulators(config: Config, registry: PluginRegistry, stack: AsyncExitStack) -> None:
    """Start the bundled simulator of every account with ``simulator:`` set; point it there."""
    for acc in config.accounts:
        sim = acc.data.get("simulator")
        cls = registry.platforms.get(acc.platform)
        if not sim or cls is None or acc.disabled_reason:
            continue
        opts: dict[str, Any] = sim if isinstance(sim, dict) else {}
        app = cls.create_simulator(acc.data, opts.get("devices", 5), opts.get("seed", 1))
        if app is None:
            raise ConfigError(f"{config.path}: account '{acc.id}': platform {acc.platform} has no simulator")
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = opts.get("port") or free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stack.push_async_callback(runner.cleanup)
        acc.data["base_url"] = f"http://127.0.0.1:{port}"
        _LOGGER.info("%s: bundled %s simulator with %d devices on http://127.0.0.1:%d", acc.id, acc.platform,
                     opts.get("devices", 5), port)


def start_embedded_broker(stack: AsyncExitStack) -> MqttConfig:
    """A private mosquitto on loopback, for a config without ``mqtt:`` (the demo)."""
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
    if binary is None:
        raise ConfigError("the config has no mqtt: section and no mosquitto was found to embed: install "
                          "mosquitto (apt install mosquitto) or name your broker under mqtt:")
    port = free_port(EMBEDDED_PORT)
    conf_dir = Path(tempfile.mkdtemp(prefix="fleetbridge-mosquitto-"))
    (conf_dir / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n")
    proc = subprocess.Popen([binary, "-c", str(conf_dir / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(conf_dir, ignore_errors=True)

    stack.callback(stop)
    _LOGGER.info("Embedded MQTT broker (mosquitto) on 127.0.0.1:%d", port)
    return MqttConfig(host="127.0.0.1", port=port)


async def wait_for_port(port: int, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)


async def run_bridge(config: Config, registry: PluginRegistry) -> int:
    """Run the bridge until SIGINT/SIGTERM. Returns the exit code."""
    from .bridge import Bridge

    register_secrets(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    async with AsyncExitStack() as stack:
        if config.mqtt is None:
            mqtt = start_embedded_broker(stack)
            await wait_for_port(mqtt.port)
            config = replace(config, mqtt=mqtt)
        await start_simulators(config, registry, stack)
        bridge = Bridge(config, registry)
        _LOGGER.info("fleetbridge running: %d account(s), MQTT %s:%s, base topic %s", len(bridge.accounts),
                     config.mqtt.host, config.mqtt.port, config.mqtt.base_topic)
        await bridge.run(stop)
    return 0
