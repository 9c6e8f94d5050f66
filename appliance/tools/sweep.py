"""The provider x precision sweep, in one place: which variants of a model each provider can run, and how long a
call takes. ``appliance bench --matrix`` and ``benchmarks/runtime_precisions.py`` both time through it."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from appliance.daemon.loop import percentiles
from appliance.manifest import ModelManifest
from appliance.runtime import SHORT_NAMES, SUPPORTED, available_providers, timed_runs


def usable_providers(preferred: Sequence[str]) -> list[str]:
    """The providers of ``preferred`` (short names) that this onnxruntime build offers, in that order."""
    available = [SHORT_NAMES[p] for p in available_providers() if p in SHORT_NAMES]
    return [p for p in preferred if p in available]


def variants(manifest: ModelManifest, providers: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(provider, precision) for every precision a provider supports that this model ships a file for (TensorRT's
    FP16 is built from the FP32 file)."""
    for provider in providers:
        for precision in SUPPORTED[provider]:
            if ("fp32" if precision == "fp16" else precision) in manifest.precisions():
                yield provider, precision


def random_feed(session, batch: int, shape: tuple | None = None) -> dict:
    item = session.get_inputs()[0]
    shape = shape or tuple(d if isinstance(d, int) else 1 for d in item.shape[1:])
    return {item.name: np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)}


def time_calls(session, feed: dict, runs: int, warm_up: int = 10) -> dict:
    """Percentiles (ms) of ``runs`` calls after ``warm_up`` untimed ones."""
    return percentiles(timed_runs(session, feed, runs, warm_up))
