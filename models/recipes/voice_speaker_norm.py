"""Study: candidate (c) of issue 22 as a unit could run it, speakers told apart by a speaker encoder.

    python models/recipes/voice_speaker_norm.py [--data ../shared/data] [--device cpu|cuda]   # ~40 min, 2 cores

``voice_smart_turn.py`` found that a head reading each clip as a deviation from its *speaker's* earlier clips hears
anger in unheard languages far better ("mlp, per speaker, causal": nEMO 0.923, ASED 0.949) than one reading the
clip alone, but it was told who spoke. A unit is not. Here it finds out the way it could on the device:

- **Speaker encoder**: Resemblyzer's GE2E voice encoder (``resemblyzer==0.1.4`` wheel, member
  ``resemblyzer/pretrained.pt``, Apache-2.0, pinned sha256; a 3-layer LSTM over 40 mel bands, 256-d embedding),
  taken from the wheel with ``pip download`` once into ``--work``; its mel front end re-written here in numpy (no
  librosa) and its weights run in torch (this study only). Embedding of a clip: the mean of its 1.6 s partials.
- **Who spoke, online**: each unit (a corpus) hears its clips as a stream; a clip joins the nearest earlier voice
  (cosine similarity to the running mean of that voice's embeddings) when it is at least ``tau`` alike, or starts
  a new one. ``tau`` is chosen per fold on the training speakers of the other corpora (B-cubed F1 against the true
  speakers), never on the corpus scored. Nothing but running sums is kept per voice.
- **Normalisation**: every clip's features (the Smart Turn layers and today's prosody and CNN logit, as in
  ``voice_smart_turn.py``) z-scored by the statistics of the clips its voice said *before* it, shrunk toward the
  training population by 5 pseudo-clips; then the same MLP, leave one corpus out.

Orders a unit hears a corpus in: *kiosk*, speakers one after another (each speaker's clips shuffled), as customers
come to a counter; *mixed*, every clip shuffled, all speakers interleaved (the hard case for telling voices apart);
*angry first*, as kiosk but each speaker's angry clips before the rest: the customer who walks in angry, whose
anger a speaker's own running statistics would soon take for their usual. Heads are fitted on the training
speakers normalised in kiosk order and scored on the held-out corpus in each order. Rows: no normalisation; the
unit's one running statistic; the true speaker (what ``voice_smart_turn.py`` measured, but causal in the stream);
the voice the encoder found. Results: ``benchmarks/results/voice_speaker_norm/`` (``loco.json``, ``README.md``).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.recipes.voice_loco import CORPORA, NEMO_VAL, ased_val, figures, index_rows, segments  # noqa: E402
from models.recipes.voice_smart_turn import (clip_means, clip_weights, encoder_features, fit,  # noqa: E402
                                             fit_predict, predict)
from models.recipes.voice_tone_cnn import VAL_SPEAKERS  # noqa: E402

WHEEL = "resemblyzer==0.1.4"
WEIGHTS_MEMBER = "resemblyzer/pretrained.pt"
WEIGHTS_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
RATE = 16000
N_FFT, HOP, N_MELS = 400, 160, 40          # Resemblyzer's 25 ms window, 10 ms step, 40 bands
PARTIAL = 160                              # frames in a partial utterance (1.6 s)
PARTIALS_PER_S = 1.3
LEVEL_DBFS = -30.0                         # Resemblyzer raises quiet clips to this (never lowers)
PRIOR = 5
TAUS = np.round(np.arange(0.55, 0.851, 0.025), 3)
SEED = 20261203
ORDERS = ("kiosk", "mixed", "angry first")
UNHEARD = ("emovo", "turev", "nemo", "ased")
NORMS = ("per unit", "per true speaker", "per found voice")


def mel_filters() -> np.ndarray:
    """Slaney-style mel filter bank (librosa's default), (N_MELS, N_FFT // 2 + 1)."""
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, float)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(RATE / 2), N_MELS + 2))
    fft_f = np.linspace(0, RATE / 2, N_FFT // 2 + 1)
    fdiff, ramps = np.diff(mel_f), mel_f[:, None] - fft_f[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def mel_power(audio: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """(frames, N_MELS) power mel spectrogram, centred frames with zero padding (librosa's melspectrogram)."""
    padded = np.pad(audio, N_FFT // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)      # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return (power @ filters.T).astype(np.float32)


def partials(audio: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """(n, PARTIAL, N_MELS): Resemblyzer's partial utterances of one clip (rate 1.3/s, last kept if 3/4 covered)."""
    rms2 = float(np.mean(audio.astype(np.float64) ** 2)) + 1e-12
    change = LEVEL_DBFS - 10 * np.log10(rms2)
    if change > 0:
        audio = audio * 10 ** (change / 20)
    n_frames = int(np.ceil((len(audio) + 1) / HOP))
    step = int(round(RATE / PARTIALS_PER_S / HOP))
    starts = list(range(0, max(1, n_frames - PARTIAL + step + 1), step))
    coverage = (len(audio) - starts[-1] * HOP) / (PARTIAL * HOP)
    if coverage < 0.75 and len(starts) > 1:
        starts = starts[:-1]
    need = (starts[-1] + PARTIAL) * HOP
    audio = np.pad(audio, (0, max(0, need - len(audio))))
    mel = mel_power(audio.astype(np.float64), filters)
    return np.stack([mel[s:s + PARTIAL] for s in starts])


def speaker_encoder(work: Path):
    """Resemblyzer's LSTM with its pinned weights (taken from the wheel once, cached)."""
    import torch

    from models.recipes.recipe_tools import files_from_wheel

    weights = work / "resemblyzer_pretrained.pt"
    if not weights.is_file():
        print(f"fetching {WHEEL} (pip download --no-deps, ~16 MB)", flush=True)
        files = files_from_wheel(WHEEL, {WEIGHTS_MEMBER: WEIGHTS_SHA256})
        work.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(files[WEIGHTS_MEMBER])
        (work / "RESEMBLYZER_LICENSE").write_bytes(files["LICENSE"])

    class VoiceEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(N_MELS, 256, 3, batch_first=True)
            self.linear = torch.nn.Linear(256, 256)

        def forward(self, mels):
            _, (hidden, _) = self.lstm(mels)
            e = torch.relu(self.linear(hidden[-1]))
            return e / torch.norm(e, dim=1, keepdim=True)

    net = VoiceEncoder()
    state = torch.load(io.BytesIO(weights.read_bytes()), map_location="cpu")["model_state"]
    net.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})
    return net.eval()


def speaker_embeddings(data: Path, work: Path, rows: list[dict]) -> np.ndarray:
    """(clips, 256) L2-normed clip embeddings (cached)."""
    import torch

    from appliance.sources.audio import load_audio_file

    cache = work / f"speaker_{len(rows)}.npy"
    if cache.is_file():
        return np.load(cache)
    net, filters = speaker_encoder(work), mel_filters()
    out = np.zeros((len(rows), 256), np.float32)
    started = time.time()
    with torch.no_grad():
        for i, r in enumerate(rows):
            e = net(torch.from_numpy(partials(load_audio_file(data / "speech" / r["path"]), filters))).numpy()
            m = e.mean(axis=0)
            out[i] = m / np.linalg.norm(m)
            if (i + 1) % 1000 == 0:
                print(f"  speaker embeddings {i + 1}/{len(rows)}, {time.time() - started:.0f} s", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    np.save(cache, out)
    return out


def stream(corpus: np.ndarray, speaker: np.ndarray, kind: str, angry: np.ndarray, seed: int = SEED) \
        -> dict[str, np.ndarray]:
    """Each corpus's clip indices in the order its unit hears them (``ORDERS``)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in np.unique(corpus):
        mine = np.flatnonzero(corpus == c)
        if kind == "mixed":
            out[c] = rng.permutation(mine)
            continue
        parts = []
        for s in rng.permutation(np.unique(speaker[mine])):
            clips = rng.permutation(mine[speaker[mine] == s])
            if kind == "angry first":                       # the customer who walks in angry
                clips = np.concatenate([clips[angry[clips] > 0], clips[angry[clips] == 0]])
            parts.append(clips)
        out[c] = np.concatenate(parts)
    return out


def online_voices(emb: np.ndarray, order: np.ndarray, tau: float) -> np.ndarray:
    """Voice id per clip of ``order`` (aligned with ``order``): the nearest earlier voice if at least ``tau`` alike,
    else a new one."""
    sums = np.zeros((len(order), emb.shape[1]))
    norms = np.ones(len(order))
    out = np.empty(len(order), int)
    n = 0
    for i, c in enumerate(order):
        if n:
            sims = (sums[:n] @ emb[c]) / norms[:n]
            j = int(np.argmax(sims))
            if sims[j] >= tau:
                sums[j] += emb[c]
                norms[j] = np.linalg.norm(sums[j])
                out[i] = j
                continue
        sums[n] = emb[c]
        out[i], n = n, n + 1
    return out


def bcubed(voice: np.ndarray, speaker: np.ndarray) -> tuple[float, float]:
    """B-cubed precision and recall of found voices against true speakers."""
    _, v = np.unique(voice, return_inverse=True)
    _, s = np.unique(speaker, return_inverse=True)
    table = np.zeros((v.max() + 1, s.max() + 1))
    np.add.at(table, (v, s), 1)
    both = table[v, s]
    return float(np.mean(both / table.sum(axis=1)[v])), float(np.mean(both / table.sum(axis=0)[s]))


def running_zscore(x: np.ndarray, order: np.ndarray, who: np.ndarray, mean0: np.ndarray, sq0: np.ndarray,
                   out: np.ndarray) -> None:
    """Clips of ``order`` z-scored by their ``who``'s earlier clips, shrunk toward (mean0, sq0) by PRIOR clips."""
    stats: dict[int, list] = {}
    for c, k in zip(order, who):
        n, total, sq = stats.get(k, (PRIOR, PRIOR * mean0, PRIOR * sq0))
        mean = total / n
        out[c] = (x[c] - mean) / np.sqrt(np.maximum(sq / n - mean ** 2, 1e-12))
        stats[k] = (n + 1, total + x[c], sq + x[c] ** 2)


def choose_tau(emb, streams, speaker, corpora, train) -> tuple[float, float]:
    """The tau with the best B-cubed F1 over the training speakers' clips of ``corpora``."""
    best = (0.0, -1.0)
    for tau in TAUS:
        f1s = []
        for c in corpora:
            order = streams[c][train[streams[c]]]
            p, r = bcubed(online_voices(emb, order, tau), speaker[order])
            f1s.append(2 * p * r / (p + r))
        if np.mean(f1s) > best[1]:
            best = (float(tau), float(np.mean(f1s)))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "voice_speaker_norm")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "voice_speaker_norm")
    parser.add_argument("--smart-turn-work", type=Path, default=ROOT / ".cache" / "voice_smart_turn")
    parser.add_argument("--loco-work", type=Path, default=ROOT / ".cache" / "voice_loco")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--held", nargs="+", default=list(UNHEARD), choices=CORPORA,
                        help="corpora to leave out, one at a time (default: the four no voice model trained on)")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)

    rows = index_rows(args.data)
    emb = speaker_embeddings(args.data, args.work, rows)
    enc = encoder_features(args.data, args.smart_turn_work, rows, args.threads)
    seg = segments(args.data, args.loco_work)
    assert len(seg["label"]) == len(rows), "voice_loco's cache holds another index"
    x = np.hstack([enc, clip_means(seg, len(rows))]).astype(np.float64)
    corpus, speaker = seg["corpus"], seg["speaker"]
    y = (seg["label"] == "angry").astype(float)
    val = set(VAL_SPEAKERS) | NEMO_VAL | ased_val(speaker)
    train = ~np.isin(speaker, sorted(val))

    streams = {k: stream(corpus, speaker, k, y) for k in ORDERS}
    results = {"speaker_encoder": {"wheel": WHEEL, "member": WEIGHTS_MEMBER, "sha256": WEIGHTS_SHA256,
                                   "licence": "Apache-2.0"},
               "prior_clips": PRIOR, "validation_speakers": sorted(val), "voices": {}, "heads": {"none": {}}}
    started = time.time()
    for held in args.held:
        fitted = train & (corpus != held)
        others = [c for c in CORPORA if c != held]
        mean0, sq0 = x[fitted].mean(axis=0), (x[fitted] ** 2).mean(axis=0)
        mine = corpus == held
        weights = clip_weights(corpus[fitted], y[fitted])
        plain = fit_predict(x[fitted], y[fitted], weights, x[mine], "mlp", args.device)
        results["heads"]["none"][held] = figures(plain, y[mine] > 0)
        for norm in NORMS:
            views = {}
            for order in ORDERS:
                out = np.empty_like(x)
                tau = choose_tau(emb, streams[order], speaker, others, train) if norm == "per found voice" else None
                for c in CORPORA:
                    seq = streams[order][c]
                    if norm == "per unit":
                        who = np.zeros(len(seq), int)
                    elif norm == "per true speaker":
                        who = np.unique(speaker[seq], return_inverse=True)[1]
                    else:
                        who = online_voices(emb, seq, tau[0])
                        if c == held:   # how well the voices were told apart in the corpus scored
                            bp, br = bcubed(who, speaker[seq])
                            results["voices"].setdefault(order, {})[held] = {
                                "tau": tau[0], "tau_f1_on_other_corpora": round(tau[1], 4),
                                "voices": int(who.max() + 1), "speakers": int(len(np.unique(speaker[seq]))),
                                "bcubed_precision": round(bp, 4), "bcubed_recall": round(br, 4)}
                    running_zscore(x, seq, who, mean0, sq0, out)
                views[order] = out
            # Fitted on the training speakers as a kiosk hears them; scored on the held-out corpus in each order.
            model = fit(views["kiosk"][fitted], y[fitted], weights, "mlp", 1, args.device)
            for order, v in views.items():
                results["heads"].setdefault(f"{norm}, {order}", {})[held] = figures(predict(model, v[mine]),
                                                                                  y[mine] > 0)
        print(f"{held} ({time.time() - started:.0f} s): " + "  ".join(
            f"{n} {per[held]['auc']:.3f}" for n, per in results["heads"].items()), flush=True)
        print(f"  voices found in {held}: " + "; ".join(f"{o} {results['voices'][o][held]}" for o in ORDERS),
              flush=True)

    args.log.mkdir(parents=True, exist_ok=True)
    (args.log / "loco.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.log / "README.md").write_text(markdown(results))
    print(f"wrote {args.log}/loco.json and README.md")


def markdown(results: dict) -> str:
    held = list(results["heads"]["none"])
    lines = ["# Anger heard against the speaker's own voice, speakers found by a speaker encoder (issue 22, "
             "candidate (c))", "",
             "Written by `python models/recipes/voice_speaker_norm.py` (method in its docstring). Leave one corpus "
             "out: the MLP on the frozen Smart Turn layers plus today's prosody and CNN logit, refit on the "
             "training speakers of the other five corpora, scored per clip on the whole held-out corpus. Recall at "
             "P0.80: the best recall at precision 0.80 on the corpus (a threshold set on it, so an upper bound).", "",
             "| normalisation, order heard | " + " | ".join(f"{c} AUC / recall at P0.80" for c in held) + " |",
             "|---" * (len(held) + 1) + "|"]
    for name, per in results["heads"].items():
        cells = [f"{per[c]['auc']:.3f} / {per[c]['recall_at_precision_0.80']:.2f}" for c in held]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Voices the unit found in the corpus it was scored on (tau chosen on the other five corpora):", "",
              "| order heard | " + " | ".join(held) + " |", "|---" * (len(held) + 1) + "|"]
    for kind, per in results["voices"].items():
        cells = [f"tau {per[c]['tau']}: {per[c]['voices']} voices for {per[c]['speakers']} speakers, B3 P "
                 f"{per[c]['bcubed_precision']:.2f} R {per[c]['bcubed_recall']:.2f}" for c in held]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
