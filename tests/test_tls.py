"""TLS and auth against real parts: mosquitto with TLS, a private CA and passwords; the vendor over
HTTPS with a private CA through ``ca_file``; a wrong CA fails loudly and never falls back."""

from __future__ import annotations

import asyncio
import getpass
import logging
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from aiohttp import web

from fleetbridge.config import MqttConfig
from fleetbridge.mqtt import MqttLink
from fleetbridge_plugins.opengps.simulator import create_app

pytestmark = pytest.mark.e2e

MQTT_USER, MQTT_PASSWORD = "bridge", "Mqtt-Pass-901"
VENDOR_PASSWORD = "Vendor-Pass-902"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> Path:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=folder)
    return folder / f"{name}.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required for the TLS tests (.ci/run installs it)")
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "ca")
    other = make_ca(folder, "other_ca")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr", cwd=folder)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=folder)
    return {"ca": ca, "other_ca": other, "cert": folder / "server.pem", "key": folder / "server.key"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tls_broker(tmp_path: Path, pki: dict[str, Path]) -> Any:
    port = free_port()
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), MQTT_USER, MQTT_PASSWORD], check=True)
    conf = tmp_path / "mosquitto.conf"
    # run as the user we are (mosquitto started as root would switch to "mosquitto" and could not
    # read the keys in our private temp folder)
    conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\ncafile {pki['ca']}\ncertfile {pki['cert']}\n"
                    f"keyfile {pki['key']}\nallow_anonymous false\npassword_file {passwd}\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            import time
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


async def test_bridge_over_mqtt_tls_with_private_ca_and_password(tmp_path: Path, tls_broker: int,
                                                                 pki: dict[str, Path], bridge_runner: Any,
                                                                 unique: str) -> None:
    app = create_app(accounts={"fleet": VENDOR_PASSWORD}, devices=3, seed=2, tick=0)
    runner = web.AppRunner(app)
    await runner.setup()
    vendor_port = free_port()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki["cert"], pki["key"])
    await web.TCPSite(runner, "127.0.0.1", vendor_port, ssl_context=server_ctx).start()
    try:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "mqtt": {"host": "127.0.0.1", "port": tls_broker, "tls": True, "ca_file": str(pki["ca"]),
                     "username": MQTT_USER, "password": MQTT_PASSWORD, "base_topic": f"tls{unique}",
                     "client_id": f"tls-{unique}"},
            "storage": str(tmp_path / "fb.db"),
            "accounts": [
                {"platform": "opengps", "name": "Private CA", "base_url": f"https://127.0.0.1:{vendor_port}",
                 "ca_file": str(pki["ca"]), "account": "fleet", "password": VENDOR_PASSWORD, "scan_interval": 1,
                 "rate_limits": {"auth": 0, "track": 0, "device_list": 0}},
                {"platform": "opengps", "name": "Wrong CA", "base_url": f"https://127.0.0.1:{vendor_port}",
                 "ca_file": str(pki["other_ca"]), "account": "fleet", "password": VENDOR_PASSWORD,
                 "scan_interval": 1, "rate_limits": {"auth": 0, "track": 0, "device_list": 0}},
            ]}))
        await bridge_runner(config)
        tls = ssl.create_default_context(cafile=str(pki["ca"]))
        async with aiomqtt.Client("127.0.0.1", tls_broker, username=MQTT_USER, password=MQTT_PASSWORD,
                                  tls_context=tls) as client:
            await client.subscribe(f"tls{unique}/#")
            seen: dict[str, bytes] = {}

            async def collect() -> None:
                async for msg in client.messages:
                    seen[str(msg.topic)] = bytes(msg.payload)

            task = asyncio.create_task(collect())
            try:
                for _ in range(200):
                    info = seen.get(f"tls{unique}/bridge/info")
                    states = [t for t in seen if t.startswith(f"tls{unique}/private_ca/") and t.endswith("/state")]
                    if info and states and b'"unreachable"' in info:
                        break
                    await asyncio.sleep(0.1)
            finally:
                task.cancel()
        assert states, "no state over MQTT TLS from the vendor behind a private CA"
        import json
        accounts = json.loads(seen[f"tls{unique}/bridge/info"])["accounts"]
        assert accounts["private_ca"]["status"] == "ok"
        wrong = accounts["wrong_ca"]
        assert wrong["status"] == "unreachable" and "certificate" in wrong["detail"].lower(), wrong
        assert not any(t.startswith(f"tls{unique}/wrong_ca/") and t.endswith("/state") for t in seen)
    finally:
        await runner.cleanup()


async def test_mqtt_wrong_ca_and_wrong_password_fail_clearly(tls_broker: int, pki: dict[str, Path],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fleetbridge.mqtt")
    cases = [
        (MqttConfig(host="127.0.0.1", port=tls_broker, tls=True, ca_file=str(pki["other_ca"]),
                    username=MQTT_USER, password=MQTT_PASSWORD, client_id="wrong-ca"), "TLS failed"),
        (MqttConfig(host="127.0.0.1", port=tls_broker, tls=True, ca_file=str(pki["ca"]),
                    username=MQTT_USER, password="not-the-password", client_id="wrong-pw"), "refused the login"),
    ]
    for cfg, words in cases:
        link = MqttLink(cfg, will_topic="x/bridge/state", subscriptions=[], on_message=lambda *a: None)
        task = asyncio.create_task(link.run())
        await asyncio.sleep(1.5)
        assert not link.connected.is_set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert any(words in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert all("not-the-password" not in r.getMessage() for r in caplog.records)
