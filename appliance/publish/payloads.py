"""Outgoing payloads (contract: DESIGN.md "Summary payload"), built from aggregates only.

Every payload names its JSON Schema in ``schema``; the schemas live in ``appliance/schemas/`` and the tests
validate real payloads against them.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from appliance.windows.aggregate import WindowSummary
from appliance.windows.alerts import Alert

SUMMARY_SCHEMA = "emotion.summary/1"
ALERT_SCHEMA = "emotion.alert/1"
STATUS_SCHEMA = "emotion.status/1"
STATS_SCHEMA = "emotion.stats/1"


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(schema: str, device_id: str, seq: int, profile: str) -> dict:
    """What every event carries: its schema, a unique id for dedup, the device's sequence number."""
    return {"schema": schema, "event_id": uuid.uuid4().hex, "seq": seq, "device_id": device_id, "profile": profile}


def summary_payload(window: WindowSummary, device_id: str, seq: int, profile: str, shift: float = 0.0) -> dict:
    """``shift``: what the system clock has stepped since the window's times were taken (host/clock.py)."""
    faces = voice = None
    if window.distribution is not None:
        faces = {"observations": window.observations, "distinct_faces": window.distinct_faces,
                 "observed_seconds": window.observed_s, "distribution": window.distribution}
    if window.voice_distribution is not None:
        voice = {"speech_seconds": window.speech_s, "distribution": window.voice_distribution}
    return _event(SUMMARY_SCHEMA, device_id, seq, profile) | {
        "window_start": iso_utc(window.start + shift),
        "window_end": iso_utc(window.end + shift),
        "faces": faces,
        "voice": voice,
        "anger_index": window.anger_index,
        "suppressed": window.suppressed,
        "suppressed_reason": window.reason,
        "historical": False,
    }


def alert_payload(alert: Alert, device_id: str, seq: int, profile: str, shift: float = 0.0) -> dict:
    return _event(ALERT_SCHEMA, device_id, seq, profile) | {
        "kind": "anger",
        "at": iso_utc(alert.at + shift),
        "window_seconds": alert.window_s,
        "anger_index": alert.anger_index,
        "threshold": alert.threshold,
        "face_anger": alert.face_anger,
        "voice_anger": alert.voice_anger,
        "historical": False,
    }


def status_payload(state: str, device_id: str, version: str, at: float | None = None, **extra) -> dict:
    payload = {"schema": STATUS_SCHEMA, "state": state, "device_id": device_id, "version": version}
    if at is not None:
        payload["at"] = iso_utc(at)
    payload.update(extra)
    return payload


def stats_payload(device_id: str, seq: int, profile: str, at: float, interval_s: float, state: str, loop: dict,
                  stages: dict, camera: dict, microphone: dict | None, outbox: dict, mqtt: dict, system: dict) -> dict:
    """Loop health for the fleet: no perception result in here, only how well the unit runs."""
    return _event(STATS_SCHEMA, device_id, seq, profile) | {
        "at": iso_utc(at), "interval_seconds": round(interval_s, 3), "state": state, "loop": loop, "stages": stages,
        "camera": camera, "microphone": microphone, "outbox": outbox, "mqtt": mqtt, "system": system,
        "historical": False,
    }
