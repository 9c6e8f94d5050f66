"""Recipe: Silero VAD (MIT) as shipped in the ``silero-vad`` PyPI package, with its licence and manifest.

    python models/recipes/silero_vad.py [--out models/onnx/silero_vad]

Takes ``silero_vad/data/silero_vad_16k_op15.onnx`` (16 kHz only, opset 15, 1.3 MB) from
``pip download --no-deps silero-vad==6.2.3`` and checks its sha256. The daemon runs it through ONNX Runtime with a
numpy wrapper (appliance/perception/vad.py); neither torch nor the silero-vad package is needed at run time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from appliance.manifest import ModelManifest, Provenance, Variant, sha256_of, write_manifest  # noqa: E402
from models.recipes.recipe_tools import files_from_wheel  # noqa: E402

WHEEL = "silero-vad==6.2.3"
MEMBER = "silero_vad/data/silero_vad_16k_op15.onnx"
SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "onnx" / "silero_vad")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = files_from_wheel(WHEEL, {MEMBER: SHA256})
    (args.out / "fp32.onnx").write_bytes(files[MEMBER])
    (args.out / "LICENSE").write_bytes(files["LICENSE"])
    manifest = ModelManifest(
        name="silero_vad", version="6.2.3", task="voice-activity-detection", format="onnx",
        input_name="input", output_name="output",
        variants=[Variant(precision="fp32", file="fp32.onnx", sha256=sha256_of(args.out / "fp32.onnx"),
                          bytes=(args.out / "fp32.onnx").stat().st_size)],
        provider_precision={"tensorrt": "fp32", "cuda": "fp32", "cpu": "fp32"},
        provenance=Provenance(
            source=f"PyPI {WHEEL}, member {MEMBER}", licence="MIT (Silero Team, see LICENSE here)",
            recipe="models/recipes/silero_vad.py",
            notes="stateful: input (N, 64 context + 512 samples) at 16 kHz, state (2, N, 128), sr; output speech "
                  "probability per 32 ms chunk. Measured on real clips: benchmarks/results/vad.md"),
    )
    write_manifest(manifest, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
