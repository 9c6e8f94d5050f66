"""Home Assistant MQTT discovery against a real Home Assistant Core (`make test-ha`, not the default run: HA needs
Python >= 3.13 and its own venv of about 600 MB). HA is configured through its own HTTP API only: onboarding makes
the owner and a token, the MQTT integration is set up by its config flow against a throwaway mosquitto, then a real
daemon on the demo recording announces itself and every check reads HA's REST API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import Collector, appliance_cmd, appliance_env, free_port, wait_port

pytestmark = pytest.mark.ha

DEVICE = "kiosk-ha"
# What discovery announces (appliance/publish/discovery.py), as HA names the entities: <domain>.<device name>_<name>.
PREFIX = "emotion_appliance_kiosk_ha"
ENTITIES = {"sensor": ["anger_index", "distinct_faces", "speech", "state", "loop_rate", "deadline_misses",
                       "outbox_depth", "temperature"],
            "binary_sensor": ["anger_alert"], "button": ["pause", "resume"]}


class HomeAssistant:
    def __init__(self, tmp_path: Path):
        hass = os.environ.get("HA_HASS", "")
        if not hass or not Path(hass).is_file():
            pytest.fail("HA_HASS must name Home Assistant's hass: run `make test-ha` (it builds .ha/venv)")
        self.hass = hass
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "ha-config"
        self.config.mkdir()
        (self.config / "configuration.yaml").write_text(
            "homeassistant:\n  name: appliance test\n  latitude: 0\n  longitude: 0\n  elevation: 0\n"
            "  unit_system: metric\n  time_zone: UTC\n  currency: EUR\n  country: DE\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "api:\nconfig:\nonboarding:\nlogger:\n  default: warning\n")
        self.log = tmp_path / "home-assistant.log"
        self.proc: subprocess.Popen | None = None
        self.token = ""

    def start(self) -> "HomeAssistant":
        self.proc = subprocess.Popen([self.hass, "-c", str(self.config)], stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=180)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def call(self, method: str, path: str, body: dict | None = None, form: bool = False):
        headers, data = {}, None
        if body is not None:
            if form:
                data, headers["Content-Type"] = urllib.parse.urlencode(body).encode(), "application/x-www-form-urlencoded"
            else:
                data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: HTTP {e.code} {e.read()[:500]!r}\n{self.log.read_text()[-3000:]}")

    def onboard(self) -> None:
        """The owner account, as the first browser visit would make it, and a token for it."""
        client = self.base + "/"
        code = self.call("POST", "/api/onboarding/users", {"client_id": client, "name": "Test", "username": "test",
                                                           "password": "appliance-test-1", "language": "en"})
        token = self.call("POST", "/auth/token", {"grant_type": "authorization_code", "code": code["auth_code"],
                                                  "client_id": client}, form=True)
        self.token = token["access_token"]

    def add_mqtt(self, port: int) -> dict:
        """The MQTT integration through its config flow (what Settings > Devices > Add integration does)."""
        flow = self.call("POST", "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False})
        assert flow["type"] == "form" and flow["step_id"] == "broker", flow
        done = self.call("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                         {"broker": "127.0.0.1", "port": port})
        assert done["type"] == "create_entry", done
        return done

    def states(self) -> dict[str, dict]:
        return {s["entity_id"]: s for s in self.call("GET", "/api/states")}


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s: {what}")
        time.sleep(0.5)


def entity(kind: str, name: str) -> str:
    return f"{kind}.{PREFIX}_{name}"


def test_home_assistant_discovers_the_unit_and_follows_it(tmp_path, mosquitto):
    ha = HomeAssistant(tmp_path).start()
    unit = None
    seen = Collector(mosquitto.port, f"emotion/{DEVICE}/#")
    try:
        ha.onboard()
        ha.add_mqtt(mosquitto.port)
        env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID=DEVICE, APPLIANCE_AGGREGATE__WINDOW_S="3",
                            APPLIANCE_MQTT__STATS_INTERVAL_S="5", APPLIANCE_MQTT__HOME_ASSISTANT__ENABLED="true")
        unit = subprocess.Popen(appliance_cmd("run", "--broker", mosquitto.url, "--loop"), env=env,
                                stdout=(tmp_path / "daemon.log").open("w"), stderr=subprocess.STDOUT)

        expected = [entity(kind, name) for kind, names in ENTITIES.items() for name in names]
        wait(lambda: all(e in ha.states() for e in expected), 90, f"entities {expected} in Home Assistant")
        wait(lambda: ha.states()[entity("sensor", "state")]["state"] == "online", 30, "state 'online'")

        def agrees():
            """HA's anger index and faces equal the unit's last summary (read at the same moment, retried: a
            summary may land between the two reads)."""
            summaries = seen.json("/summary")
            s = ha.states()
            if not summaries:
                return None
            last = summaries[-1]
            faces = last["faces"]["distinct_faces"] if last["faces"] else 0
            anger = last["anger_index"]
            got = (s[entity("sensor", "anger_index")]["state"], s[entity("sensor", "distinct_faces")]["state"])
            want = ("unknown" if anger is None else str(anger), str(faces))
            return (got, want) if got == want else None

        got, want = wait(agrees, 60, "HA's anger index and distinct faces equal the last summary's")
        assert want[0] != "unknown", "the demo's windows have an anger index"
        wait(lambda: ha.states()[entity("sensor", "deadline_misses")]["state"].isdigit(), 30, "stats in HA")

        # The pause button in HA sends the documented command; the unit pauses and HA's state sensor says so.
        ha.call("POST", "/api/services/button/press", {"entity_id": entity("button", "pause")})
        wait(lambda: ha.states()[entity("sensor", "state")]["state"] == "paused", 30, "state 'paused' after pause")

        # A suppressed window (nobody in view, no speech) has anger_index null and faces null: HA must show
        # "unknown" and 0 faces, not a template error or a stale number.
        suppressed = {**seen.json("/summary")[-1], "seq": seen.json("/summary")[-1]["seq"] + 1000, "faces": None,
                      "voice": None, "anger_index": None, "suppressed": True, "suppressed_reason": "no_faces"}
        seen.client.publish(f"emotion/{DEVICE}/summary", json.dumps(suppressed), 1).wait_for_publish()
        wait(lambda: (ha.states()[entity("sensor", "anger_index")]["state"],
                      ha.states()[entity("sensor", "distinct_faces")]["state"]) == ("unknown", "0"), 30,
             "a suppressed window reads unknown anger and 0 faces")

        unit.send_signal(signal.SIGTERM)
        unit.wait(30)
        wait(lambda: ha.states()[entity("sensor", "state")]["state"] == "offline", 30, "state 'offline' after stop")
        after = ha.states()
        for e in expected:
            if e != entity("sensor", "state"):
                assert after[e]["state"] == "unavailable", (e, after[e])
        problems = [line for line in ha.log.read_text().splitlines()
                    if ("ERROR" in line or "WARNING" in line) and ("mqtt" in line or DEVICE in line)]
        assert not problems, "\n".join(problems)
    finally:
        seen.close()
        if unit and unit.poll() is None:
            unit.terminate()
            unit.wait(30)
        ha.stop()
