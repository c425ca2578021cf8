"""The ``lattigo`` platform: cellular devices and SIMs behind the OptConnect Lattigo API v2."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import voluptuous as vol

from fleetbridge.errors import AuthFailed, CommandFailed, RateLimited, Rejected, VendorError
from fleetbridge.platform import (
    BASE_ACCOUNT_SCHEMA,
    AccountContext,
    DeviceInfo,
    Platform,
    RateLimit,
    ServiceCall,
    ServiceResult,
    cooperative,
    slugify,
)
from fleetbridge.validate import integer, number

from .api import DEFAULT_BASE_URL, DEVICE, LIST, OPERATION, LattigoClient, Refused
from .batching import Coalescer
from .mapping import (
    ALLOWANCE_KEYS,
    LOCATION_KEYS,
    REPORT_KEYS,
    SIM_TARGETS,
    USAGE_KEYS,
    device_info,
    device_name,
    device_state,
    latest_report,
    plan_allowances,
    plan_name,
    report_state,
    sim_state,
    sms_outcome,
    usage_on,
)
from .normalize import as_float, as_text, parse_datetime, succeeded
from .sims import SimChange, SimWatcher

if TYPE_CHECKING:
    from aiohttp import web

_LOGGER = logging.getLogger(__name__)

NOTE_FIELDS = ("note", "note1", "note2", "note3")
MAX_NOTE = 250  # the activation table's limit for note fields
LIST_REUSE_MAX = 10.0  # s: a poll right after discovery reuses discovery's listing
MIN_SLICE = 25  # devices per poll, at least, for the per-device refreshes
SLICE_CONCURRENCY = 4
HOLD = 60.0  # s: per-device refreshes pause this long after a vendor error (or Retry-After)
NO_REPORT_RECHECK = 6 * 3600.0  # s: a device without device_reports is asked again this rarely
FOLLOW_MAX = 20  # open SIM changes checked one by one per follow round
SMS_LOOKBACK = 120.0  # s: delivery records this much older than the send still match (clock skew)
KV_REPORT_DEVICES = "report_devices"


def _url(value: Any) -> str:
    """Voluptuous validator: an http(s) URL, without a trailing slash."""
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise vol.Invalid("must be an http:// or https:// URL")
    return text.rstrip("/")


SECONDS = vol.All(number, vol.Range(min=0))  # 0 disables
NON_EMPTY = vol.All(str, vol.Length(min=1))


@dataclass(slots=True)
class Usage:
    """A device's usage as last fetched, with the periods it belongs to."""

    day: str  # YYYY-MM-DD of ``today``
    today: int | None
    month: str  # YYYY-MM of ``this_month``
    this_month: int | None


