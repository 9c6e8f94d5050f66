"""Choosing the alert's on/off thresholds from session recordings, for a stated false-alert rate.

Each session's trace (``video_eval.AngerTrace``) holds what the alert logic saw on every tick; the thresholds do
not change those inputs, so replaying them through ``alerts.Anger`` with other thresholds gives exactly the alerts
the daemon would have raised. The choice: among (on, off) pairs whose false alerts per hour over the calm
emotions stay within the target, those that alert on the most angry sessions; of these (with the middle
hysteresis), the middle ``on``. Its honest figures come from two folds of speakers: chosen on one, scored on the
other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.windows.alerts import Anger
from appliance.windows.config import AlertsConfig

CALM_LABELS = ("neutral", "calm", "happy", "sad")
ON_GRID = tuple(round(x, 2) for x in np.arange(0.30, 0.96, 0.01))
HYSTERESIS = (0.10, 0.15, 0.20)


@dataclass(frozen=True)
class Outcome:
    on: float
    off: float
    angry_sessions: int
    angry_first_alerts: tuple[float, ...]     # one per angry session that alerted
    calm_alerts: int
    calm_hours: float

    @property
    def angry_alerted_share(self) -> float:
        return round(len(self.angry_first_alerts) / self.angry_sessions, 4) if self.angry_sessions else 0.0

    @property
    def first_alert_median_s(self) -> float | None:
        return round(float(np.median(self.angry_first_alerts)), 2) if self.angry_first_alerts else None

    @property
    def false_alerts_per_hour(self) -> float:
        return round(self.calm_alerts / self.calm_hours, 2) if self.calm_hours else 0.0

    def __add__(self, other: "Outcome") -> "Outcome":
        """Two folds' held-out outcomes pooled (each with the thresholds chosen on the other fold)."""
        return Outcome(self.on, self.off, self.angry_sessions + other.angry_sessions,
                       self.angry_first_alerts + other.angry_first_alerts, self.calm_alerts + other.calm_alerts,
                       self.calm_hours + other.calm_hours)

    def as_dict(self) -> dict:
        return {"on": self.on, "off": self.off, "angry_sessions": self.angry_sessions,
                "angry_alerted_share": self.angry_alerted_share, "first_alert_median_s": self.first_alert_median_s,
                "false_alerts_per_hour": self.false_alerts_per_hour, "calm_alerts": self.calm_alerts,
                "calm_hours": round(self.calm_hours, 3)}


def replay(trace, cfg: AlertsConfig) -> list[float]:
    """Alert times (seconds from the trace's first tick) with these alert settings."""
    anger = Anger(cfg, trace.tick_period_s, trace.voice_step_s, trace.index)
    if not trace.inputs:
        return []
    t0 = trace.inputs[0][0]
    return [round(t - t0, 2) for t, face, voice in trace.inputs if anger.update(t, face, voice) is not None]


def outcome(sessions, base: AlertsConfig, on: float, off: float) -> Outcome:
    cfg = base.model_copy(update={"on_threshold": on, "off_threshold": off})
    firsts, angry_n, calm_alerts, calm_s = [], 0, 0, 0.0
    for s in sessions:
        if s.label not in CALM_LABELS and s.label != "angry":
            continue
        at = replay(s.trace, cfg)
        if s.label == "angry":
            angry_n += 1
            firsts += at[:1]
        else:
            calm_alerts += len(at)
            calm_s += s.seconds
    return Outcome(on, off, angry_n, tuple(firsts), calm_alerts, calm_s / 3600)


def sweep(sessions, base: AlertsConfig) -> list[Outcome]:
    return [outcome(sessions, base, on, round(on - gap, 2)) for on in ON_GRID for gap in HYSTERESIS
            if on - gap >= 0]


def choose(outcomes: list[Outcome], max_false_per_hour: float) -> Outcome:
    within = [o for o in outcomes if o.false_alerts_per_hour <= max_false_per_hour]
    if not within:      # nothing meets the target: the fewest false alerts, said so by the figures
        least = min(o.false_alerts_per_hour for o in outcomes)
        within = [o for o in outcomes if o.false_alerts_per_hour == least]
    best = max(o.angry_alerted_share for o in within)
    ties = sorted((o for o in within if o.angry_alerted_share == best and o.off == round(o.on - HYSTERESIS[1], 2)),
                  key=lambda o: o.on) or sorted((o for o in within if o.angry_alerted_share == best),
                                                key=lambda o: o.on)
    # The middle of the range that does as well: at either end the thresholds sit on the edge of what these few
    # speakers happened to do, and a new speaker a little calmer or angrier would fall over it.
    return ties[len(ties) // 2]


def folds(sessions) -> dict[str, int]:
    """Speakers into two folds, alternating over (corpus, sex, speaker) so each fold has both sexes where it can."""
    speakers = sorted({(s.corpus, s.sex, s.speaker) for s in sessions})
    return {speaker: i % 2 for i, (_, _, speaker) in enumerate(speakers)}


def cross_fit(sessions, base: AlertsConfig, max_false_per_hour: float) -> dict:
    """Thresholds chosen on each fold, scored on the other; the held-out outcomes pooled; and the choice on all."""
    fold_of = folds(sessions)
    parts = [[s for s in sessions if fold_of[s.speaker] == k] for k in (0, 1)]
    held_out = []
    for k in (0, 1):
        chosen = choose(sweep(parts[1 - k], base), max_false_per_hour)
        held_out.append(outcome(parts[k], base, chosen.on, chosen.off))
    chosen = choose(sweep(sessions, base), max_false_per_hour)
    return {"target_false_alerts_per_hour": max_false_per_hour,
            "folds": [sorted(sp for sp, f in fold_of.items() if f == k) for k in (0, 1)],
            "held_out": [o.as_dict() for o in held_out],
            "held_out_pooled": {k: v for k, v in (held_out[0] + held_out[1]).as_dict().items()
                                if k not in ("on", "off")},
            "chosen_on_all": chosen.as_dict()}


def markdown(result: dict) -> str:
    pooled, chosen = result["held_out_pooled"], result["chosen_on_all"]
    target = result["target_false_alerts_per_hour"]
    lines = [f"## Alert thresholds for a false-alert rate of at most {target:g} an hour", "",
             "Chosen on one fold of speakers, scored on the other (folds: "
             + " | ".join(", ".join(f) for f in result["folds"]) + "):", "",
             "| scored on | thresholds (on / off) | angry sessions alerted | first alert, median s | false alerts per "
             "hour (calm) | calm hours |", "|---|---|---|---|---|---|"]
    for k, o in enumerate(result["held_out"]):
        lines.append(f"| fold {k + 1} | {o['on']} / {o['off']} | {o['angry_alerted_share']:.0%} of "
                     f"{o['angry_sessions']} | {o['first_alert_median_s']} | {o['false_alerts_per_hour']} | "
                     f"{o['calm_hours']} |")
    lines += [f"| both, pooled | (each fold's own) | {pooled['angry_alerted_share']:.0%} of "
              f"{pooled['angry_sessions']} |"
              f" {pooled['first_alert_median_s']} | {pooled['false_alerts_per_hour']} | {pooled['calm_hours']} |", "",
              f"Chosen on all sessions: **on {chosen['on']} / off {chosen['off']}** (on these same sessions: "
              f"{chosen['angry_alerted_share']:.0%} of angry sessions alerted, median "
              f"{chosen['first_alert_median_s']} s, {chosen['false_alerts_per_hour']} false alerts per hour; the "
              "held-out figures above are the estimate for speakers never seen).", ""]
    return "\n".join(lines)
