"""ONNX Runtime's CPU memory arena on or off (``runtime.cpu_mem_arena``): resident memory and tick latency of the
daemon at 30 Hz with 4 faces, in alternating runs so that a drifting CPU hits both sides alike.

    python benchmarks/runtime_arena.py [--rounds 3] [--seconds 60]      # about 1.5 min a run
    python benchmarks/runtime_arena.py --summarize-only                 # the table from the runs already there

Each run is ``appliance bench --rate 30 --faces 4`` with a config that sets only ``runtime.cpu_mem_arena``; the
reports (without their per-tick samples) go to benchmarks/results/runtime_arena/, the summary to
benchmarks/results/runtime_arena.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "runtime_arena"
SIDES = ("on", "off")


def run(side: str, round_: int, seconds: float, config_dir: Path) -> None:
    config = config_dir / f"{side}.toml"
    config.write_text(f"[runtime]\ncpu_mem_arena = {'true' if side == 'on' else 'false'}\n")
    out = OUT / f"arena_{side}_{round_}.json"
    print(f"round {round_}, arena {side}: appliance bench --seconds {seconds:g} --rate 30 --faces 4", flush=True)
    subprocess.run([sys.executable, "-m", "appliance", "bench", "-c", str(config), "--seconds", str(seconds),
                    "--rate", "30", "--faces", "4", "--json", str(out)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    keep_summary_only(out)


def keep_summary_only(report: Path) -> None:
    """Each run's report without its per-tick samples, plot and markdown: the summary reads its percentiles."""
    data = json.loads(report.read_text())
    for key in ("timeline_ms", "stage_samples_ms"):
        data.pop(key, None)
    report.write_text(json.dumps(data, indent=1) + "\n")
    for other in (report.with_suffix(".png"), report.with_suffix(".md")):
        other.unlink(missing_ok=True)


def cell(values: list[float], fmt: str = "{:.2f}") -> str:
    """The median, then every run's value."""
    return f"{fmt.format(statistics.median(values))} ({', '.join(fmt.format(v) for v in values)})"


def summarize() -> dict:
    runs = {side: [json.loads(p.read_text()) for p in sorted(OUT.glob(f"arena_{side}_*.json"))] for side in SIDES}
    if not all(runs.values()):
        raise SystemExit(f"no runs in {OUT} for both sides: run without --summarize-only first")
    summary = {"command": "python benchmarks/runtime_arena.py", "sides": {}}
    for side, reports in runs.items():
        summary["sides"][side] = {
            "runs": len(reports),
            "rss_mb": [r["rss_mb"] for r in reports],
            "p99_tick_ms": [r["end_to_end"]["p99_ms"] for r in reports],
            "p50_tick_ms": [r["end_to_end"]["p50_ms"] for r in reports],
            "deadline_misses": [r["deadline_misses"] for r in reports],
            "expression_ms_per_face_p50": [r["per_item"]["expression"]["p50_ms"] for r in reports],
        }
    lines = ["# ONNX Runtime CPU memory arena: on or off", "",
             f"`{summary['command']}`: alternating runs of `appliance bench --rate 30 --faces 4`, the config setting "
             "only `runtime.cpu_mem_arena`. Medians over the runs, each run's value in brackets.", "",
             "| arena | runs | RSS MB | p50 tick ms | p99 tick ms | deadline misses | expression ms per face (p50) |",
             "|---|---|---|---|---|---|---|"]
    for side, s in summary["sides"].items():
        lines.append(f"| {side} | {s['runs']} | {cell(s['rss_mb'], '{:.0f}')} | {cell(s['p50_tick_ms'])} | "
                     f"{cell(s['p99_tick_ms'])} | {sum(s['deadline_misses'])} | "
                     f"{cell(s['expression_ms_per_face_p50'], '{:.3f}')} |")
    (OUT.parent / "runtime_arena.json").write_text(json.dumps(summary, indent=2) + "\n")
    (OUT.parent / "runtime_arena.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()
    if not args.summarize_only:
        OUT.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(1, args.rounds + 1):
                for side in SIDES:
                    run(side, round_, args.seconds, Path(tmp))
    summarize()


if __name__ == "__main__":
    main()
