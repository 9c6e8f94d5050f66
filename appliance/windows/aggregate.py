"""Windows of tick results -> anonymised summaries. This module is the privacy boundary.

What goes in: per tick, the face boxes and their expression probabilities. What comes out: per window, the mean
probability per label over all face observations, how many observations there were, and (internally) how many
distinct faces were seen. Track ids exist only inside ``FaceTracker`` and the open window; they are never part of
a ``WindowSummary``. A window with fewer than ``k_min`` distinct faces, or with faces in too little of its time,
comes out ``suppressed`` with no distribution.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from appliance.perception.faces import FaceBox


def iou(a: FaceBox, b: FaceBox) -> float:
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """Short-lived greedy IoU tracker. It only estimates how many different faces a window saw.

    A face unseen for ``max_age_s`` is forgotten and counts as new if it returns. That over-counts, which is the
    unsafe direction for k-anonymity (one person flickering in and out could look like k people), so the
    aggregator counts only tracks seen in at least ``min_track_ticks`` ticks of a window.
    """

    def __init__(self, max_age_s: float = 1.0, iou_threshold: float = 0.3):
        self.max_age_s = max_age_s
        self.iou_threshold = iou_threshold
        self._tracks: dict[int, tuple[FaceBox, float]] = {}
        self._next_id = 0

    def update(self, boxes: Sequence[FaceBox], t: float) -> list[int]:
        self._tracks = {i: (box, seen) for i, (box, seen) in self._tracks.items() if t - seen <= self.max_age_s}
        pairs = sorted(((iou(box, tb), bi, ti) for bi, box in enumerate(boxes)
                        for ti, (tb, _) in self._tracks.items()), reverse=True)
        ids: list[int | None] = [None] * len(boxes)
        used: set[int] = set()
        for overlap, bi, ti in pairs:
            if overlap < self.iou_threshold:
                break
            if ids[bi] is None and ti not in used:
                ids[bi] = ti
                used.add(ti)
        for bi, box in enumerate(boxes):
            if ids[bi] is None:
                ids[bi] = self._next_id
                self._next_id += 1
            self._tracks[ids[bi]] = (box, t)
        return ids  # type: ignore[return-value]


@dataclass(frozen=True)
class WindowSummary:
    start: float                     # wall-clock epoch seconds
    end: float
    ticks: int
    observations: int                # face observations (one face in one tick)
    observed_s: float                # time with at least one face in view
    distinct_faces: int
    distribution: dict[str, float] | None          # faces
    speech_s: float                  # speech the VAD passed in this window
    voice_distribution: dict[str, float] | None
    anger_index: float | None        # fusion.AngerIndex over the modalities present
    suppressed: bool
    reason: str | None               # why suppressed: camera_unavailable | no_faces | too_few_faces |
                                     # too_little_observation


def _mean_distribution(total: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    mean = total / total.sum()
    return {label: round(float(p), 4) for label, p in zip(labels, mean)}


class WindowAggregator:
    """Per-window means. Faces and voice are kept apart until the window closes.

    Suppression: a crowd profile (k > 1) publishes nothing, voice included, unless its faces pass k (a voice cannot
    be counted as k people). The kiosk profile (k = 1) publishes a window if either modality has enough data.
    """

    def __init__(self, labels: Sequence[str], window_s: float, tick_period_s: float, k_min: int,
                 min_observed_s: float, tracker: FaceTracker, min_track_ticks: int = 3,
                 voice_labels: Sequence[str] = (), min_speech_s: float = 1.0,
                 anger_index: Callable[[float | None, float | None], float | None] = lambda face, voice: None):
        self.labels = tuple(labels)
        self.anger_index = anger_index
        self.voice_labels = tuple(voice_labels)
        self.window_s = window_s
        self.tick_period_s = tick_period_s
        self.k_min = k_min
        self.min_observed_s = min_observed_s
        self.min_speech_s = min_speech_s
        self.tracker = tracker
        self.min_track_ticks = min_track_ticks
        self._start: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._sum = np.zeros(len(self.labels), dtype=np.float64)
        self._observations = 0
        self._ticks = 0
        self._ticks_with_faces = 0
        self._track_ticks: Counter[int] = Counter()
        self._voice_sum = np.zeros(len(self.voice_labels), dtype=np.float64)
        self._tone_results = 0
        self._speech_s = 0.0
        self._camera_down_ticks = 0

    def add(self, t: float, boxes: Sequence[FaceBox], probabilities: np.ndarray, speech_s: float = 0.0,
            tone: np.ndarray | None = None) -> WindowSummary | None:
        """Feed one tick (t: wall-clock epoch seconds). Returns the window that this tick closed, if any."""
        closed = None
        if self._start is None:
            self._start = t
        elif t >= self._start + self.window_s:
            closed = self._close(self._start + self.window_s)
        ids = self.tracker.update(boxes, t)
        self._ticks += 1
        if len(boxes):
            self._ticks_with_faces += 1
            self._observations += len(boxes)
            self._sum += probabilities.sum(axis=0)
            self._track_ticks.update(ids)
        self._speech_s += speech_s
        if tone is not None and len(tone):
            self._voice_sum += tone.sum(axis=0)
            self._tone_results += len(tone)
        return closed

    def advance(self, t: float, speech_s: float = 0.0, tone: np.ndarray | None = None,
                camera_down: bool = False) -> WindowSummary | None:
        """A tick with no new camera frame: time passes, no face is observed (voice may still be). ``camera_down``:
        the camera is retrying or stalled, so "no face" says nothing about the shop."""
        closed = self.add(t, (), np.zeros((0, len(self.labels)), np.float32), speech_s, tone)
        self._camera_down_ticks += camera_down
        return closed

    def restart(self) -> None:
        """Forget the open window and the tracks (after a pause: what came before must not join what follows)."""
        self._start = None
        self.tracker = FaceTracker(self.tracker.max_age_s, self.tracker.iou_threshold)
        self._reset()

    def flush(self, t: float) -> WindowSummary | None:
        """Close the open window early (at shutdown). Nothing is returned for a window with no ticks."""
        if self._start is None or self._ticks == 0:
            return None
        return self._close(t)

    def _close(self, end: float) -> WindowSummary:
        observed = self._ticks_with_faces * self.tick_period_s
        distinct = sum(1 for n in self._track_ticks.values() if n >= self.min_track_ticks)
        if self._observations == 0 and self._camera_down_ticks * 2 >= self._ticks:
            face_reason = "camera_unavailable"     # a dead camera must not read as an empty shop
        elif self._observations == 0:
            face_reason = "no_faces"
        elif distinct < self.k_min:
            face_reason = "too_few_faces"
        elif observed < self.min_observed_s:
            face_reason = "too_little_observation"
        else:
            face_reason = None
        voice_ok = self._tone_results > 0 and self._speech_s >= self.min_speech_s
        if self.k_min > 1:
            voice_ok = voice_ok and face_reason is None
        suppressed = face_reason is not None and not voice_ok
        faces = _mean_distribution(self._sum, self.labels) if face_reason is None else None
        voice = _mean_distribution(self._voice_sum, self.voice_labels) if voice_ok else None
        summary = WindowSummary(
            start=self._start, end=end, ticks=self._ticks, observations=self._observations,
            observed_s=round(observed, 3), distinct_faces=distinct, distribution=faces,
            speech_s=round(self._speech_s, 3), voice_distribution=voice,
            anger_index=self.anger_index(faces and faces.get("angry"), voice and voice.get("angry")),
            suppressed=suppressed, reason=face_reason if suppressed else None)
        self._start = end
        self._reset()
        return summary
