"""Floods from the network cost the unit a few log lines and a bounded number of events, and nothing a command
carries can forge a line of the daemon's log. A real daemon against a real mosquitto."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

from appliance.host.logs import LogLimit, one_line
from conftest import appliance_cmd, appliance_env


def test_one_line_escapes_every_control_character():
    assert one_line("calm\nERROR forged\r\x1b[31m\u2028x\ty") == "calm\\nERROR forged\\r\\x1b[31m\\u2028x y"


def test_a_log_limit_logs_the_first_lines_then_a_count_per_period(caplog):
    import logging

    now = [0.0]
    limit = LogLimit(logging.getLogger("t"), "rejected commands", burst=3, period_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for i in range(100):
            limit(logging.WARNING, "rejected %d", i)
        now[0] = 61
        limit(logging.WARNING, "rejected %d", 100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["rejected 0", "rejected 1", "rejected 2",
                     "97 more rejected commands in the last 61 s (not logged one by one)", "rejected 100"]


def test_a_command_flood_is_a_few_log_lines_stats_are_rate_limited_and_no_line_is_forged(tmp_path, mosquitto,
                                                                                         collect):
    watcher = collect(mosquitto.port, "emotion/kiosk-flood/#")
    env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-flood", APPLIANCE_MQTT__STATS_INTERVAL_S="3600")
    log_path = tmp_path / "daemon.log"
    proc = subprocess.Popen(appliance_cmd("run", "--broker", mosquitto.url), env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "w"))
    sender = watcher.client
    try:
        assert watcher.wait_for(lambda c: any(s["state"] == "online" for s in c.json("/status")), 60)
        # A pause whose reason carries a line of its own, then a resume: both logged by the control plane.
        sender.publish("emotion/kiosk-flood/cmd/pause", json.dumps({"reason": "calm\nERROR forged"}).encode(), 1)
        sender.publish("emotion/kiosk-flood/cmd/resume", b"", 1)
        for i in range(400):
            sender.publish(f"emotion/kiosk-flood/cmd/bogus{i % 7}", b"\xff junk", 1)
        before = len(watcher.json("kiosk-flood/stats"))
        for i in range(30):      # spread over 6 s: 10 per second would each get their own stats event
            sender.publish("emotion/kiosk-flood/cmd/stats", json.dumps({"request_id": f"s{i}"}).encode(), 1)
            time.sleep(0.2)
        assert watcher.wait_for(lambda c: len(c.json("/reply")) >= 432, 20), len(watcher.json("/reply"))
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    err = log_path.read_text()
    assert proc.returncode == 0, err[-2000:]
    stats_replies = [r for r in watcher.json("/reply") if (r["request_id"] or "").startswith("s")]
    busy = [r for r in stats_replies if not r["ok"] and r["error"].startswith("busy")]
    stats = watcher.json("kiosk-flood/stats")[before:]
    # 10 tokens at once (pause and resume took 2), about one more over the 6 s; each accepted one asks for a stats
    # event at the next tick (two in one tick make one).
    assert len(stats_replies) == 30 and 19 <= len(busy) <= 22, [r["error"] for r in stats_replies]
    assert 5 <= len(stats) <= 30 - len(busy), (len(stats), len(busy))
    rejected = [line for line in err.splitlines() if "rejected" in line]
    assert len(rejected) <= 6, rejected
    count = re.search(r"(\d+) more rejected commands in the last \d+ s", err)
    assert count and int(count.group(1)) == 400 + len(busy) - 5, rejected
    assert not any(line.startswith("ERROR forged") for line in err.splitlines())
    assert "command pause (calm\\nERROR forged): done" in err
