"""`appliance compare`: medians side by side, and a machine whose speed changed told apart from a real difference;
the bench's CPU reference and wake-up latency request that it relies on.

The verdict logic runs on reports built here (the figures are the point, not where they came from); the command
runs on a real bench report written by the real loop.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess

import pytest

from appliance.tools.compare import compare, markdown
from appliance.host.cpu_latency import DEVICE
from conftest import appliance_cmd, appliance_env


def report(scale: float = 1.0, reference: float | None = 0.25, drift: float = 0.0, **stage_ms: float) -> dict:
    stages = {"capture": 0.016, "detect": 3.0, "expression": 1.7, "vad": 1.0, "tone": 5.6, "aggregate": 0.15,
              "features": 1.1, "publish": 0.0} | stage_ms
    calls = {"publish": 0, "features": 12}
    r = {"stages": {s: {"p50_ms": round(v * scale, 4), "calls": calls.get(s, 100)} for s, v in stages.items()},
         "per_item": {"expression": {"p50_ms": 0.43 * scale, "items": 400}, "vad": {"p50_ms": 0.31 * scale,
                                                                                   "items": 300}},
         "end_to_end": {"p50_ms": 6.7 * scale}, "ticks": 100}
    if reference is not None:
        r["cpu_reference"] = {"samples": 100, "p50_ms": reference, "drift": drift}
    return r


def test_the_same_figures_are_the_same_and_stages_that_did_not_run_are_left_out():
    c = compare(report(), report(1.05))
    assert c.verdict == "same" and c.steady and not c.differing
    names = [r.name for r in c.rows]
    assert "publish" not in names and names[-3:] == ["expression per item", "vad per item", "end_to_end"]
    # per tick, stages with a varying amount of work are shown but judged per item
    assert {r.name: r.judged for r in c.rows}["expression"] == "per item"


def test_a_median_of_few_samples_is_shown_but_not_judged():
    c = compare(report(), report(features=1.5))          # 36 % apart, but each median is of 12 calls only
    row = next(r for r in c.rows if r.name == "features")
    assert row.within is None and row.judged == "12 samples" and row.difference == pytest.approx(0.3636, abs=1e-3)
    assert c.verdict == "same" and "| features | 1.100 | 1.500 | 36.4% | 12 samples |" in markdown(c)


def test_one_stage_slower_on_a_steady_machine_differs():
    c = compare(report(), report(detect=3.6))          # 20 % slower detection, same CPU speed
    assert c.verdict == "differs" and c.differing == ["detect"]
    assert {r.name: r.difference for r in c.rows}["detect"] == pytest.approx(0.2)
    assert "**no**" in markdown(c)


def test_everything_slower_with_the_cpu_reference_is_the_machine():
    c = compare(report(), report(1.25, reference=0.31))
    assert not c.steady and c.machine_difference == pytest.approx(0.24)
    assert c.verdict == "machine" and "detect" in c.differing
    assert all(r.adjusted <= 0.02 for r in c.rows)
    assert "the machine ran at another speed" in c.summary()


def test_a_real_regression_is_not_excused_by_a_slower_machine():
    c = compare(report(), report(1.25, reference=0.31, tone=5.6 * 1.5))   # tone 50 % slower on a 24 % slower CPU
    assert c.verdict == "differs" and "tone" in c.differing
    assert "part of it is the machine" in c.summary() and "0.250 vs 0.310 ms" in c.summary()


def test_drift_inside_a_run_makes_the_pair_unsteady_and_tiny_medians_are_judged_by_the_floor():
    c = compare(report(capture=0.010), report(reference=0.25, drift=0.12, capture=0.016))
    assert not c.steady and c.verdict == "same"          # 60 % of 10 us is noise, not a result
    assert "+12.0%" in c.summary()


def test_reports_without_a_reference_still_compare():
    c = compare(report(reference=None), report(1.3, reference=None))
    assert c.reference_ms is None and not c.steady and c.verdict == "differs"
    assert all(r.adjusted is None for r in c.rows)


def test_compare_command_on_real_bench_reports(tmp_path):
    out = tmp_path / "a.json"
    env = appliance_env(tmp_path)
    proc = subprocess.run(appliance_cmd("bench", "--seconds", "5", "--faces", "2", "--cpu-wakeup-latency-us", "0",
                                        "--json", str(out)), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = json.loads(out.read_text())
    ref = a["cpu_reference"]
    assert ref["samples"] >= 40 and 0 < ref["p50_ms"] < 50 and "matmul" in ref["workload"]
    text = out.with_suffix(".md").read_text()
    assert "CPU reference" in text
    # the request is real on this machine when it may write the device, and reported either way
    held = os.access(DEVICE, os.W_OK)
    assert a["cpu_wakeup_latency"]["applied"] is held and a["cpu_wakeup_latency"]["requested_us"] == 0
    assert ("held at 0 us" if held else "requested but not held") in text

    same = subprocess.run(appliance_cmd("compare", str(out), str(out), "--json", str(tmp_path / "c.json")),
                          env=env, capture_output=True, text=True, timeout=60)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "**same**" in same.stdout and "| *CPU reference* |" in same.stdout
    assert json.loads((tmp_path / "c.json").read_text())["verdict"] == "same"

    slower = copy.deepcopy(a)
    slower["stages"]["detect"]["p50_ms"] *= 1.5
    (tmp_path / "b.json").write_text(json.dumps(slower))
    differs = subprocess.run(appliance_cmd("compare", str(out), str(tmp_path / "b.json")), env=env,
                             capture_output=True, text=True, timeout=60)
    assert differs.returncode == 1 and "not within 10%: detect" in differs.stdout

    (tmp_path / "junk.json").write_text('{"accuracy": 0.6}')
    junk = subprocess.run(appliance_cmd("compare", str(out), str(tmp_path / "junk.json")), env=env,
                          capture_output=True, text=True, timeout=60)
    assert junk.returncode == 2 and "not an appliance bench report" in junk.stderr
