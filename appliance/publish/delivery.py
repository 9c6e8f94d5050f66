"""The outbox drained to the broker: events in seq order, at most ``mqtt.inflight`` unacknowledged, each deleted
from the outbox only after the broker's PUBACK. Runs on the MQTT thread only.

An event counts as ``historical`` when it was made before the current connection came up (it waited out an outage
or a restart), or when it goes out more than ``LIVE_S`` after it was made (it waited in memory while the disk was
full, or behind a full in-flight window): a dashboard must not read it as live. Both from the boot clock
(``host/clock.py``): a step of the wall clock changes neither.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

import paho.mqtt.client as mqtt

from appliance.publish.client import Topics
from appliance.publish.config import MqttConfig
from appliance.publish.outbox import Outbox, PendingEvent

log = logging.getLogger(__name__)

LIVE_S = 10.0      # a window is published within a second of its end while all is well


class Delivery:
    def __init__(self, outbox: Outbox, cfg: MqttConfig, topics: Topics, counters: dict,
                 properties: Callable[[PendingEvent], object]):
        self.outbox, self.cfg, self.topics, self.counters = outbox, cfg, topics, counters
        self.properties = properties
        self.inflight: dict[int, int] = {}     # paho mid -> outbox seq
        self._sent: dict[int, float] = {}      # paho mid -> when it was handed to paho (monotonic)
        self._acked: list[int] = []
        self._cursor = 0                       # highest seq handed to paho on this client
        # Whether the outbox may hold events past the cursor: the outbox is read only then, not on every poll, so
        # an idle link costs the loop's process no database work (and no GIL) 20 times a second.
        self.more = True
        self._connected_at = 0.0               # boot clock

    def new_client(self) -> None:
        """A new client has nothing in flight: everything left in the outbox is sent again."""
        self.inflight.clear()
        self._sent.clear()
        self._cursor = 0
        self.more = True

    def connected(self) -> None:
        self._connected_at = self.outbox.clock()
        self.more = True

    def drain(self, client: mqtt.Client) -> None:
        room = self.cfg.inflight - len(self.inflight)
        if room <= 0 or not self.more:
            return
        self.more = False
        events = self.outbox.pending(self._cursor, room)
        if len(events) == room:
            self.more = True     # the window is full: there may be more behind it
        for event in events:
            payload = event.payload
            if event.made < self._connected_at or event.age_s > LIVE_S:
                data = json.loads(payload)
                data["historical"] = True
                payload = json.dumps(data, separators=(",", ":"))
            info = client.publish(f"{self.topics.base}/{event.kind}", payload, qos=self.cfg.qos,
                                  properties=self.properties(event))
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("MQTT: publish of seq %d failed (%s); retried", event.seq, mqtt.error_string(info.rc))
                self.more = True
                break
            self.inflight[info.mid] = event.seq
            self._sent[info.mid] = time.monotonic()
            self._cursor = event.seq

    def on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        seq = self.inflight.pop(mid, None)
        self._sent.pop(mid, None)
        if seq is None:
            return   # status, reply, discovery: not outbox events
        if reason_code.is_failure:
            # MQTT 5 only: the broker took the event and will never deliver it (e.g. not authorised for the topic).
            self.outbox.drop(seq, f"broker refused it: {reason_code}")
            return
        self._acked.append(seq)

    def waiting_s(self, now: float) -> float:
        """How long the oldest event in flight has waited for the broker's acknowledgement (0 with none)."""
        return now - min(self._sent.values()) if self._sent else 0.0

    def flush_acks(self) -> None:
        if self._acked:
            self.outbox.ack(self._acked)
            self.counters["acked"] += len(self._acked)
            self._acked = []
