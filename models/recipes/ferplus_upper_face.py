"""Study (issue 24): a network that reads only the upper face, as a third view beside the shipped model's two.

    python models/recipes/ferplus_cnn.py --upper-face --train-only     # ~45 min on 2 cores: the candidate
    python models/recipes/ferplus_upper_face.py [--data ../shared/data]  # ~3 min: this report

The acted clips fail where the mouth speaks for the face: MEAD's angry actor bares his teeth and reads happy, FER+
calls a talking mouth happy or surprised. ``ferplus_cnn.py --upper-face`` trains the shipped architecture on the same
faces with every row from the mouth down (``LOWER_FACE``) grey inside the graph, so the mouth cannot enter its
reading. It would not replace the shipped model (the mouth carries happiness and surprise), but it could join the
window as a third view: the daemon already alternates the face as it is and mirrored, one pass per tick.

The rule, written before the candidate was read anywhere: keep it for the daemon (a third view on alternate ticks)
only if (1) on the selection split (FER2013 train faces never trained on), the mean of the shipped model's two
calibrated views and this network's calibrated view, in equal thirds, is within 1 point of the shipped two-view
reading (0.8434), and (2) on the clips of the one actor we validate on (MEAD M030), the face P(angry) of that mean on
his angry clip is at least 0.3 and above his disgust clip's. PublicTest and the CREMA-D actor (1001) are reported and
never used to choose. The network's calibration is fitted on the selection split, as the shipped model's is.
Writes ``benchmarks/results/face_training/upper_face/`` (README.md, upper_face.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SHIPPED_TWO_VIEWS = 0.8434       # ferplus_cnn_one_pass on the selection split, both views (one_pass/README.md)
RULE_POINTS = 0.01
VALIDATION_ACTOR = "mead/M030_"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "ferplus_cnn")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "face_training" / "upper_face")
    args = parser.parse_args()
    import torch

    from appliance.manifest import Calibration, load_manifest
    from appliance.perception.expression import ExpressionModel
    from appliance.runtime import RuntimeConfig
    from appliance.tools.video_eval import read_clip_index
    from models.recipes.faceapi_expression import clip_faces
    from models.recipes.ferplus_cnn import (LABELS, OFFSET, SCALE, build_model, fit_calibration, load_ferplus,
                                            selection_split)
    from models.recipes.ferplus_one_pass import readings, scores

    weights = args.work / "vgg32_seed1_upper.final.pt"
    if not weights.is_file():
        raise SystemExit(f"{weights} is missing: python models/recipes/ferplus_cnn.py --upper-face --train-only")
    net = build_model("vgg", 32, upper_face=True)
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    net.eval()

    def upper_log_p(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.tensor(images[:, None].astype(np.float32) * SCALE + OFFSET)
            return torch.log_softmax(torch.cat([net(x[i:i + 512]) for i in range(0, len(x), 512)]), 1).numpy()

    d = load_ferplus(args.data, args.work)
    _, sel = selection_split(d)
    splits = {"selection": sel, "public_test": np.flatnonzero(d["split"] == "public_test")}
    log_p = {split: upper_log_p(d["images"][rows]) for split, rows in splits.items()}
    calibration = fit_calibration(log_p["selection"], d["majority"][sel])
    scale, bias = (np.array(v) for v in Calibration(**calibration, fit_on="selection split").scale_bias(len(LABELS)))

    def calibrated(z: np.ndarray) -> np.ndarray:
        z = z * scale + bias
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    shipped = ExpressionModel(load_manifest(ROOT / "models" / "onnx" / "ferplus_cnn_one_pass"),
                              RuntimeConfig(providers=["cpu"], precision="fp32"))
    result: dict = {"command": "python models/recipes/ferplus_upper_face.py", "candidate": str(weights.name),
                    "calibration": calibration, "ferplus": {}, "clips": {}}
    for split, rows in splits.items():
        images, majority = d["images"][rows], d["majority"][rows]
        two = readings(shipped, images)
        upper = calibrated(log_p[split])
        result["ferplus"][split] = {"shipped_two_views": scores(two.mean(axis=0), majority, LABELS),
                                    "upper_face": scores(upper, majority, LABELS),
                                    "three_views": scores((two[0] + two[1] + upper) / 3, majority, LABELS)}
    folder = args.data / "video" / "emotion"
    for row in read_clip_index(folder):
        gray, _ = clip_faces(folder / row["path"])
        if not len(gray):
            continue
        two = readings(shipped, gray).mean(axis=1)           # (views, labels): each view's mean over the clip
        upper = calibrated(upper_log_p(gray)).mean(axis=0)
        three = (two[0] + two[1] + upper) / 3
        result["clips"][row["path"]] = {"label": row["label"], "faces": len(gray), **{
            name: {"top": LABELS[int(p.argmax())], "angry": round(float(p[LABELS.index("angry")]), 3)}
            for name, p in (("shipped", two.mean(axis=0)), ("upper_face", upper), ("three_views", three))}}
    sel_three = result["ferplus"]["selection"]["three_views"]["accuracy"]
    actor = {c["label"]: c["three_views"]["angry"] for p, c in result["clips"].items()
             if p.startswith(VALIDATION_ACTOR)}
    passes = (sel_three >= SHIPPED_TWO_VIEWS - RULE_POINTS, actor.get("angry", 0) >= 0.3
              and actor.get("angry", 0) > actor.get("disgust", 1))
    result["rule"] = {"selection_three_views": sel_three, "bound": round(SHIPPED_TWO_VIEWS - RULE_POINTS, 4),
                      "m030_angry": actor.get("angry"), "m030_disgust": actor.get("disgust"),
                      "verdict": "keep for the daemon" if all(passes) else "do not keep"}
    args.log.mkdir(parents=True, exist_ok=True)
    (args.log / "upper_face.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.log / "README.md").write_text(markdown(result))
    print(f"verdict: {result['rule']['verdict']} (selection, three views {sel_three:.4f}; M030 angry "
          f"{actor.get('angry')}, disgust {actor.get('disgust')}); wrote {args.log}/README.md")


def markdown(r: dict) -> str:
    rule = r["rule"]
    lines = ["# Issue 24: the upper face alone, as a third view", "",
             f"`python models/recipes/ferplus_cnn.py --upper-face --train-only`, then `{r['command']}` (the rule in "
             f"its docstring). Verdict: **{rule['verdict']}** (selection split, three views: {rule['selection_three_views']:.4f}"
             f" against a bound of {rule['bound']}; MEAD M030's angry clip P(angry) {rule['m030_angry']}, his disgust "
             f"clip {rule['m030_disgust']}; needed: angry >= 0.3 and above disgust).", "",
             "FER+ crowd majority (selection decides; PublicTest is reported):", "",
             "| split | reading | accuracy | angry recall | angry precision | ECE |", "|---|---|---|---|---|---|"]
    for split, readings in r["ferplus"].items():
        for name, s in readings.items():
            lines.append(f"| {split} | {name.replace('_', ' ')} | {s['accuracy']:.4f} | {s['angry_recall']:.3f} | "
                         f"{s['angry_precision']:.3f} | {s['ece']:.4f} |")
    lines += ["", "Labelled clips (every third frame's faces as the daemon cuts them; top label and P(angry) of the "
              "clip's mean):", "", "| clip | label | shipped (two views) | upper face alone | three views |",
              "|---|---|---|---|---|"]
    for path, c in r["clips"].items():
        lines.append(f"| {path} | {c['label']} | " + " | ".join(
            f"{c[k]['top']} {c[k]['angry']:.2f}" for k in ("shipped", "upper_face", "three_views")) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
