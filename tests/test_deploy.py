"""Jetson deployment, checked as far as this CPU machine allows: the install plan, the generated config, the
systemd unit (systemd's own verifiers), the watchdog, the GStreamer pipelines, engines and doctor.

Not checkable here, and said so in the README: a real JetPack install, TensorRT engine builds, CSI/USB capture.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.sources.camera import resolve_spec
from appliance.sources.gstreamer import CaptureFormat, csi_pipeline, expand, usb_pipeline
from appliance.host.systemd_notify import Notifier
from conftest import ROOT, appliance_cmd, appliance_env

INSTALL = ROOT / "deploy" / "jetson" / "install.sh"
UNIT = ROOT / "systemd" / "appliance.service"
JP6 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 2024\n"


def install(*args, env=None):
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **(env or {})})


# ---------------------------------------------------------------------------------------------- install.sh
def test_install_refuses_a_non_jetson_without_force():
    proc = install("--dry-run")
    assert proc.returncode == 1 and "not a Jetson" in proc.stderr and "--force" in proc.stderr


def test_install_dry_run_prints_the_whole_plan_and_changes_nothing():
    before = Path("/opt/appliance").exists(), Path("/etc/appliance").exists()
    proc = install("--dry-run", "--force")
    assert proc.returncode == 0, proc.stderr
    plan = proc.stdout
    for step in ("apt-get install", "useradd --system", "python3 -m venv --system-site-packages",
                 "pip install --quiet /opt/appliance/src",
                 "voice_anger_encoder.py --encoder-only --out /opt/appliance/src/models/onnx/voice_anger_encoder",
                 "would write /etc/appliance/config.toml",
                 "appliance config validate", "would write /etc/systemd/system/appliance.service",
                 "would write /etc/udev/rules.d/70-appliance-cpu-latency.rules",
                 "would write /etc/systemd/system/systemd-time-wait-sync.service.d/appliance.conf",
                 "systemctl enable systemd-time-wait-sync.service",
                 "systemctl enable --now appliance.service"):
        assert step in plan or step.split()[0] in plan, step
    assert (Path("/opt/appliance").exists(), Path("/etc/appliance").exists()) == before


def test_install_plan_on_jetpack6_uses_the_gpu_runtime_and_builds_engines(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text(JP6)
    proc = install("--dry-run", "--purpose", "customer-experience", "--jurisdiction", "FR",
                   env={"NV_TEGRA_RELEASE": str(release)})
    assert proc.returncode == 0, proc.stderr
    assert "L4T 36.4.0 (JetPack 6)" in proc.stdout
    assert re.search(r"pip install --quiet --index-url \S+/jp6/cu126 onnxruntime-gpu", proc.stdout)
    assert "pip uninstall --yes --quiet opencv-python" in proc.stdout   # JetPack's GStreamer OpenCV wins
    assert "appliance models build-engines" in proc.stdout


def test_generated_config_validates(tmp_path):
    proc = install("--print-config", "--purpose", "customer-experience", "--jurisdiction", "DE")
    assert proc.returncode == 0
    path = tmp_path / "config.toml"
    path.write_text(proc.stdout)
    cfg = load_config(path, env={})
    assert cfg.camera.source == "csi:0" and cfg.audio.source == "mic"
    assert str(cfg.runtime.engine_cache_dir) == "/var/cache/appliance/trt-engines"
    assert (cfg.privacy.purpose, cfg.privacy.jurisdiction) == ("customer-experience", "DE")


def test_install_needs_purpose_and_jurisdiction():
    proc = install("--force")
    assert proc.returncode == 2 and "--purpose and --jurisdiction are required" in proc.stderr


def test_install_script_is_shellcheck_clean():
    assert shutil.which("shellcheck"), "shellcheck missing: `make test` installs it (apt)"
    proc = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# ---------------------------------------------------------------------------------------------- systemd
def unit_for_verification(tmp_path) -> Path:
    # systemd-analyze verify checks that ExecStart exists; the venv lives on the Jetson, so point it at python.
    unit = tmp_path / "appliance.service"
    unit.write_text(UNIT.read_text().replace("/opt/appliance/venv/bin/appliance", shutil.which("python3")))
    return unit


def test_unit_passes_systemd_analyze_verify(tmp_path):
    proc = subprocess.run(["systemd-analyze", "verify", str(unit_for_verification(tmp_path))], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "appliance.service" not in proc.stderr, proc.stderr   # no warning about our unit


def test_unit_security_exposure_is_at_most_3(tmp_path):
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit_for_verification(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    score = float(re.search(r"Overall exposure level for appliance.service: ([0-9.]+)", proc.stdout).group(1))
    assert score <= 3.0, proc.stdout[-3000:]
    text = UNIT.read_text()
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict",
                      "NoNewPrivileges=yes", "PrivateTmp=yes", "DevicePolicy=closed",
                      "ReadWritePaths=/var/lib/appliance /var/cache/appliance"):
        assert directive in text, directive


class NotifySocket:
    """A stand-in for systemd's notify socket: records every datagram with its arrival time."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_daemon_notifies_ready_and_pings_the_watchdog_every_tick(tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        proc = subprocess.run(appliance_cmd("run", "--duration", "3"), capture_output=True, text=True, timeout=60,
                              env=appliance_env(tmp_path, NOTIFY_SOCKET=notify.path))
        assert proc.returncode == 0, proc.stderr[-2000:]
        time.sleep(0.3)
    finally:
        notify.close()
    kinds = [m.split("\n")[0] for _, m in notify.messages]
    ticks = int(re.search(r"done: (\d+) ticks", proc.stdout).group(1))
    assert kinds[0] == "READY=1" and kinds[-1] == "STOPPING=1"
    assert ticks <= kinds.count("WATCHDOG=1") <= ticks + 1


