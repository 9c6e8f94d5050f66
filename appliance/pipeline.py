"""The daemon: wires source -> faces -> expression -> windows -> MQTT and runs them in the fixed-rate loop.

Data flows one way. The loop owns time; stages only compute. Every tick is timed per stage by the same timer.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from appliance import __version__
from appliance.aggregate import FaceTracker, WindowAggregator, WindowSummary
from appliance.alerts import Alert, Anger
from appliance.fusion import load_fusion
from appliance.statedir import StateDirLock
from appliance.audit import AuditLog
from appliance.config import DEMO_VIDEO, AppConfig, parse_broker_url
from appliance.cpu_latency import CpuLatencyRequest
from appliance.loop import FixedRateScheduler, percentiles, stage_percentiles
from appliance.manifest import load_manifest, verify_variant
from appliance.perception.expression import ExpressionModel
from appliance.perception.faces import FaceDetector
from appliance.perception.vad import VoiceActivity
from appliance.perception.zones import ExclusionZones
from appliance.perception.voice import SpeechBuffer, VoiceToneModel
from appliance.publish.broker import EmbeddedBroker
from appliance.publish.discovery import discovery_messages
from appliance.publish.mqtt import MqttPublisher, Topics, check_setup
from appliance.publish.outbox import Outbox, OutboxWriter
from appliance.publish.payloads import alert_payload, stats_payload, summary_payload
from appliance.sources.audio import FileAudioSource, MicSource
from appliance.sources.camera import CameraSource, CameraSpec, SourceState, resolve_spec
from appliance.sources.replay import Replay
from appliance.systemd_notify import Notifier
from appliance.system import SystemMonitor

CAMERA_DOWN = (SourceState.RETRYING, SourceState.STALLED)   # no face then says nothing about the shop

log = logging.getLogger(__name__)

STAGES = ("capture", "detect", "crop", "expression", "audio", "vad", "features", "tone", "aggregate", "publish")
DEMO_AUDIO = DEMO_VIDEO.with_suffix(".flac")


@dataclass
class RunReport:
    ticks: int = 0
    deadline_misses: int = 0
    skipped_slots: int = 0
    frames_dropped: int = 0
    frames_used: int = 0
    summaries: int = 0
    alerts: int = 0
    audio_lost_seconds: float = 0.0
    outbox_dropped: int = 0
    outbox_depth: int = 0
    rate_hz: float = 0.0
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    end_to_end: dict[str, float] = field(default_factory=dict)
    providers: dict[str, dict] = field(default_factory=dict)


def make_audio_source(config: AppConfig, camera: CameraSpec, camera_loops: bool, on_state=None):
    """The configured audio source, or None. 'auto' means the demo's soundtrack when the camera is the demo."""
    source = config.audio.source.strip()
    if source == "auto":
        is_demo = camera.kind == "file" and str(camera.target) == str(DEMO_VIDEO)
        source = str(DEMO_AUDIO) if is_demo else "none"
    if source == "none":
        return None
    if source == "mic" or source.startswith("mic:"):
        return MicSource(source[4:] or None, on_state=on_state, retry_initial_s=config.audio.retry_initial_s,
                         retry_max_s=config.audio.retry_max_s)
    loop = config.audio.loop if config.audio.loop is not None else camera_loops
    return FileAudioSource(source, realtime=config.audio.realtime, loop=loop, on_state=on_state)


def face_detector_path(config: AppConfig):
    manifest = load_manifest(config.models.dir / "tflite" / "blazeface_short_range")
    return verify_variant(manifest, manifest.variants[0])


def face_detector_sha(config: AppConfig) -> str:
    return load_manifest(config.models.dir / "tflite" / "blazeface_short_range").variants[0].sha256


