"""Small persistent device state: the event sequence number that must survive restarts."""

from __future__ import annotations

import os
from pathlib import Path


class SeqCounter:
    """Strictly increasing per-device ``seq``, persisted before it is handed out (a crash skips, never repeats)."""

    def __init__(self, path: Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._last = int(self.path.read_text().strip() or 0)
        except FileNotFoundError:
            self._last = 0
        except ValueError as e:
            raise RuntimeError(f"{self.path} is corrupt ({e}); refusing to restart seq at 1") from None

    @property
    def last(self) -> int:
        return self._last

    def next(self) -> int:
        value = self._last + 1
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(str(value))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._last = value
        return value
