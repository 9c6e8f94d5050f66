"""Keeping the CPUs out of deep idle states while the loop runs (Linux PM QoS, ``/dev/cpu_dma_latency``).

A loop that sleeps 90 % of each period lets its CPU idle. On a Jetson the cores then drop into power-gated states
whose exit costs up to milliseconds at every tick; on a virtual machine the vCPU halts and the host may run
something else there meanwhile. Either way each tick's work runs slower, by an amount that changes from minute to
minute (measured on this project's VM: tone model 5.8-7.4 ms per call when sleeping between ticks, 5.4-5.6 ms with
a 0 us request held). The kernel honours the lowest latency any process asks for, for as long as that process
keeps the device open: closing it, or exiting for any reason, ends the request. The price is power: idle CPUs poll
instead of sleeping.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

DEVICE = Path("/dev/cpu_dma_latency")


def current_target_us(device: Path = DEVICE) -> int | None:
    """The latency the kernel currently holds every CPU to (the lowest request of all processes), if readable."""
    try:
        with open(device, "rb") as f:
            return struct.unpack("i", f.read(4))[0]
    except OSError:
        return None


class CpuLatencyRequest:
    """Hold CPUs to ``max_us`` of wake-up latency until ``release()``; ``held`` says whether the kernel took it."""

    def __init__(self, max_us: int, device: Path = DEVICE):
        self.max_us = max_us
        self.device = device
        self.problem: str | None = None
        self.applied = False     # the kernel took the request (stays true after release: it held for the run)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Ask the kernel; on failure log why and what to do, and go on without (the loop works, less steadily)."""
        try:
            fd = os.open(self.device, os.O_WRONLY)
        except FileNotFoundError:
            self.problem = f"{self.device} does not exist (kernel without PM QoS)"
        except PermissionError:
            self.problem = (f"no write access to {self.device}: run as root, or install with deploy/jetson/install.sh "
                            f"(its udev rule gives the service's group access)")
        except OSError as e:
            self.problem = f"{self.device} cannot be opened ({e.strerror})"
        else:
            try:
                os.write(fd, struct.pack("i", self.max_us))
            except OSError as e:
                os.close(fd)
                self.problem = f"{self.device} refused {self.max_us} us ({e.strerror})"
            else:
                self._fd, self.applied = fd, True
                log.info("CPU wake-up latency held at %d us while the loop runs (%s)", self.max_us, self.device)
                return True
        log.warning("loop.cpu_wakeup_latency_us = %d not applied: %s; the loop runs with the kernel's idle states",
                    self.max_us, self.problem)
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def describe(self) -> dict:
        return {"requested_us": self.max_us, "applied": self.applied, "problem": self.problem}
