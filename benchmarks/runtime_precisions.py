"""Per-call latency of every shipped expression-model variant on the providers this machine has.

    python benchmarks/runtime_precisions.py [--runs 300]

Writes benchmarks/results/runtime_precisions.{json,md}. This is what ``provider_precision`` in the model manifest
is based on for the CPU: ``precision=auto`` must pick the faster variant.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.config import default_models_dir  # noqa: E402
from appliance.manifest import load_manifest  # noqa: E402
from appliance.runtime import RuntimeConfig, open_session  # noqa: E402
from appliance.tools.sweep import random_feed, time_calls, usable_providers, variants  # noqa: E402


def measure(session, batch: int, runs: int) -> dict:
    p = time_calls(session, random_feed(session, batch), runs, warm_up=20)
    p["per_item_p50_ms"] = round(p["p50_ms"] / batch, 4)
    return p


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    manifest = load_manifest(default_models_dir() / "onnx" / "fer_mini_xception")
    rows = []
    for provider, precision in variants(manifest, usable_providers(["tensorrt", "cuda", "cpu"])):
        for threads in (1, 2):
            cfg = RuntimeConfig(providers=[provider], precision=precision, intra_op_threads=threads)
            session, report = open_session(manifest, cfg)
            if report.provider != provider:
                continue
            for batch in (1, 8):
                r = measure(session, batch, args.runs)
                rows.append({"model": manifest.name, "provider": provider, "precision": precision,
                             "threads": threads, "batch": batch, **r})
                print(f"{provider:8} {precision:5} threads={threads} batch={batch}: p50 {r['p50_ms']:.3f} ms "
                      f"p99 {r['p99_ms']:.3f} ms ({r['per_item_p50_ms']:.3f} ms/face)", flush=True)
    auto = open_session(manifest, RuntimeConfig())[1]
    result = {"machine": f"{platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}",
              "onnxruntime": __import__("onnxruntime").__version__, "runs": args.runs, "rows": rows,
              "auto_choice": {"provider": auto.provider, "precision": auto.precision}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime_precisions.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Expression model: per-call latency by provider and precision", "",
             f"Machine: {result['machine']}, onnxruntime {result['onnxruntime']}, {args.runs} runs after 20 warm-up. "
             f"Command: `python benchmarks/runtime_precisions.py`.", "",
             "| provider | precision | threads | batch | p50 ms | p95 ms | p99 ms | ms/face (p50) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['provider']} | {r['precision']} | {r['threads']} | {r['batch']} | {r['p50_ms']:.3f} | "
              f"{r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {r['per_item_p50_ms']:.3f} |" for r in rows]
    lines += ["", f"`precision = \"auto\"` chose **{auto.provider} {auto.precision}** here.",
              "TensorRT/CUDA rows appear only where those providers exist (a Jetson); none are claimed here."]
    (args.out / "runtime_precisions.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}/runtime_precisions.{{json,md}}")


if __name__ == "__main__":
    main()
