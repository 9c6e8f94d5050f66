"""Study: the shipped anger head (mlp+frames) trained on its training speech in rooms too (issue 22).

    python models/recipes/voice_room_train.py [--seed 2] [--threads 2] [--device cpu|cuda]
        # on 2 cores: ~30 min to play every training clip in a room once and run the tone CNN, prosody and the
        # encoder over it (resumable), then ~8 min per fit (4 corpora left out + all)

Every corpus here is close-miked; ``voice_rooms.py`` measures what a room does to the shipped head. Here each
training-speaker clip gets one copy in a random room (``training_room``: reverberation with RT60 0.2-1.2 s and DRR
-3-12 dB 80% of the time, noise at SNR 0-25 dB 80% of the time: pink noise or a babble of *other* speakers than
``voice_rooms``' -- RAVDESS actors 9-16 and TESS's two). Its segments go through what the daemon computes (the tone
CNN's P(angry), the prosodic functionals, the encoder's embedding and frames), and both members of the shipped head
are refitted on the clean segments and these together, with the same schedule, seed and weights
(``voice_frame_head.member_logits``). No validation speaker is ever played in a training room.

Scored as the shipped head is (leaving each unheard corpus out, clean; the validation speakers, clean) and written
as an ONNX head beside a copy of the shipped manifest (``--candidate``) so that ``voice_rooms.py --candidate`` scores
it in the rooms it never trained in. The rule, written before any figure of it was read: the room-trained head
replaces the shipped one if its mean leave-one-out AUC of the four unheard corpora (clean speech) is at most 0.005
below the shipped head's, and its pooled AUC on the validation speakers, averaged over ``voice_rooms``' six room
conditions, is higher. The rooms share the training rooms' generator (synthetic exponential tails), so
the reverberant conditions measure that generator; the music is a noise no training copy had.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.recipes.voice_anger_encoder import NAME, UNHEARD, build_encoder  # noqa: E402
from models.recipes.voice_frame_head import STEPS, ensemble_onnx, load_members, member_logits, summarise  # noqa: E402
from models.recipes.voice_rooms import babble  # noqa: E402
from models.recipes.voice_smart_turn import LAYER_OUTPUTS, WIDTH  # noqa: E402
from models.recipes.voice_unit_shift import study_inputs, study_parser  # noqa: E402

WORK = ROOT / ".cache" / "voice_room_train"
ROOM_SEED = 20261203
TRAIN_BABBLE = tuple(f"ravdess-{i:02d}" for i in range(9, 17)) + ("tess-oaf", "tess-yaf")
CLEAN_RESULTS = ROOT / "benchmarks" / "results" / NAME / "frame_head.json"
ROOMS_VERSION = "2.1.0"  # the manifest version of the head trained in rooms too
ROOMS_RULE = ("written before any figure was read: the head trained in rooms too replaces the one trained on clean "
              "speech if its mean leave-one-out AUC of the four unheard corpora (clean) is at most 0.005 below the "
              "clean head's and its pooled AUC on the validation speakers, averaged over voice_rooms.py's six rooms, "
              "is higher")


def training_room(key: str, babble_wave: np.ndarray):
    """(rng, rt60 s, DRR dB, SNR dB or None, noise wave or None = pink) drawn for one clip; never a dry copy."""
    rng = np.random.default_rng([ROOM_SEED, zlib.crc32(key.encode())])
    rt60 = float(rng.uniform(0.2, 1.2)) if rng.random() < 0.8 else 0.0
    drr = float(rng.uniform(-3.0, 12.0))
    snr = float(rng.uniform(0.0, 25.0)) if rng.random() < 0.8 or rt60 == 0.0 else None
    noise = babble_wave if rng.random() < 0.5 else None
    return rng, rt60, drr, snr, noise


class Stacked:
    """Two (N, ...) arrays read as one: rows of ``a`` then rows of ``b`` (for sorted index arrays and slices)."""

    def __init__(self, a: np.ndarray, b: np.ndarray):
        self.a, self.b, self.shape = a, b, (len(a) + len(b),) + a.shape[1:]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        rows = np.arange(len(self))[index]
        first, second = rows[rows < len(self.a)], rows[rows >= len(self.a)] - len(self.a)
        return np.concatenate([np.asarray(self.a[first]), np.asarray(self.b[second])])


def room_segments(args, d, rows: list[dict]) -> dict:
    """Every training-speaker clip once in its training room: per segment (in clip order, the same segments as the
    clean clip's) the functionals, the tone CNN's P(angry), the encoder's embedding, and its frames (a float16
    memmap). Resumable: ``progress.json`` and a partial npz every 250 clips."""
    import onnxruntime as ort

    from appliance.manifest import load_manifest
    from appliance.perception.features import clip_segments
    from appliance.perception.voice import SEGMENT_S, VoiceFeatures, VoiceToneModel
    from appliance.perception.voice_encoder import encoder_input
    from appliance.runtime import RuntimeConfig
    from appliance.sources.audio import SAMPLE_RATE, load_audio_file
    from appliance.tools.room import play_in_room
    from models.recipes.voice_anger_head import HOP_S
    from models.recipes.voice_loco import MODEL

    clips = np.flatnonzero(~d.val_clip)
    expected = int(np.isin(d.clip, clips).sum())
    work = args.room_work
    work.mkdir(parents=True, exist_ok=True)
    store, progress, partial = work / f"frames_{expected}.f16", work / "progress.json", work / "partial.npz"
    shape = (expected, len(LAYER_OUTPUTS), STEPS, WIDTH)
    state = json.loads(progress.read_text()) if progress.is_file() else {"clips": 0, "segments": 0}
    if state.get("done"):
        saved = dict(np.load(partial))
        return saved | {"frames": np.memmap(store, np.float16, "r", shape=shape)}
    noise = load_audio_file(babble(args.data, work / "babble_train.wav", TRAIN_BABBLE))
    manifest = load_manifest(ROOT / "models" / "onnx" / MODEL)
    manifest.anger_head = None
    tone = VoiceToneModel(manifest, RuntimeConfig(providers=["cpu"], precision="fp32"))
    features = VoiceFeatures(prosody=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    encoder = ort.InferenceSession(str(build_encoder(ROOT / ".cache" / NAME)), options,
                                   providers=["CPUExecutionProvider"])
    frames = np.memmap(store, np.float16, "r+" if store.is_file() else "w+", shape=shape)
    out = {"x": np.zeros((expected, len(d.seg["names"])), np.float32), "p": np.zeros(expected, np.float32),
           "emb": np.zeros((expected, 5 * WIDTH), np.float32)}
    done_clips, done = state["clips"], state["segments"]
    if done:
        saved = np.load(partial)
        for k in out:
            out[k][:done] = saved[k][:done]
        print(f"resuming at clip {done_clips} of {len(clips)}, segment {done}", flush=True)
    n_seg, hop = int(SEGMENT_S * SAMPLE_RATE), int(HOP_S * SAMPLE_RATE)
    started, pending, saved_at = time.time(), [], done_clips
    for k in range(done_clips, len(clips)):
        row = rows[clips[k]]
        rng, rt60, drr, snr, wave = training_room(row["path"], noise)
        audio = play_in_room(load_audio_file(args.data / "speech" / row["path"]), rng, rt60, drr, snr, wave)
        segs = clip_segments(audio, n_seg, hop)
        f = features(np.stack(segs))
        start = done + sum(len(s) for s in pending)
        out["x"][start:start + len(segs)] = f.prosody
        out["p"][start:start + len(segs)] = tone.classify(f).anger
        pending.append(segs)
        if sum(len(s) for s in pending) >= 8 or k == len(clips) - 1:
            batch = [s for group in pending for s in group]
            emb, fr = encoder.run(["embedding", "frames"], {"input_features": np.stack([encoder_input(s)
                                                                                          for s in batch])})
            out["emb"][done:done + len(batch)] = emb
            frames[done:done + len(batch)] = fr.astype(np.float16)
            done, pending = done + len(batch), []
            if k + 1 - saved_at >= 250 or k == len(clips) - 1:
                saved_at = k + 1
                frames.flush()
                np.savez(partial, **{key: v[:done] for key, v in out.items()})
                progress.write_text(json.dumps({"clips": k + 1, "segments": done}))
                print(f"  {k + 1}/{len(clips)} clips in rooms, {done}/{expected} segments, "
                      f"{time.time() - started:.0f} s", flush=True)
    assert done == expected, f"{done} segments in rooms, {expected} clean"
    frames.flush()
    np.savez(partial, **out, clip=d.clip[np.isin(d.clip, clips)])
    progress.write_text(json.dumps({"clips": len(clips), "segments": done, "done": True}))
    return dict(np.load(partial)) | {"frames": np.memmap(store, np.float16, "r", shape=shape)}


def combined(d, aug: dict) -> dict:
    """The clean design and the room copies' (same fill, same columns), with labels, corpora, clips, train rows."""
    raw = d.seg["kind"] == 0
    fill = np.nanmedian(d.seg["x"][raw][d.train], axis=0)
    p = np.clip(aug["p"].astype(np.float64), 1e-4, 1 - 1e-4)
    x_aug = np.column_stack([aug["emb"], np.where(np.isnan(aug["x"]), fill, aug["x"]), np.log(p / (1 - p))])
    rows = np.isin(d.clip, np.flatnonzero(~d.val_clip))
    assert np.array_equal(d.clip[rows], aug["clip"]), "the room copies are not the clean training segments"
    return {"x": np.vstack([d.x, x_aug.astype(np.float32)]), "y": np.r_[d.y, d.y[rows]],
            "corpus": np.r_[d.corpus, d.corpus[rows]], "clip": np.r_[d.clip, d.clip[rows]],
            "train": np.r_[d.train, np.ones(int(rows.sum()), bool)]}


