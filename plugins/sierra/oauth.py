"""OAuth 2 for AMM and AirVantage: password grant, refresh with single-use rotating refresh tokens.

* Token endpoint ``POST /api/oauth/token``: HTTP Basic ``client_id:client_secret`` and a form body
  (``grant_type=password&username=..&password=..`` or ``grant_type=refresh_token&refresh_token=..``).
* The access token is renewed at 80 % of ``expires_in`` (24 h when the server does not say).
* A refresh token is single-use: the new one is stored durably (``ctx.kv_set``, committed before it
  returns) *before* the new access token is used, so a crash at any point leaves the newest unused
  refresh token in the store. The stored token is bound to the server, client and user, and is not
  used past 30 days.
* One auth flow in flight per account; the password grant only when there is no refresh token or
  the server refuses it.
* Every token is registered with ``ctx.add_secret`` and travels only in the ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from fleetbridge.errors import AuthFailed, BadResponse, Unreachable, VendorError

from .clock import WALL_CLOCK, Clock
from .rest import decode_json, error_key, raise_for

if TYPE_CHECKING:
    from fleetbridge.platform import AccountContext

_LOGGER = logging.getLogger(__name__)

TOKEN_PATH = "/api/oauth/token"
KV_KEY = "oauth_refresh"
RENEW_SHARE = 0.8  # renew after this share of expires_in
DEFAULT_EXPIRES_IN = 86400.0  # AMM and AirVantage access tokens last 24 h
REFRESH_TOKEN_LIFETIME = 30 * 86400.0  # AMM: 30 days
#: token-endpoint error keys that mean "these credentials / this refresh token are refused"
REFUSED = frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "invalid_request",
                     "unauthorized", "access_denied", "invalid_token"})


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the password grant needs."""

    client_id: str
    client_secret: str
    username: str
    password: str


class RefreshRefused(VendorError):
    """Internal: the server refused the refresh token (used, expired, revoked)."""


