"""Recipe: train the face-expression model on FER+ crowd votes, calibrate it, export ONNX FP32 + INT8 QDQ, manifest.

    python models/recipes/ferplus_cnn.py [--data ../shared/data]            # the shipped model (see the log)
    python models/recipes/ferplus_cnn.py --arch resnet --train-only         # the architecture it was compared with
    python models/recipes/ferplus_cnn.py --seed 2 --train-only              # a second seed, then:
    python models/recipes/ferplus_cnn.py --ensemble 2                       # the shipped file: seed 1's graph chosen
                                                                            # among seed-1/seeds-1+2, +-mirror
    python models/recipes/ferplus_cnn.py --device cuda --epochs 60 ...      # the same recipe on a lent GPU

Labels and targets: FER+ gives each FER2013 face 10 crowd votes over neutral, happiness, surprise, sadness, anger,
disgust, fear, contempt, unknown and NF (not a face). The target is the vote distribution over our 7 labels.
Contempt has no label in the product, and unknown/NF say nothing about an expression, so those votes are dropped
and the rest renormalised; a face is kept only when at least half of its 10 voters chose one of our 7 labels
(that drops NF faces and those the crowd read mainly as contempt or could not read).

Splits, never mixed: FER2013 train minus a seeded 10% "selection" split (stratified by crowd majority, and
without any face FER+ marks as a duplicate, so no copy of a selection face is trained on). Training curves,
the architecture comparison, the final weights (last epoch or EMA), the calibration (temperature or vector scaling,
whichever has the lower held-out NLL in two folds of the selection split) and the INT8 calibration use
train/selection only. FER2013 PublicTest is the report and is read only by ``finalize`` (through the daemon's
``evaluate_ferplus``/``evaluate_faces``) after the model is fixed.

Geometry: 48x48 gray, FER2013's own size. The runtime crop (``crop_margin``/``crop_shift`` in the manifest) and
the training jitter come from ``benchmarks/crop_geometry.py``: BlazeFace's box covers a median 0.83 of a FER2013
face crop (margin 0.10 per side) with its centre 0.09 crop-heights below the crop's; FER2013's own framing varies
around that by a log-side std of 0.17, and a live box moves by ~1% of its side per frame (the demo's moving face:
4.5%). Training adds scale (log-std 0.10), shift (std 4%) and roll (std 8 degrees) jitter, flips, light and
contrast changes, blur/down-sampling and occlusion on top, all in one batched affine warp.

Needs ``pip install torch==2.13.0`` (CPU build); never needed by the daemon. Checkpoints each epoch in --work and
resumes from the last one; each epoch's randomness derives from (seed, epoch), so a resumed run is the same run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
VOTE_COLUMNS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]   # in LABELS order
SIZE = 48
SCALE, OFFSET = 2 / 255, -1.0
CROP_MARGIN, CROP_SHIFT = 0.10, -0.11      # per side, and up by this share of the box side (crop_geometry.md)
SELECTION_SHARE = 0.10
SPLIT_SEED = 20261127
WEIGHTS_LICENCE = """ferplus_cnn weights: trained by models/recipes/ferplus_cnn.py of this repository.

