"""One configured account at run time: its platform instance, devices, polling, events and calls.

Like Home Assistant's update coordinator, the account alone talks to the vendor, logs a failure
only when it starts and once on recovery, and spreads its start with a little jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import aiohttp

from . import redact
from .entities import coerce_state
from .errors import AuthFailed, CommandFailed, FleetbridgeError, Rejected, VendorError
from .platform import DeviceInfo, Platform, ServiceCall, ServiceResult, cooperative, slugify
from .ratelimit import RateBudget

if TYPE_CHECKING:
    from .bridge import Bridge
    from .config import AccountConfig

_LOGGER = logging.getLogger(__name__)

AUTH_RETRY = 3600.0  # refused credentials: wait an hour (or a config change / restart)
BACKOFF_MAX = 300.0
CALL_TIMEOUT = 600.0
STATE_SAVE_EVERY = 30.0  # seconds between writes of changed states to the store
STATE_SAVE_CHUNK = 2000  # rows per transaction (40,000 at once held the event loop for 200 ms)


def _state_rows(items: Iterable[tuple[str, tuple[bytes, float]]]) -> list[tuple[str, str, float]]:
    """(slug, (state JSON, at)) -> the store's (slug, state text, at) rows."""
    return [(slug, payload.decode(), at) for slug, (payload, at) in items]


@dataclass(slots=True)
class Device:
    """A device as the host tracks it."""

    slug: str
    info: DeviceInfo
    services: tuple[str, ...]  # enabled services
    state: dict[str, Any] = field(default_factory=dict)
    state_at: float | None = None  # when the state was last received (epoch s)
    published_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AccountContextImpl:
    """The :class:`~fleetbridge.platform.AccountContext` the host hands a platform."""

    def __init__(self, account: Account, session: aiohttp.ClientSession) -> None:
        self._account = account
        self.account_id = account.id
        self.config = account.config.data
        self.session = session

    async def rate(self, kind: str) -> None:
        await self._account.budget.wait(kind)
        self._account.requests[kind] = self._account.requests.get(kind, 0) + 1

    def add_secret(self, value: str) -> None:
        redact.add_secret(value)

    def warn(self, code: str, message: str | None) -> None:
        warnings = self._account.warnings
        if message is None:
            if warnings.pop(code, None) is not None:
                self._account.bridge.info_changed()
        elif warnings.get(code) != message:
            _LOGGER.warning("%s: %s", self.account_id, message)
            warnings[code] = message
            self._account.bridge.info_changed()

    async def kv_get(self, key: str) -> Any:
        return self._account.bridge.store.kv_get(self.account_id, key)

    async def kv_set(self, key: str, value: Any) -> None:
        self._account.bridge.store.kv_set(self.account_id, key, value)

    def resolve_call(self, vendor_ref: str, status: str, detail: str = "") -> bool:
        return self._account.resolve_call(vendor_ref, status, detail)

    def request_poll(self) -> None:
        self._account.poll_now.set()


def _session(config: dict[str, Any]) -> aiohttp.ClientSession:
    if config.get("verify_tls", True):
        ssl_ctx: ssl.SSLContext | bool = ssl.create_default_context(cafile=config.get("ca_file"))
    else:
        _LOGGER.warning("%s: TLS verification is OFF (verify_tls: false); the vendor's identity is not checked",
                        config.get("id"))
        ssl_ctx = False
    timeout = aiohttp.ClientTimeout(total=config.get("timeout", 30))
    return aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=8),
                                 headers={"User-Agent": "fleetbridge"})


