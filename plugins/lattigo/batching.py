"""Coalescing of same-operation service calls into one vendor request.

Lattigo's device operations take arrays of device names. A Home Assistant script suspending twenty
SIMs sends twenty calls within milliseconds; they should be one request. Each call waits up to
``window`` seconds for company, then one request goes out and every call gets its own device's
result.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

Send = Callable[[list[str]], Awaitable[dict[str, str]]]


@dataclass(slots=True)
class _Batch:
    send: Send
    waiters: dict[str, list[asyncio.Future[str | None]]] = field(default_factory=dict)
    full: asyncio.Event = field(default_factory=asyncio.Event)


class Coalescer:
    """Batches calls by key (operation plus its shared parameters); ``max_batch`` names per request."""

    def __init__(self, window: float, max_batch: int) -> None:
        self.window = window
        self.max_batch = max_batch
        self._open: dict[Hashable, _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0  # requests sent (for bridge/info and tests)

    async def submit(self, key: Hashable, name: str, send: Send) -> str | None:
        """Queue ``name`` under ``key``; the device's result text once the batch ran (None when the
        answer did not mention it). Raises the request's error."""
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(send)
            task = asyncio.create_task(self._run(key, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        batch.waiters.setdefault(name, []).append(future)
        if len(batch.waiters) >= self.max_batch:
            self._close(key, batch)
        return await future

    def _close(self, key: Hashable, batch: _Batch) -> None:
        """No more names for ``batch``: the next call under ``key`` opens a new one."""
        if self._open.get(key) is batch:
            del self._open[key]
        batch.full.set()

    async def _run(self, key: Hashable, batch: _Batch) -> None:
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(batch.full.wait(), self.window)
            self._close(key, batch)
            names = [name for name, futures in batch.waiters.items() if any(not f.done() for f in futures)]
            if not names:  # every caller gave up (timed out): nothing to send
                return
            self.requests += 1
            try:
                results = await batch.send(names)
            except Exception as err:  # the request failed for every device of the batch
                failure = err
                _settle(batch, lambda future: future.set_exception(failure))
                return
            for name, futures in batch.waiters.items():
                for future in futures:
                    if not future.done():
                        future.set_result(results.get(name))
        except asyncio.CancelledError:
            self._close(key, batch)
            _settle(batch, lambda future: future.cancel())
            raise

    async def close(self) -> None:
        """Cancel batches not yet sent (their callers get CancelledError)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _settle(batch: _Batch, action: Callable[[asyncio.Future[str | None]], object]) -> None:
    for futures in batch.waiters.values():
        for future in futures:
            if not future.done():
                action(future)
