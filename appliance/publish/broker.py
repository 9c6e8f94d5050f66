"""An embedded MQTT broker (amqtt) on loopback, for the demo and for a unit with no central broker configured."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedBroker:
    """amqtt running on its own asyncio loop in a daemon thread, bound to loopback only."""

    def __init__(self, port: int = 1883, host: str = "127.0.0.1"):
        # A busy default port (another broker, a second demo) is not an error: take any free one and say so.
        self.host = host
        self.port = port if port and port_is_free(port, host) else free_port(host)
        self._loop = asyncio.new_event_loop()
        self._broker = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="embedded-broker", daemon=True)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "EmbeddedBroker":
        from amqtt.broker import Broker

        # amqtt logs every client connect at INFO; keep the daemon's own log readable.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._thread.start()

        async def boot():
            self._broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}},
                                  loop=self._loop)
            await self._broker.start()

        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(timeout)
        log.info("embedded MQTT broker listening on %s", self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout)
            except Exception as e:  # shutting down anyway; report, don't mask the caller's exit
                log.warning("embedded broker did not shut down cleanly: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
