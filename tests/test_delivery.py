"""Delivery that loses nothing, against a real mosquitto on loopback: the outbox through outages, a SIGKILL and a
full disk budget; MQTT 5 properties and the 3.1.1 fallback; TLS with client certificates; the example ACL; stats,
Home Assistant discovery and fuzzed commands on a running daemon."""

from __future__ import annotations

import json
import logging
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest

from appliance.publish.config import MqttConfig, OutboxConfig, parse_broker_url
from appliance.publish.broker import EmbeddedBroker
from appliance.publish.commands import COMMANDS
from appliance.publish.discovery import ENTITIES
from appliance.publish.client import MqttSetupError, check_setup
from appliance.publish.mqtt import MqttPublisher
from appliance.publish.outbox import Outbox
from conftest import ROOT, Collector, Mosquitto, appliance_cmd, appliance_env, free_port, load_schema

ACL = ROOT / "deploy" / "broker" / "acl"
SCHEMAS = {name: load_schema(name) for name in ("summary", "alert", "stats", "status", "reply")}


def validate(payload: dict) -> None:
    kind = payload["schema"].split(".")[1].split("/")[0]
    jsonschema.validate(payload, SCHEMAS[kind], format_checker=jsonschema.FormatChecker())


def events(collector: Collector, device: str) -> list[dict]:
    """Outbox events (summary, alert, stats) as received, duplicates included."""
    return [p for kind in ("summary", "alert", "stats") for p in collector.json(f"{device}/{kind}")]


def outbox_rows(state_dir: Path) -> tuple[list[int], int]:
    with sqlite3.connect(state_dir / "outbox.sqlite3") as db:
        pending = [r[0] for r in db.execute("SELECT seq FROM events ORDER BY seq")]
        meta = dict(db.execute("SELECT key, value FROM meta"))
    return pending, meta


def add_events(box: Outbox, n: int) -> None:
    for _ in range(n):
        box.add("summary", lambda seq: {"schema": "emotion.summary/1", "event_id": uuid.uuid4().hex, "seq": seq,
                                        "historical": False})


def publisher(cfg: MqttConfig, url: str, box: Outbox, device: str = "unit-1") -> MqttPublisher:
    return MqttPublisher(cfg, parse_broker_url(url), device, "test", box, max_age_s=3600)


def wait(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------------------------- protocol
def test_mqtt5_events_carry_expiry_content_type_and_ids(tmp_path, mosquitto, collect):
    watcher = collect(mosquitto.port, "emotion/unit-1/#", protocol=mqtt.MQTTv5)
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    add_events(box, 3)
    pub = publisher(MqttConfig(), mosquitto.url, box).start()
    try:
        assert wait(lambda: len(watcher.json("/summary")) == 3 and box.depth == 0)
        assert pub.protocol == "5"
        props = [p for (t, *_), p in zip(watcher.messages, watcher.properties) if t.endswith("/summary")]
        for payload, prop in zip(watcher.json("/summary"), props):
            user = dict(prop.UserProperty)
            assert user["event_id"] == payload["event_id"] and user["seq"] == str(payload["seq"])
            assert prop.ContentType == "application/json" and 3500 < prop.MessageExpiryInterval <= 3600
            assert payload["historical"] is True    # created before the connection came up
    finally:
        pub.stop()


def test_auto_falls_back_to_mqtt311_when_the_broker_refuses_5(tmp_path):
    broker = EmbeddedBroker(0).start()     # amqtt: MQTT 3.1.1 only
    try:
        watcher = Collector(broker.port, "emotion/#")
        box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
        add_events(box, 2)
        pub = publisher(MqttConfig(protocol="auto"), broker.url, box).start()
        try:
            assert wait(lambda: len(watcher.json("/summary")) == 2 and box.depth == 0, 30)
            assert pub.protocol == "3.1.1"
        finally:
            pub.stop()
            watcher.close()
    finally:
        broker.stop()


def test_an_event_is_live_by_when_it_was_made_not_when_it_was_stored(tmp_path, mosquitto, collect):
    """Issue 25 case 3: while the disk is full, events wait in memory and are stored (and sent) once there is space,
    a minute or more after their window: they go out historical. One stored at once goes out live."""
    from appliance.publish.delivery import LIVE_S
    from appliance.publish.outbox_writer import OutboxWriter

    boot = [1000.0]                        # the boot clock, moved by hand
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig(), clock=lambda: boot[0])
    watcher = collect(mosquitto.port, "emotion/unit-1/summary")
    pub = publisher(MqttConfig(), mosquitto.url, box).start()
    writer = OutboxWriter(box, on_stored=pub.wake)
    writer.start()

    def make(seq):
        return {"schema": "emotion.summary/1", "event_id": uuid.uuid4().hex, "seq": seq, "historical": False}

    try:
        assert wait(lambda: pub.connected.is_set(), 20)
        boot[0] += 1
        writer.submit("summary", make)
        writer.hand_over()
        assert watcher.wait_for(lambda c: len(c.json("/summary")) == 1, 10)
        writer.submit("summary", make)      # made now; the disk keeps it waiting longer than LIVE_S
        boot[0] += LIVE_S + 5
        writer.hand_over()
        assert watcher.wait_for(lambda c: len(c.json("/summary")) == 2, 10)
    finally:
        writer.close()
        pub.stop()
    assert [e["historical"] for e in watcher.json("/summary")] == [False, True]


