"""Recorded sources in lockstep with a simulated clock: the daemon's loop runs a recording as fast as it can compute,
and every tick still sees exactly what it would have seen live.

Live, a tick takes the newest camera frame and the audio that arrived since the previous tick. Here the clock is
virtual (the scheduler's wait advances it instead of sleeping), the camera hands over the frame a camera at the
file's fps would have delivered last by the tick's time, and the microphone the samples up to that time. Used by
``appliance eval video`` (and the tests) where a wall-clock replay would only cost time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.sources.audio import SAMPLE_RATE, load_audio_file
from appliance.sources.base import SourceError, SourceState
from appliance.sources.camera import Frame, probe_file


class VirtualClock:
    """A monotonic clock that moves only when told: ``now`` for the scheduler's clock, ``advance`` for its wait."""

    def __init__(self, start: float = 1000.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


class _Counts:
    """The counters the daemon reads off a camera buffer."""

    def __init__(self, take):
        self.take = take
        self.delivered = 0
        self.dropped = 0


class _Replayed:
    """What every replayed source shares: the clock, the time it started on it, its state."""

    def __init__(self, clock: VirtualClock):
        self.clock = clock
        self.state = SourceState.STARTING
        self._t0 = 0.0

    @property
    def ended(self) -> bool:
        return self.state == SourceState.ENDED

    def start(self):
        self._t0 = self.clock.now()
        self.state = SourceState.OK
        return self

    def stop(self) -> None:
        pass

    def check_stall(self, now: float) -> None:
        """A recording cannot stall."""

    def elapsed(self) -> float:
        return self.clock.now() - self._t0


class ReplayCamera(_Replayed):
    """A video file played against a VirtualClock, optionally looped. Surface: what the daemon uses of a camera."""

    def __init__(self, path: str | Path, clock: VirtualClock, loop: bool = False):
        super().__init__(clock)
        self.path = Path(path)
        self.fps = probe_file(str(self.path))["fps"]       # SourceError for a missing or undecodable file
        self.loop_file = loop
        self.buffer = _Counts(self._take)
        self._cap = None
        self._next = 0           # frames of the timeline read so far (across loops)

    def describe(self) -> str:
        return f"replay {self.path}"

    def start(self) -> "ReplayCamera":
        import cv2

        self._cap = cv2.VideoCapture(str(self.path))
        return super().start()

    def stop(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _read(self):
        import cv2

        ok, image = self._cap.read()
        if ok:
            return image
        if not self.loop_file or self._next == 0:
            return None
        self._cap.release()
        self._cap = cv2.VideoCapture(str(self.path))
        ok, image = self._cap.read()
        return image if ok else None

    def _take(self) -> Frame | None:
        """The newest frame due by now (those passed over count as dropped), or None if none is new."""
        if self.ended or self._cap is None:
            return None
        due = self.elapsed()
        newest, read = None, 0
        while self._next / self.fps <= due + 1e-9:
            image = self._read()
            if image is None:
                self.state = SourceState.ENDED
                break
            newest = Frame(image, self._next, self.clock.now())
            self._next += 1
            read += 1
        if newest is None:
            return None
        self.buffer.delivered += 1
        self.buffer.dropped += read - 1
        return newest


class _ReplayRing:
    def __init__(self, read_new):
        self.read_new = read_new
        self.lost = 0


class BlankCamera(_Replayed):
    """A camera that sees no one: a plain grey frame at ``fps``, for recordings that have sound only."""

    def __init__(self, clock: VirtualClock, fps: float = 30.0, size: tuple[int, int] = (360, 640)):
        super().__init__(clock)
        self.fps = fps
        self.image = np.full((*size, 3), 128, np.uint8)
        self.loop_file = True
        self.buffer = _Counts(self._take)
        self._next = 0

    def describe(self) -> str:
        return "blank camera"

    def _take(self) -> Frame | None:
        due = int(self.elapsed() * self.fps + 1e-9)
        if due < self._next:
            return None
        self.buffer.delivered += 1
        self.buffer.dropped += due - self._next
        self._next = due + 1
        return Frame(self.image, due, self.clock.now())


class ReplayAudio(_Replayed):
    """Recorded audio (a file, or 16 kHz samples) played against a VirtualClock: each read returns the samples due
    since the previous one."""

    def __init__(self, source: str | Path | np.ndarray, clock: VirtualClock, loop: bool = False):
        super().__init__(clock)
        if isinstance(source, np.ndarray):
            self.path, self.audio = Path("<samples>"), source.astype(np.float32)
        else:
            self.path = Path(source)
            self.audio = load_audio_file(self.path)
        if not len(self.audio):
            raise SourceError(f"audio {self.path} has no samples")
        self.loop = loop
        self.ring = _ReplayRing(self._read_new)
        self._read = 0

    def describe(self) -> str:
        return f"replay {self.path}"

    def _read_new(self) -> np.ndarray:
        due = int(self.elapsed() * SAMPLE_RATE)
        if not self.loop:
            due = min(due, len(self.audio))
        if due <= self._read:
            return np.zeros(0, np.float32)
        out = np.take(self.audio, np.arange(self._read, due), mode="wrap")
        self._read = due
        return out


@dataclass
class Replay:
    """What a daemon needs to run a recording in lockstep: the clock, the camera, the microphone (or None)."""

    clock: VirtualClock
    camera: ReplayCamera | BlankCamera
    audio: ReplayAudio | None

    @classmethod
    def of(cls, video: str | Path | None, audio: str | Path | np.ndarray | None = None, loop: bool = False) \
            -> "Replay":
        """``video`` None: a camera that sees no one."""
        clock = VirtualClock()
        camera = ReplayCamera(video, clock, loop) if video is not None else BlankCamera(clock)
        return cls(clock, camera, ReplayAudio(audio, clock, loop) if audio is not None else None)
