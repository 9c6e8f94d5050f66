"""The state folder (outbox, seq, audit log, pause file) belongs to one running daemon at a time.

Two daemons on one folder would hand out the same seq twice (each with its own event) and share one MQTT client
id, so the broker would throw them off in turn; the honest answer is to refuse the second at start. The lock is
``flock`` on ``<state>/lock``: the kernel drops it when the holder exits, SIGKILL included, so a crash never
leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from pydantic import Field

from appliance.section import FilePath, Section


class StateConfig(Section):
    dir: FilePath = Field(default=Path("~/.local/state/appliance"), description="persistent device state (outbox with "
                      "seq, audit log, pause file)")

    @property
    def path(self) -> Path:
        return Path(self.dir).expanduser()

    # The files in it, named here only.
    @property
    def outbox(self) -> Path:
        return self.path / "outbox.sqlite3"

    @property
    def seq(self) -> Path:
        return self.path / "seq"

    @property
    def audit(self) -> Path:
        return self.path / "audit.log"

    @property
    def lock(self) -> Path:
        return self.path / "lock"

    @property
    def paused(self) -> Path:
        return self.path / "paused"


class StateDirError(RuntimeError):
    """The state folder cannot be used: not a folder, not writable, or in use by another daemon."""


def prepare(directory: Path) -> Path:
    """The folder, created if missing; a clear error where it cannot be."""
    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise StateDirError(f"state.dir {path} is a file, not a folder: point state.dir elsewhere or move the file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StateDirError(f"state.dir {path} cannot be created ({e.strerror}): create it with write access for "
                            f"this user ({os.getuid()}) or point state.dir at a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateDirError(f"state.dir {path} is not writable by this user ({os.getuid()}): fix its owner or "
                            "permissions, or point state.dir at a writable folder")
    return path


class StateDirLock:
    def __init__(self, directory: Path):
        self._fd: int | None = None
        prepare(directory)
        self.path = StateConfig(dir=directory).lock

    def acquire(self) -> "StateDirLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise StateDirError(f"another appliance process (pid {holder}) is using state dir "
                                    f"{self.path.parent}: stop it first (systemctl stop appliance), or give this one "
                                    "its own state.dir and device.id") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __del__(self):      # a pipeline that failed half-way through its set-up must not keep the folder locked
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)      # closing the descriptor drops the lock
            self._fd = None
