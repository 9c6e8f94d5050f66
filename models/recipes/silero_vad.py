"""Recipe: Silero VAD (MIT) as shipped in the ``silero-vad`` PyPI package, with its licence and manifest.

    python models/recipes/silero_vad.py [--out models/onnx/silero_vad]

Takes ``silero_vad/data/silero_vad_16k_op15.onnx`` (16 kHz only, opset 15, 1.3 MB) from
``pip download --no-deps silero-vad==6.2.3`` and checks its sha256. The daemon runs it one 32 ms chunk at a time
(batch 1), so the recipe fixes that shape and inlines the batch-size bookkeeping the PyTorch export carries as
nested ``If`` subgraphs (recipe_tools.specialise_shapes: 121 top-level nodes + 14 subgraphs -> 39 plain nodes),
then checks that the result gives the same probabilities as the upstream file on the bundled recording and on
noise. The daemon runs it through ONNX Runtime with a numpy wrapper (appliance/perception/vad.py); neither torch
nor the silero-vad package is needed at run time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from appliance.manifest import ModelManifest, Provenance, Variant, sha256_of, write_manifest  # noqa: E402
from appliance.sources.audio import SAMPLE_RATE, load_audio_file  # noqa: E402
from models.recipes.recipe_tools import files_from_wheel, specialise_shapes  # noqa: E402

WHEEL = "silero-vad==6.2.3"
MEMBER = "silero_vad/data/silero_vad_16k_op15.onnx"
SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
SHAPES = {"input": [1, 64 + 512], "state": [2, 1, 128]}
DEMO = ROOT / "appliance" / "demo" / "short_hamilton_clip.flac"


def chunk_probabilities(path: Path, audio: np.ndarray) -> np.ndarray:
    """The model's speech probability for each 32 ms chunk of ``audio``, streamed as the daemon does."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state, context, out = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32), []
    for i in range(0, len(audio) - 511, 512):
        chunk = audio[i:i + 512]
        p, state = session.run(None, {"input": np.concatenate([context, chunk])[None], "state": state,
                                      "sr": np.array(SAMPLE_RATE, np.int64)})
        out.append(float(p[0, 0]))
        context = chunk[-64:]
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "onnx" / "silero_vad")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = files_from_wheel(WHEEL, {MEMBER: SHA256})
    (args.out / "LICENSE").write_bytes(files["LICENSE"])
    with tempfile.TemporaryDirectory() as tmp:
        upstream = Path(tmp) / "upstream.onnx"
        upstream.write_bytes(files[MEMBER])
        feeds = {"input": np.zeros(SHAPES["input"], np.float32), "state": np.zeros(SHAPES["state"], np.float32),
                 "sr": np.array(SAMPLE_RATE, np.int64)}
        shape = specialise_shapes(upstream, args.out / "fp32.onnx", SHAPES, feeds)
        if shape["ifs_left"]:
            raise SystemExit(f"{shape['ifs_left']} If nodes depend on values, not shapes: not specialised")
        noise = np.random.default_rng(0).standard_normal(SAMPLE_RATE * 3).astype(np.float32) * 0.1
        audio = np.concatenate([np.asarray(load_audio_file(DEMO), np.float32), noise])
        before, after = chunk_probabilities(upstream, audio), chunk_probabilities(args.out / "fp32.onnx", audio)
        worst = float(np.abs(before - after).max())
        if worst > 1e-5:
            raise SystemExit(f"the specialised model differs from upstream by up to {worst:.2e} in probability")
    print(f"specialised to batch 1: {shape['nodes']} nodes, no If left; {len(audio) // 512} chunks of real audio "
          f"and noise give the upstream probabilities (max difference {worst:.1e})")
    manifest = ModelManifest(
        name="silero_vad", version="6.2.3", task="voice-activity-detection", format="onnx",
        input_name="input", output_name="output",
        variants=[Variant(precision="fp32", file="fp32.onnx", sha256=sha256_of(args.out / "fp32.onnx"),
                          bytes=(args.out / "fp32.onnx").stat().st_size)],
        provider_precision={"tensorrt": "fp32", "cuda": "fp32", "cpu": "fp32"},
        provenance=Provenance(
            source=f"PyPI {WHEEL}, member {MEMBER}", licence="MIT (Silero Team, see LICENSE here)",
            recipe="models/recipes/silero_vad.py",
            notes="stateful: input (1, 64 context + 512 samples) at 16 kHz, state (2, 1, 128), sr; output speech "
                  "probability per 32 ms chunk. Specialised by the recipe to batch 1 (shape-only If subgraphs "
                  "inlined and folded; same probabilities as upstream, checked by the recipe). Measured on real "
                  "clips: benchmarks/results/vad.md"),
    )
    write_manifest(manifest, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
