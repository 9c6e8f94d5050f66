"""Recipe: train the vocal-tone CNN on RAVDESS + TESS, export ONNX FP32 and static INT8 QDQ, write the manifest.

    python models/recipes/voice_tone_cnn.py [--data ../shared/data]     # the shipped file: ~70 min on 2 cores
    python models/recipes/voice_tone_cnn.py --seeds 11 --train-only --threads 1 --log L   # one member, in parallel

Split (speaker-independent, never mixed): train = RAVDESS actors 01-16 + TESS (both speakers); validation =
RAVDESS actors 17-20 (240 clips). No epoch is picked on validation: each member is the average of its last
quarter's weights (SWA), and the shipped file averages the probabilities of three members (seeds 7, 11, 13).

Features come from ``appliance.perception.features.log_mel`` (the daemon's own function): 64 log-mel bands,
10 ms hop, 2 s segments, mean-normalised so loudness cannot be learned. Training augments with random crops,
speed perturbation (+-10%, tempo and pitch), gain (+-20 dB) before additive noise (SNR 10-40 dB), and
SpecAugment masks; sampling is label-balanced within
each corpus, RAVDESS 65% / TESS 35%. Needs ``pip install torch==2.13.0`` (CPU build, on disk here); never needed by the daemon.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from appliance.perception.features import DEFAULT, clip_segments, fit_length, log_mel  # noqa: E402
from models.recipes.recipe_tools import quantize_qdq  # noqa: E402

LABELS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
SR = DEFAULT.sample_rate
SEGMENT = 2 * SR
EVAL_HOP = SR // 2
VAL_SPEAKERS = {f"ravdess-{i:02d}" for i in range(17, 21)}
WEIGHTS_LICENCE = """voice_tone_cnn weights: trained by models/recipes/voice_tone_cnn.py of this repository.

