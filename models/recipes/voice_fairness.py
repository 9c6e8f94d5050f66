"""Study: is the voice's anger caught as often for women as for men? (issue 22's fairness target, per corpus)

    python models/recipes/voice_fairness.py [--data ../shared/data]     # ~1 min: reads the cached member logits

The sessions reports split alerts by corpus and sex, but with one to seven angry minutes a cell they cannot show a
10-point gap. Here every clip counts: each unheard corpus scored by the head fitted without it (leave one corpus
out: all of nEMO's 9 actors and ASED's 70 speakers), and the validation speakers of all six scored by the shipped
fit, for the clean head (2.0.0, ``voice_frame_head.py``'s cache) and the head trained in rooms too (2.1.0,
``voice_room_train.py``'s cache; both must have run). A clip's score is the mean P(angry) of its 2 s segments, as
``appliance eval voice`` scores it. Per corpus and sex: angry-vs-rest AUC within that sex, recall at 0.5, and recall
at *the corpus's own* operating point (the lowest threshold at which the whole corpus, both sexes, reaches precision
0.80): the same threshold for both sexes, so a gap there is the model's, not the threshold's. Sex: the index's
``sex`` column (nEMO, ASED), RAVDESS's odd actors male, EMOVO's names (``appliance.tools.session_eval.speaker_sex``);
TurEV lists none. Nothing is fitted or chosen here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.recipes.voice_anger_encoder import UNHEARD  # noqa: E402
from models.recipes.voice_loco import CORPORA, figures, index_rows  # noqa: E402
from models.recipes.voice_unit_shift import study_inputs, study_parser  # noqa: E402

SEXES = ("female", "male")


def operating_point(score: np.ndarray, angry: np.ndarray, precision: float = 0.80) -> float | None:
    """The lowest threshold whose calls (score >= it) reach ``precision``; None when none does. Only the last of
    tied scores is a cut: a threshold calls all of them or none."""
    order = np.argsort(-score)
    ranked = score[order]
    hits = np.cumsum(angry[order])
    cut = np.r_[ranked[1:] != ranked[:-1], True]
    good = np.flatnonzero(cut & (hits / np.arange(1, len(order) + 1) >= precision))
    return float(ranked[good.max()]) if len(good) else None


def by_sex(score: np.ndarray, angry: np.ndarray, sex: np.ndarray, speaker: np.ndarray) -> dict:
    """One corpus's clips: per sex, AUC, recall at 0.5 and at the corpus's own precision-0.80 threshold."""
    ok = ~np.isnan(score)
    score, angry, sex, speaker = score[ok], angry[ok], sex[ok], speaker[ok]
    t = operating_point(score, angry)
    out = {"threshold_at_precision_0.80": None if t is None else round(t, 4)}
    for s in SEXES:
        mine = sex == s
        if not (mine & angry).any():
            continue
        f = figures(score[mine], angry[mine])
        out[s] = {"speakers": int(len(set(speaker[mine]))), "clips": f["n"], "angry": f["angry"], "auc": f["auc"],
                  "recall_at_0.5": f["recall_at_0.5"],
                  "recall_at_corpus_p80": None if t is None else round(float((score[mine & angry] >= t).mean()), 4)}
    if all(s in out for s in SEXES):
        for key in ("recall_at_0.5", "recall_at_corpus_p80"):
            if out["female"][key] is not None and out["male"][key] is not None:
                out[f"gap_{key}"] = round(out["female"][key] - out["male"][key], 4)
    return out


def head_logits(cache: Path, seed: int, held: str, n: int) -> np.ndarray:
    """The two members' mean logit per clean segment (the first ``n`` rows: a room fit's cache holds its copies
    after them)."""
    return (np.load(cache / f"mlp_seed{seed}_{held}.npy")[:n] + np.load(cache / f"frames_seed{seed}_{held}.npy")[:n]) / 2


def main() -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--room-work", type=Path, default=ROOT / ".cache" / "voice_room_train")
    args = parser.parse_args()
    from appliance.tools.session_eval import speaker_sex
    from models.recipes.voice_frame_head import CACHE

    d = study_inputs(args)
    rows = index_rows(args.data)
    sex = np.array([speaker_sex(r["corpus"], r["speaker"], r.get("sex")) for r in rows])
    n = len(d.clip)
    heads = {"2.0.0 (clean speech)": CACHE, "2.1.0 (trained in rooms too)": args.room_work / "fits"}
    results = {}
    for name, cache in heads.items():
        loco, validation = {}, {}
        for held in UNHEARD:
            mine = d.corpus_c == held
            p = d.clip_p(head_logits(cache, d.seed, held, n))
            loco[held] = by_sex(p[mine], d.angry_c[mine], sex[mine], d.speaker_c[mine])
        p = d.clip_p(head_logits(cache, d.seed, "all", n))
        for c in CORPORA:
            mine = d.val_clip & (d.corpus_c == c)
            if mine.any():
                validation[c] = by_sex(p[mine], d.angry_c[mine], sex[mine], d.speaker_c[mine])
        results[name] = {"loco": loco, "validation": validation}
    report = {"command": "python models/recipes/voice_fairness.py", "seed": d.seed, "results": results}
    args.log.mkdir(parents=True, exist_ok=True)
    (args.log / "fairness.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.log / "fairness.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = ["# Anger caught for women and for men, per corpus (issue 22)", "",
             f"Written by `{report['command']}` (method in its docstring). Each cell: female / male. *loco*: the "
             "corpus scored by the head fitted without it (every speaker of it); *validation*: the validation "
             "speakers scored by the shipped fit. Recall at the corpus's P 0.80: the same threshold for both sexes "
             "(the lowest at which the whole corpus reaches precision 0.80). Target: within 10 points.", "",
             "| head | split | corpus | speakers | angry clips | AUC | recall at 0.5 | recall at the corpus's P 0.80 | "
             "gap (f - m) at P 0.80 |", "|---" * 9 + "|"]
    for name, r in report["results"].items():
        for split in ("loco", "validation"):
            for corpus, c in r[split].items():
                if not all(s in c for s in SEXES):
                    continue
                f, m = c["female"], c["male"]

                def pair(key: str, digits: int = 2) -> str:
                    return " / ".join("-" if x[key] is None else f"{x[key]:.{digits}f}" for x in (f, m))

                gap = c.get("gap_recall_at_corpus_p80")
                lines.append(f"| {name} | {split} | {corpus} | {f['speakers']} / {m['speakers']} | {f['angry']} / "
                             f"{m['angry']} | {pair('auc', 3)} | {pair('recall_at_0.5')} | "
                             f"{pair('recall_at_corpus_p80')} | {'-' if gap is None else f'{gap * 100:+.0f}'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
