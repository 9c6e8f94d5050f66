"""The last step of ``ferplus_cnn.py``: calibrate the exported files on the selection split, measure them on
FER2013 PublicTest with the daemon's own code (both label sets), time them, and write the manifest.

Kept apart from the training script so that ``--finalize-only`` needs no PyTorch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from models.recipes.ferplus_cnn import (CROP_MARGIN, CROP_SHIFT, LABELS, OFFSET, SCALE, SIZE, WEIGHTS_LICENCE,
                                           fit_calibration)

PUBLIC_TEST = "FER2013 PublicTest"


def seeds_text(history: dict, seed: int) -> str:
    seeds = history.get("graph", {}).get("used", {}).get("seeds", [seed])
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def graph_text(history: dict) -> str:
    """What the exported graph averages, as the provenance says it."""
    graph = history.get("graph", {}).get("used") or {"members": 1, "flip": False}
    parts = []
    if graph["members"] > 1:
        parts.append(f"the {graph['members']} seeds' logits averaged inside one graph (a seed ensemble)")
    if graph["flip"]:
        parts.append("each face averaged with its mirror image inside the graph")
    return ("; " + " and ".join(parts) + " (chosen on the selection split)") if parts else ""


def write_manifest_and_reports(args, d: dict, sel_idx: np.ndarray, say) -> None:
    from appliance.runtime import RuntimeConfig
    from appliance.tools.evaluation import evaluate_faces, evaluate_ferplus, stderr_progress
    from appliance.tools.metrics import confusion_png
    from models.recipes.int8_cpu_form import recorded_cpu_form
    from appliance.manifest import (Accuracy, Calibration, ModelManifest, Preprocessing, Provenance, Variant,
                                    load_manifest, sha256_of, write_manifest)
    from appliance.perception.expression import ExpressionModel

    out: Path = args.out
    history = json.loads((args.log / "architectures.json").read_text()).get(args.tag, {})
    variants = [Variant(precision=p, file=f"{p}.onnx", sha256=sha256_of(out / f"{p}.onnx"),
                        bytes=(out / f"{p}.onnx").stat().st_size, cpu_form=recorded_cpu_form(out / f"{p}.onnx"),
                        quantization=None if p == "fp32" else {
                            "format": "QDQ", "weights": "int8 per-channel symmetric",
                            "activations": "int8 symmetric", "excluded": "final Softmax (FP32 probabilities)",
                            "calibration": f"512 training faces (not selection, not PublicTest), seed {args.seed}, "
                                           "MinMax"})
                for p in ("fp32", "int8")]
    manifest = ModelManifest(
        name="ferplus_cnn", version="1.0.0", task="facial-expression", format="onnx", labels=LABELS,
        input_name="input", output_name="probabilities", input_shape=[1, SIZE, SIZE],
        preprocessing=Preprocessing(
            color="gray", height=SIZE, width=SIZE, layout="NCHW", scale=SCALE, offset=OFFSET,
            formula="(x/255 - 0.5) * 2 on a 48x48 gray face crop", crop_margin=CROP_MARGIN, crop_shift=CROP_SHIFT),
        variants=variants,
        provider_precision={"tensorrt": "int8", "cuda": "fp32", "cpu": "fp32"},
        provider_precision_source="set below from this recipe's timing",
        provenance=Provenance(
            source=f"trained here from scratch by the recipe: {args.arch} width {args.width} "
                   f"({history.get('parameters', '?')} parameters), {seeds_text(history, args.seed)}, "
                   f"{args.epochs} epochs on "
                   "FER2013 train minus a 10% selection split, soft targets = FER+ crowd votes over the 7 labels "
                   "(contempt, unknown and not-a-face votes dropped; faces with fewer than 5 such votes left out)"
                   + (f", blended with the single FER2013 label at weight {args.fer2013_weight:g}"
                      if args.fer2013_weight else "")
                   + graph_text(history) + "; "
                   "final weights and calibration chosen on the selection split. Architectures compared on the "
                   "selection split: benchmarks/results/face_training/architectures.md",
            licence="images: FER2013, research use only; labels: FER+ (microsoft/FERPlus), MIT. The weights "
                    "inherit the research-only terms (see LICENSE here)",
            recipe="models/recipes/ferplus_cnn.py",
            notes="input (N, 1, 48, 48) gray crop around the BlazeFace box (crop_margin per side, centre moved by "
                  "crop_shift box sides: benchmarks/results/crop_geometry.md); output softmax probabilities, "
                  "calibrated by the runtime with the variant's calibration (temperature or vector scaling)"),
    )
    write_manifest(manifest, out)
    (out / "LICENSE").write_text(WEIGHTS_LICENCE)
    manifest = load_manifest(out)
    selection = d["images"][sel_idx]
    majority = d["majority"][sel_idx]
    index = args.data / "faces" / "ferplus" / "ferplus_index.csv"
    folder = args.data / "faces" / "fer2013" / "public_test"
    for variant in manifest.variants:
        p = variant.precision
        model = ExpressionModel(manifest, RuntimeConfig(providers=["cpu"], precision=p))
        raw = np.concatenate([model.classify(selection[i:i + 256], calibrated=False).probabilities
                              for i in range(0, len(selection), 256)])
        variant.calibration = Calibration(
            **fit_calibration(np.log(np.maximum(raw, 1e-12)), majority),
            fit_on=f"selection split: {int((majority >= 0).sum())} FER2013 train faces held out of training, "
                   "NLL of the FER+ crowd majority")
        write_manifest(manifest, out)
        model = ExpressionModel(load_manifest(out), RuntimeConfig(providers=["cpu"], precision=p))
        plus = evaluate_ferplus(index, model, "public_test", progress=stderr_progress(f"  {p} FER+"))
        fer = evaluate_faces(folder, model, progress=stderr_progress(f"  {p} FER2013"))
        angry = plus.per_class["angry"]
        say(f"{p}: {variant.calibration.method} scaling ({variant.calibration.chosen_by}); PublicTest FER+ majority "
            f"acc {plus.accuracy:.4f} (angry recall "
            f"{angry['recall']:.3f} precision {angry['precision']:.3f}), ECE {plus.ece_uncalibrated:.4f} -> "
            f"{plus.ece:.4f}; FER2013 labels acc {fer.accuracy:.4f}")
        variant.calibration.ece_before, variant.calibration.ece_after = plus.ece_uncalibrated, plus.ece
        variant.accuracy = Accuracy(
            dataset=PUBLIC_TEST, split="PublicTest", n=plus.n, accuracy=plus.accuracy, macro_f1=plus.macro_f1,
            labels="FER+ crowd majority (10 voters; faces whose majority is contempt, unknown, not-a-face or a tie "
                   "left out)", ece=plus.ece, per_class=plus.per_class,
            command=f"appliance eval faces ../shared/data/faces/ferplus --labels ferplus --model ferplus_cnn "
                    f"--precision {p}")
        variant.more_accuracy = [Accuracy(
            dataset=PUBLIC_TEST, split="PublicTest", n=fer.n, accuracy=fer.accuracy, macro_f1=fer.macro_f1,
            labels="FER2013 (one annotator)", ece=fer.ece, per_class=fer.per_class,
            command=f"appliance eval faces ../shared/data/faces/fer2013/public_test --model ferplus_cnn "
                    f"--precision {p}")]
        for name, report in (("ferplus", plus), ("fer2013", fer)):
            (args.log / f"eval_{name}_{p}.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
            confusion_png(report, args.log / f"confusion_{name}_{p}.png")
        write_manifest(manifest, out)
    speed = choose_cpu_precision(manifest)
    say(f"cpu: fp32 {speed['fp32']:.3f} ms, int8 {speed['int8']:.3f} ms per face at batch 4 -> "
        f"{manifest.provider_precision['cpu']}")
    write_manifest(manifest, out)
    say(f"wrote {out}/manifest.json")


def choose_cpu_precision(manifest, per: str = "per face") -> dict[str, float]:
    """INT8 on the CPU where it is faster and within a point of FP32's accuracy, set in the manifest with why;
    returns the timings."""
    speed = time_variants(manifest)
    fp32, int8 = manifest.variant("fp32"), manifest.variant("int8")
    close = abs(int8.accuracy.accuracy - fp32.accuracy.accuracy) <= 0.01
    manifest.provider_precision["cpu"] = "int8" if speed["int8"] < speed["fp32"] and close else "fp32"
    manifest.provider_precision_source = (
        f"CPU timed by this recipe, batch 4, one thread: fp32 {speed['fp32']:.3f} ms, int8 {speed['int8']:.3f} ms "
        f"{per}; INT8 accuracy {'within' if close else 'NOT within'} 1 point; TensorRT INT8 as for every QDQ "
        "model here (to be confirmed on a Jetson)")
    return speed


def time_variants(manifest, batch: int = 4, calls: int = 400) -> dict[str, float]:
    from appliance.runtime import RuntimeConfig
    from appliance.perception.expression import ExpressionModel

    speed = {}
    crops = np.random.default_rng(0).integers(0, 255, (batch, SIZE, SIZE), dtype=np.uint8)
    for variant in manifest.variants:
        model = ExpressionModel(manifest, RuntimeConfig(providers=["cpu"], precision=variant.precision))
        for _ in range(30):
            model.classify(crops)
        best = []
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(calls):
                model.classify(crops)
            best.append((time.perf_counter() - t) / calls / batch * 1000)
        speed[variant.precision] = min(best)
    return speed
