"""Study: the voice's anger in rooms it never heard (issue 22) -- the validation speakers of all six corpora played in
synthetic shop rooms through ``appliance.tools.room`` (what ``appliance eval voice --room`` does).

    python models/recipes/voice_rooms.py [--data ../shared/data] [--threads 1]   # ~25 min on 2 cores

Every corpus here is close-miked and quiet. The conditions below were fixed before any figure was read; none is
used to fit or choose anything. Noise recordings: the demo clip's sound (music and singing: a shop's radio) and a
babble of eight RAVDESS *training* actors talking at once (built here, never a validation speaker). Each model is
scored per clip (mean P(angry) of its 2 s segments every 0.5 s, as ``appliance eval voice`` scores a clip), per
corpus: angry-vs-rest AUC, recall/precision at 0.5, recall at precision 0.80 (``voice_loco.figures``).

Results: ``benchmarks/results/voice_rooms/`` (``rooms.json``, ``README.md``, ``rooms.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.recipes.voice_loco import NEMO_VAL, ased_val, figures, index_rows  # noqa: E402
from models.recipes.voice_tone_cnn import VAL_SPEAKERS  # noqa: E402

NAME = "voice_rooms"
MUSIC = ROOT / "appliance" / "demo" / "short_hamilton_clip.flac"
BABBLE_ACTORS = tuple(f"ravdess-{i:02d}" for i in (1, 2, 3, 4, 5, 6, 7, 8))   # training actors, 4 men, 4 women
# (name, --room spec): a quiet close talker, then rooms, then noises, then both at once.
CONDITIONS = (
    ("dry", None),
    ("small room", "rt60=0.4,drr=6"),
    ("large hard room", "rt60=0.9,drr=0"),
    ("music 10 dB", "snr=10,noise={music}"),
    ("babble 10 dB", "snr=10,noise={babble}"),
    ("pink noise 5 dB", "snr=5"),
    ("busy shop", "rt60=0.8,drr=0,snr=5,noise={babble}"),
)
# voice.anger_model: the shipped encoder head (labelled with its version), and the tone CNN's own anger head ("").
MODELS = ("voice_anger_encoder", "")
TONE_LABEL = "tone CNN anger head"


def model_label(onnx_dir: Path, anger_model: str) -> str:
    """A model's row label: the anger model with its manifest version (heads of one name differ by version)."""
    from appliance.manifest import load_manifest

    return f"{anger_model} {load_manifest(onnx_dir / anger_model).version}" if anger_model else TONE_LABEL


def babble(data: Path, out: Path, actors: tuple[str, ...] = BABBLE_ACTORS, seconds: float = 60.0) -> Path:
    """``actors``' clips (not angry), each actor a shuffled stream, summed: several people talking at once."""
    import soundfile as sf

    from appliance.sources.audio import SAMPLE_RATE, load_audio_file
    from appliance.tools.evaluation import read_index

    if out.is_file():
        return out
    rows = read_index(data / "speech" / "index.csv", {"path", "speaker", "label"}, "speech")
    rows = [r for r in rows if r["speaker"] in actors]
    rng = np.random.default_rng(20261203)
    n = int(seconds * SAMPLE_RATE)
    mix = np.zeros(n)
    for actor in actors:
        clips = [r["path"] for r in rows if r["speaker"] == actor and r["label"] != "angry"]
        stream = np.concatenate([load_audio_file(data / "speech" / clips[i]) for i in rng.permutation(len(clips))])
        stream = np.resize(stream, n + SAMPLE_RATE)[int(rng.integers(SAMPLE_RATE)):][:n]
        mix += stream / max(float(np.sqrt(np.mean(stream ** 2))), 1e-9)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, (0.1 * mix / np.sqrt(np.mean(mix ** 2))).astype(np.float32), SAMPLE_RATE)
    return out


def validation_rows(data: Path) -> list[dict]:
    rows = index_rows(data)
    val = set(VAL_SPEAKERS) | NEMO_VAL | ased_val([r["speaker"] for r in rows])
    return [r for r in rows if r["speaker"] in val]


def clip_scores(data: Path, rows: list[dict], model, room) -> np.ndarray:
    from appliance.sources.audio import load_audio_file

    out = np.empty(len(rows))
    for i, r in enumerate(rows):
        audio = load_audio_file(data / "speech" / r["path"])
        out[i] = model.classify_clip(room.apply(audio, r["path"]) if room else audio).anger[0]
    return out


