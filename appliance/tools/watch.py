"""The fleet view behind ``appliance watch``: every unit seen on the broker, one row each.

It reads only what units publish for the fleet (retained status, summaries, alerts, stats) and keeps the latest of
each per unit. Anything that is not a valid payload on those topics is counted and skipped: a dashboard must not
fall over because one unit (or an intruder) sent junk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

KINDS = ("status", "summary", "alert", "stats")
PROBLEMS = ("storage_error", "delivery_stalled", "duplicate_device_id")


@dataclass
class UnitView:
    device_id: str
    state: str = "?"
    version: str = ""
    paused_by: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)      # what the retained status carries while it lasts
    last_seen: float = 0.0
    last_window_end: str | None = None
    anger_index: float | None = None
    distinct_faces: int | None = None
    speech_s: float | None = None
    suppressed: str | None = None
    alerts: int = 0
    last_alert: str | None = None
    fps: float | None = None
    misses: int | None = None
    outbox: int | None = None
    cpu: float | None = None
    temperature: float | None = None
    historical: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class FleetView:
    def __init__(self, prefix: str = "emotion", clock=time.time):
        self.prefix = prefix
        self.clock = clock
        self.units: dict[str, UnitView] = {}
        self.skipped = 0

    def subscriptions(self) -> list[str]:
        return [f"{self.prefix}/+/{kind}" for kind in KINDS]

    def update(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != len(self.prefix.split("/")) + 2 or parts[-1] not in KINDS:
            self.skipped += 1
            return
        device, kind = parts[-2], parts[-1]
        try:
            data = json.loads(payload)
            if not isinstance(data, dict) or data.get("device_id") != device:
                raise ValueError("not this unit's payload")
            # Applied to a copy: a payload that fails half-way must change nothing.
            unit = replace(self.units.get(device) or UnitView(device))
            getattr(self, f"_{kind}")(unit, data)
        except (ValueError, TypeError, KeyError, AttributeError):
            self.skipped += 1
            return
        self.units[device] = unit
        unit.last_seen = self.clock()
        unit.historical += bool(data.get("historical"))

    @staticmethod
    def _status(unit: UnitView, d: dict) -> None:
        unit.state = str(d["state"])
        unit.version = str(d.get("version", ""))
        unit.paused_by = list(d.get("paused_by", []))
        unit.problems = [key for key in PROBLEMS if key in d]

    @staticmethod
    def _summary(unit: UnitView, d: dict) -> None:
        unit.last_window_end = d["window_end"]
        unit.anger_index = d.get("anger_index")
        unit.suppressed = d.get("suppressed_reason") if d.get("suppressed") else None
        unit.distinct_faces = d["faces"]["distinct_faces"] if d.get("faces") else None
        unit.speech_s = d["voice"]["speech_seconds"] if d.get("voice") else None

    @staticmethod
    def _alert(unit: UnitView, d: dict) -> None:
        unit.alerts += 1
        unit.last_alert = d["at"]

    @staticmethod
    def _stats(unit: UnitView, d: dict) -> None:
        unit.fps = d["loop"]["fps"]
        unit.misses = d["loop"]["deadline_misses_total"]
        unit.outbox = d["outbox"]["depth"]
        unit.cpu = d["system"]["cpu_percent"]
        unit.temperature = d["system"]["temperature_c"]

    # ------------------------------------------------------------------------------------------- rendering
    COLUMNS = ("unit", "state", "version", "last window", "anger", "faces", "speech", "alerts", "fps", "misses",
               "outbox", "cpu%", "temp", "seen")

    def rows(self) -> list[tuple[str, ...]]:
        now = self.clock()
        rows = []
        for unit in sorted(self.units.values(), key=lambda u: u.device_id):
            state = unit.state + (f" ({','.join(unit.paused_by)})" if unit.paused_by else "")
            state += "".join(f" !{key}" for key in unit.problems)
            window = _clock(unit.last_window_end) + (f" {unit.suppressed}" if unit.suppressed else "")
            rows.append((unit.device_id, state, unit.version, window, _num(unit.anger_index, "{:.2f}"),
                         _num(unit.distinct_faces), _num(unit.speech_s, "{:.1f}s"),
                         str(unit.alerts) + (f" @{_clock(unit.last_alert)}" if unit.last_alert else ""),
                         _num(unit.fps, "{:.1f}"), _num(unit.misses), _num(unit.outbox), _num(unit.cpu, "{:.0f}"),
                         _num(unit.temperature, "{:.0f}C"), f"{now - unit.last_seen:.0f}s ago"))
        return rows

    def render(self) -> str:
        rows = [self.COLUMNS] + self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.COLUMNS))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        online = sum(u.state == "online" for u in self.units.values())
        footer = f"{len(self.units)} units, {online} online"
        if self.skipped:
            footer += f"; {self.skipped} messages skipped (not a valid payload for their topic)"
        return "\n".join(lines + [footer])


def _num(value, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _clock(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return "?"


class WatchError(RuntimeError):
    """The broker could not be reached or refused the dashboard; the message says why."""


class FleetWatcher:
    """A ``FleetView`` fed by its own MQTT client (a thread of paho's); read it with ``render``/``as_json``."""

    def __init__(self, mqtt_cfg, url: str, client_id: str):
        import threading

        from appliance.publish.config import parse_broker_url
        from appliance.publish.client import check_setup, tool_client

        self.url = url
        self.addr = parse_broker_url(url)
        check_setup(mqtt_cfg, self.addr)
        self.mqtt_cfg = mqtt_cfg
        self.view = FleetView(mqtt_cfg.topic_prefix)
        self.connected = threading.Event()
        self.refused: str | None = None
        self._lock = threading.Lock()
        self._client = tool_client(mqtt_cfg, self.addr, client_id)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def start(self) -> "FleetWatcher":
        from appliance.publish.client import describe_connect_error

        try:
            self._client.connect(self.addr.host, self.addr.port, keepalive=30)
        except OSError as e:
            raise WatchError(describe_connect_error(e, self.addr, self.mqtt_cfg)) from None
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def render(self) -> str:
        with self._lock:
            return self.view.render()

    def as_json(self) -> str:
        with self._lock:
            return json.dumps([u.as_dict() for u in self.view.units.values()], indent=1)

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            return
        self.connected.set()
        for topic in self.view.subscriptions():
            client.subscribe(topic, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.view.update(message.topic, message.payload)
