"""The outbox's SQLite file: opened in WAL mode with a bounded WAL, its schema, and the ``meta`` table (last seq,
counters, the device the events belong to)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any, Callable

from appliance.publish.config import OutboxConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2      # 2: each event's boot-clock time of making (made) and the boot it was made in
WAL_CHECKPOINT_PAGES = 64          # 256 KB of 4 KB pages
WAL_LIMIT_BYTES = 1 << 20


class OutboxError(RuntimeError):
    pass


def open_database(path: Path, cfg: OutboxConfig) -> sqlite3.Connection:
    """Autocommit (transactions are explicit), shared across threads under the outbox's lock."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={cfg.sync.upper()}")
    # A bounded WAL: checkpoint every WAL_CHECKPOINT_PAGES and cut the file back to WAL_LIMIT_BYTES after, so a
    # healthy unit (everything acknowledged) needs a small, stated amount of disk (README 'Delivery').
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise OutboxError(f"{path} was written by a newer version (schema {version}); upgrade, or move the file "
                          "aside to start a new outbox")
    # created: the wall clock when the event was made (the only stamp that survives a reboot); made: the boot clock
    # then, which ages and expiry are read from (host/clock.py); boot: the boot that ``made`` belongs to.
    db.executescript("""
        CREATE TABLE IF NOT EXISTS events (
            seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
            created REAL NOT NULL, payload TEXT NOT NULL, made REAL, boot TEXT);
        CREATE INDEX IF NOT EXISTS events_kind ON events (kind, seq);
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """)
    if 0 < version < 2:     # made and boot stay NULL: the outbox re-bases such rows from ``created`` at open
        db.executescript("ALTER TABLE events ADD COLUMN made REAL; ALTER TABLE events ADD COLUMN boot TEXT;")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return db


def cannot_open(error: sqlite3.DatabaseError, path: Path, seq_path: Path, kept: int | None) -> OutboxError:
    """What to tell the operator when the outbox file cannot be opened: a full disk, or a damaged file."""
    if "full" in str(error):
        return OutboxError(f"outbox {path} cannot be opened: the disk is full ({error}); free space on "
                           f"{path.parent} (df -h {path.parent}) and start again")
    return OutboxError(f"outbox {path} cannot be opened ({error}); if it is damaged, move it aside "
                       + _after_moving_aside(seq_path, kept))


def _after_moving_aside(seq_path: Path, kept: int | None) -> str:
    return (f"(the events in it are then lost; seq continues from {seq_path}, "
            + (f"which says {kept})" if kept else "which is missing: seq would restart at 1)"))


def damaged_meta(path: Path, key: str, seq_path: Path, kept: int | None) -> str:
    return (f"outbox {path}: its meta value {key!r} is damaged (not a number); move the file aside to start a new "
            "outbox " + _after_moving_aside(seq_path, kept))


def read_meta(db: sqlite3.Connection, key: str, default: Any, kind: Callable[[Any], Any] = int) -> Any:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else kind(row[0])


def write_meta(db: sqlite3.Connection, key: str, value: Any) -> None:
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
               (key, value))


def claim_device(db: sqlite3.Connection, device_id: str, depth: int, path: Path, seq_path: Path,
                 last_seq: int) -> None:
    """Waiting events belong to the device that made them: their payload names it, and they must go out on its
    topics. A new device.id with events of the old one still waiting is refused until an operator decides."""
    before = read_meta(db, "device_id", None, str)
    if before is not None and before != device_id:
        if depth:
            raise OutboxError(
                f"outbox {path} holds {depth} undelivered events of device {before!r}, and device.id is "
                f"now {device_id!r}: start once more with device.id = {before!r} to deliver them, or move "
                f"{path.name} aside to drop them (seq continues from {seq_path})")
        log.warning("outbox: device.id changed from %r to %r (nothing was waiting); seq continues from %d",
                    before, device_id, last_seq)
    if before != device_id:
        write_meta(db, "device_id", device_id)


def drop_oldest(db: sqlite3.Connection, first_kind: str) -> tuple[int, int] | None:
    """Delete the oldest event of ``first_kind``, else the oldest of any kind; (seq, payload bytes) or None."""
    row = (db.execute("SELECT seq, length(payload) FROM events WHERE kind = ? ORDER BY seq LIMIT 1",
                      (first_kind,)).fetchone()
           or db.execute("SELECT seq, length(payload) FROM events ORDER BY seq LIMIT 1").fetchone())
    if row is not None:
        db.execute("DELETE FROM events WHERE seq = ?", (row[0],))
    return row


def rebase(db: sqlite3.Connection, boot: str, now_boot: float, now_wall: float) -> int:
    """Events made in another boot (or before schema 2) get this boot's clock: their age so far from the wall clock,
    the only one that survives a reboot (never negative); the number re-based."""
    return db.execute("UPDATE events SET made = ? - max(0.0, ? - created), boot = ? WHERE boot IS NOT ?",
                      (now_boot, now_wall, boot, boot)).rowcount


def delete_older_than(db: sqlite3.Connection, cutoff: float) -> tuple[int, int]:
    """Delete events made (boot clock) before ``cutoff``; (count, payload bytes). Runs on every add: the oldest row
    is looked at by primary key first, and the scan only happens when something has actually expired."""
    oldest = db.execute("SELECT made FROM events ORDER BY seq LIMIT 1").fetchone()
    if oldest is None or oldest[0] >= cutoff:
        return 0, 0
    n, size = db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM events WHERE made < ?",
                         (cutoff,)).fetchone()
    db.execute("DELETE FROM events WHERE made < ?", (cutoff,))
    return n, size
