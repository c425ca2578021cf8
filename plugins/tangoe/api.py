"""Client of the Tangoe Mobile Procurement (MobProc) REST API: headers, errors and ``_meta`` paging.

Every request carries the bearer token, ``X-TNGO-TENANT``, ``client_id``, the configured context
headers, one ``X-TNGO-CONTEXT-ACTIVITYID`` per activity (a poll cycle, a service call) and its own
``X-TNGO-CONTEXT-CORRELATIONID``; both ids go into every error log line and message together with
the vendor's error ``id`` so that a support case can be traced. Links in ``_meta`` are followed only
when they point at the configured host: the token is never sent anywhere else.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from fleetbridge.codec import loads_exact
from fleetbridge.errors import (
    BadResponse,
    RateLimited,
    TokenInvalid,
    Unreachable,
    VendorError,
)

from .auth import TokenManager

_LOGGER = logging.getLogger(__name__)

MAX_PAGES = 1000
MAX_STALE = 3  # pages in a row without a new record end a sweep
_activity: ContextVar[str | None] = ContextVar("tangoe_activity", default=None)

#: The rate-budget kind of each request (keys of TangoePlatform.RATE_LIMITS).
KIND_BY_PATH: dict[str, str] = {
    "/me": "me",
    "/assets/devices": "list",
    "/assets/services": "list",
    "/employees": "list",
    "/orders": "orders",
    "/orders/properties": "orders",
}


class RequestRefused(VendorError):
    """A 4xx answer (400, 403, 404): the request itself is wrong; retrying it as is will not help."""

    retryable = False

    def __init__(self, message: str, *, code: str | int | None = None, http_status: int = 400,
                 error_id: str | None = None) -> None:
        super().__init__(message, code=code)
        self.http_status = http_status
        self.error_id = error_id


class _Unauthorized(Exception):
    """Internal: HTTP 401 (the token was refused)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, kw_only=True, slots=True)
class Context:
    """The optional context headers (empty strings count as unset, as the vendor says)."""

    employee_id: str | None = None
    company_employee_id: str | None = None
    hierarchy_id: str | None = None

    def headers(self) -> dict[str, str]:
        """Employee id wins over company employee id: only one of them is sent."""
        out: dict[str, str] = {}
        if self.employee_id:
            out["X-TNGO-CONTEXT-EMPLOYEEID"] = self.employee_id
        elif self.company_employee_id:
            out["X-TNGO-CONTEXT-COMPANYEMPLOYEEID"] = self.company_employee_id
        if self.hierarchy_id:
            out["X-TNGO-CONTEXT-HIERARCHYID"] = self.hierarchy_id
        return out


def vendor_error(payload: Any) -> tuple[str | None, str | None, str]:
    """``(errorCode, id, message)`` of the document's error body, or of an order's ``errors`` list."""
    if not isinstance(payload, dict):
        return None, None, ""
    errors = payload.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        messages = [str(e.get("message") or "") for e in errors if isinstance(e, dict)]
        return _text(first.get("errorCode")), _text(first.get("id")), "; ".join(m for m in messages if m)
    return _text(payload.get("errorCode")), _text(payload.get("id")), str(payload.get("message") or "")


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def item_id(item: Mapping[str, Any]) -> str | None:
    """A record's id as a string (ids are numeric strings; orders use ``orderId``)."""
    for key in ("id", "orderId"):
        value = item.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def items_of(payload: Any, key: str) -> list[dict[str, Any]]:
    """The records of a collection answer: ``payload[key]``, else its only list (or a bare list)."""
    if isinstance(payload, list):
        found: Any = payload
    elif isinstance(payload, dict):
        found = payload.get(key)
        if found is None:
            lists = [v for k, v in payload.items() if k != "_meta" and isinstance(v, list)]
            found = lists[0] if len(lists) == 1 else None
        if isinstance(found, dict) and isinstance(found.get("items"), list):
            found = found["items"]
    else:
        found = None
    if found is None:
        if isinstance(payload, dict) and "_meta" in payload:
            return []  # an empty collection may come back without its list
        raise BadResponse(f"the answer holds no '{key}' list")
    if not isinstance(found, list):
        raise BadResponse(f"'{key}' is not a list")
    return [item for item in found if isinstance(item, dict)]


