"""What every source shares: its error type, its states, and how a state change is logged and reported."""

from __future__ import annotations

import enum
import logging
import threading
from typing import Callable

log = logging.getLogger("appliance.sources")


class SourceError(RuntimeError):
    """A source that cannot work as configured (missing file, undecodable file, unsupported pipeline)."""


class SourceState(str, enum.Enum):
    STARTING = "starting"
    OK = "ok"
    RETRYING = "retrying"
    STALLED = "stalled"     # open, but nothing arrives (a blocked read, a frozen stream)
    ENDED = "ended"


class ReportsState:
    """Mixin: ``state``/``detail`` attributes, every change logged, state changes passed to ``on_state``."""

    state: SourceState = SourceState.STARTING
    detail: str = ""
    _on_state: Callable[[SourceState, str], None] | None = None

    def describe(self) -> str:
        raise NotImplementedError

    def _set_state(self, state: SourceState, detail: str = "") -> None:
        changed = state != self.state
        if changed or detail != self.detail:
            self.state, self.detail = state, detail
            level = logging.WARNING if state in (SourceState.RETRYING, SourceState.STALLED) else logging.INFO
            log.log(level, "%s: %s%s", self.describe(), state.value, f" ({detail})" if detail else "")
        if changed and self._on_state:
            self._on_state(state, detail)


class ThreadedSource(ReportsState):
    """A source that produces in its own daemon thread (``_run``) until ``stop()``."""

    def __init__(self, name: str, on_state: Callable[[SourceState, str], None] | None = None):
        self._on_state = on_state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.state = SourceState.STARTING
        self.detail = ""

    def _run(self) -> None:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def ended(self) -> bool:
        return self.state == SourceState.ENDED
