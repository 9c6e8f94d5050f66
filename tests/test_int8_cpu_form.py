"""INT8 on the CPU reads the same numbers on every CPU: each INT8 variant's uint8 CPU form
(``models/recipes/int8_cpu_form.py``), and the Smart Turn encoder written the same way.

ONNX Runtime's uint8 x int8 kernels saturate on x86 without VNNI (this machine's kind: AVX2 only) and are exact on
VNNI; uint8 x uint8 is exact everywhere. The tests compare against the graph's own arithmetic, run unfused (every
QuantizeLinear / DequantizeLinear in float, no integer kernel), so they hold on both kinds of CPU; on a saturating
CPU the signed file fails the same bound (shown beside it, not asserted)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from appliance.config import default_models_dir
from appliance.manifest import ModelFileError, load_manifest, sha256_of
from appliance.runtime import RuntimeConfig, open_session
from benchmarks.int8_cpu_form import demo_faces, demo_speech_mels, session
from models.recipes.int8_cpu_form import cpu_path, uint8_form, write_cpu_form

MODELS = default_models_dir() / "onnx"
INT8_MODELS = sorted(p.parent.name for p in MODELS.glob("*/int8.onnx"))


def q_dq_types(model) -> set[int]:
    inits = {t.name: t.data_type for t in model.graph.initializer}
    return {inits[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits
            and inits[n.input[2]] != TensorProto.INT32}      # biases stay int32


@pytest.mark.parametrize("name", INT8_MODELS)
def test_every_int8_variant_ships_its_cpu_form_rebuilt_byte_for_byte(name, tmp_path):
    manifest = load_manifest(MODELS / name)
    variant = manifest.variant("int8")
    assert variant.cpu_form is not None and variant.cpu_form.file == "int8.cpu.onnx"
    shutil.copy(MODELS / name / "int8.onnx", tmp_path / "int8.onnx")
    rebuilt = write_cpu_form(tmp_path / "int8.onnx")
    assert (rebuilt.sha256, rebuilt.bytes) == (variant.cpu_form.sha256, variant.cpu_form.bytes)
    assert sha256_of(MODELS / name / "int8.cpu.onnx") == variant.cpu_form.sha256
    # the signed file is untouched (TensorRT's form), the CPU form has no int8 left
    assert q_dq_types(onnx.load(MODELS / name / "int8.onnx")) == {TensorProto.INT8}
    assert q_dq_types(onnx.load(MODELS / name / "int8.cpu.onnx")) == {TensorProto.UINT8}


@pytest.mark.parametrize("name", ["ferplus_cnn_one_pass", "fer_mini_xception"])
def test_the_face_models_cpu_form_reads_what_the_quantized_graph_says(name):
    manifest = load_manifest(MODELS / name)
    x = demo_faces(manifest, 80)
    feed = {manifest.input_name or "input": x}
    reference = session(MODELS / name / "int8.onnx", unfused=True).run(None, feed)[0]
    got = session(MODELS / name / "int8.cpu.onnx").run(None, feed)[0]
    signed = session(MODELS / name / "int8.onnx").run(None, feed)[0]
    print(f"{name}: CPU form |dp| mean {np.abs(got - reference).mean():.5f} max {np.abs(got - reference).max():.4f}"
          f", signed file on this CPU mean {np.abs(signed - reference).mean():.5f} "
          f"max {np.abs(signed - reference).max():.4f}")
    assert np.abs(got - reference).mean() < 0.002 and np.abs(got - reference).max() < 0.05


def test_the_shipped_encoder_is_written_in_uint8_and_reads_what_its_graph_says():
    manifest = load_manifest(MODELS / "voice_anger_encoder")
    path = MODELS / "voice_anger_encoder" / manifest.encoder.file
    assert q_dq_types(onnx.load(path)) == {TensorProto.UINT8}
    feed = {manifest.encoder.input_name: demo_speech_mels(8)}
    out = [manifest.encoder.output_name]
    reference = session(path, unfused=True).run(out, feed)[0]
    got = session(path).run(out, feed)[0]
    # Integer kernels and the unfused float path round a few values to the neighbouring step, and four layers carry
    # that on: close, not equal. A saturating kernel is about three times as far (issue 22's notes).
    assert np.abs(got - reference).mean() < 0.04 * np.abs(reference).mean() + 0.01
    assert np.corrcoef(got.ravel(), reference.ravel())[0, 1] > 0.995


def test_the_runtime_opens_the_cpu_form_on_the_cpu_and_refuses_a_damaged_one(tmp_path):
    name = "ferplus_cnn_one_pass"
    session_, report = open_session(load_manifest(MODELS / name), RuntimeConfig(providers=["cpu"], precision="int8"))
    assert (report.file, report.opened) == ("int8.onnx", "int8.cpu.onnx")
    assert "int8.cpu.onnx" in str(report)
    _, fp32 = open_session(load_manifest(MODELS / name), RuntimeConfig(providers=["cpu"], precision="fp32"))
    assert fp32.opened == "fp32.onnx"
    copy = tmp_path / name
    shutil.copytree(MODELS / name, copy)
    with open(copy / "int8.cpu.onnx", "r+b") as f:
        f.seek(2000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ModelFileError, match="int8.cpu.onnx"):
        open_session(load_manifest(copy), RuntimeConfig(providers=["cpu"], precision="int8"))


def test_uint8_form_keeps_values_and_refuses_an_int8_tensor_read_by_anything_else():
    w = numpy_helper.from_array(np.array([[-128, -1], [0, 127]], np.int8), "w")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    zero = numpy_helper.from_array(np.array(-3, np.int8), "z")
    dq = helper.make_node("DequantizeLinear", ["w", "s", "z"], ["y"])
    graph = helper.make_graph([dq], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
                              [w, scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    before = session_bytes(model)
    after = session_bytes(uint8_form(model))
    assert np.array_equal(before, after) and np.array_equal(before, (np.array([[-128, -1], [0, 127]]) + 3) * 0.5)
    also = helper.make_node("Cast", ["w"], ["w_int"], to=TensorProto.INT32)
    graph.node.append(also)
    with pytest.raises(ValueError, match="also read by"):
        uint8_form(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))
    assert cpu_path(MODELS / "x" / "int8.onnx").name == "int8.cpu.onnx"


def session_bytes(model) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]


def test_bench_reports_say_whether_the_cpu_has_vnni():
    from appliance.tools.bench_report import describe_machine, int8_instructions

    assert int8_instructions({"avx2", "fma"}) == " (AVX2, no VNNI)"
    assert int8_instructions({"avx2", "avx512_vnni", "avx_vnni"}) == " (avx512_vnni, avx_vnni)"
    assert int8_instructions({"asimd", "asimddp"}) == "" and int8_instructions(None) == ""
    flags = next((set(line.split(":", 1)[1].split()) for line in open("/proc/cpuinfo") if line.startswith("flags")),
                 None)
    assert int8_instructions(flags) in describe_machine()
