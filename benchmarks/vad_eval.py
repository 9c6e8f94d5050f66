"""Speech detection measured on real clips: how much real speech the VAD passes, how much non-speech it lets in.

    python benchmarks/vad_eval.py [--data ../shared/data]

Speech: RAVDESS actors 17-20 (240 clips) and 100 TESS clips, each trimmed to 0.2 s of silence at both ends, so
about 85% of each clip is speech; also the same RAVDESS clips with white noise at 10 dB SNR and 20 dB quieter.
Non-speech: digital silence, white and pink noise at three levels, mains hum, and a 1 kHz tone.
Writes benchmarks/results/vad.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.config import default_models_dir  # noqa: E402
from appliance.manifest import load_manifest  # noqa: E402
from appliance.perception.vad import VoiceActivity  # noqa: E402
from appliance.sources.audio import load_audio_file  # noqa: E402


def speech_fraction(vad: VoiceActivity, audio: np.ndarray) -> float:
    vad.reset()
    out = vad.feed(audio)
    return out.seconds_speech / max(out.seconds_in, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    vad = VoiceActivity(load_manifest(default_models_dir() / "onnx" / "silero_vad"))
    rng = np.random.default_rng(0)
    rows = []

    rows_csv = list(csv.DictReader(open(args.data / "speech" / "index.csv")))
    sets = {
        "RAVDESS actors 17-20": [r for r in rows_csv if r["speaker"] in {f"ravdess-{i}" for i in range(17, 21)}],
        "TESS (100 clips)": [r for r in rows_csv if r["corpus"] == "tess"][::14][:100],
    }
    for name, items in sets.items():
        clips = [load_audio_file(args.data / "speech" / r["path"]) for r in items]
        variants = {"clean": lambda a: a}
        if name.startswith("RAVDESS"):
            def noisy(a):
                noise = rng.standard_normal(len(a)).astype(np.float32)
                return a + noise * np.sqrt(np.mean(a ** 2) / 10 / np.mean(noise ** 2))
            variants |= {"white noise, SNR 10 dB": noisy, "20 dB quieter": lambda a: a * 0.1}
        for variant, fn in variants.items():
            fractions = [speech_fraction(vad, fn(a)) for a in clips]
            rows.append({"set": f"{name}, {variant}", "kind": "speech", "clips": len(clips),
                         "speech_fraction_mean": round(float(np.mean(fractions)), 3),
                         "clips_with_speech": round(float(np.mean([f > 0.25 for f in fractions])), 3)})
            print(rows[-1], flush=True)

    t = np.arange(10 * 16000) / 16000
    white = rng.standard_normal(len(t))
    pink = np.cumsum(white)
    pink = (pink - np.convolve(pink, np.ones(400) / 400, mode="same"))
    pink /= pink.std()
    noise = {"digital silence": np.zeros(len(t))}
    for db in (-40, -26, -12):
        g = 10 ** (db / 20)
        noise[f"white noise {db} dBFS"] = g * white
        noise[f"pink noise {db} dBFS"] = g * pink
    noise["50 Hz hum -12 dBFS"] = 0.35 * np.sin(2 * np.pi * 50 * t)
    noise["1 kHz tone -12 dBFS"] = 0.35 * np.sin(2 * np.pi * 1000 * t)
    for name, audio in noise.items():
        rows.append({"set": name, "kind": "non-speech", "seconds": 10,
                     "speech_fraction_mean": round(speech_fraction(vad, audio.astype(np.float32)), 3)})
        print(rows[-1], flush=True)

    vad.reset()
    chunk = np.zeros(512, np.float32)
    for _ in range(50):
        vad.probability(chunk)
    times = []
    for _ in range(1000):
        t0 = time.perf_counter()
        vad.probability(chunk)
        times.append(time.perf_counter() - t0)
    latency = {"p50_ms": round(float(np.percentile(times, 50)) * 1000, 3),
               "p99_ms": round(float(np.percentile(times, 99)) * 1000, 3)}
    out = ROOT / "benchmarks" / "results"
    (out / "vad.json").write_text(json.dumps({"rows": rows, "chunk_latency": latency,
                                              "threshold": vad.threshold, "release": vad.release}, indent=2) + "\n")
    lines = ["# Speech detection (Silero VAD 6.2.3, threshold 0.5 / release 0.35, 3-chunk hangover)", "",
             "`python benchmarks/vad_eval.py`. Speech clips are trimmed to 0.2 s of silence at both ends, so about "
             "85% of their duration is speech.", "",
             "| input | kind | fraction of time passed as speech | clips with speech found |", "|---|---|---|---|"]
    for r in rows:
        found = f"{r['clips_with_speech']:.3f} of {r['clips']}" if "clips" in r else "—"
        lines.append(f"| {r['set']} | {r['kind']} | {r['speech_fraction_mean']:.3f} | {found} |")
    lines += ["", f"One 32 ms chunk costs p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms (CPU, 1 thread): "
                  "about 3 chunks per 100 ms tick."]
    (out / "vad.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