def test_watchdog_pings_stop_while_the_loop_is_stalled(tmp_path):
    from appliance.daemon.pipeline import Pipeline

    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = load_config(None, env={"APPLIANCE_STATE__DIR": str(tmp_path), "APPLIANCE_MQTT__EMBEDDED_PORT": "0",
                                 "APPLIANCE_AUDIO__SOURCE": "none"})
    pipeline = Pipeline(cfg)
    pipeline.notifier = Notifier(notify.path)
    real_tick = pipeline._tick

    def tick(t, now):
        if t.index == 15:
            time.sleep(1.5)   # a wedged stage: a camera read or model call that does not return
        return real_tick(t, now)

    pipeline._tick = tick
    try:
        pipeline.run(4.0)
        time.sleep(0.3)
    finally:
        notify.close()
    pings = [t for t, m in notify.messages if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) >= 1.4                          # silence while stalled: systemd would restart us
    assert sorted(gaps)[len(gaps) // 2] < 0.2        # otherwise one ping per 100 ms tick
    assert pings[-1] - pings[gaps.index(max(gaps)) + 1] > 0.5   # and pinging again after the stall


def test_notifier_is_silent_outside_systemd():
    n = Notifier(environ={})
    n.ready()
    n.watchdog()
    assert not n.enabled and n.sent == 0


# ---------------------------------------------------------------------------------------------- cameras
def test_csi_and_usb_pipelines():
    fmt = CaptureFormat(1920, 1080, 30, 2)
    assert csi_pipeline(1, fmt) == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1,format=NV12 ! "
        "nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false")
    assert usb_pipeline("/dev/video2", fmt) == (
        "v4l2src device=/dev/video2 io-mode=2 ! image/jpeg,width=1920,height=1080,framerate=30/1 ! "
        "nvv4l2decoder mjpeg=1 ! nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")
    assert "video/x-raw,width=1280" in expand("usb-raw:0") and "device=/dev/video0" in expand("usb-raw:0")
    assert expand("rtsp://cam/1") == "rtsp://cam/1" and expand("demo") == "demo"
    with pytest.raises(ValueError, match="csi:N"):
        expand("csi:front")


def test_camera_config_feeds_the_pipeline_and_is_checked_against_opencv(tmp_path):
    cfg = load_config(None, env={"APPLIANCE_CAMERA__SOURCE": "csi:0", "APPLIANCE_CAMERA__WIDTH": "640",
                                 "APPLIANCE_CAMERA__HEIGHT": "480", "APPLIANCE_STATE__DIR": str(tmp_path),
                                 "APPLIANCE_PRIVACY__PURPOSE": "market-research",
                                 "APPLIANCE_PRIVACY__JURISDICTION": "US"})
    spec = resolve_spec(cfg.camera.source, cfg.camera)
    assert spec.kind == "gstreamer" and "width=640,height=480" in spec.target
    proc = subprocess.run(appliance_cmd("run", "--camera", "csi:0", "--duration", "1"), capture_output=True,
                          text=True, timeout=60, env=appliance_env(tmp_path, APPLIANCE_PRIVACY__PURPOSE="market-research",
                                                                   APPLIANCE_PRIVACY__JURISDICTION="US"))
    assert proc.returncode == 2 and "no GStreamer" in proc.stderr and "JetPack's OpenCV" in proc.stderr