Training data:
- FER2013 images (Goodfellow et al. 2013, ICML 2013 challenge): research use only.
- FER+ labels (Barsoum et al. 2016, microsoft/FERPlus): MIT licence.
The weights inherit the research-only terms of the FER2013 images: use them for evaluation and research, and
retrain on licensed images before commercial deployment.
"""


# ---------------------------------------------------------------------------------------------------------------- data

def load_ferplus(data: Path, cache: Path) -> dict:
    """Every usable FER+ face: images (N, 48, 48) uint8, targets (N, 7) vote shares, majority (-1: none of ours),
    fer2013 (the single FER2013 annotator's label, index into LABELS), split ('train' | 'public_test'), duplicate
    flag. Decoded once into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    stored = cache / "ferplus_48.npz"
    if stored.is_file():
        d = np.load(stored)
        if "fer2013" in d.files:         # a cache from before the FER2013 label was kept is rebuilt
            return {k: d[k] for k in d.files}
    index = data / "faces" / "ferplus" / "ferplus_index.csv"
    if not index.is_file():
        raise SystemExit(f"{index} is missing: see ../shared/data/README.md")
    import cv2

    images, targets, majority, fer2013, split, dup, paths = [], [], [], [], [], [], []
    with open(index) as f:
        for row in csv.DictReader(f):
            votes = np.array([float(row[c]) for c in VOTE_COLUMNS])
            if votes.sum() < 5:
                continue
            img = cv2.imread(str(data / "faces" / row["path"]), cv2.IMREAD_GRAYSCALE)
            if img is None or img.shape != (SIZE, SIZE):
                raise SystemExit(f"{row['path']}: unreadable or not {SIZE}x{SIZE}")
            images.append(img)
            targets.append(votes / votes.sum())
            majority.append(LABELS.index(row["majority"]) if row["majority"] in LABELS else -1)
            fer2013.append(LABELS.index(row["fer2013_label"]))
            split.append(row["split"])
            dup.append(row["ambiguous"] == "1")
            paths.append(row["path"])
    out = {"images": np.stack(images), "targets": np.array(targets, np.float32), "majority": np.array(majority),
           "fer2013": np.array(fer2013), "split": np.array(split), "duplicate": np.array(dup), "path": np.array(paths)}
    np.savez(stored, **out)
    return out


def selection_split(d: dict) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (train, selection) inside FER2013 train: a seeded, majority-stratified 10% without duplicates."""
    rng = np.random.default_rng(SPLIT_SEED)
    train_rows = np.flatnonzero(d["split"] == "train")
    selection = []
    for label in range(-1, len(LABELS)):
        pool = train_rows[(d["majority"][train_rows] == label) & ~d["duplicate"][train_rows]]
        selection += list(rng.choice(pool, size=int(round(len(pool) * SELECTION_SHARE)), replace=False))
    selection = np.sort(np.array(selection))
    train = np.setdiff1d(train_rows, selection)
    return train, selection


# --------------------------------------------------------------------------------------------------------------- model

def build_model(arch: str, width: int, upper_face: bool = False):
    """``resnet``: stem + three residual stages at 24, 12 and 6 px; ``vgg``: plain double-conv stages with pooling.
    Both end in global average pooling and one linear layer; ``width`` is the stem's channels (doubling per stage).
    ``upper_face``: the network sees only the rows above LOWER_FACE (the rest mid-grey, inside the graph), so a
    talking or smiling mouth cannot enter its reading."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class Residual(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a = conv_bn(cin, cout, stride)
            self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.b(self.a(x)) + self.skip(x))

    w = width
    if arch == "resnet":
        body = [conv_bn(1, w), Residual(w, 2 * w, 2), Residual(2 * w, 4 * w, 2), Residual(4 * w, 8 * w, 2)]
    elif arch == "vgg":
        body = [conv_bn(1, w), conv_bn(w, w), nn.MaxPool2d(2), conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w),
                nn.MaxPool2d(2), conv_bn(2 * w, 4 * w), conv_bn(4 * w, 4 * w), nn.MaxPool2d(2),
                conv_bn(4 * w, 8 * w)]
    else:
        raise SystemExit(f"unknown --arch {arch}")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*body)
            self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(8 * w, len(LABELS)))
            keep = torch.ones(1, 1, SIZE, SIZE)
            if upper_face:
                keep[..., LOWER_FACE[0]:, :] = 0.0          # 0 is mid-grey once scaled to [-1, 1]
            self.register_buffer("keep", keep, persistent=False)

        def forward(self, x):                       # x: (N, 1, 48, 48), already scaled to [-1, 1]
            return self.head(self.body(x * self.keep if upper_face else x).mean(dim=(2, 3)))

    return Net()


def with_softmax(models, flip: bool = False):
    """The exported graph: logits -> probabilities (the runtime applies the manifest's calibration on top). The
    logits are the mean over ``models`` (a seed ensemble folded into one graph) and, with ``flip``, over each face
    and its mirror image; the network's work is len(models) x (2 if flip else 1) passes."""
    import torch

    models = models if isinstance(models, (list, tuple)) else [models]

    class Exported(torch.nn.Module):
        # One member keeps the graph (and the names) it had before ensembles were candidates, so re-running the
        # recipe for a one-member choice reproduces the shipped file byte for byte.
        def __init__(self):
            super().__init__()
            if len(models) == 1:
                self.model = models[0]
            else:
                self.members = torch.nn.ModuleList(models)

        def forward(self, x):
            if len(models) == 1:
                z = self.model(x)
                if flip:
                    z = (z + self.model(torch.flip(x, dims=[3]))) / 2
                return torch.softmax(z, dim=1)
            views = [x, torch.flip(x, dims=[3])] if flip else [x]
            z = torch.stack([m(v) for m in self.members for v in views]).mean(dim=0)
            return torch.softmax(z, dim=1)

    return Exported()


# One face may cost at most this many network passes: two (a face and its mirror) measure 0.79 ms per face in the
# daemon at batch 4 (benchmarks/results/bench_30hz.md), against the 1.0 ms budget; four would not fit.
MAX_PASSES = 2


