"""Live status in the terminal for ``fleetbridge run`` when stderr is a TTY: a compact block redrawn
every second below the scrolling log lines (plain ANSI codes, no dependency)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from .web import snapshot

if TYPE_CHECKING:
    from .bridge import Bridge

REFRESH = 1.0
MAX_ACCOUNTS = 12
EVENTS_SHOWN = 3
BAR = 10
STYLES = {"good": "\x1b[32m", "busy": "\x1b[33m", "bad": "\x1b[31m", "dim": "\x1b[2m", "bold": "\x1b[1m"}
RESET = "\x1b[0m"
_STATUS_STYLE = {"ok": "good", "success": "good", "connected": "good", "starting": "busy", "pending": "busy",
                 "rate_limited": "busy", "disabled": "dim"}

Part = tuple[str, str | None]  # text and style name (None: plain)


def ago(seconds: float | None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for limit, unit, size in ((60, "s", 1), (3600, "m", 60), (86400, "h", 3600)):
        if seconds < limit:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds // 86400)}d"


def _status(text: str) -> Part:
    return text, _STATUS_STYLE.get(text, "bad")


def _line(parts: Sequence[Part], width: int, color: bool) -> str:
    """Join ``parts``, cut to ``width - 1`` visible characters (a wrapped line would break the redraw)."""
    out, room = [], width - 1
    for text, style in parts:
        if room <= 0:
            break
        text = text[:room]
        room -= len(text)
        out.append(f"{STYLES[style]}{text}{RESET}" if color and style else text)
    return "".join(out)


def _progress(done: int, total: int) -> str:
    filled = BAR * done // total if total else 0
    return f"[{'#' * filled}{'-' * (BAR - filled)}] {done}/{total}"


def _devices(acc: dict[str, Any]) -> str:
    if not acc["devices"]:
        return "discovering..." if acc["status"] == "starting" else "0"
    if acc["with_state"] < acc["devices"]:
        return _progress(acc["with_state"], acc["devices"])
    return str(acc["devices"])


def _budget(acc: dict[str, Any]) -> str:
    shares = sorted(((v["share"], k) for k, v in acc["budget"].items() if v["share"] is not None), reverse=True)
    return " ".join(f"{kind} {share:.0%}" for share, kind in shares[:2]) or "-"


def _account_rows(accounts: list[dict[str, Any]]) -> list[list[Part]]:
    header = ["ACCOUNT", "PLATFORM", "STATE", "DEVICES", "LAST POLL", "BUDGET/H", "PENDING"]
    cells = [[a["id"], a["platform"], a["status"], _devices(a),
              "-" if a["last_poll_age"] is None else f"{ago(a['last_poll_age'])} ago", _budget(a),
              str(a["pending_commands"])] for a in accounts[:MAX_ACCOUNTS]]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    rows: list[list[Part]] = [[("  ".join(h.ljust(w) for h, w in zip(header, widths)), "dim")]]
    for acc, row in zip(accounts, cells):
        parts: list[Part] = []
        for i, (text, width) in enumerate(zip(row, widths)):
            parts.append(_status(text.ljust(width)) if i == 2 else (text.ljust(width), None))
            parts.append(("  ", None))
        detail = "; ".join(filter(None, [acc["detail"], *acc["warnings"].values()]))
        parts.append((detail, "dim"))
        rows.append(parts)
    if len(accounts) > MAX_ACCOUNTS:
        rows.append([(f"... and {len(accounts) - MAX_ACCOUNTS} more accounts", "dim")])
    return rows


def render(snap: dict[str, Any], width: int = 100, color: bool = False) -> list[str]:
    """The status block for one :func:`fleetbridge.web.snapshot`, as lines of at most ``width - 1``."""
    mqtt, stats = snap["mqtt"], snap["stats"]
    head: list[Part] = [
        (f"fleetbridge {snap['version']}", "bold"), (f" · up {ago(snap['uptime'])} · health ", None),
        _status(snap["health"]["status"]), (f" · MQTT {mqtt['host']}:{mqtt['port']} ", None),
        _status("connected" if mqtt["connected"] else "disconnected"),
        (f" · {mqtt['published']} sent · {mqtt['pending']} queued", None),
    ]
    results = ", ".join(f"{status} {n}" for status, n in sorted(stats["results"].items()))
    totals: list[Part] = [(f"devices {snap['device_count']} · commands {stats['commands']}"
                           + (f" ({results})" if results else "") + f" · events {stats['events']}", None)]
    lines = [head, *_account_rows(snap["accounts"]), totals]
    names = {(d["account"], d["id"]): d["name"] for d in snap["devices"]}
    for ev in snap["events"][:EVENTS_SHOWN]:
        who = names.get((ev.get("account"), ev.get("device"))) or f"{ev.get('account')}/{ev.get('device')}"
        lines.append([(f"  {str(ev.get('at', ''))[11:19]} {who} ", "dim"), (str(ev.get("event_type")), None)])
    return [_line(parts, width, color) for parts in lines]


class _BlockHandler(logging.Handler):
    """Writes log records above the status block (same formatter and filters as the handler it replaces)."""

    def __init__(self, live: LiveStatus, original: logging.Handler) -> None:
        super().__init__(original.level)
        self.live = live
        self.original = original
        self.setFormatter(original.formatter)
        self.filters = list(original.filters)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.live.write_above(self.format(record))
        except Exception:
            self.handleError(record)


class LiveStatus:
    """Keeps the status block at the bottom of the terminal while the bridge runs."""

    def __init__(self, bridge: Bridge, stream: TextIO | None = None, interval: float = REFRESH,
                 color: bool = True) -> None:
        self.bridge = bridge
        self.stream = stream or sys.stderr
        self.interval = interval
        self.color = color and not os.environ.get("NO_COLOR")
        self._block: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._handlers: list[_BlockHandler] = []

    def _size(self) -> os.terminal_size:
        try:
            return os.get_terminal_size(self.stream.fileno())
        except (OSError, ValueError, AttributeError):
            return os.terminal_size((100, 40))

    def _erase(self) -> None:
        if self._block:
            self.stream.write(f"\x1b[{len(self._block)}F\x1b[J")
            self._block = []

    def _write_block(self, lines: list[str]) -> None:
        self.stream.write("".join(line + "\n" for line in lines))
        self._block = lines
        self.stream.flush()

    def draw(self) -> None:
        """Redraw the block from a fresh snapshot."""
        size = self._size()
        lines = render(snapshot(self.bridge), size.columns, self.color)[:max(3, size.lines - 2)]
        self._erase()
        self._write_block(lines)

    def write_above(self, text: str) -> None:
        """Print a log line and keep the block below it."""
        block = self._block
        self._erase()
        self.stream.write(text + "\n")
        self._write_block(block)

    def start(self) -> None:
        """Route stderr log handlers through the block and start redrawing."""
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream in (self.stream, sys.__stderr__):
                wrapped = _BlockHandler(self, handler)
                root.removeHandler(handler)
                root.addHandler(wrapped)
                self._handlers.append(wrapped)
        self._task = asyncio.create_task(self._run(), name="live-status")

    async def _run(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        """Stop redrawing; leave the last block (of the running bridge) on screen and the log handlers as
        they were."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._block = []
        root = logging.getLogger()
        for wrapped in self._handlers:
            root.removeHandler(wrapped)
            root.addHandler(wrapped.original)
        self._handlers = []
