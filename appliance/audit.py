"""Append-only local audit log: starts, config changes (by hash), pauses and resumes, model versions, stops.

One JSON object per line. Each line carries the sha256 of the line before it, so a deleted or edited line breaks
the chain and ``verify`` says where. Nothing personal is ever written here: only what the unit did.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

GENESIS = "0" * 64


def config_hash(config) -> str:
    data = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


class AuditLog:
    def __init__(self, path: Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prev = GENESIS
        self._last_config: str | None = None
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    self._prev = hashlib.sha256(line.encode()).hexdigest()
                    entry = json.loads(line)
                    if entry.get("event") == "start":
                        self._last_config = entry.get("config_sha256")

    def append(self, event: str, **fields) -> dict:
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields,
                 "prev": self._prev}
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        # O_APPEND: concurrent writers cannot overwrite each other; fsync: a power cut keeps what was logged.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._prev = hashlib.sha256(line.encode()).hexdigest()
        return entry

    def start(self, config, version: str, models: list[dict]) -> None:
        digest = config_hash(config)
        if self._last_config is not None and self._last_config != digest:
            self.append("config_changed", previous_sha256=self._last_config, config_sha256=digest)
        self.append("start", version=version, config_sha256=digest, purpose=config.purpose,
                    jurisdiction=config.privacy.jurisdiction, profile=config.device.profile, models=models)
        self._last_config = digest


def verify(path: Path) -> tuple[bool, int, str]:
    """(intact, lines checked, what is wrong)."""
    prev = GENESIS
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    for n, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            return False, n, f"line {n} is not JSON"
        if entry.get("prev") != prev:
            return False, n, f"line {n} does not follow line {n - 1} (a line was removed, inserted or edited)"
        prev = hashlib.sha256(line.encode()).hexdigest()
    return True, len(lines), "intact"
