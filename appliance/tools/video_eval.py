"""``appliance eval video``: labelled clips played through the real daemon, one window each, and what it said.

Each clip of an ``index.csv`` (``path,label[,audio]``, paths relative to its folder) runs through the same
``Pipeline`` as ``appliance run``: face detection, the expression model's crop and calibration, VAD and vocal tone
where the clip has sound, windows, the anger index and alerts, published to an embedded broker through the outbox.
Sources are replayed in lockstep with a simulated clock (``sources/replay.py``): every tick sees the frame and the
audio it would see live, without waiting for the wall clock. A clip shorter than the window is looped, as a
customer holding that expression for one window would be.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from appliance.config import AppConfig
from appliance.tools.evaluation import DatasetError, read_index
from appliance.tools.metrics import EvalReport, classification_metrics

# Clip labels use the speech corpora's names; the face model's differ for two of them.
FACE_LABEL = {"fearful": "fear", "surprised": "surprise"}


@dataclass
class ClipResult:
    path: str
    label: str
    face_label: str | None                 # the clip's label in the face model's names (None: the model lacks it)
    face_observations: int
    observed_s: float
    face_distribution: dict[str, float] | None
    face_top: str | None
    face_anger: float | None
    voice_distribution: dict[str, float] | None
    voice_top: str | None
    voice_anger: float | None
    speech_s: float
    anger_index: float | None
    alerts: int
    suppressed_reason: str | None
    summaries: list[dict] = field(default_factory=list, repr=False)


def read_clip_index(folder: Path, index: Path | None = None) -> list[dict]:
    folder = Path(folder)
    index = Path(index) if index else folder / "index.csv"
    rows = read_index(index, {"path", "label"}, "a clip folder (an optional audio column too)")
    if not rows:
        raise DatasetError(f"{index}: no rows")
    for row in rows:
        for key in ("path", "audio"):
            if row.get(key):
                p = folder / row[key]
                if not p.is_file():
                    raise DatasetError(f"{index}: {key} {row[key]} does not exist under {folder}")
    return rows


@dataclass
class AngerTrace:
    """What the alert logic saw on each tick, and the index it used: enough to replay other thresholds exactly."""

    inputs: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    index: Callable | None = None
    tick_period_s: float = 0.0
    voice_step_s: float = 0.0


def play(cfg: AppConfig, replay, seconds: float, trace: AngerTrace | None = None) -> tuple[list[dict], list[dict]]:
    """A recording (``sources.replay.Replay``) through the daemon for ``seconds`` of simulated time, with its own
    state folder and embedded broker; returns (summaries, alerts) as published. ``trace`` (alerts enabled) gets
    the alert logic's inputs."""
    from appliance.daemon.pipeline import Pipeline
    from appliance.publish.broker import free_port

    summaries: list[dict] = []
    alerts: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="appliance-replay-") as state:
        run_cfg = cfg.model_copy(deep=True)
        if getattr(replay.camera, "path", None) is not None:
            run_cfg.camera.source = str(replay.camera.path)
        run_cfg.audio.source = "none"           # the replay's microphone, where it has one, is handed in below
        run_cfg.state.dir = Path(state)
        run_cfg.privacy.pause_file = run_cfg.state.paused
        run_cfg.mqtt.broker = None
        run_cfg.mqtt.embedded_port = free_port()
        run_cfg.mqtt.home_assistant.enabled = False
        pipeline = Pipeline(run_cfg, on_summary=summaries.append, on_alert=alerts.append, replay=replay)
        if trace is not None and pipeline.anger is not None:
            pipeline.anger.inputs = trace.inputs
            trace.index, trace.tick_period_s = pipeline.anger_index, pipeline.anger.tick_period_s
            trace.voice_step_s = pipeline.anger.voice_step_s
        pipeline.run(duration=seconds)
    return summaries, alerts


def play_clip(cfg: AppConfig, video: Path, audio: Path | None, seconds: float) -> tuple[list[dict], list[dict]]:
    """One clip, looped, through the daemon for ``seconds`` of simulated time."""
    from appliance.sources.replay import Replay

    return play(cfg, Replay.of(video, audio, loop=True), seconds)


def evaluate_clips(folder: Path, cfg: AppConfig, labels: tuple[str, ...], index: Path | None = None,
                   seconds: float | None = None,
                   progress: Callable[[int, int], None] | None = None) -> list[ClipResult]:
    folder = Path(folder)
    rows = read_clip_index(folder, index)
    seconds = seconds or cfg.aggregate.window_s
    results = []
    for i, row in enumerate(rows):
        audio = folder / row["audio"] if row.get("audio") else None
        summaries, alerts = play_clip(cfg, folder / row["path"], audio, seconds)
        results.append(clip_result(row, labels, summaries, alerts))
        if progress:
            progress(i + 1, len(rows))
    return results


