"""The REST layer both Sierra APIs share: bearer requests, answer decoding and error mapping.

Errors come as ``{"error": "<key>", "errorParameters": [...]}`` on any status >= 300 (the body may be
empty, or an HTML page from a proxy). Every failure is raised as a :mod:`fleetbridge.errors` type
whose message names the method, the path (never the query) and a readable reason; tokens travel
only in the ``Authorization`` header and never appear in a message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from fleetbridge.codec import loads_exact
from fleetbridge.errors import (
    AuthFailed,
    BadResponse,
    RateLimited,
    TokenInvalid,
    Unreachable,
    VendorError,
)

if TYPE_CHECKING:
    from fleetbridge.platform import AccountContext

    from .oauth import OAuthClient

_LOGGER = logging.getLogger(__name__)

RETRY_HEADERS = ("X-Rate-Limit-Retry-After-Seconds", "Retry-After")
#: error key -> (error class, readable reason); each API module adds its own table.
Messages = Mapping[str, tuple[type[VendorError], str]]
COMMON_MESSAGES: dict[str, tuple[type[VendorError], str]] = {
    "unauthorized": (TokenInvalid, "the access token was refused"),
    "access_denied": (AuthFailed, ("access denied: the API is disabled for this client, user or group, "
                                   "or the user lacks the permission")),
    "api.request.timeout": (Unreachable, "the server gave up on the request (its request timeout)"),
    "too_many_requests": (RateLimited, "too many requests"),
}


class ApiError(VendorError):
    """The vendor refused a request with an error key (``code``) and its parameters."""

    def __init__(self, message: str, *, status: int, key: str | None, params: list[Any]) -> None:
        super().__init__(message, code=key)
        self.status = status
        self.key = key
        self.params = params
        self.retryable = status >= 500 or status in (408, 409)


def snippet(body: bytes, limit: int = 80) -> str:
    """The first characters of a body, whitespace collapsed (for error messages)."""
    return " ".join(body.decode("utf-8", errors="replace").split())[:limit]


def decode_json(body: bytes, where: str, status: int) -> Any:
    """The JSON value of ``body``; BadResponse for HTML or malformed JSON. Empty -> None."""
    if not body.strip():
        return None
    try:
        return loads_exact(body)  # the stdlib value: a bare numeric id stays exact
    except ValueError:
        kind = "an HTML page" if body.lstrip()[:1] == b"<" else "malformed JSON"
        raise BadResponse(f"{where}: HTTP {status}, {kind}: {snippet(body)!r}") from None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from AMM's ``X-Rate-Limit-Retry-After-Seconds`` (or a ``Retry-After``)."""
    for name in RETRY_HEADERS:
        try:
            value = float(headers[name])
        except (KeyError, TypeError, ValueError):
            continue
        if value >= 0:
            return value
    return None


def error_key(payload: Any) -> tuple[str | None, list[Any]]:
    """``(key, parameters)`` of an error body; (None, []) when it holds none."""
    if not isinstance(payload, dict):
        return None, []
    key = payload.get("error")
    params = payload.get("errorParameters")
    return (str(key) if key else None), (list(params) if isinstance(params, list) else [])


def raise_for(status: int, headers: Mapping[str, str], body: bytes, where: str, messages: Messages) -> None:
    """Raise the typed error an answer with ``status`` >= 300 means."""
    if status == 429:
        raise RateLimited(f"{where}: HTTP 429 (too many requests)", retry_after=retry_after(headers))
    try:
        payload = decode_json(body, where, status)
    except BadResponse:
        payload = None
    key, params = error_key(payload)
    cls, reason = {**COMMON_MESSAGES, **messages}.get(key or "", (None, ""))
    if status >= 500 or status == 408:
        raise Unreachable(f"{where}: HTTP {status}" + (f" ({key})" if key else ""), code=key or status)
    text = f"{where}: {reason or (key or f'HTTP {status}')}"
    if reason and key:
        text += f" ({key})"
    if params:
        text += f": {', '.join(str(p) for p in params)[:200]}"
    if cls is None or cls is VendorError:
        raise ApiError(text, status=status, key=key, params=params)
    if cls is RateLimited:
        raise RateLimited(text, retry_after=retry_after(headers), code=key)
    raise cls(text, code=key)


class RestClient:
    """Authenticated JSON requests against one Sierra server.

    ``kind_of(method, path)`` names the host rate-budget kind of a request; ``gate`` (optional) is
    awaited before each request (the AMM planner's ledger); ``on_answer(status, headers)`` sees
    every answer (AMM reads ``X-Rate-Limit-Remaining`` there).
    """

    def __init__(
        self,
        ctx: AccountContext,
        base_url: str,
        oauth: OAuthClient,
        *,
        messages: Messages,
        kind_of: Callable[[str, str], str],
        gate: Callable[[], Any] | None = None,
        on_answer: Callable[[int, Mapping[str, str]], None] | None = None,
    ) -> None:
        self._ctx = ctx
        self.base_url = base_url.rstrip("/")
        self.oauth = oauth
        self._messages = messages
        self._kind_of = kind_of
        self._gate = gate
        self._on_answer = on_answer

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
    ) -> Any:
        """One request; the decoded JSON answer (None for an empty body). Renews the token once on 401."""
        where = f"{method} {path}"
        for attempt in range(2):
            token = await self.oauth.token()
            status, headers, body = await self._send(method, path, params, json_body, token)
            if status == 401:
                if attempt == 0:
                    _LOGGER.debug("%s: 401, renewing the access token", where)
                    await self.oauth.renew(token)
                    continue
                raise TokenInvalid(f"{where}: the renewed access token was refused too (HTTP 401)", code=401)
            if status >= 300:
                raise_for(status, headers, body, where, self._messages)
            return decode_json(body, where, status)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self, method: str, path: str, params: Mapping[str, Any] | None, json_body: Any, token: str
    ) -> tuple[int, Mapping[str, str], bytes]:
        if self._gate is not None:
            await self._gate()
        await self._ctx.rate(self._kind_of(method, path))
        where = f"{method} {path}"
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self._ctx.session.request(method, self.base_url + path, params=query or None,
                                                 json=json_body, headers=headers) as resp:
                status, answer_headers = resp.status, resp.headers
                body = await resp.read()
        except TimeoutError:
            raise Unreachable(f"{where}: timed out") from None
        except aiohttp.ClientError as err:
            raise Unreachable(f"{where}: {type(err).__name__}") from None
        _LOGGER.debug("%s -> HTTP %s, %d bytes", where, status, len(body))
        if self._on_answer is not None:
            self._on_answer(status, answer_headers)
        return status, answer_headers, body


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
