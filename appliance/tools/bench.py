"""The technician's benchmark: the real loop on a recorded or live input, per-stage latency, misses, providers,
a provider x precision matrix, and model accuracy, as JSON (machines), markdown (people) and PNG (plots).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from appliance import __version__
from appliance.tools.compare import STEADY
from appliance.config import AppConfig
from appliance.daemon.loop import percentiles

# Stages that are model calls; everything else in a tick is loop overhead.
MODEL_STAGES = ("detect", "expression", "vad", "tone")


def _progress(total_s: float, scheduler, stop: threading.Event, out=sys.stderr) -> None:
    started = time.monotonic()
    while not stop.wait(0.5):
        done = min(total_s, time.monotonic() - started)
        bar = "#" * int(30 * done / total_s)
        print(f"\r[{bar:<30}] {done:5.0f}/{total_s:g} s  {scheduler.ticks} ticks  {scheduler.misses} misses",
              end="", file=out, flush=True)
    print(file=out, flush=True)


class CpuReference:
    """A fixed piece of arithmetic timed in the loop's slack after every tick: how fast the CPU is in the state the
    ticks run in, independent of the appliance's code.

    Why: a loop that sleeps 90 % of each period runs on a CPU the machine may have slowed or moved meanwhile (a
    shared virtual host parks and migrates idle vCPUs; a Jetson without ``jetson_clocks`` scales its clock down;
    a hot one throttles). On this project's 2-core VM such phases last seconds to minutes and make every stage
    20-30 % slower at once, while a back-to-back timing of the same call stays within 2 %. Two reports whose
    references differ were taken on a CPU running at different speeds, and their stage times differ for that
    reason alone; ``appliance compare`` says so.
    """

    WORKLOAD = "float64 matmul 160x160, one thread, in the slack after each tick"
    MIN_SLACK_S = 0.005     # never sample when it could delay the next tick

    def __init__(self, size: int = 160):
        rng = np.random.default_rng(0)
        self._a, self._b = rng.standard_normal((size, size)), rng.standard_normal((size, size))
        self._out = np.empty((size, size))
        self.samples: list[float] = []

    def sample(self, slack_s: float) -> None:
        if slack_s < self.MIN_SLACK_S:
            return
        t0 = time.perf_counter()
        np.matmul(self._a, self._b, out=self._out)
        self.samples.append(time.perf_counter() - t0)

    def report(self) -> dict:
        half = len(self.samples) // 2
        first, second = (float(np.median(h)) if len(h) else 0.0 for h in (self.samples[:half], self.samples[half:]))
        return {"workload": self.WORKLOAD, "samples": len(self.samples)} | percentiles(self.samples) | {
            # How much slower the CPU ran in the second half of the run than in the first.
            "drift": round(second / first - 1, 4) if first else 0.0}


def run_loop(cfg: AppConfig, seconds: float, faces: int = 0, progress: bool = True) -> dict:
    """Drive the real pipeline for ``seconds`` and measure it.

    In a state folder of its own and to an embedded broker: a benchmark on a unit whose daemon runs must neither
    wait for the daemon's state-folder lock nor put its events into the unit's outbox and seq. The unit's pause
    file still applies: an opted-out unit is not analysed by its benchmark either."""
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as state:
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.privacy.pause_file = cfg.pause_file
        run_cfg.state.dir = Path(state)
        run_cfg.mqtt.broker = None
        return _run_loop(run_cfg, seconds, faces, progress)


def _run_loop(cfg: AppConfig, seconds: float, faces: int, progress: bool) -> dict:
    from appliance.daemon.pipeline import Pipeline
    from appliance.daemon.stages import STAGE_NAMES

    pipeline = Pipeline(cfg, history_ticks=int(seconds * cfg.loop.rate_hz) + 100, replicate_faces=faces)
    reference = CpuReference()
    pipeline.scheduler.on_idle = reference.sample
    stop = threading.Event()
    bar = threading.Thread(target=_progress, args=(seconds, pipeline.scheduler, stop), daemon=True)
    cpu0, wall0 = os.times(), time.monotonic()
    if progress:
        bar.start()
    try:
        report = pipeline.run(seconds)
    finally:
        stop.set()
        if progress:
            bar.join()
    cpu1, wall = os.times(), time.monotonic() - wall0
    ticks = list(pipeline.scheduler.recent)
    # The tick's work runs from when its body started; the wake-up delay before that is latency, not work.
    work = sum(t.finished - t.started for t in ticks)
    model = sum(t.stages.get(s, 0.0) for t in ticks for s in MODEL_STAGES)
    return {
        "stages": {s: percentiles([t.stages[s] for t in ticks if s in t.stages]) | {
            "calls": sum(1 for t in ticks if s in t.stages)} for s in STAGE_NAMES},
        # Stages whose work per tick varies (faces, 32 ms VAD chunks): time per item, a single-valued figure where
        # the per-tick one is a mix of 3- and 4-chunk ticks.
        "per_item": {s: percentiles([t.stages[s] / t.items[s] for t in ticks if t.items.get(s)]) | {
            "items": sum(t.items.get(s, 0) for t in ticks)} for s in ("expression", "vad")},
        "end_to_end": percentiles([t.latency for t in ticks]),
        "deadline_misses": report.deadline_misses,
        "skipped_slots": report.skipped_slots,
        "ticks": report.ticks,
        "rate_hz": report.rate_hz,
        "configured_rate_hz": cfg.loop.rate_hz,
        "seconds": seconds,
        "warm_up_ms": round(1000 * pipeline.warm_up_s, 1),   # before the first tick, not in any stage
        "faces_replicated": faces,
        "frames_dropped": report.frames_dropped,
        "frames_used": report.frames_used,
        "audio_lost_seconds": report.audio_lost_seconds,
        "summaries": report.summaries,
        "alerts": report.alerts,
        "loop_overhead_fraction": round(1 - model / work, 4) if work else 0.0,
        # Where the overhead goes, in ms per tick: each non-model stage, and the loop's own untimed work (pause
        # checks, stall checks, bookkeeping) as "untimed".
        "overhead_ms_per_tick": {s: round(sum(t.stages.get(s, 0.0) for t in ticks) * 1000 / len(ticks), 3)
                                 for s in STAGE_NAMES if s not in MODEL_STAGES} | {
            "untimed": round(sum(t.finished - t.started - sum(t.stages.values()) for t in ticks) * 1000
                             / len(ticks), 3)} if ticks else {},
        "cpu_percent_of_one_core": round(100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall, 1),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "providers": {m["model"]: {"provider": m["provider"], "precision": m["precision"]}
                      for m in report.providers.values()},
        "cpu_reference": reference.report(),
        "cpu_wakeup_latency": pipeline.cpu_latency.describe() if pipeline.cpu_latency else None,
        "timeline_ms": [round(t.latency * 1000, 3) for t in ticks],
        "stage_samples_ms": {s: [round(t.stages[s] * 1000, 3) for t in ticks if s in t.stages] for s in STAGE_NAMES},
    }


def matrix(cfg: AppConfig, runs: int = 200, loop_seconds: float = 10.0,
           log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Every model x available provider x precision: per-call latency at batch 1 and at the loop's batch, and the
    largest loop rate whose every tick met its deadline in a short run of the real loop with that choice."""
    from appliance.manifest import load_manifest
    from appliance.runtime import SUPPORTED, NoUsableProvider, open_session
    from appliance.tools.sweep import random_feed, time_calls, usable_providers, variants

    models = {name: cfg.faces.max_faces for name in expression_models(cfg)} | {cfg.voice.model: 1}
    providers = usable_providers(cfg.runtime.providers)
    rows = []
    for name, loop_batch in models.items():
        manifest = load_manifest(cfg.models.dir / "onnx" / name)
        shape = manifest.preprocessing and (1, manifest.preprocessing.height, manifest.preprocessing.width)
        for provider, precision in variants(manifest, providers):
            rcfg = cfg.runtime.model_copy(update={"providers": [provider], "precision": precision})
            try:
                session, report = open_session(manifest, rcfg)
            except NoUsableProvider as e:
                # In the build but not usable here (onnxruntime-gpu without TensorRT's libraries, a CUDA
                # mismatch): a row that says why, not a crash of the whole report.
                log(f"matrix: {name} {provider} {precision}: not usable here ({e})")
                rows.append({"model": name, "provider": provider, "precision": precision,
                             "loop_batch": loop_batch, "unavailable": str(e)})
                continue
            row = {"model": name, "provider": provider, "precision": precision}
            for batch in sorted({1, loop_batch}):
                row[f"batch{batch}"] = time_calls(session, random_feed(session, batch, shape), runs)
            row["loop_batch"] = loop_batch
            log(f"matrix: {name} {provider} {precision}: batch 1 p50 {row['batch1']['p50_ms']:.3f} ms"
                + (f", batch {loop_batch} p50 {row[f'batch{loop_batch}']['p50_ms']:.3f} ms" if loop_batch > 1
                   else ""))
            rows.append(row)
    # The largest rate that meets every deadline, per precision choice, from the real loop.
    loops = []
    for provider in providers:
        for precision in [p for p in SUPPORTED[provider] if p != "fp16" or provider == "tensorrt"]:
            if not any(r["provider"] == provider and r["precision"] == precision and "unavailable" not in r
                       for r in rows):
                continue     # no model could run it (row above says why)
            c = cfg.model_copy(deep=True)
            c.runtime.providers = [provider]
            c.runtime.precision = precision
            log(f"matrix: loop with {provider} {precision} for {loop_seconds:g} s")
            r = run_loop(c, loop_seconds, progress=False)
            worst = r["end_to_end"]["max_ms"]
            loops.append({"provider": provider, "precision": precision, "max_tick_ms": worst,
                          "p99_tick_ms": r["end_to_end"]["p99_ms"], "deadline_misses": r["deadline_misses"],
                          "max_rate_hz": int(1000 // worst) if worst else None})
    auto = {}
    for name, loop_batch in models.items():
        if name not in (cfg.expression.model, cfg.voice.model):
            continue     # timed for comparison; the loop and its auto choice are the configured models'
        _, rep = open_session(load_manifest(cfg.models.dir / "onnx" / name), cfg.runtime)
        timed = [r for r in rows if r["model"] == name and "unavailable" not in r]
        candidates = [r for r in timed if r["provider"] == rep.provider]
        fastest = min(candidates, key=lambda r: r[f"batch{loop_batch}"]["p50_ms"]) if candidates else None
        overall = min(timed, key=lambda r: r[f"batch{loop_batch}"]["p50_ms"]) if timed else None
        auto[name] = {"provider": rep.provider, "precision": rep.precision,
                      "fastest_precision": fastest and fastest["precision"],
                      "auto_is_fastest": bool(fastest) and fastest["precision"] == rep.precision,
                      # Across providers too: a tiny model can run faster on a big CPU than through GPU launches.
                      "fastest_overall": overall and f"{overall['provider']} {overall['precision']}"}
    return {"calls": rows, "loops": loops, "auto": auto}


def expression_models(cfg: AppConfig) -> list[str]:
    """The configured expression model first, then every other shipped one (compared side by side)."""
    from appliance.manifest import load_manifest

    others = sorted(p.parent.name for p in (cfg.models.dir / "onnx").glob("*/manifest.json")
                    if p.parent.name != cfg.expression.model
                    and load_manifest(p.parent).task == "facial-expression")
    return [cfg.expression.model] + others


def accuracy(cfg: AppConfig, faces_dir: Path | None, voice_dir: Path | None, voice_where: dict | None,
             out_dir: Path) -> dict:
    """FP32 and INT8 side by side on the datasets given, with confusion matrix PNGs."""
    from appliance.tools.evaluation import confusion_png, evaluate_faces, evaluate_voice, stderr_progress
    from appliance.manifest import load_manifest
    from appliance.perception.expression import ExpressionModel
    from appliance.perception.voice import VoiceToneModel

    result = {}
    jobs = []
    if faces_dir:
        for name in expression_models(cfg):
            kind = "faces" if name == cfg.expression.model else f"faces_{name}"
            jobs.append((kind, name, ExpressionModel,
                         lambda m: evaluate_faces(faces_dir, m, progress=stderr_progress("  faces"))))
    if voice_dir:
        jobs.append(("voice", cfg.voice.model, VoiceToneModel,
                     lambda m: evaluate_voice(voice_dir, m, where=voice_where, progress=stderr_progress("  voice"))))
    for kind, name, cls, evaluate in jobs:
        manifest = load_manifest(cfg.models.dir / "onnx" / name)
        for precision in manifest.precisions():
            rcfg = cfg.runtime.model_copy(update={"providers": ["cpu"], "precision": precision})
            report = evaluate(cls(manifest, rcfg))
            png = confusion_png(report, out_dir / f"confusion_{kind}_{precision}.png")
            result.setdefault(kind, {})[precision] = report.as_dict() | {"confusion_png": png.name}
    return result


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
             f"{loop['audio_lost_seconds']} s",
             "- models: " + ", ".join(f"{m} on {p['provider']} {p['precision']}" for m, p in loop["providers"].items())
             + (f"; warmed up in {loop['warm_up_ms']:.0f} ms before the first tick" if "warm_up_ms" in loop else ""),
             *_reference_line(loop.get("cpu_reference")),
             *_wakeup_line(loop.get("cpu_wakeup_latency")),
             "", "| stage | calls | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for name, p in loop["stages"].items():
        if p["calls"]:
            lines.append(f"| {name} | {p['calls']} | {p['p50_ms']:.3f} | {p['p95_ms']:.3f} | {p['p99_ms']:.3f} | "
                         f"{p['max_ms']:.3f} |")
    e = loop["end_to_end"]
    lines.append(f"| **tick** | {loop['ticks']} | {e['p50_ms']:.3f} | {e['p95_ms']:.3f} | {e['p99_ms']:.3f} | "
                 f"{e['max_ms']:.3f} |")
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
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def save(result: dict, json_path: Path) -> list[Path]:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md = json_path.with_suffix(".md")
    md.write_text(markdown(result))
    png = plot(result, json_path.with_suffix(".png"))
    return [json_path, md, png]


def header(cfg: AppConfig, input_desc: str) -> dict:
    return {"version": __version__, "machine": describe_machine(), "input": input_desc,
            "config": {"rate_hz": cfg.loop.rate_hz, "max_faces": cfg.faces.max_faces,
                       "providers": cfg.runtime.providers, "precision": cfg.runtime.precision}}
