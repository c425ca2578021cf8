"""Scaffolding of the AMM and AirVantage simulators: OAuth server, faults, request log, ``/_sim``.

* ``POST /api/oauth/token``: client authentication by HTTP Basic (or ``client_id``/``client_secret``
  in the body); ``grant_type`` password or refresh_token, parameters in the form body or the query
  (vendor pages show both). Access tokens expire on the simulator's clock; refresh tokens are
  single-use and rotate: every refresh issues a new one and voids the one presented.
* Every ``/api/*`` request except the token endpoint needs ``Authorization: Bearer``; a token in
  the query string is refused (the documents advise against it and the plugin must never send one).
* Faults (``sim.faults`` or ``POST /_sim/faults``): ``http_500``, ``html_error``, ``malformed_json``,
  ``rate_limit`` take an int N (the next N requests) or a float p (probability per request);
  ``slow`` delays every answer by that many seconds. ``/_sim/*`` never faults.
* World time: what the vendor reports follows the simulator's clock (``clock``, the wall clock plus
  what ``/_sim/step`` added); with ``tick`` 0 it stands still and moves only through ``/_sim/step``,
  while tokens and rate limits keep the clock's time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fleetbridge.simkit import DEFAULT_TICK, HTML_PAGE, FaultSwitches, add_admin_routes, sim_app

from .clock import ManualClock, OffsetClock

TOKEN_PATH = "/api/oauth/token"
JSON_TYPE = "application/json;charset=UTF-8"
TRUNCATED = b'{"items":[{"uid":"4b89657f63aa'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimError(Exception):
    """An API error answered as ``{"error": key, "errorParameters": params}``."""

    def __init__(self, status: int, key: str, params: list[Any] | None = None) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.params = params or []


@dataclass
class Faults(FaultSwitches):
    """Switchable faults of the ``/api/*`` endpoints (see the module docstring)."""

    rate_limit: int | float = 0


@dataclass
class Grant:
    """One token request the simulator answered (for tests)."""

    grant_type: str
    ok: bool
    at: float
    presented: str | None = None  # the refresh token presented
    issued_refresh: str | None = None


@dataclass
class _Refresh:
    user: str
    expires: float
    used: bool = False


@dataclass
class OAuthServer:
    """The token endpoint and bearer checks of one simulated server."""

    clients: dict[str, str]
    users: dict[str, str]
    clock: Any
    access_lifetime: float = 86400.0
    refresh_lifetime: float = 30 * 86400.0
    issue_refresh: bool = True
    access: dict[str, tuple[str, float]] = field(default_factory=dict)
    refresh: dict[str, _Refresh] = field(default_factory=dict)
    grants: list[Grant] = field(default_factory=list)

    def user_of(self, request: web.Request) -> str | None:
        """The user of a valid bearer token, else None."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or "access_token" in request.query:
            return None
        entry = self.access.get(header[7:].strip())
        if entry is None or entry[1] <= self.clock.time():
            return None
        return entry[0]

    def expire_access_tokens(self) -> int:
        """Void every access token (the next request gets 401)."""
        count = len(self.access)
        self.access.clear()
        return count

    def count(self, grant_type: str, ok: bool = True) -> int:
        return sum(1 for g in self.grants if g.grant_type == grant_type and g.ok is ok)

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "POST only")
        form = dict(request.query)
        if request.can_read_body:
            posted = await request.post()
            form.update({k: v for k, v in posted.items() if isinstance(v, str)})
        client = self._client(request, form)
        grant_type = form.get("grant_type", "")
        if client is None:
            self.grants.append(Grant(grant_type, False, self.clock.time()))
            return _oauth_error(401, "invalid_client", "Bad client credentials")
        if grant_type == "password":
            return self._password(form)
        if grant_type == "refresh_token":
            return self._refresh(form)
        return _oauth_error(400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}")

    def _client(self, request: web.Request, form: dict[str, str]) -> str | None:
        header = request.headers.get("Authorization", "")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if header.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
        if client_id and client_id in self.clients and self.clients[client_id] == secret:
            return client_id
        return None

    def _password(self, form: dict[str, str]) -> web.Response:
        user = form.get("username", "")
        ok = user in self.users and self.users[user] == form.get("password")
        if not ok:
            self.grants.append(Grant("password", False, self.clock.time()))
            return _oauth_error(400, "invalid_grant", "Bad credentials")
        return self._issue(user, "password", None)

    def _refresh(self, form: dict[str, str]) -> web.Response:
        presented = form.get("refresh_token", "")
        entry = self.refresh.get(presented)
        if entry is None or entry.used or entry.expires <= self.clock.time():
            self.grants.append(Grant("refresh_token", False, self.clock.time(), presented))
            return _oauth_error(400, "invalid_grant", "Invalid refresh token")
        entry.used = True
        return self._issue(entry.user, "refresh_token", presented)

    def _issue(self, user: str, grant_type: str, presented: str | None) -> web.Response:
        now = self.clock.time()
        access = secrets.token_hex(16)
        self.access[access] = (user, now + self.access_lifetime)
        body: dict[str, Any] = {"access_token": access, "token_type": "bearer",
                                "expires_in": int(self.access_lifetime)}
        issued = None
        if self.issue_refresh:
            issued = secrets.token_hex(16)
            self.refresh[issued] = _Refresh(user, now + self.refresh_lifetime)
            body["refresh_token"] = issued
        self.grants.append(Grant(grant_type, True, now, presented, issued))
        return web.json_response(body)


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


class SimBase:
    """What both simulators share: clock, OAuth, faults, request log and the ``/_sim`` routes."""

    def __init__(self, *, clients: dict[str, str], users: dict[str, str], clock: Any = None, seed: int = 1,
                 access_lifetime: float = 86400.0) -> None:
        self.clock = clock if clock is not None else OffsetClock()
        self.world: Any = self.clock  # the world's time: the clock, or a still one (hold_world)
        self.oauth = OAuthServer(clients, users, self.clock, access_lifetime=access_lifetime)
        self.faults = Faults()
        self.rng = random.Random(seed)
        self._fault_rng = random.Random(seed + 1)
        self.request_counts: Counter[str] = Counter()
        self.requests: deque[tuple[str, str, dict[str, str]]] = deque(maxlen=5000)

    def now(self) -> float:
        return self.clock.time()

    def now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    def step(self, dt: float) -> None:
        """Advance the simulator's clock, and its world with it, by ``dt`` seconds."""
        self.clock.advance(dt)
        if self.world is not self.clock:
            self.world.advance(dt)

    def hold_world(self) -> None:
        """From now on the world (what the vendor reports, not tokens or rate limits) moves only
        through :meth:`step`; by default its time is the simulator's clock."""
        self.world = ManualClock(self.world.time())

    # --- HTTP --------------------------------------------------------------------------------

    def json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return web.Response(status=status, body=body, headers={"Content-Type": JSON_TYPE, **(headers or {})})

    def error(self, err: SimError, headers: dict[str, str] | None = None) -> web.Response:
        return self.json({"error": err.key, "errorParameters": err.params}, err.status, headers)

    def answer_headers(self, request: web.Request, status: int) -> dict[str, str]:
        """Extra headers of an API answer (AMM adds its rate-limit headers)."""
        return {}

    def before_api(self, request: web.Request) -> web.Response | None:
        """A simulator's own admission check after auth (AMM's rate limit); None to go on."""
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/api/"):
            return await handler(request)
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else path
        self.request_counts[f"{request.method} {route}"] += 1
        self.requests.append((request.method, path, dict(request.query)))
        faulted = await self._fault()
        if faulted is not None:
            return faulted
        if path == TOKEN_PATH:
            return await self.oauth.handle(request)
        if self.oauth.user_of(request) is None:
            return self.json({"error": "unauthorized", "errorParameters": []}, 401)
        refused = self.before_api(request)
        if refused is not None:
            return refused
        try:
            response = await handler(request)
        except SimError as err:
            response = self.error(err)
        except web.HTTPException as err:
            response = self.json({"error": err.reason.lower().replace(" ", "."), "errorParameters": []},
                                 err.status)
        for key, value in self.answer_headers(request, response.status).items():
            response.headers[key] = value
        return response

    async def _fault(self) -> web.Response | None:
        faults = self.faults
        if faults.slow > 0:
            await asyncio.sleep(faults.slow)
        if faults.fire("http_500", self._fault_rng):
            return web.Response(status=500, text="Internal Server Error")
        if faults.fire("html_error", self._fault_rng):
            page = HTML_PAGE.format(status=faults.html_status)
            return web.Response(status=faults.html_status, text=page, content_type="text/html")
        if faults.fire("malformed_json", self._fault_rng):
            return web.Response(body=TRUNCATED, headers={"Content-Type": JSON_TYPE})
        if faults.fire("rate_limit", self._fault_rng):
            return self.json({"error": "too_many_requests", "errorParameters": []}, 429,
                             {"X-Rate-Limit-Retry-After-Seconds": "5"})
        return None

    # --- /_sim -------------------------------------------------------------------------------

    async def post_expire(self, _: web.Request) -> web.Response:
        return self.json({"expired": self.oauth.expire_access_tokens()})

    def _grants(self) -> dict[str, Any]:
        return {"grants": [g.__dict__ | {"presented": None, "issued_refresh": None} for g in self.oauth.grants]}

    def make_app(self, routes: Callable[[web.Application], None],
                 tick: float | None = DEFAULT_TICK) -> web.Application:
        """The aiohttp app: the simulator's ``/api`` routes plus token endpoint and ``/_sim``; ``tick``
        0 or None holds the world still (:meth:`hold_world`)."""
        if not tick:
            self.hold_world()
        app = sim_app(self, [self.middleware])
        app.router.add_route("*", TOKEN_PATH, self.oauth.handle)
        routes(app)
        add_admin_routes(app, self, self.faults, step_answer=lambda: {"time": self.now()},
                         request_extras=self._grants)
        app.router.add_post("/_sim/expire_tokens", self.post_expire)
        return app