def choose_graph(members: list, d: dict, sel_idx: np.ndarray, setting: str, say) -> tuple[dict, dict]:
    """What the exported graph averages: the first member alone or all members (a seed ensemble), each with or
    without its mirror image (``--flip``: auto tries both), within MAX_PASSES; the best selection-split accuracy
    wins (ties: fewer passes). Every candidate's figures are kept."""
    images = d["images"][sel_idx]
    plain = [predict_logits(m, images, "cpu") for m in members]
    mirror = [predict_logits(m, images[:, :, ::-1].copy(), "cpu") for m in members] if setting != "off" else None
    flips = {"auto": (False, True), "on": (True,), "off": (False,)}[setting]
    counts = sorted({1, len(members)})
    scores, best = {}, None
    for n in counts:
        for flip in flips:
            passes = n * (2 if flip else 1)
            logits = np.mean(plain[:n] + (mirror[:n] if flip else []), axis=0)
            acc, rec, prec = majority_accuracy(logits, d["majority"][sel_idx])
            name = f"{n} member{'s' if n > 1 else ''}" + (" + mirror" if flip else "")
            scores[name] = {"members": n, "flip": flip, "passes": passes, "selection_accuracy": round(acc, 4),
                            "selection_angry_recall": round(rec, 4), "selection_angry_precision": round(prec, 4),
                            "selection_fer2013_accuracy": round(label_accuracy(logits, d["fer2013"][sel_idx]), 4),
                            "within_budget": passes <= MAX_PASSES}
            say(f"{name} ({passes} passes{'' if passes <= MAX_PASSES else ', over budget'}): selection acc "
                f"{acc:.4f}  angry recall {rec:.3f} precision {prec:.3f}")
            key = (round(acc, 4), -passes)
            if passes <= MAX_PASSES and (best is None or key > best[0]):
                best = (key, name)
    if best is None:
        raise SystemExit(f"no graph within {MAX_PASSES} passes per face: use --flip off or fewer --ensemble seeds")
    say(f"exported graph: {best[1]} (best selection accuracy within {MAX_PASSES} passes per face)")
    return scores[best[1]], scores


# -------------------------------------------------------------------------------------------------------- augmentation

# Where the mouth and chin lie in a FER2013 crop (rows and columns of the 48 px face, roughly aligned by FER2013).
LOWER_FACE = (29, 48, 9, 39)
# Crop scales the "framing" augmentation draws from (log-uniform), for half of the faces: tighter than a posed lab
# crop, looser than a BlazeFace box with its margin; the other half keeps the live-crop jitter.
FRAMING_SCALES = (0.72, 1.4)


def swap_lower_faces(x, majority, gen, device, share: float):
    """Replace the mouth and chin of ``share`` of the faces with those of another face in the batch whose crowd
    majority differs, keeping each face's own target: an open mouth (talking, teeth showing) must not decide the
    label. The pasted region is brightness-matched and feathered at its top edge. x: (B, 1, 48, 48) in [-1, 1]."""
    import torch

    b = x.shape[0]
    donor = torch.randperm(b, generator=gen, device=device)
    swap = (torch.rand(b, generator=gen, device=device) < share) & (majority[donor] != majority)
    if not swap.any():
        return x
    r0, r1, c0, c1 = LOWER_FACE
    rows = torch.arange(r0, r1, device=device, dtype=torch.float32)
    alpha = ((rows - r0 + 1) / 5).clamp(max=1.0).view(1, 1, -1, 1)       # a 5-row fade into the donor's mouth
    target, source = x[swap, :, r0:r1, c0:c1], x[donor[swap], :, r0:r1, c0:c1]
    source = source - source.mean(dim=(1, 2, 3), keepdim=True) + target.mean(dim=(1, 2, 3), keepdim=True)
    x = x.clone()
    x[swap, :, r0:r1, c0:c1] = (alpha * source + (1 - alpha) * target).clamp(-1, 1)
    return x


