"""``appliance bench --matrix``: every model on every provider and precision this machine has, per call and in
short runs of the real loop, and whether ``precision = "auto"`` picked the fastest."""

from __future__ import annotations

import sys
from typing import Callable

from appliance.config import AppConfig
from appliance.tools.bench import expression_models, run_loop


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
