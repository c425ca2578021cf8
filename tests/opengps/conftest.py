"""Fixtures for the opengps unit tests: a scripted vendor on aioresponses, a fake clock and a
minimal AccountContext. aioresponses is strict, so nothing here can reach a real network."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from fleetbridge_plugins.opengps.api import OpenGpsClient

from ..compat import FakeContext as BaseContext, MockResponse
from fleetbridge_plugins.opengps.platform import OpenGpsPlatform

BASE = "https://gps.example.test"
ACCOUNT = "fleet"
PASSWORD = "S3cret!pw"
NOW = 1_800_000_000  # 2027-01-15T08:00:00Z
FIXTURES = Path(__file__).parent.parent / "fixtures" / "opengps"


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def ok(record: Any = None) -> dict[str, Any]:
    """A successful vendor answer."""
    return {"code": 0} if record is None else {"code": 0, "record": record}


def fail(code: int, message: str = "") -> dict[str, Any]:
    """A vendor error answer (HTTP 200)."""
    return {"code": code, "message": message}


@dataclass
class Reply:
    """A raw HTTP reply for the scripted vendor."""

    body: str | bytes = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Call:
    """One request the client made."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str] | None


class FakeClock:
    """A settable wall clock."""

    def __init__(self, t: float = NOW) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeVendor:
    """Scripted vendor: per (method, path) a script of replies; the last one repeats.

    A reply is a JSON-able dict (HTTP 200), a :class:`Reply`, an exception (raised) or a callable
    ``f(call) -> reply``. Authorization answers a fresh token each time unless scripted.
    """

    def __init__(self, mock: aioresponses) -> None:
        self.mock = mock
        self.calls: list[Call] = []
        self.tokens: list[str] = []
        self._queues: dict[tuple[str, str], list[Any]] = {}
        for method in ("GET", "POST"):
            mock.add(re.compile(re.escape(BASE) + r"/api/.*"), method=method,
                     callback=self._callback(method), repeat=True)

    def on(self, path: str, *replies: Any, method: str = "GET") -> FakeVendor:
        """From now on answer ``path`` with ``replies`` in turn, repeating the last."""
        self._queues[(method, path)] = list(replies)
        return self

    def calls_to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    @property
    def auth_calls(self) -> list[Call]:
        return self.calls_to("/api/authorization")

    def _new_token(self, call: Call) -> dict[str, Any]:
        token = f"tok{len(self.tokens) + 1}-9f8e7d6c5b4a"
        self.tokens.append(token)
        return ok({"access_token": token, "expires_in": 7200})

    def _callback(self, method: str) -> Callable[..., CallbackResult]:
        def callback(url: Any, **kwargs: Any) -> CallbackResult:
            data = kwargs.get("data")
            call = Call(method, url.path, dict(url.query), dict(data) if data is not None else None)
            self.calls.append(call)
            queue = self._queues.get((method, url.path))
            if not queue:
                if url.path == "/api/authorization":
                    return _result(self._new_token(call))
                raise AssertionError(f"unscripted request {method} {url.path}")
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
            if callable(reply) and not isinstance(reply, (dict, Reply)):
                reply = reply(call)
            if isinstance(reply, BaseException):
                raise reply
            return _result(reply)

        return callback


def _result(reply: dict[str, Any] | Reply) -> CallbackResult:
    if isinstance(reply, Reply):
        return CallbackResult(status=reply.status, body=reply.body, headers=reply.headers,
                              content_type=reply.content_type, response_class=MockResponse)
    return CallbackResult(status=200, body=json.dumps(reply), content_type="application/json",
                          response_class=MockResponse)


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


class FakeContext(BaseContext):
    """The recording context, for the tracker."""

    def __init__(self, session: aiohttp.ClientSession, config: dict[str, Any]) -> None:
        super().__init__(session, config, account_id="vans", kinds=OpenGpsPlatform.RATE_LIMITS)


def make_config(**overrides: Any) -> dict[str, Any]:
    raw = {"platform": "opengps", "name": "Vans", "base_url": BASE, "account": ACCOUNT,
           "password": PASSWORD, "command_poll_interval": 0.001, **overrides}
    return OpenGpsPlatform.CONFIG_SCHEMA(raw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mock() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
def vendor(mock: aioresponses) -> FakeVendor:
    return FakeVendor(mock)


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def ctx(session: aiohttp.ClientSession) -> FakeContext:
    return FakeContext(session, make_config())


@pytest.fixture
def client(session: aiohttp.ClientSession, ctx: FakeContext, clock: FakeClock) -> OpenGpsClient:
    return OpenGpsClient(session, BASE, ACCOUNT, PASSWORD, rate=ctx.rate, add_secret=ctx.add_secret,
                         warn=ctx.warn, clock=clock)


@pytest.fixture
def make_platform(session: aiohttp.ClientSession, clock: FakeClock, vendor: FakeVendor):
    """``await make_platform(**config)``: a set-up platform on the scripted vendor."""

    async def factory(**overrides: Any) -> OpenGpsPlatform:
        platform = OpenGpsPlatform(FakeContext(session, make_config(**overrides)))
        platform.clock = clock
        await platform.async_setup()
        return platform

    return factory
