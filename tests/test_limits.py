"""Values that validate must be values the daemon can use: every config number within what the code and MQTT can
carry, no empty paths, no traceback from a deeply nested file; a damaged seq or outbox meta is one line that says
how to recover, never an exit 0 that drops every event."""

from __future__ import annotations

import sqlite3
import subprocess

import pytest

from appliance.config import ConfigError, load_config
from appliance.publish.config import OutboxConfig
from appliance.publish.outbox import Outbox
from appliance.publish.outbox_db import OutboxError
from conftest import appliance_cmd, appliance_env


@pytest.mark.parametrize("key, value, words", [
    ("outbox.max_mb", "inf", "finite"),
    ("outbox.max_age_h", "2000000", "less than or equal to 1193046"),   # 2^32-1 s of MQTT 5 expiry
    ("outbox.max_age_h", "nan", "finite"),
    ("mqtt.keepalive_s", "99999999", "less than or equal to 65535"),
    ("mqtt.reconnect_max_s", "inf", "finite"),
    ("mqtt.reconnect_max_s", "1e9", "less than or equal to 3600"),
    ("mqtt.client_id", "x" * 70_000, "70000 bytes; MQTT carries at most 65535"),
    ("mqtt.client_id", "", "must not be empty"),
    ("state.dir", "", "must not be empty"),
    ("models.dir", " ", "must not be empty"),
    ("alerts.cooldown_s", "inf", "finite"),
    ("outbox.max_events", "1e12", "less than or equal to"),
])
def test_values_no_part_of_the_daemon_can_carry_are_refused_by_their_key(key, value, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, env={"APPLIANCE_" + key.upper().replace(".", "__"): value})
    issue = err.value.issues[0]
    assert issue.path == key and words in issue.message, str(issue)
    assert len(str(issue)) < 300, "the error quotes a long value, not all of it"


def test_validate_and_run_refuse_an_unusable_value_with_its_dotted_key(tmp_path):
    env = appliance_env(tmp_path, APPLIANCE_OUTBOX__MAX_MB="inf")
    for args in (("config", "validate"), ("run", "--duration", "1")):
        run = subprocess.run(appliance_cmd(*args), env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "outbox.max_mb: Input should be a finite number" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def test_a_file_nested_hundreds_deep_is_one_line(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 600 + "]" * 600 + "\n")
    run = subprocess.run(appliance_cmd("config", "validate", "-c", str(path)), env=appliance_env(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "nested too deeply" in run.stderr and "Traceback" not in run.stderr, run.stderr


@pytest.mark.parametrize("content, words", [
    (str(2**63 - 1), "outside 0..9007199254740991"),
    ("1" * 20, "outside 0..9007199254740991"),
    ("-5", "is corrupt"),
    ("abc", "is corrupt"),
    (None, "is not a file"),       # a folder named seq
])
def test_a_damaged_seq_file_stops_the_outbox_with_the_way_out(tmp_path, content, words):
    seq = tmp_path / "seq"
    if content is None:
        seq.mkdir()
    else:
        seq.write_text(content + "\n")
    with pytest.raises(OutboxError, match=words) as err:
        Outbox(tmp_path / "outbox.sqlite3", OutboxConfig(), seq_file=seq)
    assert "start again" in str(err.value)


def test_damaged_outbox_meta_is_one_line_naming_the_seq_to_continue_from(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3", OutboxConfig(), seq_file=tmp_path / "seq")
    box.add("summary", lambda seq: {"event_id": "a", "seq": seq})
    box.close()
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    db.execute("UPDATE meta SET value = 'abc' WHERE key = 'last_seq'")
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match=r"meta value 'last_seq' is damaged.*move the file aside.*which says 1"):
        Outbox(tmp_path / "outbox.sqlite3", OutboxConfig(), seq_file=tmp_path / "seq")


def test_the_daemon_refuses_a_seq_it_could_not_continue_with_exit_2(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "seq").write_text(f"{2**63 - 1}\n")
    run = subprocess.run(appliance_cmd("run", "--duration", "2"), env=appliance_env(tmp_path), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "outside 0..9007199254740991" in run.stderr and "Traceback" not in run.stderr
