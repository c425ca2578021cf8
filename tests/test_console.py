"""The live status block: its text for a snapshot, and ``fleetbridge run`` drawing it on a real pty."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import shutil
import signal
import struct
import sys
import termios
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetbridge.console import ago, render

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
EXAMPLE = Path(__file__).parent.parent / "config.example.yaml"


def account(**extra: Any) -> dict[str, Any]:
    return {"id": "vans", "name": "Vans", "platform": "opengps", "status": "ok", "detail": "", "available": True,
            "devices": 10, "with_state": 10, "last_poll": 1000.0, "last_poll_age": 4.2, "polls": 3,
            "requests": {"track": 3}, "errors": {}, "warnings": {}, "pending_commands": 0,
            "budget": {"track": {"last_hour": 30, "share": 0.25}, "auth": {"last_hour": 1, "share": 0.01},
                       "alarm": {"last_hour": 3, "share": None}}, **extra}


def fake_snapshot() -> dict[str, Any]:
    return {
        "version": "0.1.0", "now": 2000.0, "started_at": 1000.0, "uptime": 125.0,
        "health": {"status": "unhealthy", "problems": ["account sims: auth_failed"]},
        "mqtt": {"host": "127.0.0.1", "port": 1883, "base_topic": "fleetbridge", "connected": True, "pending": 7,
                 "published": 420, "connects": 1},
        "stats": {"commands": 3, "events": 2, "results": {"success": 2, "rejected": 1}},
        "accounts": [
            account(pending_commands=2),
            account(id="sims", platform="lattigo", status="auth_failed", detail="login refused: check password",
                    devices=0, with_state=0, last_poll=None, last_poll_age=None, budget={}),
            account(id="big", status="starting", devices=800, with_state=200, last_poll_age=None),
            account(id="new", status="starting", devices=0, with_state=0, last_poll_age=None, budget={}),
        ],
        "device_count": 810, "journal": [],
        "devices": [{"account": "vans", "id": "d2", "name": "Van 2", "state": {}, "age": None, "available": True}],
        "events": [{"event_type": "geofenceEnter", "at": "2026-05-01T10:11:12Z", "account": "vans", "device": "d1"},
                   {"event_type": "sos", "at": "2026-05-01T10:00:00Z", "account": "vans", "device": "d2"}],
    }


def test_ago() -> None:
    assert [ago(None), ago(4.9), ago(61), ago(7200), ago(3 * 86400)] == ["-", "4s", "1m", "2h", "3d"]


def test_render_shows_accounts_progress_budget_commands_and_events() -> None:
    lines = render(fake_snapshot(), width=160)
    text = "\n".join(lines)
    assert lines[0].startswith("fleetbridge 0.1.0 · up 2m · health unhealthy · MQTT 127.0.0.1:1883 connected")
    assert "420 sent · 7 queued" in lines[0]
    assert lines[1].split() == ["ACCOUNT", "PLATFORM", "STATE", "DEVICES", "LAST", "POLL", "BUDGET/H", "PENDING"]
    rows = {line.split()[0]: line for line in lines[2:6]}
    assert re.search(r"vans\s+opengps\s+ok\s+10\s+4s ago\s+track 25% auth 1%\s+2", rows["vans"])
    assert "auth_failed" in rows["sims"] and rows["sims"].rstrip().endswith("login refused: check password")
    assert "[##--------] 200/800" in rows["big"]  # progress while a large fleet is being discovered
    assert "discovering..." in rows["new"]
    assert "devices 810 · commands 3 (rejected 1, success 2) · events 2" in text
    assert re.search(r"10:11:12 vans/d1 geofenceEnter\n  10:00:00 Van 2 sos$", text)
    assert ANSI.search(text) is None


def test_render_fits_a_narrow_terminal_with_colours() -> None:
    lines = render(fake_snapshot(), width=40, color=True)
    assert ANSI.search(lines[0]), "colours on"
    assert all(len(ANSI.sub("", line)) <= 39 for line in lines)


class PtyReader:
    """Drains a pty master into ``out`` (so the child never blocks on a full terminal)."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.out = bytearray()
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the child closed the terminal
            data = b""
        if not data:
            self.close()
        self.out.extend(data)
        self._changed.set()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)

    async def wait_for(self, pattern: re.Pattern[bytes], timeout: float) -> re.Match[bytes]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not (match := pattern.search(self.out)):
            if loop.time() > end:
                raise AssertionError(f"no {pattern.pattern!r} on the terminal:\n"
                                     f"{self.out.decode(errors='replace')[-3000:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
        return match


async def test_run_on_a_terminal_draws_the_status_block(tmp_path: Path) -> None:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.fail("mosquitto is required: apt-get install mosquitto (.ci/run does)")
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE.read_text() + "\nhttp:\n  port: 0\n")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetbridge", "run", "-c", str(config), stdin=asyncio.subprocess.DEVNULL,
        stdout=slave, stderr=slave, env={**os.environ, "NO_COLOR": "1"})
    os.close(slave)
    term = PtyReader(master)
    try:
        url = (await term.wait_for(re.compile(rb"Status page on (http://\S+/)"), 30))[1].decode()
        row = re.compile(rb"demo_trackers\s+opengps\s+ok\s+10\s+\d+s ago")
        await term.wait_for(row, 30)
        await term.wait_for(re.compile(rb"ACCOUNT\s+PLATFORM\s+STATE\s+DEVICES"), 5)
        async with aiohttp.ClientSession() as session, session.get(url + "health") as resp:
            assert resp.status == 200, await resp.text()
        redraws = term.out.count(b"\x1b[")
        await asyncio.sleep(1.2)  # at least one more redraw
        assert term.out.count(b"\x1b[") > redraws, "the block is redrawn every second"
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 20)
        await asyncio.sleep(0.1)
        term.close()
        os.close(master)
    out = term.out
    text = out.decode(errors="replace")
    assert code == 0, text[-3000:]
    assert "fleetbridge running: 5 account(s)" in text  # the log lines still print, above the block
    assert "demo-password" not in text
