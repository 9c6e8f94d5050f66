"""What an evaluation reports: accuracy, macro-F1, per-class recall/precision, the confusion matrix, calibration
error (ECE) and ROC AUC, as a report with a table, a JSON form and a confusion-matrix image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


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
    angry_auc: float | None = None        # angry vs the rest, ranked by the P(angry) the anger index reads (voice)
    classifier_angry_auc: float | None = None   # the same by the classifier's angry output, where a head differs

    def as_dict(self) -> dict:
        out = {"model": self.model, "precision": self.precision, "provider": self.provider,
               "dataset": self.dataset, "label_set": self.label_set, "n": self.n, "accuracy": self.accuracy,
               "macro_f1": self.macro_f1, "per_class": self.per_class, "labels": self.labels,
               "confusion": self.confusion, "seconds": self.seconds}
        if self.ece is not None:
            out |= {"ece_15": self.ece, "ece_15_uncalibrated": self.ece_uncalibrated}
        if self.angry_auc is not None:
            out["angry_auc"] = self.angry_auc
        if self.classifier_angry_auc is not None:
            out["classifier_angry_auc"] = self.classifier_angry_auc
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
