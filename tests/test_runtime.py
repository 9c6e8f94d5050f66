"""Runtime provider/precision choice for every combination of available providers.

TensorRT and CUDA cannot exist on this machine, so their sessions are a stand-in factory (a mock of the GPU, the
only thing mocked); the CPU sessions are real ONNX Runtime sessions on the shipped model files.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from appliance.config import default_models_dir
from appliance.runtime import RuntimeConfig
from appliance.manifest import load_manifest
from appliance.runtime import ORT_NAMES, NoUsableProvider, TrtEnvironment, engine_cache_dir, open_session
from appliance.runtime import plan_sessions as _plan_sessions

ORIN = TrtEnvironment("10.3.0", "NVIDIA-Jetson-Orin-Nano-Developer-Kit")


def plan_sessions(manifest, available, cfg):
    return _plan_sessions(manifest, available, cfg, trt_env=ORIN)

MANIFEST = load_manifest(default_models_dir() / "onnx" / "fer_mini_xception")
TRT, CUDA, CPU = ORT_NAMES["tensorrt"], ORT_NAMES["cuda"], ORT_NAMES["cpu"]


class FakeSession:
    """What onnxruntime-gpu returns: a session reporting the providers it actually got."""

    def __init__(self, providers):
        self._providers = providers

    def get_providers(self):
        return self._providers


def gpu_factory(works: set[str]):
    def factory(path, providers, cfg):
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        # onnxruntime silently drops a provider that fails to initialise and carries on with the next one.
        return FakeSession([n for n in names if n in works or n == CPU])
    return factory


EXPECTED_FIRST = {
    # available providers -> (provider, precision, file) of the first plan under precision=auto
    (TRT, CUDA, CPU): ("tensorrt", "int8", "int8"),
    (TRT, CPU): ("tensorrt", "int8", "int8"),
    (CUDA, CPU): ("cuda", "fp32", "fp32"),
    (CPU,): ("cpu", "fp32", "fp32"),
}


@pytest.mark.parametrize("available", list(EXPECTED_FIRST))
def test_auto_choice_per_available_providers(available):
    plans = plan_sessions(MANIFEST, available, RuntimeConfig())
    first = plans[0]
    assert (first.provider, first.precision, first.variant) == EXPECTED_FIRST[available]
    assert plans[-1].provider == "cpu"   # the CPU is always the last resort
    assert [p.provider for p in plans] == [s for s in ("tensorrt", "cuda", "cpu") if ORT_NAMES[s] in available]


def test_tensorrt_plan_options():
    plan = plan_sessions(MANIFEST, [TRT, CUDA, CPU], RuntimeConfig(engine_cache_dir="/var/cache/x"))[0]
    name, opts = plan.ort_providers[0]
    assert name == TRT and plan.ort_providers[1:] == (CUDA, CPU)
    assert opts["trt_int8_enable"] and opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"]
    sha = MANIFEST.variant("int8").sha256[:12]
    assert opts["trt_engine_cache_path"] == f"/var/cache/x/fer_mini_xception-{sha}-trt10.3.0-" \
        "NVIDIA-Jetson-Orin-Nano-Developer-Kit"
    assert opts["trt_profile_min_shapes"] == "input:1x1x64x64"
    assert opts["trt_profile_max_shapes"] == "input:16x1x64x64"


@pytest.mark.parametrize("precision, expect", [
    ("fp16", ("tensorrt", "fp16", "fp32")),
    ("fp32", ("tensorrt", "fp32", "fp32")),
    ("int8", ("tensorrt", "int8", "int8")),
])
def test_forced_precision_on_tensorrt(precision, expect):
    plan = plan_sessions(MANIFEST, [TRT, CUDA, CPU], RuntimeConfig(precision=precision))[0]
    assert (plan.provider, plan.precision, plan.variant) == expect
    assert plan.ort_providers[0][1]["trt_fp16_enable"] == (precision in ("fp16", "int8"))


def test_forced_int8_skips_cuda_and_lands_on_cpu():
    plans = plan_sessions(MANIFEST, [CUDA, CPU], RuntimeConfig(precision="int8"))
    assert [(p.provider, p.precision) for p in plans] == [("cpu", "int8")]


def test_impossible_request_is_a_clear_error():
    with pytest.raises(NoUsableProvider, match="cpu: cannot run fp16"):
        plan_sessions(MANIFEST, [CPU], RuntimeConfig(precision="fp16"))
    with pytest.raises(NoUsableProvider, match="not in this onnxruntime build"):
        plan_sessions(MANIFEST, [CPU], RuntimeConfig(providers=["tensorrt"]))


def test_config_order_is_respected():
    plans = plan_sessions(MANIFEST, [TRT, CUDA, CPU], RuntimeConfig(providers=["cpu", "tensorrt"]))
    assert [p.provider for p in plans] == ["cpu", "tensorrt"]


@pytest.mark.parametrize("works", [set(), {CUDA}, {TRT, CUDA}])
def test_silent_fallback_is_detected_and_replanned(works, tmp_path):
    # onnxruntime-gpu without a usable GPU lists TensorRT/CUDA as available but runs on the CPU; the report
    # must say what really happened and the CPU must get its own precision (fp32), not TensorRT's INT8 file.
    cfg = RuntimeConfig(engine_cache_dir=tmp_path / "engines")
    session, report = open_session(MANIFEST, cfg, available=[TRT, CUDA, CPU], factory=gpu_factory(works),
                                   trt_env=ORIN)
    expected = "tensorrt" if TRT in works else "cuda" if CUDA in works else "cpu"
    assert report.provider == expected
    assert report.precision == {"tensorrt": "int8", "cuda": "fp32", "cpu": "fp32"}[expected]
    assert len(report.skipped) == {"tensorrt": 0, "cuda": 1, "cpu": 2}[expected]


def test_a_provider_that_raises_is_skipped(tmp_path):
    def factory(path, providers, cfg):
        if providers[0][0] == TRT:
            raise RuntimeError("libnvinfer.so.10: cannot open shared object file")
        return FakeSession([p if isinstance(p, str) else p[0] for p in providers])

    _, report = open_session(MANIFEST, RuntimeConfig(engine_cache_dir=tmp_path), [TRT, CUDA, CPU], factory,
                             trt_env=ORIN)
    assert report.provider == "cuda" and "libnvinfer" in report.skipped[0]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_real_cpu_sessions_run_the_shipped_files(precision):
    session, report = open_session(MANIFEST, RuntimeConfig(providers=["cpu"], precision=precision))
    assert (report.provider, report.precision) == ("cpu", precision)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 1, 64, 64)).astype(np.float32)
    (probs,) = session.run(None, {"input": x})
    assert probs.shape == (5, 7) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)


@pytest.mark.parametrize("arena", [False, True])
def test_the_cpu_memory_arena_follows_the_config(arena):
    """Off by default (benchmarks/results/runtime_arena.md); the session gets what the config says, and runs the same."""
    assert RuntimeConfig().cpu_mem_arena is False
    session, _ = open_session(MANIFEST, RuntimeConfig(providers=["cpu"], precision="fp32", cpu_mem_arena=arena))
    assert session.get_session_options().enable_cpu_mem_arena is arena
    x = np.random.default_rng(1).uniform(-1, 1, (4, 1, 64, 64)).astype(np.float32)
    reference, _ = open_session(MANIFEST, RuntimeConfig(providers=["cpu"], precision="fp32", cpu_mem_arena=not arena))
    assert np.allclose(session.run(None, {"input": x})[0], reference.run(None, {"input": x})[0], atol=1e-6)


def test_tampered_model_file_is_refused(tmp_path):
    import shutil

    from appliance.manifest import ModelFileError

    copy = tmp_path / "m"
    shutil.copytree(MANIFEST.directory, copy)
    with open(copy / "fp32.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ModelFileError, match="sha256"):
        open_session(load_manifest(copy), RuntimeConfig(providers=["cpu"]))


def test_every_combination_has_a_plan():
    for n in range(1, 4):
        for combo in itertools.combinations([TRT, CUDA, CPU], n):
            available = list(combo) if CPU in combo else list(combo) + [CPU]
            assert plan_sessions(MANIFEST, available, RuntimeConfig())


def test_engine_cache_is_keyed_by_file_tensorrt_and_gpu(tmp_path):
    fp32, int8 = MANIFEST.variant("fp32").sha256, MANIFEST.variant("int8").sha256
    base = engine_cache_dir(tmp_path, MANIFEST, int8, ORIN)
    assert base != engine_cache_dir(tmp_path, MANIFEST, fp32, ORIN)
    assert base != engine_cache_dir(tmp_path, MANIFEST, int8, TrtEnvironment("10.7.0", ORIN.gpu))
    assert base != engine_cache_dir(tmp_path, MANIFEST, int8, TrtEnvironment("10.3.0", "NVIDIA-Jetson-AGX-Orin"))


# ------------------------------------------------------------------------------ INT8 or FP32, measured on this CPU
def test_int8_on_the_cpu_is_measured_once_per_machine_and_fp32_wins_where_it_is_faster(tmp_path):
    import json

    from appliance.runtime import _default_session_factory

    manifest = load_manifest(default_models_dir() / "onnx" / "ferplus_cnn")
    assert manifest.provider_precision.get("cpu") == "int8"
    cache = tmp_path / "cpu-precision.json"
    cfg = RuntimeConfig(providers=["cpu"], measure_cache=cache)
    built = []

    def factory(path, providers, cfg):
        built.append(path.rsplit("/", 1)[1])
        return _default_session_factory(path, providers, cfg)

    _, report = open_session(manifest, cfg, factory=factory, batch=4)
    # both timed (INT8 in its CPU form), then the session itself
    assert built[:2] == ["int8.cpu.onnx", "fp32.onnx"] and built[2] == f"{report.file.removesuffix('.onnx')}" \
        + (".cpu.onnx" if report.precision == "int8" else ".onnx")
    (key, entry), = json.loads(cache.read_text()).items()
    assert key.startswith("ferplus_cnn|") and entry["int8_ms"] > 0 and entry["fp32_ms"] > 0
    assert report.precision == ("fp32" if entry["fp32_ms"] < 0.9 * entry["int8_ms"] else "int8")
    built.clear()
    open_session(manifest, cfg, factory=factory, batch=4)
    assert built == [report.opened], "the second start reads what the first measured"
    # A CPU where INT8 QDQ is slower (the figures as the cache would hold them): FP32, and the reason says why.
    cache.write_text(json.dumps({key: {"int8_ms": 5.0, "fp32_ms": 2.0}}))
    _, slow_int8 = open_session(manifest, cfg, batch=4)
    assert (slow_int8.precision, slow_int8.file) == ("fp32", "fp32.onnx")
    # Asked for, or unmeasured: the config and the manifest decide, as before.
    assert open_session(manifest, RuntimeConfig(providers=["cpu"], measure_cache=None))[1].precision == "int8"
    assert open_session(manifest, RuntimeConfig(providers=["cpu"], measure_cache=cache, precision="int8"),
                        batch=4)[1].precision == "int8"
