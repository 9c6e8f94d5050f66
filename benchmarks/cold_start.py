"""Cold start: from a new process to the first classified face, and where the time goes.

    python benchmarks/cold_start.py [--runs 5]

Each run is a fresh Python process that builds the daemon as ``appliance run`` does (config, imports, models,
warm-up, sources, outbox, embedded broker) and stops at the first tick whose faces were classified. The camera plays
the demo from its frame 90 (its first frames show no face: that would time the recording, not the daemon), written
to a temporary file; the microphone the demo's soundtrack. The parent times the whole, from spawn; the child reports
its phases. Writes benchmarks/results/cold_start.json and .md (median of the runs; the first run is reported apart,
since it may read files from disk rather than the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "appliance" / "demo" / "short_hamilton_clip.mp4"

CHILD = r"""
import time
t0 = time.perf_counter()
import json, sys
marks = {}
def mark(name):
    marks[name] = time.perf_counter() - t0
from appliance.config import load_config
mark("config imported")
from appliance.daemon.pipeline import Pipeline
mark("daemon imported")
cfg = load_config(None, env={"APPLIANCE_STATE__DIR": sys.argv[1], "APPLIANCE_MQTT__EMBEDDED_PORT": "0",
                             "APPLIANCE_LOG__LEVEL": "WARNING", "APPLIANCE_CAMERA__SOURCE": sys.argv[2],
                             "APPLIANCE_AUDIO__SOURCE": sys.argv[3]} | json.loads(sys.argv[4]))
pipeline = Pipeline(cfg)
mark("models loaded")

class FirstFace:
    def __init__(self, model):
        self.model = model
    def __getattr__(self, name):
        return getattr(self.model, name)
    def __call__(self, crops):
        out = self.model(crops)
        if len(crops) and "first face" not in marks:
            mark("first face")
            pipeline.stop()
        return out

vision = next(s for s in pipeline.parts.stages if type(s).__name__ == "Vision")
vision.expression = FirstFace(vision.expression)
warm = pipeline.warm_up
def timed_warm_up():
    mark("start")
    s = warm()
    mark("warmed up")
    return s
pipeline.warm_up = timed_warm_up
start = pipeline._start
def timed_start():
    start()
    mark("broker, outbox writer, sources started")
pipeline._start = timed_start
pipeline.run(30)
print(json.dumps({"marks": marks, "wall_at_first_face": time.time() - (time.perf_counter() - t0 - marks.get("first face", 0))
                  if "first face" in marks else None, "perf_at_first_face": marks.get("first face")}))
"""


def face_first_clip(path: Path, start: int = 90, frames: int = 120) -> Path:
    import cv2

    cap = cv2.VideoCapture(str(DEMO))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    fps = cap.get(cv2.CAP_PROP_FPS)
    out = None
    for _ in range(frames):
        ok, frame = cap.read()
        if not ok:
            break
        if out is None:
            out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1])
        out.write(frame)
    cap.release()
    out.release()
    return path


def one_run(clip: Path, settings: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="appliance-cold-") as state:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")} | {"PYTHONUNBUFFERED": "1"}
        spawned = time.time()
        proc = subprocess.run([sys.executable, "-c", CHILD, state, str(clip), str(DEMO.with_suffix(".flac")),
                               json.dumps(settings)],
                              capture_output=True, text=True, env=env, timeout=120, cwd=state)
        ended = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"the child failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    marks = child["marks"]
    # The child's clock starts after the interpreter came up: what came before is the parent's spawn-to-t0.
    interpreter = (child["wall_at_first_face"] - spawned) - marks["first face"]
    return {"to_first_face_s": round(child["wall_at_first_face"] - spawned, 3), "interpreter_s": round(interpreter, 3),
            "marks": {k: round(v, 3) for k, v in marks.items()}, "process_s": round(ended - spawned, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="cold_start")
    parser.add_argument("--set", action="append", default=[], metavar="APPLIANCE_KEY=VALUE",
                        help="a config setting for the daemon, as its environment variable (repeatable), e.g. "
                             "APPLIANCE_VOICE__ANGER_MODEL= for the tone model's anger head")
    args = parser.parse_args()
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("APPLIANCE_"):
            parser.error(f"--set {item!r}: expected APPLIANCE_KEY=VALUE")
        settings[key] = value
    runs = []
    work = Path(tempfile.mkdtemp(prefix="appliance-cold-clip-"))
    clip = face_first_clip(work / "face_first.mp4")
    for i in range(args.runs):
        runs.append(one_run(clip, settings))
        print(f"run {i + 1}: first face after {runs[-1]['to_first_face_s']:.3f} s", flush=True)
    warm = runs[1:] or runs
    median = {"to_first_face_s": statistics.median(r["to_first_face_s"] for r in warm)}
    steps = {}
    for r in warm:
        last = r["interpreter_s"]
        steps.setdefault("interpreter", []).append(r["interpreter_s"])
        for name, at in r["marks"].items():
            steps.setdefault(name, []).append(r["interpreter_s"] + at - last)
            last = r["interpreter_s"] + at
    median["steps_s"] = {k: round(statistics.median(v), 3) for k, v in steps.items()}
    result = {"runs": runs, "median_after_the_first": median, "machine": os.uname().machine,
              "python": sys.version.split()[0]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Cold start to the first classified face ({args.name})", "",
             f"`python benchmarks/cold_start.py --runs {args.runs}"
             + "".join(f" --set {k}={v}" for k, v in settings.items())
             + "`: a new process builds the daemon on the demo "
             f"(from its frame 90, where a face is in view) and stops at the first tick whose faces were "
             f"classified. Median of runs 2-{args.runs} (run 1: "
             f"{runs[0]['to_first_face_s']:.3f} s).", "",
             f"**{median['to_first_face_s']:.3f} s** from spawn to the first classified face.", "",
             "| step (ends at) | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in median["steps_s"].items()]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
