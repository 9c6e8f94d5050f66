"""End to end: the real daemon, the real demo video, the real models, a real mosquitto on loopback."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time

import jsonschema
import pytest

from conftest import DEMO, Mosquitto, appliance_cmd, appliance_env, free_port, load_schema, run_in_process

SUMMARY = load_schema("summary")
STATUS = load_schema("status")


def validate(payload: dict, schema: dict) -> None:
    jsonschema.validate(payload, schema, format_checker=jsonschema.FormatChecker())


def check_summaries(summaries: list[dict]) -> None:
    for s in summaries:
        validate(s, SUMMARY)
        if s["faces"] is not None:
            assert math.isclose(sum(s["faces"]["distribution"].values()), 1.0, abs_tol=2e-3), s
    seqs = [s["seq"] for s in summaries]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert len({s["event_id"] for s in summaries}) == len(summaries)


def test_demo_publishes_schema_valid_summaries_and_status(tmp_path, mosquitto, collect):
    watcher = collect(mosquitto.port)
    env = appliance_env(tmp_path, APPLIANCE_AGGREGATE__WINDOW_S="4", APPLIANCE_DEVICE__ID="kiosk-e2e")
    proc = subprocess.run(appliance_cmd("run", "--video", str(DEMO), "--broker", mosquitto.url, "--duration", "13"),
                          env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert watcher.wait_for(lambda c: any(s["state"] == "offline" for s in c.json("/status")), 10)

    summaries = watcher.json("emotion/kiosk-e2e/summary")
    assert len(summaries) >= 3, proc.stdout
    check_summaries(summaries)
    unsuppressed = [s for s in summaries if not s["suppressed"]]
    assert any(s["faces"] and s["faces"]["observations"] > 0 for s in unsuppressed)
    assert all(s["faces"] or s["voice"] for s in unsuppressed)
    # The daemon prints each summary it publishes.
    assert proc.stdout.count("summary seq=") == len(summaries)

    states = [s["state"] for s in watcher.json("emotion/kiosk-e2e/status")]
    for s in watcher.json("/status"):
        validate(s, STATUS)
    assert states[0] == "online" and states[-1] == "offline", states
    # Retained: a dashboard that subscribes after the run still learns the unit is offline (clean shutdown).
    late = collect(mosquitto.port, "emotion/+/status")
    assert late.wait_for(lambda c: c.messages, 5)
    topic, payload, retained, _ = late.messages[0]
    assert retained and json.loads(payload)["state"] == "offline" and json.loads(payload)["reason"] == "shutdown"


def test_status_online_is_retained_while_running_and_last_will_on_kill(tmp_path, mosquitto, collect):
    env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-kill")
    proc = subprocess.Popen(appliance_cmd("run", "--broker", mosquitto.url), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        first = collect(mosquitto.port, "emotion/kiosk-kill/status")
        assert first.wait_for(lambda c: any(s["state"] == "online" for s in c.json("/status")), 60)
        late = collect(mosquitto.port, "emotion/kiosk-kill/status")   # joins later: gets the retained copy
        assert late.wait_for(lambda c: c.messages, 5)
        assert late.messages[0][2] is True and json.loads(late.messages[0][1])["state"] == "online"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # No clean shutdown happened: the broker publishes the last will.
        assert first.wait_for(lambda c: c.json("/status")[-1]["state"] == "offline", 10)
        will = first.json("/status")[-1]
        validate(will, STATUS)
        assert will["reason"] == "connection lost"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_unreachable_broker_at_start_is_retried_and_nothing_is_lost(tmp_path, collect):
    port = free_port()
    # The watcher's persistent session is made on a persisting broker before the daemon starts, then the broker
    # goes away: when it comes back the session is there, so the daemon's first publishes cannot outrun the
    # watcher's subscription (it reconnects within a second and would, on a loaded machine).
    broker = Mosquitto(tmp_path, port, persistence=True).start()
    watcher = collect(port, "emotion/kiosk-late/#", client_id="late-watcher", clean=False)
    broker.stop()
    env = appliance_env(tmp_path, APPLIANCE_AGGREGATE__WINDOW_S="2", APPLIANCE_DEVICE__ID="kiosk-late",
                        APPLIANCE_MQTT__RECONNECT_MAX_S="1")
    proc = subprocess.Popen(appliance_cmd("run", "--broker", f"mqtt://127.0.0.1:{port}", "--duration", "14"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Let the daemon produce summaries with no broker at all.
        deadline = time.monotonic() + 60
        printed = []
        while time.monotonic() < deadline and len(printed) < 2:
            line = proc.stdout.readline()
            if line.startswith("summary seq="):
                printed.append(line)
        assert len(printed) >= 2 and proc.poll() is None, "daemon should keep running without a broker"
        broker.start()
        try:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-3000:]
            assert "cannot connect" in err and "nothing accepts connections" in err
            made = len(printed) + out.count("summary seq=")
            assert watcher.wait_for(lambda c: len(c.json("/summary")) >= made, 20), "summaries missing"
            summaries = watcher.json("/summary")
            check_summaries(summaries)
            # Those made before the broker existed waited in the outbox: they arrive flagged as replayed.
            assert all(s["historical"] for s in summaries[:len(printed)])
            # Every summary the daemon made, including those from before the broker existed, arrived.
            assert [s["seq"] for s in summaries] == list(range(1, summaries[-1]["seq"] + 1))
            assert len(summaries) == made
        finally:
            broker.stop()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("broker", ["mqtt://", "ftp://host:1", "mqtt://host:notaport"])
def test_bad_broker_url_is_a_config_error(tmp_path, broker):
    proc = subprocess.run(appliance_cmd("run", "--broker", broker, "--duration", "1"), env=appliance_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "mqtt.broker" in proc.stderr and "Traceback" not in proc.stderr


def write_video(path, frames, fps: float = 10.0) -> None:
    import cv2

    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert out.isOpened()
    for f in frames:
        out.write(f)
    out.release()


def demo_face_crowd():
    import cv2
    import numpy as np

    cap = cv2.VideoCapture(str(DEMO))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 30)
    ok, frame = cap.read()
    tile = cv2.resize(frame[68:374, 248:554], (128, 128), interpolation=cv2.INTER_AREA)
    return np.vstack([np.hstack([tile] * 5)] * 4)   # 20 real faces, 640x512


def test_video_without_faces_gives_suppressed_windows(tmp_path, mosquitto, collect):
    import numpy as np

    video = tmp_path / "empty-shop.mp4"
    write_video(video, [np.full((360, 640, 3), 90 + i % 20, np.uint8) for i in range(40)])
    watcher = collect(mosquitto.port, "emotion/+/summary")
    run_in_process(tmp_path, video, None, None, APPLIANCE_AGGREGATE__WINDOW_S="2", APPLIANCE_MQTT__BROKER=mosquitto.url)
    assert watcher.wait_for(lambda c: len(c.json("/summary")) >= 2, 5)
    summaries = watcher.json("/summary")
    check_summaries(summaries)
    assert all(s["suppressed"] and s["suppressed_reason"] == "no_faces" and s["faces"] is None for s in summaries)


def test_crowd_of_twenty_faces_is_capped_and_published(tmp_path, mosquitto, collect):
    video = tmp_path / "queue.mp4"
    write_video(video, [demo_face_crowd()] * 40)
    watcher = collect(mosquitto.port, "emotion/+/summary")
    env = appliance_env(tmp_path, APPLIANCE_AGGREGATE__WINDOW_S="2", APPLIANCE_DEVICE__PROFILE="store-camera",
                        APPLIANCE_FACES__TILES="3", APPLIANCE_FACES__MAX_FACES="8", APPLIANCE_FACES__MIN_FACE_PX="16",
                        APPLIANCE_AGGREGATE__MIN_OBSERVED_S="0.5")
    run_in_process(tmp_path, video, None, None, APPLIANCE_MQTT__BROKER=mosquitto.url,
                   **{k: v for k, v in env.items() if k.startswith("APPLIANCE_") and k != "APPLIANCE_CONFIG"
                      and k != "APPLIANCE_STATE__DIR"})
    assert watcher.wait_for(lambda c: c.json("/summary"), 5)
    summaries = watcher.json("/summary")
    check_summaries(summaries)
    full = [s for s in summaries if not s["suppressed"]]
    assert full, summaries
    for s in full:
        # 20 faces in view, 8 analysed per frame (best scores), a crowd well above the store-camera k = 3.
        assert 3 <= s["faces"]["distinct_faces"] <= 8 * 2 and s["profile"] == "store-camera"
        ticks = round(s["faces"]["observed_seconds"] * 10)
        assert s["faces"]["observations"] == 8 * ticks
