"""Storage trouble: a full disk, an emptied or damaged outbox, a second daemon on one state folder.

Real SQLite files, a real mosquitto, and a real full disk: a 2 MB tmpfs mounted for the test (skipped, with the
reason, where this process may not mount).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from appliance.publish.config import OutboxConfig
from appliance.publish.outbox import Outbox, OutboxError
from appliance.publish.outbox_db import WAL_LIMIT_BYTES
from appliance.host.statedir import StateDirError, StateDirLock
from conftest import appliance_cmd, appliance_env


def event(seq: int) -> dict:
    return {"event_id": f"{seq:032x}", "seq": seq, "body": "x" * 2000}


# --------------------------------------------------------------------------------------------- seq and the WAL
def test_an_emptied_outbox_keeps_seq_and_says_so(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, OutboxConfig())
    for _ in range(13):
        box.add("summary", event)
    box.close()
    assert (tmp_path / "seq").read_text() == "13\n"
    for suffix in ("", "-wal", "-shm"):          # `: > outbox.sqlite3`, as an operator might
        p = tmp_path / f"outbox.sqlite3{suffix}"
        if p.exists():
            p.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        box = Outbox(path, OutboxConfig())
    assert box.add("summary", event)["seq"] == 14
    assert "holds no seq (new, emptied or replaced)" in caplog.text and "seq continues from 13" in caplog.text


def test_a_damaged_outbox_error_tells_where_seq_continues(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3", OutboxConfig())
    for _ in range(5):
        box.add("summary", event)
    box.close()
    (tmp_path / "outbox.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match=r"move it aside .*seq continues from .*seq, which says 5\)"):
        Outbox(tmp_path / "outbox.sqlite3", OutboxConfig())
    (tmp_path / "outbox.sqlite3").rename(tmp_path / "outbox.damaged")     # following the advice
    assert Outbox(tmp_path / "outbox.sqlite3", OutboxConfig()).add("summary", event)["seq"] == 6


def test_an_older_copy_of_the_outbox_cannot_take_seq_back(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3", OutboxConfig())
    box.add("summary", event)
    box.close()
    old = (tmp_path / "outbox.sqlite3").read_bytes()
    box = Outbox(tmp_path / "outbox.sqlite3", OutboxConfig())
    for _ in range(4):
        box.add("summary", event)
    box.close()
    (tmp_path / "outbox.sqlite3").write_bytes(old)        # restored from a backup taken at seq 1
    assert Outbox(tmp_path / "outbox.sqlite3", OutboxConfig()).add("summary", event)["seq"] == 6


def test_the_wal_stays_small_while_events_are_acknowledged(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3", OutboxConfig(sync="normal"))
    largest = 0
    for i in range(3000):         # ~6 MB of payload through the outbox, every event acknowledged at once
        seq = box.add("summary", event)["seq"]
        box.ack([seq])
        if i % 100 == 0:
            largest = max(largest, (tmp_path / "outbox.sqlite3-wal").stat().st_size)
    assert 0 < largest <= WAL_LIMIT_BYTES + 64 * 4096, largest
    assert (tmp_path / "outbox.sqlite3").stat().st_size < 1 << 20


# --------------------------------------------------------------------------------------------- the state folder
def test_one_daemon_per_state_folder(tmp_path):
    first = StateDirLock(tmp_path / "state").acquire()
    with pytest.raises(StateDirError, match=rf"another appliance process \(pid {os.getpid()}\) is using state dir"):
        StateDirLock(tmp_path / "state").acquire()
    first.release()
    StateDirLock(tmp_path / "state").acquire().release()      # free again once the first is gone


def test_a_second_daemon_is_refused_at_start_with_the_reason(tmp_path):
    script = ("import time\nfrom appliance.host.statedir import StateDirLock\n"
              f"lock = StateDirLock({str(tmp_path / 'state')!r}).acquire()\nprint('held', flush=True)\ntime.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run(appliance_cmd("run", "--duration", "3"), env=appliance_env(tmp_path),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert f"another appliance process (pid {holder.pid}) is using state dir" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "state" / "outbox.sqlite3").exists() or \
        sqlite3.connect(tmp_path / "state" / "outbox.sqlite3").execute("SELECT count(*) FROM events").fetchone()[0] == 0


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("x"), "is a file, not a folder"),
    (lambda p: p.parent.joinpath("file").write_text("x"), "cannot be created (Not a directory)"),
])
def test_a_state_dir_that_cannot_be_used_is_a_clear_error(tmp_path, make, message):
    state = tmp_path / "state"
    make(state)
    target = state if "is a file" in message else tmp_path / "file" / "state"
    proc = subprocess.run(appliance_cmd("run", "--duration", "1"),
                          env=appliance_env(tmp_path, APPLIANCE_STATE__DIR=str(target)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


# --------------------------------------------------------------------------------------------- a full disk
@contextmanager
def small_disk(path, size: str = "2m"):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here ({mounted.stderr.strip() or 'mount failed'}): the full-disk "
                    "case needs root or CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path) -> None:
    with open(path / "filler", "wb", buffering=0) as f:
        for block in (65536, 4096, 1):     # to the last byte
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError:
                pass


def test_a_full_disk_is_reported_survived_and_recovered_from_without_a_restart(tmp_path, mosquitto, collect):
    watcher = collect(mosquitto.port, "emotion/kiosk-full/#")
    with small_disk(tmp_path / "state") as state:
        env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-full", APPLIANCE_AGGREGATE__WINDOW_S="1",
                        APPLIANCE_AGGREGATE__MIN_OBSERVED_S="0.5",
                            APPLIANCE_MQTT__STATS_INTERVAL_S="1", APPLIANCE_STATE__DIR=str(state))
        proc = subprocess.Popen(appliance_cmd("run", "--broker", mosquitto.url), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert watcher.wait_for(lambda c: len(c.json("/summary")) >= 3, 60), "no live summaries"
            fill(state)
            assert watcher.wait_for(lambda c: any("storage_error" in s for s in c.json("/status")), 30), \
                "the retained status never said the outbox cannot be written"
            os.kill(proc.pid, signal.SIGUSR1)      # pause and resume on the full disk (the audit log: see below)
            time.sleep(1.5)
            os.kill(proc.pid, signal.SIGUSR2)
            time.sleep(3)
            assert proc.poll() is None, "the daemon died on the full disk"
            assert watcher.json("/status")[-1].get("storage_error"), "recovered although the disk is still full"
            made_before = max(s["seq"] for s in watcher.json("/summary"))
            (state / "filler").unlink()
            assert watcher.wait_for(lambda c: "storage_error" not in c.json("/status")[-1], 60), \
                "the status never cleared once space was back"
            assert watcher.wait_for(lambda c: max(s["seq"] for s in c.json("/summary")) > made_before + 3, 30), \
                "no new summaries after the disk had space again"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err[-3000:]
        last_seq = int((state / "seq").read_text())
        db = sqlite3.connect(state / "outbox.sqlite3")
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0, "not everything was acknowledged"
    events = {json.loads(p)["event_id"]: json.loads(p) for t, p, _, _ in watcher.messages
              if t.rsplit("/", 1)[1] in ("summary", "stats", "alert")}
    seqs = sorted(e["seq"] for e in events.values())
    # Held in memory while the disk was full, stored and sent after: every seq exactly once, none skipped.
    assert seqs == list(range(1, last_seq + 1))


def test_a_seq_file_that_cannot_be_written_is_a_storage_error_until_it_can(tmp_path, caplog):
    """The seq file lags the outbox while it cannot be written: the status says so (storage_error), as it does
    for the outbox itself, and clears once the file is written again."""
    from appliance.publish.outbox_writer import OutboxWriter

    box = Outbox(tmp_path / "outbox.sqlite3", OutboxConfig(), seq_file=tmp_path / "seq")
    reports = []
    writer = OutboxWriter(box, on_storage=reports.append)
    writer.start()
    (tmp_path / "seq.tmp").mkdir()        # the atomic rewrite's temporary file cannot be made
    for _ in range(3):
        writer.submit("summary", event)
    writer.hand_over()
    wait = time.monotonic() + 10
    while box.last_seq < 3 and time.monotonic() < wait:
        time.sleep(0.05)
    assert box.last_seq == 3 and len(reports) == 1 and "seq" in reports[0] and "cannot be written" in reports[0]
    (tmp_path / "seq.tmp").rmdir()
    writer.submit("summary", event)
    writer.close()
    assert reports[-1] is None and int((tmp_path / "seq").read_text()) == 4


def test_the_audit_log_on_a_full_disk_counts_what_it_cannot_write_and_goes_on(tmp_path, caplog):
    from appliance.host.audit import AuditLog, verify

    with small_disk(tmp_path / "state", "256k") as state:
        audit = AuditLog(state / "audit.log")
        audit.append("start", version="t")
        fill(state)
        with caplog.at_level(logging.ERROR):
            for _ in range(100):           # more than the last page of the file can take
                audit.append("pause", by=["signal"], reason="x" * 100)
        assert audit.failed > 0 and "could not write a pause line" in caplog.text
        (state / "filler").unlink()
        audit.append("stop")
        ok, lines, why = verify(state / "audit.log")
        assert ok, why                      # the chain goes on from the last line that was written


# --------------------------------------------------------------------------------------------- a new device id
def test_events_of_another_device_id_are_never_sent_under_the_new_one(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, OutboxConfig(), device_id="kiosk-a")
    for _ in range(3):
        box.add("summary", event)
    box.close()
    with pytest.raises(OutboxError, match=r"holds 3 undelivered events of device 'kiosk-a', and device.id is now "
                                          r"'kiosk-b': start once more with device.id = 'kiosk-a'"):
        Outbox(path, OutboxConfig(), device_id="kiosk-b")
    box = Outbox(path, OutboxConfig(), device_id="kiosk-a")     # the old id delivers them
    box.ack([e.seq for e in box.pending()])
    box.close()
    with caplog.at_level(logging.WARNING):
        box = Outbox(path, OutboxConfig(), device_id="kiosk-b")
    assert "device.id changed from 'kiosk-a' to 'kiosk-b' (nothing was waiting)" in caplog.text
    assert box.add("summary", event)["seq"] == 4


def test_the_daemon_refuses_a_new_device_id_while_the_old_ones_events_wait(tmp_path):
    state = tmp_path / "state"
    box = Outbox(state / "outbox.sqlite3", OutboxConfig(), device_id="kiosk-a")     # what kiosk-a left undelivered
    for _ in range(2):
        box.add("summary", event)
    box.close()
    proc = subprocess.run(appliance_cmd("run", "--duration", "3"),
                          env=appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-b"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "holds 2 undelivered events of device 'kiosk-a'" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
