"""A room and its noise put around clean speech, for ``appliance eval voice|sessions --room``.

Every labelled corpus here is close-miked in a quiet studio; a kiosk hears its customer from a metre or two away,
in a shop with hard walls, music and other people talking. ``Room`` turns a clean clip into that: the clip
convolved with a synthetic impulse response (the direct sound, then an exponentially decaying diffuse tail whose
high frequencies die faster, at the given RT60 and direct-to-reverberant ratio), then noise added at a
signal-to-noise ratio measured against the speaker's speaking level. The noise is a recording (a technician can
record the shop's own with ``arecord``) from a random offset, looped, or pink noise when none is given. The
reverberant clip keeps the dry clip's speaking level, so a room changes how a voice sounds, not how loud it is.

A clip's room is drawn from the room's seed and the clip's key (its path), so two models scored with one room hear
the very same audio. Synthetic rooms are not measured ones: the figures they give say how a model degrades, not
what it will score in a particular shop.
"""

from __future__ import annotations

import zlib
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliance.sources.audio import SAMPLE_RATE, load_audio_file

SPEC_KEYS = {"rt60": "rt60_s", "drr": "drr_db", "snr": "snr_db", "noise": "noise", "seed": "seed"}
HF_SPLIT_TAPS = 4   # the tail's low band: a 4-tap moving average (below ~2 kHz at 16 kHz)
HF_DECAY = 0.7      # the rest decays in this share of the low band's time (air and soft furnishings absorb highs)
BROADBAND = 1.18    # the low band's decay time over the tail's broadband T20
FIRST_REFLECTION_S = 0.0025


class RoomError(ValueError):
    """A --room spec that cannot be used: the reason, in words."""


