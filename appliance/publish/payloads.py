"""Outgoing payloads (contract: DESIGN.md "Summary payload"), built from aggregates only.

Every payload names its JSON Schema in ``schema``; the schemas live in ``appliance/schemas/`` and the tests
validate real payloads against them.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from appliance.aggregate import WindowSummary

SUMMARY_SCHEMA = "emotion.summary/1"
STATUS_SCHEMA = "emotion.status/1"


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summary_payload(window: WindowSummary, device_id: str, seq: int, profile: str) -> dict:
    faces = None
    if not window.suppressed:
        faces = {"observations": window.observations, "distinct_faces": window.distinct_faces,
                 "observed_seconds": window.observed_s, "distribution": window.distribution}
    return {
        "schema": SUMMARY_SCHEMA,
        "event_id": uuid.uuid4().hex,
        "seq": seq,
        "device_id": device_id,
        "profile": profile,
        "window_start": iso_utc(window.start),
        "window_end": iso_utc(window.end),
        "faces": faces,
        "voice": None,
        "suppressed": window.suppressed,
        "suppressed_reason": window.reason,
        "historical": False,
    }


def status_payload(state: str, device_id: str, version: str, at: float | None = None, **extra) -> dict:
    payload = {"schema": STATUS_SCHEMA, "state": state, "device_id": device_id, "version": version}
    if at is not None:
        payload["at"] = iso_utc(at)
    payload.update(extra)
    return payload
