"""Embedded SQLite store: last state per device, event cursors and outbox, the service journal, and a
small per-account key/value store for plugins (rotated refresh tokens, order ids).

One writer (the bridge process), WAL mode. Every method commits before it returns, so a kill at
any point leaves a consistent file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS device (
    account TEXT NOT NULL, device TEXT NOT NULL, info TEXT NOT NULL, state TEXT,
    state_at REAL, PRIMARY KEY (account, device));
CREATE TABLE IF NOT EXISTS event_cursor (account TEXT PRIMARY KEY, cursor TEXT);
CREATE TABLE IF NOT EXISTS event_seen (
    account TEXT NOT NULL, uid TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (account, uid));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_topic ON outbox (topic);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL, device TEXT NOT NULL,
    service TEXT NOT NULL, params TEXT NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '', vendor_ref TEXT, requested_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS journal_open ON journal (status);
CREATE TABLE IF NOT EXISTS kv (
    account TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (account, key));
"""

OPEN_STATUSES = ("received", "pending")
BUSY_TIMEOUT = 5.0  # seconds a statement waits for another process's lock on the file
EVENT_SEEN_DAYS = 30


class Store:
    """The bridge's SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                  timeout=BUSY_TIMEOUT)
        self._use_wal()
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def _use_wal(self) -> None:
        """Switch the file to WAL. The switch takes the file's lock without SQLite's busy wait, so a
        second process opening the same new file at that moment (``fleetbridge call`` beside
        ``run``) got "database is locked": it is retried for up to ``BUSY_TIMEOUT``, blocking as
        SQLite's own busy wait does (the store is synchronous; this runs once, at open)."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        self.db.close()

    # -- devices and their last state -------------------------------------------------------
    def save_devices(self, account: str, devices: dict[str, dict[str, Any]]) -> None:
        """Replace the account's device list (slug -> info dict); keep states of those that stay."""
        with self.db:
            self.db.execute("BEGIN")
            current = {r[0] for r in self.db.execute("SELECT device FROM device WHERE account=?", (account,))}
            for gone in current - devices.keys():
                self.db.execute("DELETE FROM device WHERE account=? AND device=?", (account, gone))
            self.db.executemany(
                "INSERT INTO device (account, device, info) VALUES (?, ?, ?) "
                "ON CONFLICT (account, device) DO UPDATE SET info=excluded.info",
                [(account, slug, json.dumps(info)) for slug, info in devices.items()],
            )

    def save_states(self, account: str, states: Iterable[tuple[str, str, float]]) -> None:
        """Store (slug, state JSON text, at) rows in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "UPDATE device SET state=?, state_at=? WHERE account=? AND device=?",
                [(text, at, account, slug) for slug, text, at in states],
            )

    def load_devices(self, account: str | None = None) -> list[dict[str, Any]]:
        """Rows of {account, device, info, state, state_at}."""
        sql = "SELECT account, device, info, state, state_at FROM device"
        rows = self.db.execute(sql + (" WHERE account=?" if account else "") + " ORDER BY account, device",
                               (account,) if account else ())
        return [
            {"account": a, "device": d, "info": json.loads(i), "state": json.loads(s) if s else None,
             "state_at": t}
            for a, d, i, s, t in rows
        ]

    # -- events: cursor, seen uids and the outbox, moved together ---------------------------
    def event_cursor(self, account: str) -> Any:
        row = self.db.execute("SELECT cursor FROM event_cursor WHERE account=?", (account,)).fetchone()
        return json.loads(row[0]) if row and row[0] is not None else None

    def record_events(self, account: str, events: list[tuple[str, str, bytes]], cursor: Any) -> dict[str, int]:
        """Atomically: drop already-seen uids, queue the rest in the outbox, move the cursor.

        ``events`` are (uid, topic, payload). Returns uid -> outbox id of the new ones, in order.
        """
        now = time.time()
        ids: dict[str, int] = {}
        with self.db:
            self.db.execute("BEGIN")
            for uid, topic, payload in events:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO event_seen (account, uid, at) VALUES (?, ?, ?)", (account, uid, now))
                if cur.rowcount:
                    ids[uid] = self.db.execute(
                        "INSERT INTO outbox (topic, payload, qos) VALUES (?, ?, 1)", (topic, payload)).lastrowid
            self.db.execute(
                "INSERT INTO event_cursor (account, cursor) VALUES (?, ?) "
                "ON CONFLICT (account) DO UPDATE SET cursor=excluded.cursor", (account, json.dumps(cursor)))
            self.db.execute("DELETE FROM event_seen WHERE account=? AND at<?",
                            (account, now - EVENT_SEEN_DAYS * 86400))
        return ids

    def outbox(self, limit: int = -1) -> list[tuple[int, str, bytes, int]]:
        """The oldest ``limit`` stored events (all: -1)."""
        return list(self.db.execute("SELECT id, topic, payload, qos FROM outbox ORDER BY id LIMIT ?", (limit,)))

    def outbox_seen(self, topic: str, payload: bytes) -> list[int]:
        """Drop the stored copies of a message the broker is known to have; their ids."""
        with self.db:
            self.db.execute("BEGIN")
            ids = [r[0] for r in self.db.execute("SELECT id FROM outbox WHERE topic=? AND payload=?",
                                                 (topic, payload))]
            self.db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in ids])
        return ids

    def outbox_done(self, outbox_id: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE id=?", (outbox_id,))

    # -- service journal ----------------------------------------------------------------------
    def journal_open(self, account: str, device: str, service: str, params: dict[str, Any], source: str) -> int:
        now = time.time()
        return self.db.execute(
            "INSERT INTO journal (account, device, service, params, source, status, requested_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'received', ?, ?)",
            (account, device, service, json.dumps(params), source, now, now)).lastrowid

    def journal_update(self, entry: int, status: str, detail: str = "", vendor_ref: str | None = None,
                       *, only_open: bool = False) -> bool:
        """Record a call's progress; with ``only_open``, only while it has no final result. True if written."""
        sql = "UPDATE journal SET status=?, detail=?, vendor_ref=COALESCE(?, vendor_ref), updated_at=? WHERE id=?"
        args: tuple[Any, ...] = (status, detail, vendor_ref, time.time(), entry)
        if only_open:
            sql += " AND status IN (?, ?)"
            args += OPEN_STATUSES
        return self.db.execute(sql, args).rowcount > 0

    def journal_pending(self, account: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, device, service, vendor_ref, status FROM journal WHERE account=? AND status IN (?, ?) "
            "ORDER BY id", (account, *OPEN_STATUSES))
        return [{"id": i, "device": d, "service": s, "vendor_ref": v, "status": st} for i, d, s, v, st in rows]

    def journal_by_ref(self, account: str, vendor_ref: str) -> list[dict[str, Any]]:
        """Open entries of ``account`` carrying the vendor's command/order id."""
        rows = self.db.execute(
            "SELECT id, device, service FROM journal WHERE account=? AND vendor_ref=? AND status IN (?, ?)",
            (account, vendor_ref, *OPEN_STATUSES))
        return [{"id": i, "device": d, "service": s} for i, d, s in rows]

    def journal(self, limit: int = 50) -> list[dict[str, Any]]:
        cols = ("id", "account", "device", "service", "params", "source", "status", "detail", "vendor_ref",
                "requested_at", "updated_at")
        rows = self.db.execute(f"SELECT {', '.join(cols)} FROM journal ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(zip(cols, r)) for r in rows]

    # -- plugin key/value ---------------------------------------------------------------------
    def kv_get(self, account: str, key: str) -> Any:
        row = self.db.execute("SELECT value FROM kv WHERE account=? AND key=?", (account, key)).fetchone()
        return json.loads(row[0]) if row else None

    def kv_set(self, account: str, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO kv (account, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (account, key) DO UPDATE SET value=excluded.value", (account, key, json.dumps(value)))
