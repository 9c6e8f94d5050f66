"""What following faces between detections costs in what the daemon says: the 14 labelled clips and the demo played
through the daemon (``appliance eval video``'s replay) with the detector on every frame and on every Nth frame
(``faces.detect_every``), side by side. Per clip: faces seen (face observations in the window) and the window's face
distribution, as differences from detecting every frame, in points.

    python benchmarks/face_following.py [--data ../shared/data] [--every 1,2,3,4,6] [--rate 10]

Writes benchmarks/results/face_following[_<rate>hz].json and .md. The clips are a report here, never a tuning set for
the face model; N is a run-time setting, and this is how it was chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO = ROOT / "appliance" / "demo" / "short_hamilton_clip.mp4"


def play_all(every: int, rate: float, data: Path, demo_s: float, env: dict[str, str] | None = None) \
        -> dict[str, dict]:
    from appliance.config import load_config
    from appliance.tools.video_eval import clip_result, play_clip, quiet_pipeline_logs, read_clip_index

    quiet_pipeline_logs()
    cfg = load_config(None, env={"APPLIANCE_FACES__DETECT_EVERY": str(every), "APPLIANCE_LOOP__RATE_HZ": str(rate),
                                 "APPLIANCE_LOG__LEVEL": "WARNING", **(env or {})})
    folder = data / "video" / "emotion"
    rows = read_clip_index(folder)
    out = {}
    for row in rows + [{"path": "demo", "label": "neutral"}]:
        if row["path"] == "demo":
            summaries, alerts = play_clip(cfg, DEMO, DEMO.with_suffix(".flac"), demo_s)
        else:
            audio = folder / row["audio"] if row.get("audio") else None
            summaries, alerts = play_clip(cfg, folder / row["path"], audio, cfg.aggregate.window_s)
        # All the windows of the run: the demo plays several.
        faces = [s["faces"] for s in summaries if s.get("faces")]
        observations = sum(f["observations"] for f in faces)
        distribution = None
        if observations:
            labels = faces[0]["distribution"].keys()
            distribution = {k: round(sum(f["distribution"][k] * f["observations"] for f in faces) / observations, 4)
                            for k in labels}
        result = clip_result(row, tuple(distribution or ()), summaries, alerts)
        out[row["path"]] = {"label": row["label"], "observations": observations,
                            "distinct_faces": [f["distinct_faces"] for f in faces], "distribution": distribution,
                            "top": max(distribution, key=distribution.get) if distribution else None,
                            "face_anger": result.face_anger}
    return out


def compare(base: dict, other: dict) -> dict:
    rows = {}
    for clip, b in base.items():
        o = other[clip]
        seen = 100 * (o["observations"] - b["observations"]) / max(1, b["observations"])
        dist = None
        if b["distribution"] and o["distribution"]:
            dist = max(abs(o["distribution"][k] - b["distribution"][k]) for k in b["distribution"]) * 100
        elif b["distribution"] or o["distribution"]:
            dist = 100.0
        rows[clip] = {"faces_seen_points": round(seen, 2), "distribution_points": None if dist is None else round(dist, 2),
                      "same_top": o["top"] == b["top"]}
    worst_seen = max(abs(r["faces_seen_points"]) for r in rows.values())
    worst_dist = max((r["distribution_points"] or 0.0) for r in rows.values())
    return {"clips": rows, "worst_faces_seen_points": round(worst_seen, 2),
            "worst_distribution_points": round(worst_dist, 2),
            "top_label_changed": sorted(c for c, r in rows.items() if not r["same_top"])}


def markdown(result: dict) -> str:
    lines = [f"# Faces followed between detections: what it costs in what the daemon says ({result['rate_hz']:g} Hz)",
             "", f"`python benchmarks/face_following.py --rate {result['rate_hz']:g}`: the 14 labelled clips (one "
             f"{result['window_s']:g} s window each) and the demo ({result['demo_s']:g} s) through the daemon's "
             "replay, the detector on every frame (N = 1) and on every Nth frame with the faces followed by optical "
             "flow between. Differences from N = 1, in points: faces seen (face observations, relative) and the "
             "largest difference of any label's share in the face distribution.", "",
             "| N | worst faces seen | worst distribution | top label changed | seconds |", "|---|---|---|---|---|"]
    for n, c in result["compared"].items():
        lines.append(f"| {n} | {c['worst_faces_seen_points']:+.2f} | {c['worst_distribution_points']:.2f} | "
                     f"{', '.join(c['top_label_changed']) or 'none'} | {result['seconds'][n]:.0f} |")
    lines += ["", "Per clip, N = " + str(result["chosen"]) + " against N = 1:", "",
              "| clip | label | top (N = 1) | faces seen, points | distribution, points |", "|---|---|---|---|---|"]
    for clip, r in result["compared"][str(result["chosen"])]["clips"].items():
        base = result["runs"]["1"][clip]
        dist = "-" if r["distribution_points"] is None else f"{r['distribution_points']:.2f}"
        lines.append(f"| {clip} | {base['label']} | {base['top']} | {r['faces_seen_points']:+.2f} | {dist} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--every", default="1,2,3,4,6")
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--demo-seconds", type=float, default=30.0)
    parser.add_argument("--chosen", type=int, default=3, help="the N whose per-clip table is written")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    every = [int(n) for n in args.every.split(",")]
    if every[0] != 1:
        every = [1] + every
    runs, seconds = {}, {}
    for n in every:
        t0 = time.monotonic()
        runs[str(n)] = play_all(n, args.rate, args.data, args.demo_seconds)
        seconds[str(n)] = round(time.monotonic() - t0, 1)
        print(f"N = {n}: {len(runs[str(n)])} recordings in {seconds[str(n)]:.0f} s", flush=True)
    compared = {str(n): compare(runs["1"], runs[str(n)]) for n in every[1:]}
    from appliance.config import load_config

    result = {"rate_hz": args.rate, "window_s": load_config(None, env={}).aggregate.window_s,
              "demo_s": args.demo_seconds, "every": every, "chosen": args.chosen, "seconds": seconds,
              "compared": compared, "runs": runs}
    suffix = "" if args.rate == 10 else f"_{args.rate:g}hz"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"face_following{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"face_following{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