class Account:
    """Runs one account: set-up, discovery, polling, events and service calls."""

    def __init__(self, bridge: Bridge, config: AccountConfig, platform_cls: type[Platform] | None) -> None:
        self.bridge = bridge
        self.config = config
        self.id = config.id
        self.platform_cls = platform_cls
        self.platform: Platform | None = None
        self.budget = RateBudget(platform_cls.RATE_LIMITS if platform_cls else {}, config.data.get("rate_limits"))
        off = config.disabled_reason or (None if config.data.get("enabled", True) else "disabled in the config")
        self.status = "disabled" if off or not platform_cls else "starting"
        self.detail = off or ""
        self.warnings: dict[str, str] = {}
        self.devices: dict[str, Device] = {}
        self.by_vendor_id: dict[str, Device] = {}
        self.last_poll: float | None = None
        self.failures = 0
        self._published_available = True
        self.requests: dict[str, int] = {}  # vendor requests by kind
        self.errors: dict[str, int] = {}  # failures by error type
        self.polls = 0  # successful polls
        self._unsaved: dict[str, tuple[bytes, float]] = {}  # slug -> (state JSON, at) not yet stored
        self._saved_at = time.monotonic()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._discovered_at = 0.0
        self.ready = asyncio.Event()
        self.poll_now = asyncio.Event()  # set by the platform (ctx.request_poll) to poll before the interval

    # -- status -----------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.status in ("ok", "starting") or self.failures < self.config.data["offline_grace"]

    def _set_status(self, status: str, detail: str = "") -> None:
        """Record the account's health; log only changes; move device availability with it."""
        detail = redact.redact(detail)
        if (status, detail) != (self.status, self.detail):
            if status == "ok" and self.status not in ("ok", "starting"):
                _LOGGER.info("%s: recovered", self.id)
            elif status != "ok":
                _LOGGER.warning("%s: %s (%s)", self.id, status, detail)
            self.status, self.detail = status, detail
            self.bridge.info_changed()
        if self.available != self._published_available:
            self._published_available = self.available
            self.bridge.availability_changed(self)

    def info(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.platform is not None:
            try:
                extra = self.platform.info()
            except Exception:  # a plugin's info must never break bridge/info
                _LOGGER.exception("%s: platform info failed", self.id)
        return {
            "platform": self.config.platform, "name": self.config.name, "status": self.status,
            "detail": self.detail, "devices": len(self.devices),
            "last_poll": _iso(self.last_poll) if self.last_poll else None,
            "warnings": dict(self.warnings), "polls": self.polls, "requests": dict(self.requests),
            "errors": dict(self.errors),
            "rate_budget": self.budget.usage(), **({"platform_info": extra} if extra else {}),
        }

    # -- life cycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        if self.status == "disabled" or self.platform_cls is None:
            _LOGGER.error("%s: disabled: %s", self.id, self.detail or "platform unavailable")
            self.ready.set()
            return
        await asyncio.sleep(random.uniform(0, 0.2))
        try:
            await self.open()
            await self._restore_devices()
            self._spawn(self._event_loop())
            self._spawn(self._resume_pending())
            await self._poll_loop()
        finally:
            await self.close()

    async def open(self, retry: bool = True) -> None:
        """Open the HTTP session and set up the platform: retrying until it works, or (one-shot
        commands) raising the first failure as a readable error."""
        if self.platform_cls is None or self.status == "disabled":
            raise FleetbridgeError(f"account '{self.id}' is disabled: {self.detail or 'platform unavailable'}")
        self._session = _session(dict(self.config.data, id=self.id))
        if retry:
            await self._setup()
            return
        self.platform = self.platform_cls(AccountContextImpl(self, self._session))
        try:
            await self.platform.async_setup()
        except VendorError as err:
            raise FleetbridgeError(f"{self.id}: {friendly(err)}") from None

    async def discover_once(self) -> None:
        """Discovery for one-shot commands: a failure is a readable error."""
        try:
            await self.discover()
        except VendorError as err:
            raise FleetbridgeError(f"{self.id}: {friendly(err)}") from None

    @property
    def scan_interval(self) -> float:
        data = self.config.data
        return data.get("scan_interval") or (self.platform_cls.DEFAULT_SCAN_INTERVAL if self.platform_cls else 60.0)

    async def close(self) -> None:
        self.save_states()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.platform is not None:
            try:
                await self.platform.async_close()
            except Exception:
                _LOGGER.exception("%s: error while closing the platform", self.id)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _spawn(self, coro) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _setup(self) -> None:
        """Create and set up the platform, retrying with backoff; a crash disables the account."""
        assert self.platform_cls is not None and self._session is not None
        attempt = 0
        while True:
            try:
                self.platform = self.platform_cls(AccountContextImpl(self, self._session))
                await self.platform.async_setup()
                return
            except VendorError as err:
                attempt += 1
                await asyncio.sleep(self._failed(err, attempt))
            except Exception as err:  # the plugin's own bug: disable this account only
                _LOGGER.error("%s: set-up of platform %s failed: %s: %s; account disabled", self.id,
                              self.config.platform, type(err).__name__, redact.redact(str(err)))
                self._set_status("disabled", f"set-up failed: {type(err).__name__}")
                self.ready.set()
                await asyncio.Event().wait()

    def _failed(self, err: VendorError, attempt: int) -> float:
        """Account for a failed vendor call; return how long to back off."""
        self.failures += 1
        self._count_error(err)
        self._set_status(err.status, friendly(err))
        self.ready.set()
        return self._backoff(err, attempt)

    def _backoff(self, err: VendorError | None, attempt: int) -> float:
        if isinstance(err, AuthFailed):
            return AUTH_RETRY
        retry_after = getattr(err, "retry_after", None)
        if retry_after:
            self.budget.slow_down(retry_after)
            return retry_after
        return min(BACKOFF_MAX, 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)

    def _count_error(self, err: BaseException) -> None:
        kind = type(err).__name__
        self.errors[kind] = self.errors.get(kind, 0) + 1

    # -- devices ------------------------------------------------------------------------------
    async def _restore_devices(self) -> None:
        """Publish what the store knows at once, then discover for real."""
        for row in self.bridge.store.load_devices(self.id):
            try:
                info = _device_info(row["info"])
            except (KeyError, TypeError):
                continue
            dev = self._make_device(row["device"], info)
            dev.state = row["state"] or {}
            dev.state_at = row["state_at"]
        if self.devices:
            self.bridge.devices_changed(self, set())

    def _make_device(self, slug: str, info: DeviceInfo) -> Device:
        enabled = self._enabled_services(info)
        dev = self.devices.get(slug)
        if dev is None:
            dev = self.devices[slug] = Device(slug=slug, info=info, services=enabled)
        else:
            dev.info, dev.services = info, enabled
        self.by_vendor_id[info.id] = dev
        return dev

    def _enabled_services(self, info: DeviceInfo) -> tuple[str, ...]:
        from .services import SERVICE_BY_NAME

        assert self.platform_cls is not None
        switches = self.config.data.get("services", {})
        out = []
        for name in info.services:
            desc = SERVICE_BY_NAME.get(name)
            if desc is None or name not in self.platform_cls.SERVICES:
                continue
            if switches.get(name, not desc.dangerous):
                out.append(name)
        return tuple(out)

    async def discover(self) -> None:
        assert self.platform is not None
        found = await self.platform.async_discover()
        slugs: dict[str, DeviceInfo] = {}
        for info in found:
            base = slugify(info.id)
            slug = base
            n = 2
            while slug in slugs:
                slug = f"{base}_{n}"
                n += 1
            slugs[slug] = info
        removed = set(self.devices) - set(slugs)
        for slug in removed:
            dev = self.devices.pop(slug)
            self.by_vendor_id.pop(dev.info.id, None)
        for slug, info in slugs.items():
            self._make_device(slug, info)
        self.bridge.store.save_devices(self.id, {s: _info_dict(d.info) for s, d in self.devices.items()})
        self._discovered_at = time.monotonic()
        self.bridge.devices_changed(self, removed)

    # -- polling ------------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        data = self.config.data
        interval = self.scan_interval
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                if not self._discovered_at or started - self._discovered_at >= data["discovery_interval"]:
                    await self.discover()
                await self.poll()
                attempt = 0
                self.failures = 0
                self._set_status("ok")
                self.ready.set()
                self.poll_now.clear()
                try:
                    await asyncio.wait_for(self.poll_now.wait(), max(0.0, interval - (time.monotonic() - started)))
                except asyncio.TimeoutError:
                    pass
            except VendorError as err:
                attempt += 1
                delay = self._failed(err, attempt)
                # retry the poll soon (it is not lost), unless the credentials were refused
                await asyncio.sleep(delay if isinstance(err, AuthFailed) else min(delay, max(interval, 1.0) * 4))
            except Exception as err:  # a plugin bug must not kill the bridge
                attempt += 1
                self.failures += 1
                self._count_error(err)
                _LOGGER.exception("%s: poll failed unexpectedly", self.id)
                self._set_status("error", f"{type(err).__name__}: {err}")
                self.ready.set()
                await asyncio.sleep(self._backoff(None, attempt))

    async def poll(self) -> None:
        """One sweep, vendor batch by vendor batch: each batch is diffed and queued for MQTT before
        the next is asked for. After each batch the sweep waits (up to one interval) while MQTT has a
        backlog: a bridge short of CPU then fetches no more than it can publish, instead of fetching
        states that a newer fetch replaces before they are sent."""
        assert self.platform is not None
        devices = [d.info for d in self.devices.values()]
        loop = asyncio.get_running_loop()
        if devices:
            async for states in self.platform.async_poll_batches(devices):
                await self._apply(states)
                await self.bridge.mqtt.wait_for_room(loop.time() + self.scan_interval)
        if time.monotonic() - self._saved_at >= STATE_SAVE_EVERY:
            await self._save_states_in_chunks()
        self.polls += 1
        self.last_poll = time.time()
        self.bridge.info_changed(soon=True)

    async def _apply(self, states: dict[str, dict[str, Any]]) -> None:
        """Take one batch of vendor states: publish the devices whose canonical state changed."""
        now = time.time()
        async for vendor_id, raw in cooperative(states.items()):
            dev = self.by_vendor_id.get(vendor_id)
            if dev is None:
                continue
            state = coerce_state(raw)
            dev.state_at = now
            if state != dev.state:
                old, dev.state = dev.state, state
                self._unsaved[dev.slug] = (self.bridge.state_changed(self, dev, old), now)

    def save_states(self) -> None:
        """Write every changed state not yet stored, at once (at stop)."""
        if self._unsaved:
            self.bridge.store.save_states(self.id, _state_rows(self._unsaved.items()))
            self._unsaved.clear()

    async def _save_states_in_chunks(self) -> None:
        """Write changed states from a sweep (every ``STATE_SAVE_EVERY`` s: they only seed the next
        start, whose first poll refreshes them anyway): ``STATE_SAVE_CHUNK`` rows per transaction,
        the event loop served in between. Rows not written when cancelled stay unsaved (``close``
        writes them)."""
        rows, self._unsaved = list(self._unsaved.items()), {}
        self._saved_at = time.monotonic()
        done = 0
        try:
            while done < len(rows):
                chunk = rows[done:done + STATE_SAVE_CHUNK]
                self.bridge.store.save_states(self.id, _state_rows(chunk))
                done += len(chunk)
                await asyncio.sleep(0)
        finally:
            for slug, saved in rows[done:]:
                self._unsaved.setdefault(slug, saved)  # a newer state, if any, wins

    # -- events -------------------------------------------------------------------------------
    async def _event_loop(self) -> None:
        assert self.platform_cls is not None
        if not self.platform_cls.EVENT_TYPES:
            return
        interval = self.config.data.get("event_interval") or self.platform_cls.DEFAULT_EVENT_INTERVAL
        await self.ready.wait()
        await self.bridge.discovery_settled()
        attempt = 0
        while True:
            try:
                await self.fetch_events()
                attempt = 0
                await asyncio.sleep(interval)
            except VendorError as err:
                attempt += 1
                self._count_error(err)
                _LOGGER.debug("%s: event fetch failed: %s", self.id, err)
                await asyncio.sleep(min(self._backoff(err, attempt), interval * 4))
            except Exception:
                attempt += 1
                _LOGGER.exception("%s: event fetch failed unexpectedly", self.id)
                await asyncio.sleep(self._backoff(None, attempt))

    async def fetch_events(self) -> int:
        """One pass over the platform's event batches: each is stored with its cursor, then queued."""
        assert self.platform is not None
        store = self.bridge.store
        cursor = store.event_cursor(self.id)
        new = 0
        async for events, cursor in self.platform.async_fetch_event_batches(
                [d.info for d in self.devices.values()], cursor):
            rows, messages = [], []
            for ev in events:
                dev = self.by_vendor_id.get(ev.device_id)
                if dev is None:
                    continue
                topic, payload, body = self.bridge.event_message(self, dev, ev)
                rows.append((ev.uid, topic, payload))
                messages.append((ev.uid, dev, body))
            ids = store.record_events(self.id, rows, cursor)
            for uid, dev, body in messages:
                if ids.pop(uid, None) is not None:  # not a repeat of a delivered (or this batch's) uid
                    self.bridge.event_recorded(self, dev, body)
                    new += 1
            if new:
                self.bridge.flush_outbox()
        return new

    # -- service calls ------------------------------------------------------------------------
    async def call(self, dev: Device, service: str, params: dict[str, Any], source: str) -> ServiceResult:
        """Run a validated service call to its end; every step is journaled and published."""
        assert self.platform is not None
        store = self.bridge.store
        entry = store.journal_open(self.id, dev.slug, service, params, source)
        _LOGGER.info("%s/%s: %s requested (%s)", self.id, dev.slug, service, source)

        announced = False

        async def pending(detail: str = "", vendor_ref: str | None = None) -> None:
            nonlocal announced
            announced = True
            store.journal_update(entry, "pending", detail, vendor_ref)
            self.bridge.service_result(self, dev, service, "pending", detail)

        age = None if dev.state_at is None else time.time() - dev.state_at
        call = ServiceCall(service=service, params=params, state=dict(dev.state), state_age=age, pending=pending)
        async with dev.lock:
            try:
                result = await asyncio.wait_for(self.platform.async_call(dev.info, call), CALL_TIMEOUT)
            except Rejected as err:
                result = ServiceResult(status="rejected", detail=str(err))
            except CommandFailed as err:
                result = ServiceResult(status="failed", detail=str(err))
            except asyncio.TimeoutError:
                result = ServiceResult(status="timeout", detail="no outcome within the call time limit")
            except VendorError as err:
                self._count_error(err)
                result = ServiceResult(status="failed", detail=f"{type(err).__name__}: {err}")
            except Exception as err:
                _LOGGER.exception("%s/%s: %s failed unexpectedly", self.id, dev.slug, service)
                result = ServiceResult(status="failed", detail=f"internal error: {type(err).__name__}")
        detail = redact.redact(result.detail)
        if result.status == "pending":  # the platform finishes it later (resolve_call), maybe already has
            if store.journal_update(entry, "pending", detail, only_open=True) and not announced:
                self.bridge.service_result(self, dev, service, "pending", detail)
            return ServiceResult(status="pending", detail=detail)
        store.journal_update(entry, result.status, detail)
        self.bridge.service_result(self, dev, service, result.status, detail)
        _LOGGER.info("%s/%s: %s %s %s", self.id, dev.slug, service, result.status, detail)
        return ServiceResult(status=result.status, detail=detail)

    def resolve_call(self, vendor_ref: str, status: str, detail: str = "") -> bool:
        """Finish open journal entries carrying ``vendor_ref`` and publish their result."""
        entries = self.bridge.store.journal_by_ref(self.id, vendor_ref)
        detail = redact.redact(detail)
        for row in entries:
            self.bridge.store.journal_update(row["id"], status, detail)
            dev = self.devices.get(row["device"])
            if dev is not None:
                self.bridge.service_result(self, dev, row["service"], status, detail)
        return bool(entries)

    async def _resume_pending(self) -> None:
        """Resolve calls a previous run left open (journaled, not finished)."""
        await self.ready.wait()
        store = self.bridge.store
        for row in store.journal_pending(self.id):
            dev = self.devices.get(row["device"])
            if dev is None or not row["vendor_ref"]:
                detail = ("outcome unknown: the bridge stopped before the vendor accepted the command"
                          if dev is not None else "the device no longer exists")
                store.journal_update(row["id"], "timeout", detail)
                if dev is not None:
                    self.bridge.service_result(self, dev, row["service"], "timeout", detail)
                continue
            assert self.platform is not None
            try:
                result = await self.platform.async_follow(dev.info, row["service"], row["vendor_ref"])
            except VendorError as err:
                result = ServiceResult(status="failed", detail=str(err))
            if result.status == "pending":
                continue
            detail = redact.redact(f"after restart: {result.detail}")
            store.journal_update(row["id"], result.status, detail)
            self.bridge.service_result(self, dev, row["service"], result.status, detail)


HINTS = {
    "auth_failed": "check the account's credentials in the config",
    "unreachable": "check base_url and the network (is the vendor's host reachable from here?)",
    "rate_limited": "the vendor asks us to slow down: raise scan_interval or the account's rate_limits",
}


def friendly(err: VendorError) -> str:
    """One readable line: what failed and what to do."""
    hint = HINTS.get(err.status, "")
    return redact.redact(f"{err}" + (f" ({hint})" if hint else ""))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _info_dict(info: DeviceInfo) -> dict[str, Any]:
    return {
        "id": info.id, "name": info.name, "keys": sorted(info.keys), "services": list(info.services),
        "model": info.model, "manufacturer": info.manufacturer, "sw_version": info.sw_version,
        "hw_version": info.hw_version, "serial_number": info.serial_number,
        "suggested_area": info.suggested_area, "identifiers": info.identifiers,
        "attributes": info.attributes, "has_events": info.has_events,
    }


def _device_info(data: dict[str, Any]) -> DeviceInfo:
    return DeviceInfo(**{**data, "keys": frozenset(data["keys"]), "services": tuple(data["services"])})
