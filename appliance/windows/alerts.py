"""Anger alerts from a short sliding window, with hysteresis and a cool-down: one angry minute is one alert.

Input per tick: the mean P(angry) of the faces seen in that tick (or None) and the P(angry) of a tone result that
tick produced (or None). The short-window index is the calibrated combination of the face mean and the voice mean,
whichever are present (``fusion.AngerIndex``). Nothing about who is angry is kept or sent: only the index.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from appliance.windows.config import AlertsConfig
from appliance.windows.fusion import AngerIndex


@dataclass(frozen=True)
class Alert:
    at: float                # wall-clock epoch seconds
    anger_index: float
    face_anger: float | None
    voice_anger: float | None
    window_s: float
    threshold: float


class Anger:
    def __init__(self, cfg: AlertsConfig, tick_period_s: float, voice_step_s: float, anger_index: AngerIndex):
        self.cfg = cfg
        self.anger_index = anger_index
        # Set to a list to keep every tick's (t, face, voice) input: the session benchmark replays them through
        # other thresholds, which cannot change the inputs.
        self.inputs: list[tuple[float, float | None, float | None]] | None = None
        self.tick_period_s = tick_period_s
        self.voice_step_s = voice_step_s
        self._face: deque[tuple[float, float]] = deque()
        self._voice: deque[tuple[float, float]] = deque()
        self._face_sum = 0.0
        self._voice_sum = 0.0
        self._armed = True
        self._last_alert: float | None = None
        self.index: float | None = None
        self.fired = 0
        self.held_back = 0    # crossings inside the cool-down

    def update(self, t: float, face_anger: float | None, voice_anger: float | None) -> Alert | None:
        if self.inputs is not None:
            self.inputs.append((t, face_anger, voice_anger))
        # Running sums beside the deques: this runs every tick, and the window holds ~50 face values.
        if face_anger is not None:
            self._face.append((t, face_anger))
            self._face_sum += face_anger
        if voice_anger is not None:
            self._voice.append((t, voice_anger))
            self._voice_sum += voice_anger
        horizon = t - self.cfg.window_s
        while self._face and self._face[0][0] <= horizon:
            self._face_sum -= self._face.popleft()[1]
        while self._voice and self._voice[0][0] <= horizon:
            self._voice_sum -= self._voice.popleft()[1]
        if not self._face:
            self._face_sum = 0.0     # an empty window resets the sums, so rounding cannot creep over days
        if not self._voice:
            self._voice_sum = 0.0
        face_s, voice_s = len(self._face) * self.tick_period_s, len(self._voice) * self.voice_step_s
        face = self._face_sum / len(self._face) if self._face else None
        voice = self._voice_sum / len(self._voice) if self._voice else None
        # A modality sets the index's floor only on the evidence it would need alone: a face in view must not let
        # one second of speech raise an alert that the voice alone could not.
        need = self.cfg.min_evidence_s
        self.index = self.anger_index(face, voice, face_alone=face_s >= need, voice_alone=voice_s >= need) \
            if face_s + voice_s >= need else None
        if self.index is None:
            return None
        if not self._armed:
            if self.index < self.cfg.off_threshold:
                self._armed = True
            return None
        if self.index < self.cfg.on_threshold:
            return None
        self._armed = False
        if self._last_alert is not None and t - self._last_alert < self.cfg.cooldown_s:
            self.held_back += 1
            return None
        self._last_alert = t
        self.fired += 1
        return Alert(t, self.index, self.anger_index.face_value(face), self.anger_index.voice_value(voice),
                     self.cfg.window_s, self.cfg.on_threshold)
