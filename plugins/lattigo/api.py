"""Client of the OptConnect Lattigo API v2: Basic auth, pagination, typed errors.

Query strings for GET, JSON bodies for everything else (the document's rule). Every failure is
raised as a :mod:`fleetbridge.errors` type whose message names the request and the HTTP status but
never the API key (nor the Basic credentials built from it).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from fleetbridge.codec import loads_exact
from fleetbridge.errors import (
    AuthFailed,
    BadResponse,
    RateLimited,
    Unreachable,
    VendorError,
)

from .normalize import as_int, as_text, records, status_map, unwrap_list, unwrap_object

_LOGGER = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.lattigo.com"
DEVICES = "/v2/devices"
RATE_PLANS = "/v2/rate_plans"
USERS = "/v2/users"
OPERATIONS = "/v2/device_operations"

#: Rate-budget kinds (the keys of LattigoPlatform.RATE_LIMITS).
LIST, DEVICE, OPERATION = "list", "device", "operation"

MAX_PAGES = 5000  # a guard against a server whose X-Next-Page never ends
SNIPPET = 80
#: A bulk call that failed for some devices may answer these with the per-device map (undocumented).
PARTIAL_STATUSES = frozenset({400, 404, 422})

Rate = Callable[[str], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


class Refused(VendorError):
    """The vendor refused this request (400, 404, 422...): retrying it unchanged will not help."""

    retryable = False


@dataclass(frozen=True, slots=True)
class Answer:
    """One decoded HTTP answer."""

    status: int
    headers: Mapping[str, str]
    payload: Any


@dataclass(frozen=True, slots=True)
class BulkOperation:
    """One ``/v2/device_operations/*`` endpoint taking ``device_names``: its verb and result key."""

    path: str
    method: str
    result_key: str
    retry_rate_limited: bool = True  # a 429 means "not done": safe to send again, except where noted


#: The bulk endpoints of the document, as data.
BULK: dict[str, BulkOperation] = {
    "change_simstate": BulkOperation("change_simstate", "PUT", "change_status"),
    "change_cost_center": BulkOperation("change_cost_center", "PUT", "change_status"),
    "send_sms": BulkOperation("send_sms", "POST", "status"),
    "set_usage_limit": BulkOperation("set_usage_limit", "POST", "status"),
    "remove_usage_limit": BulkOperation("remove_usage_limit", "POST", "status"),
    "terminate_service": BulkOperation("terminate_service", "PUT", "terminate_status", retry_rate_limited=False),
}


@dataclass(slots=True)
class SweepStats:
    """What the last paginated listing looked like (for bridge/info and the tests)."""

    requests: int = 0
    items: int = 0
    per_page: int | None = None
    total: int | None = None
    paged: bool = False


def device_path(name: str, leaf: str = "") -> str:
    """``/v2/devices/<name>[/leaf]`` with the name escaped (it is an ICCID in practice)."""
    path = f"{DEVICES}/{quote(str(name), safe='')}"
    return f"{path}/{leaf}" if leaf else path


class LattigoClient:
    """One API key's access to Lattigo. Stateless apart from statistics: safe for concurrent use."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        key_name: str,
        api_key: str,
        *,
        rate: Rate,
        page_size: int = 500,
        max_batch: int = 100,
        retries: int = 3,
        backoff: float = 1.0,
        max_wait: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self.key_name = key_name
        self._authorization = aiohttp.encode_basic_auth(key_name, api_key)
        self._secrets = (api_key, self._authorization.split(" ", 1)[1])
        self._rate = rate
        self.page_size = page_size
        self.max_batch = max_batch
        self._retries, self._backoff, self._max_wait, self._sleep = retries, backoff, max_wait, sleep
        self.last_sweep: dict[str, SweepStats] = {}

    @property
    def secrets(self) -> tuple[str, ...]:
        """The API key and the encoded Basic credentials (for the host's redaction)."""
        return self._secrets

    # --- transport ---------------------------------------------------------------------------

    async def request(
        self, method: str, path: str, *, kind: str, query: Mapping[str, Any] | None = None,
        body: Any = None, retry_rate_limited: bool = True, accept: frozenset[int] = frozenset(),
    ) -> Answer:
        """One request, with a 429 retried in place up to ``retries`` times when allowed.

        The wait is the vendor's Retry-After, else 1, 2, 4... times ``backoff`` with jitter; a wait
        longer than ``max_wait`` is left to the host (the RateLimited error is raised). A 4xx answer
        is raised as :class:`Refused` unless its status is in ``accept``.
        """
        attempt = 0
        while True:
            try:
                return await self._send(method, path, kind, query, body, accept)
            except RateLimited as err:
                attempt += 1
                wait = err.retry_after if err.retry_after is not None else \
                    self._backoff * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                if not retry_rate_limited or attempt > self._retries or wait > self._max_wait:
                    raise
                _LOGGER.debug("%s %s: HTTP 429, retry %d in %.1f s", method, path, attempt, wait)
                await self._sleep(wait)

    async def _send(self, method: str, path: str, kind: str, query: Mapping[str, Any] | None, body: Any,
                    accept: frozenset[int]) -> Answer:
        await self._rate(kind)
        where = f"{method} {path}"
        params = {k: _query_value(v) for k, v in (query or {}).items()}
        try:
            async with self._session.request(method, self._base + path, params=params or None, json=body,
                                             headers={"Authorization": self._authorization}) as resp:
                status, headers = resp.status, resp.headers
                raw = await resp.read()
        except asyncio.TimeoutError:
            raise Unreachable(f"{where}: timed out") from None
        except aiohttp.ClientError as err:
            raise Unreachable(f"{where}: {type(err).__name__}: {self._scrub(str(err))[:200]}") from None
        _LOGGER.debug("%s -> HTTP %s, %d bytes", where, status, len(raw))
        return self._answer(where, status, headers, raw, accept)

    def _answer(self, where: str, status: int, headers: Mapping[str, str], raw: bytes,
                accept: frozenset[int]) -> Answer:
        if status in (401, 403):
            raise AuthFailed(self._auth_message(where, status, raw), code=status)
        if status == 429:
            raise RateLimited(f"{where}: HTTP 429 (Lattigo asks to slow down)", retry_after=retry_after(headers),
                              code=429)
        if status >= 500:
            raise Unreachable(f"{where}: HTTP {status}: {self._snippet(raw)!r}", code=status)
        payload = _decode(raw)
        if payload is _INVALID:
            raise BadResponse(f"{where}: HTTP {status}, not a JSON answer: {self._snippet(raw)!r}", code=status)
        if status >= 400 and status not in accept:
            raise Refused(f"{where}: HTTP {status}: {self._error_text(payload, raw)}", code=status)
        return Answer(status, headers, payload)

    def _auth_message(self, where: str, status: int, raw: bytes) -> str:
        reason = ("the key name or API key was refused" if status == 401 else
                  "access denied (API access not enabled for the account, or a device of another account)")
        return (f"{where}: HTTP {status}: {reason}; check key_name {self.key_name!r} and api_key "
                f"(vendor said: {self._error_text(_decode(raw), raw)})")

    def _error_text(self, payload: Any, raw: bytes) -> str:
        if isinstance(payload, dict):
            for key in ("error", "errors", "message", "status"):
                if payload.get(key):
                    return self._scrub(str(payload[key]))[:200]
        return self._snippet(raw) or "no details"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _snippet(self, raw: bytes) -> str:
        return self._scrub(" ".join(raw[:400].decode("utf-8", errors="replace").split()))[:SNIPPET]

    # --- reads -------------------------------------------------------------------------------

    async def get(self, path: str, query: Mapping[str, Any] | None = None, *, kind: str = DEVICE) -> Any:
        """A GET's decoded JSON (429 retried in place: reads are idempotent)."""
        return (await self.request("GET", path, kind=kind, query=query)).payload

    async def paged(self, path: str, query: Mapping[str, Any] | None = None) -> list[Any]:
        """Every item of a paginated list: ``page``/``per_page`` sent, a non-empty ``X-Next-Page``
        followed; stops on the last page, an empty page, a next page that does not advance, or
        when the headers are absent (the answer is then the whole list)."""
        stats = SweepStats()
        items: list[Any] = []
        page = 1
        while True:
            answer = await self.request("GET", path, kind=LIST,
                                        query={**(query or {}), "page": page, "per_page": self.page_size})
            chunk = unwrap_list(answer.payload)
            stats.requests += 1
            items += chunk
            headers = answer.headers
            stats.paged = stats.paged or "X-Page" in headers or "X-Next-Page" in headers
            stats.per_page = as_int(headers.get("X-Per-Page")) or stats.per_page
            stats.total = as_int(headers.get("X-Total")) or stats.total
            following = as_int(headers.get("X-Next-Page"))
            if not chunk or following is None:
                break
            if following <= page or stats.requests >= MAX_PAGES:
                _LOGGER.warning("%s: X-Next-Page %s after page %d; stopped", path, following, page)
                break
            page = following
        stats.items = len(items)
        self.last_sweep[path] = stats
        return items

    async def devices(self) -> list[dict[str, Any]]:
        """Every device object of the account (``details=true``), in one paginated sweep."""
        return [item for item in await self.paged(DEVICES, {"details": "true"}) if isinstance(item, dict)]

    async def device(self, name: str) -> dict[str, Any] | None:
        """One device object (bare or wrapped in ``device``)."""
        return unwrap_object(await self.get(device_path(name)))

    async def rate_plans(self) -> list[dict[str, Any]]:
        return [item for item in await self.paged(RATE_PLANS) if isinstance(item, dict)]

    async def users(self) -> list[str]:
        """Usernames of the account (strings, or objects with a ``username``)."""
        names = []
        for item in await self.paged(USERS):
            name = as_text(item.get("username") or item.get("name")) if isinstance(item, dict) else as_text(item)
            if name:
                names.append(name)
        return names

    async def dated(self, name: str, leaf: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """``daily_data_usages``, ``monthly_data_usages``, ``device_reports`` or ``get_sms`` of one
        device between two dates (``start_date``/``end_date``, inclusive, UTC)."""
        query = {"start_date": start.astimezone(UTC).strftime("%Y-%m-%d"),
                 "end_date": end.astimezone(UTC).strftime("%Y-%m-%d")}
        return records(await self.get(device_path(name, leaf), query))

    async def calculate_etf(self, name: str) -> str:
        """The early-termination fee if the device were terminated today, as the vendor wrote it."""
        payload = await self.get(device_path(name, "calculate_etf"), kind=OPERATION)
        value = _value_for(payload, name)
        if value is None:
            raise BadResponse(f"GET {device_path(name, 'calculate_etf')}: no fee in the answer")
        return value

    # --- writes ------------------------------------------------------------------------------

    async def set_note(self, name: str, text: str, field_name: str = "note") -> str:
        """Create or modify a note field; the vendor's result text for the device."""
        path = device_path(name, "note")
        answer = await self.request("PUT", path, kind=OPERATION, body={"field_name": field_name, "note": text})
        return _value_for(answer.payload, name) or ""

    async def cellular_locate(self, name: str) -> Any:
        """Ask the carrier to triangulate (billed per call, never retried); its raw response."""
        path = device_path(name, "cellular_locate")
        answer = await self.request("POST", path, kind=OPERATION, body={}, retry_rate_limited=False)
        payload = answer.payload
        if isinstance(payload, Mapping) and name in payload:
            return payload[name]
        return payload

    async def bulk(self, operation: str, names: Sequence[str], params: Mapping[str, Any] | None = None
                   ) -> dict[str, str]:
        """One ``device_operations`` request for ``names`` (callers keep batches within
        ``max_batch``): each device's result text; a device the answer omits is absent.

        A partly failed call may come back as HTTP 4xx with the same per-device map (undocumented):
        the map is read whatever the status.
        """
        op = BULK[operation]
        path = f"{OPERATIONS}/{op.path}"
        batch = list(dict.fromkeys(names))
        answer = await self.request(op.method, path, kind=OPERATION, body={"device_names": batch, **(params or {})},
                                    retry_rate_limited=op.retry_rate_limited, accept=PARTIAL_STATUSES)
        payload = answer.payload
        if answer.status >= 400 and not (isinstance(payload, Mapping) and op.result_key in payload):
            raise Refused(f"{op.method} {path}: HTTP {answer.status}: {self._error_text(payload, b'')}",
                          code=answer.status)
        mapped = status_map(payload, op.result_key)
        if mapped is None:
            raise BadResponse(f"{op.method} {path}: HTTP {answer.status}, no {op.result_key} in the answer")
        return mapped


_INVALID = object()


def _decode(raw: bytes) -> Any:
    """JSON of ``raw`` whatever Content-Type says; None for an empty body; _INVALID otherwise."""
    text = raw.decode("utf-8-sig", errors="replace").strip()
    if not text:
        return None
    try:
        return loads_exact(text)  # the stdlib value: a bare numeric ICCID stays exact
    except (ValueError, RecursionError):
        return _INVALID


def _value_for(payload: Any, name: str) -> str | None:
    """``{"<device_name>": "value"}`` -> "value" (also a lone value under another key)."""
    if isinstance(payload, Mapping):
        value = payload.get(name)
        if value is None and len(payload) == 1:
            value = next(iter(payload.values()))
        if isinstance(value, Mapping):
            value = value.get("message") or value.get("status")
        return None if value is None else str(value)
    return None if payload is None else str(payload)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date); None when absent."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, IndexError):
            return None
    return max(0.0, seconds) if seconds == seconds else None
