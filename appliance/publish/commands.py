"""Commands from the fleet (``<prefix>/<device_id>/cmd/<name>``): parsed strictly, never trusted.

A command is a topic plus an optional small JSON object. Anything else (unknown name, extra topic levels, more than
1 KiB, not UTF-8, not a JSON object, unknown keys, wrong types) is rejected with the reason, logged and answered on
``<prefix>/<device_id>/reply``; nothing a broker delivers can raise out of the MQTT thread.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from appliance.publish.payloads import iso_utc

MAX_BYTES = 1024
COMMANDS = ("pause", "resume", "status", "stats")
REPLY_SCHEMA = "emotion.reply/1"


class CommandError(ValueError):
    pass


@dataclass(frozen=True)
class Command:
    name: str
    request_id: str | None = None
    reason: str | None = None
    correlation_data: bytes | None = None   # MQTT 5: echoed on the reply so a requester can match it


def parse_command(topic: str, payload: bytes, base: str) -> Command:
    prefix = f"{base}/cmd/"
    if not topic.startswith(prefix):
        raise CommandError(f"not a command topic: {topic[:120]!r}")
    name = topic[len(prefix):]
    if name not in COMMANDS:
        raise CommandError(f"unknown command {name[:60]!r} (known: {', '.join(COMMANDS)})")
    if len(payload) > MAX_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes is over the {MAX_BYTES}-byte limit")
    if not payload.strip():
        return Command(name)
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CommandError(f"payload is not UTF-8 JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise CommandError(f"payload must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"request_id", "reason"})
    if unknown:
        raise CommandError(f"unknown keys {[str(k)[:40] for k in unknown][:5]} (allowed: request_id, reason)")
    request_id, reason = data.get("request_id"), data.get("reason")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 64):
        raise CommandError("request_id must be a string of at most 64 characters")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
        raise CommandError("reason must be a string of at most 200 characters")
    return Command(name, request_id, reason)


def salvage(topic: str, payload: bytes, base: str) -> Command:
    """What a rejected command still says about itself, so its error reply can be matched: the name if it is one,
    and a request_id that is a short string (never anything else from a payload that failed the checks)."""
    name = topic[len(f"{base}/cmd/"):] if topic.startswith(f"{base}/cmd/") else ""
    request_id = None
    if len(payload) <= MAX_BYTES:
        try:
            data = json.loads(payload.decode("utf-8"))
            value = data.get("request_id") if isinstance(data, dict) else None
            request_id = value if isinstance(value, str) and len(value) <= 64 else None
        except (UnicodeDecodeError, ValueError):
            pass
    return Command(name if name in COMMANDS else "", request_id)


class RateLimit:
    """A token bucket: ``burst`` at once, then ``per_minute``. Pause and resume each write an fsync'd audit line and
    republish the status; a flood of them must not turn into a flood of disk writes."""

    def __init__(self, burst: int = 10, per_minute: float = 10.0, clock=time.monotonic):
        self.burst, self.rate, self.clock = burst, per_minute / 60.0, clock
        self._tokens, self._at = float(burst), clock()

    def allow(self) -> bool:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def reply_payload(device_id: str, command: str | None, ok: bool, state: str, request_id: str | None = None,
                  error: str | None = None) -> dict:
    return {"schema": REPLY_SCHEMA, "device_id": device_id, "command": command, "request_id": request_id, "ok": ok,
            "state": state, "error": error, "at": iso_utc(time.time())}
