"""The fleet dashboard (deploy/dashboard, `make dashboard`) in a real browser: Debian's Chromium driven by
Playwright, Node-RED 5 with FlowFuse Dashboard 2.0 as `make dashboard` runs it, mosquitto, and two real daemons
on the demo recording, one paused by its pause file. Run by `make test-dashboard` (CI too), not by `make test`:
it needs npm packages and a browser that the default run does not install."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import ROOT, appliance_cmd, appliance_env, free_port, wait_port

pytestmark = pytest.mark.dashboard

DASHBOARD = ROOT / "deploy" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
# Chromium as root in a container, and nothing of it reaching for Google's hosts (this machine has no internet).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def require_installed() -> None:
    if not (DASHBOARD / "node_modules" / ".installed").is_file() or not CHROMIUM.is_file():
        pytest.fail("dashboard or browser not installed: run `make test-dashboard` (npm ci, apt chromium, playwright)")


class Dashboard:
    def __init__(self, tmp_path: Path, broker: str, **env: str):
        self.port = free_port()
        self.log = tmp_path / "dashboard.log"
        self.env = {**os.environ, "BROKER": broker, "DASHBOARD_PORT": str(self.port),
                    "DASHBOARD_STATE": str(tmp_path / "dashboard-state"), **env}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dashboard"

    def start(self) -> "Dashboard":
        self.proc = subprocess.Popen([str(DASHBOARD / "run")], env=self.env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=60)
        deadline = time.monotonic() + 30
        while "Connected to broker" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"the dashboard did not connect to the broker:\n{self.log.read_text()}"
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


def start_unit(tmp_path: Path, device: str, broker: str, paused: bool) -> subprocess.Popen:
    home = tmp_path / device
    home.mkdir()
    env = appliance_env(home, APPLIANCE_DEVICE__ID=device, APPLIANCE_AGGREGATE__WINDOW_S="2",
                        APPLIANCE_MQTT__STATS_INTERVAL_S="5")
    if paused:
        (home / "state").mkdir()
        (home / "state" / "paused").touch()       # the operator's opt-out: a local pause file
    return subprocess.Popen(appliance_cmd("run", "--broker", broker, "--loop"), env=env,
                            stdout=(home / "daemon.log").open("w"), stderr=subprocess.STDOUT)


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        yield page
        browser.close()


def row(page, unit: str):
    return page.locator(f'tr[data-unit="{unit}"]')


def test_dashboard_shows_both_units_and_pauses_the_running_one(tmp_path, mosquitto, browser_page):
    require_installed()
    from playwright.sync_api import expect

    units = {"kiosk-a": start_unit(tmp_path, "kiosk-a", mosquitto.url, paused=True),
             "kiosk-b": start_unit(tmp_path, "kiosk-b", mosquitto.url, paused=False)}
    commands: list[tuple[str, dict]] = []
    spy = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    spy.on_message = lambda c, u, m: commands.append((m.topic, json.loads(m.payload)))
    spy.connect("127.0.0.1", mosquitto.port)
    spy.subscribe("emotion/+/cmd/#", 1)
    spy.loop_start()
    dashboard = Dashboard(tmp_path, mosquitto.url).start()
    page = browser_page
    try:
        page.goto(dashboard.url)
        a, b = row(page, "kiosk-a"), row(page, "kiosk-b")
        expect(a.locator('[data-test="state"]')).to_contain_text("paused", timeout=60_000)
        expect(a.locator('[data-test="state"]')).to_contain_text("by file")
        expect(b.locator('[data-test="state"]')).to_contain_text("online", timeout=60_000)
        expect(b.locator('[data-test="anger"]')).to_have_text(re.compile(r"^\s*[01]\.\d\d"), timeout=60_000)
        expect(page.locator('[data-test="counts"]')).to_contain_text("2 units: 1 online, 1 paused, 0 offline")
        expect(a.locator('[data-test="anger"]')).to_have_text(re.compile(r"^\s*-\s*$"))   # a paused unit says nothing
        expect(b.locator('[data-test="misses"]')).to_have_text(re.compile(r"^\s*\d+\s*$"), timeout=30_000)  # stats
        page.screenshot(path=str(tmp_path / "before.png"))

        b.locator('[data-test="pause"]').click()
        expect(b.locator('[data-test="reply"]')).to_contain_text("pause: ok, now paused", timeout=30_000)
        expect(b.locator('[data-test="state"]')).to_contain_text("by remote", timeout=10_000)
        sent = [p for t, p in commands if t == "emotion/kiosk-b/cmd/pause"]
        assert len(sent) == 1 and sent[0]["request_id"].startswith("dash-"), commands
        shot = os.environ.get("DASHBOARD_SCREENSHOT")        # the README's picture is made by this test
        page.screenshot(path=shot or str(tmp_path / "after.png"))

        # A local opt-out cannot be lifted from the dashboard: the unit refuses, and the refusal is shown.
        a.locator('[data-test="resume"]').click()
        expect(a.locator('[data-test="reply"]')).to_contain_text("resume: error", timeout=30_000)
        expect(a.locator('[data-test="state"]')).to_contain_text("paused")

        units["kiosk-b"].send_signal(signal.SIGTERM)
        units["kiosk-b"].wait(30)
        expect(b.locator('[data-test="state"]')).to_contain_text("offline", timeout=30_000)
        expect(b.locator('[data-test="state"]')).to_contain_text("shutdown")
    finally:
        spy.loop_stop()
        spy.disconnect()
        dashboard.stop()
        for proc in units.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


def test_dashboard_drops_payloads_that_break_their_schema(tmp_path, mosquitto, browser_page):
    require_installed()
    from playwright.sync_api import expect

    from appliance.publish.payloads import status_payload

    dashboard = Dashboard(tmp_path, mosquitto.url).start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        ok = json.dumps(status_payload("online", "kiosk-ok", "0.1.0"))
        pub.publish("emotion/kiosk-ok/status", ok, 1, retain=True).wait_for_publish()
        pub.publish("emotion/kiosk-x/summary", b"\xff not json", 1).wait_for_publish()
        pub.publish("emotion/kiosk-y/status", ok, 1).wait_for_publish()        # another unit's status
        pub.publish("emotion/kiosk-z/stats", json.dumps({"device_id": "kiosk-z"}), 1).wait_for_publish()
        browser_page.goto(dashboard.url)
        expect(browser_page.locator('[data-test="counts"]')).to_contain_text("3 invalid payloads dropped",
                                                                             timeout=30_000)
        expect(row(browser_page, "kiosk-ok").locator('[data-test="state"]')).to_contain_text("online")
        for junk in ("kiosk-x", "kiosk-y", "kiosk-z"):
            assert row(browser_page, junk).count() == 0
    finally:
        pub.loop_stop()
        pub.disconnect()
        dashboard.stop()


def test_dashboard_settings_errors_are_one_line(tmp_path):
    require_installed()
    for env, expected in (({"BROKER": "http://x"}, "BROKER=http://x: use mqtt://host:port or mqtts://host:port"),
                          ({"MQTT_PASSWORD_FILE": str(tmp_path / "none")}, "no such file"),
                          ({"MQTT_CERT_FILE": "/etc/hostname"}, "MQTT_CERT_FILE and MQTT_KEY_FILE go together"),
                          ({"DASHBOARD_PORT": "99999"}, "DASHBOARD_PORT=99999")):
        proc = subprocess.run([str(DASHBOARD / "run")], env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines == [lines[0]] and lines[0].startswith("dashboard: ") and expected in lines[0], proc.stderr


def test_dashboard_reads_a_broker_over_mutual_tls(tmp_path, tls_broker, browser_page):
    """BROKER=mqtts://..., MQTT_CA_FILE and a client certificate from files, as a real fleet broker asks
    (deploy/broker/): the retained status of a unit reaches the page; the broker refuses a client without one."""
    require_installed()
    from playwright.sync_api import expect

    from appliance.publish.payloads import status_payload

    broker, pki = tls_broker
    port = broker.port
    unit = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    unit.tls_set(ca_certs=str(pki / "ca.crt"), certfile=str(pki / "fleet.crt"), keyfile=str(pki / "fleet.key"))
    unit.connect("127.0.0.1", port)
    unit.loop_start()
    dashboard = Dashboard(tmp_path, f"mqtts://127.0.0.1:{port}", MQTT_CA_FILE=str(pki / "ca.crt"),
                          MQTT_CERT_FILE=str(pki / "fleet.crt"), MQTT_KEY_FILE=str(pki / "fleet.key"))
    try:
        unit.publish("emotion/kiosk-tls/status", json.dumps(status_payload("online", "kiosk-tls", "0.1.0")), 1,
                     retain=True).wait_for_publish()
        dashboard.start()
        browser_page.goto(dashboard.url)
        expect(row(browser_page, "kiosk-tls").locator('[data-test="state"]')).to_contain_text("online",
                                                                                          timeout=30_000)
    finally:
        unit.loop_stop()
        unit.disconnect()
        dashboard.stop()
    # Without the client certificate the broker closes the handshake: the dashboard never says it connected.
    (tmp_path / "bare").mkdir()
    bare = Dashboard(tmp_path / "bare", f"mqtts://127.0.0.1:{port}", MQTT_CA_FILE=str(pki / "ca.crt"))
    bare.proc = subprocess.Popen([str(DASHBOARD / "run")], env=bare.env, stdout=bare.log.open("w"),
                                 stderr=subprocess.STDOUT)
    try:
        wait_port(bare.port, timeout=60)
        deadline = time.monotonic() + 20
        while "Connection failed to broker" not in bare.log.read_text():
            assert time.monotonic() < deadline, bare.log.read_text()
            time.sleep(0.2)
        assert "Connected to broker" not in bare.log.read_text()
    finally:
        bare.stop()


def test_dashboard_page_and_editor_are_closed_without_their_passwords(tmp_path, mosquitto):
    """The editor is off by default; with EDITOR_PASSWORD_FILE it asks for the admin login. DASHBOARD_USER and
    DASHBOARD_PASSWORD_FILE put basic auth in front of the page."""
    require_installed()
    import base64
    import urllib.error
    import urllib.request

    def status(url: str, auth: str | None = None) -> int:
        request = urllib.request.Request(url)
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    plain = Dashboard(tmp_path, mosquitto.url).start()
    try:
        assert status(plain.url + "/") == 200
        assert status(f"http://127.0.0.1:{plain.port}/editor/flows") == 404       # no editor, no admin API
        assert status(f"http://127.0.0.1:{plain.port}/flows") == 404
    finally:
        plain.stop()
    (tmp_path / "pw").write_text("s3cret-pass\n")
    (tmp_path / "locked").mkdir()
    locked = Dashboard(tmp_path / "locked", mosquitto.url, DASHBOARD_USER="ops",
                       DASHBOARD_PASSWORD_FILE=str(tmp_path / "pw"), EDITOR_PASSWORD_FILE=str(tmp_path / "pw")).start()
    try:
        assert status(locked.url + "/") == 401
        assert status(locked.url + "/", "ops:wrong") == 401
        assert status(locked.url + "/", "ops:s3cret-pass") == 200
        assert status(f"http://127.0.0.1:{locked.port}/editor/flows") == 401      # the admin API wants a token
    finally:
        locked.stop()
