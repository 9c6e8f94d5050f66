"""The outbox on a real SQLite file: seq allocation, durability across reopen, acks, and the bound."""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
import uuid

import pytest

from appliance.publish.config import OutboxConfig
from appliance.publish.client import Backoff
from appliance.publish.outbox import Outbox, OutboxError
from appliance.publish.outbox_writer import OutboxWriter


def event(kind: str = "summary", size: int = 0):
    def make(seq: int) -> dict:
        return {"schema": f"emotion.{kind}/1", "event_id": uuid.uuid4().hex, "seq": seq, "pad": "x" * size,
                "historical": False}
    return make


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_seq_is_allocated_with_the_row_and_survives_reopen(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    seqs = [box.add("summary", event())["seq"] for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    box.ack([1, 2])
    box.close()
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    assert box.last_seq == 5 and box.depth == 3
    assert [e.seq for e in box.pending()] == [3, 4, 5]
    assert box.add("alert", event("alert"))["seq"] == 6


def test_a_failing_payload_builder_consumes_no_seq_and_stores_nothing(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    box.add("summary", event())

    def broken(seq):
        raise ValueError("boom")

    with pytest.raises(ValueError):
        box.add("summary", broken)
    assert box.add("summary", event())["seq"] == 2
    assert [e.seq for e in box.pending()] == [1, 2]


def test_seq_continues_from_the_legacy_file(tmp_path):
    (tmp_path / "seq").write_text("41\n")
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig(), seq_file=tmp_path / "seq")
    assert box.add("summary", event())["seq"] == 42


def test_pending_is_in_seq_order_after_a_cursor(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    for _ in range(10):
        box.add("summary", event())
    assert [e.seq for e in box.pending(after_seq=4, limit=3)] == [5, 6, 7]
    first = box.pending(limit=1)[0]
    assert first.kind == "summary" and '"seq":1' in first.payload


def test_size_bound_drops_stats_first_then_the_oldest_and_counts(tmp_path, caplog):
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig(max_events=5))
    box.add("summary", event())          # 1
    box.add("stats", event("stats"))     # 2
    box.add("summary", event())          # 3
    box.add("stats", event("stats"))     # 4
    box.add("alert", event("alert"))     # 5
    with caplog.at_level(logging.ERROR):
        box.add("summary", event())      # 6: over by one, the oldest stats goes
        box.add("summary", event())      # 7: the next stats goes
        box.add("summary", event())      # 8: no stats left, the oldest event goes
    assert [e.seq for e in box.pending()] == [3, 5, 6, 7, 8]
    assert box.stats().dropped == 3 and box.depth == 5
    assert "outbox full" in caplog.text
    box.close()
    assert Outbox(tmp_path / "o.sqlite3", OutboxConfig(max_events=5)).stats().dropped == 3   # persisted


def test_byte_bound_is_enforced(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig(max_mb=0.01))   # ~10 kB
    for _ in range(40):
        box.add("summary", event(size=1000))
    stats = box.stats()
    assert stats.bytes <= 0.01 * 1024 * 1024 and stats.depth < 40 and stats.dropped == 40 - stats.depth
    assert box.pending()[-1].seq == 40    # the newest are kept


def test_age_bound_expires_old_events(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig(max_age_h=1), clock=clock)
    box.add("summary", event())
    box.add("summary", event())
    clock.t += 1800
    box.add("summary", event())
    clock.t += 1801     # the first two are now older than an hour
    box.expire()
    assert [e.seq for e in box.pending()] == [3]
    assert box.stats().expired == 2 and box.stats().oldest_age_s == 1801.0


def test_ages_come_from_the_boot_clock_and_a_wall_clock_step_expires_nothing(tmp_path):
    """Issue 25: a unit 10 days behind stores events, then NTP steps the wall clock: they are seconds old, not 10
    days, and stay so across a reboot (another boot id), where the age so far comes from their wall stamps, which
    followed the step."""
    boot, step = Clock(50.0), [1_000_000.0]

    def wall():
        return boot.t + step[0]

    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig(max_age_h=168), clock=boot, wall=wall, boot="boot-1")
    box.add("summary", event())
    boot.t += 20
    box.add("summary", event(), made=boot.t - 15)       # waited 15 s in memory before it could be stored
    step[0] += 10 * 86400                               # NTP: 10 days forward
    boot.t += 5
    box.expire()
    assert [(e.seq, e.age_s) for e in box.pending()] == [(1, 25.0), (2, 20.0)]
    assert box.stats().expired == 0 and box.stats().oldest_age_s == 25.0
    box.close()
    # The same boot (a restarted daemon): the boot clock goes on, nothing re-based.
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig(max_age_h=168), clock=boot, wall=wall, boot="boot-1")
    assert [e.age_s for e in box.pending()] == [25.0, 20.0]
    box.close()
    # Another boot, 2 h later by the (now right) wall clock; the boot clock started again near 0.
    step[0] += boot.t + 7200 - 7.0
    boot.t = 7.0
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig(max_age_h=168), clock=boot, wall=wall, boot="boot-2")
    assert [e.age_s for e in box.pending()] == [pytest.approx(7200 + 25.0), pytest.approx(7200 + 20.0)]
    assert box.stats().expired == 0


