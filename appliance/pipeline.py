"""The daemon: wires source -> faces -> expression -> windows -> MQTT and runs them in the fixed-rate loop.

Data flows one way. The loop owns time; stages only compute. Every tick is timed per stage by the same timer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from appliance import __version__
from appliance.aggregate import FaceTracker, WindowAggregator, WindowSummary
from appliance.config import AppConfig, parse_broker_url
from appliance.loop import FixedRateScheduler, percentiles
from appliance.manifest import load_manifest, verify_variant
from appliance.perception.expression import ExpressionModel
from appliance.perception.faces import FaceDetector, crop_faces
from appliance.publish.broker import EmbeddedBroker
from appliance.publish.mqtt import MqttPublisher
from appliance.publish.payloads import summary_payload
from appliance.sources.camera import CameraSource, SourceState, resolve_spec
from appliance.state import SeqCounter

log = logging.getLogger(__name__)

STAGES = ("capture", "detect", "crop", "expression", "aggregate", "publish")


@dataclass
class RunReport:
    ticks: int = 0
    deadline_misses: int = 0
    skipped_slots: int = 0
    frames_dropped: int = 0
    frames_used: int = 0
    summaries: int = 0
    published_dropped: int = 0
    rate_hz: float = 0.0
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    end_to_end: dict[str, float] = field(default_factory=dict)
    providers: dict[str, dict] = field(default_factory=dict)


def face_detector_path(config: AppConfig):
    manifest = load_manifest(config.models.dir / "tflite" / "blazeface_short_range")
    return verify_variant(manifest, manifest.variants[0])


class Pipeline:
    def __init__(self, config: AppConfig, on_summary: Callable[[dict], None] | None = None,
                 on_broker: Callable[[str], None] | None = None):
        self.config = config
        self.on_summary = on_summary
        self.scheduler = FixedRateScheduler(config.loop.rate_hz)
        # Everything that can fail on bad input fails here, before anything is started; cheapest checks first,
        # and the MediaPipe detector (which must be closed explicitly) last.
        self.spec = resolve_spec(config.camera.source)
        self.source = CameraSource(self.spec, config.camera, on_state=self._camera_state)
        self.seq = SeqCounter(config.state.dir / "seq")
        self.expression = ExpressionModel(load_manifest(config.models.dir / "onnx" / config.expression.model),
                                          config.runtime)
        self.aggregator = WindowAggregator(
            self.expression.labels, config.aggregate.window_s, self.scheduler.period, config.k_min,
            config.aggregate.min_observed_s,
            FaceTracker(config.aggregate.track_max_age_s, config.aggregate.track_iou))
        self.detector = FaceDetector(face_detector_path(config), config.faces.score_threshold,
                                     config.faces.max_faces, config.faces.min_face_px, config.faces.tiles)
        self.broker: EmbeddedBroker | None = None
        if config.mqtt.broker is None:
            self.broker = EmbeddedBroker(config.mqtt.embedded_port)
            broker_url = None
        else:
            broker_url = config.mqtt.broker
        self._broker_url = broker_url
        self._on_broker = on_broker
        self.publisher: MqttPublisher | None = None
        self.summaries = 0
        self.models = [
            {"model": "blazeface_short_range", "provider": "xnnpack", "precision": "fp32"},
            {"model": self.expression.report.model, "provider": self.expression.report.provider,
             "precision": self.expression.report.precision},
        ]

    # ------------------------------------------------------------------------------------------- control
    def stop(self) -> None:
        self.scheduler.stop()

    def _camera_state(self, state: SourceState, detail: str) -> None:
        if self.publisher is not None:
            self.publisher.set_status("online", profile=self.config.device.profile, camera=state.value,
                                      models=self.models)

    # ------------------------------------------------------------------------------------------- run
    def run(self, duration: float | None = None) -> RunReport:
        cfg = self.config
        if self.broker is not None:
            self.broker.start()
            self._broker_url = self.broker.url
        if self._on_broker:
            self._on_broker(self._broker_url)
        self.publisher = MqttPublisher(cfg.mqtt, parse_broker_url(self._broker_url), cfg.device.id, __version__)
        self.publisher.set_status("online", profile=cfg.device.profile, camera=self.source.state.value,
                                  models=self.models)
        self.publisher.start()
        self.source.start()
        wall0, mono0 = time.time(), time.monotonic()
        stop_at = mono0 + duration if duration else None
        crop_size = self.expression.size
        empty = np.zeros((0, len(self.expression.labels)), np.float32)
        try:
            for tick in self.scheduler.run():
                now = wall0 + (tick.scheduled - mono0)   # wall time that cannot jump with NTP mid-run
                with tick.stage("capture"):
                    frame = self.source.buffer.take()
                boxes, probs = (), empty
                if frame is None:
                    self.source.check_stall(tick.started)
                else:
                    with tick.stage("detect"):
                        boxes = self.detector.detect(frame.image).boxes
                    with tick.stage("crop"):
                        crops = crop_faces(frame.image, boxes, crop_size, cfg.faces.margin)
                    with tick.stage("expression"):
                        probs = self.expression.classify(crops).probabilities
                with tick.stage("aggregate"):
                    window = self.aggregator.add(now, boxes, probs) if frame is not None \
                        else self.aggregator.advance(now)
                if window is not None:
                    with tick.stage("publish"):
                        self._emit(window)
                if (stop_at and time.monotonic() >= stop_at) or (self.source.ended and frame is None):
                    break
            final = self.aggregator.flush(wall0 + (time.monotonic() - mono0))
            if final is not None:
                self._emit(final)
        finally:
            self.source.stop()
            self.detector.close()
            self.publisher.stop()
            if self.broker is not None:
                self.broker.stop()
        return self.report()

    def _emit(self, window: WindowSummary) -> None:
        payload = summary_payload(window, self.config.device.id, self.seq.next(), self.config.device.profile)
        self.publisher.publish("summary", payload)
        self.summaries += 1
        self._log_health()
        if self.on_summary:
            self.on_summary(payload)

    def _log_health(self) -> None:
        recent = list(self.scheduler.recent)[-int(self.config.aggregate.window_s * self.config.loop.rate_hz):]
        e2e = percentiles([t.latency for t in recent])
        log.info("loop: %d ticks, %d deadline misses, tick p50 %.1f ms p99 %.1f ms; camera %s, %d frames dropped",
                 self.scheduler.ticks, self.scheduler.misses, e2e["p50_ms"], e2e["p99_ms"], self.source.state.value,
                 self.source.buffer.dropped)

    def report(self) -> RunReport:
        ticks = list(self.scheduler.recent)
        elapsed = (ticks[-1].finished - ticks[0].scheduled) if ticks else 0.0
        return RunReport(
            ticks=self.scheduler.ticks, deadline_misses=self.scheduler.misses, skipped_slots=self.scheduler.skipped,
            frames_dropped=self.source.buffer.dropped, frames_used=self.source.buffer.delivered,
            summaries=self.summaries, published_dropped=self.publisher.dropped if self.publisher else 0,
            rate_hz=round(len(ticks) / elapsed, 3) if elapsed > 0 else 0.0,
            stages={s: percentiles([t.stages[s] for t in ticks if s in t.stages]) for s in STAGES},
            end_to_end=percentiles([t.latency for t in ticks]),
            providers={m["model"]: m for m in self.models},
        )
