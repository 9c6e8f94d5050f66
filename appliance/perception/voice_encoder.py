"""The voice's anger from a pretrained speech encoder: 2 s segment -> Smart Turn embedding + today's features -> P(angry).

The tone CNN trained on English actors hears anger as loudness and arousal; on languages it never heard its anger
fades (``benchmarks/results/voice_loco/``). This model (``models/onnx/voice_anger_encoder``, made by
``models/recipes/voice_anger_encoder.py``) reads the segment through Smart Turn v3.2's encoder, a Whisper-tiny
fine-tuned on end-of-turn prosody in 23 languages, and a head over its pooled layers and (2.0.0) its frames, the
segment's prosodic functionals and the tone CNN's logit. It replaces the tone model's anger head for the anger index; the tone model's
label distribution is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.manifest import LOGIT_EPS, ModelFileError, ModelManifest
from appliance.perception.features import DEFAULT
from appliance.perception.stage import StageTimes, Stopwatch
from appliance.perception.whisper_mel import compute_whisper_log_mel_features
from appliance.runtime import RuntimeConfig, open_session

ENCODER_SECONDS = 8
SEGMENT_SECONDS = 2
# The encoder's frames are 20 ms: the last 100 hold the 2 s segment.
SEGMENT_FRAMES = SEGMENT_SECONDS * 50


def encoder_input(segment: np.ndarray) -> np.ndarray:
    """(80, 800) Whisper log-mel of the segment padded at the start to 8 s (as Smart Turn pads), waveform normalised."""
    n = ENCODER_SECONDS * DEFAULT.sample_rate
    audio = np.asarray(segment, np.float32)[-n:]
    return compute_whisper_log_mel_features(np.pad(audio, (n - len(audio), 0)), do_normalize=True)


class EncoderFileError(ModelFileError):
    """The speech encoder file is missing or not the one the manifest names: written by the recipe, not by git."""


def encoder_file(manifest: ModelManifest) -> Path:
    """The speech encoder a voice anger model reads (not kept in git: ``make setup`` and the Jetson install write
    it): present and the file its manifest names, or a ``ModelFileError`` that says how to write it."""
    from appliance.manifest import sha256_of

    spec = manifest.encoder
    if spec is None or manifest.directory is None:
        raise ModelFileError(f"{manifest.name}: the manifest names no speech encoder; rebuild it with "
                             f"{manifest.provenance.recipe}")
    path = manifest.directory / spec.file
    if not path.is_file():
        raise EncoderFileError(f"{manifest.name}: encoder file {path} is missing; rebuild it with "
                               f"{manifest.provenance.recipe}")
    if sha256_of(path) != spec.sha256:
        raise EncoderFileError(f"{manifest.name}: encoder file {path} does not match the manifest's sha256; "
                               f"rebuild it with {manifest.provenance.recipe}")
    return path


def configured(onnx_dir: Path, name: str, runtime: RuntimeConfig) -> "AngerEncoder | None":
    """The anger encoder ``voice.anger_model`` names (a folder under ``onnx_dir``), or None where it names none."""
    from appliance.manifest import load_manifest

    return AngerEncoder(load_manifest(Path(onnx_dir) / name), runtime) if name else None


class AngerEncoder:
    """``anger(segments, prosody, p_angry)``: (N, samples) 2 s segments, their prosodic functionals (all of
    ``prosody.NAMES``) and the tone model's P(angry) -> (N,) P(angry). Times its pre-process (log-mel), the encoder
    and the head."""

    name = "anger"

    def __init__(self, manifest: ModelManifest, runtime: RuntimeConfig, available: list[str] | None = None,
                 threads: int | None = None):
        import onnxruntime as ort

        from appliance.perception.prosody import NAMES

        path = encoder_file(manifest)
        spec = manifest.encoder
        unknown = [n for n in spec.prosody if n not in NAMES]
        if unknown:
            raise ModelFileError(f"{manifest.name}: the head reads prosodic features {unknown} that this version "
                                 f"does not compute; rebuild it with {manifest.provenance.recipe}")
        self._columns = [NAMES.index(n) for n in spec.prosody]
        self.manifest = manifest
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or runtime.intra_op_threads or 1
        options.inter_op_num_threads = 1
        # The encoder exists only as its authors' INT8 CPU graph; it runs on the voice worker, beside the loop, so
        # its one thread never takes a tick's time.
        self._encoder = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._fill = np.asarray(spec.fill, np.float32)
        self._head, self.report = open_session(manifest, runtime, available)
        self._head_input = manifest.input_name or self._head.get_inputs()[0].name
        # A head that also reads the encoder's frames (spec.frames_name) takes them as its second input, by name.
        self._outputs = [spec.output_name] + ([spec.frames_name] if spec.frames_name else [])
        head_inputs = {i.name for i in self._head.get_inputs()}
        if spec.frames_name and spec.frames_name not in head_inputs:
            raise ModelFileError(f"{manifest.name}: the head has no input {spec.frames_name!r} for the encoder's "
                                 f"frames; rebuild it with {manifest.provenance.recipe}")
        self.times = StageTimes()

    def __call__(self, segments: np.ndarray, prosody: np.ndarray, p_angry: np.ndarray) -> np.ndarray:
        watch = Stopwatch(len(segments))
        mel = np.stack([encoder_input(s) for s in segments])
        watch.lap("pre")
        encoded = self._encoder.run(self._outputs, {self.manifest.encoder.input_name: mel})
        watch.lap("model")
        x = prosody[:, self._columns].astype(np.float32)
        x = np.where(np.isnan(x), self._fill, x)
        p = np.clip(np.asarray(p_angry, np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
        features = np.column_stack([encoded[0], x, np.log(p / (1 - p))]).astype(np.float32)
        feeds = {self._head_input: features}
        if len(encoded) > 1:
            feeds[self._outputs[1]] = encoded[1]
        (anger,) = self._head.run(None, feeds)
        watch.lap("post")
        self.times = watch.done()
        return anger.reshape(-1).astype(np.float64)
