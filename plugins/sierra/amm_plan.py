"""Planning AMM refreshes inside the group rate budget.

AMM allows 360 requests per hour per owner group by default (shared by every API client of the
group) and 10,000 per hour system-wide. The plan:

* **Batches** (:func:`plan_batches`): one group request covers a group and its subgroups, at most
  ``cap`` (100) gateways; a bigger group is split by subgroup, and gateways sitting directly in a
  too-big group (or outside any known group, or on a server without the bulk endpoint) are asked one
  by one: the fewest requests the documented API allows, not always ``ceil(N / cap)`` (README).
* **Interval** (:func:`refresh_interval`): the fastest refresh the budget allows is
  ``requests per refresh x 3600 / usable requests per hour``; the configured ``scan_interval`` is
  used when it is slower, else the achievable interval (and the platform warns).
* **Spreading** (:class:`RefreshScheduler`): one request every ``interval / requests`` seconds,
  cycling through the batches, never a burst.
* **Ledger** (:class:`RequestLedger`): every API request of the last hour with its time on the
  platform clock, persisted through ``kv_set`` so a restart neither forgets the budget it used nor
  the time of its next planned request; it also holds requests back after a 429.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fleetbridge.errors import AuthFailed, RateLimited, VendorError

from .amm_api import Gateway, Group
from .clock import Clock

_LOGGER = logging.getLogger(__name__)

HOUR = 3600.0
LEDGER_KEY = "amm_requests"


def fold(path: Sequence[str]) -> tuple[str, ...]:
    """A group path compared case-insensitively (the tree and the systems list may differ in case)."""
    return tuple(name.casefold() for name in path)


@dataclass(frozen=True, slots=True)
class Batch:
    """One request of a refresh cycle: a group with its subgroups, or a single gateway."""

    group_id: str | None  # None: the single-gateway endpoint for uids[0]
    label: str
    uids: tuple[str, ...]


class _Fleet:
    """The systems list's gateways hung on the group tree, each on exactly one group.

    Sibling groups whose names differ only in case fold to one path: the systems list cannot tell which
    of them holds a gateway, so its gateways hang on the first of them and none of them is asked by id
    (an ancestor's request still returns them all).
    """

    def __init__(self, roots: Sequence[Group], gateways: Sequence[Gateway]) -> None:
        self.members: dict[tuple[str, ...], list[str]] = {}
        for gw in gateways:
            self.members.setdefault(fold(gw.path), []).append(gw.uid)
        self.owner: dict[tuple[str, ...], Group] = {}
        self.ambiguous: set[tuple[str, ...]] = set()
        for group in (g for root in roots for g in root.walk()):
            if self.owner.setdefault(fold(group.path), group) is not group:
                self.ambiguous.add(fold(group.path))
        self._totals: dict[int, int] = {}

    def own(self, group: Group) -> list[str]:
        """The gateways directly in ``group``."""
        path = fold(group.path)
        return self.members.get(path, []) if self.owner.get(path) is group else []

    def total(self, group: Group) -> int:
        """Gateways in ``group`` and its subgroups."""
        if id(group) not in self._totals:
            self._totals[id(group)] = len(self.own(group)) + sum(self.total(c) for c in group.children)
        return self._totals[id(group)]

    def askable(self, group: Group) -> bool:
        """Whether a group data request by id returns exactly the gateways we hang on ``group``."""
        return group.id is not None and fold(group.path) not in self.ambiguous

    def outside(self) -> list[str]:
        """Gateways whose group path matches no group of the tree."""
        return [uid for path, uids in self.members.items() if path not in self.owner for uid in uids]


def plan_batches(roots: Sequence[Group] | None, gateways: Sequence[Gateway], cap: int) -> list[Batch]:
    """Cover every gateway exactly once with the fewest requests the AMM API allows.

    The only bulk read, a group data request, returns a whole subtree, so a plan is a set of disjoint
    subtrees of at most ``cap`` gateways plus single requests for the rest. Taking each subtree that
    fits from the top down is optimal: a fitting subtree costs one request, and no cheaper cover of its
    gateways exists (its ancestors do not fit); a gateway directly in a group too big to fit can only be
    asked alone. ``ceil(N / cap)`` is reached only when the tree's subtrees pack that tightly.
    """
    fleet = _Fleet(roots or (), gateways)
    planned = [batch for root in roots or () for batch in _plan_group(fleet, root, cap)]
    return planned + _singles(fleet.outside())


def _plan_group(fleet: _Fleet, group: Group, cap: int) -> list[Batch]:
    """One request for ``group`` when it fits, else its subgroups' plans and its own gateways alone."""
    if fleet.total(group) == 0:
        return []
    if fleet.askable(group) and fleet.total(group) <= cap:
        uids = tuple(uid for g in group.walk() for uid in fleet.own(g))
        return [Batch(group.id, "/".join(group.path), uids)]
    return [batch for child in group.children for batch in _plan_group(fleet, child, cap)] + _singles(fleet.own(group))


def _singles(uids: Sequence[str]) -> list[Batch]:
    """One single-gateway request each."""
    return [Batch(None, uid, (uid,)) for uid in uids]


def usable_per_hour(limit: int, share: float, overhead_per_hour: float) -> int:
    """Requests per hour left for refreshes: our share of the limit minus discovery's needs."""
    return max(1, math.floor(limit * share - overhead_per_hour))


def refresh_interval(requests: int, per_hour: int, wanted: float) -> tuple[float, float]:
    """``(achievable, used)`` refresh intervals in seconds for ``requests`` per refresh."""
    achievable = float(math.ceil(requests * HOUR / per_hour)) if requests else 0.0
    return achievable, max(wanted, achievable)


class RequestLedger:
    """Our API requests of the last hour (platform clock), persisted; a hard cap per rolling hour."""

    def __init__(self, clock: Clock, cap: int, kv_get: Callable[[str], Awaitable[Any]],
                 kv_set: Callable[[str, Any], Awaitable[None]], key: str = LEDGER_KEY) -> None:
        self.clock = clock
        self.cap = cap
        self._kv_get = kv_get
        self._kv_set = kv_set
        self._key = key
        self.times: deque[float] = deque()
        self.next_slot = 0.0  # the scheduler's next planned request
        self.blocked_until = 0.0  # after a 429
        self._loaded = False  # never overwrite the stored ledger with one that was not loaded
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        stored = await self._kv_get(self._key)
        self._loaded = True
        if not isinstance(stored, dict):
            return
        now = self.clock.time()
        times = sorted(float(t) for t in stored.get("times", []) if isinstance(t, (int, float)))
        self.times = deque(t for t in times if now - HOUR < t <= now + 1)
        self.next_slot = float(stored.get("next_slot") or 0.0)
        self.blocked_until = float(stored.get("blocked_until") or 0.0)

    async def save(self) -> None:
        if not self._loaded:
            return
        await self._kv_set(self._key, {"times": [round(t, 1) for t in self.times], "next_slot": self.next_slot,
                                       "blocked_until": self.blocked_until})

    def count(self) -> int:
        """Requests in the last hour."""
        self._prune(self.clock.time())
        return len(self.times)

    def block(self, seconds: float) -> None:
        self.blocked_until = max(self.blocked_until, self.clock.time() + seconds)

    async def acquire(self) -> None:
        """Wait until one more request fits (the hourly cap, a 429's wait), then record it."""
        async with self._lock:
            while True:
                now = self.clock.time()
                self._prune(now)
                wait = self.blocked_until - now
                if len(self.times) >= self.cap:
                    wait = max(wait, self.times[0] + HOUR - now)
                if wait <= 0:
                    break
                _LOGGER.debug("AMM budget: holding a request for %.0f s", wait)
                await self.clock.sleep(wait)
            self.times.append(now)
            await self.save()

    def _prune(self, now: float) -> None:
        while self.times and self.times[0] <= now - HOUR:
            self.times.popleft()


Fetch = Callable[[Batch], Awaitable[dict[str, dict[str, Any]]]]


class RefreshScheduler:
    """Runs the batches one every ``interval / len(batches)`` seconds, forever, in the background.

    Results and errors are collected for :meth:`drain`; :meth:`wait` returns after the next batch
    (or at once when something is waiting). A refused login stops the loop; :meth:`start` resumes.
    """

    def __init__(self, clock: Clock, ledger: RequestLedger, fetch: Fetch) -> None:
        self.clock = clock
        self.ledger = ledger
        self._fetch = fetch
        self.batches: list[Batch] = []
        self.interval = 0.0
        self.results: dict[str, dict[str, Any]] = {}
        self.error: BaseException | None = None
        self.cycles = 0
        self._progress = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def gap(self) -> float:
        return self.interval / len(self.batches) if self.batches else 0.0

    def update(self, batches: list[Batch], interval: float) -> None:
        """A new plan; it takes effect with the next request."""
        self.batches, self.interval = list(batches), interval
        self._changed.set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self.error = None
            self._task = asyncio.create_task(self._run(), name="amm-refresh")
            self._task.add_done_callback(self._finished)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def wait(self) -> None:
        """Until a batch finished (or failed) since the last :meth:`drain`."""
        if not self.batches:
            return
        await self._progress.wait()

    def drain(self) -> tuple[dict[str, dict[str, Any]], BaseException | None]:
        results, error = self.results, self.error
        self.results, self.error = {}, None
        self._progress.clear()
        if self._task is None or self._task.done():
            self._task = None
        return results, error

    def _finished(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.error = task.exception()
            self._progress.set()

    async def _run(self) -> None:
        index = 0
        while True:
            if not self.batches:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            wait = self.ledger.next_slot - self.clock.time()
            if wait > 0:
                await self.clock.sleep(wait)
            if self._changed.is_set():  # a new plan arrived while we slept: start its cycle
                index = 0
                continue
            batch = self.batches[index % len(self.batches)]
            self.ledger.next_slot = self.clock.time() + self.gap
            if not await self._run_batch(batch):
                return
            index = (index + 1) % len(self.batches)
            if index == 0:
                self.cycles += 1

    async def _run_batch(self, batch: Batch) -> bool:
        """Fetch one batch, retrying it after a 429; False when the loop must stop."""
        while True:
            try:
                self.results.update(await self._fetch(batch))
                self._progress.set()
                return True
            except RateLimited as err:
                wait = err.retry_after or self.gap or 60.0
                self.ledger.block(wait)
                self.error = err
                self._progress.set()
                _LOGGER.warning("AMM answered 429 for %s; holding requests for %.0f s", batch.label, wait)
                await self.ledger.save()
            except AuthFailed as err:
                self.error = err
                self._progress.set()
                return False
            except VendorError as err:
                self.error = err
                self._progress.set()
                _LOGGER.debug("AMM refresh of %s failed: %s", batch.label, err)
                return True
