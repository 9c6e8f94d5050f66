"""`appliance bench`: the report's shape (contract keys), its three files, and the matrix structure.

Speeds are measured by the benchmark, not asserted here: a timed assertion on a shared 2-core CI machine would
test the machine, not the code.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from appliance.tools.bench_matrix import matrix
from appliance.tools.bench_report import markdown
from appliance.config import load_config
from conftest import appliance_cmd, appliance_env

CONTRACT = {"stages", "end_to_end", "deadline_misses", "ticks", "rate_hz", "providers"}
PERCENTILES = {"p50_ms", "p95_ms", "p99_ms", "max_ms"}


def test_bench_writes_json_markdown_and_plot(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(appliance_cmd("bench", "--seconds", "4", "--faces", "4", "--json", str(out)),
                          env=appliance_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert CONTRACT <= set(report)
    assert PERCENTILES <= set(report["end_to_end"])
    for stage in ("capture", "detect", "crop", "expression", "vad", "tone", "aggregate"):
        assert PERCENTILES <= set(report["stages"][stage]), stage
    assert report["stages"]["expression"]["calls"] > 0 and report["faces_replicated"] == 4
    assert report["ticks"] >= 30 and len(report["timeline_ms"]) == report["ticks"]
    assert 0 <= report["loop_overhead_fraction"] < 1 and report["rss_mb"] > 50
    assert report["warm_up_ms"] > 0       # every model ran once at each of its shapes before the first tick
    assert report["providers"]["ferplus_cnn_one_pass"]["provider"] == "cpu"
    assert out.with_suffix(".md").read_text().startswith("# appliance bench")
    assert out.with_suffix(".png").stat().st_size > 10000
    assert "| detect |" in proc.stdout and "deadline misses" in proc.stdout
    assert "[###" in proc.stderr   # progress bar


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_matrix_covers_models_precisions_providers_and_the_auto_choice(tmp_path, monkeypatch):
    # onnxruntime-gpu lists TensorRT and CUDA even where their libraries are missing (seen: TensorRT's on a GPU
    # machine without it). Here the CPU build stands in: asked for them, it really falls back to the CPU, which the
    # runtime detects. The matrix must say so per row and go on, not abort the whole report.
    import appliance.runtime as runtime

    monkeypatch.setattr(runtime, "available_providers", lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    cfg = load_config(None, env={"APPLIANCE_STATE__DIR": str(tmp_path), "APPLIANCE_MQTT__EMBEDDED_PORT": "0",
                                 "APPLIANCE_LOG__LEVEL": "WARNING",
                                 "APPLIANCE_RUNTIME__ENGINE_CACHE_DIR": str(tmp_path / "engines")})
    m = matrix(cfg, runs=5, loop_seconds=2, log=lambda msg: None)
    timed = {(r["model"], r["provider"], r["precision"]) for r in m["calls"] if "unavailable" not in r}
    # The shipped face models side by side (the configured one and the others), and the voice model.
    faces = ("ferplus_cnn_one_pass", "ferplus_cnn", "fer_mini_xception")
    assert timed == {(face, "cpu", p) for face in faces for p in ("fp32", "int8")} \
        | {("voice_tone_cnn", "cpu", "fp32"), ("voice_tone_cnn", "cpu", "int8")}
    unusable = {(r["provider"], r["precision"]) for r in m["calls"] if "unavailable" in r}
    assert unusable == {("tensorrt", "int8"), ("tensorrt", "fp16"), ("tensorrt", "fp32"), ("cuda", "fp32")}
    assert all("fell back to cpu" in r["unavailable"] for r in m["calls"] if "unavailable" in r)
    face = next(r for r in m["calls"] if r["model"] == "ferplus_cnn_one_pass" and "unavailable" not in r)
    assert face["loop_batch"] == 8 and {"batch1", "batch8"} <= set(face)
    assert {(r["provider"], r["precision"]) for r in m["loops"]} == {("cpu", "fp32"), ("cpu", "int8")}
    assert all(r["max_rate_hz"] and r["max_rate_hz"] > 0 for r in m["loops"])
    assert set(m["auto"]) == {"ferplus_cnn_one_pass", "voice_tone_cnn"}
    assert all(isinstance(a["auto_is_fastest"], bool) for a in m["auto"].values())
    assert {a["provider"] for a in m["auto"].values()} == {"cpu"}
    assert all(a["fastest_overall"].startswith("cpu ") for a in m["auto"].values())
    text = markdown({"machine": "x", "version": "0", "seconds": 1, "configured_rate_hz": 10, "input": "demo",
                     "faces_replicated": 0, "ticks": 1, "rate_hz": 10, "deadline_misses": 0, "skipped_slots": 0,
                     "end_to_end": dict.fromkeys(["p50_ms", "p95_ms", "p99_ms", "max_ms"], 1.0),
                     "loop_overhead_fraction": 0.1, "cpu_percent_of_one_core": 10, "rss_mb": 100,
                     "frames_dropped": 0, "frames_used": 1, "audio_lost_seconds": 0, "providers": {},
                     "stages": {}, "matrix": m})
    assert "## Provider x precision" in text and "largest rate meeting every deadline" in text
    assert "| ferplus_cnn | cuda | fp32 | not usable here |" in text


def test_bench_beside_a_running_daemon_leaves_its_state_alone(tmp_path):
    """A technician benchmarks a unit whose daemon holds the state folder: the bench runs in a folder of its own
    (no lock conflict, nothing in the unit's outbox or seq) and still honours the unit's opt-out."""
    from appliance.tools.bench import run_loop
    from appliance.publish.outbox import Outbox
    from appliance.publish.config import OutboxConfig
    from appliance.host.statedir import StateDirLock

    state = tmp_path / "state"
    daemon = StateDirLock(state).acquire()                      # the unit's daemon, running
    box = Outbox(state / "outbox.sqlite3", OutboxConfig(), device_id="kiosk-demo")
    box.close()
    cfg = load_config(None, env={"APPLIANCE_STATE__DIR": str(state), "APPLIANCE_MQTT__EMBEDDED_PORT": "0",
                                 "APPLIANCE_LOG__LEVEL": "WARNING", "APPLIANCE_AGGREGATE__WINDOW_S": "1",
                                 "APPLIANCE_AGGREGATE__MIN_OBSERVED_S": "0.5"})
    report = run_loop(cfg, 2.5, progress=False)
    assert report["stages"]["detect"]["calls"] > 0
    assert Outbox(state / "outbox.sqlite3", OutboxConfig()).last_seq == 0 and not (state / "seq").exists()
    (state / "paused").touch()                                  # the unit is opted out
    report = run_loop(cfg, 1.5, progress=False)
    assert report["stages"]["detect"]["calls"] == 0
    daemon.release()
