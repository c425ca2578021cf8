"""Per-account rate budgets, declared by the platform (from its vendor document) and overridable in
the account's ``rate_limits:`` (minimum seconds between requests of a kind)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from .platform import RateLimit

HOUR = 3600.0


class MinuteCounts:
    """Requests of the last hour in per-minute buckets: at most 61 entries however many requests
    (a kind without an hourly cap needs only the count, not every timestamp)."""

    def __init__(self) -> None:
        self._buckets: deque[list[int]] = deque()  # [minute, count]

    def add(self, now: float) -> None:
        minute = int(now // 60)
        if self._buckets and self._buckets[-1][0] == minute:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([minute, 1])

    def total(self, now: float) -> int:
        oldest = int((now - HOUR) // 60)
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()
        return sum(count for _, count in self._buckets)


class RateBudget:
    """Waits so that each request kind keeps its minimum gap and hourly cap."""

    def __init__(self, limits: Mapping[str, RateLimit], overrides: Mapping[str, float] | None = None) -> None:
        self.limits = dict(limits)
        for kind, gap in (overrides or {}).items():
            base = self.limits.get(kind, RateLimit())
            self.limits[kind] = RateLimit(min_interval=gap, per_hour=base.per_hour)
        self._last: dict[str, float] = {}
        self._hour: dict[str, deque[float]] = {}  # request times of the kinds with an hourly cap
        self._counts: dict[str, MinuteCounts] = {}  # the others: counts only
        self._locks: dict[str, asyncio.Lock] = {}
        self._slow_until = 0.0

    def slow_down(self, seconds: float) -> None:
        """Hold every request of this account for ``seconds`` (after a rate-limit answer)."""
        self._slow_until = max(self._slow_until, time.monotonic() + seconds)

    async def wait(self, kind: str) -> None:
        lock = self._locks.setdefault(kind, asyncio.Lock())
        async with lock:
            limit = self.limits.get(kind, RateLimit())
            now = time.monotonic()
            delay = max(self._slow_until - now, 0.0)
            if limit.min_interval and kind in self._last:
                delay = max(delay, self._last[kind] + limit.min_interval - now)
            if limit.per_hour:
                window = self._hour.setdefault(kind, deque())
                while window and window[0] <= now - HOUR:
                    window.popleft()
                if len(window) >= limit.per_hour:
                    delay = max(delay, window[0] + HOUR - now)
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            self._last[kind] = now
            if limit.per_hour:
                self._hour[kind].append(now)
            else:
                self._counts.setdefault(kind, MinuteCounts()).add(now)

    def usage(self) -> dict[str, Any]:
        """Requests in the last hour per kind, and the share of the budget they use."""
        now = time.monotonic()
        out: dict[str, Any] = {}
        for kind in [*self._hour, *self._counts]:
            if kind in self._hour:
                window = self._hour[kind]
                while window and window[0] <= now - HOUR:
                    window.popleft()
                used = len(window)
            else:
                used = self._counts[kind].total(now)
            limit = self.limits.get(kind, RateLimit())
            cap = limit.per_hour or (HOUR / limit.min_interval if limit.min_interval else None)
            out[kind] = {"last_hour": used, "share": round(used / cap, 3) if cap else None}
        return out