def test_an_outbox_of_schema_1_is_migrated_and_its_events_aged_from_their_stamps(tmp_path):
    path = tmp_path / "o.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
                             created REAL NOT NULL, payload TEXT NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO events VALUES (1, 'a', 'summary', 1000.0, '{"seq":1}');
        INSERT INTO meta VALUES ('last_seq', 1);
        PRAGMA user_version=1;
    """)
    db.close()
    box = Outbox(path, OutboxConfig(), clock=Clock(30.0), wall=Clock(1060.0), boot="b")
    assert [(e.seq, e.age_s) for e in box.pending()] == [(1, 60.0)]
    assert box.add("summary", event())["seq"] == 2


def test_acks_and_refusals_keep_the_counters_true(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    for _ in range(4):
        box.add("summary", event(size=100))
    before = box.stats().bytes
    box.ack([1, 2, 99])      # an unknown seq (already acked) is harmless
    box.drop(3, "broker refused it: Not authorized")
    stats = box.stats()
    assert stats.depth == 1 and stats.dropped == 1 and 0 < stats.bytes < before / 3
    with sqlite3.connect(tmp_path / "o.sqlite3") as db:
        assert db.execute("SELECT count(*), sum(length(payload)) FROM events").fetchone() == (1, stats.bytes)


def test_a_file_that_is_not_an_outbox_is_a_clear_error(tmp_path):
    path = tmp_path / "o.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="cannot be opened.*move it aside"):
        Outbox(path, OutboxConfig())


def test_an_outbox_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "o.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(OutboxError, match="newer version"):
        Outbox(path, OutboxConfig())


def test_backoff_is_capped_exponential_with_jitter():
    backoff = Backoff(1.0, 30.0, random.Random(3))
    waits = [backoff.next() for _ in range(12)]
    caps = [min(30.0, 2.0 ** i) for i in range(12)]
    assert all(cap / 2 <= w <= cap for w, cap in zip(waits, caps)), waits
    assert len({round(w / cap, 6) for w, cap in zip(waits, caps)}) > 6    # jittered, not a fixed ratio
    backoff.reset()
    assert 0.5 <= backoff.next() <= 1.0


def test_the_writer_stores_in_order_off_the_callers_thread_and_close_flushes(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    log_, threads = [], []
    writer = OutboxWriter(box, on_stored=lambda: log_.append("wake"))
    writer.start()
    gate = threading.Event()

    def held_back(seq: int) -> dict:      # keeps the writer busy while the rest and close() queue up behind it
        gate.wait(5)
        return event()(seq)

    writer.submit("summary", held_back, then=lambda p: log_.append(p["seq"]))
    writer.hand_over()
    for i in range(49):
        writer.submit("alert" if i % 10 == 0 else "summary", event(),
                      then=lambda p: (log_.append(p["seq"]), threads.append(threading.current_thread().name)))
        if i % 7 == 0:
            writer.hand_over()
    assert log_ == []      # nothing is stored while the first one is held back; close() hands over the rest
    closer = threading.Thread(target=writer.close)
    closer.start()
    time.sleep(0.2)
    gate.set()
    closer.join(10)
    assert [x for x in log_ if x != "wake"] == list(range(1, 51)) and set(threads) == {"outbox-writer"}
    # the last burst wakes the sender too, even with close() right behind it in the queue
    assert log_[-1] == "wake" and log_.count("wake") <= 50
    assert [e.seq for e in box.pending(limit=100)] == list(range(1, 51)) and writer.lost == 0


def test_the_writer_retries_a_full_disk_and_loses_nothing(tmp_path, caplog):
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    box.add("summary", event())
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")      # SQLite's own "database or disk is full"
    writer = OutboxWriter(box, retry_max_s=0.2)
    writer.start()
    for _ in range(3):
        writer.submit("summary", event(size=20_000))
    writer.hand_over()
    with caplog.at_level(logging.ERROR):
        deadline = time.monotonic() + 10
        while "retrying" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "disk is full" in caplog.text and box.depth == 1
    box._db.execute("PRAGMA max_page_count = 1073741823")     # space again
    writer.close()
    assert [e.seq for e in box.pending()] == [1, 2, 3, 4] and writer.lost == 0


def test_a_payload_that_cannot_be_built_is_dropped_and_logged_not_fatal(tmp_path, caplog):
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    writer = OutboxWriter(box)
    writer.start()

    def broken(seq: int) -> dict:
        raise KeyError("no such field")

    with caplog.at_level(logging.ERROR):
        writer.submit("stats", broken)
        writer.submit("summary", event())
        writer.close()
    assert "could not be built" in caplog.text and writer.lost == 1
    assert [e.seq for e in box.pending()] == [1]
