"""Speech detection: Silero VAD (ONNX) over 32 ms chunks, with on/off hysteresis, so only speech reaches the tone model."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from appliance.manifest import ModelManifest
from appliance.perception.stage import StageTimes, Stopwatch
from appliance.runtime import RuntimeConfig, open_session
from appliance.sources.audio import SAMPLE_RATE

CHUNK = 512      # samples = 32 ms at SAMPLE_RATE, what the model takes
CONTEXT = 64     # samples of the previous chunk the model sees in front of each chunk
# The VAD is tiny and stateful (one chunk at a time): the CPU is right for it everywhere, whatever the config says.
RUNTIME = RuntimeConfig(providers=["cpu"], intra_op_threads=1)


@dataclass(frozen=True)
class SpeechChunks:
    speech: np.ndarray        # the samples judged speech, in order (float32)
    seconds_in: float         # audio consumed
    seconds_speech: float
    peak: float               # max |sample| of the input, to notice clipping
    clipped: float            # fraction of input samples at full scale
    chunks: int = 0           # 32 ms chunks the model ran on (the stage's work, for per-chunk timing)


class VoiceActivity:
    """Stateful streaming VAD: ``vad(audio)`` takes any amount of audio -> the speech in it (``SpeechChunks``); it
    keeps the remainder for the next call."""

    name = "vad"

    def __init__(self, manifest: ModelManifest, threshold: float = 0.5, release: float = 0.35,
                 hangover_chunks: int = 3):
        self._session, self.report = open_session(manifest, RUNTIME)
        self.threshold = threshold
        self.release = release
        self.hangover_chunks = hangover_chunks
        # The model runs once per 32 ms chunk, ~30 times a second, each call a fraction of a millisecond: through
        # IO binding onto buffers made here, a call allocates nothing and touches the same memory every tick.
        # The window is [context | chunk]; the recurrent state ping-pongs between two buffers, one binding each way.
        self._window = np.zeros((1, CONTEXT + CHUNK), np.float32)
        self._states = (np.zeros((2, 1, 128), np.float32), np.zeros((2, 1, 128), np.float32))
        self._out = np.zeros((1, 1), np.float32)
        self._sr = np.array(SAMPLE_RATE, np.int64)
        self._bindings = [self._bind(src, dst) for src, dst in ((0, 1), (1, 0))]
        self.times = StageTimes()
        self.reset()

    def _bind(self, src: int, dst: int) -> ort.IOBinding:
        binding = self._session.io_binding()
        # OrtValues over numpy memory share it (no copy); the arrays, held by this object, keep it alive.
        wrap = ort.OrtValue.ortvalue_from_numpy
        binding.bind_ortvalue_input("input", wrap(self._window))
        binding.bind_ortvalue_input("state", wrap(self._states[src]))
        binding.bind_ortvalue_input("sr", wrap(self._sr))
        binding.bind_ortvalue_output("output", wrap(self._out))
        binding.bind_ortvalue_output("stateN", wrap(self._states[dst]))
        return binding

    def warm_up(self) -> None:
        """One call before the loop starts (ONNX Runtime allocates on the first), then back to a clean state."""
        self.probability(np.zeros(CHUNK, np.float32))
        self.reset()

    def reset(self) -> None:
        for buffer in (self._window, *self._states):
            buffer.fill(0.0)
        self._turn = 0             # which binding runs next: its input state holds the latest state
        self._pending = np.zeros(0, np.float32)
        self._speaking = False
        self._quiet = 0
        self.last_probability = 0.0

    def probability(self, chunk: np.ndarray) -> float:
        self._window[0, CONTEXT:] = chunk
        self._session.run_with_iobinding(self._bindings[self._turn])
        self._turn ^= 1
        self._window[0, :CONTEXT] = chunk[-CONTEXT:]
        return float(self._out[0, 0])

    def __call__(self, audio: np.ndarray) -> SpeechChunks:
        return self.feed(audio)

    def feed(self, audio: np.ndarray) -> SpeechChunks:
        watch = Stopwatch()
        audio = np.asarray(audio, np.float32)
        magnitude = np.abs(audio)
        peak = float(magnitude.max()) if len(audio) else 0.0
        clipped = float((magnitude >= 0.999).mean()) if len(audio) else 0.0
        data = np.concatenate([self._pending, audio])
        n = len(data) // CHUNK
        self._pending = data[n * CHUNK:]
        watch.lap("pre")
        kept, network = [], 0.0
        for i in range(n):
            chunk = data[i * CHUNK:(i + 1) * CHUNK]
            t0 = time.perf_counter()
            p = self.probability(chunk)
            network += time.perf_counter() - t0
            self.last_probability = p
            if p >= self.threshold:
                self._speaking, self._quiet = True, 0
            elif self._speaking and p < self.release:
                self._quiet += 1
                if self._quiet > self.hangover_chunks:
                    self._speaking = False
            if self._speaking:
                kept.append(chunk)
        speech = np.concatenate(kept) if kept else np.zeros(0, np.float32)
        watch.lap("post")
        self.times = StageTimes(watch.pre, network, watch.post - network, n)
        return SpeechChunks(speech, len(audio) / SAMPLE_RATE, len(speech) / SAMPLE_RATE, peak, clipped, n)
