"""Append-only local audit log: starts, config changes (by hash), pauses and resumes, model versions, stops.

One JSON object per line. Each line carries the sha256 of the line before it, so a deleted or edited line breaks
the chain and ``verify`` says where. Nothing personal is ever written here: only what the unit did.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

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
        self.failed = 0       # lines that could not be written (disk full, I/O error)
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
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                data = (line + "\n").encode()
                size = os.fstat(fd).st_size
                if os.write(fd, data) != len(data):
                    os.ftruncate(fd, size)      # a torn line would break the chain for every line after it
                    raise OSError(errno.ENOSPC, "short write (no space left on device)")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            # A full or failing disk must not stop a pause (or the shutdown that stores the last events): the line
            # is lost, counted and logged; the chain goes on from the last line that was written.
            self.failed += 1
            log.error("audit log %s: could not write a %s line (%s); %d lost so far: free space in %s", self.path,
                      event, e.strerror or e, self.failed, self.path.parent)
            return entry
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
