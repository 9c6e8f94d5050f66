"""Camera source: real decoding of the demo file, pacing, looping, bad files, and a camera that comes and goes.

The unplugged/replugged camera uses a stand-in capture object: no camera device exists on this machine (the only
mock here). Files are decoded for real by OpenCV.
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from appliance.sources.config import CameraConfig
from appliance.sources.camera import (CameraSource, Frame, FrameBuffer, SourceError, SourceState, probe_file,
                                      resolve_spec)
from conftest import DEMO, appliance_cmd, appliance_env


def wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_buffer_gives_newest_and_counts_drops():
    buf = FrameBuffer(2)
    img = np.zeros((2, 2, 3), np.uint8)
    for i in range(5):
        buf.put(Frame(img, i, float(i)))
    assert buf.take().index == 4
    assert buf.take() is None
    assert buf.dropped == 4 and buf.delivered == 1


@pytest.mark.parametrize("source, kind", [("demo", "file"), ("0", "device"), ("/dev/video2", "device"),
                                          ("rtsp://cam.local/stream", "url"), ("clip.mp4", "file"),
                                          ("v4l2src ! videoconvert ! appsink", "gstreamer")])
def test_resolve_spec(source, kind):
    assert resolve_spec(source).kind == kind


def test_probe_reads_the_demo():
    info = probe_file(str(DEMO))
    assert (info["width"], info["height"]) == (640, 360) and 29 < info["fps"] < 31 and info["frames"] > 200


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        probe_file(str(tmp_path / "nope.mp4"))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(DEMO.read_bytes()[:2000] + np.random.default_rng(0).bytes(50000))
    with pytest.raises(SourceError, match="cannot be decoded"):
        probe_file(str(corrupt))


def test_file_plays_at_its_own_pace_and_ends(tmp_path):
    src = CameraSource(resolve_spec(str(DEMO)), CameraConfig(loop=False)).start()
    try:
        time.sleep(1.0)
        # ~30 fps for one second, paced, not decoded flat out (the clip has 275 frames).
        assert 20 <= src.frames_read <= 40
    finally:
        src.stop()


def test_fast_file_ends_and_loop_replays():
    once = CameraSource(resolve_spec(str(DEMO)), CameraConfig(loop=False, realtime=False)).start()
    assert wait(lambda: once.ended, 30)
    assert once.frames_read == probe_file(str(DEMO))["frames"]
    looping = CameraSource(resolve_spec(str(DEMO)), CameraConfig(loop=True, realtime=False)).start()
    try:
        assert wait(lambda: looping.frames_read > 600, 60)
        assert looping.state == SourceState.OK
    finally:
        looping.stop()


class FlakyCamera:
    """Stand-in for a USB camera: unplugged for the first `fail_opens` opens, then delivers `frames` frames and
    vanishes again (read() fails, as V4L2 does on unplug)."""

    opens = 0

    def __init__(self, fail_opens: int, frames: int):
        FlakyCamera.opens += 1
        self._open = FlakyCamera.opens > fail_opens
        self._left = frames

    def isOpened(self):
        return self._open

    def read(self):
        if self._left <= 0:
            return False, None
        self._left -= 1
        time.sleep(0.005)
        return True, np.zeros((36, 64, 3), np.uint8)

    def release(self):
        pass


def test_unplugged_camera_is_retried_with_backoff_and_reported():
    FlakyCamera.opens = 0
    states = []
    cfg = CameraConfig(retry_initial_s=0.05, retry_max_s=0.2)
    src = CameraSource(resolve_spec("0"), cfg, capture_factory=lambda spec: FlakyCamera(3, 20),
                       on_state=lambda s, d: states.append(s))
    src.start()
    try:
        assert wait(lambda: src.frames_read >= 20 and src.reopens >= 4, 10)
        assert wait(lambda: src.buffer.take() is not None or src.frames_read >= 20, 5)
    finally:
        src.stop()
    assert states[:2] == [SourceState.RETRYING, SourceState.OK]
    assert SourceState.RETRYING in states[2:], "losing the camera after frames must be reported again"


def test_gstreamer_pipeline_without_gstreamer_is_a_clear_error():
    with pytest.raises(SourceError, match="no GStreamer"):
        CameraSource(resolve_spec("v4l2src ! videoconvert ! appsink"), CameraConfig())


def test_cli_reports_bad_video_files(tmp_path):
    env = appliance_env(tmp_path)
    proc = subprocess.run(appliance_cmd("run", "--video", str(tmp_path / "missing.mp4"), "--duration", "1"),
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    junk = tmp_path / "junk.mp4"
    junk.write_text("this is not a video")
    proc = subprocess.run(appliance_cmd("run", "--video", str(junk), "--duration", "1"), env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot be decoded" in proc.stderr and "Traceback" not in proc.stderr


class FrozenCamera(FlakyCamera):
    """Stand-in for a camera whose read() blocks after a few frames (a frozen RTSP stream, a wedged driver)."""

    def __init__(self, release_event):
        super().__init__(0, 3)
        self._release = release_event

    def read(self):
        if self._left <= 0:
            self._release.wait(5)
            return False, None
        return super().read()


def test_a_frozen_camera_is_reported_stalled():
    import threading

    release = threading.Event()
    states = []
    src = CameraSource(resolve_spec("0"), CameraConfig(stall_timeout_s=0.2, retry_initial_s=0.05),
                       capture_factory=lambda spec: FrozenCamera(release), on_state=lambda s, d: states.append(s))
    src.start()
    try:
        assert wait(lambda: src.frames_read == 3)
        src.check_stall(time.monotonic())
        assert src.state == SourceState.OK          # not yet: the last frame is fresh
        time.sleep(0.3)
        src.check_stall(time.monotonic())
        assert src.state == SourceState.STALLED and "no frame for" in src.detail
    finally:
        release.set()
        src.stop()
    assert states[:2] == [SourceState.OK, SourceState.STALLED]
