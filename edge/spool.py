"""The on-disk event spool: every event is written here before it is published and deleted only on PUBACK.

Why SQLite in WAL mode with synchronous=FULL: WAL lets the MQTT network thread delete acknowledged rows while the
main loop appends, and FULL fsyncs the WAL on every commit, so an event survives not only kill -9 (NORMAL would
do) but a power cut at the pass, which is the likelier failure in a kitchen. Events are a few per minute, so one
fsync per event and per acknowledgement costs nothing that matters.

Bounded: past `max_events` the oldest rows are dropped and counted in the same transaction, so the count of
dropped events survives restarts and is reported in stats.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from edge.errors import UserError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Spool:
    """A thread-safe FIFO of (seq, id, topic, payload) rows on disk."""

    def __init__(self, path: str | Path, max_events: int) -> None:
        self.path = Path(path)
        self.max_events = max(1, int(max_events))
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._depth = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            row = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"mqtt.spool: cannot open {self.path} as a spool ({exc})") from None
        self._dropped = int(row[0]) if row else 0
        self._warned = False
        if self._depth:
            log.info("spool %s: %d event(s) waiting from an earlier run", self.path, self._depth)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        return self._dropped

    def append(self, event_id: str, topic: str, payload: bytes) -> int:
        """Store one event durably (committed and fsynced on return); returns its sequence number."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                over = self._depth + 1 - self.max_events
                if over > 0:
                    db.execute(
                        "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                        (over,),
                    )
                    self._dropped += over
                    db.execute(
                        "INSERT INTO meta(key, value) VALUES('dropped', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (self._dropped,),
                    )
                cur = db.execute(
                    "INSERT INTO events(id, topic, payload, created) VALUES (?, ?, ?, ?)",
                    (event_id, topic, payload, time.time()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._depth = self._depth + 1 - max(over, 0)
            if over > 0 and not self._warned:
                self._warned = True  # once per period of being full, not once per event
                log.warning(
                    "spool full (%d events): dropping the oldest undelivered events (%d dropped in total)",
                    self.max_events,
                    self._dropped,
                )
            elif over <= 0:
                self._warned = False
            return int(cur.lastrowid)

    def after(self, seq: int, limit: int) -> list[tuple[int, str, str, bytes]]:
        """The next `limit` rows with a sequence number above `seq`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, topic, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [(int(s), i, t, bytes(p)) for s, i, t, p in rows]

    def delete(self, seq: int) -> None:
        """Forget an acknowledged event (a no-op if it was already dropped)."""
        with self._lock:
            n = self._db.execute("DELETE FROM events WHERE seq = ?", (seq,)).rowcount
            self._depth -= n
            if self._depth < self.max_events:
                self._warned = False

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                log.debug("spool close failed", exc_info=True)
