"""``amm``: Sierra Wireless AirLink Mobility Manager (on-premises). Read-only: sensors, no services.

Gateways are found through the group tree and the systems list; their data is refreshed per group
(at most ``batch_size`` gateways a request) inside the owner group's hourly rate budget, spread over
the refresh interval by a background scheduler (:mod:`.amm_plan`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import voluptuous as vol

from fleetbridge import hookimpl
from fleetbridge.platform import (
    BASE_ACCOUNT_SCHEMA,
    AccountContext,
    DeviceInfo,
    Platform,
    RateLimit,
)
from fleetbridge.validate import integer, number

from .amm_api import INVALID_ID, MESSAGES, TOO_MANY_TARGETS, AmmApi, Gateway, Group
from .amm_data import (
    DATA_IDS_SCHEMA,
    Stat,
    build_stats,
    gateway_state,
    latest_values,
    state_keys,
)
from .amm_plan import (
    Batch,
    RefreshScheduler,
    RequestLedger,
    plan_batches,
    refresh_interval,
    usable_per_hour,
)
from .clock import WALL_CLOCK, Clock
from .common import (
    CREDENTIAL_SCHEMA,
    MANUFACTURER,
    SECRET_KEYS,
    connect,
    sim_credentials,
    url,
)
from .oauth import OAuthClient
from .rest import ApiError

if TYPE_CHECKING:
    from aiohttp import web

_LOGGER = logging.getLogger(__name__)

UNKNOWN_IDS_KEY = "amm_unknown_ids"
UNKNOWN_ID_RECHECK = 86400.0  # a dropped data id is tried again after a day
MISSING_ENDPOINT = (404, 405, 501)
SHARED_MARGIN = 10  # requests the server may count beyond ours before we call the budget shared
HOST_PER_HOUR = 360  # what RATE_LIMITS declares to the host (a class-level figure)


def _ranged(kind: Callable[[Any], Any], low: float, high: float) -> Any:
    return vol.All(kind, vol.Range(min=low, max=high))


class AmmPlatform(Platform):
    """One AMM API client (client id/secret and an API user)."""

    name = "amm"
    title = "Sierra Wireless AirLink Mobility Manager"
    manufacturer = MANUFACTURER
    CONFIG_SCHEMA = BASE_ACCOUNT_SCHEMA.extend({
        # required unless `simulator` (checked in async_setup)
        vol.Optional("base_url", description="the AMM server, e.g. https://amm.example.com; required unless "
                                             "`simulator`"): url,
        **CREDENTIAL_SCHEMA,
        vol.Optional("data_ids", default=dict,
                     description="`{AMM id: canonical key | attributes.<name> | {key, scale} | null}` merged over "
                                 "the default ids (null drops one)"): DATA_IDS_SCHEMA,
        vol.Optional("staleness", default=604800.0,
                     description="seconds: live values older than this are left out (0 = keep all)"):
            _ranged(number, 0, 10 * 365 * 86400),
        vol.Optional("group_rate_limit", default=360,
                     description="requests/hour the owner group may make (AMM API Group Usage Control)"):
            _ranged(integer, 1, 99_999),
        vol.Optional("system_rate_limit", default=10_000, description="AMM's system-wide requests/hour"):
            _ranged(integer, 1, 1_000_000),
        vol.Optional("budget_share", default=0.9,
                     description="share of the smaller of the two limits this bridge may use"):
            _ranged(number, 0.05, 1.0),
        vol.Optional("batch_size", default=100,
                     description="most gateways per group request (AMM's aggregation limit)"):
            _ranged(integer, 1, 1000),
    })
    SECRET_KEYS = SECRET_KEYS
    #: every /api/v1 request counts against the owner group's 360/h; the platform plans below it
    RATE_LIMITS: ClassVar[dict[str, RateLimit]] = {"auth": RateLimit(), "api": RateLimit(per_hour=HOST_PER_HOUR)}
    SERVICES = ()
    DEFAULT_SCAN_INTERVAL = 300.0  # the vendor advises polling every 5, 10 or 30 minutes
    #: the platform's clock (rate planning, staleness, token expiry); tests replace it
    clock: ClassVar[Clock] = WALL_CLOCK

    def __init__(self, ctx: AccountContext) -> None:
        super().__init__(ctx)
        self.stats: dict[str, Stat] = build_stats(self.config.get("data_ids"))
        limit = min(int(self.config.get("group_rate_limit", 360)), int(self.config.get("system_rate_limit", 10_000)))
        self.limit = limit
        self.share = float(self.config.get("budget_share", 0.9))
        self.cap = int(self.config.get("batch_size", 100))
        self.staleness = float(self.config.get("staleness", 604800.0)) or None
        self.oauth: OAuthClient | None = None
        self.ledger = RequestLedger(self.clock, max(1, math.floor(limit * self.share)), ctx.kv_get, ctx.kv_set)
        self.scheduler = RefreshScheduler(self.clock, self.ledger, self._fetch)
        self._api: AmmApi | None = None
        self._bulk = True
        self._tree: list[Group] | None = None
        self._gateways: dict[str, Gateway] = {}
        self._sw: dict[str, str] = {}
        self._dropped: dict[str, float] = {}
        self._remaining: int | None = None
        self._plan: dict[str, Any] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    async def async_setup(self) -> None:
        await self.ledger.load()
        stored = await self.ctx.kv_get(UNKNOWN_IDS_KEY)
        if isinstance(stored, dict):
            self._dropped = {str(k): float(v) for k, v in stored.items() if k in self.stats}
        self.oauth, rest = connect(self.ctx, self.clock, MESSAGES, gate=self.ledger.acquire,
                                   on_answer=self._on_answer)
        self._api = AmmApi(rest)
        if self.ledger.cap > HOST_PER_HOUR:
            self.ctx.warn("group_rate_limit", f"the budget ({self.ledger.cap}/hour) is above the {HOST_PER_HOUR}/hour "
                                              "this platform declares to the host, which still holds requests to it")
        await self.oauth.token()

    async def async_close(self) -> None:
        await self.scheduler.stop()
        await self.ledger.save()

    @property
    def api(self) -> AmmApi:
        if self._api is None:
            raise RuntimeError("async_setup has not run")
        return self._api

    @classmethod
    def create_simulator(cls, config: Mapping[str, Any], devices: int, seed: int, *,
                         tick: float | None = None) -> web.Application | None:
        """The simulator app; ``tick`` 0 keeps its world still until ``/_sim/step`` (None: it moves)."""
        from fleetbridge.simkit import tick_option

        from .amm_sim import create_app

        return create_app(**sim_credentials(config), devices=devices, seed=seed, **tick_option(tick))

    # --- discovery and the plan -------------------------------------------------------------

    async def async_discover(self) -> list[DeviceInfo]:
        tree = await self.api.group_tree() if self._bulk else None
        if tree is None and self._bulk:
            self._no_bulk("the group endpoints are missing (AMM before 2.17.4?)")
        gateways = await self.api.systems()
        self._tree, self._gateways = tree, {gw.uid: gw for gw in gateways}
        self._replan()
        keys = state_keys(self.stats)
        return [self._device_info(gw, keys) for gw in gateways]

    def _device_info(self, gw: Gateway, keys: frozenset[str]) -> DeviceInfo:
        return DeviceInfo(
            id=gw.uid, name=gw.name, keys=keys, model=gw.platform, manufacturer=MANUFACTURER,
            sw_version=self._sw.get(gw.uid), serial_number=gw.uid,
            suggested_area=gw.path[-1] if len(gw.path) > 1 else None,  # not the top "All gateways"
            identifiers={"esn": gw.uid}, attributes=_group_attributes(gw),
        )

    def _no_bulk(self, why: str) -> None:
        self._bulk = False
        self.ctx.warn("bulk_endpoint", f"{why}: every gateway is refreshed with its own request "
                                       "(/api/v1/systems/{uid}/data), which costs far more of the rate budget")

    def _replan(self) -> None:
        """Batches from the last discovery, and the interval the budget allows for them."""
        gateways = list(self._gateways.values())
        batches = plan_batches(self._tree if self._bulk else None, gateways, self.cap)
        per_discovery = 2 if self._bulk else 1
        discovery_interval = float(self.config.get("discovery_interval", 3600))
        usable = usable_per_hour(self.limit, self.share, per_discovery * math.ceil(3600 / discovery_interval))
        wanted = float(self.config.get("scan_interval") or self.DEFAULT_SCAN_INTERVAL)
        achievable, used = refresh_interval(len(batches), usable, wanted)
        self.scheduler.update(batches, used)
        groups = sum(1 for b in batches if b.group_id is not None)
        self._plan = {"gateways": len(gateways), "requests_per_refresh": len(batches), "group_requests": groups,
                      "single_requests": len(batches) - groups, "usable_per_hour": usable,
                      "configured_interval_s": wanted, "achievable_interval_s": achievable,
                      "refresh_interval_s": used}
        _LOGGER.info("%s: %d gateways in %d requests per refresh (%d groups, %d single); budget %d/h; "
                     "refresh every %.0f s", self.ctx.account_id, len(gateways), len(batches), groups,
                     len(batches) - groups, usable, used)
        if achievable > wanted:
            self.ctx.warn("scan_interval", (
                f"scan_interval {wanted:g} s cannot be met: {len(batches)} requests per refresh "
                f"({len(gateways)} gateways; {groups} group requests, {len(batches) - groups} single) within "
                f"{usable} requests/hour of the AMM rate budget; refreshing every {achievable:g} s instead"))
        else:
            self.ctx.warn("scan_interval", None)

    # --- polling -----------------------------------------------------------------------------

    async def async_poll(self, devices: list[DeviceInfo]) -> dict[str, dict[str, Any]]:
        if not self.scheduler.batches:
            return {}
        self.scheduler.start()
        await self.scheduler.wait()
        results, error = self.scheduler.drain()
        wanted = {d.id for d in devices}
        states = {uid: state for uid, state in results.items() if uid in wanted}
        if error is not None and not states:
            raise error
        self.ctx.warn("partial_refresh", f"some gateways were not refreshed: {error}" if error else None)
        return states

    async def _fetch(self, batch: Batch) -> dict[str, dict[str, Any]]:
        """Canonical states of one batch's gateways."""
        ids = self._active_ids()
        if not ids:
            return {}
        if batch.group_id is None:
            raw = {batch.uids[0]: await self.api.system_data(batch.uids[0], ids)}
        else:
            raw = await self._group_data(batch, ids)
        now = self.clock.time()
        return {uid: self._state(uid, data, now) for uid, data in raw.items() if uid in self._gateways}

    async def _group_data(self, batch: Batch, ids: list[str]) -> dict[str, Any]:
        assert batch.group_id is not None
        try:
            return await self.api.group_data(batch.group_id, ids)
        except ApiError as err:
            if err.key == INVALID_ID:
                bad = [p for p in err.params if p in ids] or await self._bisect(batch.group_id, ids)
                await self._drop(bad)
                rest = self._active_ids()
                return await self.api.group_data(batch.group_id, rest) if rest else {}
            if err.key == TOO_MANY_TARGETS:
                await self._too_many(batch)
                return {}
            if err.status in MISSING_ENDPOINT:
                self._no_bulk("the group data endpoint is missing")
                self._replan()
                return {}
            raise

    async def _bisect(self, group_id: str, ids: list[str]) -> list[str]:
        """The ids that make a group request fail with ``system.invalid.data.param`` (``ids`` fails)."""
        if len(ids) == 1:
            return list(ids)
        first, second = ids[:len(ids) // 2], ids[len(ids) // 2:]
        if await self._accepted(group_id, first):
            return await self._bisect(group_id, second)  # the failure must be in the second half
        bad = await self._bisect(group_id, first)
        return bad if await self._accepted(group_id, second) else bad + await self._bisect(group_id, second)

    async def _accepted(self, group_id: str, ids: list[str]) -> bool:
        try:
            await self.api.group_data(group_id, ids)
        except ApiError as err:
            if err.key != INVALID_ID:
                raise
            return False
        return True

    async def _drop(self, bad: list[str]) -> None:
        now = self.clock.time()
        for stat_id in bad:
            self._dropped[stat_id] = now
        await self.ctx.kv_set(UNKNOWN_IDS_KEY, self._dropped)
        names = ", ".join(f"'{s}'" for s in sorted(self._dropped))
        self.ctx.warn("unknown_data_ids", f"AMM does not know the data id(s) {names} "
                                          "(system.invalid.data.param): left out of requests; fix data_ids")

    def _active_ids(self) -> list[str]:
        now = self.clock.time()
        expired = [s for s, at in self._dropped.items() if now - at > UNKNOWN_ID_RECHECK]
        for stat_id in expired:
            del self._dropped[stat_id]
        if expired and not self._dropped:
            self.ctx.warn("unknown_data_ids", None)
        return [s for s in self.stats if s not in self._dropped]

    async def _too_many(self, batch: Batch) -> None:
        """AMM refused a group request as too big: re-read the gateways; lower the cap if unchanged."""
        _LOGGER.warning("%s: AMM refused %s (%d gateways) with %s; re-reading the gateway list",
                        self.ctx.account_id, batch.label, len(batch.uids), TOO_MANY_TARGETS)
        self._gateways = {gw.uid: gw for gw in await self.api.systems()}
        before = self.cap
        self._replan()
        if any(b.group_id == batch.group_id and len(b.uids) >= len(batch.uids) for b in self.scheduler.batches):
            self.cap = max(1, len(batch.uids) - 1)
            self.ctx.warn("batch_size", f"AMM refuses {len(batch.uids)} gateways in one request; using at most "
                                        f"{self.cap} (was {before}); set batch_size to match the server")
            self._replan()

    def _state(self, uid: str, data: Any, now: float) -> dict[str, Any]:
        result = gateway_state(latest_values(data), self.stats, now=now, staleness=self.staleness,
                               attributes=_group_attributes(self._gateways[uid]))
        if result.sw_version:
            self._sw[uid] = result.sw_version
        return result.state

    def _on_answer(self, status: int, headers: Mapping[str, str]) -> None:
        """Read ``X-Rate-Limit-Remaining``; at 0 hold requests for one planned gap."""
        try:
            self._remaining = int(headers["X-Rate-Limit-Remaining"])
        except (KeyError, TypeError, ValueError):
            return
        if self._remaining <= 0 and status != 429:
            self.ledger.block(self.scheduler.gap or 3600.0 / self.ledger.cap)
        used = self.ledger.count()
        if self._remaining < self.limit - used - SHARED_MARGIN:
            self.ctx.warn("shared_budget", f"AMM reports {self._remaining} requests left this hour while this "
                                           f"bridge used {used} of {self.limit}: another API client uses the owner "
                                           "group's budget; lower budget_share")
        else:
            self.ctx.warn("shared_budget", None)

    def info(self) -> dict[str, Any]:
        return {
            **self._plan, "bulk_endpoint": self._bulk, "budget_per_hour": self.ledger.cap,
            "requests_last_hour": self.ledger.count(), "rate_limit_remaining": self._remaining,
            "refresh_cycles": self.scheduler.cycles, "unknown_data_ids": sorted(self._dropped),
            **(self.oauth.info() if self.oauth else {}),
        }


def _group_attributes(gw: Gateway) -> dict[str, Any]:
    return {"group": gw.path[-1], "groups": list(gw.path)} if gw.path else {}


@hookimpl
def fleetbridge_register_platforms(register: Any) -> None:
    register(AmmPlatform)
