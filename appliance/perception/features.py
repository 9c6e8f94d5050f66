"""Log-mel features in numpy: the one function the voice model's training recipe and the daemon both call.

No librosa in the daemon (500 MB and a 30 s numba warm-up). The filterbank is the Slaney-style mel scale with
area normalisation, as librosa's default, computed once per parameter set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from appliance.sources.audio import SAMPLE_RATE   # what every audio source delivers

FLOOR = 1e-8   # 80 dB below the loudest bin of the segment


@dataclass(frozen=True)
class MelSpec:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 512          # 32 ms
    hop: int = 160            # 10 ms
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0

    def frames(self, n_samples: int) -> int:
        return 1 + max(0, n_samples - self.n_fft) // self.hop

    def as_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "hop": self.hop, "n_mels": self.n_mels,
                "fmin": self.fmin, "fmax": self.fmax}


DEFAULT = MelSpec()


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    linear = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, linear)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    linear = m * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log_part, linear)


@lru_cache(maxsize=4)
def mel_filterbank(spec: MelSpec = DEFAULT) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, area-normalised."""
    fft_freqs = np.linspace(0, spec.sample_rate / 2, spec.n_fft // 2 + 1)
    mel_points = np.linspace(hz_to_mel(spec.fmin), hz_to_mel(spec.fmax), spec.n_mels + 2)
    hz = _mel_to_hz(mel_points)
    lower = (fft_freqs[None, :] - hz[:-2, None]) / (hz[1:-1, None] - hz[:-2, None])
    upper = (hz[2:, None] - fft_freqs[None, :]) / (hz[2:, None] - hz[1:-1, None])
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=4)
def _filterbank_t(spec: MelSpec) -> np.ndarray:
    return np.ascontiguousarray(mel_filterbank(spec).T)


@lru_cache(maxsize=4)
def _window(n_fft: int) -> np.ndarray:
    return np.hanning(n_fft + 1)[:-1].astype(np.float32)   # periodic Hann


def log_mel(audio: np.ndarray, spec: MelSpec = DEFAULT) -> np.ndarray:
    """Mono float audio at spec.sample_rate -> (n_mels, frames) float32 log-mel, level-normalised.

    The mean over all bins is subtracted: a gain g adds 2*log(g) to every log-power bin, so this makes the
    features independent of microphone level and distance (a model must not learn loudness as anger). The floor
    is relative (80 dB below the loudest bin), not absolute, so quiet bins shift with the gain like the rest.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    if len(audio) < spec.n_fft:
        audio = np.pad(audio, (0, spec.n_fft - len(audio)))
    n = spec.frames(len(audio))
    frames = np.lib.stride_tricks.as_strided(
        audio, shape=(n, spec.n_fft), strides=(audio.strides[0] * spec.hop, audio.strides[0]), writeable=False)
    spectrum = np.fft.rfft(frames * _window(spec.n_fft), axis=1)
    power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
    # (frames, bins) @ (bins, mels) on contiguous float32: several times faster than the transposed product.
    mel = (power @ _filterbank_t(spec)).T
    logmel = np.log(np.maximum(mel, max(float(mel.max()), 1e-20) * FLOOR))
    return (logmel - logmel.mean()).astype(np.float32)


def fit_length(audio: np.ndarray, n_samples: int, offset: int = 0) -> np.ndarray:
    """Exactly n_samples: a crop starting at offset, or the clip repeated (wrap) when it is shorter."""
    if len(audio) >= n_samples:
        return audio[offset:offset + n_samples]
    if len(audio) == 0:
        return np.zeros(n_samples, np.float32)
    return np.resize(audio, n_samples)


def clip_segments(audio: np.ndarray, n_samples: int, hop: int) -> list[np.ndarray]:
    """Equal-length segments covering a clip (at least one): how a whole clip is scored, in eval and training."""
    if len(audio) <= n_samples:
        return [fit_length(audio, n_samples)]
    starts = list(range(0, len(audio) - n_samples + 1, hop))
    if starts[-1] != len(audio) - n_samples:
        starts.append(len(audio) - n_samples)
    return [audio[s:s + n_samples] for s in starts]
