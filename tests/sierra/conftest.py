"""Fixtures of the Sierra tests: a scripted vendor on aioresponses (strict: nothing reaches a network),
a minimal AccountContext, a manual clock and in-process simulators on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import CallbackResult, aioresponses
from fleetbridge_plugins.sierra.airvantage import AirVantagePlatform
from fleetbridge_plugins.sierra.amm import AmmPlatform
from fleetbridge_plugins.sierra.clock import ManualClock

from ..compat import FakeContext as BaseContext, MockResponse

BASE = "https://amm.example.test"
CLIENT_ID = "fleetbridge-client"
CLIENT_SECRET = "cl1ent-S3cret"
USERNAME = "api-user"
PASSWORD = "Us3r-pa55word"
NOW = 1_800_000_000.0
FIXTURES = Path(__file__).parent.parent / "fixtures" / "sierra"


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def basic_header(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


@dataclass
class Reply:
    """A raw HTTP reply of the scripted vendor."""

    body: Any = None  # JSON-able, or str/bytes as is
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Call:
    """One request the client made, as aioresponses saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str] | None
    json: Any


class Vendor:
    """Per (method, path) a script of replies (the last repeats); the token endpoint issues
    ``access-N`` / ``refresh-N`` unless scripted. A reply is JSON, a Reply, an exception or a
    callable ``f(call)``."""

    def __init__(self, mock: aioresponses, base: str = BASE) -> None:
        self.calls: list[Call] = []
        self.issued: list[tuple[str, str]] = []
        self.expires_in = 86400
        self._queues: dict[tuple[str, str], list[Any]] = {}
        for method in ("GET", "POST", "PUT", "DELETE"):
            mock.add(re.compile(re.escape(base) + r"/api/.*"), method=method, callback=self._callback(method),
                     repeat=True)

    def on(self, path: str, *replies: Any, method: str = "GET") -> Vendor:
        self._queues[(method, path)] = list(replies)
        return self

    def calls_to(self, path: str, method: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.path == path and (method is None or c.method == method)]

    @property
    def token_calls(self) -> list[Call]:
        return self.calls_to("/api/oauth/token")

    def _token(self, call: Call) -> Any:
        n = len(self.issued) + 1
        self.issued.append((f"access-{n}-7f3a9c", f"refresh-{n}-b81d2e"))
        return {"access_token": self.issued[-1][0], "token_type": "bearer", "expires_in": self.expires_in,
                "refresh_token": self.issued[-1][1]}

    def _callback(self, method: str) -> Callable[..., CallbackResult]:
        def callback(url: Any, **kwargs: Any) -> CallbackResult:
            data = kwargs.get("data")
            call = Call(method, url.path, dict(url.query), dict(kwargs.get("headers") or {}),
                        dict(data) if isinstance(data, dict) else None, kwargs.get("json"))
            self.calls.append(call)
            queue = self._queues.get((method, url.path))
            if not queue:
                if url.path == "/api/oauth/token":
                    return _result(self._token(call))
                raise AssertionError(f"unscripted request {method} {url.path}")
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
            if callable(reply) and not isinstance(reply, (dict, list, Reply)):
                reply = reply(call)
            if isinstance(reply, BaseException):
                raise reply
            return _result(reply)

        return callback


def _result(reply: Any) -> CallbackResult:
    if not isinstance(reply, Reply):
        reply = Reply(reply)
    body = reply.body
    if not isinstance(body, (str, bytes)):
        body = "" if body is None else json.dumps(body)
    return CallbackResult(status=reply.status, body=body, headers=reply.headers, content_type=reply.content_type,
                          response_class=MockResponse)


class FakeContext(BaseContext):
    """The recording context, for the Sierra platforms."""

    def __init__(self, session: aiohttp.ClientSession, config: dict[str, Any], kv: dict[str, Any] | None = None,
                 kinds: tuple[str, ...] = ("auth", "api")) -> None:
        super().__init__(session, config, account_id="gw", kinds=kinds, kv=kv)


def amm_config(**overrides: Any) -> dict[str, Any]:
    raw = {"platform": "amm", "name": "Gateways", "base_url": BASE, "client_id": CLIENT_ID,
           "client_secret": CLIENT_SECRET, "username": USERNAME, "password": PASSWORD, **overrides}
    return AmmPlatform.CONFIG_SCHEMA(raw)


def av_config(**overrides: Any) -> dict[str, Any]:
    raw = {"platform": "airvantage", "name": "Inventory", "base_url": BASE, "client_id": CLIENT_ID,
           "client_secret": CLIENT_SECRET, "username": USERNAME, "password": PASSWORD,
           "operation_poll_interval": 0.01, **overrides}
    return AirVantagePlatform.CONFIG_SCHEMA(raw)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """A manual clock, also the AMM and AirVantage platforms' clock."""
    manual = ManualClock(NOW)
    monkeypatch.setattr(AmmPlatform, "clock", manual)
    monkeypatch.setattr(AirVantagePlatform, "clock", manual)
    return manual


@pytest.fixture
def mock() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
def vendor(mock: aioresponses) -> Vendor:
    return Vendor(mock)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Any]]:
    """``url = await serve(app)``: the app on 127.0.0.1, closed after the test."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in reversed(servers):
        await server.close()
