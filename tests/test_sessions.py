"""`appliance eval sessions`: sessions built from real clips, scored from what the daemon published."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from appliance.session_eval import SessionResult, join_clips, speaker_sex, summarise
from appliance.sources.audio import SAMPLE_RATE
from conftest import appliance_cmd, appliance_env


def test_join_clips_keeps_whole_clips_with_pauses_until_long_enough():
    clips = [np.full(SAMPLE_RATE, k + 1, np.float32) for k in range(3)]      # 1 s each, values 1, 2, 3
    audio, used = join_clips(clips, 10.0, np.random.default_rng(0))
    assert len(audio) >= 10 * SAMPLE_RATE
    loud = np.abs(audio) > 0.5
    # Every clip appears whole: runs of clip samples are exactly 1 s long, the gaps between 0.3 and 1.5 s.
    edges = np.flatnonzero(np.diff(loud.astype(int)))
    runs = np.diff(np.concatenate([[-1], edges, [len(audio) - 1]]))
    clip_runs, pause_runs = runs[1::2], runs[0::2]
    assert used == len(clip_runs) >= 4 and set(clip_runs) == {SAMPLE_RATE}
    assert all(0.3 * SAMPLE_RATE - 1 <= p <= 1.5 * SAMPLE_RATE for p in pause_runs)
    first_round = [audio[e + 1] for e in edges[0::2][:3]]
    assert sorted(first_round) == [1.0, 2.0, 3.0]                            # each clip once before any repeats


def test_speaker_sex_as_the_corpora_document_it():
    assert speaker_sex("ravdess", "ravdess-17") == "male" and speaker_sex("ravdess", "ravdess-20") == "female"
    assert speaker_sex("emovo", "emovo-f2") == "female" and speaker_sex("emovo", "emovo-m1") == "male"
    assert speaker_sex("turev", "turev-1234") == "unknown"


def session(label, sex, corpus, alerts, seconds=60.0, anger=(0.2,)):
    return SessionResult(name=label, speaker="s", corpus=corpus, sex=sex, label=label, seconds=seconds, clips=1,
                         video=None, alerts_at_s=list(alerts), window_anger=list(anger),
                         first_alert_s=alerts[0] if alerts else None)


def test_summary_figures_by_hand():
    results = [session("angry", "male", "a", [4.0, 70.0], seconds=120), session("angry", "female", "b", []),
               session("neutral", "male", "a", [30.0]), session("sad", "female", "b", []),
               session("fearful", "male", "a", [5.0])]
    s = summarise(results)
    assert s["per_emotion"]["angry"]["alerted_share"] == 0.5
    assert s["per_emotion"]["angry"]["first_alert_median_s"] == 4.0
    assert s["per_emotion"]["angry"]["alerts_per_hour"] == pytest.approx(2 / (180 / 3600))
    assert s["false_alerts_per_hour_calm"] == pytest.approx(1 / (120 / 3600))     # fearful is not counted
    assert s["by_sex"]["male"]["angry_alerted_share"] == 1.0 and s["by_sex"]["female"]["angry_alerted_share"] == 0.0
    assert s["by_corpus"]["b"]["false_alerts_per_hour_calm"] == 0.0


def test_an_angry_session_alerts_and_a_neutral_one_does_not(data_dir, tmp_path):
    """One held-out speaker (RAVDESS 17, never trained on), a minute of angry and a minute of neutral speech."""
    out = tmp_path / "s.json"
    proc = subprocess.run(appliance_cmd("eval", "sessions", str(data_dir / "speech"), "--where", "speaker=ravdess-17",
                                        "--where", "label=angry,neutral", "--json", str(out)),
                          env=appliance_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    by_label = {s["label"]: s for s in report["sessions"]}
    assert set(by_label) == {"angry", "neutral"} and all(s["seconds"] >= 60 for s in by_label.values())
    assert by_label["angry"]["alerts_at_s"] and by_label["angry"]["first_alert_s"] <= 15
    assert by_label["neutral"]["alerts_at_s"] == []
    assert all(s["summaries"] >= 6 for s in by_label.values())      # 10 s windows over a minute, published
    assert out.with_suffix(".md").read_text().startswith("# Anger alerts") and out.with_suffix(".png").is_file()
