"""The platform contract: what a vendor plugin implements for one account.

A plugin registers :class:`Platform` subclasses through the ``fleetbridge_register_platforms`` hook
(see :mod:`fleetbridge.hookspecs`). The host creates one instance per configured account and owns
scheduling, rate budgets, retries, persistence and MQTT; the platform owns auth, requests,
pagination and the mapping of vendor fields to canonical keys (:mod:`fleetbridge.entities`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import voluptuous as vol

from .validate import integer, number

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

SLUG_RE = re.compile(r"^[a-z0-9_-]+$")
T = TypeVar("T")


def slugify(text: str) -> str:
    """``"Delivery vans #2"`` -> ``"delivery_vans_2"`` (topic-safe: ``[a-z0-9_-]``)."""
    slug = re.sub(r"[^a-z0-9_-]+", "_", str(text).lower()).strip("_")
    return slug or "unnamed"


def slug(value: Any) -> str:
    """Voluptuous validator: an existing slug."""
    if not isinstance(value, str) or not SLUG_RE.match(value):
        raise vol.Invalid("must be a slug of a-z, 0-9, _ and -")
    return value


YIELD_EVERY = 100  # items a long loop handles between two turns of the event loop


async def cooperative(items: Iterable[T], every: int = YIELD_EVERY) -> AsyncIterator[T]:
    """Iterate ``items``, letting the event loop run every ``every`` items: a poll that parses a
    large vendor answer then never holds up a command or a publish for long."""
    for n, item in enumerate(items, 1):
        if n % every == 0:
            await asyncio.sleep(0)
        yield item


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimit:
    """A vendor's budget for one kind of request.

    ``min_interval``: seconds between two requests of this kind (a per-endpoint gap).
    ``per_hour``: requests in any rolling hour (shared by every request kind that names it).
    """

    min_interval: float = 0.0
    per_hour: int | None = None


#: ``simulator: true`` (or these options) runs the platform's bundled simulator in-process and
#: points the account at it: the demo and the tests use it.
SIMULATOR_SCHEMA = vol.Schema(
    {
        vol.Optional("devices", default=5, description='simulated devices'): vol.All(int, vol.Range(min=1, max=100_000)),
        vol.Optional("seed", default=1, description='fleet generator seed'): int,
        vol.Optional("port", default=0, description='listen port (0: a free one)'): vol.All(int, vol.Range(min=0, max=65535)),
    }
)

BASE_ACCOUNT_SCHEMA = vol.Schema(
    {
        vol.Required("platform", description='the vendor platform (`fleetbridge plugins` lists them)'): str,
        vol.Required("name", description='shown in Home Assistant'): vol.All(str, vol.Length(min=1)),
        vol.Optional("id", description='slug used in topics (default: slug of the name); unique'): slug,
        vol.Optional("scan_interval", description='seconds between state polls (default per platform)'): vol.All(number, vol.Range(min=1)),
        vol.Optional("event_interval", description='seconds between event (alarm) polls (default per platform)'): vol.All(number, vol.Range(min=1)),
        vol.Optional("discovery_interval", default=3600, description='seconds between device-list refreshes'): vol.All(number, vol.Range(min=5)),
        vol.Optional("offline_grace", default=3, description="failed polls in a row before the account's devices go offline"): vol.All(integer, vol.Range(min=1)),
        vol.Optional("timeout", default=30, description='seconds per vendor request'): vol.All(number, vol.Range(min=1, max=600)),
        vol.Optional("verify_tls", default=True, description="check the vendor's TLS certificate (false must be explicit and is warned about)"): bool,
        vol.Optional("ca_file", description='CA bundle for a server with a private CA'): str,
        vol.Optional("simulator", default=False, description="run the platform's bundled simulator in-process and use it (true or {devices, seed, port})"): vol.Any(bool, SIMULATOR_SCHEMA),
        vol.Optional("services", default=dict, description='{service: true/false}; dangerous services stay off unless set true'): {str: bool},
        vol.Optional("rate_limits", default=dict, description="{request kind: minimum seconds between requests} over the platform's defaults"): {str: vol.All(number, vol.Range(min=0))},
        vol.Optional("enabled", default=True, description='false keeps the account configured but stopped'): bool,
    }
)


@dataclass(kw_only=True, slots=True)
class DeviceInfo:
    """A device found through an account."""

    id: str  # the vendor's id (IMEI, ICCID, uid); the topic slug is derived from it
    name: str
    keys: frozenset[str]  # canonical state keys this device can report (its entities)
    services: tuple[str, ...] = ()  # services this device supports (before the danger filter)
    model: str | None = None
    manufacturer: str | None = None
    sw_version: str | None = None
    hw_version: str | None = None
    serial_number: str | None = None
    suggested_area: str | None = None  # Home Assistant area (e.g. the vendor's group name)
    identifiers: dict[str, str] = field(default_factory=dict)  # imei, iccid, msisdn, plate...
    attributes: dict[str, Any] = field(default_factory=dict)  # static extras, JSON-serialisable
    has_events: bool = False


@dataclass(kw_only=True, slots=True)
class Event:
    """Something the vendor reports once (an alarm). ``uid`` must be stable across polls."""

    device_id: str
    event_type: str  # from fleetbridge.events.EVENT_TYPES
    at: datetime
    uid: str
    data: dict[str, Any] = field(default_factory=dict)  # vendor_code, vendor_name, location...


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceResult:
    """The final outcome of a service call."""

    status: str  # success, failed, timeout; or pending: finished later through ctx.resolve_call
    detail: str = ""


@dataclass(kw_only=True, slots=True)
class ServiceCall:
    """A validated service call handed to :meth:`Platform.async_call`.

    ``state`` is the device's last known canonical state and ``state_age`` its age in seconds
    (None if never seen). ``pending`` publishes and journals a ``pending`` result; call it with the
    vendor's command id as soon as the vendor has one, so that a restart can follow the command.
    """

    service: str
    params: dict[str, Any]
    state: Mapping[str, Any]
    state_age: float | None
    pending: Callable[..., Awaitable[None]]  # pending(detail: str = "", vendor_ref: str | None = None)


class AccountContext(Protocol):
    """What the host gives a platform instance."""

    account_id: str
    config: Mapping[str, Any]  # the validated account config
    session: aiohttp.ClientSession  # TLS per account config, timeout set

    async def rate(self, kind: str) -> None:
        """Wait until the budget allows one more request of ``kind`` (a RATE_LIMITS key)."""

    def add_secret(self, value: str) -> None:
        """Register a runtime secret (a token) so it is redacted from every log and message."""

    def warn(self, code: str, message: str | None) -> None:
        """Set (or clear, with None) a standing warning shown in ``bridge/info`` for this account."""

    async def kv_get(self, key: str) -> Any:
        """A value this account stored durably (JSON), or None."""

    async def kv_set(self, key: str, value: Any) -> None:
        """Store a value durably (committed before this returns)."""

    def resolve_call(self, vendor_ref: str, status: str, detail: str = "") -> bool:
        """Finish a call that :meth:`Platform.async_call` left ``pending`` (a carrier order, a SIM
        state change confirmed by a later poll). Publishes the result; False if no call is open.
        Safe to call before ``async_call`` has returned."""

    def request_poll(self) -> None:
        """Poll the account now instead of at the end of the interval (e.g. an order completed)."""


class Platform:
    """Base class of a vendor platform. One instance serves one account.

    Class attributes describe the platform; the coroutines do the work. Every vendor failure is
    raised as a :mod:`fleetbridge.errors` type.
    """

    name: ClassVar[str]  # config `platform:` value, e.g. "opengps"
    title: ClassVar[str]  # human name
    manufacturer: ClassVar[str | None] = None  # default device manufacturer
    CONFIG_SCHEMA: ClassVar[vol.Schema] = BASE_ACCOUNT_SCHEMA
    SECRET_KEYS: ClassVar[tuple[str, ...]] = ("password",)  # config keys to redact everywhere
    RATE_LIMITS: ClassVar[dict[str, RateLimit]] = {}
    SERVICES: ClassVar[tuple[str, ...]] = ()  # every service this platform can offer
    EVENT_TYPES: ClassVar[tuple[str, ...]] = ()  # event types it can emit (empty: no events)
    DEFAULT_SCAN_INTERVAL: ClassVar[float] = 60.0
    DEFAULT_EVENT_INTERVAL: ClassVar[float] = 60.0

    def __init__(self, ctx: AccountContext) -> None:
        self.ctx = ctx
        self.config = ctx.config

    async def async_setup(self) -> None:
        """Authenticate (or check credentials). Raise AuthFailed on refused credentials."""

    async def async_close(self) -> None:
        """Release what the platform holds (the host closes the HTTP session)."""

    async def async_discover(self) -> list[DeviceInfo]:
        """Every device of the account. Called at start and every ``discovery_interval``."""
        raise NotImplementedError

    async def async_poll(self, devices: list[DeviceInfo]) -> dict[str, dict[str, Any]]:
        """Current canonical state of ``devices``: vendor id -> state dict (only reported keys).

        Batch wherever the vendor takes a list. A device missing from the answer keeps its state.
        A platform implements this or :meth:`async_poll_batches`.
        """
        if type(self).async_poll_batches is Platform.async_poll_batches:
            raise NotImplementedError
        states: dict[str, dict[str, Any]] = {}
        async for batch in self.async_poll_batches(devices):
            states.update(batch)
        return states

    async def async_poll_batches(self, devices: list[DeviceInfo]) -> AsyncIterator[dict[str, dict[str, Any]]]:
        """The states of :meth:`async_poll`, yielded one vendor batch (page, request) at a time, so
        that the host publishes each batch while the next is on its way: a change then waits for its
        own batch only, not for the whole fleet. The host always polls through this method."""
        yield await self.async_poll(devices)

    async def async_fetch_events(
        self, devices: list[DeviceInfo], cursor: Any
    ) -> tuple[list[Event], Any]:
        """Events since ``cursor`` (None on first run) and the new cursor (JSON-serialisable).

        The host stores events and cursor in one transaction and drops events whose ``uid`` it has
        already delivered, so a boundary record returned twice is harmless. A platform implements
        this, :meth:`async_fetch_event_batches`, or neither (no events).
        """
        if type(self).async_fetch_event_batches is Platform.async_fetch_event_batches:
            return [], cursor
        events: list[Event] = []
        async for batch, cursor in self.async_fetch_event_batches(devices, cursor):
            events += batch
        return events, cursor

    async def async_fetch_event_batches(
        self, devices: list[DeviceInfo], cursor: Any
    ) -> AsyncIterator[tuple[list[Event], Any]]:
        """The events of :meth:`async_fetch_events`, yielded a batch at a time, each with the cursor
        that covers every event yielded so far. The host stores and publishes each batch before
        asking for the next: an alarm waits for its own batch, not for a sweep of the whole fleet;
        memory holds one batch; a fetch that fails halfway keeps what it had. The host always
        fetches through this method."""
        yield await self.async_fetch_events(devices, cursor)

    async def async_call(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        """Run a service. Raise Rejected before any vendor call when the call is unsafe or
        invalid for this device; CommandFailed when the vendor/device refused it."""
        raise NotImplementedError

    async def async_follow(self, device: DeviceInfo, service: str, vendor_ref: str) -> ServiceResult:
        """Resolve a command left pending by a previous run (after a restart). Return ``pending``
        to keep following it (then finish it with ``ctx.resolve_call``)."""
        return ServiceResult(status="timeout", detail="the bridge restarted before the device answered")

    def info(self) -> dict[str, Any]:
        """Extra, non-secret facts for ``bridge/info`` (who we act as, clock offset...)."""
        return {}

    @classmethod
    def create_simulator(cls, config: Mapping[str, Any], devices: int, seed: int, *,
                         tick: float | None = None) -> web.Application | None:
        """An aiohttp app simulating this vendor for ``config``'s credentials, or None. ``tick`` 0
        keeps the simulated world still until ``POST /_sim/step`` (None: it moves on its own)."""
        return None
