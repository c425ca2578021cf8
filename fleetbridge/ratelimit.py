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


class RateBudget:
    """Waits so that each request kind keeps its minimum gap and hourly cap."""

    def __init__(self, limits: Mapping[str, RateLimit], overrides: Mapping[str, float] | None = None) -> None:
        self.limits = dict(limits)
        for kind, gap in (overrides or {}).items():
            base = self.limits.get(kind, RateLimit())
            self.limits[kind] = RateLimit(min_interval=gap, per_hour=base.per_hour)
        self._last: dict[str, float] = {}
        self._hour: dict[str, deque[float]] = {}
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
            window = self._hour.setdefault(kind, deque())
            while window and window[0] <= now - HOUR:
                window.popleft()
            if limit.per_hour and len(window) >= limit.per_hour:
                delay = max(delay, window[0] + HOUR - now)
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            self._last[kind] = now
            window.append(now)

    def usage(self) -> dict[str, Any]:
        """Requests in the last hour per kind, and the share of the budget they use."""
        now = time.monotonic()
        out: dict[str, Any] = {}
        for kind, window in self._hour.items():
            while window and window[0] <= now - HOUR:
                window.popleft()
            limit = self.limits.get(kind, RateLimit())
            cap = limit.per_hour or (HOUR / limit.min_interval if limit.min_interval else None)
            out[kind] = {"last_hour": len(window), "share": round(len(window) / cap, 3) if cap else None}
        return out
