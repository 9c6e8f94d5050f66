"""MQTT client (paho-mqtt 2.x) that drains the outbox: events leave the disk only after the broker's PUBACK.

One thread owns the paho client (paho is driven with ``loop()``, never from two threads): it connects, with capped
exponential backoff and jitter, drains the outbox in seq order with at most ``mqtt.inflight`` events unacknowledged,
publishes the retained status and any replies, and takes commands in. The loop thread only writes to the outbox and
calls ``set_status``/``reply``; nothing here can block a tick.

Protocol: MQTT 5 where the broker speaks it (message expiry from the outbox's age bound, content type, the event's
schema, id and seq as user properties), 3.1.1 otherwise (``mqtt.protocol = "auto"`` falls back when the broker
refuses 5). TLS and mutual TLS from ``mqtt.tls``; the password from a file or the environment.

An event counts as ``historical`` when it was created before the current connection came up: it waited out an
outage or a restart, so a dashboard must not read it as live.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import sqlite3
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.publish.config import BrokerAddress, MqttConfig
from appliance.publish.commands import Command, CommandError, RateLimit, parse_command, reply_payload, salvage
from appliance.publish.outbox import Outbox, PendingEvent
from appliance.publish.payloads import status_payload

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 5.0
UNSUPPORTED_PROTOCOL = {132, 1}   # MQTT 5 reason code / MQTT 3.1.1 CONNACK return code


class Topics:
    def __init__(self, prefix: str, device_id: str):
        self.base = f"{prefix}/{device_id}"

    def __getattr__(self, kind: str) -> str:  # summary, alert, status, stats, reply
        return f"{self.base}/{kind}"


class Backoff:
    """Capped exponential backoff with jitter: waits of min·2ⁿ up to max, each scaled by a random 50-100% so that a
    fleet that lost its broker together does not come back in one synchronised wave."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random):
        self.min_s, self.max_s, self.rng = min_s, max_s, rng
        self.failures = 0

    def next(self) -> float:
        delay = min(self.max_s, self.min_s * 2 ** min(self.failures, 30))
        self.failures += 1
        return delay * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class MqttSetupError(ValueError):
    """A broker setting that cannot work (bad certificate file, unreadable password file): a start-up error."""


def check_setup(cfg: MqttConfig, broker: BrokerAddress) -> None:
    """Fail at start, naming the key, rather than in the MQTT thread on every reconnect."""
    if broker.tls:
        tls_context(cfg)
    elif cfg.tls.cert_file or cfg.tls.ca_file:
        log.warning("mqtt.tls is set but the broker URL is not mqtts://: the connection is NOT encrypted")
    try:
        password = cfg.password()
    except ValueError as e:
        raise MqttSetupError(str(e)) from None
    if password is not None and not cfg.username:
        raise MqttSetupError("mqtt.username: a password is set (mqtt.password_file or APPLIANCE_MQTT_PASSWORD) "
                             "but no username")


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The TLS context for ``mqtts://``; bad files are start-up errors that name the key."""
    tls = cfg.tls
    try:
        context = ssl.create_default_context(cafile=str(Path(tls.ca_file).expanduser()) if tls.ca_file else None)
    except (ssl.SSLError, OSError) as e:
        raise MqttSetupError(f"mqtt.tls.ca_file: {tls.ca_file} is not a CA certificate bundle ({e})") from None
    if tls.cert_file:
        try:
            context.load_cert_chain(str(Path(tls.cert_file).expanduser()), str(Path(tls.key_file).expanduser()))
        except (ssl.SSLError, OSError) as e:
            raise MqttSetupError(f"mqtt.tls.cert_file: {tls.cert_file} / {tls.key_file} are not a matching "
                             f"certificate and key ({e})") from None
    if tls.insecure:
        context.check_hostname = False
    return context


def tool_client(cfg: MqttConfig, broker: BrokerAddress, client_id: str) -> mqtt.Client:
    """A plain MQTT 3.1.1 client for the CLI tools (doctor, watch), with the config's TLS and credentials."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    secure(client, cfg, tls_context(cfg) if broker.tls else None)
    return client


def secure(client: mqtt.Client, cfg: MqttConfig, ssl_context: ssl.SSLContext | None) -> None:
    """Credentials and TLS, the same for the daemon and the tools. The password is read now, never kept."""
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password())
    if ssl_context is not None:
        client.tls_set_context(ssl_context)


def describe_connect_error(error: BaseException, broker: BrokerAddress, cfg: MqttConfig) -> str:
    """A connection failure in words a technician can act on."""
    where = f"{broker.host}:{broker.port}"
    if isinstance(error, ssl.SSLCertVerificationError):
        trust = f"mqtt.tls.ca_file = {cfg.tls.ca_file}" if cfg.tls.ca_file else "the system trust store"
        return (f"TLS: the certificate of {where} is not trusted (certificate verify failed: {error.verify_message}); it must be signed by the "
                f"CA in {trust}")
    if isinstance(error, ssl.SSLError):
        hint = "" if cfg.tls.cert_file else "; a broker that requires client certificates needs mqtt.tls.cert_file " \
                                            "and mqtt.tls.key_file"
        return f"TLS handshake with {where} failed ({error.reason or error}){hint}"
    if isinstance(error, ConnectionRefusedError):
        return f"nothing accepts connections on {where} (broker down?)"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve {broker.host} ({error.strerror})"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"{where} did not answer in time"
    return f"{where}: {error}"


def refusal_hint(reason: str) -> str:
    lowered = reason.lower()
    if "auth" in lowered or "password" in lowered:
        return ": check mqtt.username and the password (mqtt.password_file or APPLIANCE_MQTT_PASSWORD)"
    if "identifier" in lowered:
        return ": check mqtt.client_id"
    return ""


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: str
    retain: bool
    properties: Properties | None = None


class MqttPublisher:
    def __init__(self, cfg: MqttConfig, broker: BrokerAddress, device_id: str, version: str, outbox: Outbox,
                 max_age_s: float, retained_on_connect: list[tuple[str, dict]] | None = None,
                 rng: random.Random | None = None, on_command: Callable[[Command], None] | None = None):
        self.cfg = cfg
        self.broker = broker
        self.device_id = device_id
        self.version = version
        self.outbox = outbox
        self.max_age_s = max_age_s
        self.topics = Topics(cfg.topic_prefix, device_id)
        self.client_id = cfg.client_id or f"appliance-{device_id}"
        self.retained_on_connect = retained_on_connect or []
        self.connected = threading.Event()
        self.protocol = "5" if cfg.protocol in ("auto", "5") else "3.1.1"
        self.counters = {"acked": 0, "connects": 0, "refused": 0, "rejected_commands": 0}
        # Commands are parsed (and pause/resume floods limited) here, on the MQTT thread, then handed to the
        # receiver (the daemon's control plane), which must not block. Without one, a command is refused.
        self.on_command = on_command
        self.state = "online"
        self._ssl = tls_context(cfg) if broker.tls else None
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng or random.Random())
        self._status: dict = status_payload("online", device_id, version)
        self._status_dirty = True
        self._lock = threading.Lock()
        self._control: deque[Outgoing] = deque(maxlen=200)
        self._client: mqtt.Client | None = None
        self._socket_up = False
        self._rebuild = False    # the protocol changed: build a new client
        self._protocol_confirmed = cfg.protocol != "auto"   # a CONNACK came back in this protocol
        self._connack_deadline = 0.0
        self._next_attempt = 0.0
        self._failures_logged = 0
        self._connected_at = 0.0
        self._inflight: dict[int, int] = {}     # paho mid -> outbox seq
        self._acked: list[int] = []
        self._cursor = 0                          # highest seq handed to paho on this client
        # Whether the outbox may hold events past the cursor: the outbox is read only then, not on every poll, so
        # an idle link costs the loop's process no database work (and no GIL) 20 times a second.
        self._more = True
        self._stop_at: float | None = None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._last_expire = time.monotonic()
        self._storage_error: str | None = None
        self._acks_failing = False
        self._silent_fallback = False     # on 3.1.1 only because an MQTT 5 CONNECT went unanswered
        self._state_changes = RateLimit()

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "MqttPublisher":
        log.info("MQTT: connecting to %s:%d as %s (protocol %s%s)", self.broker.host, self.broker.port,
                 self.client_id, self.cfg.protocol, ", TLS" if self._ssl else "")
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Send what the outbox holds (up to ``timeout``), a clean retained 'offline', then disconnect."""
        self._stop_at = time.monotonic() + timeout
        self._wake.set()
        self._thread.join(timeout + 5)

    # ------------------------------------------------------------------------------------------- from the loop
    def set_status(self, state: str, **extra) -> None:
        with self._lock:
            self.state = state
            self._status = status_payload(state, self.device_id, self.version, at=time.time(), **extra)
            if self._storage_error:
                self._status["storage_error"] = self._storage_error
            self._status_dirty = True
        self._wake.set()

    def report_storage(self, error: str | None) -> None:
        """The outbox could not be written (``error``) or can again (None): the retained status says so, since no
        stats event can be stored meanwhile. Called from the writer thread and this one."""
        with self._lock:
            if error == self._storage_error:
                return
            self._storage_error = error
            self._status.pop("storage_error", None)
            if error:
                self._status["storage_error"] = error
            self._status_dirty = True
        self._wake.set()

    def reply(self, command: Command | None, ok: bool, error: str | None = None) -> None:
        payload = reply_payload(self.device_id, (command.name or None) if command else None, ok, self.state,
                                command.request_id if command else None, error)
        properties = None
        if command is not None and command.correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = command.correlation_data
        self._control.append(Outgoing(self.topics.reply, json.dumps(payload), False, properties))
        self._wake.set()

    def wake(self) -> None:
        """An event was added to the outbox: send it now rather than at the next poll."""
        self._more = True
        self._wake.set()

    # ------------------------------------------------------------------------------------------- the thread
    def _run(self) -> None:
        # This thread must outlive any error: events only leave through it. Storage trouble (a full disk) is
        # reported and retried; anything else drops the connection and starts over with the usual backoff.
        while True:
            try:
                if self._step():
                    break
                if self._acks_failing:
                    self._acks_failing = False
                    log.warning("MQTT: the outbox takes acknowledgements again")
                    self.report_storage(None)
            except (sqlite3.Error, OSError) as e:
                if not self._acks_failing:
                    log.error("MQTT: the outbox cannot be updated (%s): free space in %s; acknowledged events are "
                              "removed once it can (nothing is lost or sent twice meanwhile)", e,
                              self.outbox.path.parent)
                self._acks_failing = True
                self.report_storage(f"outbox not writable: {e}")
                self._wake.wait(1.0)
            except Exception:
                log.exception("MQTT thread error; reconnecting, events stay in the outbox")
                self._lost("internal error")
                self._wake.wait(1.0)
        try:
            self._shutdown()
        except Exception:
            log.exception("MQTT: shutdown failed; events stay in the outbox")

    def _step(self) -> bool:
        """One pass of the thread's loop; True when it is time to stop."""
        now = time.monotonic()
        if self._stop_at is not None and (not self._socket_up or now >= self._stop_at or self._drained()):
            return True
        if not self._socket_up:
            if now < self._next_attempt:
                self._wake.wait(min(self._next_attempt - now, 0.25))
                self._wake.clear()
                return False
            self._connect()
            return False
        rc = self._client.loop(timeout=0.05)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self._lost(mqtt.error_string(rc))
            return False
        if not self.connected.is_set() and now > self._connack_deadline:
            self._lost(f"no CONNACK within {CONNACK_TIMEOUT_S:g} s")
            return False
        if self.connected.is_set():
            self._send_control()
            self._drain()
        self._flush_acks()
        if now - self._last_expire > 60:
            self._last_expire = now
            self.outbox.expire()
        return False

    def _make_client(self) -> mqtt.Client:
        v5 = self.protocol == "5"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else True)
        client.max_inflight_messages_set(self.cfg.inflight)
        will = status_payload("offline", self.device_id, self.version, reason="connection lost")
        client.will_set(self.topics.status, json.dumps(will), qos=1, retain=True,
                        properties=self._properties(PacketTypes.WILLMESSAGE))
        secure(client, self.cfg, self._ssl)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _connect(self) -> None:
        if self._client is None:
            self._client = self._make_client()
            self._inflight.clear()
            self._cursor = 0     # a new client has nothing in flight: everything left in the outbox is resent
            self._more = True
        try:
            self._client.connect(self.broker.host, self.broker.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as e:   # ssl.SSLError is an OSError
            self._failed(describe_connect_error(e, self.broker, self.cfg))
            return
        self._socket_up = True
        self._connack_deadline = time.monotonic() + CONNACK_TIMEOUT_S

    def _failed(self, why: str, quiet: bool = False) -> None:
        delay = self._backoff.next()
        self._next_attempt = time.monotonic() + delay
        if quiet:
            return
        self._failures_logged += 1
        # First failure and then every 10th, so a long outage does not flood the log.
        if self._failures_logged == 1 or self._failures_logged % 10 == 0:
            log.warning("MQTT: cannot connect (attempt %d): %s; retrying in %.1f s, %d events wait in the outbox",
                        self._failures_logged, why, delay, self.outbox.depth)

    def _lost(self, why: str) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._socket_up = False
        try:
            self._client.disconnect()
        except Exception:   # already closed
            pass
        if was_connected:
            # A new client for the next connection: paho would re-send its unacknowledged events as they were
            # (historical: false); dropped here, they are sent again from the outbox, marked historical.
            self._rebuild = True
            if self._silent_fallback:
                # 3.1.1 was chosen only because a broker never answered MQTT 5; a broker that answers may be
                # another one now: ask in MQTT 5 first again.
                self._silent_fallback = False
                self.protocol, self._protocol_confirmed = "5", False
        if not was_connected and not self._protocol_confirmed and self.cfg.protocol == "auto":
            # Some 3.1.1-only brokers drop an MQTT 5 CONNECT without answering it: try the other protocol next.
            self.protocol = "3.1.1" if self.protocol == "5" else "5"
            self._silent_fallback = self.protocol == "3.1.1"
            self._rebuild = True
            why += f"; trying MQTT {self.protocol}"
        if self._rebuild:
            self._rebuild = False
            self._client = None
            if not was_connected and self.protocol == "3.1.1" and "trying" not in why:
                self._next_attempt = 0.0     # the broker said which protocol it wants: no reason to wait
                return
        if was_connected:
            log.warning("MQTT: connection lost (%s); reconnecting, events wait in the outbox", why)
            self._failures_logged = 0
            self._backoff.reset()
        self._failed(why, quiet=was_connected)

    def _drained(self) -> bool:
        return self.outbox.depth == 0 and not self._inflight and not self._control and not self._status_dirty

    def _shutdown(self) -> None:
        if self._socket_up and self.connected.is_set():
            offline = status_payload("offline", self.device_id, self.version, at=time.time(), reason="shutdown")
            info = self._publish_status(offline)
            deadline = time.monotonic() + 2.0
            while not info.is_published() and time.monotonic() < deadline:
                if self._client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            self._flush_acks()
            self._client.disconnect()
            self._client.loop(timeout=0.05)
        else:
            log.warning("MQTT: stopping while disconnected; the broker publishes the last will instead")
        if self.outbox.depth:
            log.warning("MQTT: %d events stay in the outbox; they are sent after the next start", self.outbox.depth)

    # ------------------------------------------------------------------------------------------- sending
    def _properties(self, packet: int = PacketTypes.PUBLISH, event: PendingEvent | None = None):
        if self.protocol != "5":
            return None
        props = Properties(packet)
        props.ContentType = "application/json"
        props.PayloadFormatIndicator = 1
        user = [("device_id", self.device_id)]
        if event is not None:
            # The broker discards what would reach a subscriber after the outbox itself would have dropped it.
            age = max(0.0, time.time() - event.created)
            props.MessageExpiryInterval = max(1, int(self.max_age_s - age))
            user += [("event_id", event.event_id), ("seq", str(event.seq))]
        props.UserProperty = user
        return props

    def _publish_status(self, status: dict) -> mqtt.MQTTMessageInfo:
        return self._client.publish(self.topics.status, json.dumps(status), qos=1, retain=True,
                                    properties=self._properties())

    def _send_control(self) -> None:
        with self._lock:
            status, dirty = self._status, self._status_dirty
            self._status_dirty = False
        if dirty:
            self._publish_status(status)
        while self._control:
            out = self._control.popleft()
            self._client.publish(out.topic, out.payload, qos=1, retain=out.retain, properties=out.properties)

    def _drain(self) -> None:
        room = self.cfg.inflight - len(self._inflight)
        if room <= 0 or not self._more:
            return
        self._more = False
        events = self.outbox.pending(self._cursor, room)
        if len(events) == room:
            self._more = True     # the window is full: there may be more behind it
        for event in events:
            payload = event.payload
            if event.created < self._connected_at:
                data = json.loads(payload)
                data["historical"] = True
                payload = json.dumps(data, separators=(",", ":"))
            info = self._client.publish(f"{self.topics.base}/{event.kind}", payload, qos=self.cfg.qos,
                                        properties=self._properties(event=event))
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("MQTT: publish of seq %d failed (%s); retried", event.seq, mqtt.error_string(info.rc))
                self._more = True
                break
            self._inflight[info.mid] = event.seq
            self._cursor = event.seq

    def _flush_acks(self) -> None:
        if self._acked:
            self.outbox.ack(self._acked)
            self.counters["acked"] += len(self._acked)
            self._acked = []

    # ------------------------------------------------------------------------------------------- callbacks
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if reason_code.value in UNSUPPORTED_PROTOCOL and self.cfg.protocol == "auto" and self.protocol == "5":
                log.info("MQTT: broker does not speak MQTT 5; using 3.1.1")
                self.protocol = "3.1.1"
                self._silent_fallback = False
                self._protocol_confirmed = True
                self._rebuild = True
                return
            self._protocol_confirmed = True
            self.counters["refused"] += 1
            log.error("MQTT: broker refused the connection: %s%s", reason_code, refusal_hint(str(reason_code)))
            return
        self.counters["connects"] += 1
        self._protocol_confirmed = True
        self._backoff.reset()
        self._failures_logged = 0
        self._connected_at = time.time()
        self._more = True
        self.connected.set()
        log.info("MQTT: connected to %s:%d (MQTT %s); %d events in the outbox", self.broker.host, self.broker.port,
                 self.protocol, self.outbox.depth)
        # Re-assert availability on every (re)connect: the broker may have published our last will meanwhile.
        with self._lock:
            self._status_dirty = True
        for topic, payload in self.retained_on_connect:
            client.publish(topic, json.dumps(payload), qos=1, retain=True)
        client.subscribe(f"{self.topics.base}/cmd/#", qos=1)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return   # status, reply, discovery: not outbox events
        if reason_code.is_failure:
            # MQTT 5 only: the broker took the event and will never deliver it (e.g. not authorised for the topic).
            self.outbox.drop(seq, f"broker refused it: {reason_code}")
            return
        self._acked.append(seq)

    def _on_message(self, client, userdata, message) -> None:
        # Every reply, an error included, carries what identifies the request (request_id, MQTT 5 correlation data),
        # so a fleet tool can match its failures.
        correlation = getattr(message.properties, "CorrelationData", None) if message.properties else None
        try:
            about = replace(salvage(message.topic, message.payload, self.topics.base),
                            correlation_data=None if correlation is None else bytes(correlation)[:64])
        except Exception:
            about = None
        try:
            command = replace(parse_command(message.topic, message.payload, self.topics.base),
                              correlation_data=about.correlation_data if about else None)
            if command.name in ("pause", "resume") and not self._state_changes.allow():
                self.counters["rejected_commands"] += 1
                log.warning("MQTT: %s rejected: over the rate limit", command.name)
                self.reply(command, False, error=f"busy: at most {self._state_changes.burst} pause/resume commands "
                                                 "at once, then 10 a minute")
                return
            if self.on_command is None:
                raise CommandError("this process takes no commands")
            self.on_command(command)
        except CommandError as e:
            self.counters["rejected_commands"] += 1
            log.warning("MQTT: rejected command on %s: %s", message.topic[:120], e)
            self.reply(about, False, error=str(e)[:300])
        except Exception as e:  # paho must never see an exception from us: it would drop the connection
            self.counters["rejected_commands"] += 1
            log.exception("MQTT: command handling failed: %s", e)
