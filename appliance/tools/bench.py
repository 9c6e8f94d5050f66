"""The technician's benchmark: the real loop on a recorded or live input, per-stage latency, misses, providers,
a provider x precision matrix, and model accuracy, as JSON (machines), markdown (people) and PNG (plots).
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from appliance import __version__
from appliance.config import AppConfig
from appliance.daemon.loop import percentiles
from appliance.tools.bench_report import describe_machine

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
        # features and tone run on the voice worker, beside the tick: their times are the worker's, not the tick's.
        "stages": {s: percentiles(times := [v for t in ticks if (v := t.stage_time(s)) is not None]) | {
            "calls": len(times)} for s in STAGE_NAMES},
        "beside_the_tick": sorted({s for t in ticks for s in t.beside}),
        "voice_worker": None if pipeline.parts.voice_worker is None else {
            k: getattr(pipeline.parts.voice_worker, k) for k in ("submitted", "classified", "dropped", "failed")},
        # Stages whose work per tick varies (faces, 32 ms VAD chunks): time per item, a single-valued figure where
        # the per-tick one is a mix of 3- and 4-chunk ticks.
        "per_item": {s: percentiles([t.stages[s] / t.items[s] for t in ticks if t.items.get(s)]) | {
            "items": sum(t.items.get(s, 0) for t in ticks)} for s in ("expression", "vad")},
        # Each model stage's own split (perception/stage.py): pre-processing, network, post-processing.
        "parts": {s: {part: percentiles([getattr(t.parts[s], part) for t in ticks if s in t.parts])
                      for part in ("pre", "model", "post")}
                  for s in STAGE_NAMES if any(s in t.parts for t in ticks)},
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
        "stage_samples_ms": {s: [round(v * 1000, 3) for t in ticks if (v := t.stage_time(s)) is not None]
                             for s in STAGE_NAMES},
    }


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
    from appliance.tools.evaluation import evaluate_faces, evaluate_voice, stderr_progress
    from appliance.tools.metrics import confusion_png
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
        def tone(manifest, rcfg):
            from appliance.perception.voice_encoder import configured

            return VoiceToneModel(manifest, rcfg, anger=configured(cfg.models.dir / "onnx", cfg.voice.anger_model,
                                                                    rcfg))

        jobs.append(("voice", cfg.voice.model, tone,
                     lambda m: evaluate_voice(voice_dir, m, where=voice_where, progress=stderr_progress("  voice"))))
    for kind, name, cls, evaluate in jobs:
        manifest = load_manifest(cfg.models.dir / "onnx" / name)
        for precision in manifest.precisions():
            rcfg = cfg.runtime.model_copy(update={"providers": ["cpu"], "precision": precision})
            report = evaluate(cls(manifest, rcfg))
            png = confusion_png(report, out_dir / f"confusion_{kind}_{precision}.png")
            result.setdefault(kind, {})[precision] = report.as_dict() | {"confusion_png": png.name}
    return result


def header(cfg: AppConfig, input_desc: str) -> dict:
    return {"version": __version__, "machine": describe_machine(), "input": input_desc,
            "config": {"rate_hz": cfg.loop.rate_hz, "max_faces": cfg.faces.max_faces,
                       "providers": cfg.runtime.providers, "precision": cfg.runtime.precision}}
