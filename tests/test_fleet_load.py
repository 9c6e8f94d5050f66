"""The fleet load script runs end to end on a small fleet and accounts for every message."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_fleet_load_small_run_loses_nothing(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fleet_load.py"), "--units", "20",
                           "--seconds", "2", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["published"] >= 40 and report["acked_by_broker"] == report["published"]
    assert report["lost"] == 0 and report["received_unique"] == report["published"]
    assert "broker_cpu_percent_of_one_core" in report and "| 20 |" in out.with_suffix(".md").read_text()


def test_fleet_load_payloads_are_valid_for_their_schemas():
    """The load is what a dashboard reads (`--broker`): every payload must pass its topic's schema, and the event id
    still carries the send time the latency is read from."""
    import importlib.util
    import json
    import time

    import jsonschema

    from conftest import load_schema

    spec = importlib.util.spec_from_file_location("fleet_load", ROOT / "benchmarks" / "fleet_load.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    for kind, payload in (("summary", load.summary("unit-00001", 3)), ("stats", load.stats("unit-00001", 7)),
                          ("status", load.status("unit-00001"))):
        jsonschema.validate(json.loads(payload), load_schema(kind))
    assert abs(load.sent_at(json.loads(load.summary("u", 1))["event_id"]) - time.time()) < 5
