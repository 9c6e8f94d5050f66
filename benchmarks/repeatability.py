"""Is `appliance bench` repeatable? Run it twice on the same input and compare the medians.

    python benchmarks/repeatability.py [--seconds 60]

Writes benchmarks/results/repeatability.{json,md}: per stage, the two p50s and their relative difference
(target: within 10%).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in (1, 2):
            out = Path(tmp) / f"run{i}.json"
            print(f"run {i}: appliance bench --seconds {args.seconds:g}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "appliance", "bench", "--seconds", str(args.seconds), "--json",
                            str(out)], check=True, stdout=subprocess.DEVNULL)
            runs.append(json.loads(out.read_text()))
    rows = []
    names = [s for s, p in runs[0]["stages"].items() if p["calls"]] + ["end_to_end"]
    for name in names:
        a, b = (r["end_to_end"] if name == "end_to_end" else r["stages"][name] for r in runs)
        diff = abs(a["p50_ms"] - b["p50_ms"]) / max(1e-9, min(a["p50_ms"], b["p50_ms"]))
        rows.append({"stage": name, "p50_ms_run1": a["p50_ms"], "p50_ms_run2": b["p50_ms"],
                     "relative_difference": round(diff, 4)})
    out = ROOT / "benchmarks" / "results"
    (out / "repeatability.json").write_text(json.dumps({"seconds": args.seconds, "rows": rows}, indent=2) + "\n")
    worst = max(rows, key=lambda r: r["relative_difference"])
    lines = ["# Repeatability of `appliance bench`", "",
             f"`python benchmarks/repeatability.py --seconds {args.seconds:g}`: two runs on the bundled demo, "
             f"one after the other. Largest difference of medians: {100 * worst['relative_difference']:.1f}% "
             f"({worst['stage']}).", "",
             "| stage | p50 ms run 1 | p50 ms run 2 | difference |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['p50_ms_run1']:.3f} | {r['p50_ms_run2']:.3f} | "
              f"{100 * r['relative_difference']:.1f}% |" for r in rows]
    (out / "repeatability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
