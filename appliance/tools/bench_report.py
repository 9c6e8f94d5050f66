"""The benchmark report for people and plots: markdown tables, a latency plot, the machine it ran on, and the
JSON/markdown/PNG files written side by side."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

from appliance.tools.compare import STEADY


def _voice_worker(worker: dict | None) -> str:
    if not worker:
        return ""
    return (f"; voice worker: {worker['classified']} of {worker['submitted']} speech segments classified, "
            f"{worker['dropped']} dropped while it was behind")


def markdown(result: dict) -> str:
    loop = result
    lines = [f"# appliance bench: {result['machine']}", "",
             f"appliance {result['version']}, {result['seconds']:g} s at {result['configured_rate_hz']:g} Hz "
             f"({result['input']}), faces replicated to {result['faces_replicated'] or 'as detected'}.", "",
             f"- ticks {loop['ticks']}, achieved {loop['rate_hz']:.2f} Hz, **deadline misses {loop['deadline_misses']}**"
             f", skipped slots {loop['skipped_slots']}",
             f"- end-to-end tick latency p50 {loop['end_to_end']['p50_ms']:.2f} ms, p95 "
             f"{loop['end_to_end']['p95_ms']:.2f}, **p99 {loop['end_to_end']['p99_ms']:.2f}**, max "
             f"{loop['end_to_end']['max_ms']:.2f}",
             f"- loop overhead (not a model call) {100 * loop['loop_overhead_fraction']:.1f}% of tick work ("
             + ", ".join(f"{k} {v:.2f}" for k, v in loop.get("overhead_ms_per_tick", {}).items() if v >= 0.005)
             + " ms per tick); CPU "
             f"{loop['cpu_percent_of_one_core']:.0f}% of one core; RSS {loop['rss_mb']:.0f} MB",
             "- per item: " + ", ".join(f"{s} {v['p50_ms']:.3f} ms p50 ({v['items']} items)"
                                        for s, v in loop.get("per_item", {}).items()),
             f"- camera frames dropped {loop['frames_dropped']} (used {loop['frames_used']}); audio lost "
             f"{loop['audio_lost_seconds']} s" + _voice_worker(loop.get("voice_worker")),
             "- models: " + ", ".join(f"{m} on {p['provider']} {p['precision']}" for m, p in loop["providers"].items())
             + (f"; warmed up in {loop['warm_up_ms']:.0f} ms before the first tick" if "warm_up_ms" in loop else ""),
             *_reference_line(loop.get("cpu_reference")),
             *_wakeup_line(loop.get("cpu_wakeup_latency")),
             "", "| stage | calls | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    beside = set(loop.get("beside_the_tick", ()))
    for name, p in loop["stages"].items():
        if p["calls"]:
            shown = f"{name} (voice worker, beside the tick)" if name in beside else name
            lines.append(f"| {shown} | {p['calls']} | {p['p50_ms']:.3f} | {p['p95_ms']:.3f} | {p['p99_ms']:.3f} | "
                         f"{p['max_ms']:.3f} |")
    e = loop["end_to_end"]
    lines.append(f"| **tick** | {loop['ticks']} | {e['p50_ms']:.3f} | {e['p95_ms']:.3f} | {e['p99_ms']:.3f} | "
                 f"{e['max_ms']:.3f} |")
    if loop.get("parts"):
        lines += ["", "Each model stage's own split (p50 ms per call):", "",
                  "| stage | pre-process | network | post-process |", "|---|---|---|---|"]
        lines += [f"| {name} | {p['pre']['p50_ms']:.3f} | {p['model']['p50_ms']:.3f} | {p['post']['p50_ms']:.3f} |"
                  for name, p in loop["parts"].items()]
    if "matrix" in result:
        m = result["matrix"]
        lines += ["", "## Provider x precision", "",
                  "| model | provider | precision | batch 1 p50 ms | loop batch | loop batch p50 ms | per item ms |",
                  "|---|---|---|---|---|---|---|"]
        for r in m["calls"]:
            b = r["loop_batch"]
            if "unavailable" in r:
                lines.append(f"| {r['model']} | {r['provider']} | {r['precision']} | not usable here | {b} | | |")
                continue
            lines.append(f"| {r['model']} | {r['provider']} | {r['precision']} | {r['batch1']['p50_ms']:.3f} | {b} | "
                         f"{r[f'batch{b}']['p50_ms']:.3f} | {r[f'batch{b}']['p50_ms'] / b:.3f} |")
        lines += ["", "| loop with | max tick ms | p99 tick ms | misses | largest rate meeting every deadline |",
                  "|---|---|---|---|---|"]
        for r in m["loops"]:
            lines.append(f"| {r['provider']} {r['precision']} | {r['max_tick_ms']:.2f} | {r['p99_tick_ms']:.2f} | "
                         f"{r['deadline_misses']} | {r['max_rate_hz']} Hz |")
        lines += [""] + [f"- auto choice for {name}: {a['provider']} {a['precision']} (fastest found on "
                         f"{a['provider']}: {a['fastest_precision']}) "
                         f"{'OK' if a['auto_is_fastest'] else 'NOT the fastest'}"
                         + (f"; fastest of all providers: {a['fastest_overall']}" if a.get("fastest_overall") else "")
                         for name, a in m["auto"].items()]
        lines += [f"- not usable here: {r['model']} {r['provider']} {r['precision']}: {r['unavailable']}"
                  for r in m["calls"] if "unavailable" in r]
    if "accuracy" in result:
        lines += ["", "## Accuracy", ""]
        for kind, by_precision in result["accuracy"].items():
            precisions = list(by_precision)
            first = by_precision[precisions[0]]
            lines += [f"{kind}: {first['dataset']} (n = {first['n']})", "",
                      "| | " + " | ".join(precisions) + " |", "|---|" + "---|" * len(precisions),
                      "| accuracy | " + " | ".join(f"{by_precision[p]['accuracy']:.4f}" for p in precisions) + " |",
                      "| macro-F1 | " + " | ".join(f"{by_precision[p]['macro_f1']:.4f}" for p in precisions) + " |"]
            for label in first["labels"]:
                lines.append(f"| recall {label} | " + " | ".join(
                    f"{by_precision[p]['per_class'][label]['recall']:.3f}" for p in precisions) + " |")
            lines += ["", "confusion matrices: " + ", ".join(by_precision[p]["confusion_png"] for p in precisions), ""]
    return "\n".join(lines) + "\n"


def _reference_line(ref: dict | None) -> list[str]:
    if not ref or not ref["samples"]:
        return []
    line = (f"- CPU reference ({ref['workload']}): p50 {ref['p50_ms']:.3f} ms over {ref['samples']} samples, "
            f"second half {100 * ref['drift']:+.1f}% against the first")
    if abs(ref["drift"]) > STEADY:
        line += ("; **the CPU's speed changed during the run** (other load, clock scaling, throttling or a shared "
                 "host): medians mix two speeds, re-run before comparing")
    return [line]


def _wakeup_line(request: dict | None) -> list[str]:
    if not request:
        return ["- CPU idle states: the kernel's choice (loop.cpu_wakeup_latency_us unset)"]
    if request["applied"]:
        return [f"- CPU idle states: wake-up latency held at {request['requested_us']} us during the run"]
    return [f"- CPU idle states: **{request['requested_us']} us requested but not held**: {request['problem']}"]


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    t = np.arange(len(result["timeline_ms"])) / result["configured_rate_hz"]
    a.plot(t, result["timeline_ms"], lw=0.6)
    a.axhline(1000 / result["configured_rate_hz"], c="r", ls="--", lw=1, label="deadline")
    a.set(xlabel="s", ylabel="tick latency ms", title="end-to-end tick latency over time", yscale="log")
    a.legend(loc="upper right")
    samples = {k: v for k, v in result["stage_samples_ms"].items() if v}
    b.boxplot(list(samples.values()), vert=False, whis=(1, 99), showfliers=False)
    b.set_yticks(range(1, len(samples) + 1), list(samples))
    b.set(xlabel="ms (whiskers p1-p99)", title="per-stage latency", xscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def describe_machine() -> str:
    cpu, flags = None, None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu is None:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and flags is None:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    return f"{cpu}{int8_instructions(flags)}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def int8_instructions(flags: set[str] | None) -> str:
    """On x86, whether ONNX Runtime's INT8 kernels get VNNI: without it the signed INT8 files' fast kernel saturates
    and INT8 runs in its slower CPU form (``appliance.manifest.CpuForm``), which moves the expression stage."""
    if not flags or "avx2" not in flags:
        return ""
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni"})
    return f" ({', '.join(vnni)})" if vnni else " (AVX2, no VNNI)"


def save(result: dict, json_path: Path) -> list[Path]:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md = json_path.with_suffix(".md")
    md.write_text(markdown(result))
    png = plot(result, json_path.with_suffix(".png"))
    return [json_path, md, png]
