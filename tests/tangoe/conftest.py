"""Fixtures of the tangoe tests: a scripted vendor on aioresponses (strict: nothing reaches a network),
a fake clock, a minimal AccountContext, and the simulator served in-process."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aioresponses import CallbackResult, aioresponses
from fleetbridge_plugins.tangoe.platform import TangoePlatform
from fleetbridge_plugins.tangoe.simulator import API_PREFIX, TOKEN_PATH, create_app

from ..compat import FakeContext as BaseContext, MockResponse

BASE = "https://tngo-mobproc.example.test/mobproc/v1"
TOKEN_URL = "https://sso.example.test/as/token.oauth2"
TENANT, CLIENT_ID, CLIENT_SECRET = "ACME", "fb-client", "Cl13nt-s3cret!"
USERNAME, PASSWORD = "command://fleet.admin", "S3cret!pw"
NOW = 1_800_000_000.0
FIXTURES = Path(__file__).parent.parent / "fixtures" / "tangoe"


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Reply:
    """A raw HTTP reply."""

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Call:
    """One request the client made."""

    method: str
    url: Any
    headers: dict[str, str]
    form: dict[str, str] | None
    body: Any

    @property
    def path(self) -> str:
        return self.url.path.removeprefix("/mobproc/v1")

    @property
    def query(self) -> dict[str, str]:
        return dict(self.url.query)


class FakeClock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeVendor:
    """Scripted MobProc + token service. ``on(method, path, *replies)``: replies in turn, the last
    repeating; a reply is a JSON-able value (HTTP 200), a :class:`Reply`, an exception or
    ``f(call) -> reply``. Unscripted token requests get a fresh token pair."""

    def __init__(self, mock: aioresponses) -> None:
        self.calls: list[Call] = []
        self.tokens: list[str] = []
        self.refresh_tokens: list[str] = []
        self._queues: dict[tuple[str, str], list[Any]] = {}
        pattern = re.compile(r"https://(tngo-mobproc|sso|elsewhere)\.example\.test/.*")
        for method in ("GET", "POST"):
            mock.add(pattern, method=method, callback=self._callback(method), repeat=True)

    def on(self, method: str, path: str, *replies: Any) -> FakeVendor:
        self._queues[(method, path)] = list(replies)
        return self

    def to(self, path: str, method: str = "GET") -> list[Call]:
        return [c for c in self.calls if c.path == path and c.method == method and c.url.host != "sso.example.test"]

    @property
    def grants(self) -> list[dict[str, str]]:
        return [c.form or {} for c in self.calls if c.url.host == "sso.example.test"]

    @property
    def api_calls(self) -> list[Call]:
        return [c for c in self.calls if c.url.host != "sso.example.test"]

    def new_token(self, expires_in: Any = 3599) -> dict[str, Any]:
        access = f"acc{len(self.tokens) + 1}-4f9a2c"
        refresh = f"ref{len(self.refresh_tokens) + 1}-77be0d"
        self.tokens.append(access)
        self.refresh_tokens.append(refresh)
        return {"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "refresh_token": refresh}

    def _callback(self, method: str) -> Callable[..., CallbackResult]:
        def callback(url: Any, **kwargs: Any) -> CallbackResult:
            data = kwargs.get("data")
            call = Call(method, url, dict(kwargs.get("headers") or {}), dict(data) if data is not None else None,
                        kwargs.get("json"))
            self.calls.append(call)
            key = (method, TOKEN_PATH if url.host == "sso.example.test" else call.path)
            queue = self._queues.get(key)
            if not queue:
                if key[1] == TOKEN_PATH:
                    return _result(self.new_token())
                raise AssertionError(f"unscripted request {method} {url}")
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
    body = reply.body if isinstance(reply.body, (str, bytes)) else json.dumps(reply.body)
    return CallbackResult(status=reply.status, body=body, headers=reply.headers, content_type=reply.content_type,
                          response_class=MockResponse)


def error(status: int, message: str, code: str = "400-bad", error_id: str = "tghwn") -> Reply:
    """The document's error body."""
    return Reply({"errorCode": code, "id": error_id, "message": message, "status": status}, status=status)


def page(key: str, items: list[dict[str, Any]], *, next_offset: int | None = None, limit: int = 2,
         total: int | None = None, host: str = "tngo-mobproc.example.test") -> dict[str, Any]:
    """A collection page whose ``_meta.hrefNext`` asks for ``next_offset``."""
    meta: dict[str, Any] = {"limit": limit, "totalCount": total if total is not None else len(items)}
    if next_offset is not None:
        meta["hrefNext"] = f"https://{host}/mobproc/v1/{key_path(key)}?limit={limit}&offset={next_offset}"
    return {key: items, "_meta": meta}


def key_path(key: str) -> str:
    return {"devices": "assets/devices", "services": "assets/services"}.get(key, key)


class FakeContext(BaseContext):
    """The recording context, for Tangoe."""

    def __init__(self, session: aiohttp.ClientSession, config: dict[str, Any]) -> None:
        super().__init__(session, config, account_id="phones", kinds=TangoePlatform.RATE_LIMITS)


def make_config(**overrides: Any) -> dict[str, Any]:
    raw = {"platform": "tangoe", "name": "Phones", "base_url": BASE, "token_url": TOKEN_URL, "tenant": TENANT,
           "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "username": USERNAME, "password": PASSWORD,
           "page_size": 2, **overrides}
    return TangoePlatform.CONFIG_SCHEMA(raw)


class Pending:
    """Records ``call.pending`` invocations."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, detail: str = "", vendor_ref: str | None = None) -> None:
        self.calls.append({"detail": detail, "vendor_ref": vendor_ref})


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
def make_platform(session: aiohttp.ClientSession, clock: FakeClock):
    """``await make_platform(ctx=None, setup=True, **config)``: a platform on the scripted vendor."""

    async def factory(ctx: FakeContext | None = None, setup: bool = True, **overrides: Any) -> TangoePlatform:
        platform = TangoePlatform(ctx or FakeContext(session, make_config(**overrides)))
        platform.clock = clock
        if setup:
            await platform.async_setup()
        return platform

    return factory


# --- the simulator, in-process ---------------------------------------------------------------------

SIM_USER, SIM_PASSWORD = "command://fleet.admin", "Sim-pass-0731"
SIM_CLIENT, SIM_SECRET = "fb-sim", "Sim-client-secret-42"


@pytest.fixture
async def sim_factory():
    """``await sim_factory(devices=..., **options)``: a simulator on 127.0.0.1; ``sim.url`` is its root."""
    servers: list[TestServer] = []

    async def start(devices: int = 20, **options: Any) -> Any:
        options.setdefault("tick", 0)
        app = create_app(users={SIM_USER: SIM_PASSWORD}, clients={SIM_CLIENT: SIM_SECRET}, tenant=TENANT,
                         devices=devices, **options)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        sim = app["sim"]
        sim.url = str(server.make_url("")).rstrip("/")
        return sim

    yield start
    for server in servers:
        await server.close()


def sim_config(sim: Any, **overrides: Any) -> dict[str, Any]:
    raw = {"platform": "tangoe", "name": "Phones", "base_url": sim.url + API_PREFIX,
           "token_url": sim.url + TOKEN_PATH, "tenant": TENANT, "client_id": SIM_CLIENT,
           "client_secret": SIM_SECRET, "username": SIM_USER, "password": SIM_PASSWORD, **overrides}
    return TangoePlatform.CONFIG_SCHEMA(raw)
