"""The fixed-latency loop: an absolute schedule, a deadline per tick, the same stage timer for every stage.

Tick k is due at ``start + k * period`` (absolute, so work time never accumulates as drift). A tick that ends
after its deadline (its slot's end) is a deadline miss; the slots it overran are skipped, not run late in a
burst, and counted. Stage timings come from one ``StageTimer`` per tick so every stage is measured the same way.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from pydantic import Field

from appliance.section import Section


class LoopConfig(Section):
    rate_hz: float = Field(default=10.0, gt=0, le=120)
    cpu_wakeup_latency_us: int | None = Field(
        default=None, ge=0, le=1_000_000,
        description="while running, keep CPUs out of idle states slower than this to wake (us; 0 = poll, the "
                    "steadiest tick times, more power); unset = the kernel's choice")


@dataclass
class Tick:
    index: int            # slot number since start (skipped slots advance it too)
    scheduled: float      # when this slot began, on the scheduler's clock
    deadline: float       # scheduled + period
    started: float        # when the body actually started (>= scheduled)
    stages: dict[str, float] = field(default_factory=dict)   # seconds per stage
    items: dict[str, int] = field(default_factory=dict)      # work items of a stage (faces, VAD chunks)
    parts: dict[str, object] = field(default_factory=dict)   # a model stage's own pre/model/post (StageTimes)
    beside: dict[str, float] = field(default_factory=dict)   # seconds per stage of work done off the loop thread
                                                             # for this tick's results (the voice worker)
    finished: float = 0.0
    missed: bool = False

    def stage(self, name: str, clock: Callable[[], float] = time.perf_counter) -> "StageTimer":
        return StageTimer(self.stages, name, clock)

    def stage_time(self, name: str) -> float | None:
        """A stage's seconds for this tick, on the tick or beside it; None where it did not run."""
        return self.stages.get(name, self.beside.get(name))

    @property
    def latency(self) -> float:
        """From the slot's start to the end of the work: what a deadline is measured against."""
        return self.finished - self.scheduled


class StageTimer:
    """``with tick.stage("detect"):`` adds the block's duration to the tick's stage. A plain class rather than a
    generator-based context manager: it runs ~10 times a tick, and its own cost counts as loop overhead."""

    __slots__ = ("stages", "name", "clock", "t0")

    def __init__(self, stages: dict[str, float], name: str, clock: Callable[[], float]):
        self.stages, self.name, self.clock = stages, name, clock

    def __enter__(self) -> None:
        self.t0 = self.clock()

    def __exit__(self, *exc) -> None:
        self.stages[self.name] = self.stages.get(self.name, 0.0) + (self.clock() - self.t0)


class FixedRateScheduler:
    def __init__(self, rate_hz: float, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], object] | None = None, history: int = 3000):
        self.period = 1.0 / rate_hz
        self.clock = clock
        self._stop = threading.Event()
        # Waiting on the stop event (not time.sleep) lets stop() end a wait at once.
        self._wait = wait or self._stop.wait
        self.ticks = 0
        self.misses = 0
        self.skipped = 0
        self.recent: deque[Tick] = deque(maxlen=history)
        # Called with the slack (seconds) before each wait, on the loop thread: the benchmark samples the machine's
        # speed there, in the same state the ticks run in, without taking time from any tick.
        self.on_idle: Callable[[float], None] | None = None

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> Iterator[Tick]:
        """Yield one Tick per slot; the caller's work between yields is the tick's body."""
        start = self.clock()
        k = 0
        while not self._stop.is_set():
            scheduled = start + k * self.period
            if self.on_idle is not None and k:
                self.on_idle(scheduled - self.clock())
            delay = scheduled - self.clock()
            if delay > 0:
                self._wait(delay)
                if self._stop.is_set():
                    return
            tick = Tick(k, scheduled, scheduled + self.period, self.clock())
            yield tick
            tick.finished = self.clock()
            tick.missed = tick.finished > tick.deadline
            self.ticks += 1
            self.misses += tick.missed
            self.recent.append(tick)
            k += 1
            overrun_slots = int((tick.finished - start) / self.period) - k + 1 if tick.missed else 0
            if overrun_slots > 0:
                self.skipped += overrun_slots
                k += overrun_slots


def percentiles(values: list[float] | np.ndarray, qs=(50, 95, 99)) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds, the shape every latency report here uses."""
    a = np.asarray(values, dtype=float) * 1000.0
    if a.size == 0:
        return {f"p{q}_ms": 0.0 for q in qs} | {"max_ms": 0.0}
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in qs} | {"max_ms": round(float(a.max()), 3)}


def stage_percentiles(ticks: list[Tick], stages) -> dict[str, dict[str, float]]:
    """percentiles() of each stage over the ticks that ran it (on the tick or beside it); a stage that never ran is
    left out."""
    return {s: percentiles(times) for s in stages
            if (times := [v for t in ticks if (v := t.stage_time(s)) is not None])}
