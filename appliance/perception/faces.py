"""Face detection (MediaPipe Tasks FaceDetector, BlazeFace short range) and face cropping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


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
    """BlazeFace through MediaPipe Tasks (XNNPACK on the CPU). One instance per thread; close() when done."""

    def __init__(self, model_path: Path, score_threshold: float = 0.5, max_faces: int = 8, min_face_px: int = 40):
        from mediapipe.tasks.python import BaseOptions, vision

        if not Path(model_path).is_file():
            raise FileNotFoundError(f"face detector model {model_path} is missing; run "
                                    f"models/recipes/blazeface_short_range.py")
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=score_threshold,
        )
        self._detector = vision.FaceDetector.create_from_options(options)
        self.max_faces = max_faces
        self.min_face_px = min_face_px

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        import cv2
        import mediapipe as mp

        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        result = self._detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
        height, width = frame_bgr.shape[:2]
        boxes = [FaceBox(d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width,
                         d.bounding_box.height, float(d.categories[0].score)) for d in result.detections]
        # Boxes may overhang the frame; one that lies wholly outside has nothing to crop.
        boxes = [b for b in boxes if b.x < width and b.y < height and b.x + b.w > 0 and b.y + b.h > 0]
        big = [b for b in boxes if min(b.w, b.h) >= self.min_face_px]
        big.sort(key=lambda b: b.score, reverse=True)
        kept = big[:self.max_faces]
        return Detections(tuple(kept), len(boxes), len(boxes) - len(big), len(big) - len(kept))

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def crop_faces(frame_bgr: np.ndarray, boxes: tuple[FaceBox, ...] | list[FaceBox], size: tuple[int, int],
               margin: float = 0.15) -> np.ndarray:
    """Square gray crops around each box (plus ``margin`` per side), edge-padded where they leave the frame.

    Returns (N, size[0], size[1]) uint8, ready for ExpressionModel.classify.
    """
    import cv2

    out = np.empty((len(boxes), size[0], size[1]), dtype=np.uint8)
    height, width = frame_bgr.shape[:2]
    for i, b in enumerate(boxes):
        side = int(round(max(b.w, b.h) * (1 + 2 * margin)))
        cx, cy = b.x + b.w / 2, b.y + b.h / 2
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        x1, y1 = x0 + side, y0 + side
        region = frame_bgr[max(0, y0):min(height, y1), max(0, x0):min(width, x1)]
        gray = cv2.cvtColor(region, cv2.COLOR_BGR2GRAY)
        pads = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
        if any(pads):
            gray = cv2.copyMakeBorder(gray, *pads, cv2.BORDER_REPLICATE)
        out[i] = cv2.resize(gray, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return out