def augment(images, gen, device, framing: bool = False):
    """(B, 1, 48, 48) float in [-1, 1] -> the same, warped and degraded the way a live BlazeFace crop can be.
    ``framing``: half the faces get a crop scale drawn from FRAMING_SCALES and an aspect change, and a tenth have
    their lower face covered (a scarf, a hand over the mouth)."""
    import torch
    import torch.nn.functional as F

    b = images.shape[0]

    def normal(std, *shape):
        return torch.randn(*(shape or (b,)), generator=gen, device=device) * std

    def uniform(lo, hi):
        return torch.rand(b, generator=gen, device=device) * (hi - lo) + lo

    scale = torch.exp(normal(0.10).clamp(-0.25, 0.25))
    aspect = torch.ones(b, device=device)
    if framing:
        wide = torch.rand(b, generator=gen, device=device) < 0.5
        scale = torch.where(wide, torch.exp(uniform(*map(math.log, FRAMING_SCALES))), scale)
        aspect = torch.exp(normal(0.07).clamp(-0.2, 0.2))
    angle = normal(math.radians(8)).clamp(-0.45, 0.45)
    flip = torch.where(torch.rand(b, generator=gen, device=device) < 0.5, -1.0, 1.0)
    tx, ty = normal(0.08).clamp(-0.2, 0.2), normal(0.08).clamp(-0.2, 0.2)   # in [-1, 1] units: std 4% of the side
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip * aspect, -sin, tx], 1),
                         torch.stack([sin * flip * aspect, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, images.shape, align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Camera: low resolution (a far face enlarged to 48 px), then light and contrast.
    low = torch.rand(b, generator=gen, device=device) < 0.25
    if low.any():
        side = int(torch.randint(16, 36, (1,), generator=gen, device=device))
        small = F.interpolate(x[low], size=(side, side), mode="area")
        x[low] = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    contrast = torch.exp(normal(0.25).clamp(-0.6, 0.6)).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + normal(0.15).view(b, 1, 1, 1)
    x = x + normal(0.03, b, 1, SIZE, SIZE) * (torch.rand(b, 1, 1, 1, generator=gen, device=device) < 0.3)
    # Occlusion (a hand, a cup, a scarf): one grey block on a quarter of the faces.
    occlude = torch.rand(b, generator=gen, device=device) < 0.25
    for i in torch.nonzero(occlude).flatten().tolist():
        h, w = (int(v) for v in torch.randint(8, 20, (2,), generator=gen, device=device))
        y0, x0 = (int(v) for v in torch.randint(0, SIZE - 8, (2,), generator=gen, device=device))
        x[i, :, y0:y0 + h, x0:x0 + w] = float(torch.rand(1, generator=gen, device=device)) * 2 - 1
    if framing:
        covered = torch.rand(b, generator=gen, device=device) < 0.1
        for i in torch.nonzero(covered).flatten().tolist():
            top = int(torch.randint(30, 38, (1,), generator=gen, device=device))
            x[i, :, top:, 6:42] = float(torch.rand(1, generator=gen, device=device)) * 2 - 1
    return x.clamp(-1, 1)


# ------------------------------------------------------------------------------------------------------------ training

def to_input(images_u8, device):
    import torch

    return torch.from_numpy(images_u8).to(device).float().unsqueeze(1) * SCALE + OFFSET


def predict_logits(model, images_u8: np.ndarray, device, batch: int = 512) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            out.append(model(to_input(images_u8[i:i + batch], device)).cpu().numpy())
    return np.concatenate(out)


def majority_accuracy(logits: np.ndarray, majority: np.ndarray) -> tuple[float, float, float]:
    """Accuracy on faces with a crowd majority among our labels; angry recall and precision."""
    keep = majority >= 0
    pred, y = logits[keep].argmax(1), majority[keep]
    angry = LABELS.index("angry")
    recall = float((pred[y == angry] == angry).mean())
    precision = float((y[pred == angry] == angry).mean()) if (pred == angry).any() else 0.0
    return float((pred == y).mean()), recall, precision


def label_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def training_targets(d: dict, rows: np.ndarray, fer2013_weight: float) -> np.ndarray:
    """The crowd's vote shares, blended with the single FER2013 annotator's label by ``fer2013_weight``."""
    single = np.eye(len(LABELS), dtype=np.float32)[d["fer2013"][rows]]
    return ((1 - fer2013_weight) * d["targets"][rows] + fer2013_weight * single).astype(np.float32)


def train(args, d: dict, train_idx: np.ndarray, sel_idx: np.ndarray, say) -> tuple[object, list]:
    """One model: SGD + Nesterov, warm-up then cosine to zero, soft-target cross-entropy; an EMA of the weights rides
    along. No epoch is picked: the final weights are the last epoch's or their EMA (``choose_final``). Checkpoint
    after every epoch; resumes from the last one. Returns (model, per-epoch history, final figures)."""
    import torch

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(args.arch, args.width, args.upper_face).to(device)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True)
    steps_per_epoch = len(train_idx) // args.batch
    total = args.epochs * steps_per_epoch
    optimiser = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=args.weight_decay)
    warm = steps_per_epoch

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    ckpt = args.work / f"{args.tag}.ckpt.pt"
    history, start = [], 1
    if ckpt.is_file() and not args.restart:
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        history, start = state["history"], state["epoch"] + 1
        say(f"resumed {args.tag} from {ckpt} after epoch {state['epoch']}")
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{args.tag}: {args.arch} width {args.width}, {n_params} parameters; {args.epochs} epochs x "
        f"{steps_per_epoch} steps of {args.batch}; lr {args.lr:g}, wd {args.weight_decay:g}, EMA {args.ema:g}; "
        f"device {device}, {torch.get_num_threads()} threads")
    images = torch.from_numpy(d["images"][train_idx]).to(device)
    targets = torch.from_numpy(training_targets(d, train_idx, args.fer2013_weight)).to(device)
    majority = torch.from_numpy(d["majority"][train_idx]).to(device)
    teacher = Teacher(args.teacher) if args.teacher else None
    for epoch in range(start, args.epochs + 1):
        gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(len(train_idx), generator=gen, device=device)
        model.train()
        started, loss_sum = time.time(), 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch:(step + 1) * args.batch]
            x = images[idx].float().unsqueeze(1) * SCALE + OFFSET
            if args.mouth_swap:
                x = swap_lower_faces(x, majority[idx], gen, device, args.mouth_swap)
            x = augment(x, gen, device, framing=args.framing)
            logits = model(x)
            loss = -(targets[idx] * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
            if teacher is not None:
                loss = (1 - args.kd_weight) * loss + args.kd_weight * distillation(logits, teacher(x), args.kd_t)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            ema.update_parameters(model)
            loss_sum += float(loss.detach())
            if args.verbose and step % 50 == 0:
                say(f"  step {step}/{steps_per_epoch} loss {loss_sum / (step + 1):.4f}")
        # The EMA's BatchNorm statistics are re-estimated only at the end, so per epoch it lags far behind (seen:
        # 0.63 against 0.80 for the weights themselves at epoch 13); both are logged.
        acc, rec, prec = majority_accuracy(predict_logits(ema.module, d["images"][sel_idx], device),
                                           d["majority"][sel_idx])
        raw_logits = predict_logits(model, d["images"][sel_idx], device)
        raw = majority_accuracy(raw_logits, d["majority"][sel_idx])[0]
        single = label_accuracy(raw_logits, d["fer2013"][sel_idx])
        history.append({"epoch": epoch, "train_loss": round(loss_sum / steps_per_epoch, 4),
                        "selection_accuracy": round(acc, 4), "selection_angry_recall": round(rec, 4),
                        "selection_angry_precision": round(prec, 4), "selection_accuracy_weights": round(raw, 4),
                        "selection_fer2013_accuracy_weights": round(single, 4),
                        "seconds": round(time.time() - started, 1)})
        say(f"{args.tag} epoch {epoch:3d}/{args.epochs}  loss {loss_sum / steps_per_epoch:.4f}  selection acc "
            f"{raw:.4f}, FER2013 labels {single:.4f} (EMA before BatchNorm re-estimation {acc:.4f}, angry recall "
            f"{rec:.3f} precision {prec:.3f})  "
            f"({time.time() - started:.0f} s)")
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(), "history": history, "epoch": epoch,
                    "args": {k: str(v) for k, v in vars(args).items()}}, ckpt)
    model, final = choose_final(model, ema.module, d, train_idx, sel_idx, device, say)
    return model.to("cpu").eval(), history, final


