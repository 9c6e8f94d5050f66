"""Shared fixtures: a real mosquitto on a free loopback port, an MQTT collector, the appliance as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Resolved: tests hand the path to symlinks and subprocesses that run from other directories.
DATA = Path(os.environ.get("APPLIANCE_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()
DEMO = ROOT / "appliance" / "demo" / "short_hamilton_clip.mp4"
SCHEMAS = ROOT / "appliance" / "schemas"
SHARED_MEASURE_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / f"appliance-tests-{os.getuid()}" / "cpu-precision.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


class Mosquitto:
    """Debian's mosquitto 2.x on loopback, with its own writable pid/log paths."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "", persistence: bool = False):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).exists():
            pytest.fail("mosquitto is not installed: run `make test` (it installs it) or apt-get install mosquitto")
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        # Logs go to stderr (captured into a file by us): run as root, mosquitto drops to its own user and could
        # not write into pytest's private tmp dir.
        # As root, stay root: mosquitto would otherwise drop to its own user, which cannot read pytest's private
        # tmp dir (certificates, password file, persistence).
        user = "user root\n" if os.geteuid() == 0 else ""
        store = (f"persistence true\npersistence_location {workdir}/\npersistence_file mosquitto-{self.port}.db\n"
                 if persistence else "persistence false\n")
        listener = "" if "listener " in extra else f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        self.conf.write_text(f"{user}{listener}{store}{extra}"
                             f"log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Mosquitto":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}", cwd=d)


def make_cert(d: Path, ca: str, name: str, san: str) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-copy_extensions", "copy", "-out", f"{name}.crt", cwd=d)


@pytest.fixture
def tls_broker(tmp_path):
    """mosquitto asking for a client certificate (mutual TLS), with a fresh PKI in ``pki``: ``ca`` signs the broker
    and the clients ``unit-1`` and ``fleet``; ``other-ca`` signs nothing of the broker's. Yields (broker, pki)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_ca(pki, "other-ca")
    make_cert(pki, "ca", "broker", "IP:127.0.0.1,DNS:localhost")
    for client in ("unit-1", "fleet"):
        make_cert(pki, "ca", client, f"DNS:{client}")
    port = free_port()
    broker = Mosquitto(tmp_path, port, extra=(
        f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {pki}/ca.crt\ncertfile {pki}/broker.crt\n"
        f"keyfile {pki}/broker.key\nrequire_certificate true\nuse_identity_as_username true\n")).start()
    yield broker, pki
    broker.stop()


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.stop()


class Collector:
    """Subscribes to a filter and keeps every message (topic, payload, retain flag, arrival time)."""

    def __init__(self, port: int, topic: str = "#", client_id: str = "", clean: bool = True,
                 protocol=mqtt.MQTTv311, username: str | None = None, password: str | None = None):
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.properties: list = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        v5 = protocol == mqtt.MQTTv5
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  clean_session=None if v5 else clean)
        if username:
            self.client.username_pw_set(username, password)
        # A persistent session (clean=False) keeps QoS 1 messages for us while we are away, even across a
        # broker restart when the broker persists; reconnect quickly so a test does not wait on backoff.
        self.client.reconnect_delay_set(1, 2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", port, clean_start=clean if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("collector could not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain), time.monotonic()))
            self.properties.append(msg.properties)

    def json(self, suffix: str) -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p, _, _ in self.messages if t.endswith(suffix)]

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collect():
    made: list[Collector] = []

    def make(port: int, topic: str = "#", **kwargs) -> Collector:
        c = Collector(port, topic, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def appliance_env(tmp_path: Path, **extra: str) -> dict:
    """An isolated environment: its own HOME and state dir, quick windows, no system config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(HOME=str(tmp_path / "home"), APPLIANCE_STATE__DIR=str(tmp_path / "state"),
               APPLIANCE_CONFIG=str(tmp_path / "none.toml"), PYTHONUNBUFFERED="1",
               # What precision=auto measured, shared by every daemon of the run: measured once, not per test.
               APPLIANCE_RUNTIME__MEASURE_CACHE=str(SHARED_MEASURE_CACHE))
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "none.toml").write_text("")
    env.update(extra)
    return env


def appliance_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance", *args]


@pytest.fixture
def data_dir() -> Path:
    if not (DATA / "faces" / "fer2013" / "public_test").is_dir():
        pytest.skip(f"shared dataset not found at {DATA} (set APPLIANCE_TEST_DATA); dataset checks need it")
    return DATA


def load_schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def run_in_process(tmp_path: Path, video: Path | None = DEMO, audio: Path | None = None,
                   seconds: float | None = None, **env: str):
    """The daemon built in-process, as ``appliance run`` builds it (assemble, stages, control, telemetry), on
    recorded sources and a simulated clock: it runs as fast as it computes, every tick seeing what it would live.
    Events still go through the outbox to a real broker (``APPLIANCE_MQTT__BROKER``) or an embedded one. Returns
    (pipeline, run report, summaries as published)."""
    from appliance.config import load_config
    from appliance.daemon.pipeline import Pipeline
    from appliance.sources.replay import Replay

    cfg = load_config(None, env={"APPLIANCE_STATE__DIR": str(tmp_path / "state"), "APPLIANCE_MQTT__EMBEDDED_PORT": "0",
                                 **env})
    summaries: list[dict] = []
    pipeline = Pipeline(cfg, on_summary=summaries.append, replay=Replay.of(video, audio))
    report = pipeline.run(seconds)
    return pipeline, report, summaries
