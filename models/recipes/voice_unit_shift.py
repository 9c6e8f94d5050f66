"""Study: candidate (c) of issue 22 at the output, the encoder head's logit shifted by the unit's own speech.

    python models/recipes/voice_unit_shift.py [--data ../shared/data]    # ~9 min on 2 cores (4 head fits, cached)

A kiosk hears one room and one language all day. The cheapest per-unit normalisation leaves the shipped head as it
is and moves its logit by how far the median logit of the unit's earlier speech lies from the training speakers'
median, shrunk to no shift by ``--prior`` pseudo-segments: z' = z - s (m_unit - m_train), s = n / (n + prior).
Here a corpus is a unit. Its clips play in a seeded random order and each clip is scored against the segments
heard before it (causal: nothing of a clip enters its own shift).

Scored two ways, per clip (mean P(angry) of its 2 s segments), as ``voice_anger_encoder.py`` scores:
- *leave one corpus out*: for each unheard corpus the head refit without it (MLP, the shipped seed), the unit's
  history that whole corpus;
- *validation*: the shipped head, each corpus's unit history only its validation speakers (speech the head never
  fitted on; a unit never hears its training data).
The figures that matter are those a threshold sees: pooled recall at precision 0.80 and recall / precision at 0.5,
which a per-corpus shift can move and a per-corpus AUC cannot. Writes ``unit_shift.{json,md}`` beside the
recipe's results in ``benchmarks/results/voice_anger_encoder/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.recipes.voice_anger_encoder import NAME, UNHEARD, design  # noqa: E402
from models.recipes.voice_loco import CORPORA, NEMO_VAL, ased_val, figures, segments  # noqa: E402
from models.recipes.voice_smart_turn import clip_weights, fit  # noqa: E402
from models.recipes.voice_tone_cnn import VAL_SPEAKERS  # noqa: E402


def head_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """The shipped head's logit (the input of its sigmoid): its P saturates in float32 long before its logit does."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(path)
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    model.graph.output.append(onnx.helper.make_tensor_value_info(sigmoid.input[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([sigmoid.input[0]], {"features": x})[0].reshape(-1).astype(np.float64)


def shifted(z: np.ndarray, units: list[np.ndarray], rows_of: list[np.ndarray], reference: float, prior: float,
            seed: int) -> np.ndarray:
    """``z`` with each unit's clips (``units``: clip ids) shifted by the causal, shrunk median of its earlier
    segments."""
    out = z.copy()
    if prior < 0:
        return out
    rng = np.random.default_rng(seed)
    for clips in units:
        heard: list[np.ndarray] = []
        for c in rng.permutation(clips):
            rows = rows_of[c]
            if heard:
                h = np.concatenate(heard)
                s = len(h) / (len(h) + prior)
                out[rows] = z[rows] - s * (np.median(h) - reference)
            heard.append(z[rows])
    return out


def study_parser(doc: str) -> argparse.ArgumentParser:
    """The paths every study of the encoder model reads: data, its results folder, its cache, voice_loco's cache."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / NAME)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / NAME)
    parser.add_argument("--loco-work", type=Path, default=ROOT / ".cache" / "voice_loco")
    return parser


@dataclass
class StudyInputs:
    """What the encoder studies read: per segment (``clip`` its clip), per clip (``*_c``), the design matrix ``x``
    and which segments the shipped head was fitted on (``train``: not a validation speaker's)."""
    seed: int
    seg: dict
    clip: np.ndarray
    corpus_c: np.ndarray
    speaker_c: np.ndarray
    angry_c: np.ndarray
    corpus: np.ndarray
    y: np.ndarray
    val_clip: np.ndarray
    train: np.ndarray
    x: np.ndarray

    @property
    def n_clips(self) -> int:
        return len(self.seg["label"])

    def clip_p(self, z: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Per clip, the mean P over its segments of the logits ``z`` (of the segments ``rows``; all by default);
        NaN for a clip without segments."""
        clip = self.clip if rows is None else self.clip[rows]
        p = 1 / (1 + np.exp(-np.clip(z, -60, 60)))
        count = np.bincount(self.clip, minlength=self.n_clips)
        return np.where(count > 0, np.bincount(clip, weights=p, minlength=self.n_clips) / np.maximum(count, 1),
                        np.nan)


def study_inputs(args) -> StudyInputs:
    seed = json.loads((args.log / "results.json").read_text())["chosen"]["seed"]
    seg = segments(args.data, args.loco_work)
    raw = seg["kind"] == 0
    emb = np.load(args.work / f"segments_{int(raw.sum())}.npy")
    clip = seg["clip"][raw]
    corpus_c, speaker_c, angry_c = seg["corpus"], seg["speaker"], seg["label"] == "angry"
    val_clip = np.isin(speaker_c, sorted(set(VAL_SPEAKERS) | NEMO_VAL | ased_val(speaker_c)))
    train = ~val_clip[clip]
    x = design(seg, emb, np.nanmedian(seg["x"][raw][train], axis=0))
    return StudyInputs(seed, seg, clip, corpus_c, speaker_c, angry_c, corpus_c[clip], angry_c[clip].astype(float),
                       val_clip, train, x)


def figure_cells(fig: dict) -> str:
    """One table row's cells: each unheard corpus's AUC / recall / precision at 0.5, then the pooled figures."""
    return " | ".join(f"{fig[c]['auc']:.3f} / {fig[c]['recall_at_0.5']:.2f} / {fig[c]['precision_at_0.5'] or 0:.2f}"
                      for c in UNHEARD) + f" | {fig['pooled']['auc']:.3f} | " \
        f"{fig['pooled']['recall_at_precision_0.80']:.3f} |"


def main() -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--priors", default="20,200", help="pseudo-segments of no shift, comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="clip orders averaged")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    d = study_inputs(args)
    seed, clip, x, train, val_clip = d.seed, d.clip, d.x, d.train, d.val_clip
    corpus_c, angry_c, corpus, y = d.corpus_c, d.angry_c, d.corpus, d.y

    cache = args.work / f"unit_shift_logits_seed{seed}.npz"
    if cache.is_file():
        logits = dict(np.load(cache))
    else:
        logits, started = {"shipped": head_logits(ROOT / "models" / "onnx" / NAME / "fp32.onnx", x)}, time.time()
        for held in UNHEARD:
            rows = train & (corpus != held)
            mu, sd, net = fit(x[rows], y[rows], clip_weights(corpus[rows], y[rows]), "mlp", seed, args.device)
            with torch.no_grad():
                logits[held] = net(torch.tensor((x - mu) / sd, dtype=torch.float32)).squeeze(1).numpy()
            print(f"  head without {held}: {time.time() - started:.0f} s", flush=True)
        np.savez(cache, **logits)
    loco = logits["shipped"].copy()
    for held in UNHEARD:
        loco[corpus == held] = logits[held][corpus == held]
    reference = float(np.median(logits["shipped"][train]))
    order = np.argsort(clip, kind="stable")
    rows_of = np.split(order, np.searchsorted(clip[order], np.arange(1, d.n_clips)))
    clip_p = d.clip_p

    unheard = np.isin(corpus_c, UNHEARD)
    variants = {"none": -1.0} | {f"prior {p}": float(p) for p in args.priors.split(",")}
    report = {"reference_median_logit": round(reference, 3), "head_seed": seed, "clip_orders": args.seeds,
              "variants": {}}
    for name, prior in variants.items():
        runs = []
        for s in range(args.seeds if prior >= 0 else 1):
            lo = clip_p(shifted(loco, [np.flatnonzero(corpus_c == c) for c in UNHEARD], rows_of, reference, prior, s))
            va = clip_p(shifted(logits["shipped"], [np.flatnonzero((corpus_c == c) & val_clip) for c in CORPORA],
                                rows_of, reference, prior, s))
            runs.append({"loco": {c: figures(lo[corpus_c == c], angry_c[corpus_c == c]) for c in UNHEARD}
                         | {"pooled": figures(lo[unheard], angry_c[unheard])},
                         "validation": {c: figures(va[val_clip & (corpus_c == c)], angry_c[val_clip & (corpus_c == c)])
                                        for c in CORPORA if (val_clip & (corpus_c == c)).any()}
                         | {"pooled": figures(va[val_clip], angry_c[val_clip])}})
        mean = {split: {c: {k: (round(float(np.mean([r[split][c][k] or 0 for r in runs])), 4)
                                if runs[0][split][c][k] is not None else None) for k in runs[0][split][c]}
                        for c in runs[0][split]} for split in ("loco", "validation")}
        report["variants"][name] = mean
        lp, vp = mean["loco"]["pooled"], mean["validation"]["pooled"]
        print(f"{name:10s} LOCO pooled AUC {lp['auc']:.3f} recall@P0.80 {lp['recall_at_precision_0.80']:.3f} | "
              f"validation pooled AUC {vp['auc']:.3f} recall@P0.80 {vp['recall_at_precision_0.80']:.3f}", flush=True)
    (args.log / "unit_shift.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = ["# The encoder head's logit shifted by the unit's own speech (issue 22, candidate (c) at the output)", "",
             "Written by `python models/recipes/voice_unit_shift.py` (method in its docstring). Per clip; a corpus is "
             f"a unit; mean over {args.seeds} clip orders. Reference: the training speakers' median logit "
             f"{reference:.1f}. *Leave one corpus out*: the head refit without the corpus, the unit's history all of "
             "it. *Validation*: the shipped head, the unit's history only its validation speakers.", "",
             "| shift | split | " + " | ".join(f"{c} AUC / recall@0.5 / precision@0.5" for c in UNHEARD)
             + " | pooled AUC | pooled recall at P 0.80 |", "|---" * (len(UNHEARD) + 4) + "|"]
    for name, mean in report["variants"].items():
        for split in ("loco", "validation"):
            m = mean[split]
            lines.append(f"| {name} | {split} | " + figure_cells(m))
    (args.log / "unit_shift.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.log / 'unit_shift.md'}")


if __name__ == "__main__":
    main()