class Rotation:
    """Spreads a per-device refresh over the polls: each device about every ``interval`` seconds,
    devices never fetched first, at most a quota per poll (twice the steady-state share)."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self._clock = clock
        self._due: dict[str, float] = {}
        self._held_until = 0.0
        self._last_take: float | None = None

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def held(self) -> bool:
        return self._clock() < self._held_until

    def hold(self, seconds: float) -> None:
        self._held_until = max(self._held_until, self._clock() + seconds)

    def take(self, names: list[str]) -> list[str]:
        """The devices to refresh in this poll."""
        now = self._clock()
        elapsed = now - self._last_take if self._last_take is not None else 0.0
        self._last_take = now
        if not self.enabled or self.held():
            return []
        due = sorted((n for n in names if self._due.get(n, 0.0) <= now), key=lambda n: self._due.get(n, 0.0))
        quota = max(MIN_SLICE, math.ceil(2 * len(names) * max(elapsed, 1.0) / self.interval))
        return due[:quota]

    def done(self, name: str, interval: float | None = None) -> None:
        self._due[name] = self._clock() + (interval if interval is not None else self.interval)

    def reset(self) -> None:
        """Everything due now (a new day: yesterday's "today" is stale)."""
        self._due.clear()


class LattigoPlatform(Platform):
    """One Lattigo API key (an account)."""

    name = "lattigo"
    title = "OptConnect Lattigo"
    manufacturer = "OptConnect"
    CONFIG_SCHEMA = BASE_ACCOUNT_SCHEMA.extend({
        vol.Optional("base_url", default=DEFAULT_BASE_URL, description="the Lattigo API host"): _url,
        vol.Required("key_name", description="the API key's name (the HTTP Basic user name)"): NON_EMPTY,
        vol.Required("api_key", description="the API key (use !secret)"): NON_EMPTY,
        vol.Optional("page_size", default=500,
                     description="devices per page asked for (`per_page`); the server may give fewer"):
            vol.All(integer, vol.Range(min=1, max=10_000)),
        vol.Optional("usage_interval", default=3600.0,
                     description="seconds between a device's daily and monthly usage fetches (2 requests); "
                                 "0 = off"): SECONDS,
        vol.Optional("report_interval", default=900.0,
                     description="seconds between a device's `device_reports` fetches (position, battery, "
                                 "radio); 0 = off"): SECONDS,
        vol.Optional("plan_interval", default=86400.0,
                     description="seconds between rate plan fetches (for `data_allowance_used`); 0 = off"): SECONDS,
        vol.Optional("batch_window", default=0.5,
                     description="seconds: calls of one operation within it go out as one request"):
            vol.All(number, vol.Range(min=0, max=10)),
        vol.Optional("max_batch", default=100, description="devices (`device_names`) per batched request"):
            vol.All(integer, vol.Range(min=1, max=1000)),
        vol.Optional("sim_state_timeout", default=1800.0,
                     description="seconds: a SIM suspend/restore not seen in the device list by then is a timeout"):
            vol.All(number, vol.Range(min=1)),
        vol.Optional("sim_check_interval", default=60.0,
                     description="seconds between one-device checks of open SIM changes"):
            vol.All(number, vol.Range(min=0.05)),
        vol.Optional("sms_status_interval", default=10.0,
                     description="seconds between SMS delivery-status looks (`get_sms`)"):
            vol.All(number, vol.Range(min=0)),
        vol.Optional("sms_status_attempts", default=6,
                     description="delivery-status looks after send_sms (0: none, the call ends at queued)"):
            vol.All(integer, vol.Range(min=0, max=100)),
        vol.Optional("note_field", default="note",
                     description="the field set_note writes: note, note1, note2 or note3"): vol.In(NOTE_FIELDS),
        vol.Optional("usage_limit_usernames", default=list,
                     description="Lattigo user names sent as `usernames` with set_usage_limit (from /v2/users)"):
            [NON_EMPTY],
        vol.Optional("terminate_max_etf",
                     description="terminate is refused when the early-termination fee is above this "
                                 "(or unknown); unset: no cap"): vol.All(number, vol.Range(min=0)),
    })
    SECRET_KEYS = ("api_key",)
    RATE_LIMITS = {
        LIST: RateLimit(min_interval=0.2),
        DEVICE: RateLimit(min_interval=0.05),
        OPERATION: RateLimit(min_interval=0.2),
    }
    SERVICES = ("send_sms", "sim_suspend", "sim_restore", "set_usage_limit", "remove_usage_limit", "locate",
                "set_note", "terminate")
    DEFAULT_SCAN_INTERVAL = 120.0

    def __init__(self, ctx: AccountContext) -> None:
        super().__init__(ctx)
        #: Wall clock; tests replace it.
        self.clock: Callable[[], float] = time.time
        self.client: LattigoClient | None = None
        self._coalescer = Coalescer(self.config.get("batch_window", 0.5), self.config.get("max_batch", 100))
        self._sims = SimWatcher(ctx.resolve_call, lambda: self.clock())
        self._follower: asyncio.Task[None] | None = None
        self._listing: tuple[float, list[dict[str, Any]]] | None = None  # discovery's, for the next poll
        self._usage_rotation = Rotation(self.config.get("usage_interval", 3600.0), lambda: self.clock())
        self._report_rotation = Rotation(self.config.get("report_interval", 900.0), lambda: self.clock())
        self._usage: dict[str, Usage] = {}
        self._reports: dict[str, dict[str, Any]] = {}
        self._report_devices: set[str] = set()
        self._report_devices_dirty = False
        self._allowances: dict[str, int] = {}
        self._plans_due = 0.0
        self._day = ""
        self._logged: set[str] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def async_setup(self) -> None:
        """No request: Basic auth has nothing to set up; refused keys surface at discovery."""
        self.client = LattigoClient(
            self.ctx.session, self.config.get("base_url", DEFAULT_BASE_URL), self.config["key_name"],
            self.config["api_key"], rate=self.ctx.rate, page_size=self.config.get("page_size", 500),
            max_batch=self.config.get("max_batch", 100),
        )
        for secret in self.client.secrets:
            self.ctx.add_secret(secret)
        stored = await self.ctx.kv_get(KV_REPORT_DEVICES)
        self._report_devices = {str(n) for n in stored} if isinstance(stored, list) else set()

    async def async_close(self) -> None:
        self._sims.close()
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        await self._coalescer.close()

    @property
    def api(self) -> LattigoClient:
        if self.client is None:
            raise RuntimeError("async_setup has not run")
        return self.client

    def info(self) -> dict[str, Any]:
        sweep = self.client.last_sweep.get("/v2/devices") if self.client else None
        return {
            "key_name": self.config.get("key_name"),
            "list_requests": sweep.requests if sweep else None,
            "page_size": sweep.per_page if sweep else None,
            "paged": sweep.paged if sweep else None,
            "devices_with_usage": len(self._usage),
            "devices_with_reports": len(self._report_devices),
            "open_sim_changes": len(self._sims),
            "batched_requests": self._coalescer.requests,
        }

    @classmethod
    def create_simulator(cls, config: Mapping[str, Any], devices: int, seed: int, *,
                         tick: float | None = None) -> web.Application | None:
        """The simulator app; ``tick`` 0 keeps its world still until ``/_sim/step`` (None: it moves)."""
        from fleetbridge.simkit import tick_option

        from .simulator import create_app

        return create_app(accounts={config["key_name"]: config["api_key"]}, devices=devices, seed=seed,
                          **tick_option(tick))

    # --- discovery -----------------------------------------------------------------------------

    async def async_discover(self) -> list[DeviceInfo]:
        fetched_at, records = await self._fetch_listing()
        self._listing = (fetched_at, records)
        await self._refresh_plans()
        services = self.SERVICES
        found: dict[str, DeviceInfo] = {}
        for record in records:
            info = device_info(record, services, self._extra_keys(record))
            if info is not None:
                found[info.id] = info
        return list(found.values())

    def _extra_keys(self, record: Mapping[str, Any]) -> set[str]:
        keys: set[str] = set()
        if self._usage_rotation.enabled:
            keys |= USAGE_KEYS
            if self._allowance(plan_name(record)):
                keys |= ALLOWANCE_KEYS
        if self._report_rotation.enabled and device_name(record) in self._report_devices:
            keys |= REPORT_KEYS
        return keys

    async def _fetch_listing(self) -> tuple[float, list[dict[str, Any]]]:
        started = self.clock()
        return started, await self.api.devices()

    async def _sweep(self) -> tuple[float, list[dict[str, Any]]]:
        """The device list: discovery's when it is only seconds old (one sweep per cycle)."""
        listing, self._listing = self._listing, None
        scan = float(self.config.get("scan_interval") or self.DEFAULT_SCAN_INTERVAL)
        if listing is not None and self.clock() - listing[0] < min(LIST_REUSE_MAX, scan / 2):
            return listing
        return await self._fetch_listing()

    # --- polling -------------------------------------------------------------------------------

    async def async_poll(self, devices: list[DeviceInfo]) -> dict[str, dict[str, Any]]:
        fetched_at, records = await self._sweep()
        wanted = {d.id for d in devices}
        states: dict[str, dict[str, Any]] = {}
        async for record in cooperative(records):
            name = device_name(record)
            if name in wanted:
                states[name] = device_state(record)
        self._sims.observe({n: s.get("sim_state") for n, s in states.items()}, fetched_at)
        await self._refresh_extras(list(states))
        now = datetime.fromtimestamp(self.clock(), UTC)
        day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
        for name, state in states.items():
            state.update(self._extra_state(name, state, day, month))
        return states

    async def _refresh_extras(self, names: list[str]) -> None:
        """Plans, usage and reports, each on its own interval; their errors never fail the poll."""
        today = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d")
        if today != self._day:
            if self._day:
                self._usage_rotation.reset()
            self._day = today
        await self._refresh_plans()
        await self._run_slice(self._usage_rotation, names, self._fetch_usage, "usage")
        await self._run_slice(self._report_rotation, names, self._fetch_reports, "device reports")
        if self._report_devices_dirty:
            self._report_devices_dirty = False
            await self.ctx.kv_set(KV_REPORT_DEVICES, sorted(self._report_devices))

    async def _refresh_plans(self) -> None:
        interval = float(self.config.get("plan_interval", 86400.0))
        if not interval or not self._usage_rotation.enabled or self.clock() < self._plans_due:
            return
        try:
            self._allowances = plan_allowances(await self.api.rate_plans())
            self._plans_due = self.clock() + interval
        except VendorError as err:
            self._plans_due = self.clock() + _hold_for(err)
            self._log_once("plans", f"rate plans not available, the allowance share waits: {err}")

    async def _run_slice(self, rotation: Rotation, names: list[str], job: Callable[[str], Awaitable[float | None]],
                         what: str) -> None:
        chosen = rotation.take(names)
        if not chosen:
            return
        limit = asyncio.Semaphore(SLICE_CONCURRENCY)

        async def one(name: str) -> None:
            async with limit:
                if rotation.held():
                    return
                try:
                    rotation.done(name, await job(name))
                except (Refused, AuthFailed) as err:
                    if isinstance(err, AuthFailed) and err.code != 403:
                        rotation.hold(HOLD)
                        self._log_once(f"{what}:auth", f"{what} refused: {err}")
                        return
                    rotation.done(name)  # this device only (unknown, another account's): next interval
                    self._log_once(f"{what}:{name}", f"{what} of {name} refused: {err}")
                except VendorError as err:
                    rotation.hold(_hold_for(err))
                    _LOGGER.debug("%s paused for %.0f s: %s", what, _hold_for(err), err)

        await asyncio.gather(*(one(name) for name in chosen))

    async def _fetch_usage(self, name: str) -> None:
        now = datetime.fromtimestamp(self.clock(), UTC)
        daily = await self.api.dated(name, "daily_data_usages", now, now)
        monthly = await self.api.dated(name, "monthly_data_usages", now.replace(day=1), now)
        day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
        self._usage[name] = Usage(day=day, today=usage_on(daily, day), month=month, this_month=usage_on(monthly, month))

    async def _fetch_reports(self, name: str) -> float | None:
        """The newest report of yesterday and today; a device without any is asked again rarely."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        latest = latest_report(await self.api.dated(name, "device_reports", now - timedelta(days=1), now))
        if latest is None:
            return None if name in self._reports else max(NO_REPORT_RECHECK, self._report_rotation.interval)
        self._reports[name] = report_state(latest)
        if name not in self._report_devices:
            self._report_devices.add(name)
            self._report_devices_dirty = True
        return None

    def _extra_state(self, name: str, state: Mapping[str, Any], day: str, month: str) -> dict[str, Any]:
        """Report and usage values of one device; usage counts only for today (``day``) and ``month``."""
        report = self._reports.get(name)
        usage = self._usage.get(name)
        if report is None and usage is None:
            return {}
        extra = {k: v for k, v in (report or {}).items() if k not in LOCATION_KEYS or "latitude" not in state}
        if usage is not None and usage.day == day:
            extra["data_used_today"] = usage.today
        if usage is not None and usage.month == month and usage.this_month is not None:
            extra["data_used_month"] = usage.this_month
            allowance = self._allowance(state.get("plan"))
            if allowance:
                extra["data_allowance_used"] = round(100.0 * usage.this_month / allowance, 2)
        return {k: v for k, v in extra.items() if v is not None}

    def _allowance(self, plan: Any) -> int | None:
        return self._allowances.get(plan.casefold()) if isinstance(plan, str) else None

    def _log_once(self, key: str, message: str) -> None:
        level = logging.DEBUG if key in self._logged else logging.WARNING
        self._logged.add(key)
        _LOGGER.log(level, "%s: %s", self.ctx.account_id, message)

    # --- services ------------------------------------------------------------------------------

    async def async_call(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        handler = self._handlers().get(call.service)
        if handler is None:
            raise Rejected(f"{call.service} is not a service of {self.name}")
        try:
            return await handler(device, call)
        except Refused as err:
            raise CommandFailed(str(err), code=err.code) from None

    def _handlers(self) -> dict[str, Callable[[DeviceInfo, ServiceCall], Awaitable[ServiceResult]]]:
        return {"sim_suspend": self._change_simstate, "sim_restore": self._change_simstate,
                "send_sms": self._send_sms, "set_usage_limit": self._set_usage_limit,
                "remove_usage_limit": self._remove_usage_limit, "locate": self._locate,
                "set_note": self._set_note, "terminate": self._terminate}

    async def _bulk(self, operation: str, device: DeviceInfo, params: Mapping[str, Any]) -> str:
        """``operation`` for ``device``, batched with same-operation calls of the coming window."""
        key = (operation, json.dumps(params, sort_keys=True))

        async def send(names: list[str]) -> dict[str, str]:
            return await self.api.bulk(operation, names, params)

        text = await self._coalescer.submit(key, device.id, send)
        if text is None:
            raise CommandFailed(f"{operation}: Lattigo's answer does not mention device {device.id}")
        return text

    @staticmethod
    def _outcome(text: str) -> ServiceResult:
        return ServiceResult(status="success" if succeeded(text) else "failed", detail=text)

    async def _change_simstate(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        state, target = SIM_TARGETS[call.service]
        text = await self._bulk("change_simstate", device, {"state": state})
        if not succeeded(text):
            return ServiceResult(status="failed", detail=text)
        now = self.clock()
        timeout = float(self.config.get("sim_state_timeout", 1800.0))
        change = SimChange(device=device.id, service=call.service, target=target, deadline=now + timeout, since=now)
        await call.pending(f"Lattigo accepted it ({text}); waiting for the carrier", vendor_ref=change.ref)
        self._watch(change)  # no await between this and the return: no poll can resolve it first
        return ServiceResult(status="pending", detail=f"confirmed when sim_state shows {target} "
                                                      f"(at most {timeout / 60:.0f} min)")

    def _watch(self, change: SimChange) -> None:
        self._sims.watch(change)
        if self._follower is None or self._follower.done():
            self._follower = asyncio.create_task(self._follow_sims())

    async def _follow_sims(self) -> None:
        """While changes are open, look at those devices one by one every ``sim_check_interval``
        (also without fleet polls, e.g. ``fleetbridge call``); at most FOLLOW_MAX per round. A
        confirmation asks the host for a poll, so the published state follows the result at once."""
        interval = float(self.config.get("sim_check_interval", 60.0))
        while len(self._sims):
            await asyncio.sleep(interval)
            for name in self._sims.devices()[:FOLLOW_MAX]:
                fetched_at = self.clock()
                try:
                    record = await self.api.device(name)
                except VendorError as err:
                    _LOGGER.debug("%s: SIM state check failed: %s", name, err)
                    continue
                if record is not None and self._sims.observe({name: sim_state(record.get("state"))}, fetched_at):
                    self.ctx.request_poll()

    async def async_follow(self, device: DeviceInfo, service: str, vendor_ref: str) -> ServiceResult:
        if vendor_ref.startswith("simstate:"):
            change = SimChange.from_ref(vendor_ref, since=self.clock())
            if change is None or change.deadline <= self.clock():
                return ServiceResult(status="timeout", detail="the carrier did not confirm the SIM state in time")
            self._watch(change)
            return ServiceResult(status="pending", detail=f"following: confirmed when sim_state shows {change.target}")
        if vendor_ref.startswith("sms:"):
            return await self._follow_sms(vendor_ref)
        return await super().async_follow(device, service, vendor_ref)

    async def _send_sms(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        message = str(call.params.get("message") or "").strip()
        if not message:
            raise Rejected("send_sms needs a message")
        text = await self._bulk("send_sms", device, {"sms_text": message})
        if not succeeded(text):
            return ServiceResult(status="failed", detail=text)
        sent_at = self.clock()
        ref = f"sms:{sent_at:.0f}:{_digest(message)}:{device.id}"
        await call.pending(f"queued: {text}", vendor_ref=ref)
        return await self._sms_delivery(device.id, _digest(message), sent_at, text,
                                        int(self.config.get("sms_status_attempts", 6)))

    async def _sms_delivery(self, name: str, digest: str, sent_at: float, queued: str, attempts: int) -> ServiceResult:
        """Delivery status from ``get_sms`` (VDF devices only): ``attempts`` looks, then the best we know."""
        interval = float(self.config.get("sms_status_interval", 10.0))
        last: str | None = None
        for _ in range(attempts):
            await asyncio.sleep(interval)
            try:
                found = await self._sms_status(name, digest, sent_at)
            except (Refused, AuthFailed):
                return ServiceResult(status="success", detail=f"{queued} (Lattigo keeps delivery reports for VDF "
                                                              "devices only)")
            except VendorError as err:
                _LOGGER.debug("%s: SMS status not available yet: %s", name, err)
                continue
            if found is None:
                continue
            status, detail = found
            if status != "pending":
                return ServiceResult(status=status, detail=detail)
            last = detail
        if last is not None:
            return ServiceResult(status="timeout", detail=f"queued; no final delivery status yet ({last})")
        return ServiceResult(status="success", detail=f"{queued} (no delivery report)")

    async def _sms_status(self, name: str, digest: str, sent_at: float) -> tuple[str, str] | None:
        since = datetime.fromtimestamp(sent_at - SMS_LOOKBACK, UTC)
        now = datetime.fromtimestamp(self.clock(), UTC)
        candidates = []
        for record in await self.api.dated(name, "get_sms", since, now):
            when = parse_datetime(record.get("event_timestamp"))
            body = record.get("message_body")
            if when is None or when < since or (isinstance(body, str) and _digest(body.strip()) != digest):
                continue
            candidates.append((when, record))
        if not candidates:
            return None
        return sms_outcome(max(candidates, key=lambda pair: pair[0])[1])

    async def _follow_sms(self, vendor_ref: str) -> ServiceResult:
        try:
            _, sent, digest, name = vendor_ref.split(":", 3)
            found = await self._sms_status(name, digest, float(sent))
        except (ValueError, Refused, AuthFailed):
            found = None
        if found is not None and found[0] != "pending":
            return ServiceResult(status=found[0], detail=found[1])
        return ServiceResult(status="success", detail="queued by Lattigo; no final delivery report")

    async def _set_usage_limit(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        limit_mb = as_float(call.params.get("limit_mb"))
        kb_limit = round(limit_mb * 1024) if limit_mb is not None else 0
        if kb_limit < 1:
            raise Rejected("set_usage_limit needs limit_mb of at least 0.001 (1 KB)")
        params: dict[str, Any] = {"kb_limit": kb_limit, "action": "suspend"}
        if self.config.get("usage_limit_usernames"):
            params["usernames"] = list(self.config["usage_limit_usernames"])
        return self._outcome(await self._bulk("set_usage_limit", device, params))

    async def _remove_usage_limit(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        return self._outcome(await self._bulk("remove_usage_limit", device, {}))

    async def _set_note(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        note = str(call.params.get("note", ""))
        if len(note) > MAX_NOTE:
            raise Rejected(f"set_note: at most {MAX_NOTE} characters (got {len(note)})")
        text = await self.api.set_note(device.id, note, self.config.get("note_field", "note"))
        return self._outcome(text or "Success")

    async def _locate(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        response = await self.api.cellular_locate(device.id)
        text = response if isinstance(response, str) else json.dumps(response, separators=(",", ":"))
        if text.lower().startswith("error"):
            return ServiceResult(status="failed", detail=text[:200])
        return ServiceResult(status="success", detail=f"carrier: {text[:200]} (the position arrives with a later poll)")

    async def _terminate(self, device: DeviceInfo, call: ServiceCall) -> ServiceResult:
        self._check_confirmation(device, call.params)
        fee_text = await self.api.calculate_etf(device.id)
        fee = as_float(fee_text)
        cap = self.config.get("terminate_max_etf")
        if cap is not None and (fee is None or fee > cap):
            raise Rejected(f"terminate refused: early termination fee {fee_text} exceeds terminate_max_etf {cap:g}")
        await call.pending(f"early termination fee {fee_text}; terminating")
        result = self._outcome(await self._bulk("terminate_service", device, {}))
        return ServiceResult(status=result.status, detail=f"{result.detail} (early termination fee {fee_text})")

    def _check_confirmation(self, device: DeviceInfo, params: Mapping[str, Any]) -> None:
        """terminate is irreversible: the payload must repeat the device's name (before any request)."""
        if not self.config.get("services", {}).get("terminate"):
            raise Rejected("terminate is disabled; enable it under services: in the account's config")
        confirm = as_text(params.get("confirm"))
        if confirm not in (device.id, device.name, slugify(device.id)):
            raise Rejected(f"terminate is irreversible: send {{\"confirm\": \"{device.name}\"}} (the device's name) "
                           "to confirm")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _hold_for(err: VendorError) -> float:
    retry = err.retry_after if isinstance(err, RateLimited) else None
    return retry if retry else HOLD
