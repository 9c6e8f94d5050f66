"""Camera source: OpenCV capture in its own thread, feeding a small ring buffer the loop takes the newest frame from.

Sources: a video file (paced to its fps, or as fast as it decodes), a device index or /dev/videoN, an rtsp:// or
http(s):// URL, or a GStreamer pipeline string (needs an OpenCV built with GStreamer, as JetPack's is; pip's is
not). A file that is missing or cannot be decoded is a start-up error: nothing will fix it by waiting. A live
camera that fails to open or stops delivering is retried with capped exponential backoff and reported through
``state``; the daemon keeps running meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from appliance.sources.config import DEMO_VIDEO, CameraConfig
from appliance.sources.base import SourceError, SourceState, ThreadedSource

__all__ = ["CameraSource", "CameraSpec", "Frame", "FrameBuffer", "SourceError", "SourceState", "resolve_spec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    image: np.ndarray      # BGR, HxWx3 uint8
    index: int             # frames read since the source started (all of them, taken or not)
    t_capture: float       # time.monotonic() when read


class FrameBuffer:
    """A tiny ring buffer: the producer never blocks, the consumer takes only the newest frame.

    Frames overwritten or passed over before anyone took them are counted as dropped.
    """

    def __init__(self, capacity: int = 2):
        self._frames: deque[Frame] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.delivered = 0
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._lock:
            if len(self._frames) == self._frames.maxlen:
                self.dropped += 1
            self._frames.append(frame)

    def take(self) -> Frame | None:
        """The newest frame not taken yet, or None if nothing new arrived since the last take."""
        with self._lock:
            if not self._frames:
                return None
            newest = self._frames.pop()
            self.dropped += len(self._frames)
            self._frames.clear()
            self.delivered += 1
            return newest


@dataclass(frozen=True)
class CameraSpec:
    kind: str      # file | device | url | gstreamer
    target: str | int

    def describe(self) -> str:
        return f"{self.kind} {self.target}"


def resolve_spec(source: str, cfg: CameraConfig | None = None) -> CameraSpec:
    from appliance.sources.gstreamer import CaptureFormat, expand

    fmt = CaptureFormat(cfg.width, cfg.height, cfg.fps, cfg.flip) if cfg else CaptureFormat()
    source = expand(source.strip(), fmt)
    if source == "demo":
        return CameraSpec("file", str(DEMO_VIDEO))
    if source.isdigit():
        return CameraSpec("device", int(source))
    if "!" in source:
        return CameraSpec("gstreamer", source)
    if source.split("://", 1)[0] in ("rtsp", "rtsps", "http", "https", "rtmp") and "://" in source:
        return CameraSpec("url", source)
    if source.startswith("/dev/"):
        return CameraSpec("device", source)
    return CameraSpec("file", source)


def gstreamer_available() -> bool:
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def probe_file(path: str) -> dict:
    """Check a video file before the daemon starts: exists, decodes, has frames. Raises SourceError with the cause."""
    import cv2

    p = Path(path)
    if not p.exists():
        raise SourceError(f"video file {path} does not exist")
    if not p.is_file():
        raise SourceError(f"video source {path} is not a file")
    cap = cv2.VideoCapture(str(p))
    try:
        ok, image = cap.read() if cap.isOpened() else (False, None)
        if not ok or image is None:
            raise SourceError(f"video file {path} cannot be decoded (not a video, corrupt, or a codec this OpenCV "
                              f"build lacks)")
        fps = cap.get(cv2.CAP_PROP_FPS)
        return {"fps": fps if 1 <= fps <= 240 else 30.0, "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
                "width": image.shape[1], "height": image.shape[0]}
    finally:
        cap.release()


def open_capture(spec: CameraSpec):
    import cv2

    if spec.kind == "gstreamer":
        return cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
    if spec.kind == "url":
        # Bounded waits so a dead stream is noticed and retried instead of hanging the capture thread.
        return cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000])
    return cv2.VideoCapture(spec.target)


def read_frame(spec: CameraSpec, index: int = 0):
    """One frame: the ``index``-th of a file, the next one of a live source; None if none can be read."""
    import cv2

    cap = open_capture(spec)
    try:
        if spec.kind == "file":
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        return frame if ok else None
    finally:
        cap.release()


class CameraSource(ThreadedSource):
    """Reads frames in a thread into a FrameBuffer; survives a camera that comes and goes."""

    def __init__(self, spec: CameraSpec, cfg: CameraConfig, buffer: FrameBuffer | None = None,
                 capture_factory: Callable[[CameraSpec], object] = open_capture,
                 on_state: Callable[[SourceState, str], None] | None = None):
        super().__init__("camera", on_state)
        self.spec = spec
        self.cfg = cfg
        self.buffer = buffer or FrameBuffer(cfg.buffer_frames)
        self._factory = capture_factory
        self.reopens = 0
        self.frames_read = 0
        self.fps: float | None = None
        self._last_frame_at: float | None = None
        self.loop_file = cfg.loop if cfg.loop is not None else (spec.kind == "file" and Path(
            str(spec.target)).resolve() == DEMO_VIDEO.resolve())
        if spec.kind == "file":
            self.fps = probe_file(str(spec.target))["fps"]
        elif spec.kind == "gstreamer" and not gstreamer_available():
            raise SourceError("camera.source is a GStreamer pipeline but this OpenCV build has no GStreamer "
                              "(pip's opencv never does; on a Jetson use JetPack's OpenCV, see deploy/jetson)")

    def check_stall(self, now: float) -> None:
        """Called by the loop: an open camera with no frame for stall_timeout_s is reported as stalled.

        A blocked read cannot report itself from the capture thread; the next frame sets the state back to ok.
        """
        last = self._last_frame_at
        if self.state == SourceState.OK and last is not None and now - last > self.cfg.stall_timeout_s:
            self._set_state(SourceState.STALLED, f"no frame for {now - last:.1f} s")

    def describe(self) -> str:
        return f"camera {self.spec.describe()}"

    def _run(self) -> None:
        backoff = self.cfg.retry_initial_s
        while not self._stop.is_set():
            cap = self._factory(self.spec)
            if not cap.isOpened():
                cap.release()
                self._set_state(SourceState.RETRYING, f"cannot open; next try in {backoff:.1f} s")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.retry_max_s)
                self.reopens += 1
                continue
            outcome = self._read_until_failure(cap)
            cap.release()
            if outcome == "eof" and not self.loop_file:
                self._set_state(SourceState.ENDED, "end of file")
                return
            if outcome == "eof":
                backoff = self.cfg.retry_initial_s
                continue  # reopen = rewind; cheaper and more reliable than seeking across codecs
            if outcome == "failed":
                self._set_state(SourceState.RETRYING, f"stopped delivering frames; reopening in {backoff:.1f} s")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.retry_max_s)
                self.reopens += 1
            else:
                backoff = self.cfg.retry_initial_s

    def _read_until_failure(self, cap) -> str:
        pace = self.spec.kind == "file" and self.cfg.realtime and self.fps
        period = 1.0 / self.fps if pace else 0.0
        t0 = time.monotonic()
        n = 0
        while not self._stop.is_set():
            ok, image = cap.read()
            if not ok or image is None:
                if self.spec.kind == "file":
                    return "eof"
                return "failed"
            now = time.monotonic()
            self._last_frame_at = now
            self._set_state(SourceState.OK)
            self.frames_read += 1
            self.buffer.put(Frame(image, self.frames_read, now))
            n += 1
            if pace:
                # Absolute schedule: frame n is due at t0 + n/fps, so decode jitter does not accumulate.
                delay = t0 + n * period - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
        return "stopped"
