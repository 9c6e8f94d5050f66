"""The daemon's lifecycle: start the parts ``assemble`` built, run the stages in the fixed-rate loop, stop in order.

Data flows one way: source -> faces -> expression -> windows -> outbox -> MQTT. The loop owns time; stages only
compute; the control plane decides when they run.
"""

from __future__ import annotations

import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from appliance import __version__
from appliance.config import AppConfig
from appliance.publish.config import parse_broker_url
from appliance.daemon.assemble import compose
from appliance.daemon.control import ControlPlane
from appliance.daemon.stages import Publish, TickData
from appliance.daemon.status import UnitStatus
from appliance.daemon.telemetry import Events, RunReport, Telemetry
from appliance.publish.discovery import discovery_messages
from appliance.publish.client import Topics
from appliance.publish.mqtt import MqttPublisher
from appliance.publish.outbox_writer import OutboxWriter
from appliance.sources.replay import Replay
from appliance.host.clock import WallClock, clock_state
from appliance.host.system import SystemMonitor
from appliance.host.systemd_notify import Notifier

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, config: AppConfig, on_summary: Callable[[dict], None] | None = None,
                 on_broker: Callable[[str], None] | None = None, on_alert: Callable[[dict], None] | None = None,
                 history_ticks: int = 3000, replicate_faces: int = 0, replay: Replay | None = None):
        self.config = config
        self.replicate_faces = replicate_faces
        self.notifier = Notifier()
        self.parts = p = compose(config, lambda *state: self.status.publish(), history_ticks, replicate_faces,
                                 replay)
        self.scheduler, self.spec, self.audio, self.models = p.scheduler, p.spec, p.audio, p.models
        self.cpu_latency, self.anger, self.anger_index = p.cpu_latency, p.anger, p.anger_index
        self.control = ControlPlane(config.pause_file, self._pause_changed, on_stats=self._request_stats)
        self.status = UnitStatus(config, p.source, p.audio, p.models, lambda: self.control.paused_by)
        self.telemetry = Telemetry(config, p.scheduler, p.health, p.outbox, SystemMonitor(), p.models,
                                   state=lambda: self.status.state)
        self.telemetry.has_audio = p.audio is not None
        self._on_summary, self._on_alert, self._on_broker = on_summary, on_alert, on_broker
        self._broker_url = config.mqtt.broker
        self.publisher: MqttPublisher | None = None
        self.events: Events | None = None
        self.warm_up_s = 0.0           # set by warm_up(), before the first tick
        # A replay runs on a simulated clock that must not be mistaken for steps of the system clock.
        self.wall = WallClock(follow_steps=replay is None)
        self._no_faces = np.zeros((0, len(p.expression.labels)), np.float32)

    @property
    def paused_by(self) -> set[str]:
        return self.control.paused_by

    # ------------------------------------------------------------------------------------------- control
    def stop(self) -> None:
        self.scheduler.stop()

    def request_pause(self, paused: bool) -> None:
        """From a signal handler: only records the wish; the loop applies it at the next tick."""
        self.control.request_pause(paused)

    def _request_stats(self) -> None:
        self.telemetry.request()

    def _pause_changed(self, paused_by: set[str], was: set[str], reason: str | None, now: float) -> None:
        """On the loop thread, at the start of a tick."""
        p = self.parts
        if paused_by and not was:
            # Close the window so far; nothing observed while paused may be mixed into any window.
            final = p.aggregator.flush(now)
            if final is not None:
                self.events.summary(final)
            p.aggregator.restart()
            log.warning("paused by %s: no inference runs until resumed", ", ".join(sorted(paused_by)))
            p.audit.append("pause", by=sorted(paused_by), reason=reason)
        elif not paused_by and was:
            if p.voice is not None:
                p.voice.reset()
            p.detector.reset()      # the faces it followed before the pause are no longer where they were
            log.warning("resumed")
            p.audit.append("resume", reason=reason)
        else:
            p.audit.append("pause", by=sorted(paused_by), reason=reason)
        self.status.publish()

    # ------------------------------------------------------------------------------------------- run
    def warm_up(self) -> float:
        """Every model once at each shape the loop will give it, before the first tick; returns the seconds taken.
        (On a GPU the first call at a new shape costs up to seconds: see ExpressionModel.warm_up.)"""
        t0 = time.monotonic()
        p = self.parts
        # The voice's models warm up on a second thread beside the face's (both runtimes release the GIL).
        with ThreadPoolExecutor(1, thread_name_prefix="warm-voice") as pool:
            voice = pool.submit(lambda: (p.vad.warm_up(), p.tone.warm_up())) if p.tone is not None else None
            p.detector.warm_up()
            p.expression.warm_up(max(self.config.faces.max_faces, self.replicate_faces))
            if voice is not None:
                voice.result()
        self.warm_up_s = time.monotonic() - t0
        log.info("models warmed up in %.0f ms", 1000 * self.warm_up_s)
        return self.warm_up_s

    def _start(self) -> None:
        cfg, p = self.config, self.parts
        self.warm_up()
        if p.broker is not None:
            p.broker.start()
            self._broker_url = p.broker.url
        if self._on_broker:
            self._on_broker(self._broker_url)
        discovery = []
        if cfg.mqtt.home_assistant.enabled:
            discovery = discovery_messages(cfg.mqtt.home_assistant.prefix, Topics(cfg.mqtt.topic_prefix, cfg.device.id),
                                           cfg.device.id, __version__)
        # The embedded broker (amqtt) speaks MQTT 3.1.1 only.
        mqtt_cfg = cfg.mqtt.model_copy(update={"protocol": "3.1.1"}) if p.broker is not None else cfg.mqtt
        self.publisher = MqttPublisher(mqtt_cfg, parse_broker_url(self._broker_url), cfg.device.id, __version__,
                                       p.outbox, cfg.outbox.max_age_h * 3600, retained_on_connect=discovery,
                                       on_command=self.control.deliver)
        self.control.reply, self.control.status = self.publisher.reply, self.status.publish
        self.telemetry.publisher = self.status.publisher = self.publisher
        self.control.check_file()
        if self.status.clock != "synchronized":
            log.warning("system clock %s (no NTP or RTC yet?): window times are stamped from it and follow it when "
                        "it steps; event ages and delivery do not depend on it", self.status.clock)
        self.status.publish()
        self.publisher.start()
        self.writer = OutboxWriter(p.outbox, on_stored=self.publisher.wake, on_storage=self.publisher.report_storage)
        self.writer.start()
        self.events = Events(cfg, self.writer, self._on_summary, self._on_alert, shift=lambda: self.wall.offset)
        publish = Publish(self.events, self.telemetry)
        self._stages, self._paused_stages = p.stages + [publish], p.paused_stages + [publish]
        p.audit.start(cfg, __version__, [m | {"sha256": p.model_sha[m["model"]]} for m in self.models])
        p.source.start()
        if p.audio is not None:
            p.voice_worker.start()
            p.audio.start()
        if p.cpu_latency is not None:
            p.cpu_latency.acquire()
        # Everything built so far (libraries, models, sessions) lives as long as the daemon: out of the garbage
        # collector's sight, a full collection scans only what the loop makes, so its pause cannot cost a tick.
        gc.collect()
        gc.freeze()

    def run(self, duration: float | None = None) -> RunReport:
        self._start()
        p = self.parts
        clock = self.scheduler.clock
        mono0 = clock()
        self.wall.start(mono0)
        self.telemetry.start(mono0)
        stop_at = mono0 + duration if duration else None
        self.notifier.ready(f"running: {self.spec.describe()} at {self.config.loop.rate_hz:g} Hz")
        try:
            for tick in self.scheduler.run():
                step = self.wall.check(tick.started)
                if step is not None:
                    self._clock_stepped(step)
                # Windows and alerts measure spans in run time, which never jumps; their stamps get the wall
                # clock's steps added when they are published (Events).
                got_frame = self._tick(tick, self.wall.run_time(tick.scheduled))
                self.writer.hand_over()        # the tick's events are stored while the loop sleeps
                self.notifier.watchdog()
                if (stop_at and clock() >= stop_at) or (p.source.ended and not got_frame):
                    break
            final = p.aggregator.flush(self.wall.run_time(clock()))
            if final is not None:
                self.events.summary(final)
        finally:
            self._stop()
        return self.telemetry.report(self.events)

    def _clock_stepped(self, step: float) -> None:
        self.telemetry.clock_steps = self.wall.steps
        self.status.clock = clock_state()
        log.warning("system clock stepped %+.1f s (%s): window and alert times follow it from now on; event ages "
                    "and delivery do not depend on it (%d steps this run)", step, self.status.clock, self.wall.steps)
        self.status.publish()

    def _tick(self, tick, now: float) -> bool:
        """One tick: the control plane's wishes applied, then each stage in turn. Returns whether a frame was new."""
        self.control.apply(now)
        data = TickData(now, self._no_faces)
        for stage in self._paused_stages if self.control.paused_by else self._stages:
            stage.compute(tick, data)
        return data.frame is not None

    def _stop(self) -> None:
        p = self.parts
        p.audit.append("stop", ticks=self.scheduler.ticks, summaries=self.events.summaries,
                       alerts=self.events.alerts)
        self.notifier.stopping()
        if p.cpu_latency is not None:
            p.cpu_latency.release()
        p.source.stop()
        if p.audio is not None:
            p.audio.stop()
            p.voice_worker.stop()
        p.detector.close()
        self.writer.close()           # every event made so far is in the outbox before the last drain
        self.publisher.stop()
        p.outbox.close()
        if p.broker is not None:
            p.broker.stop()
        self.notifier.close()
        p.state_lock.release()
        gc.unfreeze()     # a process that builds another pipeline (eval, tests) can collect this one's cycles
