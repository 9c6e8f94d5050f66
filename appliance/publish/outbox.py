"""The outbox: every event is written here (SQLite, WAL) before anything tries to send it.

A row leaves only when the broker acknowledged it (``ack``), or when the bound drops it. The device's ``seq`` lives
in the same database and is allocated in the same transaction as the row, so a crash can never hand out a number
twice or lose an event that got one.

Bound (both configurable, both counted and logged, never silent):
- age: events older than ``max_age_h`` are dropped (``expired``). Age is read from the boot clock since the event
  was made (``host/clock.py``), so a step of the wall clock neither expires young events nor keeps old ones;
- size: above ``max_events`` or ``max_mb`` of payload, the oldest ``stats`` event goes first (a newer one
  supersedes it), then the oldest event of any kind (``dropped``): after a long outage the fleet gets the most
  recent days, not the first ones.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from appliance.host.clock import WallClock, boot_clock, boot_id
from appliance.publish.config import OutboxConfig
from appliance.publish.outbox_db import (OutboxError, cannot_open, claim_device, damaged_meta, delete_older_than,
                                         drop_oldest, open_database, read_meta, rebase, write_meta)
from appliance.publish.seq_file import SeqFile, SeqFileError, check_seq, reconcile

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class PendingEvent:
    seq: int
    event_id: str
    kind: str
    made: float         # the boot clock when the event was made
    payload: str
    age_s: float        # when it was read from the outbox


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
                 clock: Callable[[], float] = boot_clock, device_id: str | None = None,
                 wall: Callable[[], float] = time.time, boot: str | None = None):
        self.path = Path(path).expanduser()
        self.cfg = cfg
        self.clock, self.wall = clock, wall        # ages; the stamp kept for a reboot
        self.boot = boot or boot_id()
        self.seq = SeqFile(seq_file or self.path.with_name("seq"), sync=cfg.sync != "off")
        self.seq_file = self.seq.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the writer thread (add) and the MQTT thread (pending, ack), under one lock: SQLite
        # serialises writers anyway, and the lock keeps a transaction from interleaving with another. Re-entrant so
        # a payload built inside add() may read stats().
        self._lock = threading.RLock()
        try:
            self._db = open_database(self.path, cfg)
            stored = self._meta_number("last_seq", None)
            if stored is not None:
                check_seq(stored, f"the meta table of {self.path}")
            self._last_seq = reconcile(stored, self._kept_seq(), self.path, self.seq_file)
            if self._last_seq != stored:
                write_meta(self._db, "last_seq", self._last_seq)
            self._dropped = self._meta_number("dropped", 0)
            self._expired = self._meta_number("expired", 0)
            self._depth, self._bytes = self._db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM events").fetchone()
            rebased = rebase(self._db, self.boot, self.clock(), self.wall())
            if rebased:
                log.info("outbox: %d events from an earlier boot aged by the wall clock", rebased)
            self._wall_steps = WallClock(wall=self.wall)     # the wall clock's steps, as the loop sees them
            self._wall_steps.start(self.clock())
            if device_id is not None:
                claim_device(self._db, device_id, self._depth, self.path, self.seq_file, self._last_seq)
        except sqlite3.DatabaseError as e:
            raise cannot_open(e, self.path, self.seq_file, None if "full" in str(e) else self._kept_seq()) from None
        except SeqFileError as e:
            raise OutboxError(str(e)) from None
        self._last_drop_log = -1e9
        self._closed = False

    def _meta_number(self, key: str, default: int | None) -> int | None:
        try:
            return read_meta(self._db, key, default)
        except (TypeError, ValueError):
            raise OutboxError(damaged_meta(self.path, key, self.seq_file, self._kept_seq())) from None

    def _kept_seq(self) -> int | None:
        try:
            return self.seq.read()
        except SeqFileError as e:
            raise OutboxError(str(e)) from None

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
    # ------------------------------------------------------------------------------------------- writing
    def add(self, kind: str, make: Callable[[int], dict], made: float | None = None) -> dict:
        """Allocate the next seq, build the payload with it, store it (durably, per ``sync``); returns the payload.
        ``made``: the boot clock when the event was made, if that was before now (it waited in memory)."""
        with self._lock, self._transaction():
            seq = self._last_seq + 1
            payload = make(seq)
            text = json.dumps(payload, separators=(",", ":"))
            now = self._follow_wall_locked()
            made = now if made is None else min(made, now)
            self._db.execute("INSERT INTO events (seq, event_id, kind, created, payload, made, boot) VALUES "
                             "(?, ?, ?, ?, ?, ?, ?)", (seq, payload["event_id"], kind, self.wall() - (now - made),
                                                       text, made, self.boot))
            write_meta(self._db, "last_seq", seq)
            self._last_seq = seq
            self._depth += 1
            self._bytes += len(text)
            self._expire_locked()
            self._enforce_bound_locked()
        self.seq.write(seq)
        return payload

    def _enforce_bound_locked(self) -> None:
        max_bytes = int(self.cfg.max_mb * 1024 * 1024)
        dropped = 0
        while self._depth > self.cfg.max_events or self._bytes > max_bytes:
            row = drop_oldest(self._db, first_kind="stats")    # a newer stats event supersedes an older one
            if row is None:
                break
            self._depth -= 1
            self._bytes -= row[1]
            dropped += 1
        if dropped:
            self._dropped += dropped
            write_meta(self._db, "dropped", self._dropped)
            now = time.monotonic()
            if now - self._last_drop_log > 60:   # a long outage drops one per event: say so once a minute
                self._last_drop_log = now
                log.error("outbox full (%d events, %.1f MB; bound %d events / %g MB): dropped the oldest "
                          "(stats first); %d dropped so far", self._depth, self._bytes / 1e6, self.cfg.max_events,
                          self.cfg.max_mb, self._dropped)

    def _follow_wall_locked(self) -> float:
        """The boot clock now; where the wall clock stepped since the last look, this boot's wall stamps (kept for
        a reboot) move with it, so a step by NTP cannot age them wrongly after a reboot."""
        now = self.clock()
        step = self._wall_steps.check(now)
        if step is not None:
            shifted = self._db.execute("UPDATE events SET created = created + ? WHERE boot = ?",
                                       (step, self.boot)).rowcount
            log.info("outbox: the wall clock stepped %+.1f s; the stamps of %d waiting events follow it", step,
                     shifted)
        return now

    def _expire_locked(self) -> None:
        n, size = delete_older_than(self._db, self.clock() - self.cfg.max_age_h * 3600)
        if n:
            self._depth -= n
            self._bytes -= size
            self._expired += n
            write_meta(self._db, "expired", self._expired)
            log.error("outbox: %d events older than %g h dropped unsent (%d so far)", n, self.cfg.max_age_h,
                      self._expired)

    def expire(self) -> None:
        with self._lock, self._transaction():
            self._follow_wall_locked()
            self._expire_locked()

    # ------------------------------------------------------------------------------------------- draining
    def pending(self, after_seq: int = 0, limit: int = 100) -> list[PendingEvent]:
        with self._lock:
            rows = self._db.execute("SELECT seq, event_id, kind, made, payload FROM events WHERE seq > ? ORDER BY "
                                    "seq LIMIT ?", (after_seq, limit)).fetchall()
        now = self.clock()
        return [PendingEvent(*row, age_s=max(0.0, now - row[3])) for row in rows]

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
            write_meta(self._db, "dropped", self._dropped)
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
                "SELECT made FROM events ORDER BY seq LIMIT 1").fetchone()    # by key: no scan
            oldest = row[0] if row else None
            return OutboxStats(self._depth, self._bytes,
                               None if oldest is None else round(max(0.0, self.clock() - oldest), 1),
                               self._last_seq, self._dropped, self._expired)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()
