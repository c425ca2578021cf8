"""The ``tangoe`` platform: company handsets and their lines from Tangoe MobProc, orders as events,
line suspend/restore as carrier orders."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import voluptuous as vol

from fleetbridge.errors import AuthFailed, BadResponse, CommandFailed, Rejected, Unreachable, VendorError
from fleetbridge.platform import (
    BASE_ACCOUNT_SCHEMA,
    AccountContext,
    DeviceInfo,
    Event,
    Platform,
    RateLimit,
    ServiceCall,
    ServiceResult,
    cooperative,
)
from fleetbridge.validate import integer, number

from .api import Context, RequestRefused, TangoeClient, item_id
from .auth import Credentials, TokenManager
from .mapping import Handset, device_info, dig, handset_state, index_lines, merge, needs_detail, person, text
from .orders import (
    ALREADY,
    EVENT_TYPES,
    FAILED_STATUSES,
    SUCCESS_STATUSES,
    TRANSACTIONS,
    DeviceIndex,
    MissingProperties,
    OrderSubject,
    fill_properties,
    open_counts,
    order_events,
    status_of,
)

if TYPE_CHECKING:
    from aiohttp import web

_LOGGER = logging.getLogger(__name__)

TOKEN_PATH = "/as/token.oauth2"  # PingFederate's token path (vendor-notes)
KV_ORDERS = "placed_orders"  # order id -> {device, service, transaction, placed_at}
MISSING_GRACE = 2  # a device leaves only after this many discoveries in a row without it
SWEEP_REUSE = 10.0  # s: a poll right after discovery reuses its sweep
INFLIGHT_GRACE = 1.0  # s: an order is not resolved until its call has been answered
BACKENDS = {"command": "Command (Premium Mobile)", "rivermine": "Rivermine"}


def _url(value: Any) -> str:
    """Voluptuous validator: an http(s) URL, without a trailing slash."""
    text_ = str(value).strip()
    parts = urlsplit(text_)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise vol.Invalid("must be an http:// or https:// URL")
    return text_.rstrip("/")


_TEXT = vol.All(str, vol.Strip, vol.Length(min=1))


def transaction_types(me: Mapping[str, Any]) -> frozenset[str]:
    """The order transaction types ``/me`` says the actor may place (strings or ``{id}`` objects)."""
    found = me.get("transactionTypes") or dig(me, "actor", "transactionTypes") or []
    out = set()
    for item in found if isinstance(found, list) else []:
        value = text(item.get("id") or item.get("type") or item.get("name")) if isinstance(item, Mapping) \
            else text(item)
        if value:
            out.add(value.upper())
    return frozenset(out)


def backend_of(username: str) -> str:
    """The backend named by the username prefix (``command://`` ...); Atlas has none."""
    prefix, sep, _ = username.partition("://")
    return BACKENDS.get(prefix.lower(), prefix) if sep else "Atlas"


class TangoePlatform(Platform):
    """One Tangoe MobProc tenant, seen through one (service) account."""

    name = "tangoe"
    title = "Tangoe Mobile Procurement (MobProc)"
    CONFIG_SCHEMA = BASE_ACCOUNT_SCHEMA.extend({
        # base_url and token_url: required unless `simulator` (checked in async_setup)
        vol.Optional("base_url", description="your environment's MobProc API, e.g. "
                                             "https://tngo-mobproc.cloudhub.io/mobproc/v1"): _url,
        vol.Optional("token_url", description="the PingFederate token endpoint, `https://<sso host>/as/token.oauth2`"):
            _url,
        vol.Required("tenant", description="the tenant (header X-TNGO-TENANT)"): _TEXT,
        vol.Required("client_id", description="the API client id (header `client_id` and the token request)"):
            _TEXT,
        vol.Required("client_secret", description="the client secret (use !secret)"): vol.All(str, vol.Length(min=1)),
        vol.Required("username", description="service user, with its backend prefix: command:// (Premium Mobile), "
                                             "rivermine://, none for Atlas"): _TEXT,
        vol.Required("password", description="its password (use !secret)"): vol.All(str, vol.Length(min=1)),
        vol.Optional("scope", default="MOBPROC", description="the OAuth scope"): _TEXT,
        vol.Optional("context_employee_id",
                     description="act for this employee (X-TNGO-CONTEXT-EMPLOYEEID; wins over the next)"): str,
        vol.Optional("context_company_employee_id",
                     description="act for this company employee id (X-TNGO-CONTEXT-COMPANYEMPLOYEEID)"): str,
        vol.Optional("hierarchy_id", description="header X-TNGO-CONTEXT-HIERARCHYID"): str,
        vol.Optional("page_size", default=500, description="`limit` of every collection request"):
            vol.All(integer, vol.Range(min=1, max=1000)),
        vol.Optional("max_pages", default=1000, description="most pages read per collection sweep (a guard)"):
            vol.All(integer, vol.Range(min=1, max=100_000)),
        vol.Optional("order_properties", default=dict,
                     description="{property id: value} for order properties the carrier requires, "
                                 "e.g. CONTACT_NUMBER"): {str: vol.Coerce(str)},
        vol.Optional("order_timeout", default=14 * 86400.0,
                     description="seconds: a placed order still open after this is a timeout"):
            vol.All(number, vol.Range(min=60)),
    })
    SECRET_KEYS = ("password", "client_secret")
    RATE_LIMITS = {kind: RateLimit() for kind in ("token", "me", "list", "detail", "orders", "order_write")}
    SERVICES = ("sim_suspend", "sim_restore")
    EVENT_TYPES = EVENT_TYPES
    DEFAULT_SCAN_INTERVAL = 900.0  # assets change slowly; a sweep is 2 requests per page size
    DEFAULT_EVENT_INTERVAL = 300.0  # orders

    def __init__(self, ctx: AccountContext) -> None:
        super().__init__(ctx)
        self.clock: Callable[[], float] = time.time  # tests replace it
        self.client: TangoeClient | None = None
        self.tokens: TokenManager | None = None
        self._secrets: set[str] = set()
        self._me: dict[str, Any] = {}
        self._allowed: frozenset[str] = frozenset()
        self._details: dict[str, dict[str, Any]] = {}
        self._index = DeviceIndex()
        self._open: dict[str, int] = {}
        self._known: dict[str, DeviceInfo] = {}
        self._misses: dict[str, int] = {}
        self._sweep: tuple[float, list[Handset]] | None = None
        self._inflight: set[str] = set()
        self._orders_lock = asyncio.Lock()

    # --- set-up ------------------------------------------------------------------------------

    def _add_secret(self, value: str) -> None:
        if value:
            self._secrets.add(value)
            self.ctx.add_secret(value)

    def _scrub(self, text_: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text_ = text_.replace(secret, "***")
        return text_

    def _endpoints(self) -> tuple[str, str]:
        """(base_url, token_url); with ``simulator:`` both point at the bundled simulator."""
        base_url = self.config.get("base_url")
        if not base_url:
            raise AuthFailed("no base_url configured (required unless simulator: is set)")
        if self.config.get("simulator"):
            parts = urlsplit(base_url)
            return base_url, f"{parts.scheme}://{parts.netloc}{TOKEN_PATH}"
        token_url = self.config.get("token_url")
        if not token_url:
            raise AuthFailed("no token_url configured (Tangoe's token service, e.g. https://<host>/as/token.oauth2)")
        return base_url, token_url

    async def async_setup(self) -> None:
        base_url, token_url = self._endpoints()
        cfg = self.config
        for secret in (cfg["password"], cfg["client_secret"]):
            self._add_secret(secret)
        creds = Credentials(token_url=token_url, client_id=cfg["client_id"], client_secret=cfg["client_secret"],
                            username=cfg["username"], password=cfg["password"], scope=cfg.get("scope", "MOBPROC"))
        self.tokens = TokenManager(self.ctx.session, creds, kv_get=self.ctx.kv_get, kv_set=self.ctx.kv_set,
                                   add_secret=self._add_secret, rate=self.ctx.rate, clock=lambda: self.clock(),
                                   scrub=self._scrub)
        context = Context(employee_id=cfg.get("context_employee_id") or None,
                          company_employee_id=cfg.get("context_company_employee_id") or None,
                          hierarchy_id=cfg.get("hierarchy_id") or None)
        self.client = TangoeClient(self.ctx.session, base_url, self.tokens, tenant=cfg["tenant"],
                                   client_id=cfg["client_id"], context=context, rate=self.ctx.rate,
                                   page_size=cfg.get("page_size", 500), max_pages=cfg.get("max_pages", 1000),
                                   scrub=self._scrub)
        self.client.start_activity("setup")
        try:
            await self._read_me()
        except RequestRefused as err:  # tenant, client id or context refused: a config problem
            raise AuthFailed(f"/me refused: {err} (check tenant, client_id and the context settings)",
                             code=err.code) from None

    async def _read_me(self) -> None:
        me = await self.api.me()
        if me == self._me:
            return
        self._me, self._allowed = me, transaction_types(me)
        _LOGGER.info("%s: acting as %s for %s; may place %s", self.ctx.account_id, self._who("authenticatedUser"),
                     self._who("actor"), ", ".join(sorted(self._allowed)) or "no orders")

    def _who(self, key: str) -> str | None:
        record = self._me.get(key) or (self._me.get("user") if key == "authenticatedUser" else None)
        return person(record) if isinstance(record, Mapping) else None

    @property
    def api(self) -> TangoeClient:
        if self.client is None:
            raise RuntimeError("async_setup has not run")
        return self.client

    def info(self) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {"tenant": cfg.get("tenant"), "backend": backend_of(str(cfg.get("username") or ""))}
        if self._me:
            out.update({"user": self._who("authenticatedUser"), "actor": self._who("actor") or
                        self._who("authenticatedUser"), "transaction_types": sorted(self._allowed)})
        if self.tokens is not None:
            out.update({"token_expires_in_s": self.tokens.expires_in(), "grants": dict(self.tokens.grants)})
        if self.client is not None and self.client.last_error:
            out["last_error"] = self.client.last_error
        return out

    @classmethod
    def create_simulator(cls, config: Mapping[str, Any], devices: int, seed: int, *,
                         tick: float | None = None) -> web.Application | None:
        """The simulator app; ``tick`` 0 keeps its world still until ``/_sim/step`` (None: it moves)."""
        from fleetbridge.simkit import tick_option

        from .simulator import create_app

        return create_app(users={config["username"]: config["password"]},
                          clients={config["client_id"]: config["client_secret"]},
                          tenant=config.get("tenant") or "ACME", devices=devices, seed=seed,
                          **tick_option(tick))

    # --- discovery and state -----------------------------------------------------------------

    def _offered(self) -> tuple[str, ...]:
        """Services /me allows (SUSPEND -> sim_suspend, UNSUSPEND -> sim_restore)."""
        return tuple(s for s in self.SERVICES if TRANSACTIONS[s] in self._allowed)

    async def async_discover(self) -> list[DeviceInfo]:
        self.api.start_activity("discovery")
        try:
            await self._read_me()
        except RequestRefused as err:  # keep what set-up learnt
            _LOGGER.warning("%s: /me refused, keeping the earlier answer: %s", self.ctx.account_id, err)
        handsets = await self._handsets(reuse=False)
        found = {h.id: device_info(h, self._offered()) for h in handsets}
        return list(self._with_grace(found).values())

    def _with_grace(self, found: dict[str, DeviceInfo]) -> dict[str, DeviceInfo]:
        """Keep a device missing from one sweep (an offset page shifted under us); drop it after two."""
        misses: dict[str, int] = {}
        for device_id, info in self._known.items():
            if device_id in found:
                continue
            count = self._misses.get(device_id, 0) + 1
            if count < MISSING_GRACE:
                misses[device_id] = count
                found[device_id] = info
        self._misses, self._known = misses, dict(found)
        return found

    async def async_poll(self, devices: list[DeviceInfo]) -> dict[str, dict[str, Any]]:
        self.api.start_activity("poll")
        wanted = {d.id for d in devices}
        states: dict[str, dict[str, Any]] = {}
        async for handset in cooperative(await self._handsets(reuse=True)):
            if handset.id in wanted:
                state = handset_state(handset)
                if handset.id in self._open:
                    state["open_orders"] = self._open[handset.id]
                states[handset.id] = state
        return states

    async def _handsets(self, *, reuse: bool) -> list[Handset]:
        """Every handset with its line: devices and services swept, details where the list lacks."""
        if reuse and self._sweep and time.monotonic() - self._sweep[0] < SWEEP_REUSE:
            handsets = self._sweep[1]
            self._sweep = None
            return handsets
        devices = await self.api.devices()
        lines = index_lines(await self.api.services())
        handsets = []
        async for record in cooperative(devices):
            device_id = item_id(record)
            if device_id is None:
                continue
            detail = self._details.get(device_id)
            if detail is None and needs_detail(record):
                detail = self._details[device_id] = await self._detail(record, device_id)
            handsets.append(Handset(merge(record, detail), lines.get(device_id)))
        self._reindex(handsets)
        self._sweep = (time.monotonic(), handsets)
        return handsets

    async def _detail(self, record: Mapping[str, Any], device_id: str) -> dict[str, Any]:
        """The device's detail record; {} (not asked again) when the vendor refuses it."""
        try:
            return await self.api.detail(record, f"/assets/devices/{device_id}", "device")
        except (RequestRefused, BadResponse) as err:
            _LOGGER.warning("%s: no detail for device %s: %s", self.ctx.account_id, device_id, err)
            return {}

    def _reindex(self, handsets: list[Handset]) -> None:
        index = DeviceIndex()
        for handset in handsets:
            index.add(handset.id, handset.service_id, handset.number)
        self._index = index

    # --- orders as events ----------------------------------------------------------------------

    async def async_fetch_events(self, devices: list[DeviceInfo], cursor: Any) -> tuple[list[Event], Any]:
        """Order status changes since the cursor (``{"orders": {id: status}}``; None: the first run, a
        baseline with events only for orders we placed). Also counts open orders per device and
        finishes the calls of our own orders."""
        self.api.start_activity("orders")
        async with self._orders_lock:
            orders = await self.api.orders()
            tracked = await self._tracked()
            by_id = {oid: o for o in orders if (oid := item_id(o)) is not None}
            for order_id in [oid for oid in tracked if oid not in by_id]:
                order = await self._order(order_id)
                if order is not None:
                    by_id[order_id] = order
                    orders.append(order)
            known = cursor.get("orders") if isinstance(cursor, dict) else None
            if not isinstance(known, dict):  # first run: a baseline, except for the orders we placed
                orders_seen, known = [o for o in orders if item_id(o) in tracked], {}
            else:
                orders_seen = orders
            events = order_events(orders_seen, known, self._index)
            self._open = open_counts(orders, self._index)
            await self._resolve(tracked, by_id)
        return events, {"orders": {oid: status_of(o) for oid, o in by_id.items()}}

    async def _order(self, order_id: str) -> dict[str, Any] | None:
        try:
            return await self.api.order(order_id)
        except RequestRefused as err:
            _LOGGER.warning("%s: order %s could not be read: %s", self.ctx.account_id, order_id, err)
            return None

    async def _tracked(self) -> dict[str, dict[str, Any]]:
        stored = await self.ctx.kv_get(KV_ORDERS)
        return dict(stored) if isinstance(stored, dict) else {}

    async def _track(self, order_id: str, entry: dict[str, Any]) -> None:
        tracked = await self._tracked()
        tracked[order_id] = entry
        await self.ctx.kv_set(KV_ORDERS, tracked)

    async def _resolve(self, tracked: dict[str, dict[str, Any]], by_id: Mapping[str, Mapping[str, Any]]) -> None:
        """Finish the calls of our orders that reached a final status (or the order timeout)."""
        timeout = float(self.config.get("order_timeout", 14 * 86400))
        done = []
        for order_id, entry in tracked.items():
            if order_id in self._inflight:
                continue
            order = by_id.get(order_id)
            status = status_of(order) if order is not None else "UNKNOWN"
            if status in SUCCESS_STATUSES:
                outcome = ("success", f"order {order_id} {status.lower()}: {entry.get('transaction')} done")
            elif status in FAILED_STATUSES:
                outcome = ("failed", f"order {order_id} {status.lower()}")
            elif self.clock() - float(entry.get("placed_at") or 0) > timeout:
                outcome = ("timeout", f"order {order_id} still {status.lower()} after {timeout / 86400:g} days")
            else:
                continue
            self.ctx.resolve_call(order_id, *outcome)
            done.append(order_id)
        if done:  # re-read: a call may have added an order while we were fetching
            current = await self._tracked()
            await self.ctx.kv_set(KV_ORDERS, {k: v for k, v in current.items() if k not in done})

    # --- services: SUSPEND / UNSUSPEND orders ---------------------------------------------------

    async def async_call(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        transaction = await self._check_call(device, call)
        self.api.start_activity(call.service)
        service_id = device.attributes["service_id"]
        try:
            request = await self._order_request(device, transaction, service_id)
            preview = await self.api.submit_order(request, confirm=True)
        except RequestRefused as err:
            raise CommandFailed(f"{transaction} refused by Tangoe: {err}", code=err.code) from None
        await call.pending(f"dry run ok: {self._describe(preview, transaction, device)}")
        try:
            order = await self._place(request)
        except OutcomeUnknown as err:
            return ServiceResult(status="timeout", detail=str(err))
        order_id = item_id(order)
        if order_id is None:
            raise BadResponse("POST /orders: the answer holds no orderId")
        status = status_of(order)
        self._inflight.add(order_id)
        try:
            await self._track(order_id, {"device": device.id, "service": call.service, "transaction": transaction,
                                         "placed_at": self.clock(),
                                         "external_order_number": request["externalOrderNumber"]})
            await call.pending(f"order {order_id} placed ({status.lower()})", vendor_ref=order_id)
        finally:
            asyncio.get_running_loop().call_later(INFLIGHT_GRACE, self._inflight.discard, order_id)
        return ServiceResult(status="pending", detail=f"order {order_id} {status.lower()}: waiting for the carrier")

    async def _check_call(self, device: DeviceInfo, call: ServiceCall) -> str:
        """The order's transaction type, or Rejected before any vendor call."""
        transaction = TRANSACTIONS.get(call.service)
        if transaction is None:
            raise Rejected(f"{call.service} is not a service of {self.name}")
        if transaction not in self._allowed:
            raise Rejected(f"{call.service}: /me does not allow {transaction} orders for this actor")
        if not device.attributes.get("service_id"):
            raise Rejected(f"{call.service}: device {device.id} has no line")
        if call.state.get("sim_state") == ALREADY[call.service]:
            raise Rejected(f"{call.service}: the line is already {ALREADY[call.service]}")
        for order_id, entry in (await self._tracked()).items():
            if entry.get("device") == device.id:
                raise Rejected(f"{call.service}: order {order_id} ({entry.get('transaction')}) for this line "
                               "is still open")
        return transaction

    async def _order_request(self, device: DeviceInfo, transaction: str, service_id: str) -> dict[str, Any]:
        groups = await self.api.order_properties(transaction, service_id)
        today = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT00:00:00+00:00")
        subject = OrderSubject(service_number=device.attributes.get("service_number"),
                               employee_id=device.attributes.get("employee_id"),
                               company_employee_id=device.attributes.get("company_employee_id"), today=today)
        try:
            properties = fill_properties(groups, self.config.get("order_properties") or {}, subject)
        except MissingProperties as err:
            raise Rejected(f"{transaction} needs order properties fleetbridge cannot fill: {err}; set them "
                           "under order_properties: in the account config") from None
        return {"externalOrderNumber": f"FB-{uuid.uuid4().hex[:12].upper()}", "transactionType": transaction,
                "serviceId": service_id, "properties": properties}

    async def _place(self, request: dict[str, Any]) -> dict[str, Any]:
        """POST the order (never repeated). After a lost answer, look it up by externalOrderNumber."""
        external = request["externalOrderNumber"]
        try:
            return unwrap_order(await self.api.submit_order(request, confirm=False))
        except RequestRefused as err:
            raise CommandFailed(f"{request['transactionType']} refused by Tangoe: {err}", code=err.code) from None
        except (Unreachable, BadResponse) as err:
            lost = err
        _LOGGER.warning("%s: the answer to order %s was lost (%s); looking it up", self.ctx.account_id, external,
                        lost)
        try:
            orders = await self.api.orders()
        except VendorError as err:
            raise OutcomeUnknown(f"unknown whether order {external} was placed ({lost}); the lookup failed too "
                                 f"({err}): check the orders before trying again") from None
        for order in orders:
            if order.get("externalOrderNumber") == external:
                return order
        raise CommandFailed(f"order {external} was not placed: {lost}")

    @staticmethod
    def _describe(preview: Mapping[str, Any], transaction: str, device: DeviceInfo) -> str:
        """``SUSPEND of line 2035550100 for Barbara Andrews`` from the dry run's confirmation."""
        confirmation = preview.get("orderConfirmation")
        confirmation = confirmation if isinstance(confirmation, Mapping) else {}
        number = text(dig(confirmation, "service", "serviceNumber")) or device.attributes.get("service_number")
        holder = person(confirmation.get("accountHolder")) if isinstance(confirmation.get("accountHolder"),
                                                                         Mapping) else None
        return f"{transaction} of line {number or device.attributes['service_id']}" + \
            (f" for {holder}" if holder else "")

    async def async_follow(self, device: DeviceInfo, service: str, vendor_ref: str) -> ServiceResult:
        """After a restart: keep following the order; the order poll resolves it."""
        if vendor_ref not in await self._tracked():
            await self._track(vendor_ref, {"device": device.id, "service": service,
                                           "transaction": TRANSACTIONS.get(service), "placed_at": self.clock()})
        return ServiceResult(status="pending", detail=f"following order {vendor_ref}")


class OutcomeUnknown(Exception):
    """The order may or may not have been placed (its answer and the lookup were both lost)."""


def unwrap_order(payload: Mapping[str, Any]) -> dict[str, Any]:
    order = payload.get("order")
    if not isinstance(order, Mapping):
        raise BadResponse("POST /orders: the answer holds no order")
    return dict(order)
