"""Audio sources: a PyAudio microphone or a WAV/FLAC file, into a ring buffer holding the last few seconds.

The loop reads "everything new since my last read" each tick; the source thread never waits for it. Audio is
16 kHz mono float32 in [-1, 1]. A missing or vanished microphone is retried with backoff and reported; the vision
path keeps running meanwhile. A file that is empty, undecodable or not audio is a start-up error; a file at another
sample rate is resampled once at load (and said so in the log).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from appliance.sources.base import SourceError, SourceState, ThreadedSource

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BLOCK = 320   # 20 ms


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling of a whole signal (FFT method): exact for a file, no extra dependency."""
    if sr_in == sr_out or len(audio) == 0:
        return audio.astype(np.float32)
    n_out = int(round(len(audio) * sr_out / sr_in))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    keep = min(len(spectrum), n_out // 2 + 1)
    out_spectrum = np.zeros(n_out // 2 + 1, dtype=complex)
    out_spectrum[:keep] = spectrum[:keep]
    return (np.fft.irfft(out_spectrum, n_out) * (n_out / len(audio))).astype(np.float32)


class AudioRing:
    """The last ``seconds`` of audio. One writer (the source), one reader (the loop) with its own cursor."""

    def __init__(self, seconds: float = 4.0, sample_rate: int = SAMPLE_RATE):
        self.capacity = int(seconds * sample_rate)
        self._data = np.zeros(self.capacity, np.float32)
        self._written = 0        # samples ever written
        self._read = 0           # samples ever handed to the reader
        self._lock = threading.Lock()
        self.lost = 0            # samples overwritten before the reader got them

    @property
    def written(self) -> int:
        return self._written

    def write(self, block: np.ndarray) -> None:
        block = np.asarray(block, np.float32)
        keep = block[-self.capacity:]        # a block longer than the ring: only its end can be kept
        with self._lock:
            start = (self._written + len(block) - len(keep)) % self.capacity
            first = min(len(keep), self.capacity - start)
            self._data[start:start + first] = keep[:first]
            self._data[:len(keep) - first] = keep[first:]
            self._written += len(block)

    def read_new(self) -> np.ndarray:
        with self._lock:
            behind = self._written - self._read
            if behind > self.capacity:
                self.lost += behind - self.capacity
                behind = self.capacity
            start = (self._written - behind) % self.capacity
            end = start + behind
            out = (self._data[start:end].copy() if end <= self.capacity
                   else np.concatenate([self._data[start:], self._data[:end - self.capacity]]))
            self._read = self._written
        return out


def load_audio_file(path: str | Path) -> np.ndarray:
    """The whole file as 16 kHz mono float32; SourceError with the reason when it cannot be used."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise SourceError(f"audio file {path} does not exist")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise SourceError(f"audio file {path} cannot be decoded as WAV/FLAC/OGG ({e})") from None
    if len(audio) == 0:
        raise SourceError(f"audio file {path} has no samples")
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        log.info("audio file %s is %d Hz; resampling to %d Hz", path, rate, SAMPLE_RATE)
        mono = resample(mono, rate, SAMPLE_RATE)
    return mono


class _Source(ThreadedSource):
    kind = "audio"

    def __init__(self, ring: AudioRing | None, on_state: Callable[[SourceState, str], None] | None):
        super().__init__(self.kind, on_state)
        self.ring = ring or AudioRing()


class FileAudioSource(_Source):
    """Plays a file into the ring in 20 ms blocks, paced to real time (or as fast as asked), optionally looping."""

    kind = "audio-file"

    def __init__(self, path: str | Path, realtime: bool = True, loop: bool = False, ring: AudioRing | None = None,
                 on_state: Callable[[SourceState, str], None] | None = None):
        super().__init__(ring, on_state)
        self.path = Path(path)
        self.audio = load_audio_file(path)
        self.realtime = realtime
        self.loop = loop

    def describe(self) -> str:
        return f"audio file {self.path}"

    def _run(self) -> None:
        self._set_state(SourceState.OK)
        t0, sent = time.monotonic(), 0
        while not self._stop.is_set():
            for start in range(0, len(self.audio), BLOCK):
                if self._stop.is_set():
                    return
                self.ring.write(self.audio[start:start + BLOCK])
                sent += min(BLOCK, len(self.audio) - start)
                if self.realtime:
                    delay = t0 + sent / SAMPLE_RATE - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
            if not self.loop:
                self._set_state(SourceState.ENDED, "end of file")
                return


class MicSource(_Source):
    """PyAudio input stream (16 kHz mono int16) whose callback feeds the ring; reopened when the device vanishes."""

    kind = "microphone"

    def __init__(self, device: str | int | None = None, ring: AudioRing | None = None,
                 on_state: Callable[[SourceState, str], None] | None = None, retry_initial_s: float = 0.5,
                 retry_max_s: float = 30.0, stall_timeout_s: float = 2.0):
        super().__init__(ring, on_state)
        self.device = device
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.stall_timeout_s = stall_timeout_s
        self.reopens = 0
        self._last_block = 0.0

    def describe(self) -> str:
        return f"microphone {self.device if self.device is not None else '(default)'}"

    @staticmethod
    def find_device(pa, wanted: str | int | None) -> int | None:
        """Index of the input device by index or case-insensitive name substring; None for the default."""
        if wanted is None or wanted == "":
            return None
        if isinstance(wanted, int) or str(wanted).isdigit():
            return int(wanted)
        names = []
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            if info.get("maxInputChannels", 0) > 0:
                names.append(info["name"])
                if str(wanted).lower() in info["name"].lower():
                    return i
        raise SourceError(f"no input device matching {wanted!r} (inputs: {', '.join(names) or 'none'})")

    def _callback(self, data, frames, time_info, status):
        import pyaudio

        self.ring.write(np.frombuffer(data, dtype=np.int16).astype(np.float32) / 32768.0)
        self._last_block = time.monotonic()
        return None, pyaudio.paContinue

    def _run(self) -> None:
        import pyaudio

        backoff = self.retry_initial_s
        while not self._stop.is_set():
            pa = pyaudio.PyAudio()
            stream = None
            try:
                index = self.find_device(pa, self.device)
                stream = pa.open(format=pyaudio.paInt16, channels=1, rate=SAMPLE_RATE, input=True,
                                 input_device_index=index, frames_per_buffer=BLOCK, stream_callback=self._callback)
                self._last_block = time.monotonic()
                stream.start_stream()
                self._set_state(SourceState.OK)
                backoff = self.retry_initial_s
                # The callback does the work; here we only watch that it keeps coming.
                while not self._stop.is_set():
                    self._stop.wait(0.2)
                    if not stream.is_active() or time.monotonic() - self._last_block > self.stall_timeout_s:
                        raise OSError("the input stream stopped delivering audio")
            except (OSError, SourceError, ValueError) as e:
                self._set_state(SourceState.RETRYING, f"{e}; next try in {backoff:.1f} s")
                self.reopens += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.retry_max_s)
            finally:
                if stream is not None:
                    try:
                        stream.stop_stream()
                        stream.close()
                    except OSError:
                        pass
                pa.terminate()
