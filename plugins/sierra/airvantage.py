"""``airvantage``: Sierra Wireless AirVantage gateway inventory.

Each gateway is a device with its state (INVENTORY / BEING_TRANSFERRED), type, IMEI / serial / MAC,
labels and metadata. ``add_label`` / ``remove_label`` run the label operation and follow it to its end;
``set_note`` edits the gateway's metadata. Gateways imported, transferred or deleted elsewhere come and
go with the host's periodic rediscovery.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import voluptuous as vol

from fleetbridge import hookimpl
from fleetbridge.errors import CommandFailed, Rejected, VendorError
from fleetbridge.platform import (
    BASE_ACCOUNT_SCHEMA,
    AccountContext,
    DeviceInfo,
    Platform,
    RateLimit,
    ServiceCall,
    ServiceResult,
    cooperative,
)
from fleetbridge.validate import integer, number

from .airvantage_api import (
    MESSAGES,
    STATES,
    AirVantageApi,
    Criteria,
    metadata_dict,
    metadata_list,
)
from .clock import WALL_CLOCK, Clock
from .common import (
    CREDENTIAL_SCHEMA,
    MANUFACTURER,
    SECRET_KEYS,
    connect,
    ms_to_iso,
    sim_credentials,
    url,
)
from .oauth import OAuthClient
from .rest import ApiError

if TYPE_CHECKING:
    from aiohttp import web

_LOGGER = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://na.airvantage.net"
LISTING_REUSE = 5.0  # s: the poll right after a discovery reuses its listing
BACKGROUND_POLL = 30.0  # s between checks of an operation followed after the call returned
BACKGROUND_LIMIT = 3600.0  # s: then the call is reported as timeout
STATE_KEYS = frozenset({"lifecycle_state", "attributes"})

CRITERIA_SCHEMA = vol.Schema({
    vol.Optional("labels"): [str],
    vol.Optional("type"): str,
    vol.Optional("states"): [vol.In(STATES)],
    vol.Optional("assigned"): bool,
    vol.Optional("metadata"): {str: vol.Coerce(str)},
})


def _seconds(low: float, high: float) -> Any:
    return vol.All(number, vol.Range(min=low, max=high))


def gateway_name(gw: Mapping[str, Any]) -> str:
    """A metadata ``name``, else "<type> <serial | IMEI | MAC>", else the uid."""
    meta = metadata_dict(gw.get("metadata"))
    if meta.get("name"):
        return meta["name"]
    ident = next((str(gw[k]) for k in ("serialNumber", "imei", "macAddress") if gw.get(k)), None)
    if ident:
        return f"{gw['type']} {ident}" if gw.get("type") else ident
    return str(gw["uid"])


#: Gateway field -> state attribute, as the vendor gives it.
GATEWAY_ATTRIBUTES = (("type", "type"), ("serialNumber", "serial_number"), ("macAddress", "mac_address"))


def gateway_attributes(gw: Mapping[str, Any], note_key: str) -> dict[str, Any]:
    """Labels, identifiers, creation date and metadata (``metadata.<key>``) as state attributes."""
    get = gw.get
    meta = metadata_dict(get("metadata"))
    attrs: dict[str, Any] = {"labels": sorted(map(str, get("labels") or []))}
    for field, name in GATEWAY_ATTRIBUTES:
        value = get(field)
        if value is not None and value != "":
            attrs[name] = value
    created = get("creationDate")
    created = _created(created) if type(created) in (int, str) else ms_to_iso(created)
    if created is not None:
        attrs["created"] = created
    if meta.get(note_key):
        attrs["note"] = meta[note_key]
    for key, value in meta.items():
        if key != note_key and value != "":
            attrs[f"metadata.{key}"] = value
    return attrs


@functools.lru_cache(maxsize=65536)
def _created(value: int | str) -> str | None:
    """:func:`ms_to_iso`, remembered: a gateway's creation date comes back every poll."""
    return ms_to_iso(value)


def gateway_state(gw: Mapping[str, Any], note_key: str) -> dict[str, Any]:
    state: dict[str, Any] = {"lifecycle_state": gw.get("state"), "attributes": gateway_attributes(gw, note_key)}
    if gw.get("imei"):
        state["imei"] = str(gw["imei"])
    return state


