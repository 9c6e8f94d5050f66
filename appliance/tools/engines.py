"""TensorRT engines built before first start (``appliance models build-engines``), and the models that get one."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from appliance.config import AppConfig
from appliance.manifest import ModelManifest, load_manifest
from appliance.runtime import NoUsableProvider, available_providers, open_session


class EngineError(RuntimeError):
    """TensorRT is missing here or refused a model; the message says what to do."""


def engine_manifests(cfg: AppConfig) -> list[ModelManifest]:
    # The VAD is tiny and stateful (one 32 ms chunk per call): it stays on the CPU everywhere, so no engine.
    return [load_manifest(cfg.models.dir / "onnx" / cfg.expression.model),
            load_manifest(cfg.models.dir / "onnx" / cfg.voice.model)]


def build_engines(cfg: AppConfig, say: Callable[[str], None]) -> None:
    """Each model once through TensorRT at every batch the daemon will use, which fills the engine cache."""
    available = available_providers()
    if "TensorrtExecutionProvider" not in available:
        raise EngineError("TensorRT is not available here: this onnxruntime offers "
                          f"{', '.join(available)}. On a Jetson, deploy/jetson/install.sh installs the onnxruntime-gpu "
                          "build for JetPack, whose TensorRT execution provider builds the engines; nothing to build "
                          "on a CPU-only machine.")
    trt_only = cfg.runtime.model_copy(update={"providers": ["tensorrt"]})
    manifests = engine_manifests(cfg)
    for i, manifest in enumerate(manifests, 1):
        say(f"[{i}/{len(manifests)}] {manifest.name}: building TensorRT engine (minutes on first build)...")
        t0 = time.monotonic()
        try:
            session, report = open_session(manifest, trt_only)
        except NoUsableProvider as e:
            raise EngineError(f"{manifest.name}: TensorRT could not take it: {e}") from None
        item = session.get_inputs()[0]
        shape = manifest.input_shape or [d if isinstance(d, int) else 1 for d in item.shape[1:]]
        for batch in sorted({1, min(8, cfg.runtime.trt_max_batch), cfg.runtime.trt_max_batch}):
            session.run(None, {item.name: np.zeros((batch, *shape), np.float32)})
        cache = [p[1]["trt_engine_cache_path"] for p in session.get_provider_options().items()
                 if p[0] == "TensorrtExecutionProvider"] if hasattr(session, "get_provider_options") else []
        say(f"      {report.provider} {report.precision} ready in {time.monotonic() - t0:.0f} s"
            + (f" -> {cache[0]}" if cache else ""))
