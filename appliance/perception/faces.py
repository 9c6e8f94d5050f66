"""Face detection (MediaPipe Tasks FaceDetector, BlazeFace short range) and face cropping."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.host.native_log import native_output_to
from appliance.perception.stage import StageTimes, Stopwatch

log = logging.getLogger(__name__)
ALIGNMENT_WARNING = "memory is not aligned"
# About a minute of detections at 30 Hz with detection every 3rd frame; each costs a temporary file and two dup2.
UNALIGNED_WATCH_CALLS = 600


def mediapipe_vision():
    """MediaPipe's ``tasks.python`` package imports its drawing helpers at import, and with them matplotlib.pyplot:
    more than half of the daemon's start-up, for plots a detector never draws. The first import runs with empty
    stand-ins for matplotlib, taken away again at once, so whoever asks for matplotlib later gets the real one
    (only MediaPipe's drawing_utils, which nothing here calls, keeps the stand-in)."""
    import sys
    import types

    stand_ins = {}
    if "matplotlib" not in sys.modules:
        package, pyplot = types.ModuleType("matplotlib"), types.ModuleType("matplotlib.pyplot")
        package.pyplot = pyplot
        stand_ins = {"matplotlib": package, "matplotlib.pyplot": pyplot}
        sys.modules.update(stand_ins)
    try:
        from mediapipe.tasks.python import BaseOptions, vision
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return BaseOptions, vision


@dataclass(frozen=True)
class FaceBox:
    x: int
    y: int
    w: int
    h: int
    score: float


@dataclass(frozen=True)
class Detections:
    boxes: tuple[FaceBox, ...]   # kept faces, best score first
    found: int                   # faces the detector reported before size filter and cap
    too_small: int
    over_cap: int


class FaceDetector:
    """``detector(frame)``: a BGR frame -> the faces in it (``Detections``), BlazeFace through MediaPipe Tasks (XNNPACK
    on the CPU). One instance per thread; close() when done."""

    name = "detect"

    def __init__(self, model_path: Path, score_threshold: float = 0.5, max_faces: int = 8, min_face_px: int = 40,
                 tiles: int = 1, tile_overlap: float = 0.25):
        BaseOptions, vision = mediapipe_vision()

        if not Path(model_path).is_file():
            raise FileNotFoundError(f"face detector model {model_path} is missing; run "
                                    f"models/recipes/blazeface_short_range.py")
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=score_threshold,
        )
        with native_output_to(log):
            self._detector = vision.FaceDetector.create_from_options(options)
        self.max_faces = max_faces
        self.min_face_px = min_face_px
        self.tiles = tiles
        self.tile_overlap = tile_overlap
        self.times = StageTimes()
        self._sizes_seen: set[tuple[int, int]] = set()
        self._unaligned_calls_left = UNALIGNED_WATCH_CALLS

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        # LiteRT writes to fd 2 past Python's logging: at the first inference on each input size, and once per
        # process at the first inference whose input tensor happens to be unaligned, which depends on the heap
        # (other threads' models move it). Those calls go through the redirect: the first frame of each size, and
        # every frame until the alignment line was caught, for a bounded number of calls.
        new_size = frame_bgr.shape[:2] not in self._sizes_seen
        if not (new_size or self._unaligned_calls_left):
            return self.detect(frame_bgr)
        self._sizes_seen.add(frame_bgr.shape[:2])
        self._unaligned_calls_left = max(0, self._unaligned_calls_left - 1)
        with native_output_to(log) as caught:
            detections = self.detect(frame_bgr)
        if any(ALIGNMENT_WARNING in line for line in caught):
            self._unaligned_calls_left = 0
        return detections

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        import cv2
        import mediapipe as mp

        watch = Stopwatch()
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        boxes: list[FaceBox] = []
        for x0, y0, x1, y1 in regions(width, height, self.tiles, self.tile_overlap):
            view = rgb if (x1 - x0, y1 - y0) == (width, height) else np.ascontiguousarray(rgb[y0:y1, x0:x1])
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=view)
            watch.lap("pre")
            result = self._detector.detect(image)
            watch.lap("model")
            boxes += [FaceBox(d.bounding_box.origin_x + x0, d.bounding_box.origin_y + y0, d.bounding_box.width,
                              d.bounding_box.height, float(d.categories[0].score)) for d in result.detections]
        # Boxes may overhang the frame; one that lies wholly outside has nothing to crop.
        boxes = [b for b in boxes if b.x < width and b.y < height and b.x + b.w > 0 and b.y + b.h > 0]
        if self.tiles > 1:
            boxes = non_max_suppression(boxes, 0.3)
        big = [b for b in boxes if min(b.w, b.h) >= self.min_face_px]
        big.sort(key=lambda b: b.score, reverse=True)
        kept = big[:self.max_faces]
        watch.lap("post")
        self.times = watch.done(len(kept))
        return Detections(tuple(kept), len(boxes), len(boxes) - len(big), len(big) - len(kept))

    def warm_up(self, width: int = 640, height: int = 480) -> None:
        """One detection on a blank frame: the first inference is where LiteRT prints (and allocates)."""
        with native_output_to(log):
            self.detect(np.zeros((height, width, 3), np.uint8))

    def close(self) -> None:
        if self._detector is not None:
            with native_output_to(log):
                self._detector.close()
            self._detector = None

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def regions(width: int, height: int, tiles: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """The whole frame, plus (tiles > 1) a tiles x tiles grid of overlapping tiles.

    BlazeFace short range sees the frame at 128x128, so faces far from the camera (a store camera over a crowd)
    shrink below what it can find; each tile gives them tiles-times more pixels. The whole-frame pass keeps large
    faces that a tile boundary would cut.
    """
    out = [(0, 0, width, height)]
    if tiles > 1:
        tw, th = int(width / (tiles - (tiles - 1) * overlap)), int(height / (tiles - (tiles - 1) * overlap))
        for row in range(tiles):
            for col in range(tiles):
                x0 = min(int(col * tw * (1 - overlap)), width - tw)
                y0 = min(int(row * th * (1 - overlap)), height - th)
                out.append((x0, y0, x0 + tw, y0 + th))
    return out


def non_max_suppression(boxes: list[FaceBox], iou_threshold: float) -> list[FaceBox]:
    """Keep the best-scoring box of every group that overlaps more than ``iou_threshold`` (or nests)."""
    kept: list[FaceBox] = []
    for b in sorted(boxes, key=lambda b: b.score, reverse=True):
        if all(_overlap(b, k) <= iou_threshold for k in kept):
            kept.append(b)
    return kept


def _overlap(a: FaceBox, b: FaceBox) -> float:
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    # Intersection over the smaller box: a face cut by a tile edge nests inside the whole-frame box.
    return inter / max(1, min(a.w * a.h, b.w * b.h))


def crop_faces(frame_bgr: np.ndarray, boxes: tuple[FaceBox, ...] | list[FaceBox], size: tuple[int, int],
               margin: float = 0.15, shift: float = 0.0) -> np.ndarray:
    """Square gray crops around each box (plus ``margin`` per side, the centre moved down by ``shift`` box sides),
    edge-padded where they leave the frame.

    Returns (N, size[0], size[1]) uint8, ready for ExpressionModel.classify. Only the part of the frame the crops
    cover is converted to gray, once for all faces; when every crop is at least twice the output size, that part is
    first halved (a 2x2 box filter): an anti-aliased result for a quarter of the resize work per face.
    """
    import cv2

    out = np.empty((len(boxes), size[0], size[1]), dtype=np.uint8)
    if not len(boxes):
        return out
    height, width = frame_bgr.shape[:2]
    squares = []
    for b in boxes:
        side = int(round(max(b.w, b.h) * (1 + 2 * margin)))
        x0, y0 = int(round(b.x + b.w / 2 - side / 2)), int(round(b.y + b.h / 2 + shift * max(b.w, b.h) - side / 2))
        squares.append((x0, y0, side))
    ux0, uy0 = max(0, min(q[0] for q in squares)), max(0, min(q[1] for q in squares))
    ux1, uy1 = min(width, max(q[0] + q[2] for q in squares)), min(height, max(q[1] + q[2] for q in squares))
    if ux1 <= ux0 or uy1 <= uy0:    # every box lies outside the frame: nothing real to crop
        out[:] = 0
        return out
    gray = cv2.cvtColor(frame_bgr[uy0:uy1, ux0:ux1], cv2.COLOR_BGR2GRAY)
    scale = 1.0
    if min(q[2] for q in squares) >= 2 * max(size):
        gray = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        scale = 0.5
    gh, gw = gray.shape
    for i, (x0, y0, side) in enumerate(squares):
        # Coordinates in the (possibly halved) gray region; a square that leaves the frame leaves it here too.
        sx0, sy0 = int(round((x0 - ux0) * scale)), int(round((y0 - uy0) * scale))
        s = max(1, int(round(side * scale)))
        sx1, sy1 = sx0 + s, sy0 + s
        region = gray[max(0, sy0):min(gh, sy1), max(0, sx0):min(gw, sx1)]
        pads = (max(0, -sy0), max(0, sy1 - gh), max(0, -sx0), max(0, sx1 - gw))
        if any(pads):
            region = cv2.copyMakeBorder(region, *pads, cv2.BORDER_REPLICATE)
        out[i] = cv2.resize(region, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return out
