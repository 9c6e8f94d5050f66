"""The unit's retained status as the daemon sees it: online or paused (and by whom), the purpose, camera and
microphone state, and which model runs on which provider. Published again whenever any of it changes."""

from __future__ import annotations

from typing import Callable

from appliance.config import AppConfig
from appliance.host.clock import clock_state


class UnitStatus:
    def __init__(self, config: AppConfig, source, audio, models: list[dict], paused_by: Callable[[], set[str]]):
        self.config, self.source, self.audio, self.models = config, source, audio, models
        self._paused_by = paused_by       # the control plane's, read when needed
        self.publisher = None             # set once the MQTT side exists
        self.clock = clock_state()        # read again when the loop sees the clock step

    @property
    def paused_by(self) -> set[str]:
        return self._paused_by()

    @property
    def state(self) -> str:
        return "paused" if self.paused_by else "online"

    def extra(self) -> dict:
        extra = {"profile": self.config.device.profile, "purpose": self.config.purpose,
                 "camera": self.source.state.value, "models": self.models, "clock": self.clock}
        if self.paused_by:
            extra["paused_by"] = sorted(self.paused_by)
        if self.audio is not None:
            extra["microphone"] = self.audio.state.value
        return extra

    def publish(self, *_) -> None:
        """Also the sources' state callback (state, detail), hence the ignored arguments."""
        if self.publisher is not None:
            self.publisher.set_status(self.state, **self.extra())
