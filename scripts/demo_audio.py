"""Recipe: the demo recording's soundtrack as 16 kHz mono FLAC, so the daemon needs no video-audio decoder.

    python scripts/demo_audio.py     # needs PyAV (pip install av), a recipe-only dependency

Decodes the AAC track of appliance/demo/short_hamilton_clip.mp4, mixes to mono, resamples to 16 kHz and writes
appliance/demo/short_hamilton_clip.flac (public domain, like the video).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.sources.audio import resample  # noqa: E402

VIDEO = ROOT / "appliance" / "demo" / "short_hamilton_clip.mp4"


def main() -> None:
    import av
    import soundfile as sf

    with av.open(str(VIDEO)) as container:
        video = container.streams.video[0]
        video_seconds = float(video.frames / video.average_rate)
        stream = container.streams.audio[0]
        rate = stream.rate
        chunks = [frame.to_ndarray() for frame in container.decode(stream)]
    audio = np.concatenate(chunks, axis=1).astype(np.float32)   # (channels, samples), planar float
    # The AAC track runs ~0.8 s past the last video frame; trim it so the looping demo stays in sync.
    mono = audio.mean(axis=0)[:int(video_seconds * rate)]
    out = VIDEO.with_suffix(".flac")
    sf.write(out, resample(mono, rate, 16000), 16000, subtype="PCM_16")
    print(f"{VIDEO.name}: {rate} Hz x {audio.shape[0]} ch, {audio.shape[1] / rate:.2f} s, trimmed to the video's "
          f"{video_seconds:.2f} s -> {out}")


if __name__ == "__main__":
    main()
