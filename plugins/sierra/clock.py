"""Clocks: the wall clock in production, a manual clock that tests and simulators drive.

A platform and its simulator take a :class:`Clock`; sleeping on a :class:`ManualClock` waits until
someone advances it, so a test can run hours of planned requests in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """Epoch seconds and an awaitable sleep on the same time line."""

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


WALL_CLOCK = WallClock()


class OffsetClock(WallClock):
    """The wall clock plus an offset that :meth:`advance` moves forward (a simulator's server clock)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class ManualClock:
    """Time that moves only through :meth:`advance` / :meth:`set`; sleepers wake in deadline order."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._t = float(start)
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._sleeping: asyncio.Event | None = None

    def time(self) -> float:
        return self._t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self._t + seconds, next(self._seq), future))
        self._event().set()
        await future

    def advance(self, seconds: float) -> None:
        self.set(self._t + max(0.0, seconds))

    step = advance

    def set(self, when: float) -> None:
        """Move to ``when`` (never backwards) and wake every sleeper due by then."""
        self._t = max(self._t, float(when))
        while self._heap and self._heap[0][0] <= self._t:
            _, _, future = heapq.heappop(self._heap)
            if not future.done():
                future.set_result(None)

    def next_deadline(self) -> float | None:
        """The earliest pending sleeper's wake-up time."""
        while self._heap and self._heap[0][2].done():
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    async def run_until(self, when: float, *, settle: float = 0.2) -> None:
        """Advance from deadline to deadline up to ``when``, letting the woken coroutines run.

        When nothing sleeps on this clock for ``settle`` real seconds (work in flight finished
        without sleeping again), time jumps to ``when``.
        """
        while self._t < when:
            deadline = self.next_deadline()
            if deadline is None:
                event = self._event()
                event.clear()
                try:
                    async with asyncio.timeout(settle):  # not wait_for: it can swallow a cancel (3.11)
                        await event.wait()
                except TimeoutError:
                    self.set(when)
                continue
            self.set(min(deadline, when))
            for _ in range(3):  # let the woken coroutines reach their next await
                await asyncio.sleep(0)

    def _event(self) -> asyncio.Event:
        if self._sleeping is None:
            self._sleeping = asyncio.Event()
        return self._sleeping