The training data carry non-commercial licences, and so may these weights:
- RAVDESS (Livingstone & Russo 2018), CC BY-NC-SA 4.0
- TESS (Toronto Emotional Speech Set), CC BY-NC-ND 4.0
Use them for evaluation and research; retrain on licensed recordings before commercial deployment.
"""


def load_index(data: Path):
    import soundfile as sf

    train, val = [], []
    with open(data / "speech" / "index.csv") as f:
        for row in csv.DictReader(f):
            audio, sr = sf.read(data / "speech" / row["path"], dtype="float32")
            if sr != SR:
                raise SystemExit(f"{row['path']}: {sr} Hz, expected {SR}")
            item = (audio, LABELS.index(row["label"]), row["corpus"], row["speaker"], row["path"])
            (val if row["speaker"] in VAL_SPEAKERS else train).append(item)
    assert not {i[3] for i in train} & {i[3] for i in val}, "a speaker is in both splits"
    return train, val


def build_model():
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))

    class ToneCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(block(1, 32), block(32, 64), block(64, 96), block(96, 128))
            self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128 * 2, len(LABELS)))

        def forward(self, x):
            h = self.features(x)                       # (N, 128, 4, 12)
            h = h.mean(dim=2)                          # pool frequency
            h = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)   # mean + max over time
            return self.head(h)

    return ToneCNN()


class Augment:
    def __init__(self, rng: np.random.Generator, speed: float = 0.0):
        self.rng = rng
        self.speed = speed

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        rng = self.rng
        if self.speed:
            # Speed perturbation (tempo and pitch together, as in Kaldi's 0.9/1.0/1.1 recipe): 16 training
            # voices are few, and a new voice is mostly a different pitch and rate.
            factor = rng.uniform(1 - self.speed, 1 + self.speed)
            audio = np.interp(np.arange(0, len(audio) - 1, factor), np.arange(len(audio)), audio).astype(np.float32)
        offset = int(rng.integers(0, max(1, len(audio) - SEGMENT + 1)))
        x = fit_length(audio, SEGMENT, offset).astype(np.float32)
        x = x * np.float32(10 ** (rng.uniform(-20, 20) / 20))
        if rng.random() < 0.6:
            power = float(np.mean(x ** 2)) + 1e-12
            snr = rng.uniform(10, 40)
            noise = rng.standard_normal(len(x)).astype(np.float32)
            if rng.random() < 0.5:   # pinkish: integrate white noise a little
                noise = np.convolve(noise, np.ones(8, np.float32) / 8, mode="same")
            noise *= np.sqrt(power / (10 ** (snr / 10)) / (np.mean(noise ** 2) + 1e-12))
            x = x + noise
        feats = log_mel(x)
        for _ in range(2):
            w = int(rng.integers(0, 9))
            f0 = int(rng.integers(0, feats.shape[0] - w + 1))
            feats[f0:f0 + w] = 0.0
            w = int(rng.integers(0, 21))
            t0 = int(rng.integers(0, feats.shape[1] - w + 1))
            feats[:, t0:t0 + w] = 0.0
        return feats


def clip_features(audio: np.ndarray) -> np.ndarray:
    return np.stack([log_mel(s) for s in clip_segments(audio, SEGMENT, EVAL_HOP)])


def evaluate(model, clips, probabilities: bool = False) -> tuple[float, float, np.ndarray]:
    import torch

    model.eval()
    preds = []
    with torch.no_grad():
        for feats in clips["features"]:
            out = model(torch.from_numpy(feats[:, None]))
            probs = (out if probabilities else torch.softmax(out, dim=1)).mean(dim=0)
            preds.append(int(probs.argmax()))
    y = np.array(clips["labels"])
    p = np.array(preds)
    acc = float((y == p).mean())
    angry = LABELS.index("angry")
    recall = float((p[y == angry] == angry).mean())
    return acc, recall, p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "onnx" / "voice_tone_cnn")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--angry-weight", type=float, default=2.0, help="loss weight of the angry class")
    parser.add_argument("--speed", type=float, default=0.1,
                        help="speed perturbation: resample each training clip by 1 +- this (0 = off)")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "voice_training")
    parser.add_argument("--finalize-only", action="store_true",
                        help="skip training: evaluate the exported files and (re)write the manifest")
    parser.add_argument("--seeds", type=str, default="7,11,13",
                        help="comma-separated seeds: one model per seed, shipped as one ONNX file that averages "
                             "their probabilities")
    parser.add_argument("--train-only", action="store_true",
                        help="train and save each seed's weights (<log>/seed<N>.pt); no export")
    parser.add_argument("--reuse", action="store_true", help="load a seed's weights from <log>/seed<N>.pt if there")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.seed_list = [int(x) for x in args.seeds.split(",")]
    if args.finalize_only:
        finalize(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.log.mkdir(parents=True, exist_ok=True)
    log_file = open(args.log / "training_log.txt", "a" if args.reuse else "w")

    def say(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    t0 = time.time()
    train, val = load_index(args.data)
    say(f"train {len(train)} clips ({len({i[3] for i in train})} speakers), validation {len(val)} clips "
        f"(speakers {sorted(VAL_SPEAKERS)}); loaded in {time.time() - t0:.0f} s")
    val_clips = {"features": [clip_features(i[0]) for i in val], "labels": [i[1] for i in val]}
    history_path = args.log / "history.json"
    histories = json.loads(history_path.read_text()) if args.reuse and history_path.exists() else {}
    if isinstance(histories, list):      # written by a single-seed version of this recipe
        histories = {}
    models = []
    for seed in args.seed_list:
        state = args.log / f"seed{seed}.pt"
        model = build_model()
        if args.reuse and state.exists():
            model.load_state_dict(torch.load(state))
            model.eval()
            say(f"seed {seed}: weights from {state}")
        else:
            model, history = train_one(args, seed, train, val_clips, say)
            torch.save(model.state_dict(), state)
            histories[str(seed)] = history
            history_path.write_text(json.dumps(histories, indent=1) + "\n")
            plot_history(history, args.log / f"training_curve_seed{seed}.png")
        models.append(model)
    if args.train_only:
        return
    rng = np.random.default_rng(args.seed_list[0])
    model = models[0] if len(models) == 1 else Ensemble(models)
    if len(models) > 1:
        acc, angry_recall, _ = evaluate(model, val_clips, probabilities=True)
        say(f"ensemble of seeds {args.seed_list} (mean of their probabilities): val acc {acc:.3f}  angry recall "
            f"{angry_recall:.3f}")
    export(model, args.out / "fp32.onnx", probabilities=len(models) > 1)
    augment = Augment(rng)
    calib = [augment(train[int(i)][0])[None, None] for i in rng.choice(len(train), 400, replace=False)]
    quantize(args.out / "fp32.onnx", args.out / "int8.onnx", calib)
    say(f"exported {args.out}/fp32.onnx and int8.onnx in {time.time() - t0:.0f} s total")
    log_file.close()
    finalize(args)


def train_one(args, seed: int, train, val_clips, say):
    """One model from one seed: OneCycle, SWA over the last quarter, BatchNorm re-estimated. Returns it + history."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # Balanced over labels within each corpus, and RAVDESS (16 speakers) drawn more often than TESS (2 speakers,
    # 1,399 clips): speaker variety is what generalises to new voices.
    corpus_share = {"ravdess": 0.65, "tess": 0.35}
    groups: dict[tuple, int] = {}
    for item in train:
        groups[(item[2], item[1])] = groups.get((item[2], item[1]), 0) + 1
    labels_in = {c: len({lab for (cc, lab) in groups if cc == c}) for c in corpus_share}
    weights = np.array([corpus_share[i[2]] / labels_in[i[2]] / groups[(i[2], i[1])] for i in train])
    weights /= weights.sum()

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {n_params} parameters; {args.epochs} epochs, batch {args.batch}, seed {seed}, "
        f"angry loss weight {args.angry_weight:g}, speed perturbation +-{args.speed:g}")
    steps_per_epoch = len(train) // args.batch
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=args.epochs * steps_per_epoch,
                                                   pct_start=0.15)
    # Anger is what the product exists to notice: a missed angry customer costs more than a false hint (alerts
    # are filtered again by hysteresis and a cool-down), so its errors weigh double. Decided before training, not
    # tuned on validation.
    class_weight = torch.ones(len(LABELS))
    class_weight[LABELS.index("angry")] = args.angry_weight
    loss_fn = nn.CrossEntropyLoss(weight=class_weight, label_smoothing=0.1)
    augment = Augment(rng, args.speed)
    history = []
    # Weight averaging over the last quarter of training (SWA): single epochs swing by 10+ points on 240
    # validation clips, the average does not, and no epoch has to be picked by looking at validation.
    swa_from = args.epochs - args.epochs // 4 + 1
    swa = torch.optim.swa_utils.AveragedModel(model)
    for epoch in range(1, args.epochs + 1):
        model.train()
        started, total = time.time(), 0.0
        for _ in range(steps_per_epoch):
            idx = rng.choice(len(train), size=args.batch, p=weights)
            x = torch.from_numpy(np.stack([augment(train[i][0]) for i in idx])[:, None])
            y = torch.tensor([train[i][1] for i in idx])
            optimiser.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
        if epoch >= swa_from:
            swa.update_parameters(model)
        acc, angry_recall, _ = evaluate(model, val_clips)
        history.append({"epoch": epoch, "train_loss": round(total / steps_per_epoch, 4), "val_accuracy": round(acc, 4),
                        "val_angry_recall": round(angry_recall, 4)})
        say(f"seed {seed} epoch {epoch:3d}/{args.epochs}  loss {total / steps_per_epoch:.3f}  val acc {acc:.3f}  "
            f"angry recall {angry_recall:.3f}  ({time.time() - started:.0f} s)")
    # BatchNorm statistics for the averaged weights, from clean (unaugmented) training crops: the eval-time input.
    model = swa.module
    recalibrate_batchnorm(model, train, rng)
    acc, angry_recall, _ = evaluate(model, val_clips)
    say(f"seed {seed} final model (weights averaged over epochs {swa_from}-{args.epochs}, BatchNorm re-estimated on "
        f"clean training audio): val acc {acc:.3f}  angry recall {angry_recall:.3f}")
    history.append({"epoch": "final", "val_accuracy": round(acc, 4), "val_angry_recall": round(angry_recall, 4)})
    last = history[-6:-1]
    say(f"seed {seed} last 5 epochs: val acc " + ", ".join(f"{h['val_accuracy']:.3f}" for h in last) +
        "; angry recall " + ", ".join(f"{h['val_angry_recall']:.3f}" for h in last))
    return model, history


