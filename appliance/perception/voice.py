"""Vocal tone: 2 s of speech -> per-label probabilities, through the same log-mel function training used."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.runtime import RuntimeConfig
from appliance.manifest import ModelManifest
from appliance.perception.features import DEFAULT, clip_segments, fit_length, log_mel
from appliance.perception.stage import StageTimes, Stopwatch
from appliance.runtime import open_session

SEGMENT_S = 2.0


@dataclass(frozen=True)
class ToneResult:
    probabilities: np.ndarray   # (N, len(labels))
    labels: tuple[str, ...]


class SpeechBuffer:
    """Collects speech samples; every ``step_s`` of new speech it yields the last ``SEGMENT_S`` of speech."""

    def __init__(self, step_s: float = 1.0, min_speech_s: float = 1.0, sample_rate: int = DEFAULT.sample_rate):
        self.sample_rate = sample_rate
        self.size = int(SEGMENT_S * sample_rate)
        self.step = int(step_s * sample_rate)
        self.min_samples = int(min_speech_s * sample_rate)
        self.reset()

    def reset(self) -> None:
        # A ring of the last `size` samples of speech: a push copies only the new samples; the segment is put in
        # order only when one is handed out (once per `step_s` of speech).
        self._ring = np.zeros(self.size, np.float32)
        self._pos = 0
        self._filled = 0
        self._new = 0

    def push(self, speech: np.ndarray) -> np.ndarray | None:
        n = len(speech)
        if n == 0:
            return None
        if n >= self.size:
            speech, n = speech[-self.size:], self.size
        first = min(n, self.size - self._pos)
        self._ring[self._pos:self._pos + first] = speech[:first]
        self._ring[:n - first] = speech[first:]
        self._pos = (self._pos + n) % self.size
        self._filled = min(self.size, self._filled + n)
        self._new += n
        if self._new >= self.step and self._filled >= self.min_samples:
            self._new = 0
            ordered = np.concatenate([self._ring[self._pos:], self._ring[:self._pos]])
            return fit_length(ordered[self.size - self._filled:], self.size)
        return None


class LogMel:
    """``features(segments)``: (N, samples) speech segments -> (N, 1, mels, frames) log-mel, the tone model's input
    (the numpy function training used)."""

    name = "features"

    def __init__(self):
        self.times = StageTimes()

    def __call__(self, segments: np.ndarray) -> np.ndarray:
        watch = Stopwatch(len(segments))
        out = np.stack([log_mel(s) for s in segments])[:, None]
        watch.lap("pre")
        self.times = watch.done()
        return out


class VoiceToneModel:
    """``tone(features)``: log-mel input (``features``) -> per-label probabilities."""

    name = "tone"

    def __init__(self, manifest: ModelManifest, runtime: RuntimeConfig, available: list[str] | None = None):
        if not manifest.labels:
            raise ValueError(f"{manifest.name}: manifest lists no labels")
        self.manifest = manifest
        self.labels = tuple(manifest.labels)
        self.segment_samples = int(SEGMENT_S * DEFAULT.sample_rate)
        self._session, self.report = open_session(manifest, runtime, available)
        self._input = manifest.input_name or self._session.get_inputs()[0].name
        self.features = LogMel()
        self.times = StageTimes()

    @property
    def runtime_report(self):
        return self.report

    def warm_up(self) -> None:
        """One call at the loop's shape (one 2 s segment) before the loop starts: see ExpressionModel.warm_up."""
        self.classify(self.features(np.zeros((1, self.segment_samples), np.float32)))

    def __call__(self, features: np.ndarray) -> ToneResult:
        return self.classify(features)

    def classify(self, features: np.ndarray) -> ToneResult:
        watch = Stopwatch(len(features))
        x = features.astype(np.float32)
        watch.lap("pre")
        (probs,) = self._session.run(None, {self._input: x})
        watch.lap("model")
        self.times = watch.done()
        return ToneResult(probs, self.labels)

    def classify_clip(self, audio: np.ndarray, hop_s: float = 0.5) -> np.ndarray:
        """A whole clip: mean probabilities over 2 s windows every ``hop_s`` (how eval scores a clip)."""
        segments = np.stack(clip_segments(audio, self.segment_samples, int(hop_s * DEFAULT.sample_rate)))
        return self.classify(self.features(segments)).probabilities.mean(axis=0)
