"""Faces followed between detections, so the detector runs only when it is needed.

BlazeFace costs a few ms a frame, most of a tick's vision work; a face in front of a kiosk moves a few pixels
between frames. ``FaceFollower`` runs the detector every ``every`` frames and, in between, moves each face's box
by the median optical flow (pyramidal Lucas-Kanade) of a grid of points inside it, on a half-size gray frame. It
detects again at once, on the same frame, when a face is lost (too few of its points followed), when one moves
more than ``max_move`` of its side since the last frame. A newcomer is found at the next scheduled detection,
within ``every`` frames, and a scene without faces is looked at every ``every`` frames too. (Detecting every
frame while the scene is empty finds a first face sooner, but measured against detecting every frame it counts
more faces: a followed face stays seen through the frames where the detector would have lost it, and no frame
of a newcomer's is missed to balance that; benchmarks/results/face_following.md.) The boxes it returns are the
detector's, shifted.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from appliance.perception.faces import Detections, FaceBox
from appliance.perception.stage import StageTimes, Stopwatch

GRID = 4                 # 4 x 4 points per face
INNER = 0.6              # inside the middle 60% of the box: the face, not the background around it
MIN_FOLLOWED = 0.5       # share of a face's points that must be followed, else the face is lost
LK = dict(winSize=(15, 15), maxLevel=2)


class FaceFollower:
    name = "detect"

    def __init__(self, detector, every: int = 3, max_move: float = 0.25):
        self.detector, self.every, self.max_move = detector, every, max_move
        self.times = StageTimes()
        self.detections = 0              # frames the detector ran on
        self.followed = 0                # frames whose boxes were followed instead
        self._gray: np.ndarray | None = None
        self._boxes: tuple[FaceBox, ...] = ()
        self._since = 0                  # frames since the last detection

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        import cv2

        if self.every == 1:
            found = self.detector(frame_bgr)
            self.times, self.detections = self.detector.times, self.detections + 1
            return found
        watch = Stopwatch()
        gray = cv2.cvtColor(cv2.resize(frame_bgr, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2GRAY)
        watch.lap("pre")
        moved = None
        if self._since < self.every - 1 and self._gray is not None and self._gray.shape == gray.shape:
            moved = self._follow(self._gray, gray) if self._boxes else ()
        self._gray = gray
        if moved is None:
            found = self.detector(frame_bgr)
            self._boxes, self._since = found.boxes, 0
            self.detections += 1
            self.times = self.detector.times._replace(pre=self.detector.times.pre + watch.pre)
            return found
        self._boxes, self._since = moved, self._since + 1
        self.followed += 1
        watch.lap("model")
        self.times = watch.done(len(moved))
        return Detections(moved, len(moved), 0, 0)

    def reset(self) -> None:
        """Forget the faces (after a pause, or a gap in the frames): the next frame is detected."""
        self._boxes, self._gray, self._since = (), None, 0

    def _follow(self, before: np.ndarray, now: np.ndarray) -> tuple[FaceBox, ...] | None:
        """Every face's box moved by its points' median flow; None where any face is lost or moved too far."""
        import cv2

        points = np.concatenate([_grid(b) for b in self._boxes]).reshape(-1, 1, 2)
        after, status, _ = cv2.calcOpticalFlowPyrLK(before, now, points, None, **LK)
        if after is None:
            return None
        status = status.reshape(-1).astype(bool)
        flow = (after - points).reshape(-1, 2) * 2          # back to full-frame pixels
        n = GRID * GRID
        moved = []
        for i, box in enumerate(self._boxes):
            ok = status[i * n:(i + 1) * n]
            if ok.mean() < MIN_FOLLOWED:
                return None
            dx, dy = np.median(flow[i * n:(i + 1) * n][ok], axis=0)
            if max(abs(dx), abs(dy)) > self.max_move * max(box.w, box.h):
                return None
            moved.append(replace(box, x=int(round(box.x + dx)), y=int(round(box.y + dy))))
        return tuple(moved)

    def warm_up(self, *args, **kwargs) -> None:
        self.detector.warm_up(*args, **kwargs)

    def close(self) -> None:
        self.detector.close()


def _grid(box: FaceBox) -> np.ndarray:
    """GRID x GRID points over the middle of the box, in half-size frame pixels."""
    margin = (1 - INNER) / 2
    xs = box.x + box.w * np.linspace(margin, 1 - margin, GRID)
    ys = box.y + box.h * np.linspace(margin, 1 - margin, GRID)
    return (np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2) / 2).astype(np.float32)
