"""The model recipes' graph tools on small graphs built here (the real models are checked by their recipes)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from models.recipes.recipe_tools import specialise_shapes


def _branch(name: str, op: str, scale: float) -> onnx.GraphProto:
    k = helper.make_tensor(f"{name}_k", TensorProto.FLOAT, [], [scale])
    return helper.make_graph([helper.make_node(op, ["x", f"{name}_k"], [f"{name}_y"])], name, [],
                             [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)], [k])


def _model(path) -> None:
    """y = x*2 if batch == 1 else x+5 (a shape decision), then z = y*3 if sum(y) > 0 else y*-1 (a value one)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Equal", ["batch", "one"], ["is_one"]),
        helper.make_node("If", ["is_one"], ["y"], then_branch=_branch("a", "Mul", 2.0),
                         else_branch=_branch("b", "Add", 5.0)),
        helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "fzero"], ["positive"]),
        helper.make_node("If", ["positive"], ["z"],
                         then_branch=helper.make_graph(
                             [helper.make_node("Mul", ["y", "three"], ["c_z"])], "c", [],
                             [helper.make_tensor_value_info("c_z", TensorProto.FLOAT, None)]),
                         else_branch=helper.make_graph(
                             [helper.make_node("Neg", ["y"], ["d_z"])], "d", [],
                             [helper.make_tensor_value_info("d_z", TensorProto.FLOAT, None)])),
    ]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [], [0]),
             helper.make_tensor("one", TensorProto.INT64, [], [1]),
             helper.make_tensor("fzero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("three", TensorProto.FLOAT, [], [3.0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_shape_decisions_are_inlined_and_value_decisions_kept(tmp_path):
    source, dest = tmp_path / "in.onnx", tmp_path / "out.onnx"
    _model(source)
    info = specialise_shapes(source, dest, {"x": [1, 4]}, {"x": np.zeros((1, 4), np.float32)})
    out = onnx.load(str(dest))
    assert info["ifs_left"] == 1           # the value-dependent one
    assert [n.op_type for n in out.graph.node].count("If") == 1
    assert not any(n.op_type in ("Shape", "Equal") for n in out.graph.node)   # the decision was folded away
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [1, 4]
    for x in (np.array([[1, 2, 3, 4]], np.float32), np.array([[-1, -2, -3, -4]], np.float32)):
        np.testing.assert_array_equal(_run(dest, x), _run(source, x))
    assert _run(dest, np.array([[1, 1, 1, 1]], np.float32)).tolist() == [[6, 6, 6, 6]]   # x*2, then *3


def test_the_other_shape_takes_the_other_branch(tmp_path):
    source, dest = tmp_path / "in.onnx", tmp_path / "out.onnx"
    _model(source)
    specialise_shapes(source, dest, {"x": [2, 4]}, {"x": np.zeros((2, 4), np.float32)})
    x = np.ones((2, 4), np.float32)
    assert _run(dest, x).tolist() == [[18.0] * 4] * 2          # (1+5)*3
    with pytest.raises(Exception):
        _run(dest, np.ones((1, 4), np.float32))                 # the shape is fixed now


def test_fairness_compares_both_sexes_at_one_threshold_set_on_the_whole_corpus():
    """voice_fairness.py: the operating point is the corpus's (both sexes together), so a model that scores one sex's
    anger lower shows a recall gap there, while each sex's own AUC can be perfect."""
    from models.recipes.voice_fairness import by_sex, operating_point

    # Women's angry clips score 0.8 and their calm ones 0.1; men's angry clips 0.9 and their calm ones 0.7.
    score = np.array([0.8] * 4 + [0.1] * 4 + [0.9] * 4 + [0.7] * 4)
    angry = np.array([True] * 4 + [False] * 4 + [True] * 4 + [False] * 4)
    sex = np.array(["female"] * 8 + ["male"] * 8)
    speaker = np.array(["f1"] * 8 + ["m1"] * 8)
    # Down to 0.8 every call is angry; at 0.7 the men's calm clips bring precision to 8 of 12.
    assert operating_point(score, angry) == pytest.approx(0.8)
    r = by_sex(score, angry, sex, speaker)
    assert r["female"]["auc"] == 1.0 and r["male"]["auc"] == 1.0
    assert r["female"]["recall_at_corpus_p80"] == 1.0 and r["male"]["recall_at_corpus_p80"] == 1.0
    assert r["gap_recall_at_corpus_p80"] == 0.0
    # Women's anger below the men's calm clips: the corpus's threshold rises to 0.9 (at 0.5, 8 of 12), so women's
    # anger is missed while each sex's own ranking stays perfect.
    score[:4] = 0.5
    r = by_sex(score, angry, sex, speaker)
    assert r["threshold_at_precision_0.80"] == pytest.approx(0.9)
    assert r["female"]["recall_at_corpus_p80"] == 0.0 and r["male"]["recall_at_corpus_p80"] == 1.0
    assert r["gap_recall_at_corpus_p80"] == -1.0 and r["female"]["auc"] == 1.0
    assert operating_point(np.array([0.9, 0.8]), np.array([False, False])) is None


def test_voices_are_found_online_and_scored_against_the_true_speakers():
    from models.recipes.voice_speaker_norm import bcubed, online_voices

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16))
    speaker = np.repeat([0, 1, 2], 20)
    emb = centres[speaker] + 0.05 * rng.standard_normal((60, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    order = rng.permutation(60)
    voices = online_voices(emb, order, 0.8)
    assert bcubed(voices, speaker[order]) == (1.0, 1.0)
    every_clip_alone = online_voices(emb, order, 1.01)
    precision, recall = bcubed(every_clip_alone, speaker[order])
    assert precision == 1.0 and recall == pytest.approx(1 / 20)


def test_a_voice_is_normalised_only_by_what_it_said_before():
    from models.recipes.voice_speaker_norm import PRIOR, running_zscore

    x = np.array([[10.0], [12.0], [100.0], [11.0]])
    out = np.empty_like(x)
    running_zscore(x, np.arange(4), np.array([0, 0, 1, 0]), np.zeros(1), np.ones(1), out)
    assert out[0, 0] == pytest.approx(10.0)                   # first clip: the prior alone (mean 0, sd 1)
    assert out[2, 0] == pytest.approx(100.0)                  # a new voice starts from the prior too
    n, total, sq = PRIOR + 2, 22.0, PRIOR + 244.0             # clip 3 sees clips 0 and 1 of its voice
    assert out[3, 0] == pytest.approx((11.0 - total / n) / np.sqrt(sq / n - (total / n) ** 2))


def test_the_angry_customer_comes_first_in_the_angry_first_order():
    from models.recipes.voice_speaker_norm import stream

    corpus = np.array(["a"] * 8)
    speaker = np.array(["s1"] * 4 + ["s2"] * 4)
    angry = np.array([0, 1, 0, 1, 0, 0, 1, 0], float)
    seq = stream(corpus, speaker, "angry first", angry)["a"]
    for s in ("s1", "s2"):
        mine = [c for c in seq if speaker[c] == s]
        labels = angry[mine]
        assert list(labels) == sorted(labels, reverse=True)
    assert sorted(seq) == list(range(8))


def _ct2_blob(arrays: dict[str, np.ndarray], spec: str = "WhisperSpec", version: int = 6) -> bytes:
    """A CTranslate2 model.bin as its writer lays it out: version, spec name, revision, then named arrays."""
    import struct

    def text(s: str) -> bytes:
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    codes = {np.dtype(np.float32): 0, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    out = struct.pack("<I", version) + text(spec) + struct.pack("<I", 3) + struct.pack("<I", len(arrays))
    for name, a in arrays.items():
        out += text(name) + struct.pack("<B", a.ndim) + b"".join(struct.pack("<I", d) for d in a.shape)
        out += struct.pack("<BI", codes[a.dtype], a.nbytes) + a.tobytes()
    return out


def test_ctranslate2_arrays_are_read_by_name_shape_and_type():
    from models.recipes.voice_whisper_tiny import read_ctranslate2

    rng = np.random.default_rng(0)
    arrays = {"encoder/conv1/weight": rng.standard_normal((4, 3, 3)).astype(np.float16),
              "encoder/num_heads": np.array(6, np.int16),
              "encoder/layer_norm/gamma": rng.standard_normal(5).astype(np.float32)}
    read = read_ctranslate2(_ct2_blob(arrays))
    assert list(read) == list(arrays)
    for name, a in arrays.items():
        assert read[name].dtype == a.dtype and read[name].shape == a.shape
        np.testing.assert_array_equal(read[name], a)


def test_a_ctranslate2_file_of_another_kind_is_refused():
    from models.recipes.voice_whisper_tiny import read_ctranslate2

    with pytest.raises(SystemExit, match="not a WhisperSpec"):
        read_ctranslate2(_ct2_blob({}, spec="TransformerSpec"))
    with pytest.raises(SystemExit, match="version 5"):
        read_ctranslate2(_ct2_blob({}, version=5))