class OAuthClient:
    """The token life cycle of one account. Safe for concurrent use."""

    def __init__(
        self,
        ctx: AccountContext,
        base_url: str,
        creds: Credentials,
        *,
        clock: Clock = WALL_CLOCK,
        kind: str = "auth",
        kv_key: str = KV_KEY,
    ) -> None:
        self._ctx = ctx
        self._url = base_url.rstrip("/") + TOKEN_PATH
        self._creds = creds
        self._clock = clock
        self._kind = kind
        self._kv_key = kv_key
        self._owner = hashlib.sha256(f"{self._url}\n{creds.client_id}\n{creds.username}".encode()).hexdigest()[:16]
        basic = base64.b64encode(f"{creds.client_id}:{creds.client_secret}".encode()).decode("ascii")
        self._basic = f"Basic {basic}"
        ctx.add_secret(basic)
        self._lock = asyncio.Lock()
        self._access: str | None = None
        self._renew_at = 0.0
        self._expires_at = 0.0
        self._refresh: str | None = None
        self._refresh_at = 0.0  # when the refresh token was issued
        self._loaded = False
        self.grants: dict[str, int] = {"password": 0, "refresh_token": 0}

    # --- public ------------------------------------------------------------------------------

    async def token(self) -> str:
        """A valid access token, renewed first when it is due."""
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    await self._obtain()
        assert self._access is not None
        return self._access

    async def renew(self, stale: str) -> None:
        """Replace ``stale`` (refused with 401) unless another request already did."""
        async with self._lock:
            if self._access is not None and self._access != stale and self._fresh():
                return
            self._access = None
            await self._obtain()

    def info(self) -> dict[str, Any]:
        left = self._expires_at - self._clock.time() if self._access else None
        return {"token_expires_in_s": round(left) if left is not None else None, "grants": dict(self.grants)}

    # --- flow --------------------------------------------------------------------------------

    def _fresh(self) -> bool:
        return self._access is not None and self._clock.time() < self._renew_at

    async def _obtain(self) -> None:
        """Caller holds the lock: refresh if we hold a refresh token, else (or if refused) log in."""
        refresh = await self._current_refresh()
        if refresh:
            try:
                await self._grant({"grant_type": "refresh_token", "refresh_token": refresh})
                return
            except RefreshRefused as err:
                _LOGGER.info("%s: refresh token refused (%s); logging in with the password grant",
                             self._ctx.account_id, err)
                self._refresh = None
        await self._grant({"grant_type": "password", "username": self._creds.username,
                           "password": self._creds.password})

    async def _current_refresh(self) -> str | None:
        """The refresh token in memory, else the stored one (same server/client/user, not too old)."""
        if not self._loaded:
            self._loaded = True
            stored = await self._ctx.kv_get(self._kv_key)
            if isinstance(stored, dict) and stored.get("owner") == self._owner and stored.get("refresh_token"):
                self._refresh = str(stored["refresh_token"])
                self._refresh_at = float(stored.get("issued_at") or 0.0)
                self._ctx.add_secret(self._refresh)
        if self._refresh and self._clock.time() - self._refresh_at > REFRESH_TOKEN_LIFETIME - 3600:
            _LOGGER.info("%s: the stored refresh token is about 30 days old; not using it", self._ctx.account_id)
            self._refresh = None
        return self._refresh

    async def _grant(self, form: dict[str, str]) -> None:
        grant = form["grant_type"]
        payload = await self._post(form)
        access = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(access, str) or not access:
            raise BadResponse(f"POST {TOKEN_PATH}: the answer holds no access_token")
        refresh = payload.get("refresh_token")
        refresh = refresh if isinstance(refresh, str) and refresh else None
        self._ctx.add_secret(access)
        if refresh:
            self._ctx.add_secret(refresh)
        self.grants[grant] = self.grants.get(grant, 0) + 1
        now = self._clock.time()
        self._refresh, self._refresh_at = refresh, now
        await self._store(refresh, now)  # durable before the new access token is used
        self._adopt(access, _expires_in(payload.get("expires_in")), now)
        _LOGGER.debug("%s: new access token (%s grant)", self._ctx.account_id, grant)

    async def _store(self, refresh: str | None, now: float) -> None:
        value = {"owner": self._owner, "refresh_token": refresh, "issued_at": now} if refresh else None
        await self._ctx.kv_set(self._kv_key, value)

    def _adopt(self, access: str, expires_in: float, now: float) -> None:
        """Start using ``access`` (only after the refresh token that came with it is stored)."""
        self._access = access
        self._expires_at = now + expires_in
        self._renew_at = now + expires_in * RENEW_SHARE

    async def _post(self, form: dict[str, str]) -> Any:
        grant = form["grant_type"]
        where = f"POST {TOKEN_PATH} ({grant} grant)"
        await self._ctx.rate(self._kind)
        headers = {"Authorization": self._basic, "Accept": "application/json"}
        try:
            async with self._ctx.session.post(self._url, data=form, headers=headers) as resp:
                status, resp_headers = resp.status, resp.headers
                body = await resp.read()
        except TimeoutError:
            raise Unreachable(f"{where}: timed out") from None
        except aiohttp.ClientError as err:
            raise Unreachable(f"{where}: {type(err).__name__}") from None
        if status < 300:
            return decode_json(body, where, status)
        if status in (400, 401, 403):
            try:
                key, _ = error_key(decode_json(body, where, status))
            except BadResponse:
                key = None
            if key in REFUSED or key is None:
                reason = f"{key}" if key else f"HTTP {status}"
                if grant == "refresh_token":
                    raise RefreshRefused(f"{where}: refused ({reason})", code=key or status)
                raise AuthFailed(f"{where}: the client id/secret or the user name/password were refused "
                                 f"({reason})", code=key or status)
        raise_for(status, resp_headers, body, where, {})
        raise AssertionError("unreachable")  # pragma: no cover


def _expires_in(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return DEFAULT_EXPIRES_IN
    return seconds if seconds > 0 else DEFAULT_EXPIRES_IN
