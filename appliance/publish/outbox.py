"""The outbox: every event is written here (SQLite, WAL) before anything tries to send it.

A row leaves only when the broker acknowledged it (``ack``), or when the bound drops it. The device's ``seq`` lives
in the same database and is allocated in the same transaction as the row, so a crash can never hand out a number
twice or lose an event that got one.

Bound (both configurable, both counted and logged, never silent):
- age: events older than ``max_age_h`` are dropped (``expired``);
- size: above ``max_events`` or ``max_mb`` of payload, the oldest ``stats`` event goes first (a newer one
  supersedes it), then the oldest event of any kind (``dropped``): after a long outage the fleet gets the most
  recent days, not the first ones.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from appliance.publish.config import OutboxConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
WAL_CHECKPOINT_PAGES = 64          # 256 KB of 4 KB pages
WAL_LIMIT_BYTES = 1 << 20


class OutboxError(RuntimeError):
    pass


@dataclass(frozen=True)
class PendingEvent:
    seq: int
    event_id: str
    kind: str
    created: float
    payload: str


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_age_s: float | None
    last_seq: int
    dropped: int
    expired: int

    def as_dict(self) -> dict:
        return {"depth": self.depth, "bytes": self.bytes, "oldest_age_s": self.oldest_age_s,
                "last_seq": self.last_seq, "dropped": self.dropped, "expired": self.expired}


class Outbox:
    def __init__(self, path: Path, cfg: OutboxConfig, seq_file: Path | None = None,
                 clock: Callable[[], float] = time.time, device_id: str | None = None):
        self.path = Path(path).expanduser()
        self.cfg = cfg
        self.clock = clock
        # The last seq is kept a second time outside the database, so an outbox that is emptied, replaced or moved
        # aside cannot take it along: dashboards must never see seq start again at 1.
        self.seq_file = Path(seq_file).expanduser() if seq_file else self.path.with_name("seq")
        self._seq_file_error: str | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the writer thread (add) and the MQTT thread (pending, ack), under one lock: SQLite
        # serialises writers anyway, and the lock keeps a transaction from interleaving with another. Re-entrant so
        # a payload built inside add() may read stats().
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={cfg.sync.upper()}")
            # A bounded WAL: checkpoint every WAL_CHECKPOINT_PAGES and cut the file back to WAL_LIMIT_BYTES after,
            # so a healthy unit (everything acknowledged) needs a small, stated amount of disk (README 'Delivery').
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise OutboxError(f"{self.path} was written by a newer version (schema {version}); upgrade, or "
                                  "move the file aside to start a new outbox")
            self._db.executescript("""
                CREATE TABLE IF NOT EXISTS events (
                    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
                    created REAL NOT NULL, payload TEXT NOT NULL);
                CREATE INDEX IF NOT EXISTS events_kind ON events (kind, seq);
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            """)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            stored = self._meta("last_seq", None)
            kept = self._read_seq_file()
            if stored is None and kept:
                log.warning("outbox %s holds no seq (new, emptied or replaced) while %s says %d: any events the old "
                            "outbox still held are lost; seq continues from %d", self.path, self.seq_file, kept, kept)
            elif stored is not None and kept is not None and kept > stored:
                log.warning("outbox %s is behind %s (seq %d < %d): an older copy? seq continues from %d", self.path,
                            self.seq_file, stored, kept, kept)
            self._last_seq = max(stored or 0, kept or 0)
            if self._last_seq != stored:
                self._set_meta("last_seq", self._last_seq)
            self._dropped = self._meta("dropped", 0)
            self._expired = self._meta("expired", 0)
            self._depth, self._bytes = self._db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM events").fetchone()
            if device_id is not None:
                self._check_device(device_id)
        except sqlite3.DatabaseError as e:
            if "full" in str(e):
                raise OutboxError(f"outbox {self.path} cannot be opened: the disk is full ({e}); free space on "
                                  f"{self.path.parent} (df -h {self.path.parent}) and start again") from None
            kept = self._read_seq_file()
            raise OutboxError(f"outbox {self.path} cannot be opened ({e}); if it is damaged, move it aside (the events "
                              f"in it are then lost; seq continues from {self.seq_file}, "
                              + (f"which says {kept})" if kept else "which is missing: seq would restart at 1)")
                              ) from None
        self._last_drop_log = -1e9
        self._closed = False

    @contextmanager
    def _transaction(self):
        # Autocommit connection, explicit transactions: the seq, the row and the bound commit together or not at all,
        # and so do the counters kept in memory beside them.
        saved = self._last_seq, self._depth, self._bytes, self._dropped, self._expired
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:     # SQLite has already rolled back after e.g. "database or disk is full"
                self._db.execute("ROLLBACK")
            self._last_seq, self._depth, self._bytes, self._dropped, self._expired = saved
            raise

    # ------------------------------------------------------------------------------------------- meta
    def _meta(self, key: str, default):
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                         "excluded.value", (key, value))

    def _check_device(self, device_id: str) -> None:
        """Waiting events belong to the device that made them: their payload names it, and they must go out on its
        topics. A new device.id with events of the old one still waiting is refused until an operator decides."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'device_id'").fetchone()
        before = None if row is None else str(row[0])
        if before is not None and before != device_id:
            if self._depth:
                raise OutboxError(
                    f"outbox {self.path} holds {self._depth} undelivered events of device {before!r}, and device.id is "
                    f"now {device_id!r}: start once more with device.id = {before!r} to deliver them, or move "
                    f"{self.path.name} aside to drop them (seq continues from {self.seq_file})")
            log.warning("outbox: device.id changed from %r to %r (nothing was waiting); seq continues from %d",
                        before, device_id, self._last_seq)
        if before != device_id:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('device_id', ?) ON CONFLICT(key) DO UPDATE SET "
                             "value = excluded.value", (device_id,))

    def _read_seq_file(self) -> int | None:
        # Before the outbox, seq lived in this one-line file only; now it is kept here too (see __init__).
        if not self.seq_file.exists():
            return None
        try:
            return int(self.seq_file.read_text().strip() or 0)
        except ValueError:
            raise OutboxError(f"{self.seq_file} is corrupt; refusing to restart seq at 1: write the last seq the "
                              "fleet saw into it (one number) and start again") from None

    def _write_seq_file(self, seq: int) -> None:
        """After the commit: a failure here must not fail add() (the event is stored; a retry would store it twice).
        The file catches up at the next event; the database is ahead of it meanwhile, and the larger one wins."""
        tmp = self.seq_file.with_name(self.seq_file.name + ".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(f"{seq}\n")
                if self.cfg.sync != "off":
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.seq_file)
            if self._seq_file_error:
                log.warning("outbox: %s is written again", self.seq_file)
            self._seq_file_error = None
        except OSError as e:
            if self._seq_file_error is None:
                log.error("outbox: cannot write %s (%s); seq is still in the outbox, and the file catches up when it "
                          "can", self.seq_file, e.strerror or e)
            self._seq_file_error = str(e)

    # ------------------------------------------------------------------------------------------- writing
    def add(self, kind: str, make: Callable[[int], dict]) -> dict:
        """Allocate the next seq, build the payload with it, store it (durably, per ``sync``); returns the payload."""
        with self._lock, self._transaction():
            seq = self._last_seq + 1
            payload = make(seq)
            text = json.dumps(payload, separators=(",", ":"))
            self._db.execute("INSERT INTO events (seq, event_id, kind, created, payload) VALUES (?, ?, ?, ?, ?)",
                             (seq, payload["event_id"], kind, self.clock(), text))
            self._set_meta("last_seq", seq)
            self._last_seq = seq
            self._depth += 1
            self._bytes += len(text)
            self._expire_locked()
            self._enforce_bound_locked()
        self._write_seq_file(seq)
        return payload

    def _enforce_bound_locked(self) -> None:
        max_bytes = int(self.cfg.max_mb * 1024 * 1024)
        dropped = 0
        while self._depth > self.cfg.max_events or self._bytes > max_bytes:
            row = (self._db.execute("SELECT seq, length(payload) FROM events WHERE kind = 'stats' ORDER BY seq "
                                    "LIMIT 1").fetchone()
                   or self._db.execute("SELECT seq, length(payload) FROM events ORDER BY seq LIMIT 1").fetchone())
            if row is None:
                break
            self._db.execute("DELETE FROM events WHERE seq = ?", (row[0],))
            self._depth -= 1
            self._bytes -= row[1]
            dropped += 1
        if dropped:
            self._dropped += dropped
            self._set_meta("dropped", self._dropped)
            now = time.monotonic()
            if now - self._last_drop_log > 60:   # a long outage drops one per event: say so once a minute
                self._last_drop_log = now
                log.error("outbox full (%d events, %.1f MB; bound %d events / %g MB): dropped the oldest "
                          "(stats first); %d dropped so far", self._depth, self._bytes / 1e6, self.cfg.max_events,
                          self.cfg.max_mb, self._dropped)

    def _expire_locked(self) -> None:
        cutoff = self.clock() - self.cfg.max_age_h * 3600
        # Runs on every add: look at the oldest row by primary key first; the scan below only happens when something
        # has actually expired.
        oldest = self._db.execute("SELECT created FROM events ORDER BY seq LIMIT 1").fetchone()
        if oldest is None or oldest[0] >= cutoff:
            return
        n, size = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM events WHERE created < ?",
                                   (cutoff,)).fetchone()
        if n:
            self._db.execute("DELETE FROM events WHERE created < ?", (cutoff,))
            self._depth -= n
            self._bytes -= size
            self._expired += n
            self._set_meta("expired", self._expired)
            log.error("outbox: %d events older than %g h dropped unsent (%d so far)", n, self.cfg.max_age_h,
                      self._expired)

    def expire(self) -> None:
        with self._lock, self._transaction():
            self._expire_locked()

    # ------------------------------------------------------------------------------------------- draining
    def pending(self, after_seq: int = 0, limit: int = 100) -> list[PendingEvent]:
        with self._lock:
            rows = self._db.execute("SELECT seq, event_id, kind, created, payload FROM events WHERE seq > ? ORDER BY "
                                    "seq LIMIT ?", (after_seq, limit)).fetchall()
        return [PendingEvent(*row) for row in rows]

    def ack(self, seqs: Iterable[int]) -> None:
        """Delete acknowledged events (one transaction for all of them)."""
        seqs = list(seqs)
        if not seqs:
            return
        with self._lock, self._transaction():
            marks = ",".join("?" * len(seqs))
            n, size = self._db.execute(f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM events WHERE seq IN "
                                       f"({marks})", seqs).fetchone()
            self._db.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)
            self._depth -= n
            self._bytes -= size

    def drop(self, seq: int, reason: str) -> None:
        """Remove an event the broker refused for good (e.g. not authorised); counted with the dropped ones."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT length(payload) FROM events WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))
            self._depth -= 1
            self._bytes -= row[0]
            self._dropped += 1
            self._set_meta("dropped", self._dropped)
        log.error("outbox: event seq %d dropped: %s", seq, reason)

    # ------------------------------------------------------------------------------------------- reading
    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def depth(self) -> int:
        return self._depth

    def stats(self) -> OutboxStats:
        with self._lock:
            # After close (a run's final report) the counters still stand; only the age is no longer known.
            row = None if self._closed else self._db.execute(
                "SELECT created FROM events ORDER BY seq LIMIT 1").fetchone()    # by key: no scan
            oldest = row[0] if row else None
            return OutboxStats(self._depth, self._bytes,
                               None if oldest is None else round(max(0.0, self.clock() - oldest), 1),
                               self._last_seq, self._dropped, self._expired)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()


class OutboxWriter:
    """Stores events in the outbox on a thread of its own, so the fixed-rate loop never waits on the disk.

    A durable commit is an fsync: ~2 ms on this project's VM, tens to hundreds of ms on an SD card or a busy eMMC,
    which is a whole tick's budget. The loop only queues the payload builder (microseconds) and hands the queue
    over at the end of its tick (``hand_over``), so the writer's own Python work (building the payload, JSON)
    runs while the loop sleeps instead of taking the GIL from a tick. Here the event gets its seq and is committed
    in the outbox's own transaction, as before, in the order submitted. Until then (a few ms) it exists in memory
    only: a power cut or a kill in that window loses it. ``close()`` stores everything submitted before it
    returns. A failing store (disk full, I/O error) is logged and retried with backoff; the events wait in memory
    meanwhile.
    """

    def __init__(self, outbox: Outbox, on_stored: Callable[[], None] = lambda: None, retry_max_s: float = 30.0,
                 on_storage: Callable[[str | None], None] = lambda error: None):
        self.outbox = outbox
        self._on_stored = on_stored
        self._on_storage = on_storage      # an error while events cannot be stored, None once they can again
        self._failing = False
        self._retry_max_s = retry_max_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()     # lists of events, or None to stop
        self._held: list[tuple] = []       # submitted this tick, not handed over yet (the submitting thread's own)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self.lost = 0     # submitted but never stored: a payload that could not be built, or a failing disk at close()

    def start(self) -> None:
        self._thread.start()

    def submit(self, kind: str, make: Callable[[int], dict], then: Callable[[dict], None] | None = None) -> None:
        """Store ``make(seq)`` as a ``kind`` event once handed over; ``then(payload)`` runs on the writer thread once
        it is stored."""
        self._held.append((kind, make, then))

    def hand_over(self) -> None:
        """Give the writer what was submitted since the last call (the pipeline calls this at the end of a tick)."""
        if self._held:
            batch, self._held = self._held, []
            self._queue.put(batch)

    def close(self, timeout: float = 30.0) -> None:
        self.hand_over()
        self._queue.put(None)
        self._closing.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("outbox: the writer did not finish storing within %g s of shutdown; what it had not stored "
                      "is lost", timeout)

    def _run(self) -> None:
        running = True
        while running:
            batches = [self._queue.get()]
            while True:      # everything handed over meanwhile: one wake-up for the burst
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in batches:         # close(): store what came before it, then stop
                running = False
            stored = False
            for kind, make, then in (event for batch in batches if batch is not None for event in batch):
                payload = self._store(kind, make)
                if payload is None:
                    continue
                stored = True
                if then is not None:
                    try:
                        then(payload)
                    except Exception:
                        log.exception("outbox: callback for a stored %s event failed", kind)
            if stored:
                self._on_stored()

    def _store(self, kind: str, make: Callable[[int], dict]) -> dict | None:
        delay = 0.5
        while True:
            try:
                payload = self.outbox.add(kind, make)
                if self._failing:
                    self._failing = False
                    log.warning("outbox: events are stored again")
                    self._on_storage(None)
                return payload
            except (sqlite3.Error, OSError) as e:   # the disk: full, read-only, failing; may clear
                if not self._failing:
                    self._failing = True
                    self._on_storage(f"events cannot be stored: {e}; they wait in memory")
                if self._closing.is_set():
                    self.lost += 1
                    log.error("outbox: a %s event was not stored (%s) and is lost at shutdown", kind, e)
                    return None
                log.error("outbox: cannot store a %s event (%s); retrying in %g s", kind, e, delay)
                self._closing.wait(delay)
                delay = min(delay * 2, self._retry_max_s)
            except Exception:   # a payload that cannot be built will not build on a retry either
                self.lost += 1
                log.exception("outbox: a %s event could not be built and is dropped", kind)
                return None
