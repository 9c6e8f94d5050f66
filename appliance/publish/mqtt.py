"""MQTT client (paho-mqtt 2.x): QoS 1 events, retained status with an 'offline' last will, automatic reconnect.

While the broker is unreachable (at start or later) paho keeps QoS>0 messages in memory, bounded by
``mqtt.max_queued``, and sends them once connected; overflow is counted and logged. (A durable on-disk outbox
that survives a restart is the delivery issue's job; this class is where it plugs in.)
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time

import paho.mqtt.client as mqtt

from appliance.config import BrokerAddress, MqttConfig
from appliance.publish.commands import Command, CommandError, parse_command, reply_payload
from appliance.publish.payloads import status_payload

log = logging.getLogger(__name__)


class Topics:
    def __init__(self, prefix: str, device_id: str):
        self.base = f"{prefix}/{device_id}"

    def __getattr__(self, kind: str) -> str:  # summary, alert, status, stats
        return f"{self.base}/{kind}"


class MqttPublisher:
    def __init__(self, cfg: MqttConfig, broker: BrokerAddress, device_id: str, version: str):
        self.cfg = cfg
        self.broker = broker
        self.device_id = device_id
        self.version = version
        self.topics = Topics(cfg.topic_prefix, device_id)
        self.connected = threading.Event()
        self.sent = 0
        self.dropped = 0
        self._status: dict = status_payload("online", device_id, version)
        self._lock = threading.Lock()
        self._failures = 0
        self._stopping = False
        # Commands are parsed on paho's thread and executed by the loop, between ticks.
        self.commands: queue.Queue[Command] = queue.Queue(maxsize=100)
        self.rejected = 0
        self.state = "online"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"appliance-{device_id}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.max_queued_messages_set(cfg.max_queued)
        client.reconnect_delay_set(int(max(1, cfg.reconnect_min_s)), int(max(1, cfg.reconnect_max_s)))
        client.will_set(self.topics.status, json.dumps(status_payload(
            "offline", device_id, version, reason="connection lost")), qos=1, retain=True)
        if broker.tls:
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        self._client = client

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "MqttPublisher":
        log.info("MQTT: connecting to %s:%d as appliance-%s", self.broker.host, self.broker.port, self.device_id)
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()   # paho's thread retries the first connection too
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Publish a clean retained 'offline', flush what is queued, disconnect."""
        self._stopping = True
        if self.connected.is_set():
            offline = status_payload("offline", self.device_id, self.version, at=time.time(), reason="shutdown")
            info = self._client.publish(self.topics.status, json.dumps(offline), qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while not info.is_published() and time.monotonic() < deadline and self.connected.is_set():
                time.sleep(0.02)
        else:
            log.warning("MQTT: stopping while disconnected; the broker will publish the last will instead")
        self._client.disconnect()
        self._client.loop_stop()

    # ------------------------------------------------------------------------------------------- publishing
    def set_status(self, state: str, **extra) -> None:
        with self._lock:
            self.state = state
            self._status = status_payload(state, self.device_id, self.version, at=time.time(), **extra)
        self._publish(self.topics.status, self._status, retain=True)

    def publish(self, kind: str, payload: dict) -> None:
        """Queue one event (summary, alert, stats) at the configured QoS; never blocks the loop."""
        self._publish(getattr(self.topics, kind), payload, retain=False)

    def _publish(self, topic: str, payload: dict, retain: bool) -> None:
        info = self._client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=self.cfg.qos,
                                    retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            log.error("MQTT: in-memory queue full (%d); dropped %s (total dropped %d)", self.cfg.max_queued, topic,
                      self.dropped)
        else:
            self.sent += 1

    # ------------------------------------------------------------------------------------------- callbacks
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT: broker refused the connection: %s", reason_code)
            return
        self._failures = 0
        self.connected.set()
        log.info("MQTT: connected to %s:%d", self.broker.host, self.broker.port)
        with self._lock:
            status = dict(self._status)
        # Re-assert availability on every (re)connect: the broker may have published our last will meanwhile.
        client.publish(self.topics.status, json.dumps(status), qos=1, retain=True)
        client.subscribe(f"{self.topics.base}/cmd/#", qos=1)

    def _on_message(self, client, userdata, message) -> None:
        try:
            command = parse_command(message.topic, message.payload, self.topics.base)
            self.commands.put_nowait(command)
        except CommandError as e:
            self.rejected += 1
            log.warning("MQTT: rejected command on %s: %s", message.topic[:120], e)
            self.reply(None, False, error=str(e)[:300])
        except queue.Full:
            self.rejected += 1
            log.warning("MQTT: command queue full; rejected %s", message.topic[:120])
            self.reply(None, False, error="busy: too many commands queued")
        except Exception as e:  # paho must never see an exception from us: it would drop the connection
            self.rejected += 1
            log.exception("MQTT: command handling failed: %s", e)

    def reply(self, command: Command | None, ok: bool, error: str | None = None) -> None:
        payload = reply_payload(self.device_id, command.name if command else None, ok, self.state,
                                command.request_id if command else None, error)
        self._publish(self.topics.reply, payload, retain=False)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning("MQTT: disconnected (%s); reconnecting with backoff", reason_code)
        self.connected.clear()

    def _on_connect_fail(self, client, userdata) -> None:
        self._failures += 1
        # First failure and then every 10th, so a long outage does not flood the log.
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning("MQTT: broker %s:%d unreachable (attempt %d); retrying, events are queued",
                        self.broker.host, self.broker.port, self._failures)
