"""The embedded MQTT broker for a config without ``mqtt:`` (the demo): a private mosquitto when one is
installed, else amqtt (pure Python) in this process. Both listen on 127.0.0.1 only.

``FLEETBRIDGE_EMBEDDED_BROKER`` = ``auto`` (default), ``mosquitto`` or ``amqtt`` forces a choice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

from .config import MqttConfig
from .errors import ConfigError

_LOGGER = logging.getLogger(__name__)

EMBEDDED_PORT = 1883
ENV_KIND = "FLEETBRIDGE_EMBEDDED_BROKER"
KINDS = ("auto", "mosquitto", "amqtt")
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
STOP_TIMEOUT = 5.0


def free_port(preferred: int = 0) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port")


async def wait_for_port(port: int, timeout: float = 5.0) -> bool:
    """Wait until something accepts connections on 127.0.0.1:``port``; False on timeout."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        except OSError:
            await asyncio.sleep(0.05)
    return False


def find_mosquitto() -> str | None:
    """The mosquitto binary on this machine, if any."""
    return shutil.which("mosquitto") or next((p for p in MOSQUITTO_PATHS if Path(p).exists()), None)


async def start_embedded_broker(stack: AsyncExitStack, kind: str | None = None) -> MqttConfig:
    """Start the embedded broker (stopped when ``stack`` closes) and return how to reach it."""
    kind = (kind or os.environ.get(ENV_KIND) or "auto").strip().lower()
    if kind not in KINDS:
        raise ConfigError(f"{ENV_KIND}={kind!r}: expected one of {', '.join(KINDS)}")
    binary = find_mosquitto() if kind != "amqtt" else None
    if kind == "mosquitto" and binary is None:
        raise ConfigError(f"{ENV_KIND}=mosquitto but no mosquitto was found: install it (apt install "
                          "mosquitto) or name your broker under mqtt:")
    port = free_port(EMBEDDED_PORT)
    if binary is not None:
        await _start_mosquitto(binary, port, stack)
        name = "mosquitto"
    else:
        await _start_amqtt(port, stack)  # listening once started (a probe connection would log an error)
        name = "amqtt, in-process"
    _LOGGER.info("Embedded MQTT broker (%s) on 127.0.0.1:%d", name, port)
    return MqttConfig(host="127.0.0.1", port=port)


def mosquitto_conf(port: int) -> str:
    """The embedded mosquitto's configuration: loopback, anonymous, no persistence, no queue cap."""
    return f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"


async def _start_mosquitto(binary: str, port: int, stack: AsyncExitStack) -> None:
    conf_dir = Path(tempfile.mkdtemp(prefix="fleetbridge-mosquitto-"))
    stack.callback(shutil.rmtree, conf_dir, ignore_errors=True)
    conf = conf_dir / "mosquitto.conf"
    conf.write_text(mosquitto_conf(port))
    # its own session: a Ctrl-C in the terminal must not stop it before the bridge said "offline"
    proc = await asyncio.create_subprocess_exec(binary, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)

    async def stop() -> None:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()

    stack.push_async_callback(stop)
    if not await wait_for_port(port):
        raise ConfigError(f"the embedded mosquitto ({binary}) did not start on 127.0.0.1:{port}")


def amqtt_config(port: int) -> dict[str, object]:
    """amqtt's configuration: one loopback TCP listener, anonymous clients, no $SYS or packet logs."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def _start_amqtt(port: int, stack: AsyncExitStack) -> None:
    try:
        from amqtt.broker import Broker
    except ImportError as err:  # pragma: no cover - amqtt is a dependency
        raise ConfigError("the config has no mqtt: section and neither mosquitto nor amqtt is installed: "
                          "install mosquitto (apt install mosquitto) or name your broker under mqtt:") from err
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    broker = Broker(amqtt_config(port))
    await broker.start()
    stack.push_async_callback(broker.shutdown)
