"""The device's last seq, kept a second time outside the outbox database (one line, ``state.dir/seq``), so that
an outbox that is emptied, replaced or moved aside cannot take it along: dashboards must never see seq start again
at 1."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


# The largest seq a dashboard reads exactly: JSON numbers are doubles in JavaScript (2^53 - 1). At 10 events a
# second a unit reaches it in millions of years, so a larger number is damage, not history.
SEQ_MAX = 2**53 - 1


class SeqFileError(RuntimeError):
    pass


def check_seq(value: int, where: str) -> int:
    if not 0 <= value <= SEQ_MAX:
        raise SeqFileError(f"{where} holds seq {value}, outside 0..{SEQ_MAX} (the largest a dashboard reads "
                           "exactly): it is damaged; write the last seq the fleet saw into it and start again")
    return value


class SeqFile:
    def __init__(self, path: Path, sync: bool = True):
        self.path = Path(path).expanduser()
        self.sync = sync
        self._error: str | None = None

    def read(self) -> int | None:
        if not self.path.exists():
            return None
        if not self.path.is_file():
            raise SeqFileError(f"{self.path} is not a file: move it aside, then write the last seq the fleet saw "
                               "into a file of that name (one number) and start again")
        try:
            text = self.path.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise SeqFileError(f"{self.path} cannot be read ({getattr(e, 'strerror', None) or e}): fix its "
                               "permissions, or write the last seq the fleet saw into it and start again") from None
        if not text:
            return 0
        if not text.isdigit() or len(text) > 20:
            raise SeqFileError(f"{self.path} is corrupt ({text[:24]!r}); refusing to restart seq at 1: write the "
                               "last seq the fleet saw into it (one number) and start again")
        return check_seq(int(text), str(self.path))

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
            self._error = f"{self.path} cannot be written ({e.strerror or e}): seq is kept only in the outbox"

    @property
    def error(self) -> str | None:
        """Why the file is behind the outbox, while it is."""
        return self._error


def reconcile(stored: int | None, kept: int | None, outbox_path: Path, seq_path: Path) -> int:
    """The seq to continue from: the larger of the outbox's and the file's, with a warning where they disagree."""
    if stored is None and kept:
        log.warning("outbox %s holds no seq (new, emptied or replaced) while %s says %d: any events the old outbox "
                    "still held are lost; seq continues from %d", outbox_path, seq_path, kept, kept)
    elif stored is not None and kept is not None and kept > stored:
        log.warning("outbox %s is behind %s (seq %d < %d): an older copy? seq continues from %d", outbox_path,
                    seq_path, stored, kept, kept)
    return max(stored or 0, kept or 0)