class FakeBroker:
    """A TCP server on loopback that talks to each connection on a thread of its own (``_talk``)."""

    def __init__(self, port: int):
        self.sock = socket.create_server(("127.0.0.1", port))
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)     # wakes the accept() blocked on it: close() alone may not
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


class Mqtt311Only(FakeBroker):
    """A broker that answers an MQTT 3.1.1 CONNECT and never answers an MQTT 5 one (as some do), and never
    acknowledges a publish: everything sent to it stays in flight."""

    def __init__(self, port: int):
        self.levels: list[int] = []
        super().__init__(port)

    def _talk(self, conn: socket.socket) -> None:
        try:
            head = conn.recv(256)
            at = head.find(b"MQTT")
            level = head[at + 4] if at >= 0 else 0
            self.levels.append(level)
            if level == 4:
                conn.sendall(b"\x20\x02\x00\x00")       # CONNACK, accepted
            while conn.recv(4096):
                pass
        except OSError:
            pass


def test_in_flight_events_are_resent_historical_and_a_silent_fallback_is_not_for_good(tmp_path):
    """Issue cases 5 and 6: a broker that ignored MQTT 5 and swallowed every publish is replaced by mosquitto on the
    same port. What was in flight arrives marked historical; the unit asks in MQTT 5 again and gets it."""
    port = free_port()
    fake = Mqtt311Only(port)
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    pub = publisher(MqttConfig(protocol="auto", reconnect_min_s=1, reconnect_max_s=1.5), f"mqtt://127.0.0.1:{port}",
                    box).start()
    broker = None
    try:
        assert wait(lambda: pub.connected.is_set(), 30) and pub.protocol == "3.1.1" and fake.levels[:2] == [5, 4]
        add_events(box, 5)
        pub.wake()
        assert wait(lambda: pub.in_flight == 5, 10), "the events should be in flight, unacknowledged"
        fake.close()
        broker = Mosquitto(tmp_path, port).start()
        watcher = Collector(port, "emotion/#", protocol=mqtt.MQTTv5)
        assert wait(lambda: len(watcher.json("/summary")) >= 5 and box.depth == 0, 30)
        assert pub.protocol == "5"
        received = watcher.json("/summary")
        assert {e["seq"] for e in received} == {1, 2, 3, 4, 5}
        assert all(e["historical"] is True for e in received), received     # made before this connection
        watcher.close()
    finally:
        pub.stop()
        fake.close()
        if broker:
            broker.stop()