def unwrap(payload: Any, key: str) -> dict[str, Any]:
    """A single record: ``payload[key]`` when wrapped, else the payload itself."""
    if isinstance(payload, dict):
        inner = payload.get(key)
        if isinstance(inner, dict):
            return inner
        return payload
    raise BadResponse(f"expected a '{key}' object")


class TangoeClient:
    """One account's session with the MobProc API."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenManager,
        *,
        tenant: str,
        client_id: str,
        context: Context = Context(),
        rate: Callable[[str], Awaitable[None]],
        page_size: int = 100,
        max_pages: int = MAX_PAGES,
        scrub: Callable[[str], str] = lambda text: text,
    ) -> None:
        self._session = session
        self.base = URL(base_url.rstrip("/"))
        self.tokens = tokens
        self.tenant, self.client_id, self.context = tenant, client_id, context
        self._rate = rate
        self.page_size, self.max_pages = page_size, max_pages
        self.scrub = scrub  # removes every known secret from a text
        self._warned: set[str] = set()
        self.last_error: dict[str, Any] | None = None
        self.last_correlation = "-"

    # --- ids and secrets -------------------------------------------------------------------

    @staticmethod
    def start_activity(what: str) -> str:
        """Start an activity (a poll cycle, a service call): its requests share one activity id."""
        activity = f"fb-{what}-{uuid.uuid4().hex[:12]}"
        _activity.set(activity)
        return activity

    @staticmethod
    def activity() -> str:
        current = _activity.get()
        if current is None:
            current = TangoeClient.start_activity("misc")
        return current

    # --- URLs ------------------------------------------------------------------------------

    def url(self, path: str) -> URL:
        return URL(str(self.base) + path)

    def trusted(self, link: Any) -> URL | None:
        """``link`` as a URL when it points at the configured host (scheme, host, port), else None."""
        if not isinstance(link, str) or not link:
            return None
        try:
            url = URL(link)
        except ValueError:
            return None
        if not url.is_absolute():
            return None
        if (url.scheme, url.host, url.port) != (self.base.scheme, self.base.host, self.base.port):
            return None
        return url

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        _LOGGER.log(level, message, *args)

    # --- requests --------------------------------------------------------------------------

    async def get(self, path: str, params: Mapping[str, Any] | None = None, *, kind: str | None = None) -> Any:
        """GET ``path`` (below ``base_url``) with the account's headers."""
        return await self.request("GET", self.url(path), params, None, kind or _kind(path))

    async def post(self, path: str, body: Any, params: Mapping[str, Any] | None = None, *,
                   kind: str = "order_write") -> Any:
        return await self.request("POST", self.url(path), params, body, kind)

    async def request(self, method: str, url: URL, params: Mapping[str, Any] | None, body: Any,
                      kind: str) -> Any:
        """One API call; a 401 renews the token once and repeats the call once."""
        query = {k: str(v) for k, v in (params or {}).items()}
        renewed = False
        while True:
            token = await self.tokens.token()
            try:
                return await self._send(method, url, query, body, kind, token)
            except _Unauthorized as err:
                if renewed:
                    raise TokenInvalid(f"{method} {url.path}: the access token was refused again after "
                                       f"renewal ({err.detail})", code=401) from None
                renewed = True
                await self.tokens.renew_after_refusal(token)

    def _headers(self, token: str, correlation: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "X-TNGO-TENANT": self.tenant,
            "client_id": self.client_id,
            **self.context.headers(),
            "X-TNGO-CONTEXT-ACTIVITYID": self.activity(),
            "X-TNGO-CONTEXT-CORRELATIONID": correlation,
            "Accept": "application/json",
        }

    async def _send(self, method: str, url: URL, query: dict[str, str], body: Any, kind: str,
                    token: str) -> Any:
        await self._rate(kind)
        correlation = self.last_correlation = uuid.uuid4().hex
        headers = self._headers(token, correlation)
        target = url.update_query(query) if query else url
        where = f"{method} {url.path}"
        try:
            async with self._session.request(method, target, json=body, headers=headers,
                                             allow_redirects=False) as resp:
                status, raw, resp_headers = resp.status, await resp.read(), resp.headers
        except TimeoutError:
            raise self._fail(Unreachable, where, "timed out", correlation) from None
        except aiohttp.ClientError as err:
            raise self._fail(Unreachable, where, f"{type(err).__name__}: {err}", correlation) from None
        _LOGGER.debug("%s -> HTTP %s, %d bytes", where, status, len(raw))
        payload = _decode(raw)
        if 200 <= status < 300 and payload is not _INVALID:
            return payload
        return self._raise_for(status, payload, raw, resp_headers, where, correlation)

    def _raise_for(self, status: int, payload: Any, raw: bytes, headers: Mapping[str, str], where: str,
                   correlation: str) -> Any:
        """Raise the error an unsuccessful (or unparseable) answer means."""
        if 300 <= status < 400:  # redirects are not followed: they could carry the token elsewhere
            host = URL(headers.get("Location", "")).host or "?"
            raise self._fail(BadResponse, where, f"HTTP {status}: unexpected redirect to host {host}", correlation)
        if payload is _INVALID:
            snippet = self.scrub(" ".join(raw[:200].decode("utf-8", "replace").split()))[:80]
            code, error_id, text = None, None, f"HTTP {status}, not a JSON answer: {snippet!r}"
        else:
            code, error_id, message = vendor_error(payload)
            detail = self.scrub(message)[:300] or "no message"
            text = f"HTTP {status}: {detail}" + (f" (errorCode {code})" if code else "")
        if status == 401:  # renewed and repeated once by request(): info, not a warning
            self._log(where, text, correlation, error_id, logging.INFO)
            raise _Unauthorized(text)
        if 200 <= status < 300 or status >= 500:
            raise self._fail(BadResponse if status < 300 else Unreachable, where, text, correlation, error_id)
        if status == 429:
            err = self._fail(RateLimited, where, text, correlation, error_id)
            err.retry_after = _number(headers.get("Retry-After"))
            raise err
        self._log(where, text, correlation, error_id)
        raise RequestRefused(self._message(where, text, correlation, error_id), code=code,
                             http_status=status, error_id=error_id)

    def _fail(self, cls: type[VendorError], where: str, text: str, correlation: str,
              error_id: str | None = None) -> VendorError:
        """An error of ``cls`` whose message (and log line) carries the trace ids."""
        text = self.scrub(text)
        self._log(where, text, correlation, error_id)
        return cls(self._message(where, text, correlation, error_id))

    def _message(self, where: str, text: str, correlation: str, error_id: str | None) -> str:
        ids = f"activity {self.activity()}, correlation {correlation}"
        if error_id:
            ids = f"error id {error_id}, " + ids
        return f"{where}: {text} [{ids}]"

    def _log(self, where: str, text: str, correlation: str, error_id: str | None,
             level: int = logging.WARNING) -> None:
        self.last_error = {"request": where, "error": text, "error_id": error_id,
                           "activity": self.activity(), "correlation": correlation}
        _LOGGER.log(level, "%s failed: %s [error id %s, activity %s, correlation %s]", where, text,
                        error_id or "-", self.activity(), correlation)

    # --- paging ----------------------------------------------------------------------------

    async def collect(self, path: str, key: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every record of a paged collection, each once (by ``id``).

        Follows ``_meta.hrefNext`` until it is absent. A link to another host (or without its
        ``offset``) is not followed: the next page is asked from the configured host instead. Stops
        on an empty page, a link already fetched, ``MAX_STALE`` pages in a row with nothing new (a
        Command server snapping offsets may repeat one page, then move on), or ``max_pages``.
        """
        kind = _kind(path)
        base_query = {**{k: str(v) for k, v in (params or {}).items()}, "limit": str(self.page_size)}
        url, query = self.url(path), {**base_query, "offset": "0"}
        seen: dict[str, dict[str, Any]] = {}
        visited: set[str] = set()
        stale = 0
        for _ in range(self.max_pages):
            visited.add(_page_key(url, query))
            payload = await self.request("GET", url, query, None, kind)
            page = items_of(payload, key)
            before = len(seen)
            for item in page:
                iid = item_id(item)
                if iid is not None:
                    seen.setdefault(iid, item)
            stale = 0 if len(seen) > before else stale + 1
            if not page:
                break
            if stale >= MAX_STALE:
                self._warn_once(f"repeat:{path}", "%s: %d pages in a row brought nothing new (offset %s): "
                                "stopped paging", path, stale, query.get("offset"))
                break
            nxt = self._next_page(path, payload, query, base_query, len(page))
            if nxt is None:
                break
            if _page_key(*nxt) in visited:
                self._warn_once(f"loop:{path}", "%s: hrefNext points at a page already read: stopped paging", path)
                break
            url, query = nxt
        else:
            self._warn_once(f"cap:{path}", "%s: stopped after %d pages (%d records)", path, self.max_pages,
                            len(seen))
        return list(seen.values())

    def _next_page(self, path: str, payload: Any, query: Mapping[str, str], base_query: Mapping[str, str],
                   count: int) -> tuple[URL, dict[str, str]] | None:
        meta = payload.get("_meta") if isinstance(payload, dict) else None
        link = meta.get("hrefNext") if isinstance(meta, dict) else None
        if not link:
            return None
        url = self.trusted(link)
        if url is not None and "offset" in url.query:
            follow = dict(url.query)
            follow.setdefault("limit", base_query["limit"])
            return url.with_query(None), follow
        host = URL(link).host if isinstance(link, str) else None
        self._warn_once(f"link:{path}", "%s: hrefNext is not on the configured host or lacks its offset "
                        "(host %s): asking the configured host for the next page", path, host)
        step = _int(meta.get("limit"), count) if isinstance(meta, dict) else count  # the server's page size
        return self.url(path), {**base_query, "offset": str(_int(query.get("offset"), 0) + max(step, 1))}

    async def detail(self, record: Mapping[str, Any], path: str, key: str) -> dict[str, Any]:
        """A record's detail through its ``_meta.href`` (if on our host), else ``path``."""
        meta = record.get("_meta")
        url = self.trusted(meta.get("href")) if isinstance(meta, dict) else None
        if url is None:
            url = self.url(path)
        return unwrap(await self.request("GET", url, None, None, "detail"), key)

    # --- endpoints -------------------------------------------------------------------------

    async def me(self) -> dict[str, Any]:
        return unwrap(await self.get("/me"), "me")

    async def devices(self) -> list[dict[str, Any]]:
        return await self.collect("/assets/devices", "devices")

    async def services(self) -> list[dict[str, Any]]:
        return await self.collect("/assets/services", "services")

    async def orders(self, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return await self.collect("/orders", "orders", params)

    async def order(self, order_id: str) -> dict[str, Any]:
        return unwrap(await self.get(f"/orders/{order_id}", kind="orders"), "order")

    async def order_properties(self, transaction_type: str, service_id: str) -> list[dict[str, Any]]:
        """Property groups (``{groupId, fields}``) the vendor wants for this order."""
        payload = await self.get("/orders/properties", {"transactionType": transaction_type,
                                                         "service": service_id})
        props = payload.get("properties", payload) if isinstance(payload, dict) else payload
        return items_of(props, "items")

    async def submit_order(self, order_request: Mapping[str, Any], *, confirm: bool) -> dict[str, Any]:
        """POST ``/orders``: a dry run (``confirm=true``) or the real order. Raises on ``ERROR``."""
        payload = await self.post("/orders", {"orderRequest": dict(order_request)},
                                  {"confirm": "true" if confirm else "false"})
        if not isinstance(payload, dict):
            raise BadResponse("POST /orders: expected a JSON object")
        if str(payload.get("status") or "SUCCESS").upper() != "SUCCESS":
            code, error_id, message = vendor_error(payload)
            text = f"order refused: {self.scrub(message)[:300] or 'status ' + str(payload.get('status'))}"
            self._log("POST /orders", text, self.last_correlation, error_id)
            raise RequestRefused(self._message("POST /orders", text, self.last_correlation, error_id),
                                 code=code, error_id=error_id)
        return payload


_INVALID = object()


def _decode(raw: bytes) -> Any:
    """The JSON value of ``raw`` (None for an empty body), or ``_INVALID``."""
    text = raw.decode("utf-8-sig", "replace").strip()
    if not text:
        return None
    try:
        return loads_exact(text)  # the stdlib value: a bare numeric SIM id stays exact
    except (ValueError, RecursionError):
        return _INVALID


def _kind(path: str) -> str:
    if path in KIND_BY_PATH:
        return KIND_BY_PATH[path]
    if path.startswith("/orders"):
        return "orders"
    return "detail"


def _page_key(url: URL, query: Mapping[str, str]) -> str:
    return f"{url.with_query(None)}?{sorted(query.items())}"


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError, OverflowError):
        return default


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number == number and number >= 0 else None


def digits(value: Any) -> str:
    """Only the digits of a phone number or SIM id (``"(203) 555-0100"`` -> ``"2035550100"``)."""
    if type(value) is str and value.isascii() and value.isdigit():  # the common case: digits already
        return value
    return _NON_DIGITS.sub("", str(value or ""))


_NON_DIGITS = re.compile(r"\D")
