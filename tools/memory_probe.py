#!/usr/bin/env python3
"""Run a ``fleetbridge`` command with a memory probe: each SIGUSR1 records where the memory is.

    python3 -X tracemalloc=5 tools/memory_probe.py OUT_DIR -- run --no-live -c config.yaml
    kill -USR1 <pid>     # the first signal takes the baseline, every later one writes a report

Each signal appends one JSON line to ``OUT_DIR/memory.jsonl``: resident memory and glibc's heap
(``mallinfo2``: in use and free inside it), so that live objects can be told from fragmentation.
With ``-X tracemalloc`` the line also has the Python heap as tracemalloc sees it, and
``OUT_DIR/top-NNN.txt`` the 30 allocation sites (file:line) that grew most since the baseline, then
the 5 largest growths with their call stacks (the snapshot is taken in the signal handler: the bridge
pauses meanwhile). Without it, the line has pymalloc's arenas (``sys._debugmallocstats``, which
reports nothing while tracemalloc hooks the allocator).
"""

from __future__ import annotations

import ctypes
import json
import linecache
import os
import re
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

TOP = 30
STACKS = 5
#: sites that are not the bridge's: tracemalloc itself, imports, and the source lines the reports quote
IGNORED = (tracemalloc.__file__, linecache.__file__, "<frozen importlib._bootstrap>", "<unknown>")
PYMALLOC_KEYS = {"# arenas allocated current": "arenas", "# bytes in allocated blocks": "allocated_blocks",
                 "# bytes in available blocks": "available_blocks", "# bytes lost to pool headers": "pool_headers",
                 "# bytes lost to quantization": "quantization", "# bytes lost to arena alignment": "arena_alignment"}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process, MB (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else 0.0


def pymalloc_stats() -> dict[str, int]:
    """pymalloc's arena figures, parsed from ``sys._debugmallocstats()`` (written to fd 2)."""
    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    stats: dict[str, int] = {}
    for line in text.splitlines():
        label, _, value = line.partition("=")
        key = PYMALLOC_KEYS.get(label.strip())
        if key:
            stats[key] = int(value.strip().replace(",", ""))
    return stats


def glibc_heap() -> dict[str, int]:
    """glibc's ``mallinfo2``: bytes in use, free inside the heap, and mmapped; {} when unavailable."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {"heap": info.arena, "in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}


class Probe:
    """Writes one measurement per call; diffs tracemalloc snapshots against the first one."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.baseline: tracemalloc.Snapshot | None = None
        self.count = 0
        self.t0 = time.monotonic()

    def __call__(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        started = time.monotonic()
        row: dict[str, Any] = {"n": self.count, "t": round(started - self.t0, 1), "rss_mb": round(rss_mb(), 1),
                               "pymalloc": pymalloc_stats(), "glibc": glibc_heap()}
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            row.update(traced_mb=round(current / 2**20, 1), traced_peak_mb=round(peak / 2**20, 1),
                       tracemalloc_overhead_mb=round(tracemalloc.get_tracemalloc_memory() / 2**20, 1))
            snapshot = tracemalloc.take_snapshot()
            if self.baseline is None:
                self.baseline = snapshot
            else:
                row["top"] = self._report(snapshot, row)
        row["probe_s"] = round(time.monotonic() - started, 1)
        with (self.out / "memory.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.count += 1

    def _report(self, snapshot: tracemalloc.Snapshot, row: dict[str, Any]) -> list[list[Any]]:
        """Write top-NNN.txt; return the top sites as [file:line, KiB grown, blocks grown]."""
        assert self.baseline is not None
        # Snapshot methods loop in Python over every trace: a few passes only (a million traces at 10,000 devices)
        diff = snapshot.compare_to(self.baseline, "lineno")
        lines = [stat for stat in diff if stat.traceback[0].filename not in IGNORED][:TOP]
        text = [f"t={row['t']} s  rss={row['rss_mb']} MB  traced={row['traced_mb']} MB  glibc={row['glibc']}",
                "", f"top {TOP} sites by growth:", *map(str, lines)]
        grown = [stat.traceback[0] for stat in lines if stat.size_diff > 0][:STACKS]
        sites = snapshot.filter_traces([tracemalloc.Filter(True, f.filename, lineno=f.lineno) for f in grown])
        stacks = sites.statistics("traceback")
        for frame in grown:
            largest = next(stat for stat in stacks if stat.traceback[-1] == frame)  # [-1]: the newest frame
            text += ["", f"{frame.filename}:{frame.lineno}, its largest stack ({largest.size / 1024:.1f} KiB):",
                     *largest.traceback.format(limit=5)]
        (self.out / f"top-{self.count:03d}.txt").write_text("\n".join(text) + "\n")
        return [[f"{s.traceback[0].filename}:{s.traceback[0].lineno}", round(s.size_diff / 1024, 1), s.count_diff]
                for s in lines]


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGUSR1, Probe(out))
    from fleetbridge.cli import main as fleetbridge

    return fleetbridge(sys.argv[3:])


if __name__ == "__main__":
    raise SystemExit(main())
