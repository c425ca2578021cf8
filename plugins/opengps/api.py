"""Client of the tracker Open API (Protrack365 family): auth, error codes, batching and paging.

Errors come back as HTTP 200 with ``code`` != 0; every failure is raised as a
:mod:`fleetbridge.errors` type whose message never holds the password, md5(password), a signature
or a token (URLs are logged without their query string).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp

from fleetbridge import codec
from fleetbridge.errors import (
    AuthFailed,
    BadResponse,
    CommandFailed,
    RateLimited,
    TokenInvalid,
    Unreachable,
    VendorError,
)

from .alarms import AlarmRecord, PlaybackPoint, parse_alarms, parse_playback

_LOGGER = logging.getLogger(__name__)

AUTH_PATH = "/api/authorization"

#: The rate-budget kind of each endpoint (the keys of OpenGpsPlatform.RATE_LIMITS).
KIND_BY_PATH: dict[str, str] = {
    AUTH_PATH: "auth",
    "/api/device/list": "device_list",
    "/api/track": "track",
    "/api/device/detail": "detail",
    "/api/playback": "playback",
    "/api/alarm/list": "alarm",
    "/api/device/mileage": "mileage",
    "/api/command/send": "command",
    "/api/command/query": "command",
    "/api/geofence/create": "geofence",
    "/api/user/list": "user",
    "/api/user/info": "user",
}

TOKEN_CODES = frozenset({10010, 10011, 10012})
TIME_ERROR = 10014
NO_DATA = 20023
#: Codes that, for a command, mean the vendor does not know the device.
UNKNOWN_DEVICE_CODES = frozenset({10013, 20005})

#: code -> (error class, description from the vendor document, with a hint where it helps).
ERRORS: dict[int, tuple[type[VendorError], str]] = {
    10000: (Unreachable, "system error"),
    10001: (VendorError, "unknown request"),
    10002: (Unreachable, "login timeout"),
    10003: (Unreachable, "not logged in yet"),
    10004: (VendorError, "parameter error"),
    10005: (VendorError, "missing required parameter"),
    10006: (VendorError, "parameter out of range"),
    10007: (VendorError, "permission denied"),
    10009: (RateLimited, "request is too frequent"),
    10010: (TokenInvalid, "access token does not exist"),
    10011: (TokenInvalid, "access token is invalid (voided by another login?)"),
    10012: (TokenInvalid, "access token is out of date"),
    10013: (VendorError, "IMEI is not authorized for this account"),
    10014: (VendorError, "request time error (clock skew)"),
    10016: (AuthFailed, "account is blocked"),
    20001: (AuthFailed, "account or password error"),
    20005: (VendorError, "target does not exist"),
    20017: (CommandFailed, "the device is offline, the command was not sent"),
    20018: (CommandFailed, "the platform failed to send the command to the device"),
    20023: (VendorError, "no data"),
    20046: (VendorError, "target is expired"),
    20048: (CommandFailed, "this device model does not support the command"),
    20089: (VendorError, "device is blocked"),
}

MAX_IMEIS = 100
ALARM_PAGE = 100
PLAYBACK_PAGE = 1000
MAX_PAGES = 1000  # a guard against a server that never returns a short page
MILEAGE_STEP = 1800  # mileage begin/end on :00 or :30
MILEAGE_MAX_SPAN = 7 * 86400
SHARED_WINDOW = 1800.0  # invalidations counted over 30 min; the warning clears after 30 quiet min
SHARED_THRESHOLD = 3
SHARED_RELOGIN_INTERVAL = 600.0
SKEW_LOG_THRESHOLD = 30.0
UNAUTHORIZED_RETRY = 3600.0  # an IMEI refused with 10013 is left out of track batches this long
SHARED_ACCOUNT_WARNING = (
    "the access token was voided {n} times in 30 min: the account is probably logged in elsewhere "
    "(the vendor app, another integration); fleetbridge now re-authenticates at most every 10 minutes"
)

T = TypeVar("T")
Rate = Callable[[str], Awaitable[None]]
Warn = Callable[[str, "str | None"], None]


def signature(password: str, t: int) -> str:
    """``md5(md5(password) + t)``, lower-case hex, as the authorization call wants it."""
    return _md5(_md5(password) + str(t))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()  # noqa: S324 - the vendor's algorithm


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def records(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``record`` as a list of dicts: a list, one dict, or ``""``/``{}``/null for none."""
    record = payload.get("record")
    if record in (None, "", {}, []):
        return []
    if isinstance(record, dict):
        return [record]
    if isinstance(record, list):
        return [item for item in record if isinstance(item, dict)]
    raise BadResponse(f"unexpected record of type {type(record).__name__}")


