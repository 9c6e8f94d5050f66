"""Study: would a softer head help the alert? The encoder head's segment logits divided by a temperature, scored as
the alert reads them: the mean P(angry) of 5 segments of one speaker and emotion (a 5 s window).

    python models/recipes/voice_window_temperature.py     # seconds; needs voice_unit_shift.py's cached logits

The shipped head is overconfident per segment (logits of tens), so a window's mean P is close to the share of its
segments called angry. A temperature keeps each segment's rank and makes the window mean graded. Scored on the
validation speakers (shipped head) and, leaving each unheard corpus out, with the head refit without it
(``voice_unit_shift.py`` caches both): pooled window AUC angry against neutral, calm, happy and sad, and the share
of angry windows above the pooled 99th percentile of calm windows (a threshold one false window in a hundred lets
through), per corpus. Writes ``window_temperature.{md,json}`` in ``benchmarks/results/voice_anger_encoder/``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.recipes.voice_anger_encoder import NAME, UNHEARD  # noqa: E402
from models.recipes.voice_loco import NEMO_VAL, ased_val, segments  # noqa: E402
from models.recipes.voice_tone_cnn import VAL_SPEAKERS  # noqa: E402
from models.recipes.voice_unit_shift import study_parser  # noqa: E402

CALM = ("neutral", "calm", "happy", "sad")
WINDOW = 5        # segments: the alert's 5 s window at one segment per second of speech


def windows(z, rows, speaker, label, corpus, temperature, per=40, seed=0):
    """(corpus, angry, window mean P) for ``per`` random windows of each speaker x emotion (angry and calm ones)."""
    rng = np.random.default_rng(seed)
    out = []
    for s, lab in sorted(set(zip(speaker[rows], label[rows]))):
        if lab != "angry" and lab not in CALM:
            continue
        idx = np.flatnonzero(rows & (speaker == s) & (label == lab))
        if len(idx) < WINDOW:
            continue
        for _ in range(per):
            pick = rng.choice(idx, WINDOW, replace=False)
            p = 1 / (1 + np.exp(-np.clip(z[pick] / temperature, -60, 60)))
            out.append((corpus[pick[0]], lab == "angry", float(p.mean())))
    return out


def main() -> None:
    from appliance.tools.metrics import roc_auc

    parser = study_parser(__doc__)
    parser.add_argument("--temperatures", default="1,3,10,30")
    args = parser.parse_args()
    seed = json.loads((args.log / "results.json").read_text())["chosen"]["seed"]
    cache = args.work / f"unit_shift_logits_seed{seed}.npz"
    if not cache.is_file():
        raise SystemExit(f"{cache} is missing: run python models/recipes/voice_unit_shift.py first (it fits and "
                         "caches the heads)")
    logits = dict(np.load(cache))
    seg = segments(args.data, args.loco_work)
    clip = seg["clip"][seg["kind"] == 0]
    speaker, label, corpus = seg["speaker"][clip], seg["label"][clip], seg["corpus"][clip]
    val = np.isin(speaker, sorted(set(VAL_SPEAKERS) | NEMO_VAL | ased_val(seg["speaker"])))
    loco = logits["shipped"].copy()
    for held in UNHEARD:
        loco[corpus == held] = logits[held][corpus == held]
    report = {"window_segments": WINDOW, "splits": {}}
    lines = ["# A softer encoder head, scored as the alert reads it (issue 22)", "",
             "Written by `python models/recipes/voice_window_temperature.py` (method in its docstring). Windows of "
             f"{WINDOW} segments of one speaker and emotion, 40 per speaker and emotion. *Above calm p99*: share of "
             "angry windows above the pooled 99th percentile of calm windows.", "",
             "| split | temperature | pooled window AUC | angry windows above calm p99 | per corpus |",
             "|---|---|---|---|---|"]
    for split, z, rows in (("validation (shipped head)", logits["shipped"], val),
                           ("leave one corpus out (unheard)", loco, np.isin(corpus, UNHEARD))):
        report["splits"][split] = {}
        for t in (float(v) for v in args.temperatures.split(",")):
            w = windows(z, rows, speaker, label, corpus, t)
            c = np.array([x[0] for x in w])
            y = np.array([x[1] for x in w])
            s = np.array([x[2] for x in w])
            threshold = float(np.quantile(s[~y], 0.99))
            per = {k: round(float((s[y & (c == k)] > threshold).mean()), 3) for k in sorted(set(c[y]))}
            entry = {"auc": round(float(roc_auc(s, y)), 4),
                     "above_calm_p99": round(float((s[y] > threshold).mean()), 3),
                     "per_corpus": per, "windows": len(w)}
            report["splits"][split][f"{t:g}"] = entry
            lines.append(f"| {split} | {t:g} | {entry['auc']:.3f} | {entry['above_calm_p99']:.2f} | "
                         + ", ".join(f"{k} {v:.2f}" for k, v in per.items()) + " |")
            print(lines[-1], flush=True)
    (args.log / "window_temperature.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.log / "window_temperature.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.log / 'window_temperature.md'}")


if __name__ == "__main__":
    main()
