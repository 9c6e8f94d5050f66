"""The tick's work: a list of stages, each ``compute(tick, data)``, run in order on one ``TickData``.

Each stage reads what the stages before it put into the tick's data and adds its own; it times its parts with the
tick's one stage timer, under the names the stats and the benchmark report (``STAGE_NAMES``). A stage keeps no
reference to another; what it needs from the rest of the daemon it is given when it is built (``assemble``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from appliance.windows.aggregate import WindowAggregator, WindowSummary
from appliance.windows.alerts import Alert, Anger
from appliance.daemon.loop import Tick
from appliance.sources.camera import Frame, SourceState

log = logging.getLogger(__name__)

STAGE_NAMES = ("capture", "detect", "crop", "expression", "audio", "vad", "features", "tone", "aggregate", "publish")
# No face then says nothing about the shop. STARTING too: a camera that has not delivered its first frame (a stream
# that accepts the connection and never answers blocks its first open for as long as the open timeout allows).
CAMERA_DOWN = (SourceState.STARTING, SourceState.RETRYING, SourceState.STALLED)


@dataclass
class TickData:
    now: float                                     # wall time of the tick's slot
    probs: np.ndarray                              # (faces, labels) calibrated expression probabilities
    frame: Frame | None = None
    boxes: tuple = ()
    speech_s: float = 0.0
    tone: np.ndarray | None = None                 # (1, labels) when a speech segment was classified this tick
    voice_anger: float | None = None
    window: WindowSummary | None = None
    alert: Alert | None = None


@dataclass
class Health:
    """What the stages saw, for the telemetry: filled as they run, read by stats and the run report."""
    camera_state: str = "starting"
    frames_used: int = 0
    frames_dropped: int = 0
    microphone_state: str | None = None
    audio_lost_samples: int = 0     # the telemetry turns it into seconds when it reports, not every tick

    voice_segments: int = 0         # speech segments classified by the voice worker
    voice_dropped: int = 0          # dropped because the worker was behind

    def note_microphone(self, audio) -> None:
        self.microphone_state, self.audio_lost_samples = audio.state.value, audio.ring.lost

    def note_voice(self, worker) -> None:
        self.voice_segments, self.voice_dropped = worker.classified, worker.dropped


class Stage(Protocol):
    def compute(self, tick: Tick, data: TickData) -> None: ...


class Capture:
    def __init__(self, source, health: Health):
        self.source, self.health = source, health

    def compute(self, tick: Tick, data: TickData) -> None:
        with tick.stage("capture"):
            data.frame = self.source.buffer.take()
        if data.frame is None:
            self.source.check_stall(tick.started)
        buffer = self.source.buffer
        self.health.camera_state = self.source.state.value
        self.health.frames_used, self.health.frames_dropped = buffer.delivered, buffer.dropped


class Vision:
    """Staff zones blacked out, faces found, cropped and read. ``replicate`` (benchmark only) reads the first face N
    times, as if N customers stood there."""

    def __init__(self, zones, detector, expression, replicate: int = 0):
        self.zones, self.detector, self.expression, self.replicate = zones, detector, expression, replicate

    def compute(self, tick: Tick, data: TickData) -> None:
        if data.frame is None:
            return
        with tick.stage("detect"):
            image = self.zones.apply(data.frame.image)     # black before any model sees the frame
            boxes = self.zones.drop(self.detector(image).boxes)
        tick.parts["detect"] = self.detector.times
        if self.replicate and boxes:
            boxes = tuple(boxes[:1]) * self.replicate
        with tick.stage("crop"):
            crops = self.expression.crop(image, boxes)       # the expression model's own framing
        with tick.stage("expression"):
            data.probs = self.expression(crops).probabilities
        tick.parts["expression"] = self.expression.times
        tick.items["expression"] = len(crops)
        data.boxes = boxes


class Voice:
    """New audio -> speech chunks -> a speech segment every step, handed to the voice worker -> the tone model's
    probabilities of the segments it finished since the last tick. The worker's features and tone run beside the
    tick (``daemon/voice_worker.py``); their times are reported under their stage names, apart from the tick's."""

    def __init__(self, audio, vad, speech, worker, health: Health):
        self.audio, self.vad, self.speech, self.worker, self.health = audio, vad, speech, worker, health
        self._clip_warned_at = -1e9

    def compute(self, tick: Tick, data: TickData) -> None:
        with tick.stage("audio"):
            new_audio = self.audio.ring.read_new()
        with tick.stage("vad"):
            chunks = self.vad(new_audio)
        tick.parts["vad"] = self.vad.times
        tick.items["vad"] = chunks.chunks
        data.speech_s = chunks.seconds_speech
        self._check_clipping(chunks.clipped, tick.started)
        segment = self.speech.push(chunks.speech)
        if segment is not None:
            self.worker.submit(segment)
        done = self.worker.take()
        if done:
            data.tone = np.concatenate([r.probabilities for r in done])
            # Two results in one tick (the worker caught up): the alert's short window takes their mean.
            data.voice_anger = float(np.mean([r.anger for r in done]))
            last = done[-1]
            tick.beside["features"] = sum(r.features.total for r in done)
            tick.beside["tone"] = sum(r.tone.total for r in done)
            tick.parts["features"], tick.parts["tone"] = last.features, last.tone
        self.health.note_microphone(self.audio)
        self.health.note_voice(self.worker)

    def reset(self) -> None:
        """After a pause: nothing heard before it may join what is heard after."""
        self.vad.reset()
        self.speech.reset()
        self.worker.reset()

    def _check_clipping(self, clipped_fraction: float, now: float) -> None:
        # Clipped input distorts the spectrum the tone model reads; say so, at most once a minute.
        if clipped_fraction > 0.01 and now - self._clip_warned_at > 60:
            self._clip_warned_at = now
            log.warning("audio input is clipping (%.0f%% of samples at full scale): lower the microphone gain",
                        100 * clipped_fraction)


