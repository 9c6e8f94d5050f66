"""The anger index: one calibrated combination of the face and voice P(angry), whichever are present.

Each model's manifest carries, per variant, an ``anger`` calibration (``AngerCalibration``): a logistic map of its
P(angry) fitted on that model's validation data with angry weighted as one of seven equally common emotions
(whatever mix the data had). Calibrated this way a modality's output reads as "how likely angry, if angry were one
of seven equally common moods": about 0.14 is evidence that points neither way, 0.5 as likely angry as not.
``models/fusion.json`` holds, per pair of face and voice model, the logistic weights that combine the two models'
P(angry) when both are present: sigmoid(w_face * face + w_voice * voice + bias), a (weighted) mean made a calibrated
probability, fitted with the same weighting on validation faces and voices paired by label by
``models/recipes/anger_fusion.py``. One modality alone gives its calibrated value; neither gives no index.

With ``at_least_each`` (what the recipe ships) the index with both present is never below either modality's own
calibrated value. The fit above is made on still faces that the face model reads well; on video it reads some
angry faces as happy (``appliance eval video``), and such a face must not silence an angry voice, nor a quiet
voice an angry face. The agreement of the two can still raise the index above either one alone.

Probabilities, not log-odds, are combined on purpose: on log-odds a modality that is confidently wrong outvotes
the other without bound, and the face model is known to miss anger on real faces that the voice hears; on
probabilities each modality moves the index by at most its weight. On held-out pairs the weighted mean also ranks
better than the sum of log-odds (``benchmarks/results/anger_fusion.md``).

The anger index in summaries and alerts is this value over the window's mean P(angry) of each modality.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from appliance.manifest import AngerCalibration, ModelFileError, ModelManifest, Variant, sigmoid

FUSION_FILE = "fusion.json"


class PairFusion(BaseModel):
    """Both modalities present: sigmoid(w_face * face + w_voice * voice + bias) on the models' P(angry)."""

    model_config = ConfigDict(extra="forbid")

    face_model: str
    face_sha256: str = Field(description="the face variant the weights were fitted with (fusion is fitted per pair)")
    voice_model: str
    voice_sha256: str
    w_face: float
    w_voice: float
    bias: float
    at_least_each: bool = Field(False, description="the index is never below either modality's calibrated value "
                                                   "(neither can veto the other); false in files written before it")
    fit_on: str
    figures: dict = Field(default_factory=dict, description="validation figures written by the recipe")


class FusionFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    recipe: str = "models/recipes/anger_fusion.py"
    pairs: list[PairFusion]


class AngerIndex:
    """Calibrates each modality's window P(angry) and combines them; one instance per running pipeline."""

    def __init__(self, face: AngerCalibration, voice: AngerCalibration | None, pair: PairFusion | None):
        self.face = face
        self.voice = voice
        self.pair = pair

    def face_value(self, face: float | None) -> float | None:
        """The face's calibrated P(angry) (what an alert reports beside the index)."""
        return None if face is None else round(self.face.apply(face), 4)

    def voice_value(self, voice: float | None) -> float | None:
        return None if voice is None or self.voice is None else round(self.voice.apply(voice), 4)

    def __call__(self, face: float | None, voice: float | None, *, face_alone: bool = True,
                 voice_alone: bool = True) -> float | None:
        """``face_alone`` / ``voice_alone``: whether that modality has enough evidence to stand alone, i.e. to set
        the floor (the alert's short window: as much as it would need with the other absent)."""
        if face is not None and voice is not None and self.voice is not None and self.pair is not None:
            z = self.pair.w_face * face + self.pair.w_voice * voice + self.pair.bias
            fused = round(sigmoid(z), 4)
            if not self.pair.at_least_each:
                return fused
            if face_alone:
                fused = max(fused, self.face_value(face))
            if voice_alone:
                fused = max(fused, self.voice_value(voice))
            return fused
        return self.face_value(face) if face is not None else self.voice_value(voice)


def _variant(manifest: ModelManifest, file: str) -> Variant:
    """The variant whose file runs (TensorRT FP16 runs the FP32 file, and takes its calibration)."""
    variant = next((v for v in manifest.variants if v.file == file), None)
    if variant is None or variant.anger is None:
        raise ModelFileError(f"{manifest.name} ({file}): the manifest has no anger calibration; fit it with "
                             "python models/recipes/anger_fusion.py")
    return variant


def load_fusion(models_dir: Path, face: ModelManifest, face_file: str, voice: ModelManifest | None = None,
                voice_file: str | None = None) -> AngerIndex:
    """The anger index for the model files the daemon runs; a clear error where the pair was never fitted."""
    face_variant = _variant(face, face_file)
    if voice is None or voice_file is None:
        return AngerIndex(face_variant.anger, None, None)
    voice_variant = _variant(voice, voice_file)
    path = Path(models_dir) / FUSION_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: missing; fit it with python models/recipes/anger_fusion.py")
    fusion = FusionFile.model_validate(json.loads(path.read_text()))
    shas = (face_variant.sha256, voice_variant.sha256)
    pair = next((p for p in fusion.pairs if (p.face_sha256, p.voice_sha256) == shas), None)
    if pair is None:
        # Same models, other precisions: the weights act on calibrated log-odds, which the precisions share closely.
        pair = next((p for p in fusion.pairs if (p.face_model, p.voice_model) == (face.name, voice.name)), None)
    if pair is None:
        raise ModelFileError(f"{path}: no fusion fitted for face model {face.name} with voice model {voice.name}; "
                             "fit it with python models/recipes/anger_fusion.py")
    return AngerIndex(face_variant.anger, voice_variant.anger, pair)