def clip_result(row: dict, labels: tuple[str, ...], summaries: list[dict], alerts: list[dict]) -> ClipResult:
    """Observation-weighted over the clip's windows (one, unless --seconds is longer than a window)."""
    face_label = FACE_LABEL.get(row["label"], row["label"])
    faces = [s["faces"] for s in summaries if s.get("faces")]
    voices = [s["voice"] for s in summaries if s.get("voice")]
    face_dist = _weighted(faces, "observations") if faces else None
    voice_dist = _weighted(voices, "speech_seconds") if voices else None
    indices = [s["anger_index"] for s in summaries if s.get("anger_index") is not None]
    reasons = {s["suppressed_reason"] for s in summaries if s.get("suppressed_reason")}
    return ClipResult(
        path=row["path"], label=row["label"], face_label=face_label if face_label in labels else None,
        face_observations=sum(f["observations"] for f in faces),
        observed_s=round(sum(f["observed_seconds"] for f in faces), 2),
        face_distribution=face_dist, face_top=max(face_dist, key=face_dist.get) if face_dist else None,
        face_anger=face_dist.get("angry") if face_dist else None,
        voice_distribution=voice_dist, voice_top=max(voice_dist, key=voice_dist.get) if voice_dist else None,
        voice_anger=voice_dist.get("angry") if voice_dist else None,
        speech_s=round(sum(v["speech_seconds"] for v in voices), 2),
        anger_index=round(float(np.mean(indices)), 4) if indices else None, alerts=len(alerts),
        suppressed_reason=", ".join(sorted(reasons)) or None, summaries=summaries)


def _weighted(parts: list[dict], weight: str) -> dict[str, float]:
    total = sum(p[weight] for p in parts) or 1.0
    keys = parts[0]["distribution"].keys()
    return {k: round(sum(p["distribution"][k] * p[weight] for p in parts) / total, 4) for k in keys}


def confusion_report(results: list[ClipResult], labels: tuple[str, ...], model: str, precision: str,
                     provider: str, dataset: str) -> EvalReport:
    """Top face label against the clip's label, over the clips whose label the model has and that showed a face."""
    scored = [r for r in results if r.face_label and r.face_top]
    y_true = np.array([labels.index(r.face_label) for r in scored], dtype=np.int64)
    y_pred = np.array([labels.index(r.face_top) for r in scored], dtype=np.int64)
    m = classification_metrics(y_true, y_pred, labels)
    return EvalReport(model=model, precision=precision, provider=provider, dataset=dataset, labels=list(labels),
                      n=m["n"], accuracy=round(m["accuracy"], 4), macro_f1=round(m["macro_f1"], 4),
                      per_class=m["per_class"], confusion=m["confusion"], seconds=0.0,
                      label_set="clip labels (top face label per clip)")


def table(results: list[ClipResult]) -> str:
    def f(v):
        return "-" if v is None else f"{v:.2f}"

    lines = [f"{'clip':<40} {'label':<10} {'faces':>5} {'face top':<9} {'P(ang) face':>11} {'voice top':<10} "
             f"{'P(ang) voice':>12} {'anger idx':>9} {'alerts':>6}"]
    for r in results:
        lines.append(f"{Path(r.path).name[:40]:<40} {r.label:<10} {r.face_observations:>5} {r.face_top or '-':<9} "
                     f"{f(r.face_anger):>11} {r.voice_top or '-':<10} {f(r.voice_anger):>12} "
                     f"{f(r.anger_index):>9} {r.alerts:>6}")
    scored = [r for r in results if r.face_label]
    right = sum(r.face_top == r.face_label for r in scored)
    lines.append("")
    lines.append(f"top face label right on {right} of {len(scored)} clips whose label the face model has")
    return "\n".join(lines)


def as_json(results: list[ClipResult], meta: dict) -> dict:
    scored = [r for r in results if r.face_label]
    return meta | {"clips": [asdict(r) for r in results],
                   "top_face_label_right": sum(r.face_top == r.face_label for r in scored),
                   "clips_with_a_model_label": len(scored)}


def quiet_pipeline_logs() -> None:
    # Every clip would otherwise print the daemon's start/stop lines and its alerts (they are in the report).
    for name in ("appliance", "amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
