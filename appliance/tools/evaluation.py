"""Labelled datasets read and a classifier run over them: face folders, the FER+ index, speech indexes; the
figures themselves are computed by ``metrics``."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from appliance.tools.metrics import EvalReport, classification_metrics, expected_calibration_error, roc_auc

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


class DatasetError(ValueError):
    pass


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


def reframe(image: np.ndarray, scale: float) -> np.ndarray:
    """The same face framed ``scale`` times as wide about its centre, at the same size: below 1 a tighter crop
    (part of the face cut off, the rest enlarged), above 1 a looser one, the border pixels repeated where the
    image ends (a FER2013 face has nothing around it)."""
    import cv2

    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Maps output pixels to input pixels: a side of `scale` x the input shown on the output's side.
    m = np.array([[scale, 0.0, cx - scale * cx], [0.0, scale, cy - scale * cy]])
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def stderr_progress(label: str) -> Callable[[int, int], None]:
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 0.5:
            last[0] = now
            end = "\n" if done == total else ""
            print(f"\r{label}: {done}/{total} ({100 * done / total:.0f}%)", end=end, file=sys.stderr, flush=True)

    return report


def evaluate_faces(root: Path, model, batch: int = 256, progress: Callable[[int, int], None] | None = None,
                   crop_scale: float = 1.0) -> EvalReport:
    """Run an ExpressionModel over a labelled face folder (faces already cropped, as FER2013 ships them), each
    re-framed by ``crop_scale`` (``reframe``)."""
    items = list_face_folder(root, model.labels)
    y_true = np.fromiter((label for _, label in items), dtype=np.int64, count=len(items))
    return _face_report(model, [path for path, _ in items], y_true, str(root), "folder names", batch, progress,
                        crop_scale)


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
                     progress: Callable[[int, int], None] | None = None, crop_scale: float = 1.0) -> EvalReport:
    """The expression model against the FER+ crowd majority (10 voters per face), and the same predictions
    against FER2013's single label, on one split of a FER+ index. Faces whose majority is not one of the model's
    labels (contempt, unknown, not a face, a tie) are left out and counted."""
    paths, y_true, extra = list_ferplus_index(index, model.labels, split)
    report = _face_report(model, paths, y_true, f"{index} split={split}", "FER+ crowd majority", batch, progress,
                          crop_scale)
    fer2013 = extra["fer2013"]
    agree = fer2013 >= 0
    report.also = {"fer2013_label_accuracy": round(float((report.predictions[agree] == fer2013[agree]).mean()), 4),
                   "left_out": ", ".join(f"{k} {v}" for k, v in extra["left_out"].items()) or "none"}
    return report


def _face_report(model, paths: list[Path], y_true: np.ndarray, dataset: str, label_set: str, batch: int,
                 progress: Callable[[int, int], None] | None, crop_scale: float = 1.0) -> EvalReport:
    started = time.perf_counter()
    # A model that reads a face as it is on one tick and mirrored on the next is scored as the window reads a face
    # followed over two ticks: both views' calibrated probabilities averaged.
    views = (False, True) if getattr(model, "views", 1) == 2 else (False,)
    raw = np.empty((len(views), len(paths), len(model.labels)), dtype=np.float32)
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        crops = np.stack([reframe(load_gray(path, model.size), crop_scale) for path in chunk])
        for view, mirrored in enumerate(views):
            raw[view, start:start + len(chunk)] = model.classify(crops, False, mirrored=mirrored).probabilities
        if progress:
            progress(start + len(chunk), len(paths))
    probs = np.mean([model.calibrate(r) for r in raw], axis=0)
    raw = raw.mean(axis=0)
    y_pred = probs.argmax(axis=1)
    m = classification_metrics(y_true, y_pred, model.labels)
    report = model.runtime_report
    if crop_scale != 1.0:
        dataset += f" crop-scale={crop_scale:g}"
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
# nEMO (Polish) and ASED (Amharic), with a sex column: read where speakers are chosen by name (sessions), not by the
# default voice evaluation, whose figures stay comparable with earlier reports.
MORE_SPEECH_INDEXES = SPEECH_INDEXES + ("index_langs.csv",)


def speech_rows(root: Path, columns: set[str], index: Path | None = None,
                where: dict[str, set[str]] | None = None, names: Sequence[str] = SPEECH_INDEXES) -> list[dict]:
    """Rows of ``index``, or of every ``names`` file under ``root`` that exists; ``where`` as in read_index."""
    root = Path(root)
    files = [Path(index)] if index else [root / name for name in names if (root / name).is_file()]
    if not files:
        raise DatasetError(f"{root}: no {' or '.join(names)} (columns {', '.join(sorted(columns))})")
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
                   progress: Callable[[int, int], None] | None = None, room=None) -> EvalReport:
    """Score whole clips with a VoiceToneModel: mean probabilities over 2 s windows (the daemon's segment).
    ``room`` (``appliance.tools.room.Room``) plays each clip in that room first."""
    from appliance.sources.audio import load_audio_file

    items = list_voice_index(root, model.labels, index, where)
    started = time.perf_counter()
    y_true = np.array([label for _, label in items], dtype=np.int64)
    probs = np.empty((len(items), len(model.labels)), dtype=np.float64)
    anger = np.empty(len(items), dtype=np.float64)
    for i, (path, _) in enumerate(items):
        audio = load_audio_file(path)
        clip = model.classify_clip(room.apply(audio, Path(path).relative_to(root).as_posix()) if room else audio)
        probs[i], anger[i] = clip.probabilities[0], clip.anger[0]
        if progress:
            progress(i + 1, len(items))
    y_pred = probs.argmax(axis=1)
    m = classification_metrics(y_true, y_pred, model.labels)
    angry = model.labels.index("angry") if "angry" in model.labels else None
    report = model.runtime_report
    # Sorted, so the same filter reads the same in every saved report (a set's order changes between runs).
    subset = "; ".join(f"{k}={','.join(sorted(v))}" for k, v in sorted((where or {}).items()))
    name = model.manifest.name + (f" (anger: {model.anger_model.manifest.name} {model.anger_model.report.precision})"
                                  if model.anger_model else "")
    return EvalReport(model=name, precision=report.precision, provider=report.provider,
                      dataset=str(root) + (f" where {subset}" if subset else "")
                      + (f" in a room: {room.label}" if room else ""), labels=list(model.labels), n=m["n"],
                      accuracy=round(m["accuracy"], 4), macro_f1=round(m["macro_f1"], 4),
                      per_class=m["per_class"], confusion=m["confusion"],
                      seconds=round(time.perf_counter() - started, 2),
                      angry_auc=None if angry is None else roc_auc(anger, y_true == angry),
                      classifier_angry_auc=None if angry is None or model.head is None
                      else roc_auc(probs[:, angry], y_true == angry))
