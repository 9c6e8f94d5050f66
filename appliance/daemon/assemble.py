"""Wiring apart from work (as Holoscan's ``compose()`` is apart from ``compute()``): build every part of the daemon
from a config, check everything that can fail on bad input before anything starts, and hand back the parts and
the tick's stage lists. Nothing here runs per tick."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from appliance.windows.aggregate import FaceTracker, WindowAggregator
from appliance.windows.alerts import Anger
from appliance.host.audit import AuditLog
from appliance.config import AppConfig
from appliance.publish.config import parse_broker_url
from appliance.host.cpu_latency import CpuLatencyRequest
from appliance.daemon.stages import Capture, DiscardAudio, Health, Stage, Vision, Voice, Windows
from appliance.daemon.voice_worker import VoiceWorker
from appliance.perception.follow import FaceFollower
from appliance.windows.fusion import AngerIndex, load_fusion
from appliance.daemon.loop import FixedRateScheduler
from appliance.manifest import load_manifest, verify_variant
from appliance.perception.expression import ExpressionModel
from appliance.perception.faces import FaceDetector
from appliance.perception.vad import VoiceActivity
from appliance.perception.voice import SpeechBuffer, VoiceToneModel
from appliance.perception.voice_encoder import configured as anger_encoder
from appliance.perception.zones import ExclusionZones
from appliance.publish.broker import EmbeddedBroker
from appliance.publish.client import check_setup
from appliance.publish.outbox import Outbox
from appliance.sources.audio import FileAudioSource, MicSource
from appliance.sources.camera import CameraSource, CameraSpec, resolve_spec
from appliance.sources.config import DEMO_VIDEO
from appliance.sources.replay import Replay
from appliance.host.statedir import StateDirLock

DEMO_AUDIO = DEMO_VIDEO.with_suffix(".flac")


def make_audio_source(config: AppConfig, camera: CameraSpec, camera_loops: bool, on_state=None):
    """The configured audio source, or None. 'auto' means the demo's soundtrack when the camera is the demo."""
    source = config.audio.source.strip()
    if source == "auto":
        is_demo = camera.kind == "file" and str(camera.target) == str(DEMO_VIDEO)
        source = str(DEMO_AUDIO) if is_demo else "none"
    if source == "none":
        return None
    if source == "mic" or source.startswith("mic:"):
        return MicSource(source[4:] or None, on_state=on_state, retry_initial_s=config.audio.retry_initial_s,
                         retry_max_s=config.audio.retry_max_s)
    loop = config.audio.loop if config.audio.loop is not None else camera_loops
    return FileAudioSource(source, realtime=config.audio.realtime, loop=loop, on_state=on_state)


def face_detector_path(config: AppConfig):
    manifest = load_manifest(config.models.dir / "tflite" / config.faces.model)
    return verify_variant(manifest, manifest.variants[0])


def make_face_detector(config: AppConfig, max_faces: int | None = None) -> FaceDetector:
    """The face detector as the daemon runs it (``faces`` section); close it, or use it in a ``with``."""
    f = config.faces
    return FaceDetector(face_detector_path(config), f.score_threshold, max_faces or f.max_faces, f.min_face_px,
                        f.tiles)


@dataclass
class Parts:
    config: AppConfig
    scheduler: FixedRateScheduler
    cpu_latency: CpuLatencyRequest | None
    spec: CameraSpec
    source: object                       # CameraSource, or a replay's camera
    audio: object | None
    state_lock: StateDirLock
    outbox: Outbox
    expression: ExpressionModel
    vad: VoiceActivity | None
    tone: VoiceToneModel | None
    anger_index: AngerIndex
    aggregator: WindowAggregator
    anger: Anger | None
    audit: AuditLog
    detector: FaceFollower               # the face detector, run every faces.detect_every frames
    broker: EmbeddedBroker | None
    health: Health
    stages: list[Stage]                  # a tick's work, in order (the publish stage is added by the pipeline)
    paused_stages: list[Stage]           # while opted out: frames and audio taken only to be thrown away
    voice: Voice | None
    voice_worker: VoiceWorker | None     # features and tone beside the loop (inline in a replay)
    models: list[dict]                   # model, provider, precision: what each model got
    model_sha: dict[str, str]