def test_rejected_commands_are_answered_with_their_request_and_pause_floods_are_limited(tmp_path, mosquitto):
    """Issue case 9: an error reply names the request it answers (request_id, MQTT 5 correlation data), and 500
    pause/resume commands in a burst reach the daemon as a handful (each costs an fsync'd audit line)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    received = []      # the receiver: in the daemon, its control plane
    pub = MqttPublisher(MqttConfig(), parse_broker_url(mosquitto.url), "unit-1", "test", box, max_age_s=3600,
                        on_command=received.append).start()
    watcher = Collector(mosquitto.port, "emotion/unit-1/reply", protocol=mqtt.MQTTv5)
    try:
        assert wait(lambda: pub.connected.is_set(), 20)
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = b"corr-1"
        watcher.client.publish("emotion/unit-1/cmd/pause", b'{"request_id": "bad-1", "bogus": 1}', 1, properties=props)
        assert wait(lambda: watcher.json("/reply"), 10)
        reply = watcher.json("/reply")[0]
        assert reply["ok"] is False and reply["request_id"] == "bad-1" and reply["command"] == "pause"
        assert "unknown keys" in reply["error"] and watcher.properties[0].CorrelationData == b"corr-1"
        for i in range(500):
            name = "pause" if i % 2 == 0 else "resume"
            watcher.client.publish(f"emotion/unit-1/cmd/{name}", json.dumps({"request_id": f"r{i}"}).encode(), 1)
        assert wait(lambda: len(received) + sum(1 for r in watcher.json("/reply") if r["request_id"] != "bad-1")
                    >= 500, 30)
        limited = [r for r in watcher.json("/reply") if r["request_id"] != "bad-1"]
        assert len(received) == 10 and len(limited) == 490
        assert all(r["ok"] is False and r["error"].startswith("busy: at most 10") for r in limited)
        answered = {r["request_id"] for r in limited} | {c.request_id for c in received}
        assert answered == {f"r{i}" for i in range(500)}
    finally:
        watcher.close()
        pub.stop()


# --------------------------------------------------------------------------------------------- TLS
def test_mutual_tls_with_generated_certificates_delivers(tmp_path, tls_broker):
    broker, pki = tls_broker
    cfg = MqttConfig(broker=f"mqtts://127.0.0.1:{broker.port}",
                     tls={"ca_file": pki / "ca.crt", "cert_file": pki / "unit-1.crt", "key_file": pki / "unit-1.key"})
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    add_events(box, 3)
    pub = publisher(cfg, cfg.broker, box).start()
    try:
        # The counter follows the outbox delete on the MQTT thread: wait for both.
        assert wait(lambda: box.depth == 0 and pub.counters["acked"] == 3), "not acknowledged over mutual TLS"
        assert pub.connected.is_set()
    finally:
        pub.stop()


def test_a_wrong_ca_is_refused_with_a_clear_message(tmp_path, tls_broker, caplog):
    broker, pki = tls_broker
    cfg = MqttConfig(broker=f"mqtts://127.0.0.1:{broker.port}", tls={
        "ca_file": pki / "other-ca.crt", "cert_file": pki / "unit-1.crt", "key_file": pki / "unit-1.key"})
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    add_events(box, 1)
    with caplog.at_level(logging.WARNING, logger="appliance.publish.mqtt"):
        pub = publisher(cfg, cfg.broker, box).start()
        try:
            assert wait(lambda: "not trusted" in caplog.text, 10), caplog.text
        finally:
            pub.stop()
    assert f"mqtt.tls.ca_file = {pki / 'other-ca.crt'}" in caplog.text and "certificate verify failed" in caplog.text
    assert box.depth == 1    # kept for when the CA is fixed


def test_bad_tls_files_and_lone_passwords_are_start_up_errors(tmp_path, monkeypatch):
    (tmp_path / "junk.crt").write_text("not a certificate")
    cfg = MqttConfig(broker="mqtts://127.0.0.1:8883", tls={"ca_file": tmp_path / "junk.crt"})
    with pytest.raises(MqttSetupError, match="mqtt.tls.ca_file: .* is not a CA certificate bundle"):
        check_setup(cfg, parse_broker_url(cfg.broker))
    monkeypatch.setenv("APPLIANCE_MQTT_PASSWORD", "s3cret")
    with pytest.raises(MqttSetupError, match="mqtt.username"):
        check_setup(MqttConfig(), parse_broker_url("mqtt://127.0.0.1:1883"))
    cfg = MqttConfig(username="u", password_file=tmp_path / "missing")
    with pytest.raises(MqttSetupError, match="mqtt.password_file: cannot read"):
        check_setup(cfg, parse_broker_url("mqtt://127.0.0.1:1883"))


# --------------------------------------------------------------------------------------------- ACL
@pytest.fixture
def acl_broker(tmp_path):
    passwords = tmp_path / "passwd"
    users = {"kiosk-a": "pw-a", "kiosk-b": "pw-b", "fleet": "pw-fleet"}
    for i, (user, password) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) + [str(passwords), user, password],
                       check=True, capture_output=True)
    port = free_port()
    broker = Mosquitto(tmp_path, port, extra=(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                                              f"password_file {passwords}\nacl_file {ACL}\n")).start()
    yield broker, users
    broker.stop()


def test_example_acl_keeps_each_device_in_its_own_topics(acl_broker, collect):
    broker, users = acl_broker
    fleet = collect(broker.port, "emotion/#", protocol=mqtt.MQTTv5, username="fleet", password=users["fleet"])
    kiosk_b = collect(broker.port, "emotion/kiosk-b/cmd/#", username="kiosk-b", password=users["kiosk-b"])
    # kiosk-a is compromised: it tries to read kiosk-b's commands and to write into kiosk-b's topics.
    snoop = collect(broker.port, "emotion/kiosk-b/#", username="kiosk-a", password=users["kiosk-a"])
    rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    rogue.username_pw_set("kiosk-a", users["kiosk-a"])
    refusals = []
    rogue.on_publish = lambda c, u, mid, rc, p: refusals.append((mid, rc))
    rogue.connect("127.0.0.1", broker.port)
    rogue.loop_start()
    try:
        forged = rogue.publish("emotion/kiosk-b/summary", b'{"forged": true}', qos=1)
        stolen_status = rogue.publish("emotion/kiosk-b/status", b'{"state": "offline"}', qos=1, retain=True)
        own = rogue.publish("emotion/kiosk-a/summary", b'{"own": true}', qos=1)
        fleet.client.publish("emotion/kiosk-b/cmd/pause", b"{}", qos=1)
        assert wait(lambda: len(refusals) == 3)
        codes = {mid: rc for mid, rc in refusals}
        assert codes[forged.mid].value == 135 and codes[stolen_status.mid].value == 135   # Not authorized
        assert not codes[own.mid].is_failure
        assert wait(lambda: kiosk_b.messages, 5), "kiosk-b must receive its own command"
        assert fleet.wait_for(lambda c: c.json("kiosk-a/summary"), 5)
        time.sleep(0.5)
        topics = [t for t, *_ in fleet.messages]
        assert "emotion/kiosk-b/summary" not in topics and "emotion/kiosk-b/status" not in topics, topics
        assert snoop.messages == [], "kiosk-a read kiosk-b's topics"
    finally:
        rogue.loop_stop()
        rogue.disconnect()


def test_wrong_password_is_refused_with_a_hint(tmp_path, acl_broker, caplog):
    broker, users = acl_broker
    (tmp_path / "pw").write_text("wrong\n")
    cfg = MqttConfig(username="kiosk-a", password_file=tmp_path / "pw")
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    with caplog.at_level(logging.ERROR, logger="appliance.publish.mqtt"):
        pub = publisher(cfg, broker.url, box, device="kiosk-a").start()
        try:
            assert wait(lambda: "refused the connection" in caplog.text, 10)
        finally:
            pub.stop()
    assert "check mqtt.username and the password" in caplog.text


def test_the_device_can_run_under_the_example_acl(tmp_path, acl_broker, collect):
    broker, users = acl_broker
    fleet = collect(broker.port, "#", username="fleet", password=users["fleet"])
    (tmp_path / "pw").write_text(users["kiosk-a"] + "\n")
    env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-a", APPLIANCE_MQTT__USERNAME="kiosk-a",
                        APPLIANCE_MQTT__PASSWORD_FILE=str(tmp_path / "pw"), APPLIANCE_AGGREGATE__WINDOW_S="2",
                        APPLIANCE_MQTT__STATS_INTERVAL_S="2", APPLIANCE_MQTT__HOME_ASSISTANT__ENABLED="true")
    proc = subprocess.Popen(appliance_cmd("run", "--broker", broker.url, "--duration", "7"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert fleet.wait_for(lambda c: c.json("kiosk-a/summary") and c.json("kiosk-a/stats"), 40)
        fleet.client.publish("emotion/kiosk-a/cmd/status", b'{"request_id": "acl"}', qos=1)
        assert fleet.wait_for(lambda c: any(r["request_id"] == "acl" for r in c.json("kiosk-a/reply")), 10)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        configs = [t for t, *_ in fleet.messages if t.startswith("homeassistant/")]
        assert len(set(configs)) == len(ENTITIES) + 2, configs     # discovery passes the ACL too
    finally:
        if proc.poll() is None:
            proc.kill()
    pending, _ = outbox_rows(tmp_path / "state")
    assert pending == [], "every event must have been acknowledged under the ACL"


# --------------------------------------------------------------------------------------------- the daemon
def test_broker_down_15s_every_seq_arrives_once_and_replays_are_historical(tmp_path, collect):
    port = free_port()
    broker = Mosquitto(tmp_path, port, persistence=True).start()
    # A persistent session on a persisting broker: what arrives while the watcher reconnects is kept for it.
    watcher = collect(port, "emotion/kiosk-outage/#", client_id="outage-watcher", clean=False)
    env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-outage", APPLIANCE_AGGREGATE__WINDOW_S="1",
                        APPLIANCE_AGGREGATE__MIN_OBSERVED_S="0.5",
                        APPLIANCE_MQTT__STATS_INTERVAL_S="2", APPLIANCE_MQTT__RECONNECT_MIN_S="0.5",
                        APPLIANCE_MQTT__RECONNECT_MAX_S="2")
    proc = subprocess.Popen(appliance_cmd("run", "--broker", f"mqtt://127.0.0.1:{port}", "--duration", "26"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.wait_for(lambda c: len(c.json("/summary")) >= 3, 60), "no live summaries"
        broker.stop()
        down_at = time.time()
        time.sleep(15)
        pending, _ = outbox_rows(tmp_path / "state")
        assert len(pending) >= 15, f"the outage should have filled the outbox, got {pending}"
        broker.start()
        up_at = time.time()
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err[-3000:]
        pending, meta = outbox_rows(tmp_path / "state")
        assert pending == [], f"not acknowledged: {pending}"
        received = events(watcher, "kiosk-outage")
        assert watcher.wait_for(lambda c: {e["seq"] for e in events(c, "kiosk-outage")} >= set(
            range(1, meta["last_seq"] + 1)), 20), "missing seqs"
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
    received = events(watcher, "kiosk-outage")
    by_id = {e["event_id"]: e for e in received}
    seqs = sorted(e["seq"] for e in by_id.values())
    assert seqs == list(range(1, meta["last_seq"] + 1)), "after dedup by event_id each seq is there exactly once"
    for e in by_id.values():
        validate(e)
    stamp = {e["event_id"]: e.get("window_end") or e.get("at") for e in by_id.values()}

    def when(e):
        from datetime import datetime
        return datetime.fromisoformat(stamp[e["event_id"]].replace("Z", "+00:00")).timestamp()

    during = [e for e in by_id.values() if down_at + 1 < when(e) < up_at - 1]
    before = [e for e in by_id.values() if when(e) < down_at - 2]
    assert len(during) >= 12 and all(e["historical"] for e in during), "replayed events must be historical"
    assert before and not any(e["historical"] for e in before), "live events must not be historical"
    assert "connection lost" in err and "events wait in the outbox" in err


def test_sigkill_loses_nothing_that_reached_the_outbox_and_seq_continues(tmp_path, collect):
    port = free_port()
    broker = Mosquitto(tmp_path, port).start()
    env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-crash", APPLIANCE_AGGREGATE__WINDOW_S="1",
                        APPLIANCE_AGGREGATE__MIN_OBSERVED_S="0.5",
                        APPLIANCE_MQTT__STATS_INTERVAL_S="2", APPLIANCE_MQTT__RECONNECT_MAX_S="1")
    first = collect(port, "emotion/kiosk-crash/#")
    proc = subprocess.Popen(appliance_cmd("run", "--broker", broker.url), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert first.wait_for(lambda c: len(c.json("/summary")) >= 2, 60)
        broker.stop()
        time.sleep(5)     # the daemon goes on producing into the outbox
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    pending, meta = outbox_rows(tmp_path / "state")
    assert len(pending) >= 4, pending
    broker.start()
    try:
        second = collect(port, "emotion/kiosk-crash/#")
        run = subprocess.run(appliance_cmd("run", "--broker", broker.url, "--duration", "4"), env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr[-2000:]
        assert second.wait_for(lambda c: set(pending) <= {e["seq"] for e in events(c, "kiosk-crash")}, 15)
    finally:
        broker.stop()
    replayed = [e for e in events(second, "kiosk-crash") if e["seq"] in pending]
    assert all(e["historical"] for e in replayed)
    new = sorted(e["seq"] for e in events(second, "kiosk-crash") if e["seq"] > meta["last_seq"])
    assert new and new[0] == meta["last_seq"] + 1, "seq continues after the crash"
    got = {e["seq"] for e in events(first, "kiosk-crash")} | {e["seq"] for e in events(second, "kiosk-crash")}
    assert got == set(range(1, new[-1] + 1))
    assert outbox_rows(tmp_path / "state")[0] == []


def test_the_bound_is_enforced_and_counted_in_a_long_outage(tmp_path, collect):
    port = free_port()     # no broker at all while the daemon runs
    env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-full", APPLIANCE_AGGREGATE__WINDOW_S="1",
                        APPLIANCE_AGGREGATE__MIN_OBSERVED_S="0.5",
                        APPLIANCE_MQTT__STATS_INTERVAL_S="1", APPLIANCE_OUTBOX__MAX_EVENTS="5")
    run = subprocess.run(appliance_cmd("run", "--broker", f"mqtt://127.0.0.1:{port}", "--duration", "6"), env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    pending, meta = outbox_rows(tmp_path / "state")
    assert len(pending) == 5 and meta["dropped"] == meta["last_seq"] - 5 > 0
    assert pending == list(range(meta["last_seq"] - 4, meta["last_seq"] + 1)) or len(pending) == 5
    assert "outbox full" in run.stderr and "dropped the oldest" in run.stderr
    broker = Mosquitto(tmp_path, port).start()
    try:
        watcher = collect(port, "emotion/kiosk-full/stats")
        run = subprocess.run(appliance_cmd("run", "--broker", broker.url, "--duration", "3"), env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr[-2000:]
        assert watcher.wait_for(lambda c: any(s["outbox"]["dropped"] >= meta["dropped"] and not s["historical"]
                                              for s in c.json("/stats")), 10)
    finally:
        broker.stop()


def test_stats_and_fuzzed_commands_on_a_running_daemon(tmp_path, mosquitto, collect):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    watcher = collect(mosquitto.port, "emotion/kiosk-fuzz/#")
    env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-fuzz", APPLIANCE_AGGREGATE__WINDOW_S="2",
                        APPLIANCE_MQTT__STATS_INTERVAL_S="3")
    log_path = tmp_path / "daemon.log"
    proc = subprocess.Popen(appliance_cmd("run", "--broker", mosquitto.url), env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "w"))
    sender = watcher.client
    sent = [0]
    try:
        assert watcher.wait_for(lambda c: c.json("emotion/kiosk-fuzz/stats"), 60)
        # Control characters are left out of topics: mosquitto disconnects a client that publishes one (MQTT 5
        # spec, 1.5.4), so they never reach a unit.
        level = st.text(st.characters(blacklist_characters="#+/", blacklist_categories=("Cs", "Cc")), max_size=12)
        topic = st.one_of(st.sampled_from(COMMANDS), level, st.lists(level, min_size=2, max_size=4).map("/".join))
        payload = st.one_of(
            st.binary(max_size=1500),
            st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.integers(), st.text(max_size=80)),
                            max_size=4).map(lambda d: json.dumps(d).encode()),
            st.sampled_from([b"", b"{}", b'{"request_id": "x"}', b"null", b"[]", b'{"reason": 1}']))

        # No shrinking: each failing try waits out a timeout, and the daemon's log below says what happened.
        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate])
        @given(topic, payload)
        def one_command(suffix: str, body: bytes) -> None:
            sender.publish(f"emotion/kiosk-fuzz/cmd/{suffix}", body, qos=1)
            sent[0] += 1
            # Every command gets exactly one reply: an error for anything malformed.
            assert watcher.wait_for(lambda c: len(c.json("emotion/kiosk-fuzz/reply")) >= sent[0], 10), \
                (suffix, body, log_path.read_text()[-3000:])
            assert proc.poll() is None, "the daemon died"

        one_command()
        replies = watcher.json("emotion/kiosk-fuzz/reply")
        assert len(replies) == sent[0]
        for reply in replies:
            validate(reply)
        assert any(not r["ok"] for r in replies)
        # Still alive and serving: resume (the fuzz may have paused it), then ask for stats on demand.
        sender.publish("emotion/kiosk-fuzz/cmd/resume", b"", qos=1)
        before = len(watcher.json("emotion/kiosk-fuzz/stats"))
        sender.publish("emotion/kiosk-fuzz/cmd/stats", b'{"request_id": "now"}', qos=1)
        assert watcher.wait_for(lambda c: len(c.json("emotion/kiosk-fuzz/stats")) > before, 5)
        assert watcher.wait_for(lambda c: c.json("emotion/kiosk-fuzz/summary") and c.json("emotion/kiosk-fuzz/status")[-1]["state"] == "online", 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    err = log_path.read_text()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "rejected command" in err
    stats = watcher.json("emotion/kiosk-fuzz/stats")
    for s in stats:
        validate(s)
    last = stats[-1]
    # An on-demand stats a moment after a periodic one covers an interval with no tick in it.
    assert last["loop"]["rate_hz"] == 10 and all(s["loop"]["ticks"] > 0 for s in stats if s["interval_seconds"] >= 1)
    assert any(s["stages"].get("detect", {}).get("p50_ms", 0) > 0 for s in stats)   # not while paused
    assert last["system"]["rss_mb"] > 50 and last["mqtt"]["protocol"] == "5" and last["outbox"]["depth"] >= 0


class NeverAcks(FakeBroker):
    """A broker that accepts the connection, answers SUBSCRIBE and PINGREQ (so the link stays up), takes every
    PUBLISH and never acknowledges one. MQTT 3.1.1 only; keeps what it was sent."""

    def __init__(self, port: int):
        self.published: list[tuple[str, bytes]] = []
        super().__init__(port)

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _talk(self, conn: socket.socket) -> None:
        try:
            while True:
                kind = self._read(conn, 1)[0] >> 4
                length, shift = 0, 0
                while True:
                    byte = self._read(conn, 1)[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = self._read(conn, length)
                if kind == 1:                                   # CONNECT -> CONNACK accepted
                    conn.sendall(b"\x20\x02\x00\x00")
                elif kind == 3:                                 # PUBLISH: kept, never acknowledged
                    size = int.from_bytes(body[:2], "big")
                    topic = body[2:2 + size].decode()
                    self.published.append((topic, body[2 + size + 2:]))     # QoS 1: a packet id after the topic
                elif kind == 8:                                 # SUBSCRIBE -> SUBACK, QoS 1 granted
                    conn.sendall(b"\x90\x03" + body[:2] + b"\x01")
                elif kind == 12:                                # PINGREQ -> PINGRESP
                    conn.sendall(b"\xd0\x00")
        except OSError:
            pass


def test_a_broker_that_never_acknowledges_is_reported_once_in_status_and_stats(tmp_path, caplog):
    """Issue 25 case 3: events in flight longer than 2 keepalives are logged once, counted and shown in the
    retained status (delivery_stalled); they stay in the outbox."""
    port = free_port()
    broker = NeverAcks(port)
    box = Outbox(tmp_path / "o.sqlite3", OutboxConfig())
    add_events(box, 3)
    cfg = MqttConfig(protocol="3.1.1", keepalive_s=5)
    pub = MqttPublisher(cfg, parse_broker_url(f"mqtt://127.0.0.1:{port}"), "unit-1", "test", box, max_age_s=3600)
    assert pub.stall_after_s == 2 * cfg.keepalive_s
    pub.stall_after_s = 3.0          # the rule's mechanism, without waiting 2 keepalives
    try:
        with caplog.at_level(logging.WARNING):
            pub.start()
            assert wait(lambda: pub.connected.is_set(), 10)
            assert wait(lambda: pub.counters["stalls"] == 1, 10)
            time.sleep(1.5)
        assert wait(lambda: any("delivery_stalled" in json.loads(p) for t, p in broker.published
                                if t == "emotion/unit-1/status"), 5), broker.published
    finally:
        pub.stop(timeout=1)
        broker.close()
    stalled = next(s for s in (json.loads(p) for t, p in broker.published if t == "emotion/unit-1/status")
                   if "delivery_stalled" in s)
    assert stalled["delivery_stalled"].startswith("3 events sent to the broker unacknowledged for 3 s")
    validate(stalled)
    assert caplog.text.count("delivery stalled") == 1 and pub.counters["stalls"] == 1
    assert box.depth == 3, "nothing leaves the outbox without an acknowledgement"


def test_two_units_with_one_device_id_back_off_and_say_so(tmp_path, mosquitto, collect):
    """Issue 25 case 5: two daemons with one device.id (two state folders: a cloned SD card). The broker hands the
    session from one to the other (mosquitto 2.0 closes the old connection without the MQTT 5 reason 0x8E, so the
    unit reads it from connections lost within seconds of connecting); the unit that lost it says why, waits
    instead of taking it straight back, and shows the suspicion in its status and stats once it is back."""
    watcher = collect(mosquitto.port, "emotion/kiosk-twin/#")
    procs, logs = [], []
    for name in ("a", "b"):
        env = appliance_env(tmp_path, APPLIANCE_DEVICE__ID="kiosk-twin", APPLIANCE_STATE__DIR=str(tmp_path / name),
                            APPLIANCE_MQTT__STATS_INTERVAL_S="2", APPLIANCE_MQTT__RECONNECT_MAX_S="1")
        logs.append(tmp_path / f"{name}.log")
        procs.append(subprocess.Popen(appliance_cmd("run", "--broker", mosquitto.url), env=env,
                                      stdout=subprocess.DEVNULL, stderr=open(logs[-1], "w")))
        assert watcher.wait_for(lambda c: sum(s["state"] == "online" for s in c.json("/status")) >= len(procs), 60)
    try:
        assert watcher.wait_for(lambda c: any("duplicate_device_id" in s for s in c.json("/status")), 40), \
            "the unit that was thrown off never showed the suspicion once back"
        assert watcher.wait_for(lambda c: any(s["mqtt"].get("takeovers") for s in c.json("kiosk-twin/stats")), 10)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
    errs = [p.read_text() for p in logs]
    assert all(proc.returncode == 0 for proc in procs), errs[0][-1500:] + errs[1][-1500:]
    assert any("probable duplicate device id" in err and "instead of taking the session back" in err for err in errs)
    statuses = watcher.json("/status")
    # Fighting, each takes the session back within a second or two, and every takeover publishes the other's last
    # will: dozens in this run. Backing off after 3 short connections (mosquitto 2.0 closes the socket without
    # saying why), a handful.
    wills = [s for s in statuses if s.get("reason") == "connection lost"]
    assert len(wills) <= 12, [(s["state"], s.get("reason")) for s in statuses]
    for s in statuses:
        validate(s)
