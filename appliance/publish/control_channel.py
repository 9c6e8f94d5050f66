"""What the unit says and hears besides its events: the retained status, replies, and commands coming in.

Everything here is called from two threads (the loop and the writer set the status and reply; the MQTT thread
sends and receives), so it keeps its own lock and queue; ``send`` runs on the MQTT thread only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.publish.client import Topics
from appliance.publish.commands import Command, CommandError, RateLimit, parse_command, reply_payload, salvage
from appliance.host.logs import LogLimit
from appliance.publish.payloads import status_payload

log = logging.getLogger(__name__)

LIMITED = ("pause", "resume", "stats")     # commands that cost a disk write or an event: under one token bucket


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: str
    retain: bool
    properties: Properties | None = None


class ControlChannel:
    def __init__(self, topics: Topics, device_id: str, version: str, counters: dict,
                 on_command: Callable[[Command], None] | None, wake: Callable[[], None]):
        self.topics, self.device_id, self.version, self.counters = topics, device_id, version, counters
        # Commands are parsed (and pause/resume floods limited) on the MQTT thread, then handed to the receiver
        # (the daemon's control plane), which must not block. Without one, a command is refused.
        self.on_command = on_command
        self.state = "online"
        self._wake = wake
        self._lock = threading.Lock()
        self._status: dict = status_payload("online", device_id, version)
        self._dirty = True
        # What the retained status carries while it lasts: storage_error, delivery_stalled, duplicate_device_id.
        self._problems: dict[str, str] = {}
        self._outgoing: deque[Outgoing] = deque(maxlen=200)
        # Pause and resume write an fsync'd audit line, stats an event with its own seq: one bucket for the three.
        self._limited = RateLimit()
        self._rejections = LogLimit(log, "rejected commands")

    # --------------------------------------------------------------------------------------- any thread
    def set_status(self, state: str, **extra) -> None:
        with self._lock:
            self.state = state
            self._status = status_payload(state, self.device_id, self.version, at=time.time(), **extra)
            self._status.update(self._problems)
            self._dirty = True
        self._wake()

    def report(self, key: str, problem: str | None) -> None:
        """A problem the retained status carries under ``key`` while it lasts (None: it is over): the outbox cannot
        be written (no stats event can be stored meanwhile), the broker does not acknowledge, another client
        took the session."""
        with self._lock:
            if problem == self._problems.get(key):
                return
            self._problems.pop(key, None)
            self._status.pop(key, None)
            if problem:
                self._problems[key] = self._status[key] = problem
            self._dirty = True
        self._wake()

    def reply(self, command: Command | None, ok: bool, error: str | None = None) -> None:
        self._outgoing.append(self._reply_message(command, ok, error))
        self._wake()

    def _reply_message(self, command: Command | None, ok: bool, error: str | None) -> Outgoing:
        payload = reply_payload(self.device_id, (command.name or None) if command else None, ok, self.state,
                                command.request_id if command else None, error)
        properties = None
        if command is not None and command.correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = command.correlation_data
        return Outgoing(self.topics.reply, json.dumps(payload), False, properties)

    def resend_status(self) -> None:
        """After a (re)connect: the broker may have published the last will meanwhile."""
        with self._lock:
            self._dirty = True

    @property
    def idle(self) -> bool:
        return not self._outgoing and not self._dirty

    def flush_log(self, force: bool = False) -> None:
        """The count of rejections not logged one by one, once a minute (MQTT thread) and at shutdown."""
        self._rejections.flush(force)

    # --------------------------------------------------------------------------------------- MQTT thread
    def send(self, client: mqtt.Client, properties: Properties | None) -> None:
        with self._lock:
            status, dirty = self._status, self._dirty
            self._dirty = False
        if dirty:
            self.publish_status(client, status, properties)
        while self._outgoing:
            self._publish(client, self._outgoing.popleft())

    @staticmethod
    def _publish(client: mqtt.Client, out: Outgoing) -> None:
        client.publish(out.topic, out.payload, qos=1, retain=out.retain, properties=out.properties)

    def _refuse(self, client: mqtt.Client, command: Command | None, error: str) -> None:
        # Straight to paho's own queue, not through the bounded hand-off queue: one read of a flood can take
        # hundreds of commands before ``send`` runs again, and every one of them is answered.
        self._publish(client, self._reply_message(command, False, error))

    def publish_status(self, client: mqtt.Client, status: dict, properties) -> mqtt.MQTTMessageInfo:
        return client.publish(self.topics.status, json.dumps(status), qos=1, retain=True, properties=properties)

    def on_message(self, client, userdata, message) -> None:
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
            if command.name in LIMITED and not self._limited.allow():
                self.counters["rejected_commands"] += 1
                self._rejections(logging.WARNING, "MQTT: %s rejected: over the rate limit", command.name)
                self._refuse(client, command, f"busy: at most {self._limited.burst} pause/resume/stats commands at "
                                              "once, then 10 a minute")
                return
            if self.on_command is None:
                raise CommandError("this process takes no commands")
            self.on_command(command)
        except CommandError as e:
            self.counters["rejected_commands"] += 1
            self._rejections(logging.WARNING, "MQTT: rejected command on %s: %s", message.topic[:120], e)
            self._refuse(client, about, str(e)[:300])
        except Exception as e:  # paho must never see an exception from us: it would drop the connection
            self.counters["rejected_commands"] += 1
            log.exception("MQTT: command handling failed: %s", e)
