"""Vocal tone: 2 s of speech -> per-label probabilities, through the same log-mel function training used, and the
segment's P(angry) for the anger index (the classifier's, or its manifest's anger head on it and the prosody)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from appliance.runtime import RuntimeConfig
from appliance.manifest import ModelFileError, ModelManifest
from appliance.perception.features import DEFAULT, clip_segments, fit_length, log_mel
from appliance.perception.prosody import NAMES as PROSODY_NAMES, prosody
from appliance.perception.stage import StageTimes, Stopwatch
from appliance.runtime import open_session

SEGMENT_S = 2.0


@dataclass(frozen=True)
class ToneResult:
    probabilities: np.ndarray   # (N, len(labels))
    labels: tuple[str, ...]
    anger: np.ndarray           # (N,) P(angry) for the anger index (uncalibrated: the manifest's ``anger`` maps it)


class SegmentFeatures(NamedTuple):
    log_mel: np.ndarray                 # (N, 1, mels, frames): the tone model's input
    prosody: np.ndarray | None          # (N, len(PROSODY_NAMES)), where the model has an anger head or encoder
    segments: np.ndarray | None = None  # (N, samples) the audio itself, where an anger encoder reads it


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


class VoiceFeatures:
    """``features(segments)``: (N, samples) speech segments -> their log-mel (the tone model's input) and, for a
    model with an anger head, their prosodic functionals (the numpy functions training used)."""

    name = "features"

    def __init__(self, prosody: bool = False, keep_audio: bool = False):
        self.prosody = prosody
        self.keep_audio = keep_audio
        self.times = StageTimes()

    def __call__(self, segments: np.ndarray) -> SegmentFeatures:
        watch = Stopwatch(len(segments))
        mel = np.stack([log_mel(s) for s in segments])[:, None]
        functionals = np.stack([prosody(s) for s in segments]) if self.prosody else None
        watch.lap("pre")
        self.times = watch.done()
        return SegmentFeatures(mel, functionals, segments if self.keep_audio else None)


class VoiceToneModel:
    """``tone(features)``: log-mel input (``features``) -> per-label probabilities; P(angry) from the manifest's anger
    head, or from ``anger``, an encoder model (``voice_encoder.AngerEncoder``) that reads the segment itself and the
    tone model's P(angry). With an encoder, ``times`` hold the tone model's and the encoder's parts together."""

    name = "tone"

    def __init__(self, manifest: ModelManifest, runtime: RuntimeConfig, available: list[str] | None = None,
                 anger=None):
        if not manifest.labels:
            raise ValueError(f"{manifest.name}: manifest lists no labels")
        self.manifest = manifest
        self.labels = tuple(manifest.labels)
        self.segment_samples = int(SEGMENT_S * DEFAULT.sample_rate)
        self._session, self.report = open_session(manifest, runtime, available)
        self._input = manifest.input_name or self._session.get_inputs()[0].name
        self._angry = self.labels.index("angry") if "angry" in self.labels else None
        self.head = manifest.anger_head
        self._head_columns = None
        if self.head is not None:
            try:
                if self._angry is None:
                    raise ValueError("an anger head needs an 'angry' label")
                self._head_columns = self.head.columns(PROSODY_NAMES)
            except ValueError as e:
                raise ModelFileError(f"{manifest.name}: {e}; rebuild it with models/recipes/voice_anger_head.py") from e
        self.anger_model = anger
        if anger is not None and self._angry is None:
            raise ModelFileError(f"{manifest.name}: an anger encoder reads the tone model's 'angry' output; "
                                 "this model has none")
        self.features = VoiceFeatures(prosody=self.head is not None or anger is not None, keep_audio=anger is not None)
        self.times = StageTimes()

    @property
    def runtime_report(self):
        return self.report

    def warm_up(self) -> None:
        """One call at the loop's shape (one 2 s segment) before the loop starts: see ExpressionModel.warm_up."""
        self.classify(self.features(np.zeros((1, self.segment_samples), np.float32)))

    def __call__(self, features: SegmentFeatures) -> ToneResult:
        return self.classify(features)

    def classify(self, features: SegmentFeatures) -> ToneResult:
        watch = Stopwatch(len(features.log_mel))
        x = features.log_mel.astype(np.float32)
        watch.lap("pre")
        (probs,) = self._session.run(None, {self._input: x})
        watch.lap("model")
        if self.anger_model is not None:
            if features.segments is None or features.prosody is None:
                raise ValueError(f"{self.manifest.name} with an anger encoder: its features need the audio and the "
                                 "prosody (as model.features keeps them)")
            anger = self.anger_model(features.segments, features.prosody, probs[:, self._angry])
            watch.absorb(self.anger_model.times)
        elif self._angry is None:
            anger = np.full(len(probs), np.nan)
        elif self.head is None:
            anger = probs[:, self._angry].astype(np.float64)
        else:
            if features.prosody is None:
                raise ValueError(f"{self.manifest.name} has an anger head: its features need the prosody "
                                 "(VoiceFeatures(prosody=True), as model.features is)")
            anger = self.head.apply(features.prosody[:, self._head_columns], probs[:, self._angry])
        watch.lap("post")
        self.times = watch.done()
        return ToneResult(probs, self.labels, anger)

    def classify_clip(self, audio: np.ndarray, hop_s: float = 0.5) -> ToneResult:
        """A whole clip as one row: the mean probabilities and P(angry) over 2 s windows every ``hop_s`` (how eval
        scores a clip)."""
        segments = np.stack(clip_segments(audio, self.segment_samples, int(hop_s * DEFAULT.sample_rate)))
        result = self.classify(self.features(segments))
        return ToneResult(result.probabilities.mean(axis=0, keepdims=True), self.labels,
                          result.anger.mean(keepdims=True))
