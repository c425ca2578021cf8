"""OAuth 2 at Tangoe's token service (PingFederate ``/as/token.oauth2``, a separate host).

Password grant first; after that the explicit refresh grant (``grant_type=refresh_token``), which
rotates the refresh token: the new one is stored durably (``kv_set``) *before* the new access token is
used, so a restart continues from it. A refused refresh falls back to one password grant. One auth
flow at a time per account; no secret ever appears in a log line or an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from fleetbridge.errors import AuthFailed, BadResponse, RateLimited, Unreachable

_LOGGER = logging.getLogger(__name__)

KV_KEY = "oauth"
REFRESH_AT = 0.8  # renew at 80 % of expires_in (vendor-notes, failure mode 10)
DEFAULT_EXPIRES_IN = 3600.0  # the vendor document: one hour
MIN_EXPIRES_IN = 60.0
#: OAuth ``error`` values that mean the credentials (not the network) are wrong.
REFUSALS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope",
                      "unsupported_grant_type", "access_denied", "invalid_request"})


@dataclass(frozen=True, kw_only=True, slots=True)
class Credentials:
    """What the token service needs. ``username`` carries the backend prefix (``command://``...)."""

    token_url: str
    client_id: str
    client_secret: str
    username: str
    password: str
    scope: str = "MOBPROC"

    def fingerprint(self) -> str:
        """A non-secret digest tying a stored refresh token to these credentials."""
        text = "\n".join((self.token_url, self.client_id, self.username, self.scope))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def secrets(self) -> tuple[str, ...]:
        return (self.password, self.client_secret)


class GrantRefused(Exception):
    """The token service answered an OAuth error (``error``/``error_description``)."""

    def __init__(self, error: str, description: str, status: int) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error, self.description, self.status = error, description, status


class TokenManager:
    """Access token of one account, renewed before it expires and on demand after a 401."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        creds: Credentials,
        *,
        kv_get: Callable[[str], Awaitable[Any]],
        kv_set: Callable[[str, Any], Awaitable[None]],
        add_secret: Callable[[str], None],
        rate: Callable[[str], Awaitable[None]],
        clock: Callable[[], float] = time.time,
        scrub: Callable[[str], str] = lambda text: text,
    ) -> None:
        self._session = session
        self.creds = creds
        self._kv_get, self._kv_set = kv_get, kv_set
        self._add_secret, self._rate, self._clock, self._scrub = add_secret, rate, clock, scrub
        self._lock = asyncio.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._issued_at = 0.0
        self._expires_in = 0.0
        self._loaded = False
        self.grants: Counter[str] = Counter()  # grant type -> successful grants

    # --- state -----------------------------------------------------------------------------

    def _fresh(self) -> bool:
        if self._access is None:
            return False
        return self._clock() - self._issued_at < self._expires_in * REFRESH_AT

    def expires_in(self) -> float | None:
        """Seconds until the current access token expires (None without one)."""
        if self._access is None:
            return None
        return round(self._issued_at + self._expires_in - self._clock(), 1)

    # --- public ----------------------------------------------------------------------------

    async def token(self) -> str:
        """A valid access token, renewed first when 80 % of its life is used."""
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    await self._renew()
        assert self._access is not None
        return self._access

    async def renew_after_refusal(self, refused: str) -> str:
        """The API refused ``refused`` (401): renew unless another request already did."""
        async with self._lock:
            if self._access == refused or self._access is None:
                self._access = None
                await self._renew()
        assert self._access is not None
        return self._access

    # --- grants ----------------------------------------------------------------------------

    async def _renew(self) -> None:
        """Caller holds the lock: refresh grant if we have a refresh token, else password grant."""
        refresh = self._refresh or await self._stored_refresh()
        if refresh:
            try:
                await self._grant({"grant_type": "refresh_token", "refresh_token": refresh})
                return
            except GrantRefused as err:
                _LOGGER.info("token service refused the refresh grant (%s, HTTP %s); using the password grant",
                             err.error, err.status)
                self._refresh = None
        try:
            await self._grant({"grant_type": "password", "username": self.creds.username,
                               "password": self.creds.password})
        except GrantRefused as err:
            raise AuthFailed(f"the token service refused the password grant: {self._scrub(str(err))[:200]}",
                             code=err.error) from None

    async def _stored_refresh(self) -> str | None:
        if self._loaded:
            return None
        self._loaded = True
        stored = await self._kv_get(KV_KEY)
        if not isinstance(stored, dict) or stored.get("fingerprint") != self.creds.fingerprint():
            return None
        token = stored.get("refresh_token")
        if isinstance(token, str) and token:
            self._add_secret(token)
            return token
        return None

    async def _grant(self, params: dict[str, str]) -> None:
        """One token request; on success the new refresh token is stored, then the pair is used."""
        payload = await self._post({**params, "client_id": self.creds.client_id,
                                    "client_secret": self.creds.client_secret, "scope": self.creds.scope})
        access = payload.get("access_token")
        if not isinstance(access, str) or not access:
            raise BadResponse("token service: the answer holds no access_token")
        refresh = payload.get("refresh_token")
        refresh = refresh if isinstance(refresh, str) and refresh else None
        for secret in (access, refresh):
            if secret:
                self._add_secret(secret)
        if refresh:  # rotated: durable before use, or a crash now would strand us on a dead token
            await self._kv_set(KV_KEY, {"fingerprint": self.creds.fingerprint(), "refresh_token": refresh})
        self._access, self._refresh = access, refresh
        self._issued_at, self._expires_in = self._clock(), _expires_in(payload.get("expires_in"))
        self.grants[params["grant_type"]] += 1
        _LOGGER.debug("new access token (%s grant, %.0f s)", params["grant_type"], self._expires_in)

    async def _post(self, form: dict[str, str]) -> dict[str, Any]:
        """POST the grant as a form body (never the query string: it would put secrets in URLs)."""
        await self._rate("token")
        try:
            async with self._session.post(self.creds.token_url, data=form,
                                          headers={"Accept": "application/json"}) as resp:
                status, body, headers = resp.status, await resp.read(), resp.headers
        except TimeoutError:
            raise Unreachable("token service: timed out") from None
        except aiohttp.ClientError as err:
            raise Unreachable(f"token service: {type(err).__name__}: {self._scrub(str(err))[:200]}") from None
        payload = _json_object(body)
        if status == 200 and payload is not None:
            return payload
        if status in (400, 401, 403) and payload is not None and isinstance(payload.get("error"), str):
            error = payload["error"]
            description = self._scrub(str(payload.get("error_description") or ""))[:200]
            if error in REFUSALS or status in (400, 401):
                raise GrantRefused(error, description, status)
        if status == 429:
            raise RateLimited("token service: HTTP 429", retry_after=_number(headers.get("Retry-After")))
        if status >= 500:
            raise Unreachable(f"token service: HTTP {status}")
        snippet = self._scrub(" ".join(body[:200].decode("utf-8", "replace").split()))[:80]
        raise BadResponse(f"token service: HTTP {status}, unexpected answer: {snippet!r}")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number == number and number >= 0 else None


def _expires_in(value: Any) -> float:
    """``expires_in`` as the token service says (7199, 7200, 3600...); one hour when absent."""
    number = _number(value)
    return max(MIN_EXPIRES_IN, number) if number is not None else DEFAULT_EXPIRES_IN
