"""Where BlazeFace's box sits on a FER2013 face, and how much it wanders on video: the runtime crop's margin and the
jitter the face-expression recipe trains with come from these figures, not from habit.

    python benchmarks/crop_geometry.py [--data ../shared/data] [--faces 3000]

1. FER2013 faces (train split only, a seeded sample): each 48x48 face is enlarged 4x and set on a mid-gray canvas
   three times its size, the daemon's detector runs on it, and the box is expressed in face-crop units. The margin
   per side that makes the runtime's square crop frame a face as FER2013 does is ``(1 / side - 1) / 2``; the spread
   of the side and of the centre offset is how far FER2013's own framing varies around BlazeFace's.
2. Labelled clips and the demo video: the box on consecutive frames of one face, as relative change of side and
   centre (in box sides): the jitter a live crop adds on top.

Writes benchmarks/results/crop_geometry.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.config import AppConfig  # noqa: E402
from appliance.perception.faces import FaceDetector  # noqa: E402
from appliance.daemon.assemble import face_detector_path  # noqa: E402

UPSCALE = 4
CANVAS = 3


def fer_geometry(data: Path, detector: FaceDetector, n: int, seed: int) -> dict:
    import cv2

    with open(data / "faces" / "fer2013_index.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    sides, dx, dy, aspect, missed = [], [], [], [], 0
    face_px = 48 * UPSCALE
    for i in pick:
        gray = cv2.imread(str(data / "faces" / rows[i]["path"]), cv2.IMREAD_GRAYSCALE)
        big = cv2.resize(gray, (face_px, face_px), interpolation=cv2.INTER_CUBIC)
        canvas = np.full((face_px * CANVAS, face_px * CANVAS), 128, np.uint8)
        o = face_px * (CANVAS - 1) // 2
        canvas[o:o + face_px, o:o + face_px] = big
        found = detector.detect(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)).boxes
        if not found:
            missed += 1
            continue
        b = found[0]
        side = max(b.w, b.h) / face_px
        sides.append(side)
        dx.append((b.x + b.w / 2 - o - face_px / 2) / face_px)
        dy.append((b.y + b.h / 2 - o - face_px / 2) / face_px)
        aspect.append(b.h / b.w)
    sides, dx, dy = np.array(sides), np.array(dx), np.array(dy)
    margins = (1 / sides - 1) / 2
    return {
        "faces": int(len(pick)), "detected": int(len(sides)), "missed": missed,
        "box_side_in_face_units": _summary(sides),
        "implied_margin_per_side": _summary(margins),
        "centre_offset_x_in_face_units": _summary(dx),
        "centre_offset_y_in_face_units": _summary(dy),
        "box_aspect_h_over_w": _summary(np.array(aspect)),
        "log_side_std": round(float(np.std(np.log(sides))), 4),
    }


def video_jitter(path: Path, detector: FaceDetector, max_frames: int = 300) -> dict | None:
    import cv2

    cap = cv2.VideoCapture(str(path))
    boxes = []
    while len(boxes) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        found = detector.detect(frame).boxes
        boxes.append(found[0] if found else None)
    cap.release()
    pairs = [(a, b) for a, b in zip(boxes, boxes[1:]) if a is not None and b is not None]
    if not pairs:
        return None
    side = np.array([np.log(max(b.w, b.h) / max(a.w, a.h)) for a, b in pairs])
    centre = np.array([np.hypot(b.x + b.w / 2 - a.x - a.w / 2, b.y + b.h / 2 - a.y - a.h / 2) / max(a.w, a.h)
                       for a, b in pairs])
    seen = [b for b in boxes if b is not None]
    return {"frames": len(boxes), "with_face": len(seen),
            "box_side_px_median": float(np.median([max(b.w, b.h) for b in seen])),
            "frame_to_frame_log_side_std": round(float(np.std(side)), 4),
            "frame_to_frame_centre_shift_p95_in_sides": round(float(np.percentile(centre, 95)), 4)}


def _summary(x: np.ndarray) -> dict:
    q = np.percentile(x, [5, 25, 50, 75, 95])
    return {"mean": round(float(x.mean()), 4), "std": round(float(x.std()), 4),
            **{f"p{p}": round(float(v), 4) for p, v in zip((5, 25, 50, 75, 95), q)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--faces", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "crop_geometry")
    args = parser.parse_args()
    if not (args.data / "faces" / "fer2013_index.csv").is_file():
        raise SystemExit(f"{args.data}: no faces/fer2013_index.csv (see ../shared/data/README.md)")
    cfg = AppConfig()
    with FaceDetector(face_detector_path(cfg), cfg.faces.score_threshold, 1, 1) as detector:
        print(f"FER2013 train: {args.faces} faces ...", file=sys.stderr, flush=True)
        fer = fer_geometry(args.data, detector, args.faces, args.seed)
        videos = {}
        clips = sorted((args.data / "video" / "emotion").glob("*/*.mp4")) + [args.data / "video" /
                                                                            "short_hamilton_clip.mp4"]
        for clip in clips:
            if clip.is_file():
                print(f"  {clip.name}", file=sys.stderr, flush=True)
                videos[clip.name] = video_jitter(clip, detector)
    result = {"command": "python benchmarks/crop_geometry.py --faces %d" % args.faces, "fer2013_train": fer,
              "videos": videos}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = fer["implied_margin_per_side"]
    lines = ["# Crop geometry: BlazeFace's box on FER2013 faces and on video", "",
             f"`{result['command']}`", "",
             f"FER2013 train sample: {fer['detected']} of {fer['faces']} faces detected.", "",
             "| figure | p5 | p25 | median | p75 | p95 |", "|---|---|---|---|---|---|"]
    for key in ("box_side_in_face_units", "implied_margin_per_side", "centre_offset_x_in_face_units",
                "centre_offset_y_in_face_units", "box_aspect_h_over_w"):
        s = fer[key]
        lines.append(f"| {key.replace('_', ' ')} | {s['p5']} | {s['p25']} | {s['p50']} | {s['p75']} | {s['p95']} |")
    lines += ["", f"Margin per side that frames a face as FER2013 does: median {m['p50']} (IQR {m['p25']}-{m['p75']}).",
              "", "| video | frames | with face | box side px | frame-to-frame log-side std | centre shift p95 (sides) |",
              "|---|---|---|---|---|---|"]
    for name, v in videos.items():
        if v:
            lines.append(f"| {name} | {v['frames']} | {v['with_face']} | {v['box_side_px_median']:.0f} | "
                         f"{v['frame_to_frame_log_side_std']} | {v['frame_to_frame_centre_shift_p95_in_sides']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
