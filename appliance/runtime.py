"""The one place that turns a model manifest into an ONNX Runtime session.

Order of preference: TensorRT EP ▶ CUDA EP ▶ CPU EP, restricted to what this ONNX Runtime build offers and what the
config allows. The precision is chosen per provider: under ``precision="auto"`` the manifest's
``provider_precision`` (measured by the benchmarks) decides, e.g. the INT8 QDQ file for TensorRT and FP32 on a
small CPU where INT8 is slower; where it says INT8 on the CPU, both files are timed once on the machine itself and
FP32 wins where it is faster there (``measured_cpu_precision``). Whatever is picked, the session is checked afterwards: ONNX Runtime silently falls
back to the CPU when a GPU provider fails to initialise (e.g. onnxruntime-gpu without CUDA), so the plan is only
reported as taken when the session really runs on it; otherwise the next candidate is built.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from pydantic import Field

from appliance.manifest import ModelManifest, verify_variant
from appliance.section import FilePath, Section

log = logging.getLogger(__name__)


class RuntimeConfig(Section):
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(
        default_factory=lambda: ["tensorrt", "cuda", "cpu"], min_length=1,
        description="preference order; only those that are available are tried")
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    engine_cache_dir: FilePath = Field(default=Path("~/.cache/appliance/trt-engines"))
    trt_max_batch: int = Field(default=16, ge=1, le=1024, description="largest batch TensorRT engines are built for; "
                               "faces.max_faces must not exceed it")
    intra_op_threads: int = Field(default=1, ge=0, le=256, description="0 = ONNX Runtime's default")
    measure_cache: FilePath | None = Field(
        default=Path("~/.cache/appliance/cpu-precision.json"),
        description="where precision=auto keeps what it measured on this machine: a model the manifest runs in INT8 "
        "on the CPU gets FP32 where FP32 measured faster here (once per model file, CPU, ONNX Runtime version and "
        "thread count); unset: the manifest's choice, unmeasured")
    mem_pattern: bool = Field(default=False, description="ONNX Runtime's memory pattern: it keeps a plan of each "
                              "session's buffers for the shapes it saw, for every thread that runs it; off, the "
                              "daemon holds ~25 MB less at 30 Hz x 4 faces for ~1 ms more at p99 "
                              "(README 'Benchmarks')")
    cpu_mem_arena: bool = Field(default=False, description="ONNX Runtime's CPU memory arena: it keeps the peak of "
                                "every buffer it ever allocated; off, buffers go back to the allocator "
                                "(benchmarks/results/runtime_arena.md)")

ORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
SHORT_NAMES = {v: k for k, v in ORT_NAMES.items()}

# Which precisions each provider can run from the files we ship. TensorRT builds FP16 engines from the FP32 file
# and INT8 engines from the QDQ file (explicit quantization, no calibration table). The CUDA EP gets FP32 only:
# it would run QDQ nodes as dequantize+FP32 kernels, slower than FP32 for no accuracy gain.
SUPPORTED = {
    "tensorrt": ("int8", "fp16", "fp32"),
    "cuda": ("fp32",),
    "cpu": ("fp32", "int8"),
}
# Used when a manifest does not say which precision a provider prefers.
DEFAULT_PREFERENCE = {"tensorrt": "int8", "cuda": "fp32", "cpu": "fp32"}


@dataclass(frozen=True)
class SessionPlan:
    provider: str                  # short name: tensorrt | cuda | cpu
    precision: str                 # fp32 | fp16 | int8 (what the provider computes in)
    variant: str                   # which file of the manifest: fp32 | int8
    ort_providers: tuple           # what InferenceSession(providers=...) gets
    reason: str


@dataclass
class RuntimeReport:
    """What a model actually got; goes into logs, the status payload and the benchmarks."""

    model: str
    provider: str
    precision: str
    file: str
    sha256: str
    skipped: list[str] = field(default_factory=list)
    # The file ONNX Runtime opened: the variant's own, or on the CPU its uint8 form (manifest ``cpu_form``).
    opened: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "provider": self.provider, "precision": self.precision,
                "file": self.file, "sha256": self.sha256, "opened": self.opened or self.file,
                "skipped": list(self.skipped)}

    def __str__(self) -> str:
        return f"{self.model}: {self.provider} {self.precision} ({self.opened or self.file})"


class NoUsableProvider(RuntimeError):
    pass


@dataclass(frozen=True)
class TrtEnvironment:
    tensorrt: str    # TensorRT version, e.g. "10.3.0"
    gpu: str         # e.g. "NVIDIA Jetson Orin Nano Developer Kit"


def trt_environment() -> TrtEnvironment:
    """What a TensorRT engine is only valid for: the TensorRT version and the GPU. Unknown parts say so."""
    import re
    import subprocess

    try:
        import tensorrt  # JetPack ships it; pip cannot install it on this kind of machine
        version = tensorrt.__version__
    except ImportError:
        version = "unknown"
    gpu = "unknown"
    try:
        gpu = Path("/proc/device-tree/model").read_text().strip("\0\n ")   # Jetson boards
    except OSError:
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=5).stdout.splitlines()[0].strip() or gpu
        except (OSError, IndexError, subprocess.SubprocessError):
            pass
    return TrtEnvironment(version, re.sub(r"[^A-Za-z0-9._-]+", "-", gpu).strip("-") or "unknown")


def engine_cache_dir(base: Path, manifest: ModelManifest, variant_sha256: str, env: TrtEnvironment) -> Path:
    """One folder per (model file, TensorRT version, GPU): an engine built for anything else is never loaded,
    because a different file, TensorRT upgrade or board lands in a different folder."""
    return Path(base).expanduser() / f"{manifest.name}-{variant_sha256[:12]}-trt{env.tensorrt}-{env.gpu}"


def _trt_options(manifest: ModelManifest, cfg: RuntimeConfig, precision: str, cache: Path) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": precision in ("fp16", "int8"),   # INT8 engines fall back to FP16 for unquantized layers
        "trt_int8_enable": precision == "int8",
    }
    pre = manifest.preprocessing
    shape = manifest.input_shape or (pre and ([1, pre.height, pre.width] if pre.layout == "NCHW"
                                               else [pre.height, pre.width, 1]))
    if manifest.input_name and shape:
        # One optimisation profile covering 1..max batch, so a new face count never triggers an engine rebuild.
        chw = "x".join(str(d) for d in shape)
        name = manifest.input_name
        opts["trt_profile_min_shapes"] = f"{name}:1x{chw}"
        opts["trt_profile_opt_shapes"] = f"{name}:{min(8, cfg.trt_max_batch)}x{chw}"
        opts["trt_profile_max_shapes"] = f"{name}:{cfg.trt_max_batch}x{chw}"
    return opts


def plan_sessions(manifest: ModelManifest, available: Sequence[str], cfg: RuntimeConfig,
                  trt_env: TrtEnvironment | None = None) -> list[SessionPlan]:
    """Every usable (provider, precision) in preference order; the first one is what we try first."""
    plans: list[SessionPlan] = []
    skipped: list[str] = []
    shipped = set(manifest.precisions())
    for short in cfg.providers:
        ort_name = ORT_NAMES[short]
        if ort_name not in available:
            skipped.append(f"{short}: not in this onnxruntime build")
            continue
        if cfg.precision == "auto":
            wanted = manifest.provider_precision.get(short, DEFAULT_PREFERENCE[short])
            reason = f"auto: manifest prefers {wanted} on {short}"
        else:
            wanted = cfg.precision
            reason = f"config asks for {wanted}"
        candidates = [wanted] + ([p for p in SUPPORTED[short] if p != wanted] if cfg.precision == "auto" else [])
        for precision in candidates:
            file_precision = "fp32" if precision == "fp16" else precision
            if precision not in SUPPORTED[short]:
                skipped.append(f"{short}: cannot run {precision}")
                continue
            if file_precision not in shipped:
                skipped.append(f"{short}: no {file_precision} file for {manifest.name}")
                continue
            if short == "tensorrt":
                trt_env = trt_env or trt_environment()
                cache = engine_cache_dir(cfg.engine_cache_dir, manifest, manifest.variant(file_precision).sha256,
                                         trt_env)
                providers: tuple = ((ort_name, _trt_options(manifest, cfg, precision, cache)),)
                if ORT_NAMES["cuda"] in available:
                    providers += (ORT_NAMES["cuda"],)  # nodes TensorRT rejects run on CUDA, not the CPU
            elif short == "cuda":
                providers = (ort_name,)
            else:
                providers = ()
            providers += (ORT_NAMES["cpu"],)
            note = reason if precision == wanted else f"{reason}, which it cannot run; next best {precision}"
            plans.append(SessionPlan(short, precision, file_precision, providers, note))
            break
    if not plans:
        raise NoUsableProvider(
            f"{manifest.name}: no provider can run it with precision={cfg.precision} "
            f"(providers={cfg.providers}, available={list(available)}; {'; '.join(skipped)})")
    return plans


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _default_session_factory(path: str, providers: Sequence, cfg: RuntimeConfig):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if cfg.intra_op_threads:
        options.intra_op_num_threads = cfg.intra_op_threads
    # The loop runs one inference at a time; inter-op parallelism only adds wake-ups.
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = cfg.cpu_mem_arena
    options.enable_mem_pattern = cfg.mem_pattern
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=list(providers))


SessionFactory = Callable[[str, Sequence, RuntimeConfig], Any]


def timed_runs(session, feed: dict, runs: int, warm_up: int = 10) -> list[float]:
    """Seconds of each of ``runs`` calls, after ``warm_up`` untimed ones."""
    for _ in range(warm_up):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return times


MEASURE_RUNS = 40
MEASURE_MARGIN = 0.10       # FP32 must be this much faster to overrule the manifest's INT8


def measured_cpu_precision(manifest: ModelManifest, cfg: RuntimeConfig, factory: SessionFactory,
                           batch: int = 1) -> tuple[str, str] | None:
    """INT8 or FP32 for a model the manifest runs in INT8 on the CPU, by timing both files here at the loop's batch:
    (precision, reason), or None where nothing is to be measured. INT8 QDQ is faster than FP32 on some CPUs and
    slower on others (the instruction set decides), so the manifest's preference is checked on the machine that
    runs it, once: the result is kept in ``cfg.measure_cache`` under the files' sha256, the CPU, ONNX Runtime's
    version and the thread count."""
    import json
    import platform

    import numpy as np
    import onnxruntime as ort

    if cfg.measure_cache is None or manifest.provider_precision.get("cpu", DEFAULT_PREFERENCE["cpu"]) != "int8" \
            or not {"fp32", "int8"} <= set(manifest.precisions()) or not manifest.input_shape:
        return None
    cache = Path(cfg.measure_cache).expanduser()
    quantized = manifest.variant("int8")
    key = "|".join([manifest.name, manifest.variant("fp32").sha256[:16], (quantized.cpu_form or quantized).sha256[:16],
                    _cpu_name() or platform.machine(), ort.__version__, str(cfg.intra_op_threads), str(batch)])
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if not isinstance(entry, dict) or not {"int8_ms", "fp32_ms"} <= set(entry):
        x = np.zeros((batch, *manifest.input_shape), np.float32)
        entry = {}
        for precision in ("int8", "fp32"):
            path = verify_variant(manifest, manifest.variant(precision), cpu=True)
            session = factory(str(path), (ORT_NAMES["cpu"],), cfg)
            feed = {manifest.input_name or session.get_inputs()[0].name: x}
            times = timed_runs(session, feed, MEASURE_RUNS, warm_up=5)
            entry[f"{precision}_ms"] = round(1000 * float(np.median(times)), 4)
        known[key] = entry
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp")
            tmp.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
            tmp.replace(cache)
        except OSError as e:
            log.warning("%s: cannot keep the measured precision in %s (%s); it is measured again next start",
                        manifest.name, cache, e.strerror or e)
    int8, fp32 = entry["int8_ms"], entry["fp32_ms"]
    figures = f"INT8 {int8:.3f} ms, FP32 {fp32:.3f} ms at batch {batch} on this CPU"
    if fp32 < int8 * (1 - MEASURE_MARGIN):
        return "fp32", f"auto: FP32 measured faster than the manifest's INT8 ({figures})"
    return "int8", f"auto: manifest prefers int8 on cpu, and measured so ({figures})"


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def open_session(manifest: ModelManifest, cfg: RuntimeConfig, available: Sequence[str] | None = None,
                 factory: SessionFactory = _default_session_factory, trt_env: TrtEnvironment | None = None,
                 batch: int = 1):
    """Build the best session that really runs where planned. Returns (session, RuntimeReport). ``batch``: the batch
    the loop runs it at, for ``measured_cpu_precision``."""
    available = available_providers() if available is None else list(available)
    skipped: list[str] = []
    plans = plan_sessions(manifest, available, cfg, trt_env)
    if plans[0].provider == "cpu" and cfg.precision == "auto":
        measured = measured_cpu_precision(manifest, cfg, factory, batch)
        if measured is not None:
            precision, reason = measured
            plans[0] = SessionPlan("cpu", precision, precision, plans[0].ort_providers, reason)
    for plan in plans:
        if plan.provider == "tensorrt":
            Path(plan.ort_providers[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        variant = manifest.variant(plan.variant)
        path = verify_variant(manifest, variant, cpu=plan.provider == "cpu")
        try:
            session = factory(str(path), plan.ort_providers, cfg)
        except Exception as e:  # a provider that fails to initialise must not take the daemon down
            skipped.append(f"{plan.provider} {plan.precision}: {type(e).__name__}: {e}")
            log.warning("%s: %s %s failed to start (%s); trying the next provider",
                        manifest.name, plan.provider, plan.precision, e)
            continue
        got = SHORT_NAMES.get(session.get_providers()[0], session.get_providers()[0])
        if got != plan.provider:
            skipped.append(f"{plan.provider} {plan.precision}: onnxruntime fell back to {got}")
            log.warning("%s: asked for %s but onnxruntime gave %s; re-planning for the next provider",
                        manifest.name, plan.provider, got)
            continue
        report = RuntimeReport(manifest.name, plan.provider, plan.precision, variant.file, variant.sha256, skipped,
                               opened=path.name)
        log.info("%s (%s)", report, plan.reason)
        return session, report
    raise NoUsableProvider(f"{manifest.name}: every provider failed: {'; '.join(skipped)}")
