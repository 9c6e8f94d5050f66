"""The fixed-rate scheduler on a simulated clock: absolute schedule, misses counted, overrun slots skipped."""

from __future__ import annotations

import pytest

from appliance.daemon.loop import FixedRateScheduler, percentiles


class SimClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def drive(work_s: list[float], rate_hz: float = 10.0):
    clock = SimClock()
    sched = FixedRateScheduler(rate_hz, clock=clock, wait=clock.sleep)
    ticks = []
    for i, tick in enumerate(sched.run()):
        ticks.append(tick)
        clock.t += work_s[i]
        if i == len(work_s) - 1:
            sched.stop()   # the generator still records this tick's end when the for loop asks for the next
    return sched, ticks, clock


def test_no_drift_with_varying_work():
    sched, ticks, _ = drive([0.01, 0.07, 0.03, 0.09, 0.0] * 20)
    starts = [t.scheduled - ticks[0].scheduled for t in ticks]
    assert starts == pytest.approx([0.1 * i for i in range(len(ticks))])
    assert all(t.started == t.scheduled for t in ticks)
    assert sched.misses == 0 and sched.skipped == 0


def test_overrun_counts_a_miss_and_skips_slots_instead_of_bursting():
    sched, ticks, _ = drive([0.02, 0.25, 0.02, 0.02])
    # tick 1 ran from 0.1 to 0.35: it missed its deadline (0.2); slots 2 (0.2) and 3 (0.3) are skipped.
    assert [t.index for t in ticks] == [0, 1, 4, 5]
    assert ticks[2].scheduled - ticks[0].scheduled == pytest.approx(0.4)
    assert sched.misses == 1 and sched.skipped == 2
    assert ticks[1].missed and not ticks[0].missed


def test_stage_timer_and_latency():
    clock = SimClock()
    sched = FixedRateScheduler(10, clock=clock, wait=clock.sleep)
    for tick in sched.run():
        with tick.stage("detect", clock=clock):
            clock.t += 0.004
        with tick.stage("expression", clock=clock):
            clock.t += 0.002
        sched.stop()
    assert tick.stages == pytest.approx({"detect": 0.004, "expression": 0.002})
    assert tick.latency == pytest.approx(0.006)


def test_percentiles_shape():
    p = percentiles([0.001, 0.002, 0.003, 0.004])
    assert set(p) == {"p50_ms", "p95_ms", "p99_ms", "max_ms"} and p["max_ms"] == 4.0
    assert percentiles([])["p99_ms"] == 0.0


def test_idle_hook_gets_the_slack_before_each_wait_and_never_delays_a_tick():
    clock = SimClock()
    sched = FixedRateScheduler(10, clock=clock, wait=clock.sleep)
    slacks = []

    def idle(slack):
        slacks.append(slack)
        clock.t += 0.001     # the hook's own work comes out of the slack, not out of the next tick

    sched.on_idle = idle
    work = [0.02, 0.05, 0.0]
    ticks = []
    for i, tick in enumerate(sched.run()):
        ticks.append(tick)
        clock.t += work[i]
        if i == len(work) - 1:
            sched.stop()
    # no hook before the first tick; before tick k the slack is what tick k-1 left of its period
    assert slacks == pytest.approx([0.08, 0.05])
    assert [t.started - t.scheduled for t in ticks] == pytest.approx([0, 0, 0])
    assert sched.misses == 0
