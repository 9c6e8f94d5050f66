"""Voice end to end: the demo's soundtrack in summaries, and anger alerts from real angry vs neutral speech."""

from __future__ import annotations

import csv
import json
import subprocess

import jsonschema
import numpy as np
import pytest
import soundfile as sf

from appliance.windows.fusion import load_fusion
from appliance.manifest import load_manifest
from conftest import DEMO, ROOT, appliance_cmd, appliance_env, load_schema, run_in_process
from test_e2e_mqtt import check_summaries

ALERT = load_schema("alert")
VAL_SPEAKERS = ["ravdess-17", "ravdess-18", "ravdess-19", "ravdess-20"]


def test_demo_summaries_carry_faces_and_voice(tmp_path, mosquitto, collect):
    watcher = collect(mosquitto.port, "emotion/#")
    run_in_process(tmp_path, DEMO, DEMO.with_suffix(".flac"), 9.5, APPLIANCE_AGGREGATE__WINDOW_S="3",
                   APPLIANCE_MQTT__BROKER=mosquitto.url)
    assert watcher.wait_for(lambda c: any(s["state"] == "offline" for s in c.json("/status")), 10)
    summaries = watcher.json("/summary")
    check_summaries(summaries)
    both = [s for s in summaries if s["faces"] and s["voice"]]
    assert both, summaries
    status = watcher.json("/status")[0]
    assert {m["model"] for m in status["models"]} >= {"voice_tone_cnn", "voice_anger_encoder", "silero_vad"}
    assert status["microphone"]
    # The index is the shipped fusion of the files that ran (models/fusion.json + the manifests' calibrations); the
    # voice's P(angry) is the anger encoder's (voice.anger_model, on by default).
    ran = {m["model"]: f"{m['precision']}.onnx" for m in status["models"]}      # on the CPU: the file's precision
    face = "ferplus_cnn_one_pass"
    index = load_fusion(ROOT / "models", load_manifest(ROOT / "models" / "onnx" / face), ran[face],
                        load_manifest(ROOT / "models" / "onnx" / "voice_anger_encoder"), ran["voice_anger_encoder"])
    for s in both:
        assert s["voice"]["speech_seconds"] >= 1.0
        assert sum(s["voice"]["distribution"].values()) == pytest.approx(1.0, abs=2e-3)
        face, voice = s["faces"]["distribution"]["angry"], s["voice"]["distribution"]["angry"]
        assert s["anger_index"] == pytest.approx(index(face, voice), abs=2e-3)
        assert s["anger_index"] != pytest.approx((face + voice) / 2, abs=2e-3)    # not the plain mean any more


def speech_of(data_dir, label: str, seconds: float) -> np.ndarray:
    rows = [r for r in csv.DictReader(open(data_dir / "speech" / "index.csv"))
            if r["speaker"] in VAL_SPEAKERS and r["label"] == label]
    clips, total = [], 0.0
    for r in rows:   # validation speakers only: never clips the model was trained on
        audio, _ = sf.read(data_dir / "speech" / r["path"], dtype="float32")
        clips += [audio, np.zeros(1600, np.float32)]   # 0.1 s pause between sentences
        total += len(audio) / 16000 + 0.1
        if total >= seconds:
            break
    return np.concatenate(clips)


@pytest.fixture
def speech_data(data_dir):
    if not (data_dir / "speech" / "index.csv").is_file():
        pytest.skip(f"speech data not found under {data_dir}/speech")
    return data_dir


def test_angry_speech_raises_one_alert_and_neutral_none(tmp_path, speech_data, mosquitto, collect):
    """15 s of angry and of neutral speech from held-out speakers, no face in view (the index is the voice's
    alone), each through the daemon in-process with the recording replayed in lockstep (simulated clock), the
    alerts read off a real mosquitto."""
    from appliance.config import load_config
    from appliance.daemon.pipeline import Pipeline
    from appliance.sources.replay import Replay

    watcher = collect(mosquitto.port, "emotion/+/alert")
    for label in ("angry", "neutral"):
        cfg = load_config(None, env={"APPLIANCE_STATE__DIR": str(tmp_path / label), "APPLIANCE_MQTT__BROKER":
                                     mosquitto.url, "APPLIANCE_DEVICE__ID": f"kiosk-{label}",
                                     "APPLIANCE_LOG__LEVEL": "WARNING"})
        report = Pipeline(cfg, replay=Replay.of(None, speech_of(speech_data, label, 14.0), loop=True)).run(15)
        assert report.ticks >= 149 and report.outbox_depth == 0        # everything made was acknowledged
    assert watcher.wait_for(lambda w: w.json("/alert"), timeout=10)
    angry = [a for a in watcher.json("/alert") if a["device_id"] == "kiosk-angry"]
    neutral = [a for a in watcher.json("/alert") if a["device_id"] == "kiosk-neutral"]
    assert len(angry) == 1, angry          # one angry stretch, one alert (cool-down 60 s)
    assert neutral == []
    jsonschema.validate(angry[0], ALERT)
    assert angry[0]["voice_anger"] >= 0.5 and angry[0]["face_anger"] is None


def small_voice_set(tmp_path) -> tuple:
    audio, _ = sf.read(DEMO.with_suffix(".flac"), dtype="float32")
    root = tmp_path / "voices"
    root.mkdir()
    rows = []
    for i in range(3):
        sf.write(root / f"clip{i}.wav", audio[i * 32000:(i + 1) * 32000 + 8000], 16000)
        rows.append({"path": f"clip{i}.wav", "label": "neutral", "speaker": "demo"})
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        w.writeheader()
        w.writerows(rows)
    return root


def test_eval_voice_cli_contract(tmp_path):
    root = small_voice_set(tmp_path)
    out = tmp_path / "voice.json"
    proc = subprocess.run(appliance_cmd("eval", "voice", str(root), "--json", str(out)), env=appliance_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "per_class", "n", "model", "anger"} <= set(report) and report["n"] == 3
    assert out.with_suffix(".png").stat().st_size > 5000
    assert "anger: recall" in proc.stdout
    proc = subprocess.run(appliance_cmd("eval", "voice", str(root), "--where", "speaker=nobody"),
                          env=appliance_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no rows" in proc.stderr


def test_eval_voice_rejects_unknown_labels(tmp_path):
    root = small_voice_set(tmp_path)
    (root / "index.csv").write_text("path,label\nclip0.wav,bored\n")
    proc = subprocess.run(appliance_cmd("eval", "voice", str(root)), env=appliance_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "['bored'] are not labels" in proc.stderr


@pytest.mark.slow
def test_validation_speakers_meet_the_targets(tmp_path, speech_data):
    """8-class accuracy >= 0.55 and angry recall >= 0.75 on RAVDESS actors 17-20; INT8 within 2 points.

    Dataset-wide, so `make test-slow` runs it. It FAILS with the shipped model (angry recall 0.719, 23 of 32
    angry clips): the vocal-tone issue stays open until a model meets it.
    """
    results = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / f"{precision}.json"
        proc = subprocess.run(appliance_cmd("eval", "voice", str(speech_data / "speech"), "--where",
                                            "speaker=" + ",".join(VAL_SPEAKERS), "--precision", precision,
                                            "--json", str(out)),
                              env=appliance_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[precision] = json.loads(out.read_text())
    fp32, int8 = results["fp32"], results["int8"]
    assert fp32["n"] == 240
    assert fp32["accuracy"] >= 0.55 and fp32["anger"]["recall"] >= 0.75, (fp32["accuracy"], fp32["anger"])
    assert abs(int8["accuracy"] - fp32["accuracy"]) <= 0.02