class Teacher:
    """An exported graph (e.g. the shipped mirror-averaged one) run by ONNX Runtime on the student's own augmented
    batch: its probabilities are the soft targets a one-pass student learns to match."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x):
        import torch

        probs = self.session.run(None, {self.input: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(probs).to(x.device)


def distillation(student_logits, teacher_probs, temperature: float):
    """KL(teacher || student) at a temperature, scaled by T^2 (Hinton et al.); the teacher gives probabilities, so
    its tempered distribution is p^(1/T) renormalised."""
    import torch

    soft = torch.log(teacher_probs.clamp_min(1e-8)) / temperature
    soft = torch.softmax(soft, dim=1)
    log_student = torch.log_softmax(student_logits / temperature, dim=1)
    return (soft * (torch.log(soft.clamp_min(1e-8)) - log_student)).sum(dim=1).mean() * temperature ** 2


def recalibrate_batchnorm(model, images_u8: np.ndarray, device, batch: int = 256) -> None:
    """BatchNorm statistics for averaged weights, from clean training faces (the eval-time input): an average of
    weights is not matched by an average of the statistics each of them saw."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None          # a plain average over all batches below
    model.train()
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            model(to_input(images_u8[i:i + batch], device))
    model.eval()


def choose_final(last, ema, d: dict, train_idx: np.ndarray, sel_idx: np.ndarray, device, say):
    """The last epoch's weights or their EMA (BatchNorm re-estimated), whichever reads the selection split better;
    both figures are logged and kept."""
    recalibrate_batchnorm(ema, d["images"][train_idx[:8192]], device)
    scores = {}
    for name, model in (("last", last), ("ema", ema)):
        logits = predict_logits(model, d["images"][sel_idx], device)
        acc, rec, prec = majority_accuracy(logits, d["majority"][sel_idx])
        single = label_accuracy(logits, d["fer2013"][sel_idx])
        scores[name] = {"selection_accuracy": round(acc, 4), "selection_angry_recall": round(rec, 4),
                        "selection_angry_precision": round(prec, 4), "selection_fer2013_accuracy": round(single, 4)}
        say(f"final candidate {name}: selection acc {acc:.4f}  angry recall {rec:.3f} precision {prec:.3f}  "
            f"FER2013 labels {single:.4f}")
    chosen = max(scores, key=lambda k: scores[k]["selection_accuracy"])
    say(f"chosen: {chosen} weights")
    return (ema if chosen == "ema" else last), {"chosen": chosen, **scores[chosen], "candidates": scores}


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    z = z - z.max(1, keepdims=True)
    return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of the labels y (golden-section search on log T)."""
    z = logits.astype(np.float64)
    lo, hi = math.log(0.2), math.log(5.0)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if _nll(z / math.exp(a), y) < _nll(z / math.exp(b), y):
            hi = b
        else:
            lo = a
    return round(math.exp((lo + hi) / 2), 4)


def fit_vector(logits: np.ndarray, y: np.ndarray, steps: int = 3000, lr: float = 0.02) -> tuple[list, list]:
    """Per-class scale and bias minimising the NLL of y (Adam from the temperature solution; the problem is convex)."""
    z = logits.astype(np.float64)
    k = z.shape[1]
    w, b = np.full(k, 1 / fit_temperature(z, y)), np.zeros(k)
    onehot = np.eye(k)[y]
    m = np.zeros(2 * k)
    v = np.zeros(2 * k)
    for t in range(1, steps + 1):
        s = z * w + b
        s -= s.max(1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(1, keepdims=True)
        d = (p - onehot) / len(y)
        grad = np.concatenate([(d * z).sum(0), d.sum(0)])
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad ** 2
        step = lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        w, b = w - step[:k], b - step[k:]
    return [round(float(x), 5) for x in w], [round(float(x), 5) for x in b]


def fit_calibration(log_p: np.ndarray, majority: np.ndarray, seed: int = SPLIT_SEED) -> dict:
    """Temperature or vector scaling of log p against the crowd majority, whichever has the lower held-out NLL in a
    2-fold split of the selection faces; the winner is then fit on all of them."""
    keep = majority >= 0
    z, y = log_p[keep], majority[keep]
    folds = np.random.default_rng(seed).permutation(len(y)) % 2
    held_out = {"temperature": [], "vector": []}
    for f in (0, 1):
        a, b = folds != f, folds == f
        held_out["temperature"].append(_nll(z[b] / fit_temperature(z[a], y[a]), y[b]))
        w, c = fit_vector(z[a], y[a])
        held_out["vector"].append(_nll(z[b] * np.array(w) + np.array(c), y[b]))
    nll = {k: round(float(np.mean(v)), 4) for k, v in held_out.items()}
    method = min(nll, key=nll.get)
    chosen_by = f"2-fold held-out NLL on the selection split: temperature {nll['temperature']}, vector {nll['vector']}"
    if method == "temperature":
        return {"method": method, "temperature": fit_temperature(z, y), "chosen_by": chosen_by}
    w, c = fit_vector(z, y)
    return {"method": method, "scale": w, "bias": c, "chosen_by": chosen_by}


# -------------------------------------------------------------------------------------------------------------- export

def export(model, path: Path, flip: bool = False) -> None:
    import torch

    wrapped = with_softmax(model, flip).eval()
    torch.onnx.export(wrapped, torch.zeros(1, 1, SIZE, SIZE), str(path), input_names=["input"],
                      output_names=["probabilities"],
                      dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
                      opset_version=17, dynamo=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "onnx" / "ferplus_cnn")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "face_training")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "ferplus_cnn",
                        help="decoded images and per-epoch checkpoints (not committed)")
    parser.add_argument("--arch", choices=["resnet", "vgg"], default="vgg",
                        help="vgg: the shipped one (architectures.md); resnet: the one it was compared with")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fer2013-weight", type=float, default=0.0,
                        help="blend the single FER2013 label into the crowd's targets by this weight (0: crowd only)")
    parser.add_argument("--framing", action="store_true",
                        help="wide crop-scale and aspect jitter (FRAMING_SCALES) and covered lower faces, for tight "
                             "and loose crops")
    parser.add_argument("--mouth-swap", type=float, default=0.0,
                        help="share of training faces whose mouth and chin come from a face of another majority "
                             "(0: none)")
    parser.add_argument("--upper-face", action="store_true",
                        help="the network reads only the face above the mouth (the lower rows grey inside the graph)")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="an exported graph (.onnx) whose probabilities on each augmented batch are soft targets "
                             "(distillation, e.g. the shipped mirror-averaged fp32.onnx into a one-pass student)")
    parser.add_argument("--kd-weight", type=float, default=0.5, help="share of the loss that matches the teacher")
    parser.add_argument("--kd-t", type=float, default=2.0, help="distillation temperature")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the shipped file is trained on the CPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flip", choices=["auto", "on", "off"], default="auto",
                        help="average each face with its mirror image inside the exported graph; auto: where that "
                             "reads the selection split better")
    parser.add_argument("--ensemble", type=str, default="",
                        help="comma-separated seeds whose trained weights may join --seed's in the exported graph "
                             "(each trained first with --seed N --train-only); chosen on the selection split")
    parser.add_argument("--train-only", action="store_true", help="train (or resume) and record; no export")
    parser.add_argument("--finalize-only", action="store_true",
                        help="skip training: calibrate and evaluate the exported files, (re)write the manifest")
    parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if not 0 <= args.fer2013_weight <= 1:
        raise SystemExit("--fer2013-weight must lie in [0, 1]")
    args.tag = f"{args.arch}{args.width}_seed{args.seed}" + (
        f"_fer{round(args.fer2013_weight * 100):02d}" if args.fer2013_weight else "")
    if args.framing:
        args.tag += "_framing"
    if args.mouth_swap:
        args.tag += f"_mouth{round(args.mouth_swap * 100):02d}"
    if args.upper_face:
        args.tag += "_upper"
    if args.teacher:
        args.tag += f"_kd{round(args.kd_weight * 100):02d}"
    if args.epochs != 24:
        args.tag += f"_e{args.epochs}"
    args.ensemble = [args.seed] + [int(s) for s in args.ensemble.split(",") if s and int(s) != args.seed]

    import torch

    torch.set_num_threads(args.threads)
    args.log.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log_file = open(args.log / f"training_log_{args.tag}.txt", "a")

    def say(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    t0 = time.time()
    d = load_ferplus(args.data, args.work)
    train_idx, sel_idx = selection_split(d)
    say(f"FER+ faces kept: {len(d['images'])}; train {len(train_idx)}, selection {len(sel_idx)} (from FER2013 train), "
        f"PublicTest {int((d['split'] == 'public_test').sum())} (report only, not read here); {time.time() - t0:.0f} s")
    if args.finalize_only:
        finalize(args, d, sel_idx, say)
        return
    model, history, final = train(args, d, train_idx, sel_idx, say)
    minutes = (time.time() - t0) / 60
    results_path = args.log / "architectures.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    last = final
    results[args.tag] = {"arch": args.arch, "width": args.width, "seed": args.seed, "epochs": args.epochs,
                         "fer2013_weight": args.fer2013_weight,
                         "parameters": sum(p.numel() for p in model.parameters()), "device": args.device,
                         "threads": args.threads,
                         # Summed over the epochs (a resumed run included); evaluation of each epoch counted in.
                         "train_minutes": round(sum(h["seconds"] for h in history) / 60, 1),
                         "epoch_seconds_median": float(np.median([h["seconds"] for h in history])),
                         "selection_accuracy": last["selection_accuracy"],
                         "selection_angry_recall": last["selection_angry_recall"],
                         "selection_angry_precision": last["selection_angry_precision"],
                         "selection_fer2013_accuracy": last.get("selection_fer2013_accuracy"),
                         "final_weights": final["chosen"], "final_candidates": final["candidates"], "history": history}
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    write_architectures_md(results, results_path.with_suffix(".md"))
    torch.save(model.state_dict(), args.work / f"{args.tag}.final.pt")
    plot_history(history, args.log / f"training_curve_{args.tag}.png", args.tag)
    say(f"{args.tag}: done in {minutes:.1f} min; selection accuracy {last['selection_accuracy']:.4f}")
    if args.train_only:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    members = [model] + [load_member(args, seed) for seed in args.ensemble[1:]]
    graph, candidates = choose_graph(members, d, sel_idx, args.flip, say)
    args.graph = {**graph, "seeds": args.ensemble[:graph["members"]]}
    results[args.tag]["graph"] = {"used": args.graph, "flip_setting": args.flip, "candidates_seeds": args.ensemble,
                                  "candidates": candidates}
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    write_architectures_md(results, results_path.with_suffix(".md"))
    export(members[:graph["members"]], args.out / "fp32.onnx", graph["flip"])
    rng = np.random.default_rng(args.seed)
    calib = d["images"][rng.choice(train_idx, 512, replace=False)]
    from models.recipes.recipe_tools import quantize_qdq
    quantize_qdq(args.out / "fp32.onnx", args.out / "int8.onnx",
                 [{"input": (calib[i:i + 32, None].astype(np.float32) * SCALE + OFFSET)} for i in range(0, 512, 32)])
    say(f"exported {args.out}/fp32.onnx and int8.onnx")
    finalize(args, d, sel_idx, say)


def write_architectures_md(results: dict, path: Path) -> None:
    """The comparison the shipped architecture was chosen by: selection split only (PublicTest is not read)."""
    lines = ["# Face-expression architectures compared (FER+ selection split, final weights)", "",
             "Written by `models/recipes/ferplus_cnn.py`; the selection split is 10% of FER2013 train, held out of "
             "training. PublicTest is not read here.", "",
             "| run | parameters | epochs | FER2013 label weight | device, threads | training min | final weights | "
             "selection accuracy (FER+ majority) | angry recall | angry precision | accuracy on FER2013 labels | "
             "other candidate's accuracy |", "|---" * 12 + "|"]
    for tag, r in sorted(results.items()):
        other = {k: v for k, v in r.get("final_candidates", {}).items() if k != r.get("final_weights")}
        single = r.get("selection_fer2013_accuracy")
        lines.append(f"| {tag} | {r['parameters']:,} | {r['epochs']} | {r.get('fer2013_weight', 0):g} | "
                     f"{r['device']}, {r['threads']} | "
                     f"{r['train_minutes']:.0f} | {r.get('final_weights', '-')} | {r['selection_accuracy']:.4f} | "
                     f"{r['selection_angry_recall']:.3f} | {r['selection_angry_precision']:.3f} | "
                     f"{'-' if single is None else f'{single:.4f}'} | "
                     + ", ".join(f"{k} {v['selection_accuracy']:.4f}" for k, v in other.items()) + " |")
    for tag, r in sorted(results.items()):
        graph = r.get("graph")
        if not graph:
            continue
        used = graph["used"]
        lines += ["", f"## What the exported graph averages ({tag}, --flip {graph['flip_setting']}, seeds "
                  f"{', '.join(map(str, graph['candidates_seeds']))})",
                  "", f"At most {MAX_PASSES} network passes per face (the 1 ms per face budget); the best selection "
                  "accuracy wins.", "",
                  "| graph | passes | selection accuracy | angry recall | angry precision | FER2013 labels | |",
                  "|---|---|---|---|---|---|---|"]
        for name, c in graph["candidates"].items():
            mark = ("**exported**" if (c["members"], c["flip"]) == (used["members"], used["flip"])
                    else "" if c["within_budget"] else "over budget")
            lines.append(f"| {name} | {c['passes']} | {c['selection_accuracy']:.4f} | {c['selection_angry_recall']:.3f}"
                         f" | {c['selection_angry_precision']:.3f} | {c['selection_fer2013_accuracy']:.4f} | {mark} |")
    path.write_text("\n".join(lines) + "\n")


def plot_history(history: list, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(epochs, [h["train_loss"] for h in history])
    ax[0].set(xlabel="epoch", ylabel="soft-target cross-entropy", title=f"{title}: training loss")
    for key, name in (("selection_accuracy_weights", "accuracy (weights)"), ("selection_accuracy", "accuracy (EMA)"),
                      ("selection_angry_recall", "angry recall (EMA)"),
                      ("selection_angry_precision", "angry precision (EMA)")):
        if all(key in h for h in history):      # the weights' own figure was added after the shipped run
            ax[1].plot(epochs, [h[key] for h in history], label=name)
    ax[1].set(xlabel="epoch", title="selection split per epoch (EMA: BatchNorm as averaged, lags)", ylim=(0.0, 1.0))
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def load_member(args, seed: int):
    """Another seed's finished weights (same architecture and data settings), for a seed ensemble."""
    import torch

    tag = args.tag.replace(f"_seed{args.seed}", f"_seed{seed}", 1)
    path = args.work / f"{tag}.final.pt"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; train it first: python models/recipes/ferplus_cnn.py --seed {seed} "
                         "--train-only (same --arch/--width/--epochs/--fer2013-weight)")
    model = build_model(args.arch, args.width, args.upper_face)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()


def finalize(args, d: dict, sel_idx: np.ndarray, say) -> None:
    from models.recipes.ferplus_finalize import write_manifest_and_reports

    write_manifest_and_reports(args, d, sel_idx, say)


if __name__ == "__main__":
    main()
