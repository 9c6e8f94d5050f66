"""Accuracy of a classifier on a labelled folder: accuracy, macro-F1, per-class recall/precision, confusion."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
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

    def as_dict(self) -> dict:
        return {"model": self.model, "precision": self.precision, "provider": self.provider,
                "dataset": self.dataset, "n": self.n, "accuracy": self.accuracy, "macro_f1": self.macro_f1,
                "per_class": self.per_class, "labels": self.labels, "confusion": self.confusion,
                "seconds": self.seconds}

    def table(self) -> str:
        lines = [f"model     {self.model} ({self.precision} on {self.provider})",
                 f"dataset   {self.dataset}  n={self.n}",
                 f"accuracy  {self.accuracy:.4f}",
                 f"macro-F1  {self.macro_f1:.4f}",
                 "",
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
    started = time.perf_counter()
    y_true = np.fromiter((label for _, label in items), dtype=np.int64, count=len(items))
    y_pred = np.empty(len(items), dtype=np.int64)
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        crops = np.stack([load_gray(path, model.size) for path, _ in chunk])
        y_pred[start:start + len(chunk)] = model.classify(crops).probabilities.argmax(axis=1)
        if progress:
            progress(start + len(chunk), len(items))
    m = classification_metrics(y_true, y_pred, model.labels)
    report = model.runtime_report
    return EvalReport(model=model.manifest.name, precision=report.precision, provider=report.provider,
                      dataset=str(root), labels=list(model.labels), n=m["n"], accuracy=round(m["accuracy"], 4),
                      macro_f1=round(m["macro_f1"], 4), per_class=m["per_class"], confusion=m["confusion"],
                      seconds=round(time.perf_counter() - started, 2))