class Pipeline:
    def __init__(self, config: AppConfig, on_summary: Callable[[dict], None] | None = None,
                 on_broker: Callable[[str], None] | None = None, on_alert: Callable[[dict], None] | None = None,
                 history_ticks: int = 3000, replicate_faces: int = 0, replay: Replay | None = None):
        self.config = config
        self.on_summary = on_summary
        self.on_alert = on_alert
        self.replicate_faces = replicate_faces
        self.notifier = Notifier()
        # A replay runs on its own clock: the loop's waits advance it instead of sleeping (sources/replay.py).
        clock = {"clock": replay.clock.now, "wait": replay.clock.advance} if replay else {}
        self.scheduler = FixedRateScheduler(config.loop.rate_hz, history=history_ticks, **clock)
        latency = config.loop.cpu_wakeup_latency_us
        self.cpu_latency = CpuLatencyRequest(latency) if latency is not None else None
        # Everything that can fail on bad input fails here, before anything is started; cheapest checks first,
        # and the MediaPipe detector (which must be closed explicitly) last.
        self.spec = resolve_spec(config.camera.source, config.camera)
        if replay is not None:
            self.source, self.audio = replay.camera, replay.audio
        else:
            self.source = CameraSource(self.spec, config.camera, on_state=self._camera_state)
            self.audio = make_audio_source(config, self.spec, self.source.loop_file, on_state=self._audio_state)
        if config.mqtt.broker is not None:
            check_setup(config.mqtt, parse_broker_url(config.mqtt.broker))
        # One daemon per state folder (statedir.py); held until run() ends, or close() for a pipeline never run.
        self.state_lock = StateDirLock(config.state.dir).acquire()
        state_dir = self.state_lock.path.parent
        # Every event goes to disk first; the seq lives there too, and in the one-line file 'seq' beside it.
        self.outbox = Outbox(state_dir / "outbox.sqlite3", config.outbox, seq_file=state_dir / "seq",
                             device_id=config.device.id)
        models = config.models.dir / "onnx"
        self.expression = ExpressionModel(load_manifest(models / config.expression.model), config.runtime,
                                          margin=config.faces.margin)
        self.vad = self.tone = self.speech = None
        voice_labels: tuple[str, ...] = ()
        if self.audio is not None:
            self.vad = VoiceActivity(load_manifest(models / config.voice.vad_model), config.voice.vad_threshold)
            self.tone = VoiceToneModel(load_manifest(models / config.voice.model), config.runtime)
            self.speech = SpeechBuffer(config.voice.step_s, config.voice.min_speech_s)
            voice_labels = self.tone.labels
        self.anger_index = load_fusion(
            config.models.dir, self.expression.manifest, self.expression.runtime_report.file,
            self.tone and self.tone.manifest, self.tone and self.tone.runtime_report.file)
        self.aggregator = WindowAggregator(
            self.expression.labels, config.aggregate.window_s, self.scheduler.period, config.k_min,
            config.aggregate.min_observed_s,
            FaceTracker(config.aggregate.track_max_age_s, config.aggregate.track_iou),
            voice_labels=voice_labels, min_speech_s=config.voice.min_speech_s, anger_index=self.anger_index)
        self.anger = Anger(config.alerts, self.scheduler.period, config.voice.step_s, self.anger_index) \
            if config.alerts_enabled else None
        self._clip_warned_at = -1e9
        self.zones = ExclusionZones(config.privacy.exclusion_zones)
        self.audit = AuditLog(config.state.dir / "audit.log")
        self.paused_by: set[str] = set()
        self._pause_file = config.pause_file
        self._pause_file_checked = float("-inf")
        self._signal_pause: bool | None = None    # set from a signal handler, applied by the loop
        self._no_faces = np.zeros((0, len(self.expression.labels)), np.float32)
        self._face_angry = self.expression.labels.index("angry")
        self._voice_angry = self.tone.labels.index("angry") if self.tone else None
        self._detector_sha = face_detector_sha(config)
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
        self.warm_up_s = 0.0           # set by warm_up(), before the first tick
        self.alerts = 0
        self.system = SystemMonitor()
        self._stats_due = 0.0          # monotonic; set when the loop starts
        self._stats_from = 0.0
        self._stats_misses = 0         # scheduler totals at the previous stats event
        self._stats_skipped = 0
        reports = [self.expression.report] + ([self.vad.report, self.tone.report] if self.tone else [])
        self._model_sha = {r.model: r.sha256 for r in reports} | {"blazeface_short_range": self._detector_sha}
        self.models = [{"model": "blazeface_short_range", "provider": "xnnpack", "precision": "fp32"}] + [
            {"model": r.model, "provider": r.provider, "precision": r.precision} for r in reports]

    # ------------------------------------------------------------------------------------------- control
    def stop(self) -> None:
        self.scheduler.stop()

    def _status(self) -> dict:
        extra = {"profile": self.config.device.profile, "purpose": self.config.purpose,
                 "camera": self.source.state.value, "models": self.models}
        if self.paused_by:
            extra["paused_by"] = sorted(self.paused_by)
        if getattr(self, "audio", None) is not None:
            extra["microphone"] = self.audio.state.value
        return extra

    def _camera_state(self, state: SourceState, detail: str) -> None:
        if self.publisher is not None:
            self.publisher.set_status("paused" if self.paused_by else "online", **self._status())

    # ------------------------------------------------------------------------------------------- opt-out
    def request_pause(self, paused: bool) -> None:
        """From a signal handler: only records the wish; the loop applies it at the next tick."""
        self._signal_pause = paused

    def _update_pause(self, now: float) -> None:
        wanted = set(self.paused_by)
        # Twice a second is prompt for a person (or a GPIO button) and spares the loop a syscall per tick.
        if now - self._pause_file_checked >= 0.5:
            self._pause_file_checked = now
            (wanted.add if self._pause_file.exists() else wanted.discard)("file")
        if self._signal_pause is not None:
            (wanted.add if self._signal_pause else wanted.discard)("signal")
            self._signal_pause = None
        while self.publisher is not None and self.publisher.commands:
            command = self.publisher.commands.popleft()
            error = None
            if command.name == "pause":
                wanted.add("remote")
            elif command.name == "stats":
                self._stats_due = 0.0     # at the end of this tick
            elif command.name == "status":
                self.publisher.set_status("paused" if self.paused_by else "online", **self._status())
            elif command.name == "resume":
                wanted.discard("remote")
                if wanted:
                    error = f"still paused locally ({', '.join(sorted(wanted))}); only the store can lift that"
            self._apply_pause(wanted, now, command.reason)
            self.publisher.reply(command, error is None, error)
            log.info("command %s%s: %s", command.name, f" ({command.reason})" if command.reason else "",
                     error or "done")
        self._apply_pause(wanted, now)

    def _apply_pause(self, wanted: set[str], now: float, reason: str | None = None) -> None:
        if wanted == self.paused_by:
            return
        was_paused = bool(self.paused_by)
        self.paused_by = set(wanted)    # a copy: the caller goes on editing its own set
        if wanted and not was_paused:
            # Close the window so far; nothing observed while paused may be mixed into any window.
            final = self.aggregator.flush(now)
            if final is not None:
                self._emit(final)
            self.aggregator.restart()
            log.warning("paused by %s: no inference runs until resumed", ", ".join(sorted(wanted)))
            self.audit.append("pause", by=sorted(wanted), reason=reason)
        elif not wanted and was_paused:
            if self.vad is not None:
                self.vad.reset()
                self.speech.reset()
            log.warning("resumed")
            self.audit.append("resume", reason=reason)
        else:
            self.audit.append("pause", by=sorted(wanted), reason=reason)
        self.publisher.set_status("paused" if wanted else "online", **self._status())

    _audio_state = _camera_state

    # ------------------------------------------------------------------------------------------- run
    def warm_up(self) -> float:
        """Every model once at each shape the loop will give it, before the first tick; returns the seconds taken.
        (On a GPU the first call at a new shape costs up to seconds: see ExpressionModel.warm_up.)"""
        t0 = time.monotonic()
        self.expression.warm_up(max(self.config.faces.max_faces, self.replicate_faces))
        if self.tone is not None:
            self.vad.warm_up()
            self.tone.warm_up()
        self.warm_up_s = time.monotonic() - t0
        log.info("models warmed up in %.0f ms", 1000 * self.warm_up_s)
        return self.warm_up_s

    def run(self, duration: float | None = None) -> RunReport:
        cfg = self.config
        self.warm_up()
        if self.broker is not None:
            self.broker.start()
            self._broker_url = self.broker.url
        if self._on_broker:
            self._on_broker(self._broker_url)
        discovery = []
        if cfg.mqtt.home_assistant.enabled:
            discovery = discovery_messages(cfg.mqtt.home_assistant.prefix, Topics(cfg.mqtt.topic_prefix, cfg.device.id),
                                           cfg.device.id, __version__)
        # The embedded broker (amqtt) speaks MQTT 3.1.1 only.
        mqtt_cfg = cfg.mqtt.model_copy(update={"protocol": "3.1.1"}) if self.broker is not None else cfg.mqtt
        self.publisher = MqttPublisher(mqtt_cfg, parse_broker_url(self._broker_url), cfg.device.id, __version__,
                                       self.outbox, cfg.outbox.max_age_h * 3600, retained_on_connect=discovery)
        self._update_pause_file_only()
        self.publisher.set_status("paused" if self.paused_by else "online", **self._status())
        self.publisher.start()
        self.writer = OutboxWriter(self.outbox, on_stored=self.publisher.wake, on_storage=self.publisher.report_storage)
        self.writer.start()
        self.audit.start(cfg, __version__, [m | {"sha256": self._model_sha[m["model"]]} for m in self.models])
        self.source.start()
        if self.audio is not None:
            self.audio.start()
        if self.cpu_latency is not None:
            self.cpu_latency.acquire()
        clock = self.scheduler.clock
        wall0, mono0 = time.time(), clock()
        self._stats_from = mono0
        self._stats_due = mono0 + cfg.mqtt.stats_interval_s
        stop_at = mono0 + duration if duration else None
        self.notifier.ready(f"running: {self.spec.describe()} at {cfg.loop.rate_hz:g} Hz")
        try:
            for tick in self.scheduler.run():
                now = wall0 + (tick.scheduled - mono0)   # wall time that cannot jump with NTP mid-run
                got_frame = self._tick(tick, now)
                self.writer.hand_over()        # the tick's events are stored while the loop sleeps
                self.notifier.watchdog()
                if (stop_at and clock() >= stop_at) or (self.source.ended and not got_frame):
                    break
            final = self.aggregator.flush(wall0 + (clock() - mono0))
            if final is not None:
                self._emit(final)
        finally:
            self.audit.append("stop", ticks=self.scheduler.ticks, summaries=self.summaries, alerts=self.alerts)
            self.notifier.stopping()
            if self.cpu_latency is not None:
                self.cpu_latency.release()
            self.source.stop()
            if self.audio is not None:
                self.audio.stop()
            self.detector.close()
            self.writer.close()           # every event made so far is in the outbox before the last drain
            self.publisher.stop()
            self.outbox.close()
            if self.broker is not None:
                self.broker.stop()
            self.notifier.close()
            self.state_lock.release()
        return self.report()

    def _tick(self, tick, now: float) -> bool:
        """One tick: vision, voice, aggregation, publishing, each stage timed. Returns whether a frame was new."""
        self._update_pause(now)
        with tick.stage("capture"):
            frame = self.source.buffer.take()
        if self.paused_by:
            # Opted out: frames and audio are taken only to be thrown away; no model runs at all.
            if self.audio is not None:
                self.audio.ring.read_new()
            if tick.started >= self._stats_due:   # the fleet still needs to see a paused unit's health
                with tick.stage("publish"):
                    self._emit_stats(now, tick.started)
            return frame is not None
        boxes, probs = (), self._no_faces
        if frame is None:
            self.source.check_stall(tick.started)
        else:
            with tick.stage("detect"):
                image = self.zones.apply(frame.image)    # staff zones are black before any model sees the frame
                boxes = self.zones.drop(self.detector.detect(image).boxes)
            if self.replicate_faces and boxes:
                # Benchmark stress only: the first face N times, as if N customers stood there.
                boxes = tuple(boxes[:1]) * self.replicate_faces
            with tick.stage("crop"):
                crops = self.expression.crop(image, boxes)
            with tick.stage("expression"):
                probs = self.expression.classify(crops).probabilities
            tick.items["expression"] = len(crops)
        speech_s, tone, voice_anger = 0.0, None, None
        if self.audio is not None:
            with tick.stage("audio"):
                new_audio = self.audio.ring.read_new()
            with tick.stage("vad"):
                chunks = self.vad.feed(new_audio)
            tick.items["vad"] = chunks.chunks
            speech_s = chunks.seconds_speech
            self._check_clipping(chunks.clipped, tick.started)
            segment = self.speech.push(chunks.speech)
            if segment is not None:
                with tick.stage("features"):
                    features = self.tone.features(segment[None])
                with tick.stage("tone"):
                    tone = self.tone.classify(features).probabilities
                voice_anger = float(tone[0, self._voice_angry])
        with tick.stage("aggregate"):
            if frame is not None:
                window = self.aggregator.add(now, boxes, probs, speech_s, tone)
            else:
                window = self.aggregator.advance(now, speech_s, tone, camera_down=self.source.state in CAMERA_DOWN)
            alert = None
            if self.anger is not None:
                face_anger = float(probs[:, self._face_angry].mean()) if len(probs) else None
                alert = self.anger.update(now, face_anger, voice_anger)
        if window is not None or alert is not None or tick.started >= self._stats_due:
            with tick.stage("publish"):
                if alert is not None:
                    self._emit_alert(alert)
                if window is not None:
                    self._emit(window)
                if tick.started >= self._stats_due:
                    self._emit_stats(now, tick.started)
        return frame is not None

    def _emit(self, window: WindowSummary) -> None:
        cfg = self.config
        # Every event goes to the outbox through the writer thread (which gives it its seq and wakes the MQTT
        # thread) at the end of the tick: the loop never waits on the disk.
        self.writer.submit("summary", lambda seq: summary_payload(window, cfg.device.id, seq, cfg.device.profile),
                           then=self.on_summary)
        self.summaries += 1
        self._log_health()

    def _update_pause_file_only(self) -> None:
        if self._pause_file.exists():
            self.paused_by.add("file")

    def _emit_alert(self, alert: Alert) -> None:
        cfg = self.config
        self.writer.submit("alert", lambda seq: alert_payload(alert, cfg.device.id, seq, cfg.device.profile),
                           then=self.on_alert)
        self.alerts += 1
        log.warning("alert: anger index %.2f over the last %g s (face %s, voice %s)", alert.anger_index,
                    alert.window_s, alert.face_anger, alert.voice_anger)

    def _emit_stats(self, now: float, mono: float) -> None:
        """The stats event: how the loop ran since the previous one (ticks of that interval only)."""
        cfg = self.config
        since = self._stats_from
        ticks = [t for t in self.scheduler.recent if t.scheduled >= since]
        interval = max(1e-6, mono - since)
        loop = {"rate_hz": cfg.loop.rate_hz, "fps": round(len(ticks) / interval, 2), "ticks": len(ticks),
                "deadline_misses": self.scheduler.misses - self._stats_misses,
                "skipped_slots": self.scheduler.skipped - self._stats_skipped,
                "ticks_total": self.scheduler.ticks, "deadline_misses_total": self.scheduler.misses}
        camera = {"state": self.source.state.value, "frames_used": self.source.buffer.delivered,
                  "frames_dropped": self.source.buffer.dropped}
        microphone = None if self.audio is None else {
            "state": self.audio.state.value, "lost_seconds": round(self.audio.ring.lost / 16000, 3)}
        mqtt = {"protocol": self.publisher.protocol} | {k: self.publisher.counters[k] for k in (
            "connects", "acked", "rejected_commands")}
        state = "paused" if self.paused_by else "online"
        # Built on the writer thread from a snapshot of the interval's ticks (finished ticks are not changed
        # again): the percentiles (~3 ms for a minute of ticks), the outbox figures and the /proc reads stay off
        # the loop, and the outbox depth is the one this event is stored into.
        self.writer.submit("stats", lambda seq: stats_payload(
            cfg.device.id, seq, cfg.device.profile, now, interval, state,
            loop | {"end_to_end": percentiles([t.latency for t in ticks])}, stage_percentiles(ticks, STAGES),
            camera, microphone, self.outbox.stats().as_dict(), mqtt, self.system.read().as_dict()))
        self._stats_from, self._stats_misses, self._stats_skipped = mono, self.scheduler.misses, self.scheduler.skipped
        self._stats_due = mono + cfg.mqtt.stats_interval_s

    def _check_clipping(self, clipped_fraction: float, now: float) -> None:
        # Clipped input distorts the spectrum the tone model reads; say so, at most once a minute.
        if clipped_fraction > 0.01 and now - self._clip_warned_at > 60:
            self._clip_warned_at = now
            log.warning("audio input is clipping (%.0f%% of samples at full scale): lower the microphone gain",
                        100 * clipped_fraction)

    def _log_health(self) -> None:
        if not log.isEnabledFor(logging.INFO):     # runs on the loop: no figures for a line nobody reads
            return
        window = int(self.config.aggregate.window_s * self.config.loop.rate_hz)
        e2e = percentiles([t.latency for t in itertools.islice(reversed(self.scheduler.recent), window)])
        log.info("loop: %d ticks, %d deadline misses, tick p50 %.1f ms p99 %.1f ms; camera %s, %d frames dropped",
                 self.scheduler.ticks, self.scheduler.misses, e2e["p50_ms"], e2e["p99_ms"], self.source.state.value,
                 self.source.buffer.dropped)

    def report(self) -> RunReport:
        ticks = list(self.scheduler.recent)
        elapsed = (ticks[-1].finished - ticks[0].scheduled) if ticks else 0.0
        return RunReport(
            ticks=self.scheduler.ticks, deadline_misses=self.scheduler.misses, skipped_slots=self.scheduler.skipped,
            frames_dropped=self.source.buffer.dropped, frames_used=self.source.buffer.delivered,
            summaries=self.summaries, alerts=self.alerts,
            audio_lost_seconds=round(self.audio.ring.lost / 16000, 3) if self.audio else 0.0,
            outbox_dropped=self.outbox.stats().dropped, outbox_depth=self.outbox.depth,
            rate_hz=round(len(ticks) / elapsed, 3) if elapsed > 0 else 0.0,
            stages={s: percentiles([]) for s in STAGES} | stage_percentiles(ticks, STAGES),
            end_to_end=percentiles([t.latency for t in ticks]),
            providers={m["model"]: m for m in self.models},
        )
