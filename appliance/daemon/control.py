"""The control plane: who wants the unit paused (pause file, signal, fleet), and the fleet's commands.

Commands arrive on the MQTT thread and go to a handler by name (as Frigate's communicator hands messages to its
receiver). ``status`` is answered at once. A pause or resume only records the wish: the loop applies every wish at
the start of its next tick (``apply``), so a window never mixes paused and unpaused time, and the reply goes out
when the change is made, saying whether the unit is still paused by someone else.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from appliance.publish.commands import Command, CommandError

log = logging.getLogger(__name__)

MAX_WAITING = 100           # pause/resume commands not yet applied; the publisher already limits their rate
FILE_CHECK_S = 0.5          # prompt for a person (or a GPIO button), and no syscall per tick


class ControlPlane:
    """Owns ``paused_by`` (a set of 'file', 'signal', 'remote'). ``on_change(paused_by, was, reason, now)`` runs on the
    loop thread whenever it changes; ``reply(command, ok, error)`` and ``status()`` reach the fleet."""

    def __init__(self, pause_file: Path, on_change: Callable[[set[str], set[str], str | None, float], None],
                 on_stats: Callable[[], None]):
        self.pause_file = pause_file
        self.on_change, self.on_stats = on_change, on_stats
        self.paused_by: set[str] = set()
        self.reply: Callable[[Command, bool, str | None], None] = lambda command, ok, error=None: None
        self.status: Callable[[], None] = lambda: None
        self._file_checked = float("-inf")
        self._signal: bool | None = None      # from a signal handler
        self._waiting: list[Command] = []     # pause/resume from the fleet, applied by the loop
        self._lock = threading.Lock()
        self.handlers: dict[str, Callable[[Command], None]] = {
            "pause": self._queue, "resume": self._queue,
            "status": lambda command: (self.status(), self.reply(command, True, None)),
            "stats": self._stats,
        }

    # --------------------------------------------------------------------------------------- any thread
    def deliver(self, command: Command) -> None:
        """The MQTT thread's receiver: must not block; raises CommandError for a command it cannot take."""
        handler = self.handlers.get(command.name)
        if handler is None:
            raise CommandError(f"unknown command {command.name!r}")
        handler(command)

    def request_pause(self, paused: bool) -> None:
        """From a signal handler: only records the wish."""
        self._signal = paused

    def _queue(self, command: Command) -> None:
        with self._lock:
            if len(self._waiting) >= MAX_WAITING:
                raise CommandError("busy: too many commands queued")
            self._waiting.append(command)

    def _stats(self, command: Command) -> None:
        self.on_stats()
        self.reply(command, True, None)

    # --------------------------------------------------------------------------------------- loop thread
    def check_file(self) -> None:
        """The pause file alone, before the first tick: a unit switched off in the shop starts paused."""
        if self.pause_file.exists():
            self.paused_by.add("file")

    def apply(self, now: float) -> None:
        """Every wish since the last tick, in order; ``on_change`` for each change, then the fleet's replies."""
        wanted = set(self.paused_by)
        if now - self._file_checked >= FILE_CHECK_S:
            self._file_checked = now
            (wanted.add if self.pause_file.exists() else wanted.discard)("file")
        if self._signal is not None:
            (wanted.add if self._signal else wanted.discard)("signal")
            self._signal = None
        if not self._waiting:
            self._change(wanted, now)
            return
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for command in waiting:
            error = None
            if command.name == "pause":
                wanted.add("remote")
            else:
                wanted.discard("remote")
                if wanted:
                    error = f"still paused locally ({', '.join(sorted(wanted))}); only the store can lift that"
            self._change(wanted, now, command.reason)
            self.reply(command, error is None, error)
            log.info("command %s%s: %s", command.name, f" ({command.reason})" if command.reason else "",
                     error or "done")

    def _change(self, wanted: set[str], now: float, reason: str | None = None) -> None:
        if wanted != self.paused_by:
            was, self.paused_by = self.paused_by, set(wanted)
            self.on_change(self.paused_by, was, reason, now)
