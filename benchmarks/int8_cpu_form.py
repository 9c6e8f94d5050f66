"""INT8 on this CPU: the signed QDQ file (TensorRT's form) against its uint8 CPU form, speed and what each reads.

    python benchmarks/int8_cpu_form.py [--runs 200]

For every shipped INT8 variant and Smart Turn's encoder: the median call time of FP32, the signed INT8 file and its
uint8 CPU form (``models/recipes/int8_cpu_form.py``), timed in alternating rounds on one thread at the batch the
daemon gives it; and how far each INT8 graph's output is from the same graph run unfused (every Q/DQ in float: the
arithmetic the quantized model stands for). Real inputs where the repository has them (the demo's faces, the demo's
speech for the encoder), a fixed random feed otherwise. Writes benchmarks/results/int8_cpu_form.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.config import default_models_dir  # noqa: E402
from appliance.manifest import load_manifest  # noqa: E402

MODELS = default_models_dir() / "onnx"
DEMO = ROOT / "appliance" / "demo" / "short_hamilton_clip.mp4"


def session(path: Path, unfused: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if unfused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def demo_faces(manifest, n: int) -> np.ndarray:
    import cv2

    pre = manifest.preprocessing
    cap = cv2.VideoCapture(str(DEMO))
    crops = []
    while len(crops) < n:
        ok, frame = cap.read()
        if not ok:
            break
        gray = cv2.cvtColor(frame[68:374, 248:554], cv2.COLOR_BGR2GRAY)
        crops.append(cv2.resize(gray, (pre.width, pre.height), interpolation=cv2.INTER_AREA))
    return (np.stack(crops).astype(np.float32) * pre.scale + pre.offset)[:, None]


def demo_speech_mels(n: int) -> np.ndarray:
    from appliance.perception.voice_encoder import encoder_input
    from appliance.sources.audio import SAMPLE_RATE, load_audio_file

    speech = load_audio_file(DEMO.with_suffix(".flac"))
    step = 2 * SAMPLE_RATE
    return np.stack([encoder_input(speech[i * step:(i + 1) * step]) for i in range(n)])


def cases() -> list[dict]:
    """(name, files, input name, real-or-random feed for the deviation, timing batch)."""
    out = []
    for folder in sorted(MODELS.glob("*/manifest.json")):
        manifest = load_manifest(folder.parent)
        int8 = manifest.variant("int8")
        if int8 is None or int8.cpu_form is None or manifest.encoder is not None:
            continue      # the anger head reads the encoder's outputs: measured with the encoder below
        if manifest.preprocessing is not None:
            x, source, batch = demo_faces(manifest, 80), "80 demo face crops", 4
        else:
            x = np.random.default_rng(0).standard_normal((32, *manifest.input_shape)).astype(np.float32)
            source, batch = "32 random inputs", 1
        out.append({"model": manifest.name, "input": manifest.input_name, "x": x, "source": source, "batch": batch,
                    "files": {"fp32": folder.parent / "fp32.onnx", "int8": folder.parent / int8.file,
                              "int8 CPU form": folder.parent / int8.cpu_form.file}})
    anger = load_manifest(MODELS / "voice_anger_encoder")
    encoder = MODELS / "voice_anger_encoder" / anger.encoder.file
    out.append({"model": "Smart Turn encoder (voice_anger_encoder)", "input": anger.encoder.input_name,
                "x": demo_speech_mels(8), "source": "8 demo speech segments of 2 s", "batch": 1,
                "output": anger.encoder.output_name, "files": {"int8 CPU form": encoder}})
    return out


def signed_encoder(path: Path, work: Path) -> Path:
    """The encoder as Smart Turn ships it (uint8 x int8), for the comparison: the CPU form shifted back."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    shifted = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and len(node.input) > 2:
            zero = numpy_helper.to_array(inits[node.input[2]])
            if zero.dtype == np.uint8 and np.all(zero == 128):
                shifted |= {node.input[0], node.input[2]}
    for name in shifted:
        values = numpy_helper.to_array(inits[name]).astype(np.int16) - 128
        inits[name].CopyFrom(numpy_helper.from_array(values.astype(np.int8), name))
    out = work / "encoder_signed.onnx"
    onnx.save(model, str(out))
    return out


def main() -> None:
    import tempfile

    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="timed calls per file (alternating rounds)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni"})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases():
            files = dict(case["files"])
            if "int8" not in files:
                files = {"int8": signed_encoder(files["int8 CPU form"], Path(tmp)), **files}
            sessions = {k: session(p) for k, p in files.items()}
            feed_all = {case["input"]: case["x"]}
            outputs = [case["output"]] if "output" in case else None
            reference = session(files["int8"], unfused=True).run(outputs, feed_all)[0]
            deviation = {}
            for k in ("int8", "int8 CPU form"):
                got = sessions[k].run(outputs, feed_all)[0]
                deviation[k] = {"mean_abs": round(float(np.abs(got - reference).mean()), 5),
                                "max_abs": round(float(np.abs(got - reference).max()), 4)}
            feed = {case["input"]: case["x"][:case["batch"]]}
            times = {k: [] for k in sessions}
            for s in sessions.values():
                for _ in range(10):
                    s.run(outputs, feed)
            for _ in range(args.runs):
                for k, s in sessions.items():
                    t = time.perf_counter()
                    s.run(outputs, feed)
                    times[k].append(time.perf_counter() - t)
            ms = {k: round(1000 * float(np.median(v)), 3) for k, v in times.items()}
            row = {"model": case["model"], "batch": case["batch"], "deviation_input": case["source"],
                   "reference_mean_abs": round(float(np.abs(reference).mean()), 4), "p50_ms": ms,
                   "deviation_from_unfused": deviation}
            rows.append(row)
            print(f"{row['model']}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items())
                  + f"; from unfused: int8 mean {deviation['int8']['mean_abs']}, CPU form mean "
                  f"{deviation['int8 CPU form']['mean_abs']}", flush=True)
    result = {"cpu": cpu, "cores": __import__("os").cpu_count(), "vnni": vnni or "none",
              "onnxruntime": ort.__version__, "runs": args.runs, "threads": 1, "rows": rows,
              "command": "python benchmarks/int8_cpu_form.py"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_cpu_form.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# INT8 on this CPU: the signed file against its uint8 CPU form", "",
             f"{cpu}, {result['cores']} cores, VNNI: {result['vnni']}; onnxruntime {ort.__version__}; one thread, "
             f"median of {args.runs} calls in alternating rounds. Command: `python benchmarks/int8_cpu_form.py`.",
             "", "Deviation: mean (max) absolute difference of the output from the same INT8 graph run unfused "
             "(every quantize / dequantize in float); output = probabilities, or the encoder's pooled embedding.", "",
             "| model | batch | FP32 ms | INT8 signed ms | INT8 CPU form ms | signed: deviation | CPU form: deviation "
             "| deviation measured on |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["deviation_from_unfused"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['p50_ms'].get('fp32', '-')} | {r['p50_ms']['int8']} | "
                     f"{r['p50_ms']['int8 CPU form']} | {d['int8']['mean_abs']} ({d['int8']['max_abs']}) | "
                     f"{d['int8 CPU form']['mean_abs']} ({d['int8 CPU form']['max_abs']}) | {r['deviation_input']} |")
    (args.out / "int8_cpu_form.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'int8_cpu_form.json'} and .md")


if __name__ == "__main__":
    main()
