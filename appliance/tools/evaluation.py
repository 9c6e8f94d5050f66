"""Accuracy of a classifier on a labelled folder: accuracy, macro-F1, per-class recall/precision, confusion."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


class DatasetError(ValueError):
    pass


@dataclass
class EvalReport:
    model: str
    precision: str
    provider: str
    dataset: str
    labels: list[str]
    n: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]   # rows: true label, columns: predicted label
    seconds: float
    label_set: str = "folder names"
    ece: float | None = None               # 15 bins, on what the daemon uses (calibrated where there is one)
    ece_uncalibrated: float | None = None
    also: dict[str, float | str] = field(default_factory=dict)   # the same predictions against other labels
    predictions: np.ndarray | None = field(default=None, repr=False)   # per item, not saved
    angry_auc: float | None = None        # angry vs the rest, ranked by P(angry) (voice)

    def as_dict(self) -> dict:
        out = {"model": self.model, "precision": self.precision, "provider": self.provider,
               "dataset": self.dataset, "label_set": self.label_set, "n": self.n, "accuracy": self.accuracy,
               "macro_f1": self.macro_f1, "per_class": self.per_class, "labels": self.labels,
               "confusion": self.confusion, "seconds": self.seconds}
        if self.ece is not None:
            out |= {"ece_15": self.ece, "ece_15_uncalibrated": self.ece_uncalibrated}
        if self.angry_auc is not None:
            out["angry_auc"] = self.angry_auc
        return out | ({"also": self.also} if self.also else {})

    def table(self) -> str:
        lines = [f"model     {self.model} ({self.precision} on {self.provider})",
                 f"dataset   {self.dataset}  n={self.n}",
                 f"labels    {self.label_set}",
                 f"accuracy  {self.accuracy:.4f}",
                 f"macro-F1  {self.macro_f1:.4f}"]
        if self.ece is not None:
            lines.append(f"ECE-15    {self.ece:.4f} (uncalibrated {self.ece_uncalibrated:.4f})")
        lines += [f"{k:<9} {v}" for k, v in self.also.items()]
        lines += ["",
                 f"{'label':<10} {'n':>6} {'recall':>8} {'precision':>10}"]
        for label in self.labels:
            c = self.per_class[label]
            lines.append(f"{label:<10} {c['n']:>6} {c['recall']:>8.3f} {c['precision']:>10.3f}")
        return "\n".join(lines)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = (support > 0) | (predicted > 0)
    return {
        "n": int(confusion.sum()),
        "accuracy": float(tp.sum() / max(1, confusion.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {label: {"recall": round(float(recall[i]), 4), "precision": round(float(precision[i]), 4),
                              "n": int(support[i])} for i, label in enumerate(labels)},
        "confusion": confusion.tolist(),
    }


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy of the top label, averaged over equal-width confidence bins
    weighted by how many predictions fall in each (Guo et al. 2017)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / max(1, len(y_true)))


def list_face_folder(root: Path, labels: Sequence[str]) -> list[tuple[Path, int]]:
    """``root/<label>/*.png|jpg``; a folder whose name is not a model label is an error, not silently skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if p.name not in labels]
    if unknown:
        raise DatasetError(f"{root}: folders {unknown} are not labels of this model ({', '.join(labels)})")
    items = [(f, labels.index(d.name)) for d in folders for f in sorted(d.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise DatasetError(f"{root}: no images found in <label>/ folders (labels: {', '.join(labels)})")
    return items


def load_gray(path: Path, size: tuple[int, int]) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetError(f"{path}: not an image OpenCV can decode")
    if image.shape != size:
        interpolation = cv2.INTER_AREA if image.shape[0] > size[0] else cv2.INTER_LINEAR
        image = cv2.resize(image, (size[1], size[0]), interpolation=interpolation)
    return image


def stderr_progress(label: str) -> Callable[[int, int], None]:
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 0.5:
            last[0] = now
            end = "\n" if done == total else ""
            print(f"\r{label}: {done}/{total} ({100 * done / total:.0f}%)", end=end, file=sys.stderr, flush=True)

    return report


def evaluate_faces(root: Path, model, batch: int = 256,
                   progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Run an ExpressionModel over a labelled face folder (faces already cropped, as FER2013 ships them)."""
    items = list_face_folder(root, model.labels)
    y_true = np.fromiter((label for _, label in items), dtype=np.int64, count=len(items))
    return _face_report(model, [path for path, _ in items], y_true, str(root), "folder names", batch, progress)


def list_ferplus_index(index: Path, labels: Sequence[str], split: str) -> tuple[list[Path], np.ndarray, dict]:
    """The faces of ``split`` in a FER+ index (``ferplus_index.csv``: path relative to the folder above the
    index's folder, split, fer2013_label, majority, ...) whose crowd majority is one of ``labels``.
    Returns (paths, majority label indices, what was left out and the FER2013 labels of the kept faces)."""
    index = Path(index)
    if index.is_dir():
        index = next((p for p in (index / "ferplus_index.csv", index / "ferplus" / "ferplus_index.csv")
                      if p.is_file()), index / "ferplus_index.csv")
    rows = read_index(index, {"path", "split", "majority", "fer2013_label"},
                      "FER+ labels (see ../shared/data/README.md)", {"split": {split}})
    if not rows:
        raise DatasetError(f"{index}: no rows with split={split!r}")
    kept = [r for r in rows if r["majority"] in labels]
    left_out = Counter(r["majority"] for r in rows if r["majority"] not in labels)
    base = index.parent.parent
    fer2013 = np.array([labels.index(r["fer2013_label"]) if r["fer2013_label"] in labels else -1 for r in kept])
    return ([base / r["path"] for r in kept], np.array([labels.index(r["majority"]) for r in kept]),
            {"left_out": dict(sorted(left_out.items())), "fer2013": fer2013})


def evaluate_ferplus(index: Path, model, split: str = "public_test", batch: int = 256,
                     progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """The expression model against the FER+ crowd majority (10 voters per face), and the same predictions
    against FER2013's single label, on one split of a FER+ index. Faces whose majority is not one of the model's
    labels (contempt, unknown, not a face, a tie) are left out and counted."""
    paths, y_true, extra = list_ferplus_index(index, model.labels, split)
    report = _face_report(model, paths, y_true, f"{index} split={split}", "FER+ crowd majority", batch, progress)
    fer2013 = extra["fer2013"]
    agree = fer2013 >= 0
    report.also = {"fer2013_label_accuracy": round(float((report.predictions[agree] == fer2013[agree]).mean()), 4),
                   "left_out": ", ".join(f"{k} {v}" for k, v in extra["left_out"].items()) or "none"}
    return report


def _face_report(model, paths: list[Path], y_true: np.ndarray, dataset: str, label_set: str, batch: int,
                 progress: Callable[[int, int], None] | None) -> EvalReport:
    started = time.perf_counter()
    raw = np.empty((len(paths), len(model.labels)), dtype=np.float32)
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        crops = np.stack([load_gray(path, model.size) for path in chunk])
        raw[start:start + len(chunk)] = model.classify(crops, calibrated=False).probabilities
        if progress:
            progress(start + len(chunk), len(paths))
    probs = model.calibrate(raw)
    y_pred = probs.argmax(axis=1)
    m = classification_metrics(y_true, y_pred, model.labels)
    report = model.runtime_report
    return EvalReport(model=model.manifest.name, precision=report.precision, provider=report.provider,
                      dataset=dataset, labels=list(model.labels), n=m["n"], accuracy=round(m["accuracy"], 4),
                      macro_f1=round(m["macro_f1"], 4), per_class=m["per_class"], confusion=m["confusion"],
                      seconds=round(time.perf_counter() - started, 2), label_set=label_set,
                      ece=round(expected_calibration_error(probs, y_true), 4),
                      ece_uncalibrated=round(expected_calibration_error(raw, y_true), 4), predictions=y_pred)


def read_index(index: Path, required: set[str], what: str, where: dict[str, set[str]] | None = None) -> list[dict]:
    """The rows of a CSV index that has the ``required`` columns (and every ``where`` column), filtered by ``where``;
    a DatasetError naming the file for anything missing. ``what`` says what the index is for, in that error."""
    import csv

    if not index.is_file():
        raise DatasetError(f"{index} not found ({what} needs {index.name} with {','.join(sorted(required))} columns)")
    with open(index, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = required - set(fields)
        if missing:
            raise DatasetError(f"{index}: missing columns {sorted(missing)} (has {fields})")
        for column in (where or {}):
            if column not in fields:
                raise DatasetError(f"{index}: no column {column!r} to filter on (has {fields})")
        return [r for r in reader if all(r[c] in allowed for c, allowed in (where or {}).items())]


SPEECH_INDEXES = ("index.csv", "index_more.csv")     # the second: corpora added later, same columns


def speech_rows(root: Path, columns: set[str], index: Path | None = None,
                where: dict[str, set[str]] | None = None) -> list[dict]:
    """Rows of ``index``, or of every SPEECH_INDEXES file under ``root`` that exists; ``where`` as in read_index."""
    root = Path(root)
    files = [Path(index)] if index else [root / name for name in SPEECH_INDEXES if (root / name).is_file()]
    if not files:
        raise DatasetError(f"{root}: no {' or '.join(SPEECH_INDEXES)} (columns {', '.join(sorted(columns))})")
    rows = [r for f in files for r in read_index(f, columns, "a voice dataset folder", where)]
    if not rows:
        raise DatasetError(f"{', '.join(map(str, files))}: no rows" + (f" match {where}" if where else ""))
    return rows


def list_voice_index(root: Path, labels: Sequence[str], index: Path | None = None,
                     where: dict[str, set[str]] | None = None) -> list[tuple[Path, int]]:
    """``root/index.csv`` and ``root/index_more.csv`` (or ``index``) with at least path,label; paths relative to
    root. ``where`` keeps rows whose column value is in the given set (e.g. speaker in the validation speakers).
    A label the model does not know is an error, not skipped.
    """
    rows = speech_rows(root, {"path", "label"}, index, where)
    unknown = sorted({r["label"] for r in rows} - set(labels))
    if unknown:
        raise DatasetError(f"{index or root}: labels {unknown} are not labels of this model ({', '.join(labels)})")
    return [(Path(root) / r["path"], labels.index(r["label"])) for r in rows]


def evaluate_voice(root: Path, model, index: Path | None = None, where: dict[str, set[str]] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Score whole clips with a VoiceToneModel: mean probabilities over 2 s windows (the daemon's segment)."""
    from appliance.sources.audio import load_audio_file

    items = list_voice_index(root, model.labels, index, where)
    started = time.perf_counter()
    y_true = np.array([label for _, label in items], dtype=np.int64)
    probs = np.empty((len(items), len(model.labels)), dtype=np.float64)
    for i, (path, _) in enumerate(items):
        probs[i] = model.classify_clip(load_audio_file(path))
        if progress:
            progress(i + 1, len(items))
    y_pred = probs.argmax(axis=1)
    m = classification_metrics(y_true, y_pred, model.labels)
    angry = model.labels.index("angry") if "angry" in model.labels else None
    report = model.runtime_report
    # Sorted, so the same filter reads the same in every saved report (a set's order changes between runs).
    subset = "; ".join(f"{k}={','.join(sorted(v))}" for k, v in sorted((where or {}).items()))
    return EvalReport(model=model.manifest.name, precision=report.precision, provider=report.provider,
                      dataset=str(root) + (f" where {subset}" if subset else ""), labels=list(model.labels), n=m["n"],
                      accuracy=round(m["accuracy"], 4), macro_f1=round(m["macro_f1"], 4),
                      per_class=m["per_class"], confusion=m["confusion"],
                      seconds=round(time.perf_counter() - started, 2),
                      angry_auc=None if angry is None else roc_auc(probs[:, angry], y_true == angry))


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve by ranks (ties share their mean rank); None without both classes."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    return round(float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), 4)


def confusion_png(report: EvalReport, path: Path) -> Path:
    """The confusion matrix as an image (row-normalised, counts in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array(report.confusion, dtype=float)
    rates = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
    k = len(report.labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * k, 0.8 + 0.7 * k))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), report.labels, rotation=45, ha="right")
    ax.set_yticks(range(k), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(f"{report.model} {report.precision}: acc {report.accuracy:.3f}, n={report.n}", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
