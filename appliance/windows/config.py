"""Config of the windows: ``[aggregate]`` and ``[alerts]``."""

from __future__ import annotations

from pydantic import Field, model_validator

from appliance.section import Section


class AlertsConfig(Section):
    enabled: bool | None = Field(default=None, description="default: on for the kiosk profile only; the "
                                 "store-camera profile cannot have alerts (one person's escalation is not aggregate)")
    window_s: float = Field(default=5.0, ge=1.0, le=60.0, description="the short window the anger index is taken over")
    # Chosen by `appliance eval sessions --choose-thresholds 1` on the voice model's validation speakers (README
    # 'Anger index and alerts'): at most 1 false alert per hour of calm speech, the most angry sessions alerted.
    on_threshold: float = Field(default=0.67, gt=0, le=1)
    off_threshold: float = Field(default=0.52, ge=0, lt=1, description="re-arms below this (hysteresis)")
    cooldown_s: float = Field(default=60.0, ge=0, le=86400, description="no second alert within this time of the first")
    min_evidence_s: float = Field(default=2.0, ge=0, le=60, description="seconds of face or speech the short window "
                                  "needs; with both present, a modality sets the index's floor only on this much of "
                                  "its own")


class AggregateConfig(Section):
    window_s: float = Field(default=10.0, ge=1.0, le=3600)
    min_observed_s: float = Field(default=2.0, ge=0.0,
                                  description="a window needs faces in at least this many seconds of ticks")
    k_min: int | None = Field(default=None, ge=1, le=1000,
                              description="distinct faces a window needs; default and floor come from the profile")
    track_max_age_s: float = Field(default=1.0, gt=0, le=60, description="a face unseen this long is a new face")
    track_iou: float = Field(default=0.3, gt=0, lt=1)

    @model_validator(mode="after")
    def _observable(self) -> "AggregateConfig":
        if self.min_observed_s > self.window_s:
            raise ValueError(f"min_observed_s ({self.min_observed_s:g}) is longer than window_s "
                             f"({self.window_s:g}): no window could ever carry face figures")
        return self
