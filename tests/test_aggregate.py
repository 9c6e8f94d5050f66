"""Windows, k-anonymity suppression and the on-device tracker."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.windows.aggregate import FaceTracker, WindowAggregator
from appliance.perception.faces import FaceBox
from appliance.publish.payloads import summary_payload

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def face(x: int, y: int = 50, size: int = 100) -> FaceBox:
    return FaceBox(x, y, size, size, 0.9)


def probs(n: int, label: int = 3) -> np.ndarray:
    p = np.full((n, 7), 0.05, np.float32)
    p[:, label] = 0.7
    return p


def aggregator(k: int = 1, window_s: float = 10, min_observed_s: float = 2.0) -> WindowAggregator:
    return WindowAggregator(LABELS, window_s, 0.1, k, min_observed_s, FaceTracker(1.0, 0.3))


def feed(agg, seconds: float, boxes_at, t0: float = 0.0, label: int = 3):
    closed = []
    for i in range(int(round(seconds * 10))):
        t = t0 + i * 0.1
        boxes = boxes_at(t)
        out = agg.add(t, boxes, probs(len(boxes), label))
        if out:
            closed.append(out)
    return closed


def test_one_face_kiosk_window():
    agg = aggregator(k=1)
    (w,) = feed(agg, 10.1, lambda t: [face(100 + int(t * 5))])
    assert not w.suppressed and w.distinct_faces == 1 and w.observations == 100
    assert w.observed_s == pytest.approx(10.0)
    assert sum(w.distribution.values()) == pytest.approx(1.0, abs=1e-3)
    assert max(w.distribution, key=w.distribution.get) == "happy"
    assert (w.start, w.end) == (0.0, 10.0)


def test_windows_are_consecutive_and_aligned_to_the_first_tick():
    agg = aggregator()
    closed = feed(agg, 30.1, lambda t: [face(100)], t0=5.0)
    assert [(w.start, w.end) for w in closed] == [(5.0, 15.0), (15.0, 25.0), (25.0, 35.0)]


def test_too_few_distinct_faces_is_suppressed_for_store_camera():
    agg = aggregator(k=3)
    (w,) = feed(agg, 10.1, lambda t: [face(0), face(300)])
    assert w.suppressed and w.reason == "too_few_faces" and w.distribution is None and w.distinct_faces == 2
    agg = aggregator(k=3)
    (w,) = feed(agg, 10.1, lambda t: [face(0), face(200), face(400)])
    assert not w.suppressed and w.distinct_faces == 3


def test_too_little_observation_is_suppressed():
    agg = aggregator(min_observed_s=2.0)
    (w,) = feed(agg, 10.1, lambda t: [face(100)] if t < 1.5 else [])
    assert w.suppressed and w.reason == "too_little_observation"


def test_empty_window_is_suppressed_as_no_faces():
    (w,) = feed(aggregator(), 10.1, lambda t: [])
    assert w.suppressed and w.reason == "no_faces" and w.observations == 0


def test_flicker_does_not_inflate_distinct_faces():
    # One person whose detection drops out for >1 s between single-tick blips: tracks too short to count.
    agg = aggregator(k=3)
    (w,) = feed(agg, 10.1, lambda t: [face(100)] if int(t * 10) % 15 == 0 else [])
    assert w.distinct_faces == 0 and w.suppressed


def test_tracker_keeps_ids_for_moving_faces_and_forgets_after_max_age():
    tracker = FaceTracker(max_age_s=1.0, iou_threshold=0.3)
    a = tracker.update([face(100), face(400)], 0.0)
    b = tracker.update([face(410), face(110)], 0.1)
    assert b == [a[1], a[0]]
    c = tracker.update([face(110)], 1.5)
    assert c[0] not in a


def test_summary_payload_carries_no_track_ids():
    agg = aggregator()
    (w,) = feed(agg, 10.1, lambda t: [face(100)])
    payload = summary_payload(w, "kiosk-1", 7, "kiosk")
    text = repr(payload)
    assert "track" not in text and set(payload["faces"]) == {"observations", "distinct_faces",
                                                             "observed_seconds", "distribution"}
    suppressed = summary_payload(feed(aggregator(), 10.1, lambda t: [])[0], "kiosk-1", 8, "kiosk")
    assert suppressed["faces"] is None and suppressed["suppressed"] is True


def test_advance_closes_a_window_without_frames_and_flush_closes_early():
    agg = aggregator()
    feed(agg, 3.0, lambda t: [face(100)])
    assert agg.advance(5.0) is None
    w = agg.advance(10.0)
    assert w is not None and w.end == 10.0 and w.observations == 30
    assert agg.flush(12.0).end == 12.0


def test_a_dead_camera_is_not_an_empty_shop():
    """Issue: a camera that is retrying or stalled made windows read "no_faces", as an empty shop does."""
    import jsonschema

    from conftest import load_schema

    agg = aggregator(window_s=2)
    windows = [agg.advance(i * 0.1, camera_down=i < 25 or i >= 45) for i in range(61)]
    first, second, third = [w for w in windows if w]
    assert (first.suppressed, first.reason) == (True, "camera_unavailable")     # down the whole window
    assert second.reason == "no_faces"                                            # down 5 of 20 ticks: up, empty
    assert third.reason == "camera_unavailable"                                  # down half the window
    payload = summary_payload(first, "kiosk-1", 1, "kiosk")
    jsonschema.validate(payload, load_schema("summary"))
    assert payload["suppressed_reason"] == "camera_unavailable"


@pytest.mark.parametrize("server", ["closed port", "never answers"])
def test_a_dead_camera_in_the_daemon_publishes_camera_unavailable_from_the_first_window(tmp_path, server):
    """The daemon in-process with a camera that cannot be reached: a stream on a closed port (its open fails at once:
    it retries), or one that accepts the connection and never says a word (its first open blocks until the open
    timeout: the camera is still 'starting'). Issue 25 case 6: the first windows read no_faces."""
    import socket

    from appliance.config import load_config
    from appliance.daemon.pipeline import Pipeline
    from conftest import free_port

    port = free_port()
    silent = None
    if server == "never answers":
        silent = socket.create_server(("127.0.0.1", port))     # the kernel accepts; nobody ever answers
    cfg = load_config(None, env={"APPLIANCE_STATE__DIR": str(tmp_path), "APPLIANCE_MQTT__EMBEDDED_PORT": "0",
                                 "APPLIANCE_CAMERA__SOURCE": f"rtsp://127.0.0.1:{port}/none",
                                 "APPLIANCE_PRIVACY__PURPOSE": "customer-experience",
                                 "APPLIANCE_PRIVACY__JURISDICTION": "US",
                                 "APPLIANCE_AUDIO__SOURCE": "none", "APPLIANCE_AGGREGATE__WINDOW_S": "2",
                                 "APPLIANCE_AGGREGATE__MIN_OBSERVED_S": "1", "APPLIANCE_LOG__LEVEL": "WARNING"})
    published = []
    try:
        Pipeline(cfg, on_summary=published.append).run(5)
    finally:
        if silent is not None:
            silent.close()
    assert len(published) >= 2 and all(s["suppressed_reason"] == "camera_unavailable" for s in published), \
        [s["suppressed_reason"] for s in published]