def table(results: dict, corpora: list[str]) -> list[str]:
    lines = ["| model | condition | " + " | ".join(corpora) + " | pooled AUC | pooled recall / precision at 0.5 | "
             "pooled recall at P 0.80 |", "|---" * (len(corpora) + 5) + "|"]
    for model, conditions in results.items():
        for condition, r in conditions.items():
            pooled = r["pooled"]
            lines.append(f"| {model} | {condition} | " + " | ".join(f"{r[c]['auc']:.3f}" for c in corpora)
                         + f" | **{pooled['auc']:.3f}** | {pooled['recall_at_0.5']:.2f} / "
                         f"{pooled['precision_at_0.5'] or 0:.2f} | {pooled['recall_at_precision_0.80']:.2f} |")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = list(next(iter(results.values())))
    width = 0.8 / len(results)
    for k, (model, conditions) in enumerate(results.items()):
        ax.bar(np.arange(len(names)) + width * (k + 0.5) - 0.4, [conditions[c]["pooled"]["auc"] for c in names],
               width, label=model)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("angry AUC, validation speakers")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / NAME)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / NAME)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--candidate", type=Path, default=None, help="score only the voice_anger_encoder folder "
                        "inside this folder (voice_room_train.py writes one); every run keeps the rows of models it "
                        "does not score from rooms.json")
    parser.add_argument("--report-only", action="store_true", help="rewrite README.md and rooms.png from rooms.json")
    parser.add_argument("--babble-only", action="store_true", help="only build --work/babble.wav (what `make eval`'s "
                        "busy-shop sessions play)")
    args = parser.parse_args()
    if args.babble_only:
        print(babble(args.data, args.work / "babble.wav"))
        return
    if args.report_only:
        saved = json.loads((args.log / "rooms.json").read_text())
        write_report(args.log, saved["meta"], saved["results"])
        return

    from appliance.config import load_config
    from appliance.manifest import load_manifest
    from appliance.perception.voice import VoiceToneModel
    from appliance.perception.voice_encoder import configured
    from appliance.tools.room import Room

    cfg = load_config(None, overrides={"runtime.precision": "fp32", "runtime.intra_op_threads": args.threads})
    noises = {"music": MUSIC, "babble": babble(args.data, args.work / "babble.wav")}
    rooms = {name: Room.parse(spec.format(**noises)) if spec else None for name, spec in CONDITIONS}
    rows = validation_rows(args.data)
    angry = np.array([r["label"] == "angry" for r in rows])
    corpus = np.array([r["corpus"] for r in rows])
    corpora = sorted(set(corpus), key=["ravdess", "emovo", "turev", "nemo", "ased"].index)
    # Rows of models not scored this time (an earlier version of the head) are kept; a scored label replaces its rows.
    saved = args.log / "rooms.json"
    results: dict[str, dict] = json.loads(saved.read_text())["results"] if saved.is_file() else {}
    models = [(cfg.models.dir / "onnx", name) for name in MODELS]
    if args.candidate:
        models = [(args.candidate, "voice_anger_encoder")]
    started = time.time()
    for onnx_dir, anger_model in models:
        label = model_label(onnx_dir, anger_model)
        manifest = load_manifest(cfg.models.dir / "onnx" / cfg.voice.model)
        model = VoiceToneModel(manifest, cfg.runtime, anger=configured(onnx_dir, anger_model, cfg.runtime))
        results[label] = {}
        for name, room in rooms.items():
            score = clip_scores(args.data, rows, model, room)
            results[label][name] = {c: figures(score[corpus == c], angry[corpus == c]) for c in corpora}
            results[label][name]["pooled"] = figures(score, angry)
            print(f"{label} / {name}: pooled AUC {results[label][name]['pooled']['auc']:.3f} "
                  f"({time.time() - started:.0f} s)", flush=True)
    args.log.mkdir(parents=True, exist_ok=True)
    command = "python models/recipes/voice_rooms.py" + (
        " --candidate .cache/voice_room_train/candidate" if args.candidate else "")
    meta = {"command": command, "clips": len(rows), "angry": int(angry.sum()),
            "speakers": sorted({r["speaker"] for r in rows}), "precision": "fp32",
            "conditions": {name: room.label if room else "as recorded" for name, room in rooms.items()},
            "noise": {"music": str(MUSIC.relative_to(ROOT)), "babble": f"{len(BABBLE_ACTORS)} RAVDESS training "
                      f"actors at once ({', '.join(BABBLE_ACTORS)}), non-angry clips"}}
    (args.log / "rooms.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    write_report(args.log, meta, results)


def write_report(log: Path, meta: dict, results: dict) -> None:
    """``README.md`` (conditions, the table) and ``rooms.png`` from what ``rooms.json`` holds."""
    corpora = [c for c in next(iter(next(iter(results.values())).values())) if c != "pooled"]
    plot(results, log / "rooms.png")
    lines = ["# The voice's anger in rooms it never heard (issue 22)", "",
             f"Written by `{meta['command']}`: the {meta['clips']} clips ({meta['angry']} angry) of the "
             f"{len(meta['speakers'])} validation speakers of the five corpora with validation speakers, played in "
             "synthetic rooms (`appliance.tools.room`, the same as `appliance eval voice --room`), FP32. "
             "Angry-vs-rest AUC per clip and corpus. Rows name the anger model with its manifest version; a run "
             "keeps the rows of models it does not score (an earlier version). Conditions (fixed before any figure "
             "was read):",
             ""]
    lines += [f"- **{name}**: {label}" for name, label in meta["conditions"].items()]
    lines += ["", f"Noises: music = `{meta['noise']['music']}` (the demo's sound: music and singing); babble = "
              f"{meta['noise']['babble']}.", ""] + table(results, corpora) + ["", "![rooms](rooms.png)", ""]
    (log / "README.md").write_text("\n".join(lines))
    print("\n".join(table(results, corpora)))


if __name__ == "__main__":
    main()
