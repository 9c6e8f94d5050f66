"""The voice's heavy work beside the fixed-rate loop, not on it.

Every ``voice.step_s`` of speech the loop has a 2 s segment to classify: its log-mel and prosody (numpy) and the
tone model (ONNX Runtime) take several ms together, as long as the rest of a tick, and on the tick they made the
ticks that ran them the ones that overran at 30 Hz. The loop now only hands the segment over (``submit``, never
blocks) and takes finished results at its next ticks (``take``); a thread of its own classifies in between, on the
second core where there is one (numpy and ONNX Runtime release the GIL for their work).

Bounded: at most ``depth`` segments wait. When the worker falls behind, the oldest waiting segment is dropped (a
newer one says more about now) and counted; the window's voice figures come from the segments classified.

A replay (``eval video``/``eval sessions``, tests) runs the loop on a simulated clock as fast as it computes: there
the worker classifies inline, at the tick that submitted, so a replay gives the same figures on every machine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from appliance.perception.stage import StageTimes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoiceResult:
    probabilities: np.ndarray       # (1, labels)
    anger: float                    # the anger head's (or the classifier's) P(angry)
    features: StageTimes            # the worker's own timings of the two stages
    tone: StageTimes
    waited_s: float                 # from submit to the end of the classification


class VoiceWorker:
    def __init__(self, tone, depth: int = 2, threaded: bool = True):
        self.tone, self.depth, self.threaded = tone, depth, threaded
        self._waiting: deque[tuple[int, float, np.ndarray]] = deque()
        self._done: list[VoiceResult] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._generation = 0            # bumped by reset(): results of older segments are thrown away
        self._stop = False
        self._thread: threading.Thread | None = None
        self.submitted = self.classified = self.dropped = self.failed = 0

    def start(self) -> "VoiceWorker":
        if self.threaded and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="voice", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stop = True
            self._waiting.clear()
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # --------------------------------------------------------------------------------------- loop thread
    def submit(self, segment: np.ndarray) -> None:
        """A segment to classify (the loop thread; returns at once when threaded)."""
        self.submitted += 1
        if not self.threaded:
            self._classify(self._generation, time.perf_counter(), segment)
            return
        with self._lock:
            if len(self._waiting) >= self.depth:
                self._waiting.popleft()
                self.dropped += 1
            self._waiting.append((self._generation, time.perf_counter(), segment))
            self._wake.notify()

    def take(self) -> list[VoiceResult]:
        """The results finished since the last call, oldest first."""
        if not self._done:          # read without the lock: a list's truth value is one atomic read
            return []
        with self._lock:
            done, self._done = self._done, []
        return done

    def reset(self) -> None:
        """After a pause: nothing heard before it may join what is heard after, waiting or being classified."""
        with self._lock:
            self._generation += 1
            self._waiting.clear()
            self._done = []

    # --------------------------------------------------------------------------------------- worker thread
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                generation, submitted, segment = self._waiting.popleft()
            self._classify(generation, submitted, segment)

    def _classify(self, generation: int, submitted: float, segment: np.ndarray) -> None:
        try:
            features = self.tone.features(segment[None])
            feature_times = self.tone.features.times
            result = self.tone(features)
        except Exception:       # one bad segment must not end the voice for the rest of the run
            self.failed += 1
            log.exception("voice: a speech segment could not be classified; it is skipped")
            return
        done = VoiceResult(result.probabilities, float(result.anger[0]), feature_times, self.tone.times,
                           time.perf_counter() - submitted)
        with self._lock:
            if generation != self._generation:
                return
            self._done.append(done)
            self.classified += 1
