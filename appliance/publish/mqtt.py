"""MQTT client (paho-mqtt 2.x) that drains the outbox: events leave the disk only after the broker's PUBACK.

One thread owns the paho client (paho is driven with ``loop()``, never from two threads): it connects, with capped
exponential backoff and jitter, drains the outbox (``delivery``), publishes the retained status and any replies and
takes commands in (``control_channel``). The loop thread only writes to the outbox and calls ``set_status``/
``reply``; nothing here can block a tick.

Protocol: MQTT 5 where the broker speaks it (message expiry from the outbox's age bound, content type, the event's
schema, id and seq as user properties), 3.1.1 otherwise (``mqtt.protocol = "auto"`` falls back when the broker
refuses 5, or never answers it). TLS and mutual TLS from ``mqtt.tls``; the password from a file or the environment.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes

from appliance.publish.client import Topics, message_properties
from appliance.publish.commands import Command
from appliance.publish.config import BrokerAddress, MqttConfig
from appliance.publish.control_channel import ControlChannel
from appliance.publish.delivery import Delivery
from appliance.publish.link import CONNACK_TIMEOUT_S, Link
from appliance.publish.outbox import Outbox
from appliance.publish.payloads import status_payload

log = logging.getLogger(__name__)


class MqttPublisher:
    def __init__(self, cfg: MqttConfig, broker: BrokerAddress, device_id: str, version: str, outbox: Outbox,
                 max_age_s: float, retained_on_connect: list[tuple[str, dict]] | None = None,
                 rng: random.Random | None = None, on_command: Callable[[Command], None] | None = None):
        self.cfg, self.broker, self.device_id, self.version = cfg, broker, device_id, version
        self.outbox, self.max_age_s = outbox, max_age_s
        self.topics = Topics(cfg.topic_prefix, device_id)
        self.client_id = cfg.client_id or f"appliance-{device_id}"
        self.retained_on_connect = retained_on_connect or []
        self.counters = {"acked": 0, "connects": 0, "refused": 0, "rejected_commands": 0, "stalls": 0, "takeovers": 0}
        self.link = Link(cfg, broker, self.client_id, self.topics, device_id, version, self.counters, rng,
                         waiting=lambda: outbox.depth)
        self.connected = self.link.connected
        self.control = ControlChannel(self.topics, device_id, version, self.counters, on_command, self._wake_up)
        self.delivery = Delivery(outbox, cfg, self.topics, self.counters,
                                 lambda event: self._properties(event=event))
        self.link.on_new_client, self.link.on_connected = self._wire, self._on_connected
        self.link.on_duplicate = lambda problem: self.control.report("duplicate_device_id", problem)
        self.link.properties = self._properties
        self._stop_at: float | None = None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._last_expire = time.monotonic()
        self._acks_failing = False
        self._stalled = False
        # A broker that takes events and never acknowledges them keeps the connection alive (PINGRESP) while the
        # outbox waits: after this long the unit says so rather than stay 'online' in silence.
        self.stall_after_s = 2 * cfg.keepalive_s

    @property
    def protocol(self) -> str:
        return self.link.protocols.current

    @property
    def in_flight(self) -> int:
        return len(self.delivery.inflight)

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "MqttPublisher":
        log.info("MQTT: connecting to %s:%d as %s (protocol %s%s)", self.broker.host, self.broker.port,
                 self.client_id, self.cfg.protocol, ", TLS" if self.link.ssl else "")
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Send what the outbox holds (up to ``timeout``), a clean retained 'offline', then disconnect."""
        self._stop_at = time.monotonic() + timeout
        self._wake.set()
        self._thread.join(timeout + 5)

    # ------------------------------------------------------------------------------------------- any thread
    def set_status(self, state: str, **extra) -> None:
        self.control.set_status(state, **extra)

    def report_storage(self, error: str | None) -> None:
        self.control.report("storage_error", error)

    def reply(self, command: Command | None, ok: bool, error: str | None = None) -> None:
        self.control.reply(command, ok, error)

    def wake(self) -> None:
        """An event was added to the outbox: send it now rather than at the next poll."""
        self.delivery.more = True
        self._wake.set()

    def _wake_up(self) -> None:
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
                self.link.lost("internal error")
                self._wake.wait(1.0)
        self.control.flush_log(force=True)
        try:
            self._shutdown()
        except Exception:
            log.exception("MQTT: shutdown failed; events stay in the outbox")

    def _step(self) -> bool:
        """One pass of the thread's loop; True when it is time to stop."""
        now = time.monotonic()
        link = self.link
        if self._stop_at is not None and (not link.socket_up or now >= self._stop_at or self._drained()):
            return True
        if not link.socket_up:
            if now < link.next_attempt:
                self._wake.wait(min(link.next_attempt - now, 0.25))
                self._wake.clear()
                return False
            link.connect()
            return False
        rc = link.client.loop(timeout=0.05)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            link.lost(mqtt.error_string(rc))
            return False
        if not self.connected.is_set() and now > link.connack_deadline:
            link.lost(f"no CONNACK within {CONNACK_TIMEOUT_S:g} s")
            return False
        if self.connected.is_set():
            self.control.send(link.client, self._properties())
            self.delivery.drain(link.client)
        self.delivery.flush_acks()
        self._check_stall(now)
        self.link.check_stable(now)
        self.control.flush_log()
        if now - self._last_expire > 60:
            self._last_expire = now
            self.outbox.expire()
        return False

    def _check_stall(self, now: float) -> None:
        waited = self.delivery.waiting_s(now) if self.connected.is_set() else 0.0
        if waited > self.stall_after_s and not self._stalled:
            self._stalled = True
            self.counters["stalls"] += 1
            problem = (f"{len(self.delivery.inflight)} events sent to the broker unacknowledged for {waited:.0f} s "
                       f"(the limit: {self.stall_after_s:g} s, 2 keepalives); they stay in the outbox")
            log.error("MQTT: delivery stalled: %s; check the broker (its queue or storage may be full)", problem)
            self.control.report("delivery_stalled", problem)
        elif self._stalled and waited <= self.stall_after_s:
            self._stalled = False
            log.warning("MQTT: the broker acknowledges events again")
            self.control.report("delivery_stalled", None)

    def _drained(self) -> bool:
        return self.outbox.depth == 0 and not self.delivery.inflight and self.control.idle

    def _shutdown(self) -> None:
        client = self.link.client
        if self.link.socket_up and self.connected.is_set():
            offline = status_payload("offline", self.device_id, self.version, at=time.time(), reason="shutdown")
            info = self.control.publish_status(client, offline, self._properties())
            deadline = time.monotonic() + 2.0
            while not info.is_published() and time.monotonic() < deadline:
                if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            self.delivery.flush_acks()
            client.disconnect()
            client.loop(timeout=0.05)
        else:
            log.warning("MQTT: stopping while disconnected; the broker publishes the last will instead")
        if self.outbox.depth:
            log.warning("MQTT: %d events stay in the outbox; they are sent after the next start", self.outbox.depth)

    def _properties(self, packet: int = PacketTypes.PUBLISH, event=None):
        return message_properties(self.protocol, self.device_id, packet, event, self.max_age_s)

    def _wire(self, client: mqtt.Client) -> None:
        """A new paho client: nothing is in flight on it, so everything left in the outbox is sent again."""
        client.on_publish = self.delivery.on_publish
        client.on_message = self.control.on_message
        self.delivery.new_client()

    def _on_connected(self, client: mqtt.Client) -> None:
        self.delivery.connected()
        self.control.resend_status()    # the broker may have published our last will meanwhile
        for topic, payload in self.retained_on_connect:
            client.publish(topic, json.dumps(payload), qos=1, retain=True)
        client.subscribe(f"{self.topics.base}/cmd/#", qos=1)