class Room(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rt60_s: float = Field(0.0, description="reverberation time (0: no reverberation)")
    drr_db: float = Field(3.0, ge=-10.0, le=30.0, description="direct-to-reverberant energy ratio")
    snr_db: float | None = Field(None, ge=-10.0, le=60.0, description="speech-to-noise ratio (None: no noise)")
    noise: Path | None = Field(None, description="noise recording (WAV/FLAC/OGG); default pink noise")
    seed: int = 0

    @field_validator("rt60_s")
    @classmethod
    def _rt60(cls, v: float) -> float:
        if v != 0.0 and not 0.1 <= v <= 3.0:
            raise ValueError("use 0 (none) or 0.1-3.0 s; shops are about 0.4-1.0 s")
        return v

    @classmethod
    def parse(cls, spec: str) -> "Room":
        """``rt60=0.8,drr=0,snr=10,noise=shop.wav,seed=1`` (any subset) -> Room; RoomError says what is wrong."""
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in SPEC_KEYS:
                raise RoomError(f"--room {spec!r}: {part!r} is not KEY=VALUE with KEY one of "
                                f"{', '.join(SPEC_KEYS)} (e.g. rt60=0.8,drr=0,snr=10,noise=shop.wav)")
            fields[SPEC_KEYS[key.strip()]] = value.strip()
        if not fields:
            raise RoomError(f"--room {spec!r}: give at least rt60=SECONDS or snr=DB")
        try:
            room = cls(**fields)
        except ValidationError as e:
            first = e.errors()[0]
            name = next(k for k, v in SPEC_KEYS.items() if v == first["loc"][0])
            raise RoomError(f"--room {spec!r}: {name}: {first['msg'].removeprefix('Value error, ')}") from None
        if room.noise is not None and room.snr_db is None:
            raise RoomError(f"--room {spec!r}: noise= needs snr=DB (how loud the speech is above it)")
        if room.noise is not None:
            try:
                room.noise_wave  # noqa: B018 -- decode now, so a bad file fails before any clip is scored
            except Exception as e:  # SourceError and decoder errors: one clear line either way
                raise RoomError(f"--room {spec!r}: {e}") from None
        return room

    @property
    def label(self) -> str:
        parts = [f"RT60 {self.rt60_s:g} s, DRR {self.drr_db:g} dB"] if self.rt60_s else []
        if self.snr_db is not None:
            parts.append(f"{self.noise.name if self.noise else 'pink noise'} at SNR {self.snr_db:g} dB")
        return ", ".join(parts) or "as recorded"

    @cached_property
    def noise_wave(self) -> np.ndarray | None:
        if self.noise is None:
            return None
        wave = load_audio_file(self.noise)
        if len(wave) < SAMPLE_RATE or float(np.sqrt(np.mean(wave ** 2))) < 1e-5:
            raise RoomError(f"noise file {self.noise} is shorter than 1 s or silent")
        return wave

    def apply(self, audio: np.ndarray, key: str) -> np.ndarray:
        """The clip as the room hears it (same length, float32, within [-1, 1])."""
        return play_in_room(audio, np.random.default_rng([self.seed, zlib.crc32(key.encode())]), self.rt60_s,
                            self.drr_db, self.snr_db, self.noise_wave)


def play_in_room(audio: np.ndarray, rng: np.random.Generator, rt60_s: float, drr_db: float, snr_db: float | None,
                 noise: np.ndarray | None = None) -> np.ndarray:
    """``audio`` reverberated (``rt60_s`` > 0) at its own speaking level, then ``noise`` (a recording, from a random
    offset, looped; None: pink noise) added at ``snr_db`` (None: no noise); float32 within [-1, 1]."""
    dry = np.asarray(audio, dtype=np.float32)
    out = dry.astype(np.float64)
    if rt60_s:
        out = convolve(out, impulse_response(rt60_s, drr_db, rng))[:len(dry)]
        out *= speaking_rms(dry) / max(speaking_rms(out), 1e-9)
    if snr_db is not None:
        if noise is None:
            added = pink_noise(len(out), rng)
        else:
            added = np.resize(np.roll(noise, -int(rng.integers(len(noise)))), len(out)).astype(np.float64)
        out = out + added * (speaking_rms(out) / max(float(np.sqrt(np.mean(added ** 2))), 1e-9) / 10 ** (snr_db / 20))
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def speaking_rms(audio: np.ndarray) -> float:
    """RMS of the clip's loud part (25 ms frames at or above the median frame energy): its speaking level."""
    frame = 400
    n = len(audio) // frame
    if n == 0:
        return float(np.sqrt((np.asarray(audio, np.float64) ** 2).mean())) if len(audio) else 0.0
    energy = (np.asarray(audio[:n * frame], np.float64).reshape(n, frame) ** 2).mean(axis=1)
    return float(np.sqrt(energy[energy >= np.median(energy)].mean()))


def impulse_response(rt60_s: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Direct sound (1.0 at t = 0), then from FIRST_REFLECTION_S a Gaussian diffuse tail whose energy decays
    60 dB in ``rt60_s`` (Schroeder T20), faster above ~2 kHz, scaled to direct / tail energy = ``drr_db``."""
    n = int(SAMPLE_RATE * min(1.5 * rt60_s * BROADBAND, 2.5))
    t = np.arange(n) / SAMPLE_RATE
    white = rng.standard_normal(n)
    low = np.convolve(white, np.ones(HF_SPLIT_TAPS) / HF_SPLIT_TAPS, mode="same")
    # Amplitude falls 60 dB (x 1e-3) in RT60: exp(-ln(1000) t / RT60).
    low_rt = rt60_s * BROADBAND   # so that the whole tail's Schroeder T20 (what RT60 meters report) is rt60_s
    tail = low * np.exp(-6.9078 * t / low_rt) + (white - low) * np.exp(-6.9078 * t / (low_rt * HF_DECAY))
    tail[:int(FIRST_REFLECTION_S * SAMPLE_RATE)] = 0.0
    tail *= np.sqrt(1.0 / (10 ** (drr_db / 10) * np.sum(tail ** 2)))
    tail[0] = 1.0
    return tail


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    size = 1 << int(np.ceil(np.log2(len(x) + len(h) - 1)))
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:len(x) + len(h) - 1]


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with power falling 3 dB per octave (1/f), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0.0
    out = np.fft.irfft(spectrum, n)
    return out / max(float(np.sqrt(np.mean(out ** 2))), 1e-12)
