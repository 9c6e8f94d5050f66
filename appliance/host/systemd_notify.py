"""systemd's notify protocol (sd_notify) without libsystemd: READY, STATUS, STOPPING and the watchdog ping.

The loop pings the watchdog once per tick, so a loop that stalls (a hung camera read on the loop thread, a
deadlocked model call) stops pinging and systemd restarts the service after ``WatchdogSec``. Outside systemd
(no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None, environ=os.environ):
        self.address = address if address is not None else environ.get("NOTIFY_SOCKET")
        self._sock = None
        self.sent = 0
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            if self.address.startswith("@"):
                self.address = "\0" + self.address[1:]   # abstract namespace

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError:
            return False   # systemd gone or socket full: never let the notifier break the loop
        self.sent += 1
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        # Every tick: one datagram on a local socket costs microseconds, and a ping per tick means the watchdog
        # sees a stall within one WatchdogSec whatever the loop rate.
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
