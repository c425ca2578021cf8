"""Fixtures for the lattigo unit tests: a scripted vendor on aioresponses (strict: nothing here can reach a
real network), a fake clock and a minimal AccountContext."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from fleetbridge_plugins.lattigo.api import LattigoClient
from fleetbridge_plugins.lattigo.platform import LattigoPlatform

from ..compat import FakeContext as BaseContext, MockResponse

BASE = "https://lattigo.example.test"
KEY_NAME = "fleet-key"
API_KEY = "Zx9-SECRET-key-4242"
NOW = 1_796_192_100  # 2026-12-02T06:15:00Z
FIXTURES = Path(__file__).parent.parent / "fixtures" / "lattigo"
ICCID_A, ICCID_B, ICCID_C = "89014103211118510720", "89014103211118510738", "89014103211118510746"


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Reply:
    """A raw HTTP reply: ``body`` JSON-encoded unless bytes/str."""

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay: float = 0.0


@dataclass
class Call:
    """One request the client made, as it went on the wire."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    data: Any
    authorization: str | None
    raw_path: str

    @property
    def shape(self) -> tuple[str, str, dict[str, str], Any]:
        return self.method, self.path, self.query, self.json


class FakeVendor:
    """Scripted Lattigo: per (method, path) a script of replies, the last one repeating.

    A reply is JSON-able (HTTP 200), a :class:`Reply`, an exception (raised) or a callable
    ``f(call) -> reply``. An unscripted request fails the test.
    """

    def __init__(self, mock: aioresponses) -> None:
        self.mock = mock
        self.calls: list[Call] = []
        self._queues: dict[tuple[str, str], list[Any]] = {}
        pattern = re.compile(re.escape(BASE) + r"/v2/.*")
        for method in ("GET", "POST", "PUT"):
            mock.add(pattern, method=method, callback=self._callback(method), repeat=True)

    def on(self, method: str, path: str, *replies: Any) -> FakeVendor:
        self._queues[(method, path)] = list(replies)
        return self

    def calls_to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    def _callback(self, method: str) -> Callable[..., Any]:
        async def callback(url: Any, **kwargs: Any) -> CallbackResult:
            headers = kwargs.get("headers") or {}
            call = Call(method, url.path, dict(url.query), kwargs.get("json"), kwargs.get("data"),
                        headers.get("Authorization"), url.raw_path)
            self.calls.append(call)
            queue = self._queues.get((method, url.path))
            if not queue:
                raise AssertionError(f"unscripted request {method} {url.path}")
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
            if callable(reply) and not isinstance(reply, Reply):
                reply = reply(call)
            if isinstance(reply, BaseException):
                raise reply
            if isinstance(reply, Reply) and reply.delay:
                await asyncio.sleep(reply.delay)
            return _result(reply)

        return callback


def _result(reply: Any) -> CallbackResult:
    if not isinstance(reply, Reply):
        reply = Reply(reply)
    body = reply.body if isinstance(reply.body, (bytes, str)) else json.dumps(reply.body)
    return CallbackResult(status=reply.status, body=body, headers=reply.headers, content_type=reply.content_type,
                          response_class=MockResponse)


def paged(items: list[Any], page: int, pages: int, per_page: int = 2) -> Reply:
    """A page with grape-kaminari headers (X-Next-Page empty on the last page)."""
    return Reply(items, headers={
        "X-Total": str(per_page * pages), "X-Total-Pages": str(pages), "X-Page": str(page),
        "X-Per-Page": str(per_page), "X-Next-Page": str(page + 1) if page < pages else "",
        "X-Prev-Page": str(page - 1) if page > 1 else "", "X-Offset": "0"})


class FakeClock:
    def __init__(self, t: float = NOW) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeContext(BaseContext):
    """The recording context; only calls in ``open_refs`` are open for resolve_call."""

    def __init__(self, session: aiohttp.ClientSession, config: dict[str, Any]) -> None:
        super().__init__(session, config, account_id="sims", kinds=LattigoPlatform.RATE_LIMITS, open_refs=set())


def make_config(**overrides: Any) -> dict[str, Any]:
    raw = {"platform": "lattigo", "name": "SIMs", "base_url": BASE, "key_name": KEY_NAME, "api_key": API_KEY,
           "usage_interval": 0, "report_interval": 0, "batch_window": 0.01, "sms_status_interval": 0,
           **overrides}
    return LattigoPlatform.CONFIG_SCHEMA(raw)


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
def client(session: aiohttp.ClientSession, ctx: FakeContext) -> LattigoClient:
    async def no_sleep(_: float) -> None:
        return None

    return LattigoClient(session, BASE, KEY_NAME, API_KEY, rate=ctx.rate, page_size=2, sleep=no_sleep)


@pytest.fixture
async def make_platform(session: aiohttp.ClientSession, clock: FakeClock, vendor: FakeVendor):
    """``await make_platform(**config)``: a set-up platform on the scripted vendor (closed afterwards)."""
    made: list[LattigoPlatform] = []

    async def factory(**overrides: Any) -> LattigoPlatform:
        platform = LattigoPlatform(FakeContext(session, make_config(**overrides)))
        platform.clock = clock
        await platform.async_setup()
        made.append(platform)
        return platform

    yield factory
    for platform in made:
        await platform.async_close()
