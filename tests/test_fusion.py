"""The anger index: per-model calibrations and the shipped face + voice fusion (models/fusion.json)."""

from __future__ import annotations

import json
import shutil

import pytest

from appliance.manifest import logit, sigmoid
from appliance.windows.fusion import FUSION_FILE, FusionFile, load_fusion
from appliance.manifest import ModelFileError, load_manifest
from conftest import ROOT

MODELS = ROOT / "models"
FACE_MODELS = ("ferplus_cnn_one_pass", "ferplus_cnn", "fer_mini_xception")


def manifest(name):
    return load_manifest(MODELS / "onnx" / name)


def test_every_shipped_variant_has_an_anger_calibration_and_every_pair_a_fusion():
    voice = manifest("voice_tone_cnn")
    for name in (*FACE_MODELS, "voice_tone_cnn"):
        for v in manifest(name).variants:
            assert v.anger is not None and v.anger.a > 0 and v.anger.n > 100, (name, v.precision)
    fusion = FusionFile.model_validate(json.loads((MODELS / FUSION_FILE).read_text()))
    for name in FACE_MODELS:
        face = manifest(name)
        for precision in ("fp32", "int8"):
            shas = (face.variant(precision).sha256, voice.variant(precision).sha256)
            pair = [p for p in fusion.pairs if (p.face_sha256, p.voice_sha256) == shas]
            assert len(pair) == 1 and pair[0].w_face > 0 and pair[0].w_voice > 0, (name, precision)
            assert pair[0].at_least_each, (name, precision)      # neither modality can veto the other


def test_one_modality_gives_its_calibrated_value_and_both_the_fitted_mix():
    face, voice = manifest("ferplus_cnn"), manifest("voice_tone_cnn")
    index = load_fusion(MODELS, face, "int8.onnx", voice, "fp32.onnx")
    cal_f, cal_v = face.variant("int8").anger, voice.variant("fp32").anger
    assert index(0.3, None) == pytest.approx(sigmoid(cal_f.a * logit(0.3) + cal_f.b), abs=1e-4)
    assert index(None, 0.3) == pytest.approx(sigmoid(cal_v.a * logit(0.3) + cal_v.b), abs=1e-4)
    assert index(None, None) is None
    p = index.pair
    for f, v in ((0.2, 0.7), (0.9, 0.05), (0.05, 0.95), (0.5, 0.5), (0.01, 0.01)):
        fused = sigmoid(p.w_face * f + p.w_voice * v + p.bias)
        assert index(f, v) == pytest.approx(max(fused, index(f, None), index(None, v)), abs=1e-4), (f, v)
    # Where the two agree the fitted mix is above either alone: the floor is not all there is.
    assert index(0.6, 0.6) > max(index(0.6, None), index(None, 0.6))
    # Monotone in each modality, and in [0, 1] at the ends.
    grid = [0.0, 0.05, 0.2, 0.5, 0.8, 1.0]
    for f in grid:
        row = [index(f, v) for v in grid]
        assert row == sorted(row) and 0 <= row[0] and row[-1] <= 1
    # A clearly angry voice is not cancelled by a face that misses the anger (the case the plain mean got wrong,
    # and the logistic alone too: the face model reads some shouting faces in video as happy).
    assert index(0.05, 0.95) == index(None, 0.95) > index(0.05, 0.1) + 0.3


def test_a_modality_sets_the_floor_only_on_the_evidence_it_would_need_alone():
    """In the alert's short window: with a calm face in view, one angry second of speech must not raise the alert
    that the voice alone could not (it needs alerts.min_evidence_s of speech); two seconds may."""
    from appliance.windows.alerts import Anger
    from appliance.windows.config import AlertsConfig

    face, voice = manifest("ferplus_cnn"), manifest("voice_tone_cnn")
    index = load_fusion(MODELS, face, "int8.onnx", voice, "fp32.onnx")
    assert index(0.01, 0.99, voice_alone=False) == index(0.01, 0.99, face_alone=True, voice_alone=False) < 0.5
    assert index(0.01, 0.99) == index(None, 0.99) > 0.9

    def alerts(voice_seconds):
        anger = Anger(AlertsConfig(), tick_period_s=0.1, voice_step_s=1.0, anger_index=index)
        ticks = [(i * 0.1, 0.01, 0.99 if i >= 60 and i % 10 == 0 and (i - 60) // 10 < voice_seconds else None)
                 for i in range(100)]
        return [a for a in (anger.update(*t) for t in ticks) if a]

    assert alerts(1) == []
    fired = alerts(2)
    assert len(fired) == 1 and fired[0].voice_anger > 0.9 and fired[0].face_anger < 0.05


def test_a_fusion_file_without_the_floor_keeps_the_logistic_alone(tmp_path):
    fusion = json.loads((MODELS / FUSION_FILE).read_text())
    for pair in fusion["pairs"]:
        del pair["at_least_each"]
    (tmp_path / FUSION_FILE).write_text(json.dumps(fusion))
    index = load_fusion(tmp_path, manifest("ferplus_cnn"), "int8.onnx", manifest("voice_tone_cnn"), "fp32.onnx")
    p = index.pair
    assert index(0.05, 0.95) == pytest.approx(sigmoid(p.w_face * 0.05 + p.w_voice * 0.95 + p.bias), abs=1e-4)
    assert index(0.05, 0.95) < index(None, 0.95)


def test_no_voice_model_needs_no_fusion_file(tmp_path):
    index = load_fusion(tmp_path, manifest("ferplus_cnn"), "int8.onnx")
    assert index(0.5, 0.9) == index(0.5, None)      # a voice value without a voice model is ignored


def test_a_pair_never_fitted_or_a_missing_calibration_is_a_clear_error(tmp_path):
    face, voice = manifest("ferplus_cnn"), manifest("voice_tone_cnn")
    with pytest.raises(ModelFileError, match="fusion.json: missing; fit it with"):
        load_fusion(tmp_path, face, "int8.onnx", voice, "fp32.onnx")
    fusion = json.loads((MODELS / FUSION_FILE).read_text())
    fusion["pairs"] = [p for p in fusion["pairs"] if p["face_model"] != "ferplus_cnn"]
    (tmp_path / FUSION_FILE).write_text(json.dumps(fusion))
    with pytest.raises(ModelFileError, match="no fusion fitted for face model ferplus_cnn with voice model"):
        load_fusion(tmp_path, face, "int8.onnx", voice, "fp32.onnx")
    shutil.copytree(MODELS / "onnx" / "ferplus_cnn", tmp_path / "face")
    data = json.loads((tmp_path / "face" / "manifest.json").read_text())
    data["variants"][1]["anger"] = None
    (tmp_path / "face" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=r"ferplus_cnn \(int8.onnx\): the manifest has no anger calibration"):
        load_fusion(MODELS, load_manifest(tmp_path / "face"), "int8.onnx", voice, "fp32.onnx")
