"""`appliance watch`: the fleet table from what units publish, robust to junk on the same topics."""

from __future__ import annotations

import json
import subprocess
import threading

import paho.mqtt.client as mqtt

from appliance.publish.payloads import STATS_SCHEMA, status_payload
from appliance.tools.watch import FleetView
from conftest import appliance_cmd, appliance_env


def summary(device: str, anger: float, faces: int, historical: bool = False) -> dict:
    return {"schema": "emotion.summary/1", "event_id": "0" * 32, "seq": 3, "device_id": device, "profile": "kiosk",
            "window_start": "2026-11-22T10:00:00.000Z", "window_end": "2026-11-22T10:00:10.000Z",
            "faces": {"observations": 90, "distinct_faces": faces, "observed_seconds": 9.0, "distribution": {}},
            "voice": None, "anger_index": anger, "suppressed": False, "suppressed_reason": None,
            "historical": historical}


def stats(device: str) -> dict:
    return {"schema": STATS_SCHEMA, "device_id": device, "loop": {"fps": 9.9, "deadline_misses_total": 2},
            "outbox": {"depth": 17}, "system": {"cpu_percent": 41.0, "temperature_c": 52.5}, "historical": False}


def test_fleet_view_keeps_the_latest_per_unit_and_skips_junk():
    view = FleetView("emotion", clock=lambda: 100.0)
    view.update("emotion/k1/status", json.dumps(status_payload("paused", "k1", "0.2.0", paused_by=["remote"])).encode())
    view.update("emotion/k1/summary", json.dumps(summary("k1", 0.61, 2, historical=True)).encode())
    view.update("emotion/k1/stats", json.dumps(stats("k1")).encode())
    view.update("emotion/k1/alert", json.dumps({"device_id": "k1", "at": "2026-11-22T10:00:05.000Z"}).encode())
    view.update("emotion/k2/summary", b"\xff not json")                         # junk
    view.update("emotion/k2/summary", json.dumps(summary("k1", 0.9, 1)).encode())  # claims to be another unit
    view.update("emotion/k2/stats", json.dumps({"device_id": "k2"}).encode())      # missing fields
    view.update("emotion/a/b/summary", b"{}")                                     # wrong depth
    assert set(view.units) == {"k1"} and view.skipped == 4
    k1 = view.units["k1"]
    assert (k1.state, k1.anger_index, k1.distinct_faces, k1.alerts, k1.outbox, k1.misses, k1.historical) == \
        ("paused", 0.61, 2, 1, 17, 2, 1)
    table = view.render()
    assert "paused (remote)" in table and "0.61" in table and "52C" in table and "4 messages skipped" in table
    view.update("emotion/k1/status", json.dumps(status_payload(
        "online", "k1", "0.2.0", delivery_stalled="20 events unacknowledged", clock="unsynchronized")).encode())
    assert "online !delivery_stalled" in view.render()


def test_watch_command_shows_every_unit_on_the_broker(tmp_path, mosquitto):
    unit = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    unit.connect("127.0.0.1", mosquitto.port)
    unit.loop_start()
    # Retained status of a unit that is already gone: watch must still list it.
    unit.publish("emotion/kiosk-old/status", json.dumps(status_payload("offline", "kiosk-old", "0.1.0",
                                                                       reason="connection lost")), 1, True).wait_for_publish()
    stop = threading.Event()

    def live_unit():
        while not stop.is_set():
            unit.publish("emotion/kiosk-live/status", json.dumps(status_payload("online", "kiosk-live", "0.2.0")), 1,
                         True)
            unit.publish("emotion/kiosk-live/summary", json.dumps(summary("kiosk-live", 0.42, 3)), 1)
            unit.publish("emotion/kiosk-live/summary", b"garbage", 1)
            stop.wait(0.5)

    thread = threading.Thread(target=live_unit)
    thread.start()
    try:
        proc = subprocess.run(appliance_cmd("watch", "--broker", mosquitto.url, "--seconds", "2"),
                              capture_output=True, text=True, timeout=60, env=appliance_env(tmp_path))
        as_json = subprocess.run(appliance_cmd("watch", "--broker", mosquitto.url, "--seconds", "1.5", "--json"),
                                 capture_output=True, text=True, timeout=60, env=appliance_env(tmp_path))
    finally:
        stop.set()
        thread.join()
        unit.loop_stop()
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("kiosk-")}
    assert "offline" in lines["kiosk-old"] and "online" in lines["kiosk-live"] and "0.42" in lines["kiosk-live"]
    assert "2 units, 1 online" in proc.stdout and "skipped" in proc.stdout
    units = {u["device_id"]: u for u in json.loads(as_json.stdout)}
    assert units["kiosk-live"]["distinct_faces"] == 3 and units["kiosk-old"]["state"] == "offline"


def test_watch_names_an_unreachable_broker(tmp_path):
    proc = subprocess.run(appliance_cmd("watch", "--broker", "mqtt://127.0.0.1:9", "--seconds", "1"),
                          capture_output=True, text=True, timeout=60, env=appliance_env(tmp_path))
    assert proc.returncode == 2 and "nothing accepts connections on 127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr
