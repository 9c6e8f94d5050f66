"""One broker connection's life: the paho client built for the chosen protocol (last will, TLS, credentials),
connect, CONNACK, loss, and the capped backoff between attempts. Runs on the MQTT thread only."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes

from appliance.publish.client import Backoff, Topics, describe_connect_error, refusal_hint, secure, tls_context
from appliance.publish.config import BrokerAddress, MqttConfig
from appliance.publish.payloads import status_payload
from appliance.publish.protocol import ProtocolChoice

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 5.0
SESSION_TAKEN_OVER = 0x8E       # MQTT 5 DISCONNECT reason: another client connected with this client id
SHORT_LIFE_S = 10.0             # 3.1.1 has no reason: connections this short, 3 in a row, are read as takeovers
STABLE_S = 300.0                # a connection that lasts this long ends the duplicate-id suspicion
TAKEOVER_WAIT_S = (10.0, 3600.0)   # the first wait 5-10 s (jitter), then doubling to an hour


class Link:
    def __init__(self, cfg: MqttConfig, broker: BrokerAddress, client_id: str, topics: Topics, device_id: str,
                 version: str, counters: dict, rng: random.Random | None, waiting: Callable[[], int]):
        self.cfg, self.broker, self.client_id, self.topics = cfg, broker, client_id, topics
        self.device_id, self.version, self.counters = device_id, version, counters
        self.waiting = waiting                  # events in the outbox, for the log
        self.protocols = ProtocolChoice(cfg.protocol)
        self.connected = threading.Event()
        self.ssl = tls_context(cfg) if broker.tls else None
        self.client: mqtt.Client | None = None
        self.socket_up = False
        self.connack_deadline = 0.0
        self.next_attempt = 0.0
        rng = rng or random.Random()
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng)
        self._failures_logged = 0
        # Two units with one client id throw each other off the broker: after a takeover this one waits, longer
        # each time, instead of taking the session straight back.
        self._takeover_backoff = Backoff(*TAKEOVER_WAIT_S, rng)
        self._taken_over = False          # the broker said so (MQTT 5 DISCONNECT 0x8E)
        self._short_lives = 0             # connections in a row lost within SHORT_LIFE_S, with no failed attempt
        self._up_since = 0.0
        self.duplicate: str | None = None     # why this unit suspects another one with its id, while it does
        self.on_duplicate: Callable[[str | None], None] = lambda problem: None
        # Set by the publisher: what a new client is wired to, and what happens on each connect.
        self.on_new_client: Callable[[mqtt.Client], None] = lambda client: None
        self.on_connected: Callable[[mqtt.Client], None] = lambda client: None
        self.properties: Callable[..., object] = lambda packet=PacketTypes.PUBLISH, event=None: None

    def connect(self) -> None:
        if self.client is None:
            self.client = self._make_client()
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as e:   # ssl.SSLError is an OSError
            self._short_lives = 0            # the broker itself is away: not a takeover
            self._failed(describe_connect_error(e, self.broker, self.cfg))
            return
        self.socket_up = True
        self.connack_deadline = time.monotonic() + CONNACK_TIMEOUT_S

    def lost(self, why: str) -> None:
        was_connected = self.connected.is_set()
        taken_over, self._taken_over = self._taken_over, False
        if was_connected:
            short = time.monotonic() - self._up_since < SHORT_LIFE_S
            self._short_lives = self._short_lives + 1 if short else 0
            if self._short_lives >= 3 and not taken_over:
                taken_over = f"{self._short_lives} connections in a row lost within {SHORT_LIFE_S:g} s of connecting"
        self.connected.clear()
        self.socket_up = False
        try:
            self.client.disconnect()
        except Exception:   # already closed
            pass
        rebuild, at_once, note = self.protocols.lost(was_connected)
        why += note
        if rebuild:
            # A new client for the next connection: paho would re-send its unacknowledged events as they were
            # (historical: false); dropped here, they are sent again from the outbox, marked historical.
            self.client = None
            if at_once:
                self.next_attempt = 0.0     # the broker said which protocol it wants: no reason to wait
                return
        if taken_over:
            self._duplicate_id(taken_over if isinstance(taken_over, str) else "the broker said the session was "
                               "taken over by another client")
            return
        if was_connected:
            log.warning("MQTT: connection lost (%s); reconnecting, events wait in the outbox", why)
            self._failures_logged = 0
            self._backoff.reset()
        self._failed(why, quiet=was_connected)

    def _duplicate_id(self, evidence: str) -> None:
        self.counters["takeovers"] += 1
        delay = self._takeover_backoff.next()
        self.next_attempt = time.monotonic() + delay
        self.duplicate = (f"probable duplicate device id: the broker handed client id {self.client_id!r} to another "
                          f"client ({evidence}); give each unit its own device.id")
        log.error("MQTT: %s. Waiting %.0f s before connecting again instead of taking the session back "
                  "(takeover %d); events wait in the outbox", self.duplicate, delay, self.counters["takeovers"])
        self.on_duplicate(self.duplicate)

    def check_stable(self, now: float) -> None:
        """A connection that has lasted ``STABLE_S`` ends a duplicate-id suspicion (the other unit was fixed)."""
        if self.duplicate and self.connected.is_set() and now - self._up_since > STABLE_S:
            log.warning("MQTT: connected for %.0f s without a takeover: no longer suspecting a duplicate device id",
                        now - self._up_since)
            self.duplicate = None
            self._short_lives = 0
            self._takeover_backoff.reset()
            self.on_duplicate(None)

    def _make_client(self) -> mqtt.Client:
        v5 = self.protocols.current == "5"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else True)
        client.max_inflight_messages_set(self.cfg.inflight)
        will = status_payload("offline", self.device_id, self.version, reason="connection lost")
        client.will_set(self.topics.status, json.dumps(will), qos=1, retain=True,
                        properties=self.properties(PacketTypes.WILLMESSAGE))
        secure(client, self.cfg, self.ssl)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self.on_new_client(client)
        return client

    def _failed(self, why: str, quiet: bool = False) -> None:
        delay = self._backoff.next()
        self.next_attempt = time.monotonic() + delay
        if quiet:
            return
        self._failures_logged += 1
        # First failure and then every 10th, so a long outage does not flood the log.
        if self._failures_logged == 1 or self._failures_logged % 10 == 0:
            log.warning("MQTT: cannot connect (attempt %d): %s; retrying in %.1f s, %d events wait in the outbox",
                        self._failures_logged, why, delay, self.waiting())

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code is not None and getattr(reason_code, "value", None) == SESSION_TAKEN_OVER:
            self._taken_over = True

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if self.protocols.refused(reason_code.value):
                log.info("MQTT: broker does not speak MQTT 5; using 3.1.1")
                return
            self.counters["refused"] += 1
            log.error("MQTT: broker refused the connection: %s%s", reason_code, refusal_hint(str(reason_code)))
            return
        self.counters["connects"] += 1
        self._up_since = time.monotonic()
        self.protocols.confirmed()
        self._backoff.reset()
        self._failures_logged = 0
        self.on_connected(client)
        self.connected.set()
        log.info("MQTT: connected to %s:%d (MQTT %s); %d events in the outbox", self.broker.host, self.broker.port,
                 self.protocols.current, self.waiting())
