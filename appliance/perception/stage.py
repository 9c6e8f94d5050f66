"""The one call shape of every perception stage, and the times it reports.

Each stage (face detector, expression model, VAD, log-mel features, tone model) is called as ``stage(x)`` with its
typed input and returns its typed output; after each call ``stage.times`` holds the seconds that call spent in
pre-processing, in the network and in post-processing, and how many items it handled (as jetson-inference's
networks each time their own Pre / Network / Post). The loop stores them per tick (``Tick.parts``), so stats, the
benchmark and ``compare`` read one structure.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Protocol


class StageTimes(NamedTuple):
    # A tuple of numbers: the loop keeps one per model stage for every tick in its history, and the garbage collector
    # stops tracking tuples of numbers, so thousands of them add nothing to a full collection's pause.
    pre: float = 0.0       # seconds
    model: float = 0.0
    post: float = 0.0
    items: int = 0

    @property
    def total(self) -> float:
        return self.pre + self.model + self.post


class PerceptionStage(Protocol):
    name: str
    times: StageTimes

    def __call__(self, x: Any) -> Any: ...


class Stopwatch:
    """Laps of one call: ``lap("pre")`` adds the time since the last lap to that part; ``done()`` the times."""

    __slots__ = ("pre", "model", "post", "items", "_last")

    def __init__(self, items: int = 0):
        self.pre = self.model = self.post = 0.0
        self.items = items
        self._last = time.perf_counter()

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        setattr(self, part, getattr(self, part) + now - self._last)
        self._last = now

    def absorb(self, times: StageTimes) -> None:
        """Another stage's call, timed by itself, as parts of this one (and not again in the next lap)."""
        self.pre += times.pre
        self.model += times.model
        self.post += times.post
        self._last = time.perf_counter()

    def done(self, items: int | None = None) -> StageTimes:
        return StageTimes(self.pre, self.model, self.post, self.items if items is None else items)