# ---------------------------------------------------------------------------------------------- engines, doctor
def test_build_engines_explains_that_tensorrt_is_absent(tmp_path):
    proc = subprocess.run(appliance_cmd("models", "build-engines"), capture_output=True, text=True, timeout=60,
                          env=appliance_env(tmp_path))
    assert proc.returncode == 2 and "TensorRT is not available here" in proc.stderr
    assert "deploy/jetson/install.sh" in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_one_line_per_check_and_a_fix_for_each_failure(tmp_path):
    env = appliance_env(tmp_path, APPLIANCE_MQTT__BROKER="mqtt://127.0.0.1:9")   # nothing listens on port 9
    proc = subprocess.run(appliance_cmd("doctor"), capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    names = {line[7:20].strip() for line in lines}
    assert {"camera", "microphone", "model", "providers", "engine cache", "broker", "outbox", "disk", "clock"} <= names
    broker = next(i for i, line in enumerate(proc.stdout.splitlines()) if "] broker" in line)
    assert proc.stdout.splitlines()[broker].startswith("[FAIL]")
    assert proc.stdout.splitlines()[broker + 1].strip().startswith("fix:")
    assert "1 failed" in proc.stdout


def test_doctor_passes_with_a_reachable_broker(tmp_path, mosquitto):
    proc = subprocess.run(appliance_cmd("doctor"), capture_output=True, text=True, timeout=60,
                          env=appliance_env(tmp_path, APPLIANCE_MQTT__BROKER=mosquitto.url))
    assert proc.returncode == 0, proc.stdout
    assert "MQTT CONNACK" in proc.stdout
    assert "cpu latency" not in proc.stdout      # checked only when configured


def test_doctor_checks_the_voice_anger_encoder_that_git_does_not_hold(tmp_path):
    """The encoder file is written by make setup / install.sh, not shipped in git: doctor names a missing or wrong one
    and how to write it; the anger index it checks is the one the daemon assembles (the encoder's calibration)."""
    models = tmp_path / "models"
    (models / "onnx").mkdir(parents=True)
    for entry in (ROOT / "models").iterdir():
        if entry.name != "onnx":
            (models / entry.name).symlink_to(entry)
    for entry in (ROOT / "models" / "onnx").iterdir():
        if entry.name != "voice_anger_encoder":
            (models / "onnx" / entry.name).symlink_to(entry)
    mine = models / "onnx" / "voice_anger_encoder"
    mine.mkdir()
    for f in (ROOT / "models" / "onnx" / "voice_anger_encoder").iterdir():
        if f.name != "encoder.onnx":
            (mine / f.name).symlink_to(f)
    env = appliance_env(tmp_path, APPLIANCE_MODELS__DIR=str(models))

    def model_line(proc):
        lines = proc.stdout.splitlines()
        i = next(i for i, line in enumerate(lines) if "voice_anger_encoder" in line and "] model" in line)
        return lines[i], lines[i + 1] if i + 1 < len(lines) else ""

    for broken in ("missing", "does not match"):
        if broken == "does not match":
            (mine / "encoder.onnx").write_bytes(b"not the encoder")
        proc = subprocess.run(appliance_cmd("doctor"), capture_output=True, text=True, timeout=60, env=env)
        line, fix = model_line(proc)
        assert line.startswith("[FAIL]") and broken in line, proc.stdout
        assert "voice_anger_encoder.py --encoder-only" in fix
    (mine / "encoder.onnx").unlink()
    (mine / "encoder.onnx").symlink_to(ROOT / "models" / "onnx" / "voice_anger_encoder" / "encoder.onnx")
    proc = subprocess.run(appliance_cmd("doctor"), capture_output=True, text=True, timeout=60, env=env)
    line, _ = model_line(proc)
    assert line.startswith("[ok  ]") and "speech encoder encoder.onnx sha256 match" in line
    index = next(line for line in proc.stdout.splitlines() if "] anger index" in line)
    assert index.startswith("[ok  ]") and "ferplus_cnn_one_pass + voice_anger_encoder" in index


def test_doctor_checks_the_cpu_latency_request_when_configured(tmp_path):
    proc = subprocess.run(appliance_cmd("doctor"), capture_output=True, text=True, timeout=60,
                          env=appliance_env(tmp_path, APPLIANCE_LOOP__CPU_WAKEUP_LATENCY_US="0"))
    line = next(line for line in proc.stdout.splitlines() if "] cpu latency" in line)
    if os.access("/dev/cpu_dma_latency", os.W_OK):     # CI runs as root: the real device takes the request
        assert line.startswith("[ok  ]") and "held to 0 us" in line
    else:
        assert line.startswith("[FAIL]") and "udev rule" in proc.stdout


def test_dashboard_flow_is_what_its_builder_writes():
    """flows.json is generated (deploy/dashboard/build_flow.py holds its templates and code readably)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_flow", ROOT / "deploy" / "dashboard" / "build_flow.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    for name, text in builder.render().items():
        assert (ROOT / "deploy" / "dashboard" / name).read_text() == text, \
            f"deploy/dashboard/{name} is stale: run python deploy/dashboard/build_flow.py"
