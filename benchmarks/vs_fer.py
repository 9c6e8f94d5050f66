"""Ours against the `fer` package, per frame, on the same demo frames: each run a process of its own, the two
interleaved, at 1 and 2 threads.

    python -m venv /tmp/fer-venv && /tmp/fer-venv/bin/pip install fer==22.5.1 moviepy==1.0.3 tensorflow-cpu==2.16.2
    python benchmarks/vs_fer.py --fer-python /tmp/fer-venv/bin/python [--rounds 3]

Ours is what the daemon runs per frame: BlazeFace on every third frame with the faces followed between
(``faces.detect_every``), the expression model's own crop and the calibrated expression model (INT8 on the CPU).
`fer` is `FER(mtcnn=False).detect_emotions(frame)`: OpenCV's Haar cascade and its Keras CNN. Both read the 275
frames of the demo in order; the first 10 are warm-up and not timed. Writes benchmarks/results/vs_fer.json, .md and
.png. `fer` stays out of the project's environment (it needs TensorFlow): it runs from the interpreter given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "appliance" / "demo" / "short_hamilton_clip.mp4"
WARM_UP = 10

# The child's frame loop, the same for both: the demo's frames read first, then each timed after WARM_UP.
TIMED = r"""
cap = cv2.VideoCapture(sys.argv[2])
frames = []
while True:
    ok, frame = cap.read()
    if not ok:
        break
    frames.append(frame)
times, faces = [], 0
for i, frame in enumerate(frames):
    t0 = time.perf_counter()
    found = classify(frame)
    if i >= %(warm)d:
        times.append(time.perf_counter() - t0)
        faces += found
result = {"ms_per_frame": 1000 * sum(times) / len(times), "frames": len(times), "faces": faces}
""" % {"warm": WARM_UP}

OURS = r"""
import json, sys, time
threads = int(sys.argv[1])
import cv2
cv2.setNumThreads(threads)
from appliance.config import load_config
from appliance.daemon.assemble import make_face_detector
from appliance.manifest import load_manifest
from appliance.perception.expression import ExpressionModel
from appliance.perception.follow import FaceFollower
cfg = load_config(None, env={"APPLIANCE_RUNTIME__INTRA_OP_THREADS": str(threads)})
detector = FaceFollower(make_face_detector(cfg), cfg.faces.detect_every)
expression = ExpressionModel(load_manifest(cfg.models.dir / "onnx" / cfg.expression.model), cfg.runtime)
def classify(frame):
    boxes = detector(frame).boxes
    return len(expression(expression.crop(frame, boxes)).probabilities)
""" + TIMED + r"""
print(json.dumps(result | {"detections": detector.detections, "precision": expression.report.precision}))
"""

FER = r"""
import json, os, sys, time
threads = int(sys.argv[1])
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import cv2
cv2.setNumThreads(threads)
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
from fer import FER
detector = FER(mtcnn=False)
def classify(frame):
    return len(detector.detect_emotions(frame))
""" + TIMED + r"""
print(json.dumps(result))
"""


def run(python: str, code: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")} | {
        "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([python, "-c", code, str(threads), str(DEMO)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{python} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fer-python", required=True, help="an interpreter with fer installed (see above)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for r in range(args.rounds):
            for name, python, code in (("ours", sys.executable, OURS), ("fer", args.fer_python, FER)):
                result = run(python, code, threads) | {"impl": name, "threads": threads, "round": r + 1}
                rows.append(result)
                print(f"{threads} thread(s), round {r + 1}, {name}: {result['ms_per_frame']:.2f} ms per frame, "
                      f"{result['faces']} faces", flush=True)
    summary = {}
    for threads in sorted({r["threads"] for r in rows}):
        ours = statistics.median(r["ms_per_frame"] for r in rows if r["impl"] == "ours" and r["threads"] == threads)
        fer = statistics.median(r["ms_per_frame"] for r in rows if r["impl"] == "fer" and r["threads"] == threads)
        summary[str(threads)] = {"ours_ms": round(ours, 3), "fer_ms": round(fer, 3), "ratio": round(fer / ours, 2)}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    result = {"machine": f"{cpu}, {os.cpu_count()} cores", "frames": rows[0]["frames"], "rounds": args.rounds,
              "summary": summary, "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_fer.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Per frame against `fer` ({result['machine']})", "",
             f"`python benchmarks/vs_fer.py --fer-python ... --rounds {args.rounds}`: the demo's frames in order "
             f"({result['frames']} timed after {WARM_UP} warm-up), each run its own process, ours and `fer` "
             "interleaved; medians of the rounds.", "",
             "| threads | ours, ms per frame | fer, ms per frame | fer / ours |", "|---|---|---|---|"]
    lines += [f"| {t} | {s['ours_ms']:.2f} | {s['fer_ms']:.2f} | **{s['ratio']:.1f}x** |" for t, s in summary.items()]
    faces = {name: [r["faces"] for r in rows if r["impl"] == name][0] for name in ("ours", "fer")}
    lines += ["", f"Faces classified over the timed frames: ours {faces['ours']}, fer {faces['fer']} (its Haar cascade "
              "misses the speaker on many frames; a frame without a face costs `fer` only its detector)."]
    (args.out / "vs_fer.md").write_text("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    labels = list(summary)
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [summary[t]["ours_ms"] for t in labels], 0.4, label="ours")
    ax.bar([i + 0.2 for i in x], [summary[t]["fer_ms"] for t in labels], 0.4, label="fer")
    ax.set_xticks(list(x), [f"{t} thread{'s' if t != '1' else ''}" for t in labels])
    ax.set_ylabel("ms per frame")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "vs_fer.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