def build_ensemble_class():
    import torch

    class Ensemble(torch.nn.Module):
        """Several independently trained models; the output is the mean of their probabilities."""

        def __init__(self, models):
            super().__init__()
            self.members = torch.nn.ModuleList(models)

        def forward(self, x):
            return torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(dim=0)

    return Ensemble


def Ensemble(models):  # noqa: N802 - a factory that reads like the class it builds (torch is imported lazily)
    return build_ensemble_class()(models)


def finalize(args) -> None:
    """Manifest with sha256 and the validation figures of both files, measured by the daemon's own code."""
    from appliance.config import RuntimeConfig
    from appliance.evaluation import confusion_png, evaluate_voice, stderr_progress
    from appliance.manifest import Accuracy, ModelManifest, Provenance, Variant, load_manifest, sha256_of
    from appliance.manifest import write_manifest
    from appliance.perception.voice import VoiceToneModel

    history = args.log / "history.json"
    histories = json.loads(history.read_text()) if history.exists() else {}
    finals = {seed: next((h for h in histories.get(str(seed), []) if h["epoch"] == "final"), None)
              for seed in args.seed_list}
    members = "; ".join(f"seed {seed}: accuracy {h['val_accuracy']:.3f}, angry recall {h['val_angry_recall']:.3f}"
                        for seed, h in finals.items() if h)
    variants = [Variant(precision=p, file=f"{p}.onnx", sha256=sha256_of(args.out / f"{p}.onnx"),
                        bytes=(args.out / f"{p}.onnx").stat().st_size,
                        quantization=None if p == "fp32" else {
                            "format": "QDQ", "weights": "int8 per-channel symmetric",
                            "activations": "int8 symmetric", "excluded": "final Softmax",
                            "calibration": "400 augmented 2 s training segments, MinMax"})
                for p in ("fp32", "int8")]
    manifest = ModelManifest(
        name="voice_tone_cnn", version="1.0.0", task="speech-emotion", format="onnx", labels=LABELS,
        input_name="input", output_name="probabilities", variants=variants,
        input_shape=[1, DEFAULT.n_mels, DEFAULT.frames(SEGMENT)],
        provider_precision={"tensorrt": "int8", "cuda": "fp32", "cpu": "fp32"},
        provider_precision_source="benchmarks/results/runtime_precisions.md",
        provenance=Provenance(
            source="trained here from scratch on RAVDESS actors 01-16 + TESS (../shared/data/speech): "
                   f"{len(args.seed_list)} model(s), seeds {args.seed_list}, each {args.epochs} epochs, angry loss "
                   f"weight {args.angry_weight:g}, speed perturbation +-{args.speed:g}, weights averaged over the "
                   "last quarter, BatchNorm re-estimated on clean training audio"
                   + ("; the file averages their probabilities" if len(args.seed_list) > 1 else "")
                   + (f". Members on validation: {members}" if members else ""),
            licence="weights: trained on CC BY-NC-SA (RAVDESS) and CC BY-NC-ND (TESS) data: non-commercial "
                    "research use until retrained on licensed data",
            recipe="models/recipes/voice_tone_cnn.py",
            notes="input (N, 1, 64, 197) log-mel of a 2 s, 16 kHz segment from appliance.perception.features.log_mel "
                  "(mean-normalised); output softmax probabilities"),
    )
    write_manifest(manifest, args.out)
    (args.out / "LICENSE").write_text(WEIGHTS_LICENCE)
    manifest = load_manifest(args.out)
    for variant in manifest.variants:
        model = VoiceToneModel(manifest, RuntimeConfig(providers=["cpu"], precision=variant.precision))
        report = evaluate_voice(args.data / "speech", model, where={"speaker": VAL_SPEAKERS},
                                progress=stderr_progress(f"  {variant.precision}"))
        angry = report.per_class["angry"]
        print(f"  {variant.precision}: accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}  angry recall "
              f"{angry['recall']:.3f} precision {angry['precision']:.3f}", flush=True)
        variant.accuracy = Accuracy(
            dataset="RAVDESS actors 17-20 (speaker-independent validation)", split="validation", n=report.n,
            accuracy=report.accuracy, macro_f1=report.macro_f1,
            command="appliance eval voice ../shared/data/speech --where speaker=ravdess-17,ravdess-18,ravdess-19,"
                    f"ravdess-20 --precision {variant.precision}")
        confusion_png(report, args.log / f"confusion_{variant.precision}.png")
        (args.log / f"eval_{variant.precision}.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    # precision="auto" on the CPU: the faster file, if INT8 keeps accuracy within 2 points (measured, not assumed:
    # this larger CNN gains from INT8 on the CPU, unlike the tiny face model).
    speed = {}
    for variant in manifest.variants:
        model = VoiceToneModel(manifest, RuntimeConfig(providers=["cpu"], precision=variant.precision))
        x = model.features(np.zeros((1, SEGMENT), np.float32) + 0.01)
        for _ in range(20):
            model.classify(x)
        t = time.perf_counter()
        for _ in range(200):
            model.classify(x)
        speed[variant.precision] = (time.perf_counter() - t) / 200 * 1000
    fp32, int8 = manifest.variant("fp32"), manifest.variant("int8")
    close = abs(int8.accuracy.accuracy - fp32.accuracy.accuracy) <= 0.02
    manifest.provider_precision["cpu"] = "int8" if speed["int8"] < speed["fp32"] and close else "fp32"
    manifest.provider_precision_source = (
        f"CPU timed by this recipe at batch 1: fp32 {speed['fp32']:.2f} ms, int8 {speed['int8']:.2f} ms; INT8 "
        f"accuracy {'within' if close else 'NOT within'} 2 points; TensorRT INT8 as for every QDQ model here")
    print(f"  cpu: fp32 {speed['fp32']:.2f} ms, int8 {speed['int8']:.2f} ms -> {manifest.provider_precision['cpu']}")
    write_manifest(manifest, args.out)
    print(f"wrote {args.out}/manifest.json")


def recalibrate_batchnorm(model, train, rng, batches: int = 60, batch: int = 32) -> None:
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None      # cumulative average over all recalibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            idx = rng.choice(len(train), size=batch)
            feats = []
            for i in idx:
                audio = train[i][0]
                offset = int(rng.integers(0, max(1, len(audio) - SEGMENT + 1)))
                feats.append(log_mel(fit_length(audio, SEGMENT, offset)))
            model(torch.from_numpy(np.stack(feats)[:, None]))
    model.eval()


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = [h for h in history if h["epoch"] == "final"]
    history = [h for h in history if h["epoch"] != "final"]
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(epochs, [h["train_loss"] for h in history])
    ax[0].set(title="training loss", xlabel="epoch")
    ax[1].plot(epochs, [h["val_accuracy"] for h in history], label="accuracy (8 classes)")
    ax[1].plot(epochs, [h["val_angry_recall"] for h in history], label="angry recall")
    for h in final:
        ax[1].scatter([epochs[-1] + 1] * 2, [h["val_accuracy"], h["val_angry_recall"]], c=["C0", "C1"], marker="*",
                      s=120, zorder=3, label="final (averaged) model")
    ax[1].axhline(0.55, ls=":", c="gray")
    ax[1].axhline(0.75, ls="--", c="gray")
    ax[1].set(title="validation: RAVDESS actors 17-20", xlabel="epoch", ylim=(0, 1))
    ax[1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def export(model, path: Path, probabilities: bool = False) -> None:
    """ONNX with probabilities out: a single model gets a Softmax appended; an ensemble already averages them."""
    import torch

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.softmax(self.inner(x), dim=1)

    model.eval()
    dummy = torch.zeros(1, 1, DEFAULT.n_mels, DEFAULT.frames(SEGMENT))
    torch.onnx.export(model if probabilities else WithSoftmax(model), dummy, str(path), input_names=["input"], output_names=["probabilities"],
                      dynamic_axes={"input": {0: "N"}, "probabilities": {0: "N"}}, opset_version=17, dynamo=False)


def quantize(fp32: Path, int8: Path, calib: list[np.ndarray]) -> None:
    quantize_qdq(fp32, int8, [{"input": c.astype(np.float32)} for c in calib])


if __name__ == "__main__":
    main()
