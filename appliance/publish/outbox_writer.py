"""The thread that stores events in the outbox, so that the fixed-rate loop never waits on the disk."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from typing import Callable

from appliance.publish.outbox import Outbox

log = logging.getLogger(__name__)


class OutboxWriter:
    """Stores events in the outbox on a thread of its own, so the fixed-rate loop never waits on the disk.

    A durable commit is an fsync: ~2 ms on this project's VM, tens to hundreds of ms on an SD card or a busy eMMC,
    which is a whole tick's budget. The loop only queues the payload builder (microseconds) and hands the queue
    over at the end of its tick (``hand_over``), so the writer's own Python work (building the payload, JSON)
    runs while the loop sleeps instead of taking the GIL from a tick. Here the event gets its seq and is committed
    in the outbox's own transaction, as before, in the order submitted. Until then (a few ms) it exists in memory
    only: a power cut or a kill in that window loses it. ``close()`` stores everything submitted before it
    returns. A failing store (disk full, I/O error) is logged and retried with backoff; the events wait in memory
    meanwhile.
    """

    def __init__(self, outbox: Outbox, on_stored: Callable[[], None] = lambda: None, retry_max_s: float = 30.0,
                 on_storage: Callable[[str | None], None] = lambda error: None):
        self.outbox = outbox
        self._on_stored = on_stored
        self._on_storage = on_storage      # an error while events cannot be stored, None once they can again
        self._failing = False
        self._reported: str | None = None
        self._retry_max_s = retry_max_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()     # lists of events, or None to stop
        self._held: list[tuple] = []       # submitted this tick, not handed over yet (the submitting thread's own)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self.lost = 0     # submitted but never stored: a payload that could not be built, or a failing disk at close()

    def start(self) -> None:
        self._thread.start()

    def submit(self, kind: str, make: Callable[[int], dict], then: Callable[[dict], None] | None = None) -> None:
        """Store ``make(seq)`` as a ``kind`` event once handed over; ``then(payload)`` runs on the writer thread once
        it is stored. The event is made now: its age (and whether it is live when sent) counts from here, however
        long the disk keeps it waiting."""
        self._held.append((kind, make, then, self.outbox.clock()))

    def hand_over(self) -> None:
        """Give the writer what was submitted since the last call (the pipeline calls this at the end of a tick)."""
        if self._held:
            batch, self._held = self._held, []
            self._queue.put(batch)

    def close(self, timeout: float = 30.0) -> None:
        self.hand_over()
        self._queue.put(None)
        self._closing.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("outbox: the writer did not finish storing within %g s of shutdown; what it had not stored "
                      "is lost", timeout)

    def _report(self, error: str | None) -> None:
        """The storage error the status carries: events that cannot be stored, or a seq file that falls behind
        (the outbox holds the seq, but losing the outbox now would send seq back)."""
        if error != self._reported:
            self._reported = error
            self._on_storage(error)

    def _run(self) -> None:
        running = True
        while running:
            batches = [self._queue.get()]
            while True:      # everything handed over meanwhile: one wake-up for the burst
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in batches:         # close(): store what came before it, then stop
                running = False
            stored = False
            for kind, make, then, made in (event for batch in batches if batch is not None for event in batch):
                payload = self._store(kind, make, made)
                if payload is None:
                    continue
                stored = True
                if then is not None:
                    try:
                        then(payload)
                    except Exception:
                        log.exception("outbox: callback for a stored %s event failed", kind)
            if stored:
                self._on_stored()

    def _store(self, kind: str, make: Callable[[int], dict], made: float) -> dict | None:
        delay = 0.5
        while True:
            try:
                payload = self.outbox.add(kind, make, made)
                if self._failing:
                    self._failing = False
                    log.warning("outbox: events are stored again")
                self._report(self.outbox.seq.error)
                return payload
            except (sqlite3.Error, OSError) as e:   # the disk: full, read-only, failing; may clear
                if not self._failing:
                    self._failing = True
                    self._report(f"events cannot be stored: {e}; they wait in memory")
                if self._closing.is_set():
                    self.lost += 1
                    log.error("outbox: a %s event was not stored (%s) and is lost at shutdown", kind, e)
                    return None
                log.error("outbox: cannot store a %s event (%s); retrying in %g s", kind, e, delay)
                self._closing.wait(delay)
                delay = min(delay * 2, self._retry_max_s)
            except Exception:   # a payload that cannot be built will not build on a retry either
                self.lost += 1
                log.exception("outbox: a %s event could not be built and is dropped", kind)
                return None
