"""Which clock the daemon trusts for what.

- **Ages and order** (how old an event is, whether it was made before a connection came up, when the outbox
  drops it): ``CLOCK_BOOTTIME``, which never steps, counts time spent suspended and is the same for every process
  of one boot, so a restarted daemon reads its outbox's ages right. Across a reboot only the wall clock is left:
  the outbox re-bases a previous boot's events from their wall-clock stamps once, at open (``boot_id``).
- **Stamps** (a window's start and end, an alert's time): the wall clock, read through ``WallClock``, which is
  steady within a run and follows a step of the system clock (NTP on a unit without a real-time clock) instead
  of carrying the start's wrong date for the rest of the run.
"""

from __future__ import annotations

import ctypes
import logging
import time
import uuid
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

STEP_S = 1.0            # NTP slews offsets below 128 ms and moves CLOCK_MONOTONIC with the wall clock while it does
TIME_ERROR = 5          # adjtimex(2): the clock is not synchronised
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_clock() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    """This boot's id; a fresh one per process where the kernel does not say (every start then re-bases)."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return uuid.uuid4().hex


def clock_state() -> str:
    """'synchronized', 'unsynchronized' (no NTP or PTP has set it since boot) or 'unknown', from adjtimex(2)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = ctypes.create_string_buffer(512)      # struct timex with modes = 0: read only, no privilege needed
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return "unknown"
    if state < 0:
        return "unknown"
    return "unsynchronized" if state == TIME_ERROR else "synchronized"


class WallClock:
    """Wall time for stamps: the loop's windows and alerts, and the outbox's wall stamps, which follow its steps.
    ``run_time(mono)`` never jumps (the start's wall clock plus the monotonic
    clock: windows and alerts measure spans in it); ``offset`` is what the system clock has stepped since, and
    ``check`` follows a step as soon as the loop sees it."""

    def __init__(self, follow_steps: bool = True, wall: Callable[[], float] = time.time, step_s: float = STEP_S):
        self.follow_steps, self._wall, self.step_s = follow_steps, wall, step_s
        self.base = 0.0
        self.offset = 0.0
        self.steps = 0

    def start(self, mono: float) -> float:
        self.base = self._wall() - mono
        return self.run_time(mono)

    def run_time(self, mono: float) -> float:
        return mono + self.base

    def now(self, mono: float) -> float:
        return mono + self.base + self.offset

    def check(self, mono: float) -> float | None:
        """The step (seconds, + forward) when the system clock moved by more than ``step_s`` since the last look."""
        if not self.follow_steps:
            return None
        step = self._wall() - self.now(mono)
        if abs(step) <= self.step_s:
            return None
        self.offset += step
        self.steps += 1
        return step
