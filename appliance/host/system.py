"""What the machine itself reports: process CPU and memory, free memory, SoC temperature. Read from /proc and /sys
(Jetson exposes its thermal zones there too); a reading this machine does not offer is None, never a guess."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

THERMAL = Path("/sys/class/thermal")


@dataclass(frozen=True)
class SystemReading:
    cpu_percent: float | None        # this process, percent of one core, since the previous reading
    rss_mb: float
    mem_available_mb: float | None
    temperature_c: float | None      # hottest thermal zone
    load_1m: float | None

    def as_dict(self) -> dict:
        return {"cpu_percent": self.cpu_percent, "rss_mb": self.rss_mb, "mem_available_mb": self.mem_available_mb,
                "temperature_c": self.temperature_c, "load_1m": self.load_1m}


class SystemMonitor:
    def __init__(self, thermal_dir: Path = THERMAL):
        self.thermal_dir = thermal_dir
        self._last = (os.times(), time.monotonic())

    def read(self) -> SystemReading:
        times, now = os.times(), time.monotonic()
        before, then = self._last
        self._last = (times, now)
        cpu = None
        if now - then > 0.05:
            used = (times.user - before.user) + (times.system - before.system)
            cpu = round(100.0 * used / (now - then), 1)
        return SystemReading(cpu, self._rss_mb(), self._mem_available_mb(), self._temperature_c(), self._load())

    @staticmethod
    def _rss_mb() -> float:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
        except (OSError, ValueError, IndexError):
            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    @staticmethod
    def _mem_available_mb() -> float | None:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except (OSError, ValueError):
            pass
        return None

    def _temperature_c(self) -> float | None:
        readings = []
        for zone in sorted(self.thermal_dir.glob("thermal_zone*/temp")):
            try:
                value = int(zone.read_text().strip())
            except (OSError, ValueError):
                continue
            if value > 0:   # an absent sensor reads 0 or a negative sentinel on some boards
                readings.append(value / 1000.0)
        return round(max(readings), 1) if readings else None

    @staticmethod
    def _load() -> float | None:
        try:
            return round(os.getloadavg()[0], 2)
        except OSError:
            return None
