"""The whole vision loop on the demo recording: per-stage latency, tick latency, achieved rate, misses.

    python benchmarks/demo_loop.py [--seconds 60]

Runs the real daemon pipeline (camera thread, BlazeFace, mini-Xception, aggregation, MQTT to an embedded broker)
at the configured 10 Hz and writes benchmarks/results/demo_loop.{json,md}. (`appliance bench` with the full
report is the benchmark issue's job; this is the foundation's figure.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")

from appliance.config import load_config  # noqa: E402
from appliance.pipeline import Pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        cfg = load_config(None, env={}, overrides={"state.dir": state, "mqtt.embedded_port": 0})
        print(f"running the demo for {args.seconds:g} s at {cfg.loop.rate_hz:g} Hz ...", flush=True)
        report = Pipeline(cfg).run(args.seconds)
    result = {"machine": f"{platform.machine()} cores={os.cpu_count()}", "seconds": args.seconds,
              "command": f"python benchmarks/demo_loop.py --seconds {args.seconds:g}", **asdict(report)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Vision loop on the demo recording", "",
             f"{result['machine']}; `{result['command']}`; {report.ticks} ticks at {report.rate_hz:.2f} Hz "
             f"(configured {cfg.loop.rate_hz:g}), **{report.deadline_misses} deadline misses**, "
             f"{report.frames_dropped} camera frames dropped (30 fps file, 10 Hz loop: 2 of 3 are by design).", "",
             "| stage | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for name, p in [*report.stages.items(), ("tick (end to end)", report.end_to_end)]:
        lines.append(f"| {name} | {p['p50_ms']:.2f} | {p['p95_ms']:.2f} | {p['p99_ms']:.2f} | {p['max_ms']:.2f} |")
    lines += ["", "Models: " + ", ".join(f"{m['model']} on {m['provider']} {m['precision']}"
                                         for m in report.providers.values())]
    (args.out / "demo_loop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