def room_design(args, d, rows: list[dict], clean_frames) -> tuple[dict, Stacked]:
    """The clean design and its room copies (``combined``), and the frames of both read as one array."""
    aug = room_segments(args, d, rows)
    return combined(d, aug), Stacked(clean_frames, aug["frames"])


def room_logits(c: dict, frames: Stacked, seed: int, held: str, args, say=print) -> tuple[np.ndarray, np.ndarray]:
    """Both members' logits on every clean and room segment, fitted on clean + room training segments outside corpus
    ``held`` ("all": the fit that ships, its models kept in ``args.room_work``/fits)."""
    return member_logits(c["x"], c["y"], c["corpus"], c["clip"], c["train"], frames, seed, held, args.device, say,
                         cache=args.room_work / "fits")


def write_candidate(seed: int, width: int, fits: Path, out: Path) -> Path:
    """A copy of the shipped model folder with the room-trained head as fp32.onnx (INT8 removed: FP32 is what
    ``voice_rooms.py`` scores), its sha256 in the manifest."""
    from appliance.manifest import load_manifest, sha256_of, write_manifest

    shipped = ROOT / "models" / "onnx" / NAME
    target = out / NAME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(shipped, target)
    ensemble_onnx(*load_members(seed, width, fits), target / "fp32.onnx")
    manifest = load_manifest(target)
    manifest.version = ROOMS_VERSION
    manifest.variants = [v for v in manifest.variants if v.precision == "fp32"]
    manifest.variants[0].sha256 = sha256_of(target / "fp32.onnx")
    (target / "int8.onnx").unlink(missing_ok=True)
    write_manifest(manifest, target)
    return target


