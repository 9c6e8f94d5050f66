"""Staff exclusion zones: polygons of the image (behind the counter, a staff door) that are blacked out before face
detection, so no face there is ever analysed. A face whose box centre still falls in a zone is dropped as well.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from appliance.perception.faces import FaceBox


class ExclusionZones:
    def __init__(self, polygons: Sequence[Sequence[tuple[float, float]]]):
        self.polygons = [np.round(np.asarray(p, dtype=np.float64)).astype(np.int32) for p in polygons]
        self._masks: dict[tuple[int, int], np.ndarray] = {}

    def __bool__(self) -> bool:
        return bool(self.polygons)

    def _keep_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """255 where pixels may be analysed, 0 inside zones; built once per frame size."""
        import cv2

        if shape not in self._masks:
            mask = np.full(shape, 255, np.uint8)
            cv2.fillPoly(mask, self.polygons, 0)
            self._masks[shape] = mask
        return self._masks[shape]

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """A copy of the frame with every zone black (the original frame is left as it was)."""
        if not self.polygons:
            return frame
        import cv2

        return cv2.bitwise_and(frame, frame, mask=self._keep_mask(frame.shape[:2]))

    def contains(self, x: float, y: float) -> bool:
        import cv2

        return any(cv2.pointPolygonTest(p, (float(x), float(y)), False) >= 0 for p in self.polygons)

    def drop(self, boxes: Sequence[FaceBox]) -> tuple[FaceBox, ...]:
        if not self.polygons:
            return tuple(boxes)
        return tuple(b for b in boxes if not self.contains(b.x + b.w / 2, b.y + b.h / 2))

    def preview(self, frame: np.ndarray, boxes: Sequence[FaceBox] = ()) -> np.ndarray:
        """The frame with zones shaded red and outlined, and the faces that would be analysed boxed green."""
        import cv2

        out = frame.copy()
        overlay = frame.copy()
        cv2.fillPoly(overlay, self.polygons, (0, 0, 200))
        out = cv2.addWeighted(overlay, 0.45, out, 0.55, 0)
        cv2.polylines(out, self.polygons, True, (0, 0, 255), 2)
        for i, p in enumerate(self.polygons):
            x, y = p.min(axis=0)
            cv2.putText(out, f"zone {i}: not analysed", (int(x) + 4, int(y) + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (255, 255, 255), 1, cv2.LINE_AA)
        for b in boxes:
            cv2.rectangle(out, (b.x, b.y), (b.x + b.w, b.y + b.h), (0, 200, 0), 2)
        return out
