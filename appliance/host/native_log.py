"""Native libraries' chatter (MediaPipe, LiteRT, glog) into the daemon's log at debug level.

Those libraries write to file descriptor 2 directly, past Python's logging and past GLOG_minloglevel for some of
their lines (LiteRT's INFO lines, an alignment warning at the first inference). Around the few calls that print
(creating, first use and closing the face detector) fd 2 is pointed at a temporary file; what was written there
goes to the logger at DEBUG. A line of our own log format written meanwhile by another thread is passed through.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

OWN_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@contextmanager
def native_output_to(logger: logging.Logger) -> Iterator[list[str]]:
    """Yields a list that holds, once the block is left, the native lines it caught (for a caller that waits for a
    line it knows will come once)."""
    sys.stderr.flush()
    caught: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:                  # no fd 2 at all (a daemon started without one): nothing to redirect
        yield caught
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield caught
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if OWN_LINE.match(line):
                    print(line, file=sys.stderr, flush=True)
                elif line.strip():
                    caught.append(line)
                    logger.debug("native: %s", line)