def main() -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--room-work", type=Path, default=WORK, help="the room copies' cache")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2, help="the shipped head's seed (its clean fits are cached)")
    parser.add_argument("--candidate", type=Path, default=WORK / "candidate",
                        help="where the room-trained model folder is written")
    parser.add_argument("--segments-only", action="store_true", help="stop after the room copies (cached)")
    parser.add_argument("--report-only", action="store_true", help="rewrite room_train.md from room_train.json and "
                        "voice_rooms' rooms.json")
    parser.add_argument("--fits", default=",".join((*UNHEARD, "all")),
                        help="only these fits (corpora left out, 'all': the shipped fit and the candidate folder); "
                             "another process can run the others beside it, into the same cache; the report needs "
                             "all five")
    args = parser.parse_args()
    args.log = ROOT / "benchmarks" / "results" / NAME
    if args.report_only:
        write_report(args.log)
        return
    import torch

    from models.recipes.voice_loco import index_rows

    def say(text: str) -> None:
        print(text, flush=True)

    torch.set_num_threads(args.threads)
    d = study_inputs(args)
    rows = index_rows(args.data)
    assert len(rows) == d.n_clips, "voice_loco's cache holds another index"
    if args.segments_only:
        room_segments(args, d, rows)
        return
    from models.recipes.voice_frame_head import CACHE, segment_frames

    c, frames = room_design(args, d, rows, segment_frames(args.data, CACHE, rows, len(d.clip), args.threads))
    n = len(d.clip)
    fits = args.fits.split(",")
    z = {held: room_logits(c, frames, args.seed, held, args, say) for held in fits}
    if "all" in fits:
        say(f"candidate: {write_candidate(args.seed, d.x.shape[1], args.room_work / 'fits', args.candidate)}")
    if set(fits) != {*UNHEARD, "all"}:
        return
    result = summarise(d, {h: (z[h][0][:n] + z[h][1][:n]) / 2 for h in UNHEARD}, (z["all"][0][:n] + z["all"][1][:n]) / 2)
    clean_result = json.loads(CLEAN_RESULTS.read_text())["heads"][f"**mean of the two logits**, seed {args.seed}"]
    report = {"command": "python models/recipes/voice_room_train.py", "seed": args.seed,
              "training_rooms": "RT60 U(0.2, 1.2) s w.p. 0.8, DRR U(-3, 12) dB; noise SNR U(0, 25) dB w.p. 0.8 "
                                "(always when dry): pink or babble of " + ", ".join(TRAIN_BABBLE),
              "room_copies": int(len(c["y"]) - n), "clean": clean_result, "clean_and_rooms": result}
    (args.log / "room_train.json").write_text(json.dumps(report, indent=1) + "\n")
    for name, r in (("clean (shipped)", clean_result), ("clean + rooms", result)):
        say(f"{name}: LOCO " + " ".join(f"{h} {r['loco'][h]['auc']:.3f}" for h in UNHEARD)
            + f" mean {r['loco_unheard_mean_auc']:.4f} | validation pooled AUC {r['validation']['pooled']['auc']:.3f}"
            f" recall@P0.80 {r['validation']['pooled']['recall_at_precision_0.80']:.3f}")
    write_report(args.log)


