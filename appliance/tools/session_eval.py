"""``appliance eval sessions``: how often the anger alert fires, and how fast, on minute-long recordings.

A session is one speaker in one emotion: that speaker's labelled clips of the emotion, shuffled and joined with
0.3-1.5 s pauses (quiet noise, as a shop is never silent) until the session is at least ``seconds`` long; clips are
reused in a new order when a speaker has too few (RAVDESS has ~15 s per speaker and emotion). Beside it, a face
clip of the same emotion, looped (``--video``), or a camera that sees no one. Each session runs through the real
daemon (``video_eval.play``: lockstep replay, the configured windows, anger index and alerts, published to an
embedded broker), and what it published is scored: per emotion the share of sessions with an alert, the time to
the first alert, the distribution of the window anger index, and false alerts per hour of non-angry sessions;
split by speaker sex and by corpus for fairness.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from appliance.config import AppConfig
from appliance.tools.evaluation import MORE_SPEECH_INDEXES, read_index, speech_rows
from appliance.sources.audio import SAMPLE_RATE, load_audio_file
from appliance.tools.video_eval import AngerTrace

# Not alerting on these is the point of the false-alert figure; fearful, disgust and surprised sit close to anger
# in voice and face and are reported apart.
CALM_LABELS = ("neutral", "calm", "happy", "sad")


def speaker_sex(corpus: str, speaker: str, listed: str | None = None) -> str:
    """What the corpora document: RAVDESS odd actors are male, EMOVO names say f/m, TESS speakers are women; nEMO
    and ASED list it (``listed``: the index's sex column, f/m)."""
    if listed in ("f", "m"):
        return {"f": "female", "m": "male"}[listed]
    if corpus == "ravdess":
        return "male" if int(speaker.rsplit("-", 1)[1]) % 2 else "female"
    if corpus == "emovo":
        return "female" if speaker.rsplit("-", 1)[1].startswith("f") else "male"
    if corpus == "tess":
        return "female"
    return "unknown"


@dataclass
class SessionResult:
    name: str
    speaker: str
    corpus: str
    sex: str
    label: str
    seconds: float
    clips: int
    video: str | None
    alerts_at_s: list[float]                 # since the session's start
    window_anger: list[float | None]         # each published window's anger index
    first_alert_s: float | None = None
    summaries: int = 0
    trace: AngerTrace | None = None            # kept in memory for the threshold sweep, never written out


def join_clips(clips: list[np.ndarray], seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Whole clips in shuffled rounds with 0.3-1.5 s pauses until at least ``seconds``; (audio, clips used)."""
    parts, total, used = [], 0, 0
    while total < seconds * SAMPLE_RATE:
        for i in rng.permutation(len(clips)):
            pause = rng.standard_normal(int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)).astype(np.float32) * 1e-3
            parts += [pause, clips[i]]
            total += len(pause) + len(clips[i])
            used += 1
            if total >= seconds * SAMPLE_RATE:
                break
    return np.concatenate(parts), used


def face_videos(folder: Path | None) -> dict[str, Path]:
    """label -> the first clip of that label in ``folder``/index.csv."""
    if folder is None:
        return {}
    out: dict[str, Path] = {}
    for row in read_index(Path(folder) / "index.csv", {"path", "label"}, "a clip folder"):
        out.setdefault(row["label"], Path(folder) / row["path"])
    return out


def evaluate_sessions(root: Path, cfg: AppConfig, where: dict[str, set[str]] | None = None,
                      video: Path | None = None, seconds: float = 60.0, seed: int = 20261127,
                      progress: Callable[[int, int], None] | None = None, trace: bool = False,
                      room=None) -> list[SessionResult]:
    """``room`` (``appliance.tools.room.Room``) plays each whole session, pauses included, in that room."""
    from appliance.sources.replay import Replay
    from appliance.tools.video_eval import play

    rows = speech_rows(Path(root), {"path", "corpus", "speaker", "label"}, where=where, names=MORE_SPEECH_INDEXES)
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["corpus"], r["speaker"], r["label"])].append(r)
    videos = face_videos(video)
    results = []
    for i, ((corpus, speaker, label), members) in enumerate(sorted(groups.items())):
        rng = np.random.default_rng([seed, i])
        audio, used = join_clips([load_audio_file(Path(root) / r["path"]) for r in members], seconds, rng)
        if room:
            audio = room.apply(audio, f"{speaker} {label}")
        face = videos.get(label)
        kept = AngerTrace() if trace else None
        summaries, alerts = play(cfg, Replay.of(face, audio, loop=True), len(audio) / SAMPLE_RATE, kept)
        results.append(score(f"{speaker} {label}", speaker, corpus, label, len(audio) / SAMPLE_RATE, used, face,
                             summaries, alerts, members[0].get("sex")))
        results[-1].trace = kept
        if progress:
            progress(i + 1, len(groups))
    return results


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def score(name, speaker, corpus, label, seconds, clips, video, summaries, alerts, sex=None) -> SessionResult:
    start = _epoch(summaries[0]["window_start"]) if summaries else 0.0
    at = sorted(round(_epoch(a["at"]) - start, 2) for a in alerts)
    return SessionResult(name=name, speaker=speaker, corpus=corpus, sex=speaker_sex(corpus, speaker, sex), label=label,
                         seconds=round(seconds, 2), clips=clips, video=str(video) if video else None,
                         alerts_at_s=at, window_anger=[s["anger_index"] for s in summaries],
                         first_alert_s=at[0] if at else None, summaries=len(summaries))


def summarise(results: list[SessionResult]) -> dict:
    """Per emotion, the false-alert rate of the calm emotions, and the fairness splits."""
    by_label: dict[str, list[SessionResult]] = defaultdict(list)
    for r in results:
        by_label[r.label].append(r)
    per_emotion = {}
    for label, rs in sorted(by_label.items()):
        firsts = [r.first_alert_s for r in rs if r.first_alert_s is not None]
        windows = [w for r in rs for w in r.window_anger if w is not None]
        hours = sum(r.seconds for r in rs) / 3600
        per_emotion[label] = {
            "sessions": len(rs), "alerted_share": round(sum(bool(r.alerts_at_s) for r in rs) / len(rs), 4),
            "first_alert_median_s": round(float(np.median(firsts)), 2) if firsts else None,
            "alerts_per_hour": round(sum(len(r.alerts_at_s) for r in rs) / hours, 2),
            "window_anger": _quantiles(windows)}
    calm = [r for r in results if r.label in CALM_LABELS]
    out = {"per_emotion": per_emotion,
           "false_alerts_per_hour_calm": _rate(calm),
           "calm_hours": round(sum(r.seconds for r in calm) / 3600, 3)}
    # Fairness is judged within a corpus too: the corpora differ in language and in how many men and women they have.
    for key, group in (("by_sex", lambda r: r.sex), ("by_corpus", lambda r: r.corpus),
                       ("by_corpus_sex", lambda r: f"{r.corpus} {r.sex}")):
        split = defaultdict(list)
        for r in results:
            split[group(r)].append(r)
        out[key] = {k: {"angry_alerted_share": _share([r for r in rs if r.label == "angry"]),
                        "angry_sessions": sum(r.label == "angry" for r in rs),
                        "false_alerts_per_hour_calm": _rate([r for r in rs if r.label in CALM_LABELS])}
                    for k, rs in sorted(split.items())}
    return out


def _share(rs: list[SessionResult]) -> float | None:
    return round(sum(bool(r.alerts_at_s) for r in rs) / len(rs), 4) if rs else None


def _rate(rs: list[SessionResult]) -> float | None:
    hours = sum(r.seconds for r in rs) / 3600
    return round(sum(len(r.alerts_at_s) for r in rs) / hours, 2) if hours else None


def _quantiles(values: list[float]) -> dict | None:
    if not values:
        return None
    q = np.percentile(values, [10, 50, 90])
    return {"n": len(values), "p10": round(float(q[0]), 3), "p50": round(float(q[1]), 3),
            "p90": round(float(q[2]), 3)}


def markdown(summary: dict, meta: dict) -> str:
    lines = ["# Anger alerts on minute-long sessions", "", f"`{meta['command']}`", "",
             f"{meta['sessions']} sessions, {meta['hours']:.2f} h simulated; alerts: on {meta['on_threshold']} / off "
             f"{meta['off_threshold']} over {meta['alert_window_s']:g} s, cool-down {meta['cooldown_s']:g} s; models "
             f"{meta['models']}" + (f"; in a room: {meta['room']}" if meta.get("room") else "") + ".", "",
             "| emotion | sessions | with an alert | first alert, median s | alerts per hour | window anger p10 / "
             "p50 / p90 |", "|---|---|---|---|---|---|"]
    for label, e in summary["per_emotion"].items():
        w = e["window_anger"]
        lines.append(f"| {label} | {e['sessions']} | {100 * e['alerted_share']:.0f}% | "
                     f"{e['first_alert_median_s'] if e['first_alert_median_s'] is not None else '-'} | "
                     f"{e['alerts_per_hour']} | "
                     + (f"{w['p10']} / {w['p50']} / {w['p90']} |" if w else "- |"))
    lines += ["", f"False alerts per hour over {', '.join(CALM_LABELS)} sessions: "
                  f"**{summary['false_alerts_per_hour_calm']}** ({summary['calm_hours']} h).", ""]
    for key, title in (("by_sex", "speaker sex"), ("by_corpus", "corpus"), ("by_corpus_sex", "corpus and sex")):
        lines += [f"| {title} | angry sessions | angry with an alert | false alerts per hour (calm) |",
                  "|---|---|---|---|"]
        for k, v in summary[key].items():
            share = "-" if v["angry_alerted_share"] is None else f"{100 * v['angry_alerted_share']:.0f}%"
            lines.append(f"| {k} | {v['angry_sessions']} | {share} | {v['false_alerts_per_hour_calm']} |")
        lines.append("")
    if "thresholds" in summary:
        from appliance.tools.thresholds import markdown as thresholds_markdown

        lines.append(thresholds_markdown(summary["thresholds"]))
    return "\n".join(lines)


def plot(results: list[SessionResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({r.label for r in results})
    data = [[w for r in results if r.label == lab for w in r.window_anger if w is not None] or [0.0]
            for lab in labels]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ax[0].boxplot(data, tick_labels=labels, showfliers=True)
    ax[0].set(ylabel="window anger index", title="anger index of each published window", ylim=(0, 1))
    ax[0].tick_params(axis="x", rotation=45)
    firsts = [[r.first_alert_s for r in results if r.label == lab and r.first_alert_s is not None] for lab in labels]
    share = [sum(bool(r.alerts_at_s) for r in results if r.label == lab) /
             max(1, sum(r.label == lab for r in results)) for lab in labels]
    ax[1].bar(labels, share)
    for x, f in enumerate(firsts):
        if f:
            ax[1].text(x, share[x] + 0.02, f"{np.median(f):.0f} s", ha="center", fontsize=8)
    ax[1].set(ylabel="sessions with an alert", title="alerted share (median time to first alert)", ylim=(0, 1.1))
    ax[1].tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def as_json(results: list[SessionResult], summary: dict, meta: dict) -> dict:
    return meta | {"summary": summary, "sessions": [asdict(replace(r, trace=None)) for r in results]}
