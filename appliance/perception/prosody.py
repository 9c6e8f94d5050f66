"""Prosodic functionals of a speech segment in numpy: the one function the voice anger head's recipe and the daemon
both call.

Anger is loud, tense and high-pitched speech in every language: a raised, lively pitch, more energy in the high
band (a flatter spectral tilt), sharper energy changes. The tone CNN learns such cues from log-mel patterns of
English actors, and they weaken in languages it never heard; these functionals describe them directly, so a small
logistic head (``appliance.manifest.AngerHead``) trained on four corpora in three languages can carry them.

Every functional is level-invariant, as the log-mel features are: energies are in dB relative to the segment's
loudest frame, spectral measures are ratios, pitch is in semitones. Absolute pitch is computed (``f0_median``) but
kept out of the shipped head: it mostly says whether a voice is a man's or a woman's.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from appliance.sources.audio import SAMPLE_RATE

HOP = 160                       # 10 ms, as the log-mel features
WINDOW = 800                    # 50 ms: three periods of the lowest pitch searched
NFFT = 1152                     # >= WINDOW + the longest lag, so the autocorrelation does not wrap (2^7 * 9: fast)
LAG_MIN, LAG_MAX = SAMPLE_RATE // 450, SAMPLE_RATE // 60      # pitch searched over 60-450 Hz
ACTIVE_DB = -35.0               # a frame within 35 dB of the loudest is speech, not the pause around it
OCTAVE_SHARE = 0.9              # a shorter lag's peak this close to the best is the period
VOICED_PEAK = 0.6               # normalised autocorrelation peak of a voiced frame
MIN_VOICED = 5                  # fewer voiced frames: the pitch functionals are missing (NaN)

NAMES = ("voiced_share", "active_share", "f0_median", "f0_std", "f0_range", "f0_step", "periodicity",
         "alpha_voiced", "hammarberg_voiced", "energy_std", "energy_range", "energy_step", "alpha_active",
         "centroid_khz", "centroid_std_khz", "spectral_flux", "voiced_onsets_per_s", "pitch_missing")
_AT = {name: i for i, name in enumerate(NAMES)}


@lru_cache(maxsize=2)
def _window_terms(window: int, nfft: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hann = np.hanning(window)
    # The autocorrelation of the window itself: dividing by it undoes the taper's fall-off with lag.
    wac = np.fft.irfft(np.abs(np.fft.rfft(hann, nfft)) ** 2, nfft)[:LAG_MAX + 2]
    freqs = np.fft.rfftfreq(nfft, 1.0 / SAMPLE_RATE)
    return hann, wac / wac[0], freqs


def _frames(x: np.ndarray) -> np.ndarray:
    if len(x) < WINDOW:
        x = np.pad(x, (0, WINDOW - len(x)))
    n = 1 + (len(x) - WINDOW) // HOP
    return np.lib.stride_tricks.as_strided(x, (n, WINDOW), (x.strides[0] * HOP, x.strides[0]), writeable=False)


def prosody(audio: np.ndarray) -> np.ndarray:
    """Mono 16 kHz audio (a 2 s segment) -> the NAMES functionals, float64; pitch ones NaN when too little is
    voiced (``pitch_missing`` is then 1)."""
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {x.shape}")
    hann, wac, freqs = _window_terms(WINDOW, NFFT)
    frames = _frames(x - x.mean())
    frames = frames - frames.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(frames * hann, NFFT)) ** 2
    acf = np.fft.irfft(power, NFFT)[:, :LAG_MAX + 2]
    nacf = acf / np.maximum(acf[:, :1], 1e-20) / wac
    search = nacf[:, LAG_MIN:LAG_MAX + 1]
    rows = np.arange(len(search))
    # The shortest lag whose peak comes near the best one: a periodic signal correlates as well at two periods as at
    # one, and the longest of such lags would read the pitch an octave low.
    peaks = np.zeros_like(search, dtype=bool)
    peaks[:, 1:-1] = (search[:, 1:-1] >= search[:, :-2]) & (search[:, 1:-1] > search[:, 2:])
    near = peaks & (search >= OCTAVE_SHARE * search.max(axis=1, keepdims=True))
    k = np.where(near.any(axis=1), near.argmax(axis=1), search.argmax(axis=1))
    k = np.clip(k, 1, search.shape[1] - 2)
    a, b, c = search[rows, k - 1], search[rows, k], search[rows, k + 1]
    curve = a - 2 * b + c
    offset = np.clip(0.5 * (a - c) / np.where(np.abs(curve) < 1e-9, -1e-9, curve), -1, 1)
    f0 = SAMPLE_RATE / (LAG_MIN + k + offset)

    energy = 10 * np.log10(np.maximum((frames ** 2).mean(axis=1), 1e-20))
    relative = energy - energy.max()
    active = relative > ACTIVE_DB
    voiced = active & (b > VOICED_PEAK)

    def band(lo: float, hi: float) -> np.ndarray:
        return power[:, np.searchsorted(freqs, lo):np.searchsorted(freqs, hi)]     # a view, not a copy

    alpha = 10 * np.log10((band(1000, 5000).sum(axis=1) + 1e-20) / (band(50, 1000).sum(axis=1) + 1e-20))
    hammarberg = 10 * np.log10((band(50, 2000).max(axis=1) + 1e-20) / (band(2000, 5000).max(axis=1) + 1e-20))
    spectrum = band(0, 8000)
    centroid = (spectrum @ freqs[:spectrum.shape[1]]) / (spectrum.sum(axis=1) + 1e-20) / 1000
    log_spectrum = np.log(spectrum + 1e-10 * spectrum.max() + 1e-30)
    flux = np.sqrt((np.diff(log_spectrum, axis=0) ** 2).mean(axis=1))

    out = np.full(len(NAMES), np.nan)
    out[_AT["voiced_share"]] = voiced.sum() / max(int(active.sum()), 1)
    out[_AT["active_share"]] = active.mean()
    if voiced.sum() >= MIN_VOICED:
        semitones = 12 * np.log2(f0[voiced] / 100.0)
        steps = np.abs(np.diff(semitones))
        steps = steps[steps < 3]             # larger jumps are octave errors or a new voiced run
        out[_AT["f0_median"]] = np.median(semitones)
        out[_AT["f0_std"]] = semitones.std()
        out[_AT["f0_range"]] = np.percentile(semitones, 90) - np.percentile(semitones, 10)
        out[_AT["f0_step"]] = steps.mean() if len(steps) else 0.0
        out[_AT["periodicity"]] = b[voiced].mean()
        out[_AT["alpha_voiced"]] = alpha[voiced].mean()
        out[_AT["hammarberg_voiced"]] = hammarberg[voiced].mean()
    spoken = relative[active]
    out[_AT["energy_std"]] = spoken.std() if len(spoken) > 1 else 0.0
    out[_AT["energy_range"]] = np.percentile(spoken, 90) - np.percentile(spoken, 10) if len(spoken) > 1 else 0.0
    out[_AT["energy_step"]] = np.abs(np.diff(energy[active])).mean() if active.sum() > 2 else 0.0
    out[_AT["alpha_active"]] = alpha[active].mean()
    out[_AT["centroid_khz"]] = centroid[active].mean()
    out[_AT["centroid_std_khz"]] = centroid[active].std()
    out[_AT["spectral_flux"]] = flux[active[1:]].mean() if active[1:].any() else 0.0
    out[_AT["voiced_onsets_per_s"]] = (np.diff(voiced.astype(np.int8)) == 1).sum() / (len(voiced) * HOP / SAMPLE_RATE)
    out[_AT["pitch_missing"]] = float(voiced.sum() < MIN_VOICED)
    return out