class AirVantagePlatform(Platform):
    """One AirVantage API client (client id/secret and a user), optionally in another company."""

    name = "airvantage"
    title = "Sierra Wireless AirVantage"
    manufacturer = MANUFACTURER
    CONFIG_SCHEMA = BASE_ACCOUNT_SCHEMA.extend({
        vol.Optional("base_url", default=DEFAULT_BASE_URL,
                     description="the AirVantage region, e.g. https://eu.airvantage.net"): url,
        **CREDENTIAL_SCHEMA,
        vol.Optional("company", description="uid of another (partner) company to act in"):
            vol.All(str, vol.Length(min=1)),
        vol.Optional("criteria", default=dict,
                     description="gateway filter: {labels (any of), type, states, assigned, metadata}"):
            CRITERIA_SCHEMA,
        vol.Optional("page_size", default=500, description="gateways per listing page"):
            vol.All(integer, vol.Range(min=1, max=500)),
        vol.Optional("note_key", default="note", description="the metadata key set_note writes"):
            vol.All(str, vol.Length(min=1, max=100)),
        vol.Optional("operation_poll_interval", default=5.0, description="seconds between operation checks"):
            _seconds(0.01, 600),
        vol.Optional("operation_timeout", default=120.0,
                     description="seconds an operation is followed inside the call; then in the background"):
            _seconds(0.1, 540),
    })
    SECRET_KEYS = SECRET_KEYS
    RATE_LIMITS: ClassVar[dict[str, RateLimit]] = {"auth": RateLimit(), "api": RateLimit(min_interval=0.2)}
    SERVICES = ("add_label", "remove_label", "set_note")
    DEFAULT_SCAN_INTERVAL = 300.0
    clock: ClassVar[Clock] = WALL_CLOCK

    def __init__(self, ctx: AccountContext) -> None:
        super().__init__(ctx)
        self.note_key = str(self.config.get("note_key", "note"))
        self.criteria = Criteria.from_config(self.config.get("criteria"))
        self.oauth: OAuthClient | None = None
        self._api: AirVantageApi | None = None
        self._listing: tuple[float, list[dict[str, Any]]] | None = None
        self._followers: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def async_setup(self) -> None:
        self.oauth, rest = connect(self.ctx, self.clock, MESSAGES)
        self._api = AirVantageApi(rest, company=self.config.get("company"),
                                  page_size=int(self.config.get("page_size", 500)))
        await self.oauth.token()

    async def async_close(self) -> None:
        for task in list(self._followers):
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)

    @property
    def api(self) -> AirVantageApi:
        if self._api is None:
            raise RuntimeError("async_setup has not run")
        return self._api

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"company": self.config.get("company"), "following_operations": len(self._followers)}
        return {**out, **(self.oauth.info() if self.oauth else {})}

    @classmethod
    def create_simulator(cls, config: Mapping[str, Any], devices: int, seed: int, *,
                         tick: float | None = None) -> web.Application | None:
        """The simulator app; ``tick`` 0 keeps its world still until ``/_sim/step`` (None: it moves)."""
        from fleetbridge.simkit import tick_option

        from .airvantage_sim import create_app

        return create_app(**sim_credentials(config), devices=devices, seed=seed, **tick_option(tick))

    # --- discovery and state -----------------------------------------------------------------

    async def _gateways(self, reuse: bool) -> list[dict[str, Any]]:
        if reuse and self._listing and time.monotonic() - self._listing[0] < LISTING_REUSE:
            listing = self._listing[1]
        else:
            listing = await self.api.gateways(self.criteria)
        self._listing = None if reuse else (time.monotonic(), listing)
        return listing

    async def async_discover(self) -> list[DeviceInfo]:
        return [self._device_info(gw) for gw in await self._gateways(reuse=False)]

    def _device_info(self, gw: Mapping[str, Any]) -> DeviceInfo:
        identifiers = {"imei": gw.get("imei"), "serial": gw.get("serialNumber"), "mac": gw.get("macAddress")}
        return DeviceInfo(
            id=str(gw["uid"]), name=gateway_name(gw), keys=STATE_KEYS | ({"imei"} if gw.get("imei") else set()),
            services=self.SERVICES, model=gw.get("type") or None, manufacturer=MANUFACTURER,
            serial_number=gw.get("serialNumber") or None,
            identifiers={k: str(v) for k, v in identifiers.items() if v},
            attributes=gateway_attributes(gw, self.note_key),
        )

    async def async_poll(self, devices: list[DeviceInfo]) -> dict[str, dict[str, Any]]:
        wanted = {d.id for d in devices}
        return {str(gw["uid"]): gateway_state(gw, self.note_key)
                async for gw in cooperative(await self._gateways(reuse=True)) if str(gw["uid"]) in wanted}

    # --- services ----------------------------------------------------------------------------

    async def async_call(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        if call.service in ("add_label", "remove_label"):
            return await self._label(device, call)
        if call.service == "set_note":
            return await self._set_note(device, call)
        raise Rejected(f"{call.service} is not a service of {self.name}")

    async def async_follow(self, device: DeviceInfo, service: str, vendor_ref: str) -> ServiceResult:
        return await self._follow(vendor_ref, f"{service} (operation {vendor_ref})")

    async def _label(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        label = str(call.params.get("label") or "").strip()
        if not label:
            raise Rejected(f"{call.service} needs a label")
        add = call.service == "add_label"
        try:
            operation = await self.api.label([device.id], add=[label] if add else [], remove=[] if add else [label])
        except ApiError as err:
            raise CommandFailed(str(err), code=err.key) from None
        await call.pending(f"label operation {operation} started", vendor_ref=operation)
        what = f"label '{label}' {'added to' if add else 'removed from'} {device.name}"
        return await self._follow(operation, what)

    async def _set_note(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        if call.state.get("lifecycle_state") == "BEING_TRANSFERRED":
            raise Rejected("set_note refused: the gateway is being transferred and cannot be edited")
        note = str(call.params.get("note") or "").strip()
        try:
            gateway = await self.api.gateway(device.id)
            metadata = metadata_dict(gateway.get("metadata"))
            if note:
                metadata[self.note_key] = note
            elif metadata.pop(self.note_key, None) is None:
                return ServiceResult(status="success", detail="no note to clear")
            await self.api.edit(device.id, {"metadata": metadata_list(metadata)})
        except ApiError as err:
            raise CommandFailed(str(err), code=err.key) from None
        return ServiceResult(status="success", detail="note set" if note else "note cleared")

    async def _follow(self, operation: str, what: str) -> ServiceResult:
        """Poll the operation until FINISHED (``operation_timeout``); then keep following it in the
        background and answer ``pending``."""
        interval = float(self.config.get("operation_poll_interval", 5.0))
        deadline = self.clock.time() + float(self.config.get("operation_timeout", 120.0))
        result = await self._poll_operation(operation, what, interval, deadline)
        if result is not None:
            return result
        task = asyncio.create_task(self._follow_later(operation, what, interval))
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)
        return ServiceResult(status="pending", detail=f"{what}: operation {operation} still running; following it")

    async def _poll_operation(self, operation: str, what: str, interval: float,
                              deadline: float) -> ServiceResult | None:
        """The outcome once FINISHED, or None at ``deadline``. Lost queries are retried."""
        state = "unknown"
        while True:
            await self.clock.sleep(interval)
            try:
                op = await self.api.operation(operation)
            except VendorError as err:
                if not err.retryable:
                    return ServiceResult(status="failed", detail=f"{what}: {err}")
                _LOGGER.debug("operation %s: query failed, still following: %s", operation, err)
            else:
                state = op.state
                if op.finished:
                    return op.outcome(what)
            if self.clock.time() >= deadline:
                _LOGGER.info("operation %s still %s", operation, state)
                return None

    async def _follow_later(self, operation: str, what: str, interval: float) -> None:
        deadline = self.clock.time() + BACKGROUND_LIMIT
        result = await self._poll_operation(operation, what, max(interval, BACKGROUND_POLL), deadline)
        if result is None:
            result = ServiceResult(status="timeout", detail=f"{what}: operation {operation} did not finish "
                                                            f"within {BACKGROUND_LIMIT / 60:.0f} min")
        self.ctx.resolve_call(operation, result.status, result.detail)


@hookimpl
def fleetbridge_register_platforms(register: Any) -> None:
    register(AirVantagePlatform)
