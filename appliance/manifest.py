"""Model manifests: what a shipped model file is, where it came from and how well it does.

A manifest sits next to its model files (``models/<format>/<name>/manifest.json``). One manifest describes one
model and lists its precision variants (e.g. FP32 and INT8 QDQ), each with its own file, sha256 and measured
accuracy, so the runtime can pick a variant per execution provider without guessing.
"""

from __future__ import annotations

import hashlib
import json
import math
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Precision = Literal["fp32", "fp16", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Preprocessing(_Strict):
    """How raw pixels become the model's input tensor: ``x * scale + offset`` on a resized image."""

    color: Literal["gray", "rgb", "bgr"]
    height: int
    width: int
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = 1.0
    offset: float = 0.0
    formula: str = Field(description="the same transform written as people read it")
    # Face models: how the runtime cuts the face out of the frame around the detector's box, measured for the data
    # the model was trained on (None: the config's faces.margin, or 0.15).
    crop_margin: float | None = Field(default=None, description="per side, in box sides")
    crop_shift: float = Field(default=0.0, description="vertical shift of the crop's centre, in box sides (up < 0)")
    mirror: Literal["alternate"] | None = Field(default=None, description="alternate: the runtime flips the face "
                                                 "left-right on every other call, so a face followed from tick to "
                                                 "tick is read both ways and the window averages the two views")


class Accuracy(_Strict):
    dataset: str
    split: str
    n: int
    accuracy: float
    macro_f1: float
    command: str
    labels: str | None = Field(default=None, description="which labels the figures are against, where a dataset "
                               "has more than one set")
    ece: float | None = Field(default=None, description="expected calibration error, 15 bins, calibrated output")
    per_class: dict[str, dict[str, float]] | None = None
    angry_auc: float | None = Field(default=None, description="angry vs the rest, ROC AUC (voice: of the P(angry) "
                                    "the anger index reads, the anger head's where the model has one)")
    classifier_angry_auc: float | None = Field(default=None, description="the same by the classifier's angry "
                                               "output, where an anger head differs from it")


class Calibration(_Strict):
    """Applied by the runtime on the model's probabilities p: softmax(log(p) / temperature) (temperature scaling),
    or softmax(log(p) * scale + bias) per class (vector scaling). On log p these equal the same scalings of the
    logits: log p differs from the logits by a per-row constant, which softmax ignores (and a per-class scale turns
    into a per-row constant times the scale, which the fit absorbs)."""

    method: Literal["temperature", "vector"] = "temperature"
    temperature: float | None = Field(default=None, gt=0)
    scale: list[float] | None = Field(default=None, description="vector scaling: one factor per label")
    bias: list[float] | None = Field(default=None, description="vector scaling: one offset per label")
    fit_on: str
    chosen_by: str = ""
    ece_before: float | None = Field(default=None, description="on the report split, 15 bins")
    ece_after: float | None = None

    def scale_bias(self, labels: int) -> tuple[list[float], list[float]]:
        """The calibration as per-class factors and offsets on log p."""
        if self.method == "vector":
            if not self.scale or not self.bias or len(self.scale) != labels or len(self.bias) != labels:
                raise ValueError(f"vector calibration needs {labels} scale and bias values")
            return self.scale, self.bias
        if self.temperature is None:
            raise ValueError("temperature calibration needs a temperature")
        return [1.0 / self.temperature] * labels, [0.0] * labels


LOGIT_EPS = 1e-4     # probabilities are clipped this far from 0 and 1 before a logit


def logit(p: float) -> float:
    p = min(max(p, LOGIT_EPS), 1 - LOGIT_EPS)
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class AngerCalibration(_Strict):
    """The model's P(angry) as a calibrated probability: sigmoid(a * logit(p) + b), fitted on validation data with
    angry weighted as one of seven equally common emotions (see ``appliance.windows.fusion``)."""

    a: float
    b: float
    fit_on: str
    n: int
    weighting: str = "angry 1/7 (one of seven equally common emotions), the other labels the rest equally, per corpus"

    def apply(self, p: float) -> float:
        return sigmoid(self.a * logit(p) + self.b)


class AngerHead(_Strict):
    """A voice model's P(angry) for the anger index, from its classifier and the segment's prosody: sigmoid(
    classifier_weight * logit(P_classifier(angry)) + weights . z + bias), z the standardised prosodic functionals
    (``appliance.perception.prosody``; a missing pitch functional takes ``fill``). Fitted by
    ``models/recipes/voice_anger_head.py`` on training speakers of every corpus, one weight set for every variant."""

    features: list[str] = Field(description="names from appliance.perception.prosody.NAMES, in weights order")
    fill: list[float] = Field(description="value of a missing (NaN) functional: its training median")
    mean: list[float]
    std: list[float]
    weights: list[float]
    classifier_weight: float
    bias: float
    fit_on: str
    chosen_by: str
    figures: dict = Field(default_factory=dict, description="held-out figures written by the recipe")

    @model_validator(mode="after")
    def _same_lengths(self) -> "AngerHead":
        n = len(self.features)
        if not all(len(v) == n for v in (self.fill, self.mean, self.std, self.weights)):
            raise ValueError(f"anger head: features, fill, mean, std and weights need {n} values each")
        return self

    def columns(self, names: tuple[str, ...]) -> list[int]:
        """Where each of the head's features sits in a prosody vector of ``names`` (a clear error if absent)."""
        missing = [f for f in self.features if f not in names]
        if missing:
            raise ValueError(f"anger head needs prosodic features {missing}, which this runtime does not compute")
        return [names.index(f) for f in self.features]

    @cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # Built once: the daemon applies the head once per second of speech.
        return tuple(np.asarray(v, dtype=np.float64) for v in (self.fill, self.mean, self.std, self.weights))

    def design(self, prosody: np.ndarray, p_angry: np.ndarray) -> np.ndarray:
        """The head's inputs: the standardised functionals (missing ones filled), then logit of the classifier's
        P(angry). The recipe fits on exactly these columns."""
        fill, mean, std, _ = self.arrays
        x = np.where(np.isnan(prosody), fill, prosody)
        p = np.clip(np.asarray(p_angry, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
        return np.column_stack([(x - mean) / std, np.log(p / (1 - p))])

    def apply(self, prosody: np.ndarray, p_angry: np.ndarray) -> np.ndarray:
        """(N, len(features)) functionals in the head's order and (N,) classifier P(angry) -> (N,) P(angry)."""
        z = self.design(prosody, p_angry) @ np.r_[self.arrays[3], self.classifier_weight] + self.bias
        return 1.0 / (1.0 + np.exp(-z))


class SpeechEncoder(_Strict):
    """A frozen speech encoder the head reads, shipped in the model's folder (voice anger models): the daemon opens
    it on the CPU, single precision as shipped, and checks its sha256 as for a variant."""

    file: str
    sha256: str
    bytes: int
    input_name: str
    input_shape: list[int] = Field(description="one item, without the batch dimension")
    output_name: str
    frames_name: str | None = Field(default=None, description="the encoder's per-frame output the head also reads, "
                                    "as its input of the same name (None: the head reads the pooled output only)")
    source: str = Field(description="where the weights come from: package, member, pinned sha256")
    licence: str
    prosody: list[str] = Field(description="the head's prosodic inputs after the embedding, names from "
                                           "appliance.perception.prosody.NAMES; then the tone model's logit")
    fill: list[float] = Field(description="value of a missing (NaN) functional: its training median")


class CpuForm(_Strict):
    """An INT8 QDQ variant written for ONNX Runtime's CPU kernels: the same quantized values with uint8 weights and
    activations (int8 + 128, zero points + 128). ONNX Runtime multiplies uint8 x int8 with a saturating
    instruction on x86 CPUs without VNNI, uint8 x uint8 exactly everywhere; so this form reads the manifest's
    figures on every CPU, while the signed file stays the one TensorRT takes. Written by
    ``models/recipes/int8_cpu_form.py``."""

    file: str
    sha256: str
    bytes: int


class Variant(_Strict):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    precision: Precision
    file: str
    sha256: str
    bytes: int
    quantization: dict | None = None
    accuracy: Accuracy | None = None
    more_accuracy: list[Accuracy] = Field(default_factory=list, description="the same files on other label sets")
    calibration: Calibration | None = None
    anger: AngerCalibration | None = Field(default=None, description="calibrated P(angry) for the anger index")
    cpu_form: CpuForm | None = Field(default=None, description="INT8: the file the CPU opens in place of ``file``")


class Provenance(_Strict):
    source: str
    licence: str
    recipe: str
    notes: str = ""


class ModelManifest(_Strict):
    name: str
    version: str
    task: str
    format: Literal["onnx", "tflite"]
    labels: list[str] = Field(default_factory=list)
    input_name: str | None = None
    input_shape: list[int] | None = Field(default=None, description="one item, without the batch dimension")
    output_name: str | None = None
    preprocessing: Preprocessing | None = None
    variants: list[Variant]
    # Which precision each execution provider should get under precision="auto", from benchmarks on that
    # provider (e.g. INT8 is slower than FP32 on a small CPU but faster under TensorRT).
    provider_precision: dict[str, Precision] = Field(default_factory=dict)
    provider_precision_source: str = ""
    provenance: Provenance
    anger_head: AngerHead | None = Field(default=None, description="voice models: the P(angry) the anger index "
                                         "reads, where it is more than the classifier's angry output")

    encoder: SpeechEncoder | None = Field(default=None, description="voice anger models: the encoder whose "
                                          "embedding the variants' head reads")

    # Set by load_manifest, not stored in the file.
    directory: Path | None = Field(default=None, exclude=True)

    def variant(self, precision: str) -> Variant | None:
        return next((v for v in self.variants if v.precision == precision), None)

    def precisions(self) -> list[str]:
        return [v.precision for v in self.variants]

    def path_of(self, variant: Variant | CpuForm) -> Path:
        if self.directory is None:
            raise ValueError(f"manifest {self.name} was not loaded from disk")
        return self.directory / variant.file


class ModelFileError(RuntimeError):
    """A model file is missing or does not match its manifest."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(directory: Path) -> ModelManifest:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise ModelFileError(f"no model manifest at {path}")
    try:
        manifest = ModelManifest.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as e:      # malformed JSON, or fields the manifest format does not allow
        raise ModelFileError(f"{path}: not a valid model manifest: {e}") from e
    manifest.directory = Path(directory)
    return manifest


def verify_variant(manifest: ModelManifest, variant: Variant, cpu: bool = False) -> Path:
    """Return the variant's file after checking it exists and its sha256 matches the manifest; with ``cpu``, its
    CPU form where it has one."""
    form = variant.cpu_form if cpu and variant.cpu_form else variant
    path = manifest.path_of(form)
    if not path.is_file():
        raise ModelFileError(f"{manifest.name} {variant.precision}: model file {path} is missing")
    actual = sha256_of(path)
    if actual != form.sha256:
        raise ModelFileError(
            f"{manifest.name} {variant.precision}: {path} has sha256 {actual[:12]}…, "
            f"manifest says {form.sha256[:12]}…; rebuild it with {manifest.provenance.recipe}"
        )
    return path


def write_manifest(manifest: ModelManifest, directory: Path) -> Path:
    path = Path(directory) / "manifest.json"
    path.write_text(json.dumps(manifest.model_dump(mode="json", exclude_none=False), indent=2) + "\n")
    return path
