"""What one pass per face costs in what the daemon says: the 14 labelled clips and the demo played through the
daemon (``appliance eval video``'s replay) with ``ferplus_cnn`` (each face and its mirror image on every tick: two
network passes) and with ``ferplus_cnn_one_pass`` (the same network, one pass: the face as it is on one tick,
mirrored on the next), side by side at 10 and 30 Hz, faces followed as shipped. Per clip: faces seen and the
window's face distribution as differences from the two-pass model, in points, and the face anger the index reads.

    python benchmarks/face_one_pass.py [--data ../shared/data] [--rates 10,30]

Writes benchmarks/results/face_one_pass.json and .md. The clips are a report, never a tuning set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.face_following import compare, play_all  # noqa: E402

MODELS = ("ferplus_cnn", "ferplus_cnn_one_pass")


def markdown(result: dict) -> str:
    lines = ["# One pass per face, the mirror on the next tick: what it costs in what the daemon says", "",
             f"`{result['command']}`: the 14 labelled clips (one {result['window_s']:g} s window each) and the demo "
             f"({result['demo_s']:g} s) through the daemon's replay with `{MODELS[0]}` (face and mirror on every "
             f"tick) and `{MODELS[1]}` (one pass; the mirror on every other tick). Differences from the two-pass "
             "model in points: faces seen (relative) and the largest difference of any label's share in the face "
             "distribution.", "",
             "| rate | worst faces seen | worst distribution | top label changed | face anger, largest change | "
             "seconds (two passes / one) |", "|---|---|---|---|---|---|"]
    for rate, r in result["rates"].items():
        c = r["compared"]
        lines.append(f"| {rate} Hz | {c['worst_faces_seen_points']:+.2f} | {c['worst_distribution_points']:.2f} | "
                     f"{', '.join(c['top_label_changed']) or 'none'} | {r['worst_face_anger_change']:.3f} | "
                     f"{r['seconds'][MODELS[0]]:.0f} / {r['seconds'][MODELS[1]]:.0f} |")
    for rate, r in result["rates"].items():
        lines += ["", f"Per clip at {rate} Hz:", "",
                  "| clip | label | top (two passes) | top (one pass) | distribution, points | face anger (two / one) |",
                  "|---|---|---|---|---|---|"]
        two, one = r["runs"][MODELS[0]], r["runs"][MODELS[1]]
        for clip, c in r["compared"]["clips"].items():
            dist = "-" if c["distribution_points"] is None else f"{c['distribution_points']:.2f}"
            fa = "-" if two[clip]["face_anger"] is None else \
                f"{two[clip]['face_anger']:.3f} / {one[clip]['face_anger']:.3f}"
            lines.append(f"| {clip} | {two[clip]['label']} | {two[clip]['top']} | {one[clip]['top']} | {dist} | {fa} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--rates", default="10,30")
    parser.add_argument("--demo-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    from appliance.config import load_config

    cfg = load_config(None, env={})
    result = {"command": "python benchmarks/face_one_pass.py", "window_s": cfg.aggregate.window_s,
              "detect_every": cfg.faces.detect_every, "demo_s": args.demo_seconds, "rates": {}}
    for rate in (float(r) for r in args.rates.split(",")):
        runs, seconds = {}, {}
        for model in MODELS:
            t0 = time.monotonic()
            runs[model] = play_all(cfg.faces.detect_every, rate, args.data, args.demo_seconds,
                                   {"APPLIANCE_EXPRESSION__MODEL": model})
            seconds[model] = round(time.monotonic() - t0, 1)
            print(f"{rate:g} Hz {model}: {len(runs[model])} recordings in {seconds[model]:.0f} s", flush=True)
        anger = [abs(runs[MODELS[1]][c]["face_anger"] - r["face_anger"]) for c, r in runs[MODELS[0]].items()
                 if r["face_anger"] is not None and runs[MODELS[1]][c]["face_anger"] is not None]
        result["rates"][f"{rate:g}"] = {"compared": compare(runs[MODELS[0]], runs[MODELS[1]]), "seconds": seconds,
                                        "worst_face_anger_change": round(max(anger), 4), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "face_one_pass.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "face_one_pass.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