class DiscardAudio:
    """While paused: the audio is taken only to be thrown away, so nothing heard then is read after."""

    def __init__(self, audio, health: Health):
        self.audio, self.health = audio, health

    def compute(self, tick: Tick, data: TickData) -> None:
        self.audio.ring.read_new()
        self.health.note_microphone(self.audio)


class Windows:
    """The tick's faces and voice into the window, and the anger alert's state."""

    def __init__(self, aggregator: WindowAggregator, anger: Anger | None, source, face_angry: int):
        self.aggregator, self.anger, self.source, self.face_angry = aggregator, anger, source, face_angry

    def compute(self, tick: Tick, data: TickData) -> None:
        with tick.stage("aggregate"):
            if data.frame is not None:
                data.window = self.aggregator.add(data.now, data.boxes, data.probs, data.speech_s, data.tone)
            else:
                data.window = self.aggregator.advance(data.now, data.speech_s, data.tone,
                                                      camera_down=self.source.state in CAMERA_DOWN)
            if self.anger is not None:
                face_anger = float(data.probs[:, self.face_angry].mean()) if len(data.probs) else None
                data.alert = self.anger.update(data.now, face_anger, data.voice_anger)


class Publish:
    """The tick's alert, window and (when due) stats to the outbox writer; the disk is written after the tick."""

    def __init__(self, events, telemetry):
        self.events, self.telemetry = events, telemetry

    def compute(self, tick: Tick, data: TickData) -> None:
        due = self.telemetry.stats_due(tick.started)
        if data.window is None and data.alert is None and not due:
            return
        with tick.stage("publish"):
            if data.alert is not None:
                self.events.alert(data.alert)
            if data.window is not None:
                self.events.summary(data.window)
                self.telemetry.log_health()
            if due:
                self.events.stats(self.telemetry.stats(data.now + self.events.shift(), tick.started))