def compose(config: AppConfig, on_source_state: Callable, history_ticks: int = 3000, replicate_faces: int = 0,
            replay: Replay | None = None) -> Parts:
    """Everything that can fail on bad input fails here, cheapest checks first; the MediaPipe detector (which must be
    closed explicitly) is closed again when a later check fails. The state folder's lock is held from here
    (``Parts.state_lock``)."""
    # A replay runs on its own clock: the loop's waits advance it instead of sleeping (sources/replay.py).
    clock = {"clock": replay.clock.now, "wait": replay.clock.advance} if replay else {}
    scheduler = FixedRateScheduler(config.loop.rate_hz, history=history_ticks, **clock)
    latency = config.loop.cpu_wakeup_latency_us
    cpu_latency = CpuLatencyRequest(latency) if latency is not None else None
    spec = resolve_spec(config.camera.source, config.camera)
    if replay is not None:
        source, audio = replay.camera, replay.audio
    else:
        source = CameraSource(spec, config.camera, on_state=on_source_state)
        audio = make_audio_source(config, spec, source.loop_file, on_state=on_source_state)
    if config.mqtt.broker is not None:
        check_setup(config.mqtt, parse_broker_url(config.mqtt.broker))
    state_lock = StateDirLock(config.state.dir).acquire()     # one daemon per state folder (statedir.py)
    # Every event goes to disk first; the seq lives there too, and in the one-line file 'seq' beside it.
    outbox = Outbox(config.state.outbox, config.outbox, seq_file=config.state.seq, device_id=config.device.id)
    models_dir = config.models.dir / "onnx"
    # First, alone: on a machine's first start it times its INT8 and FP32 files (runtime.measured_cpu_precision).
    expression = ExpressionModel(load_manifest(models_dir / config.expression.model), config.runtime,
                                 margin=config.faces.margin)
    detector_manifest = load_manifest(config.models.dir / "tflite" / config.faces.model)
    # The voice's models load on a thread while MediaPipe builds the detector, the slowest part to build (ONNX
    # Runtime builds its sessions without holding the GIL): the start is shorter by about their load.
    with ThreadPoolExecutor(1, thread_name_prefix="load-voice") as pool:
        loading = pool.submit(_voice_models, config, models_dir) if audio is not None else None
        detector = FaceFollower(make_face_detector(config), config.faces.detect_every)
    try:
        vad, tone = loading.result() if loading else (None, None)
        speech = SpeechBuffer(config.voice.step_s, config.voice.min_speech_s) if audio is not None else None
        # The voice's P(angry) is calibrated as the model that makes it: the encoder's head where there is one.
        voice_anger = tone and (tone.anger_model or tone)
        anger_index = load_fusion(config.models.dir, expression.manifest, expression.runtime_report.file,
                                  voice_anger and voice_anger.manifest, voice_anger and voice_anger.report.file)
        period = scheduler.period
        aggregator = WindowAggregator(
            expression.labels, config.aggregate.window_s, period, config.k_min, config.aggregate.min_observed_s,
            FaceTracker(config.aggregate.track_max_age_s, config.aggregate.track_iou),
            voice_labels=tone.labels if tone else (), min_speech_s=config.voice.min_speech_s,
            anger_index=anger_index)
        anger = Anger(config.alerts, period, config.voice.step_s, anger_index) if config.alerts_enabled else None
        audit = AuditLog(config.state.audit)
        broker = EmbeddedBroker(config.mqtt.embedded_port) if config.mqtt.broker is None else None

        health = Health()
        capture = Capture(source, health)
        worker = VoiceWorker(tone, threaded=replay is None) if audio is not None else None
        voice = Voice(audio, vad, speech, worker, health) if audio is not None else None
        stages: list[Stage] = [capture, Vision(ExclusionZones(config.privacy.exclusion_zones), detector, expression,
                                               replicate_faces)]
        stages += [voice] if voice else []
        stages.append(Windows(aggregator, anger, source, expression.labels.index("angry")))
        paused = [capture] + ([DiscardAudio(audio, health)] if audio is not None else [])

        reports = [expression.report] + ([vad.report, tone.report] if tone else []) + (
            [tone.anger_model.report] if tone and tone.anger_model else [])
        models = [{"model": detector_manifest.name, "provider": "xnnpack", "precision": "fp32"}] + [
            {"model": r.model, "provider": r.provider, "precision": r.precision} for r in reports]
        model_sha = {r.model: r.sha256 for r in reports} | {
            detector_manifest.name: detector_manifest.variants[0].sha256}
        return Parts(config, scheduler, cpu_latency, spec, source, audio, state_lock, outbox, expression, vad, tone,
                     anger_index, aggregator, anger, audit, detector, broker, health, stages, paused, voice, worker,
                     models, model_sha)
    except BaseException:
        detector.close()       # MediaPipe's detector must be closed explicitly
        raise


def _voice_models(config: AppConfig, models_dir) -> tuple[VoiceActivity, VoiceToneModel]:
    vad = VoiceActivity(load_manifest(models_dir / config.voice.vad_model), config.voice.vad_threshold)
    tone = VoiceToneModel(load_manifest(models_dir / config.voice.model), config.runtime,
                          anger=anger_encoder(models_dir, config.voice.anger_model, config.runtime))
    return vad, tone
