"""The daemon's log lines: one record is one line whatever a record quotes, and a flood of one kind of line is a
count, not a flood.

Commands, topics and reasons come from the network; a newline in one of them would start a line of its own that
reads like the daemon's (``ERROR forged``). The formatter escapes every control character in a record's message;
a traceback, written by the daemon itself, keeps its lines.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

# C0 controls, DEL, C1 controls and the Unicode line and paragraph separators: anything a terminal or a log viewer
# may break a line at or interpret.
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = {c: ascii(chr(c))[1:-1] for c in _CONTROLS} | {ord("\t"): " "}


def one_line(text: str) -> str:
    """``text`` with every control character written as its escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return text.translate(_ESCAPES)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


class LogLimit:
    """The first ``burst`` lines of one kind in a period are logged; the rest are counted, and the count is logged
    once the period is over (at the next such line, or at ``flush``), so a flood costs a few lines a minute."""

    def __init__(self, logger: logging.Logger, what: str, burst: int = 5, period_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger, self.what, self.burst, self.period_s, self.clock = logger, what, burst, period_s, clock
        self._since = clock()
        self._logged = 0
        self.held = 0

    def __call__(self, level: int, msg: str, *args) -> None:
        self.flush()
        if self._logged < self.burst:
            self._logged += 1
            self.logger.log(level, msg, *args)
        else:
            self.held += 1

    def flush(self, force: bool = False) -> None:
        """Say how many lines were held back once the period is over (or now, with ``force``)."""
        now = self.clock()
        if not force and now - self._since < self.period_s:
            return
        if self.held:
            self.logger.warning("%d more %s in the last %.0f s (not logged one by one)", self.held, self.what,
                                now - self._since)
        self._since, self._logged, self.held = now, 0, 0
