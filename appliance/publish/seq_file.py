"""The device's last seq, kept a second time outside the outbox database (one line, ``state.dir/seq``), so that
an outbox that is emptied, replaced or moved aside cannot take it along: dashboards must never see seq start again
at 1."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class SeqFileError(RuntimeError):
    pass


class SeqFile:
    def __init__(self, path: Path, sync: bool = True):
        self.path = Path(path).expanduser()
        self.sync = sync
        self._error: str | None = None

    def read(self) -> int | None:
        if not self.path.exists():
            return None
        try:
            return int(self.path.read_text().strip() or 0)
        except ValueError:
            raise SeqFileError(f"{self.path} is corrupt; refusing to restart seq at 1: write the last seq the "
                               "fleet saw into it (one number) and start again") from None

    def write(self, seq: int) -> None:
        """Atomically, after the outbox's commit: a failure here must not fail the event (it is stored; a retry would
        store it twice). The file catches up at the next event; the database is ahead of it meanwhile, and the larger
        one wins at the next start."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(f"{seq}\n")
                if self.sync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
            if self._error:
                log.warning("outbox: %s is written again", self.path)
            self._error = None
        except OSError as e:
            if self._error is None:
                log.error("outbox: cannot write %s (%s); seq is still in the outbox, and the file catches up when it "
                          "can", self.path, e.strerror or e)
            self._error = str(e)


def reconcile(stored: int | None, kept: int | None, outbox_path: Path, seq_path: Path) -> int:
    """The seq to continue from: the larger of the outbox's and the file's, with a warning where they disagree."""
    if stored is None and kept:
        log.warning("outbox %s holds no seq (new, emptied or replaced) while %s says %d: any events the old outbox "
                    "still held are lost; seq continues from %d", outbox_path, seq_path, kept, kept)
    elif stored is not None and kept is not None and kept > stored:
        log.warning("outbox %s is behind %s (seq %d < %d): an older copy? seq continues from %d", outbox_path,
                    seq_path, stored, kept, kept)
    return max(stored or 0, kept or 0)
