"""Recipe: the CPU form of every INT8 QDQ model, the same quantized values with uint8 weights and activations.

    python models/recipes/int8_cpu_form.py [models/onnx/NAME ...]    # default: every model with an INT8 variant

Why: ONNX Runtime fuses a QDQ graph into QLinearConv / QLinearMatMul and picks the integer kernel by the CPU. For
uint8 activations x int8 weights on x86 without VNNI (AVX2, AVX-512 before Cascade Lake, AMD before Zen 4) it
multiplies with ``vpmaddubsw``, which adds pairs of products into int16 and *saturates*: the same file reads
different numbers there than on a VNNI CPU, where ``vpdpbusd`` accumulates exactly (issue 22's closing notes: the
face model's INT8 PublicTest accuracy 0.8436 -> 0.8273, Smart Turn's encoder moved the voice's P(angry)).
The uint8 x uint8 kernels widen to 16 bits before multiplying and are exact on every CPU, so a graph whose int8
tensors are written as uint8 + 128 (zero points + 128: every dequantized value is bit for bit the same) reads the
figures the manifests record on every CPU. The INT8 file itself stays signed and symmetric: that is the form
TensorRT takes for explicit quantization, and the Jetson runs it there.

Each model's ``int8.onnx`` gets ``int8.cpu.onnx`` beside it, recorded in its manifest variant as ``cpu_form`` (file,
sha256, bytes); the runtime opens the CPU form whenever the CPU runs that variant. ``quantize_qdq`` writes it for
every new INT8 variant, so this command is only needed for files quantized before it existed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from appliance.manifest import CpuForm, load_manifest, sha256_of, write_manifest  # noqa: E402

SUFFIX = ".cpu.onnx"


def cpu_path(int8: Path) -> Path:
    return int8.with_name(int8.name.removesuffix(".onnx") + SUFFIX)


def uint8_form(model):
    """``model`` (an onnx ModelProto, changed in place and returned) with every int8 zero point and every int8
    initializer a DequantizeLinear reads written as uint8 + 128. Only Q/DQ nodes may read those tensors: anything
    else reading them would see shifted values, so that is refused."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    shifted: set[str] = set()
    for node in g.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero = inits.get(node.input[2])
        if zero is None or numpy_helper.to_array(zero).dtype != np.int8:
            continue
        shifted.add(zero.name)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            shifted.add(node.input[0])
    for name in sorted(shifted):
        others = {n.op_type for n in readers[name]} - {"QuantizeLinear", "DequantizeLinear"}
        if others:
            raise ValueError(f"int8 tensor {name} is also read by {sorted(others)}; cannot shift it to uint8")
        values = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
        inits[name].CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))
    # Shape inference wrote the quantized tensors' type as int8; they are uint8 now.
    for info in list(g.value_info) + list(g.output):
        if info.type.tensor_type.elem_type == TensorProto.INT8:
            info.type.tensor_type.elem_type = TensorProto.UINT8
    return model


def write_cpu_form(int8: Path) -> CpuForm:
    """``int8.cpu.onnx`` beside ``int8`` (an INT8 QDQ file), checked to dequantize to the same values."""
    import onnx

    source = onnx.load(str(int8))
    form = uint8_form(onnx.load(str(int8)))
    onnx.checker.check_model(form)
    _check_same_values(source, form)
    out = cpu_path(int8)
    onnx.save(form, str(out))
    return CpuForm(file=out.name, sha256=sha256_of(out), bytes=out.stat().st_size)


def recorded_cpu_form(path: Path) -> CpuForm | None:
    """The manifest entry for ``path``'s CPU form where one was written beside it (INT8 files), else None."""
    out = cpu_path(path)
    return CpuForm(file=out.name, sha256=sha256_of(out), bytes=out.stat().st_size) if out.is_file() else None


def _check_same_values(source, form) -> None:
    """Every DequantizeLinear of an initializer gives the same integers x - zero point in both graphs."""
    from onnx import helper, numpy_helper

    before = {t.name: numpy_helper.to_array(t) for t in source.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in form.graph.initializer}
    for node in form.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[0] not in after:
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        x, zero = node.input[0], node.input[2]
        for arrays in (before, after):
            arrays[x, "int"] = _centred(arrays[x], arrays[zero], axis)
        if not np.array_equal(before[x, "int"], after[x, "int"]):
            raise AssertionError(f"{x}: the uint8 form does not dequantize to the same values")


def _centred(x: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """x - zero point as int32; a per-channel zero point lies along ``axis``."""
    if zero.size > 1:
        shape = [1] * x.ndim
        shape[axis] = zero.size
        zero = zero.reshape(shape)
    return x.astype(np.int32) - zero.astype(np.int32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path, help="model folders (default: every one under models/onnx "
                        "with an INT8 variant)")
    args = parser.parse_args(argv)
    folders = args.models or sorted(p.parent for p in (ROOT / "models" / "onnx").glob("*/manifest.json"))
    for folder in folders:
        manifest = load_manifest(folder)
        variant = manifest.variant("int8")
        if variant is None:
            continue
        variant.cpu_form = write_cpu_form(manifest.path_of(variant))
        write_manifest(manifest, folder)
        print(f"{manifest.name}: {variant.cpu_form.file} ({variant.cpu_form.bytes} bytes, "
              f"sha256 {variant.cpu_form.sha256[:12]}…)", flush=True)


if __name__ == "__main__":
    main()
