"""`appliance eval faces`: the contract JSON, clear errors, and FER2013 PublicTest accuracy for FP32 and INT8."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest

from appliance.tools.metrics import classification_metrics
from conftest import DEMO, appliance_cmd, appliance_env


def test_metrics_by_hand():
    m = classification_metrics(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["per_class"]["a"] == {"recall": 0.5, "precision": 0.5, "n": 2}
    assert m["per_class"]["b"] == {"recall": 1.0, "precision": 0.6667, "n": 2}
    assert m["per_class"]["c"] == {"recall": 0.0, "precision": 0.0, "n": 1}
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def small_dataset(tmp_path):
    cap = cv2.VideoCapture(str(DEMO))
    ok, frame = cap.read()
    face = cv2.cvtColor(frame[68:374, 248:554], cv2.COLOR_BGR2GRAY)
    for label in ("happy", "neutral"):
        (tmp_path / "ds" / label).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "ds" / label / f"{i}.png"), cv2.resize(face, (48 + i, 48 + i)))
    return tmp_path / "ds"


def test_eval_cli_writes_the_contract_json(tmp_path):
    ds = small_dataset(tmp_path)
    out = tmp_path / "report.json"
    proc = subprocess.run(appliance_cmd("eval", "faces", str(ds), "--json", str(out)), env=appliance_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "per_class", "n", "model"} <= set(report)
    assert report["n"] == 6 and report["per_class"]["happy"]["n"] == 3 and report["per_class"]["angry"]["n"] == 0
    assert "accuracy" in proc.stdout and "macro-F1" in proc.stdout


def test_eval_rejects_unknown_label_folders_and_empty_dirs(tmp_path):
    ds = small_dataset(tmp_path)
    (ds / "contempt").mkdir()
    proc = subprocess.run(appliance_cmd("eval", "faces", str(ds)), env=appliance_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "['contempt'] are not labels" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(appliance_cmd("eval", "faces", str(tmp_path / "empty")), env=appliance_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no images" in proc.stderr


def test_reframe_crops_tighter_and_looser_about_the_centre():
    from appliance.tools.evaluation import reframe

    image = np.zeros((48, 48), np.uint8)
    image[16:32, 16:32] = 200                     # a bright square, a third of the side, in the middle
    assert reframe(image, 1.0) is image
    tight, loose = reframe(image, 0.5), reframe(image, 2.0)
    bright = lambda im: int((im > 100).sum())
    assert bright(tight) > 3 * bright(image) and bright(loose) < bright(image) / 3
    assert tight[24, 24] == 200 and loose[24, 24] == 200 and tight.shape == loose.shape == (48, 48)
    edge = image.copy()
    edge[:, :2] = 90                              # looser framing repeats the border, it does not add black
    assert (reframe(edge, 1.5)[:, 0] == 90).all()


def test_eval_faces_crop_scale_is_reported_and_bounded(tmp_path):
    ds = small_dataset(tmp_path)
    reports = {}
    for scale in ("1.0", "0.6"):
        out = tmp_path / f"{scale}.json"
        proc = subprocess.run(appliance_cmd("eval", "faces", str(ds), "--crop-scale", scale, "--json", str(out)),
                              env=appliance_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        reports[scale] = json.loads(out.read_text())
    assert "crop-scale=0.6" in reports["0.6"]["dataset"] and "crop-scale" not in reports["1.0"]["dataset"]
    proc = subprocess.run(appliance_cmd("eval", "faces", str(ds), "--crop-scale", "3"), env=appliance_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--crop-scale 3: use a scale from 0.5" in proc.stderr


@pytest.fixture(scope="module")
def ferplus_reports(tmp_path_factory):
    """One `appliance eval faces --labels ferplus` run per precision, shared by the tests of this module."""
    return {}


def ferplus_report(tmp_path, data_dir, precision: str, cache: dict) -> dict:
    if precision in cache:
        return cache[precision]
    out = tmp_path / f"{precision}.json"
    proc = subprocess.run(appliance_cmd("eval", "faces", str(data_dir / "faces" / "ferplus"), "--labels", "ferplus",
                                        "--precision", precision, "--json", str(out)),
                          env=appliance_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["model"] == "ferplus_cnn_one_pass" and report["precision"] == precision and report["n"] > 3300
    cache[precision] = report
    return report


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_ferplus_public_test_targets(tmp_path, data_dir, precision, ferplus_reports):
    """The default model's acceptance figures on all PublicTest faces (the report split: nothing was selected or
    calibrated on it): FER+ majority accuracy, angry precision, calibration error, and the FER2013 labels beside
    them (about 5 s per precision here). Angry recall has its own test below."""
    report = ferplus_report(tmp_path, data_dir, precision, ferplus_reports)
    angry = report["per_class"]["angry"]
    assert report["accuracy"] >= 0.83 and angry["precision"] >= 0.75, report
    assert report["ece_15"] <= 0.05 and report["ece_15"] < report["ece_15_uncalibrated"], report
    assert report["also"]["fer2013_label_accuracy"] >= 0.55, report["also"]     # see the test below


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.xfail(strict=True, reason="NOT MET (issue: face model): angry recall 0.745 FP32 / 0.739 INT8 on "
                   "PublicTest (a face read on two ticks, as it is and mirrored), target 0.75 (the model trained "
                   "without the mirror had 0.755 / 0.764; the mirror was chosen on the selection split, where it "
                   "raised angry recall 0.752 -> 0.784; 314 angry faces give +-2.4 points); see README 'Models'")
def test_ferplus_angry_recall_target(tmp_path, data_dir, precision, ferplus_reports):
    assert ferplus_report(tmp_path, data_dir, precision, ferplus_reports)["per_class"]["angry"]["recall"] >= 0.75


@pytest.mark.xfail(strict=True, reason="NOT MET (issue: face model): 0.586 FP32 / 0.584 INT8 against FER2013's "
                   "single labels, target 0.62; the crowd-trained model agrees with the crowd (0.84), which agrees "
                   "with FER2013's annotator on too few faces; blends that reach 0.60-0.62 on the selection split "
                   "cost 2-4 points on the crowd; see README 'Models'")
def test_fer2013_label_accuracy_target(tmp_path, data_dir):
    out = tmp_path / "fer2013.json"
    proc = subprocess.run(appliance_cmd("eval", "faces", str(data_dir / "faces" / "fer2013" / "public_test"),
                                        "--json", str(out)),
                          env=appliance_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["n"] == 3589 and report["model"] == "ferplus_cnn_one_pass"
    assert report["accuracy"] >= 0.62, report["accuracy"]


def test_fer2013_public_test_accuracy_of_the_earlier_model(tmp_path, data_dir):
    """mini-Xception stays selectable; its figure on FER2013's labels holds (>= 0.64 on all 3,589 faces)."""
    out = tmp_path / "mini.json"
    proc = subprocess.run(appliance_cmd("eval", "faces", str(data_dir / "faces" / "fer2013" / "public_test"),
                                        "--model", "fer_mini_xception", "--json", str(out)),
                          env=appliance_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["n"] == 3589 and report["model"] == "fer_mini_xception"
    assert report["accuracy"] >= 0.64, report["accuracy"]
