"""Facial expression classifier: face boxes on a frame -> its own crops -> calibrated per-label probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.runtime import RuntimeConfig
from appliance.manifest import ModelManifest
from appliance.perception.faces import FaceBox, crop_faces
from appliance.perception.stage import StageTimes, Stopwatch
from appliance.runtime import RuntimeReport, open_session

DEFAULT_MARGIN = 0.15    # for a model whose manifest does not say how it wants its faces cut
MEASURE_BATCH = 4        # the batch runtime.measured_cpu_precision times: 4 faces, as the benchmarks quote per face


@dataclass(frozen=True)
class ExpressionResult:
    probabilities: np.ndarray  # (N, len(labels)), rows sum to 1; calibrated where the manifest has a calibration
    labels: tuple[str, ...]


class ExpressionModel:
    """``model(crops)``: (N, H, W) gray crops (``crop`` cuts them as this model wants) -> calibrated probabilities."""

    name = "expression"

    def __init__(self, manifest: ModelManifest, runtime: RuntimeConfig, available: list[str] | None = None,
                 margin: float | None = None):
        if manifest.preprocessing is None or not manifest.labels:
            raise ValueError(f"{manifest.name}: manifest lacks preprocessing or labels")
        self.manifest = manifest
        self.labels = tuple(manifest.labels)
        pre = manifest.preprocessing
        self.size = (pre.height, pre.width)
        self._scale = np.float32(pre.scale)
        self._offset = np.float32(pre.offset)
        # The crop is the model's: it was trained on faces framed one way (the manifest says which); a config
        # margin overrides it on purpose only.
        self.margin = margin if margin is not None else (
            pre.crop_margin if pre.crop_margin is not None else DEFAULT_MARGIN)
        self.shift = pre.crop_shift
        # A one-pass model whose mirror image is read on the next call: the views a face gets over two calls.
        self.views = 2 if pre.mirror == "alternate" else 1
        self._mirror_next = False
        self._session, self.report = open_session(manifest, runtime, available, batch=MEASURE_BATCH)
        self._input = manifest.input_name or self._session.get_inputs()[0].name
        self.times = StageTimes()
        self._padded: np.ndarray | None = None    # the fixed batch every call is padded to (CUDA, by warm_up)
        # The calibration of the file that runs (TensorRT FP16 runs the FP32 file, and takes its calibration).
        self.calibration = next(v.calibration for v in manifest.variants if v.file == self.report.file)
        scale, bias = self.calibration.scale_bias(len(self.labels)) if self.calibration else (None, None)
        self._cal_scale = None if scale is None else np.array(scale, np.float32)
        self._cal_bias = None if bias is None else np.array(bias, np.float32)

    @property
    def runtime_report(self) -> RuntimeReport:
        return self.report

    def crop(self, frame_bgr: np.ndarray, boxes: tuple[FaceBox, ...] | list[FaceBox]) -> np.ndarray:
        """The faces in ``boxes`` cut out of the frame as this model wants them: (N, H, W) uint8 gray."""
        return crop_faces(frame_bgr, boxes, self.size, self.margin, self.shift)

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """The manifest's calibration on probabilities: softmax(log(p) * scale + bias), which is the same scaling of
        the logits (manifest.Calibration); unchanged where there is none."""
        if self._cal_scale is None or not len(probabilities):
            return probabilities
        z = np.log(np.maximum(probabilities, 1e-12)) * self._cal_scale + self._cal_bias
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 gray crops at the model's size -> (N, 1, H, W) float32 model input."""
        if crops.ndim != 3 or crops.shape[1:] != self.size:
            raise ValueError(f"expected (N, {self.size[0]}, {self.size[1]}) gray crops, got {crops.shape}")
        x = crops.astype(np.float32) * self._scale + self._offset
        return x[:, None, :, :]

    def warm_up(self, max_batch: int) -> None:
        """Get ready for a loop that sends 1..max_batch faces per call: run every shape it will see, before it starts.

        On the CPU that is one call per batch size (ONNX Runtime allocates on the first call at a shape). On the
        CUDA EP it also fixes the batch: the EP re-plans its cuDNN convolutions whenever the input shape changes,
        also back to a shape it has seen (measured on an H100, onnxruntime-gpu 1.31: 300-1200 ms per change), so a
        face walking in or out would miss the loop's deadline. There every call is padded to ``max_batch`` faces,
        which costs the GPU next to nothing (0.90 ms at 8 against 0.86 ms at 1). TensorRT's engine covers
        1..trt_max_batch in one optimisation profile and needs neither."""
        if self.report.provider == "cuda":
            self._padded = np.zeros((max_batch, 1, *self.size), np.float32)
            batches = [max_batch]
        else:
            batches = list(range(1, max_batch + 1))
        for batch in batches:
            self.classify(np.zeros((batch, *self.size), np.uint8))

    def __call__(self, crops: np.ndarray) -> ExpressionResult:
        return self.classify(crops)

    def classify(self, crops: np.ndarray, calibrated: bool = True, mirrored: bool | None = None) -> ExpressionResult:
        """All faces of a tick in one batched call (in padded calls of the fixed batch, where there is one).
        ``mirrored``: read the faces flipped left-right, or not; None: as the model wants (a model with two views
        gets its mirror image on every other call)."""
        if mirrored is None and self.views == 2:
            mirrored, self._mirror_next = self._mirror_next, not self._mirror_next
        if mirrored:
            crops = crops[:, :, ::-1]
        watch = Stopwatch(len(crops))
        probs = self._run(crops, watch)
        if calibrated:
            probs = self.calibrate(probs)
        watch.lap("post")
        self.times = watch.done()
        return ExpressionResult(probs, self.labels)

    def _run(self, crops: np.ndarray, watch: Stopwatch) -> np.ndarray:
        n = len(crops)
        if n == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        x = self.preprocess(crops)
        watch.lap("pre")
        if self._padded is None:
            out = self._session.run(None, {self._input: x})[0]
            watch.lap("model")
            return out
        parts, size = [], len(self._padded)
        for start in range(0, n, size):
            part = x[start:start + size]
            self._padded[:len(part)] = part
            self._padded[len(part):] = 0.0
            parts.append(self._session.run(None, {self._input: self._padded})[0][:len(part)])
        watch.lap("model")
        return np.concatenate(parts)