def write_report(log: Path) -> None:
    """``room_train.md``: clean figures of both heads, their rooms figures (``voice_rooms.py --candidate``, when it has
    run) and the rule's verdict."""
    r = json.loads((log / "room_train.json").read_text())
    rooms_file = ROOT / "benchmarks" / "results" / "voice_rooms" / "rooms.json"
    rooms = json.loads(rooms_file.read_text())["results"] if rooms_file.is_file() else {}
    heads = (("clean speech (2.0.0)", r["clean"], rooms.get(f"{NAME} 2.0.0")),
             ("trained in rooms too (2.1.0)", r["clean_and_rooms"], rooms.get(f"{NAME} {ROOMS_VERSION}")))
    conditions = [c for c in (heads[0][2] or {}) if c != "dry"]
    lines = ["# The anger head trained on speech in rooms too (issue 22)", "",
             f"Written by `{r['command']}` (method in its docstring; {r['room_copies']} room copies of the training "
             f"speakers' segments; training rooms: {r['training_rooms']}). Angry AUC per clip. Leave one corpus out "
             "(clean speech) and validation speakers (clean), then the validation speakers in `voice_rooms.py`'s "
             "rooms (pooled AUC).", "",
             "| head | " + " | ".join(f"loco {c}" for c in UNHEARD) + " | loco mean | validation | "
             + " | ".join(conditions) + " | rooms mean |", "|---" * (len(UNHEARD) + 4 + len(conditions)) + "|"]
    means = {}
    for name, fig, room in heads:
        cells = [f"{fig['loco'][c]['auc']:.3f}" for c in UNHEARD]
        cells += [f"{fig['loco_unheard_mean_auc']:.4f}", f"{fig['validation']['pooled']['auc']:.3f}"]
        if room:
            means[name] = float(np.mean([room[c]["pooled"]["auc"] for c in conditions]))
            cells += [f"{room[c]['pooled']['auc']:.3f}" for c in conditions] + [f"{means[name]:.4f}"]
        else:
            cells += ["-"] * (len(conditions) + 1)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    loco_ok = r["clean_and_rooms"]["loco_unheard_mean_auc"] >= r["clean"]["loco_unheard_mean_auc"] - 0.005
    if len(means) == 2:
        rooms_ok = means[heads[1][0]] > means[heads[0][0]]
        verdict = ("**replaces the clean head**" if loco_ok and rooms_ok else "**does not replace the clean "
                   "head**") + f" (leave-one-out mean within 0.005: {'yes' if loco_ok else 'no'}; rooms mean higher: "
        verdict += f"{'yes' if rooms_ok else 'no'})"
    else:
        verdict = "not decided yet: run `python models/recipes/voice_rooms.py --candidate .cache/voice_room_train/" \
                  "candidate`, then `python models/recipes/voice_room_train.py --report-only`"
    lines += ["", f"Rule ({ROOMS_RULE}). Verdict: {verdict}. Since it passed, `voice_anger_encoder.py` ships the "
              "head trained in rooms too (2.1.0; `--no-rooms` makes the clean 2.0.0 head); `voice_rooms.py` has "
              "scored both (its rows `voice_anger_encoder 2.0.0` and `voice_anger_encoder 2.1.0`).", ""]
    (log / "room_train.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
