"""SIM state changes that the carrier confirms later.

``change_simstate`` answers "Success" when Lattigo *accepted* the change; the carrier acts later and
``state`` changes on a later poll (vendor-notes). A change is watched until a device list fetched
*after* the change was accepted shows the target state (``success``), or until its deadline
(``timeout``). The outcome goes out through ``ctx.resolve_call``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_LOGGER = logging.getLogger(__name__)

Resolve = Callable[[str, str, str], bool]


@dataclass(frozen=True, slots=True)
class SimChange:
    """One accepted change: the device, the canonical state that confirms it, and its deadline."""

    device: str
    service: str
    target: str  # canonical sim_state: "suspended" or "active"
    deadline: float  # wall clock (s)
    since: float  # wall clock when Lattigo accepted it

    @property
    def ref(self) -> str:
        """The vendor_ref journaled with the call: enough to follow it after a restart."""
        return f"simstate:{self.service}:{self.target}:{self.deadline:.0f}:{self.device}"

    @classmethod
    def from_ref(cls, ref: str, since: float) -> SimChange | None:
        parts = ref.split(":", 4)
        if len(parts) != 5 or parts[0] != "simstate":
            return None
        try:
            deadline = float(parts[3])
        except ValueError:
            return None
        return cls(device=parts[4], service=parts[1], target=parts[2], deadline=deadline, since=since)


class SimWatcher:
    """Open SIM changes, resolved from device states or by their deadline."""

    def __init__(self, resolve: Resolve, clock: Callable[[], float]) -> None:
        self._resolve = resolve
        self._clock = clock
        self._open: dict[str, SimChange] = {}  # device -> its open change
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._open)

    def devices(self) -> list[str]:
        """Devices with an open change, oldest first."""
        return [c.device for c in sorted(self._open.values(), key=lambda c: c.since)]

    def watch(self, change: SimChange) -> None:
        """Follow ``change``; an older open change of the same device is superseded (``timeout``)."""
        older = self._open.get(change.device)
        if older is not None and older.ref != change.ref:
            self._finish(older, "timeout", f"superseded by a later {change.service} before the carrier confirmed "
                                           f"sim_state {older.target}")
        self._open[change.device] = change
        delay = max(0.0, change.deadline - self._clock())
        self._timers[change.device] = asyncio.get_running_loop().call_later(delay, self._expire, change)

    def observe(self, states: Mapping[str, str | None], fetched_at: float) -> int:
        """Device -> canonical sim_state as seen by a listing that started at ``fetched_at``; only a
        listing started no earlier than a change was accepted can confirm it. Returns how many
        changes this confirmed."""
        confirmed = 0
        for device, change in list(self._open.items()):
            if device in states and fetched_at >= change.since and states[device] == change.target:
                self._finish(change, "success", f"sim_state is now {change.target}")
                confirmed += 1
        return confirmed

    def _expire(self, change: SimChange) -> None:
        if self._open.get(change.device) is change:
            minutes = (change.deadline - change.since) / 60
            self._finish(change, "timeout", f"sim_state did not become {change.target} within {minutes:.0f} min; "
                                            "the carrier may still act")

    def _finish(self, change: SimChange, status: str, detail: str) -> None:
        if self._open.get(change.device) is change:
            del self._open[change.device]
            timer = self._timers.pop(change.device, None)
            if timer is not None:
                timer.cancel()
        if not self._resolve(change.ref, status, detail):
            _LOGGER.debug("%s: no open call for %s (%s)", change.device, change.ref, status)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
