"""What the daemon says about itself: the events it hands to the outbox, the stats event, the health log line and
the run report. It reads the loop's ticks and the ``Health`` the stages fill, never a stage's insides."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

from appliance.windows.aggregate import WindowSummary
from appliance.windows.alerts import Alert
from appliance.config import AppConfig
from appliance.daemon.stages import STAGE_NAMES, Health
from appliance.daemon.loop import FixedRateScheduler, percentiles, stage_percentiles
from appliance.publish.payloads import alert_payload, stats_payload, summary_payload
from appliance.sources.audio import SAMPLE_RATE

log = logging.getLogger(__name__)


def lost_seconds(health: Health) -> float:
    return round(health.audio_lost_samples / SAMPLE_RATE, 3)


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


class Events:
    """Summaries, alerts and stats to the outbox writer (which gives each its seq and wakes the MQTT thread) at the
    end of the tick: the loop never waits on the disk. ``on_summary``/``on_alert`` get each payload once stored."""

    def __init__(self, config: AppConfig, writer, on_summary: Callable[[dict], None] | None = None,
                 on_alert: Callable[[dict], None] | None = None, shift: Callable[[], float] = lambda: 0.0):
        self.device_id, self.profile = config.device.id, config.device.profile
        self.writer, self.on_summary, self.on_alert = writer, on_summary, on_alert
        self.shift = shift          # the wall clock's steps since the run's start, added to every stamp
        self.summaries = self.alerts = 0

    def summary(self, window: WindowSummary) -> None:
        shift = self.shift()
        self.writer.submit("summary", lambda seq: summary_payload(window, self.device_id, seq, self.profile, shift),
                           then=self.on_summary)
        self.summaries += 1

    def alert(self, alert: Alert) -> None:
        shift = self.shift()
        self.writer.submit("alert", lambda seq: alert_payload(alert, self.device_id, seq, self.profile, shift),
                           then=self.on_alert)
        self.alerts += 1
        log.warning("alert: anger index %.2f over the last %g s (face %s, voice %s)", alert.anger_index,
                    alert.window_s, alert.face_anger, alert.voice_anger)

    def stats(self, build: Callable[[int], dict]) -> None:
        self.writer.submit("stats", build)


class Telemetry:
    def __init__(self, config: AppConfig, scheduler: FixedRateScheduler, health: Health, outbox, system,
                 models: list[dict], state: Callable[[], str]):
        self.config, self.scheduler, self.health = config, scheduler, health
        self.outbox, self.system, self.models, self.state = outbox, system, models, state
        self.publisher = None             # set once the MQTT side exists
        self.has_audio = False
        self.clock_steps = 0              # steps of the system clock the loop followed
        self._due = 0.0                   # monotonic; set by start()
        self._from = 0.0
        self._misses = self._skipped = 0  # scheduler totals at the previous stats event

    def start(self, mono: float) -> None:
        self._from, self._due = mono, mono + self.config.mqtt.stats_interval_s

    def request(self) -> None:
        """A stats event at the end of the next tick (the fleet asked; any thread)."""
        self._due = 0.0

    def stats_due(self, mono: float) -> bool:
        return mono >= self._due

    def stats(self, now: float, mono: float) -> Callable[[int], dict]:
        """The stats event of the interval since the previous one, as a builder for the writer thread: the
        percentiles, the outbox figures and the /proc reads run there, off the loop, from a snapshot of the
        interval's finished ticks (never changed again)."""
        cfg, s, h = self.config, self.scheduler, self.health
        since = self._from
        ticks = [t for t in s.recent if t.scheduled >= since]
        interval = max(1e-6, mono - since)
        loop = {"rate_hz": cfg.loop.rate_hz, "fps": round(len(ticks) / interval, 2), "ticks": len(ticks),
                "deadline_misses": s.misses - self._misses, "skipped_slots": s.skipped - self._skipped,
                "ticks_total": s.ticks, "deadline_misses_total": s.misses, "clock_steps": self.clock_steps}
        camera = {"state": h.camera_state, "frames_used": h.frames_used, "frames_dropped": h.frames_dropped}
        microphone = {"state": h.microphone_state, "lost_seconds": lost_seconds(h), "segments_classified":
                      h.voice_segments, "segments_dropped": h.voice_dropped} if self.has_audio else None
        pub = self.publisher
        mqtt = {"protocol": pub.protocol} | {k: pub.counters[k] for k in ("connects", "acked", "rejected_commands",
                                                                          "stalls", "takeovers")}
        state = self.state()
        self._from, self._misses, self._skipped = mono, s.misses, s.skipped
        self._due = mono + cfg.mqtt.stats_interval_s
        return lambda seq: stats_payload(
            cfg.device.id, seq, cfg.device.profile, now, interval, state,
            loop | {"end_to_end": percentiles([t.latency for t in ticks])}, stage_percentiles(ticks, STAGE_NAMES),
            camera, microphone, self.outbox.stats().as_dict(), mqtt, self.system.read().as_dict())

    def log_health(self) -> None:
        if not log.isEnabledFor(logging.INFO):     # runs on the loop: no figures for a line nobody reads
            return
        window = int(self.config.aggregate.window_s * self.config.loop.rate_hz)
        e2e = percentiles([t.latency for t in itertools.islice(reversed(self.scheduler.recent), window)])
        log.info("loop: %d ticks, %d deadline misses, tick p50 %.1f ms p99 %.1f ms; camera %s, %d frames dropped",
                 self.scheduler.ticks, self.scheduler.misses, e2e["p50_ms"], e2e["p99_ms"], self.health.camera_state,
                 self.health.frames_dropped)

    def report(self, events: Events) -> RunReport:
        s, h = self.scheduler, self.health
        ticks = list(s.recent)
        elapsed = (ticks[-1].finished - ticks[0].scheduled) if ticks else 0.0
        return RunReport(
            ticks=s.ticks, deadline_misses=s.misses, skipped_slots=s.skipped,
            frames_dropped=h.frames_dropped, frames_used=h.frames_used,
            summaries=events.summaries, alerts=events.alerts, audio_lost_seconds=lost_seconds(h),
            outbox_dropped=self.outbox.stats().dropped, outbox_depth=self.outbox.depth,
            rate_hz=round(len(ticks) / elapsed, 3) if elapsed > 0 else 0.0,
            stages={s: percentiles([]) for s in STAGE_NAMES} | stage_percentiles(ticks, STAGE_NAMES),
            end_to_end=percentiles([t.latency for t in ticks]),
            providers={m["model"]: m for m in self.models},
        )
