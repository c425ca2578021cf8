"""What ``fleetbridge run`` needs around the bridge: logging, bundled simulators, the embedded broker
(:mod:`fleetbridge.broker`), the status page (:mod:`fleetbridge.web`), the terminal status
(:mod:`fleetbridge.console`), signals."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

from aiohttp import web

from .broker import free_port, start_embedded_broker
from .config import Config
from .console import LiveStatus
from .errors import ConfigError
from .plugins import PluginRegistry
from .redact import RedactingFilter, add_secret
from .web import start_web

_LOGGER = logging.getLogger(__name__)


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


async def run_bridge(config: Config, registry: PluginRegistry, *, live: bool = False) -> int:
    """Run the bridge until SIGINT/SIGTERM (with the status block on stderr when ``live``). Returns
    the exit code."""
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
            config = replace(config, mqtt=await start_embedded_broker(stack))
        await start_simulators(config, registry, stack)
        bridge = Bridge(config, registry)
        _LOGGER.info("fleetbridge running: %d account(s), MQTT %s:%s, base topic %s, event loop %s",
                     len(bridge.accounts), config.mqtt.host, config.mqtt.port, config.mqtt.base_topic,
                     type(asyncio.get_running_loop()).__module__.split(".")[0])
        if config.http is not None and config.http.enabled:
            await start_web(bridge, config.http, stack)
        if live:
            console = LiveStatus(bridge)
            console.start()
            stack.push_async_callback(console.stop)
        await bridge.run(stop)
    return 0