def mileage_windows(begin: int, end: int) -> list[tuple[int, int]]:
    """Align ``begin`` down and ``end`` up to :00/:30 and split into spans of at most 7 days."""
    begin -= begin % MILEAGE_STEP
    end += -end % MILEAGE_STEP
    windows = []
    while begin < end:
        windows.append((begin, min(begin + MILEAGE_MAX_SPAN, end)))
        begin += MILEAGE_MAX_SPAN
    return windows


class _CodeError(Exception):
    """Internal: the vendor answered ``code`` != 0."""

    def __init__(self, code: int, message: str, headers: Mapping[str, str]) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.headers = headers


class OpenGpsClient:
    """One account's session with the vendor. Safe for concurrent use: one auth flow at a time."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        account: str,
        password: str,
        *,
        rate: Rate,
        add_secret: Callable[[str], None],
        warn: Warn,
        clock: Callable[[], float] = time.time,
        token_refresh: float = 5400,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self.account = account
        self._password = password
        self._rate = rate
        self._add_secret = add_secret
        self._warn = warn
        self._clock = clock
        self._token_refresh = token_refresh
        self._auth_lock = asyncio.Lock()
        self._token: str | None = None
        self._token_at = 0.0  # clock() when the token was issued
        self._secrets: set[str] = {password, _md5(password)}
        self.clock_offset = 0.0  # server time - local time, seconds
        self._invalidations: deque[float] = deque()
        self._counted_token: str | None = None
        self._shared = False
        self._unauthorized: dict[str, float] = {}  # imei -> clock() when refused

    # --- time --------------------------------------------------------------------------------

    def now(self) -> float:
        """Our best estimate of the vendor's clock (local clock + measured offset)."""
        return self._clock() + self.clock_offset

    def _set_offset(self, offset: float, source: str) -> None:
        if abs(offset - self.clock_offset) > SKEW_LOG_THRESHOLD:
            _LOGGER.debug("%s: clock offset to the vendor %+.0f s (was %+.0f s, from %s)",
                          self.account, offset, self.clock_offset, source)
        self.clock_offset = offset

    def _offset_from_date(self, headers: Mapping[str, str]) -> bool:
        """Set the clock offset from an HTTP ``Date`` header; False when there is none usable."""
        try:
            server = parsedate_to_datetime(headers["Date"]).timestamp()
        except (KeyError, TypeError, ValueError, IndexError):
            return False
        self._set_offset(server - self._clock(), "the Date header")
        return True

    def _offset_from_tracks(self, items: Iterable[Mapping[str, Any]]) -> None:
        times = [t for t in (item.get("servertime") for item in items)
                 if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0]
        if times:
            self._set_offset(max(times) - self._clock(), "track servertime")

    # --- secrets -----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """``text`` without query strings and without any secret we know."""
        text = re.sub(r"\?\S*", "", text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text

    # --- auth --------------------------------------------------------------------------------

    @property
    def token_age(self) -> float | None:
        return None if self._token is None else self._clock() - self._token_at

    def _token_fresh(self) -> bool:
        age = self.token_age
        return age is not None and age < self._token_refresh

    async def authorize(self) -> None:
        """Get a new access token (voids the previous one at the vendor)."""
        async with self._auth_lock:
            await self._login()

    async def _login(self) -> None:
        """Caller holds the auth lock. One retry after correcting the clock on 10014."""
        for attempt in range(2):
            t = int(self.now())
            params = {"time": str(t), "account": self.account, "signature": signature(self._password, t)}
            try:
                payload = await self._send("GET", AUTH_PATH, "auth", params, None)
                break
            except _CodeError as err:
                if err.code == TIME_ERROR and attempt == 0 and self._offset_from_date(err.headers):
                    continue
                raise self._error(err, AUTH_PATH) from None
        record = payload.get("record")
        token = record.get("access_token") if isinstance(record, dict) else None
        if not isinstance(token, str) or not token:
            raise BadResponse(f"{AUTH_PATH}: the answer holds no access_token")
        self._add_secret(token)
        self._secrets.add(token)
        self._token, self._token_at = token, self._clock()
        _LOGGER.debug("%s: new access token", self.account)

    async def _valid_token(self) -> str:
        if not self._token_fresh():
            async with self._auth_lock:
                if not self._token_fresh():
                    await self._login()
        assert self._token is not None
        return self._token

    async def _reauthorize(self, stale: str) -> None:
        """Replace the refused token ``stale`` unless another request already did."""
        async with self._auth_lock:
            if self._token != stale:
                return
            age = self.token_age or 0.0
            if self._shared and age < SHARED_RELOGIN_INTERVAL:
                raise TokenInvalid(
                    "the access token was voided again (the account is in use elsewhere); next "
                    f"re-authentication in {SHARED_RELOGIN_INTERVAL - age:.0f} s", code=10011)
            await self._login()

    def _note_invalidation(self, code: int, token: str) -> None:
        """Count a token voided while young (someone else logged in) and warn at the threshold."""
        if code != 10011 or token != self._token or token == self._counted_token:
            return
        if not self._token_fresh():
            return
        self._counted_token = token
        now = self._clock()
        self._invalidations.append(now)
        while self._invalidations and now - self._invalidations[0] > SHARED_WINDOW:
            self._invalidations.popleft()
        if len(self._invalidations) >= SHARED_THRESHOLD and not self._shared:
            self._shared = True
            message = SHARED_ACCOUNT_WARNING.format(n=len(self._invalidations))
            _LOGGER.warning("%s: %s", self.account, message)
            self._warn("shared_account", message)

    def _maybe_clear_shared(self) -> None:
        if self._shared and self._clock() - self._invalidations[-1] >= SHARED_WINDOW:
            self._shared = False
            self._invalidations.clear()
            _LOGGER.info("%s: no token invalidation for 30 min, shared-account warning cleared",
                         self.account)
            self._warn("shared_account", None)

    # --- requests ----------------------------------------------------------------------------

    async def call(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        method: str = "GET",
        form: Mapping[str, Any] | None = None,
        kind: str | None = None,
        no_data_ok: bool = False,
    ) -> dict[str, Any]:
        """One authenticated request; the decoded answer (``code`` 0).

        Re-authenticates once on 10010/10011/10012 and corrects the clock once on 10014.
        ``no_data_ok``: answer 20023 (no data) as an empty ``record``.
        """
        kind = kind or KIND_BY_PATH[path]
        self._maybe_clear_shared()
        form_data = None if form is None else {k: str(v) for k, v in form.items()}
        reauthorized = clock_fixed = False
        while True:
            token = await self._valid_token()
            query = {**{k: str(v) for k, v in (params or {}).items()}, "access_token": token}
            try:
                return await self._send(method, path, kind, query, form_data)
            except _CodeError as err:
                if err.code in TOKEN_CODES:
                    self._note_invalidation(err.code, token)
                    if not reauthorized:
                        reauthorized = True
                        await self._reauthorize(token)
                        continue
                elif err.code == TIME_ERROR and not clock_fixed and self._offset_from_date(err.headers):
                    clock_fixed = True
                    continue
                elif err.code == NO_DATA and no_data_ok:
                    return {"code": 0, "record": []}
                raise self._error(err, path) from None

    async def _send(
        self, method: str, path: str, kind: str, query: Mapping[str, str], form: Mapping[str, str] | None
    ) -> dict[str, Any]:
        """One HTTP exchange. Raises _CodeError for ``code`` != 0, VendorError types otherwise."""
        await self._rate(kind)
        where = f"{method} {path}"
        try:
            async with self._session.request(method, self._base + path, params=query, data=form) as resp:
                status, headers = resp.status, resp.headers
                body = await resp.read()
        except asyncio.TimeoutError:
            raise Unreachable(f"{where}: timed out") from None
        except aiohttp.ClientError as err:
            raise Unreachable(f"{where}: {type(err).__name__}: {self._scrub(str(err))[:200]}") from None
        _LOGGER.debug("%s -> HTTP %s, %d bytes", where, status, len(body))
        if status >= 500:
            raise Unreachable(f"{where}: HTTP {status}")
        if status == 429:
            raise RateLimited(f"{where}: HTTP 429", retry_after=_retry_after(headers))
        payload = _decode(body)
        if payload is None:
            raise BadResponse(f"{where}: HTTP {status}, not a JSON answer: {self._snippet(body)!r}")
        code = _code(payload)
        if code is None:
            raise BadResponse(f"{where}: HTTP {status}, answer without a code: {self._snippet(body)!r}")
        if code != 0:
            raise _CodeError(code, self._scrub(str(payload.get("message") or ""))[:120], headers)
        return payload

    def _snippet(self, body: bytes) -> str:
        text = " ".join(body.decode("utf-8", errors="replace").split())
        return self._scrub(text)[:80]

    def _error(self, err: _CodeError, path: str) -> VendorError:
        cls, description = ERRORS.get(err.code, (VendorError, "unknown error code"))
        text = f"{path}: {description} (code {err.code})"
        if err.message and err.message.lower() != description.lower():
            text += f": {err.message}"
        if cls is RateLimited:
            return RateLimited(text, code=err.code, retry_after=_retry_after(err.headers))
        return cls(text, code=err.code)

    # --- endpoints ---------------------------------------------------------------------------

    async def device_list(self, account: str | None = None) -> list[dict[str, Any]]:
        """Devices of the logged-in account, or of sub-account ``account`` (at most 500)."""
        params = {} if account is None else {"account": account}
        return records(await self.call("/api/device/list", params, no_data_ok=True))

    async def user_list(self, account: str | None = None) -> list[dict[str, Any]]:
        """Sub-customers of the logged-in account, or of ``account``."""
        params = {} if account is None else {"account": account}
        return records(await self.call("/api/user/list", params, no_data_ok=True))

    async def device_detail(self, imeis: Sequence[str]) -> list[dict[str, Any]]:
        """Basic information of ``imeis``, 100 per request."""
        out: list[dict[str, Any]] = []
        for batch in chunks(imeis, MAX_IMEIS):
            out += records(await self.call("/api/device/detail", {"imeis": ",".join(batch)}, no_data_ok=True))
        return out

    async def track(self, imeis: Sequence[str]) -> list[dict[str, Any]]:
        """Latest track records of ``imeis``: one request per 100. Measures the clock skew."""
        return [record async for batch in self.track_batches(imeis) for record in batch]

    async def track_batches(self, imeis: Sequence[str]) -> AsyncIterator[list[dict[str, Any]]]:
        """The records of :meth:`track`, one request (100 IMEIs) at a time."""
        now = self._clock()
        self._unauthorized = {i: t for i, t in self._unauthorized.items() if now - t < UNAUTHORIZED_RETRY}
        wanted = [imei for imei in imeis if imei not in self._unauthorized]
        for batch in chunks(wanted, MAX_IMEIS):
            yield await self._track_batch(batch)

    async def _track_batch(self, batch: list[str]) -> list[dict[str, Any]]:
        """One batch; on 10013 (an IMEI not authorised) bisect to drop the culprit(s)."""
        try:
            payload = await self.call("/api/track", {"imeis": ",".join(batch)}, no_data_ok=True)
        except VendorError as err:
            if err.code != 10013:
                raise
            if len(batch) == 1:
                _LOGGER.warning("%s: IMEI %s is not authorized for this account; left out of polls "
                                "for an hour", self.account, batch[0])
                self._unauthorized[batch[0]] = self._clock()
                return []
            half = len(batch) // 2
            return await self._track_batch(batch[:half]) + await self._track_batch(batch[half:])
        items = records(payload)
        self._offset_from_tracks(items)
        return items

    async def alarms(self, imei: str, begin: int, end: int) -> list[AlarmRecord]:
        """Alarms of ``imei`` with system time in [begin, end], deduplicated, in vendor order."""
        return await self._paged("/api/alarm/list", imei, begin, end, ALARM_PAGE,
                                 parse_alarms, lambda r: r.systemtime)

    async def playback(self, imei: str, begin: int, end: int) -> list[PlaybackPoint]:
        """GPS points of ``imei`` in [begin, end], deduplicated, in vendor order."""
        return await self._paged("/api/playback", imei, begin, end, PLAYBACK_PAGE,
                                 parse_playback, lambda r: r.gpstime)

    async def _paged(
        self,
        path: str,
        imei: str,
        begin: int,
        end: int,
        page_size: int,
        parse: Callable[[Any], list[T]],
        cursor_of: Callable[[T], int],
    ) -> list[T]:
        """Time-cursor paging: a full page restarts at its last record's time.

        The boundary record(s) come back again: deduplicate on the whole record. A cursor that
        did not move (a run of equal times longer than a page) steps 1 s.
        """
        seen: set[T] = set()
        out: list[T] = []
        begin, end = int(begin), int(end)
        for _ in range(MAX_PAGES):
            payload = await self.call(path, {"imei": imei, "begintime": begin, "endtime": end},
                                      no_data_ok=True)
            page = parse(payload.get("record"))
            for item in page:
                if item not in seen:
                    seen.add(item)
                    out.append(item)
            if len(page) < page_size:
                return out
            cursor = cursor_of(page[-1])
            if cursor <= begin:
                _LOGGER.warning("%s %s: a full page at one timestamp (%d); stepping 1 s, records may be "
                             "skipped", path, imei, begin)
                cursor = begin + 1
            if cursor >= end:
                return out
            begin = cursor
        _LOGGER.warning("%s %s: stopped after %d pages at %d", path, imei, MAX_PAGES, begin)
        return out

    async def mileage(self, imeis: Sequence[str], begin: int, end: int) -> dict[str, float]:
        """Kilometres per IMEI over [begin, end) widened to :00/:30, summed over ≤7-day windows."""
        totals: dict[str, float] = {}
        for window_begin, window_end in mileage_windows(int(begin), int(end)):
            for batch in chunks(imeis, MAX_IMEIS):
                payload = await self.call(
                    "/api/device/mileage",
                    {"imeis": ",".join(batch), "begintime": window_begin, "endtime": window_end},
                    no_data_ok=True,
                )
                for item in records(payload):
                    imei, km = item.get("imei"), _float(item.get("mileage"))
                    if imei is not None and km is not None:
                        totals[str(imei)] = totals.get(str(imei), 0.0) + km
        return totals

    async def send_command(self, imei: str, command: str, param_data: Mapping[str, Any] | None = None) -> str:
        """Send ``command``; the vendor's command id. CommandFailed when refused."""
        form: dict[str, Any] = {"imei": imei, "command": command}
        if param_data is not None:
            form["paramData"] = json.dumps(param_data, separators=(",", ":"))
        payload = await self._command_call("/api/command/send", imei, form)
        record = payload.get("record")
        commandid = record.get("commandid") if isinstance(record, dict) else None
        if commandid in (None, ""):
            raise BadResponse("/api/command/send: the answer holds no commandid")
        return str(commandid)

    async def query_command(self, commandid: str) -> tuple[int, str]:
        """(commandstatus, response): status 1 once the device answered."""
        payload = await self.call("/api/command/query", method="POST", form={"commandid": commandid})
        record = payload.get("record")
        if not isinstance(record, dict):
            raise BadResponse("/api/command/query: the answer holds no record")
        try:
            status = int(record.get("commandstatus") or 0)
        except (TypeError, ValueError, OverflowError):
            raise BadResponse("/api/command/query: commandstatus is not a number") from None
        return status, str(record.get("response") or "")

    async def create_geofence(
        self, imei: str, name: str, alarmtype: int, lat: float, lon: float, radius: int
    ) -> None:
        """A circle fence around (lat, lon); ``alarmtype`` 0 out, 1 in, 2 both."""
        form = {"imei": imei, "efencename": name, "alarmtype": alarmtype,
                "longitude": lon, "latitude": lat, "radius": radius}
        await self._command_call("/api/geofence/create", imei, form)

    async def _command_call(self, path: str, imei: str, form: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return await self.call(path, method="POST", form=form)
        except VendorError as err:
            if err.code in UNKNOWN_DEVICE_CODES:
                raise CommandFailed(f"the vendor does not know device {imei} (code {err.code})",
                                    code=err.code) from None
            raise

    def info(self) -> dict[str, Any]:
        """Non-secret facts for bridge/info."""
        return {"account": self.account, "clock_offset_s": round(self.clock_offset, 1),
                "shared_account": self._shared}


def _decode(body: bytes) -> dict[str, Any] | None:
    """The JSON object in ``body`` whatever Content-Type claims, or None."""
    try:
        value = codec.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _code(payload: Mapping[str, Any]) -> int | None:
    try:
        return int(payload["code"])
    except (KeyError, TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number == number else None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = _float(headers.get("Retry-After"))
    return value if value is not None and value >= 0 else None
