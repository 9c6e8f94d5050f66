"""Facial expression classifier: a batch of gray face crops -> per-label probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.config import RuntimeConfig
from appliance.manifest import ModelManifest
from appliance.runtime import RuntimeReport, open_session


@dataclass(frozen=True)
class ExpressionResult:
    probabilities: np.ndarray  # (N, len(labels)), rows sum to 1
    labels: tuple[str, ...]


class ExpressionModel:
    def __init__(self, manifest: ModelManifest, runtime: RuntimeConfig, available: list[str] | None = None):
        if manifest.preprocessing is None or not manifest.labels:
            raise ValueError(f"{manifest.name}: manifest lacks preprocessing or labels")
        self.manifest = manifest
        self.labels = tuple(manifest.labels)
        pre = manifest.preprocessing
        self.size = (pre.height, pre.width)
        self._scale = np.float32(pre.scale)
        self._offset = np.float32(pre.offset)
        self._session, self.report = open_session(manifest, runtime, available)
        self._input = manifest.input_name or self._session.get_inputs()[0].name

    @property
    def runtime_report(self) -> RuntimeReport:
        return self.report

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 gray crops at the model's size -> (N, 1, H, W) float32 model input."""
        if crops.ndim != 3 or crops.shape[1:] != self.size:
            raise ValueError(f"expected (N, {self.size[0]}, {self.size[1]}) gray crops, got {crops.shape}")
        x = crops.astype(np.float32) * self._scale + self._offset
        return x[:, None, :, :]

    def classify(self, crops: np.ndarray) -> ExpressionResult:
        """All faces of a tick in one batched call."""
        if len(crops) == 0:
            return ExpressionResult(np.zeros((0, len(self.labels)), np.float32), self.labels)
        (probs,) = self._session.run(None, {self._input: self.preprocess(crops)})
        return ExpressionResult(probs, self.labels)
