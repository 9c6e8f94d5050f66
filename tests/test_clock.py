"""The system clock steps (NTP on a unit without a real-time clock); nothing is lost or mis-dated for it.

libfaketime moves the wall clock of the daemon process only (its monotonic and boot clocks stay real), as NTP
would: the machine's own clock is never touched. A real daemon against a real mosquitto.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from appliance.host.clock import WallClock, clock_state
from conftest import Mosquitto, appliance_cmd, appliance_env, free_port

def libfaketime() -> Path:
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is not installed: run `make test` (it installs Debian's faketime)")
    return found[0]


def stamp(event: dict) -> float:
    return datetime.fromisoformat((event.get("window_end") or event["at"]).replace("Z", "+00:00")).timestamp()


def test_the_wall_clock_follows_a_step_and_run_time_does_not():
    wall = [1000.0]
    clock = WallClock(wall=lambda: wall[0])
    assert clock.start(5.0) == 1000.0
    wall[0] = 1000.5 + 864000          # NTP steps 10 days forward, half a second later
    assert clock.check(5.5) == pytest.approx(864000)
    assert clock.run_time(6.0) == 1001.0 and clock.now(6.0) == pytest.approx(1001.0 + 864000)
    wall[0] += 0.4                     # no step: within STEP_S of what the monotonic clock says
    assert clock.check(5.9) is None and clock.steps == 1
    assert WallClock(follow_steps=False, wall=lambda: 0.0).check(1e9) is None     # a replay's simulated clock


def last_seq(state: Path) -> int:
    db = sqlite3.connect(state / "outbox.sqlite3")
    try:
        return db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]
    finally:
        db.close()


def test_clock_steps_forward_and_back_lose_nothing_and_stamps_follow_the_clock(tmp_path, collect):
    """Case 1 of the issue: a unit starts 10 days behind with the broker down; NTP steps the clock forward, later
    back by 30 min; then the broker comes up."""
    port = free_port()
    broker = Mosquitto(tmp_path, port, persistence=True).start()
    watcher = collect(port, "emotion/kiosk-clock/#", client_id="clock-watcher", clean=False)
    broker.stop()
    fake = tmp_path / "faketime"
    fake.write_text("-10d\n")
    env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-clock", APPLIANCE_AGGREGATE__WINDOW_S="1",
                        APPLIANCE_AGGREGATE__MIN_OBSERVED_S="0.5", APPLIANCE_MQTT__STATS_INTERVAL_S="2",
                        APPLIANCE_MQTT__RECONNECT_MIN_S="0.5", APPLIANCE_MQTT__RECONNECT_MAX_S="1",
                        LD_PRELOAD=str(libfaketime()), FAKETIME_TIMESTAMP_FILE=str(fake), FAKETIME_NO_CACHE="1",
                        FAKETIME_DONT_FAKE_MONOTONIC="1")
    log_path = tmp_path / "daemon.log"
    proc = subprocess.Popen(appliance_cmd("run", "--broker", f"mqtt://127.0.0.1:{port}"), env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
    state = tmp_path / "state"
    try:
        deadline = time.monotonic() + 60
        while not ((state / "seq").exists() and last_seq(state) >= 4) and time.monotonic() < deadline:
            time.sleep(0.2)
        forward_at = time.time()
        fake.write_text("+0\n")           # NTP: the real time, 10 days later than the unit thought
        time.sleep(3)
        back_at = time.time()
        fake.write_text("-30m\n")         # and a step back
        time.sleep(2)
        backlog = last_seq(state)
        broker.start()
        assert watcher.wait_for(lambda c: len(c.json("kiosk-clock/summary")) >= backlog // 2 + 4, 40)
        time.sleep(2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        broker.stop()
    err = log_path.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "dropped unsent" not in err and "Traceback" not in err
    assert "system clock stepped +864000" in err and "system clock stepped -1800" in err, err[-3000:]
    by_id = {e["event_id"]: e for suffix in ("/summary", "/stats") for e in watcher.json("kiosk-clock" + suffix)}
    events = sorted(by_id.values(), key=lambda e: e["seq"])
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, seqs[-1] + 1)), "every seq once (summaries and stats are all of this run's events)"
    # Stamps: 10 days back before the first step, the real time between the steps, 30 min back after the second.
    before = [e for e in events if e["seq"] <= 3]
    assert all(abs(stamp(e) - (forward_at - 864000)) < 60 for e in before), [e.get("window_end") for e in before]
    between = [e for e in events if forward_at - 1 < stamp(e) < back_at + 1]   # the others are days or 30 min off
    after = [e for e in events if e["seq"] > backlog + 3]
    assert between and after, (len(between), len(after))
    assert all(abs(stamp(e) - (time.time() - 1800)) < 60 for e in after)
    # Live or not from when each was made: all the backlog was made before the connection, nothing after it was.
    assert all(e["historical"] for e in events if e["seq"] <= backlog)
    assert not any(e["historical"] for e in after)
    stats = [e for e in events if e["schema"] == "emotion.stats/1"]
    assert stats[-1]["outbox"]["expired"] == 0
    # The stats count each step the log reports, and the two real steps are among them, in order. libfaketime
    # re-parses its file into one static buffer that every thread shares, so a thread can read a half-copied offset
    # (CI saw a step to the real time and straight back, and here one at the start, before the file's -10d took):
    # the daemon rightly follows those too, and the stamps above show they left nothing mis-dated.
    steps = [float(s) for s in re.findall(r"system clock stepped ([+-][0-9.]+) s \(", err)]
    assert stats[-1]["loop"]["clock_steps"] == len(steps), steps
    assert 864000.0 in steps and -1800.0 in steps[steps.index(864000.0) + 1:] and len(steps) <= 6, steps
    status = [s for s in watcher.json("kiosk-clock/status") if s["state"] == "online"]
    assert status and status[-1]["clock"] == clock_state()


def test_the_unit_pulls_in_time_sync_and_the_installer_bounds_the_wait():
    """time-sync.target is passive: After= alone orders nothing unless something pulls the target in."""
    from configparser import ConfigParser

    from conftest import ROOT

    unit = ConfigParser(strict=False, interpolation=None)
    unit.read_string((ROOT / "systemd" / "appliance.service").read_text())
    assert "time-sync.target" in unit["Unit"]["Wants"].split() and "time-sync.target" in unit["Unit"]["After"].split()
    install = (ROOT / "deploy" / "jetson" / "install.sh").read_text()
    assert "systemctl enable systemd-time-wait-sync.service" in install and "TimeoutStartSec=90s" in install
