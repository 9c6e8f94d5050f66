"""Every privacy guarantee, proven by a test that fails when the guarantee is broken."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import jsonschema
import pytest

from appliance.host.audit import AuditLog, verify
from appliance.config import ConfigError, load_config
from appliance.privacy import EU_MEMBERS
from appliance.perception.zones import ExclusionZones
from conftest import DEMO, appliance_cmd, appliance_env, load_schema, run_in_process
from test_perception import demo_frame

SCHEMAS = {"summary": load_schema("summary"), "alert": load_schema("alert"), "status": load_schema("status"),
           "reply": load_schema("reply")}
FACE_ZONE = [[[250, 40], [560, 40], [560, 360], [250, 360]]]   # covers the demo's speaker
LIVE = {"APPLIANCE_CAMERA__SOURCE": "0"}


# ------------------------------------------------------------------------------------ purpose and jurisdiction
@pytest.mark.parametrize("purpose", ["workplace", "education"])
@pytest.mark.parametrize("jurisdiction", ["EU", "DE", "FR", "IE", "PL"])
def test_prohibited_purposes_are_refused_in_the_eu(purpose, jurisdiction):
    with pytest.raises(ConfigError) as err:
        load_config(None, env=LIVE | {"APPLIANCE_PRIVACY__PURPOSE": purpose,
                                      "APPLIANCE_PRIVACY__JURISDICTION": jurisdiction})
    assert err.value.issues[0].path == "privacy.purpose" and "Art. 5(1)(f)" in err.value.issues[0].message


def test_every_member_state_counts_as_eu():
    assert len(EU_MEMBERS) == 27
    for code in EU_MEMBERS:
        with pytest.raises(ConfigError):
            load_config(None, env=LIVE | {"APPLIANCE_PRIVACY__PURPOSE": "workplace",
                                          "APPLIANCE_PRIVACY__JURISDICTION": code})


@pytest.mark.parametrize("purpose, jurisdiction", [("customer-experience", "EU"), ("market-research", "DE"),
                                                   ("workplace", "US"), ("customer-experience", "other")])
def test_allowed_combinations_start(purpose, jurisdiction):
    cfg = load_config(None, env=LIVE | {"APPLIANCE_PRIVACY__PURPOSE": purpose,
                                        "APPLIANCE_PRIVACY__JURISDICTION": jurisdiction})
    assert cfg.purpose == purpose


def test_purpose_and_jurisdiction_are_required_for_a_live_camera():
    with pytest.raises(ConfigError) as err:
        load_config(None, env=LIVE)
    assert [i.path for i in err.value.issues] == ["privacy.purpose"]
    with pytest.raises(ConfigError, match="ISO 3166-1"):
        load_config(None, env=LIVE | {"APPLIANCE_PRIVACY__PURPOSE": "market-research",
                                      "APPLIANCE_PRIVACY__JURISDICTION": "Germany"})


def test_daemon_refuses_to_start_citing_the_rule(tmp_path):
    env = appliance_env(tmp_path, APPLIANCE_PRIVACY__PURPOSE="workplace", APPLIANCE_PRIVACY__JURISDICTION="NL")
    proc = subprocess.run(appliance_cmd("run", "--camera", "0", "--duration", "1"), env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "EU AI Act, Art. 5(1)(f)" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ k-anonymity and alerts
def test_store_camera_never_below_k3_and_never_alerts():
    with pytest.raises(ConfigError, match="floor of 3"):
        load_config(None, env={"APPLIANCE_DEVICE__PROFILE": "store-camera", "APPLIANCE_AGGREGATE__K_MIN": "2"})
    cfg = load_config(None, env={"APPLIANCE_DEVICE__PROFILE": "store-camera"})
    assert cfg.k_min == 3 and not cfg.alerts_enabled
    # Even a k forced in code cannot go under the floor.
    cfg.aggregate.__dict__["k_min"] = 1
    assert cfg.k_min == 3
    with pytest.raises(ConfigError, match="alerts exist only in the kiosk profile"):
        load_config(None, env={"APPLIANCE_DEVICE__PROFILE": "store-camera", "APPLIANCE_ALERTS__ENABLED": "true"})


def test_alerts_only_for_customer_experience():
    base = LIVE | {"APPLIANCE_PRIVACY__JURISDICTION": "DE"}
    assert load_config(None, env=base | {"APPLIANCE_PRIVACY__PURPOSE": "customer-experience"}).alerts_enabled
    assert not load_config(None, env=base | {"APPLIANCE_PRIVACY__PURPOSE": "market-research"}).alerts_enabled
    with pytest.raises(ConfigError, match="customer-experience"):
        load_config(None, env=base | {"APPLIANCE_PRIVACY__PURPOSE": "market-research",
                                      "APPLIANCE_ALERTS__ENABLED": "true"})


# ------------------------------------------------------------------------------------ staff exclusion zones
def test_a_zone_over_a_face_means_it_is_never_detected():
    from appliance.perception.faces import FaceDetector
    from appliance.daemon.assemble import face_detector_path

    frame = demo_frame(30)
    zones = ExclusionZones(FACE_ZONE)
    masked = zones.apply(frame)
    assert masked[200, 400].sum() == 0 and frame[200, 400].sum() > 0     # the original frame is untouched
    with FaceDetector(face_detector_path(load_config(None, env={}))) as det:
        assert len(det.detect(frame).boxes) == 1
        assert zones.drop(det.detect(masked).boxes) == ()
        elsewhere = ExclusionZones([[[0, 0], [200, 0], [200, 100], [0, 100]]])
        assert len(elsewhere.drop(det.detect(elsewhere.apply(frame)).boxes)) == 1


def test_zones_apply_in_the_daemon(tmp_path, mosquitto, collect):
    watcher = collect(mosquitto.port, "emotion/+/summary")
    _, report, published = run_in_process(tmp_path, DEMO, None, 6, APPLIANCE_AGGREGATE__WINDOW_S="3",
                                          APPLIANCE_PRIVACY__EXCLUSION_ZONES=json.dumps(FACE_ZONE),
                                          APPLIANCE_MQTT__BROKER=mosquitto.url)
    assert report.frames_used >= 55
    assert watcher.wait_for(lambda c: len(c.json("/summary")) == len(published), 10)
    summaries = watcher.json("/summary")
    assert summaries and all(s["faces"] is None for s in summaries)   # the only face stands in the zone


def test_zones_preview_draws_a_png(tmp_path):
    out = tmp_path / "zones.png"
    proc = subprocess.run(appliance_cmd("zones", "preview", "--out", str(out)), capture_output=True, text=True,
                          timeout=60, env=appliance_env(tmp_path, APPLIANCE_PRIVACY__EXCLUSION_ZONES=json.dumps(
                              FACE_ZONE)))
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "1 zones, 0 faces would be analysed" in proc.stdout and out.stat().st_size > 50_000


# ------------------------------------------------------------------------------------ nothing raw leaves or stays
FORBIDDEN_WORDS = {"image", "images", "frame", "frames", "crop", "crops", "pixel", "pixels", "audio", "sample",
                   "samples", "pcm", "wav", "embedding", "embeddings", "landmark", "landmarks", "track", "tracks",
                   "track_id", "box", "boxes", "bbox", "face_id", "identity", "person"}


def walk_keys(value, out):
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(k)
            walk_keys(v, out)
    elif isinstance(value, list):
        for v in value:
            walk_keys(v, out)
    return out


def test_every_message_on_the_broker_is_schema_valid_small_text(tmp_path, mosquitto, collect):
    everything = collect(mosquitto.port, "#")
    cmd = collect(mosquitto.port, "emotion/kiosk-audit/reply")
    env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-audit", APPLIANCE_AGGREGATE__WINDOW_S="3")
    proc = subprocess.Popen(appliance_cmd("run", "--broker", mosquitto.url, "--duration", "9"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert everything.wait_for(lambda c: c.json("/summary"), 30)
    for payload in (b"{}", b"not json"):                     # commands and their replies are messages too
        everything.client.publish("emotion/kiosk-audit/cmd/status", payload, qos=1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert cmd.wait_for(lambda c: len(c.messages) >= 2, 5)
    kinds = set()
    for topic, payload, _, _ in everything.messages:
        if "/cmd/" in topic:
            continue                                          # what the test itself sent
        assert len(payload) < 2048, (topic, len(payload))
        data = json.loads(payload.decode("utf-8"))           # text JSON, never binary
        kind = topic.rsplit("/", 1)[1]
        jsonschema.validate(data, SCHEMAS[kind])              # additionalProperties: false everywhere
        words = {w for key in walk_keys(data, []) for w in key.lower().split("_")} | \
            {k.lower() for k in walk_keys(data, [])}
        assert not words & FORBIDDEN_WORDS, words & FORBIDDEN_WORDS
        kinds.add(kind)
    assert {"summary", "status", "reply"} <= kinds


def test_nothing_is_written_but_state_and_audit(tmp_path):
    home, work, tmp = tmp_path / "home", tmp_path / "cwd", tmp_path / "tmp"
    for d in (home, work, tmp):
        d.mkdir(exist_ok=True)
    state = home / ".local" / "state" / "appliance"
    env = appliance_env(tmp_path) | {"HOME": str(home), "TMPDIR": str(tmp), "APPLIANCE_STATE__DIR": str(state)}
    proc = subprocess.run(appliance_cmd("run", "--duration", "6"), cwd=work, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()
                     and p.name != "none.toml")
    state_files = [p for p in written if p.parts[:4] == ("home", ".local", "state", "appliance")]
    caches = [p for p in written if p.parts[:3] == ("home", ".cache", "appliance")]
    assert state_files == [Path(f"home/.local/state/appliance/{name}") for name in ("audit.log", "lock",
                                                                                   "outbox.sqlite3", "seq")]
    assert (state / "lock").read_text().strip().isdigit()      # the pid of the daemon that held it, nothing else
    # Library caches only (matplotlib's font list, pulled in by mediapipe), next to the engine cache.
    assert all(p.parts[3] in ("matplotlib", "trt-engines") and p.suffix in (".json", ".engine", ".cache")
               for p in caches), caches
    # Nothing else at all: no ONNX Runtime telemetry device id / event store, no temp files, nothing in cwd.
    assert sorted(set(written) - set(state_files) - set(caches)) == []
    assert (state / "audit.log").stat().st_size < 20_000
    # The outbox holds aggregated events only until the broker has them: a few pages, no media.
    assert (state / "outbox.sqlite3").stat().st_size < 100_000
    assert b"\x00" not in (state / "audit.log").read_bytes()


# ------------------------------------------------------------------------------------ opt-out
def test_pause_file_stops_all_inference(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "paused").touch()
    pipeline, report, published = run_in_process(tmp_path, DEMO, DEMO.with_suffix(".flac"), 2.0)
    ticks = list(pipeline.scheduler.recent)
    assert len(ticks) >= 19 and all(not (set(t.stages) | set(t.beside)) & {"detect", "crop", "expression", "vad",
                                                                           "features", "tone"} for t in ticks)
    assert report.summaries == 0 and pipeline.paused_by == {"file"} and report.alerts == 0
    entries = [json.loads(line) for line in (tmp_path / "state" / "audit.log").read_text().splitlines()]
    assert [e["event"] for e in entries] == ["start", "stop"] and published == []


def test_remote_and_signal_pause_and_resume(tmp_path, mosquitto, collect):
    status = collect(mosquitto.port, "emotion/kiosk-pause/status")
    replies = collect(mosquitto.port, "emotion/kiosk-pause/reply")
    env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-pause")
    proc = subprocess.Popen(appliance_cmd("run", "--broker", mosquitto.url), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert status.wait_for(lambda c: c.json("/status") and c.json("/status")[-1]["state"] == "online", 60)
        status.client.publish("emotion/kiosk-pause/cmd/pause", b'{"request_id": "r1", "reason": "store asked"}', 1)
        assert status.wait_for(lambda c: c.json("/status")[-1]["state"] == "paused", 10)
        assert status.json("/status")[-1]["paused_by"] == ["remote"]
        os.kill(proc.pid, signal.SIGUSR1)                   # the local opt-out on top
        assert status.wait_for(lambda c: c.json("/status")[-1].get("paused_by") == ["remote", "signal"], 10)
        status.client.publish("emotion/kiosk-pause/cmd/resume", b'{"request_id": "r2"}', 1)
        assert replies.wait_for(lambda c: any(r["request_id"] == "r2" for r in c.json("/reply")), 10)
        r2 = next(r for r in replies.json("/reply") if r["request_id"] == "r2")
        assert r2["ok"] is False and "still paused locally (signal)" in r2["error"]   # remote cannot override
        os.kill(proc.pid, signal.SIGUSR2)
        assert status.wait_for(lambda c: c.json("/status")[-1]["state"] == "online", 10)
        r1 = next(r for r in replies.json("/reply") if r["request_id"] == "r1")
        assert r1["ok"] is True and r1["command"] == "pause"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    entries = [json.loads(line) for line in (tmp_path / "state" / "audit.log").read_text().splitlines()]
    assert [(e["event"], e.get("by")) for e in entries] == [
        ("start", None), ("pause", ["remote"]), ("pause", ["remote", "signal"]), ("pause", ["signal"]),
        ("resume", None), ("stop", None)]


@pytest.mark.parametrize("topic, payload, error", [
    ("cmd/pause", b"\xff\xfe", "not UTF-8 JSON"),
    ("cmd/pause", b"[1, 2]", "must be a JSON object"),
    ("cmd/pause", b'{"request_id": 5}', "request_id must be a string"),
    ("cmd/pause", b'{"evil": true}', "unknown keys"),
    ("cmd/pause", b"x" * 5000, "over the 1024-byte limit"),
    ("cmd/reboot", b"", "unknown command"),
    ("cmd/pause/now", b"", "unknown command"),
])
def test_malformed_commands_are_rejected(topic, payload, error):
    from appliance.publish.commands import CommandError, parse_command

    with pytest.raises(CommandError, match=error):
        parse_command(f"emotion/k1/{topic}", payload, "emotion/k1")


def test_command_parser_never_raises_anything_else():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from appliance.publish.commands import Command, CommandError, parse_command

    names = st.sampled_from(["pause", "resume", "status", "", "pause/x", "#", "reboot", "\x00"]) | st.text(max_size=20)
    payloads = st.binary(max_size=2000) | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["request_id", "reason", "x"]), st.none() | st.integers() | st.text(max_size=300)))

    @settings(max_examples=400, deadline=None)
    @given(names, payloads)
    def check(name, payload):
        try:
            assert isinstance(parse_command(f"emotion/k1/cmd/{name}", payload, "emotion/k1"), Command)
        except CommandError:
            pass

    check()


# ------------------------------------------------------------------------------------ notice and audit log
def test_notice_names_purpose_data_and_contact(tmp_path):
    env = appliance_env(tmp_path, APPLIANCE_PRIVACY__CONTROLLER="Shop GmbH", APPLIANCE_PRIVACY__CONTACT="dpo@shop.example",
                        APPLIANCE_PRIVACY__EXCLUSION_ZONES=json.dumps(FACE_ZONE))
    proc = subprocess.run(appliance_cmd("notice"), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for words in ("EMOTION ANALYSIS IN USE", "customer-experience", "Shop GmbH", "dpo@shop.example",
                  "nothing is recorded", "10-second", "Staff areas (1 zone) are excluded", "pause"):
        assert words in proc.stdout, words


def test_audit_log_chain_records_config_changes_and_detects_tampering(tmp_path):
    path = tmp_path / "audit.log"
    first = load_config(None, env={})
    second = load_config(None, env={"APPLIANCE_DEVICE__ID": "kiosk-2"})
    AuditLog(path).start(first, "0.1.0", [])
    log = AuditLog(path)
    log.start(second, "0.1.0", [])
    log.append("pause", by=["file"])
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["start", "config_changed", "start", "pause"]
    assert verify(path) == (True, 4, "intact")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")        # someone deletes the config change
    intact, n, what = verify(path)
    assert not intact and n == 2 and "removed, inserted or edited" in what
