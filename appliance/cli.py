"""The ``appliance`` command (contract: DESIGN.md "CLI"). Every command works on a CPU-only machine."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

# MediaPipe (glog/absl) and LiteRT read these when they load; the daemon's own log says what matters.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer  # noqa: E402

from appliance import __version__  # noqa: E402
from appliance.config import EXAMPLE_CONFIG, AppConfig, ConfigError, load_config, to_toml

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Edge emotion appliance: camera -> faces -> expression model -> anonymised MQTT summaries.")
config_app = typer.Typer(no_args_is_help=True, help="Create, check and show the configuration.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure a model's accuracy on a labelled dataset folder.")
models_app = typer.Typer(no_args_is_help=True, help="The shipped models: list them, build TensorRT engines.")
app.add_typer(config_app, name="config")
app.add_typer(eval_app, name="eval")
app.add_typer(models_app, name="models")

SYSTEM_CONFIG = Path("/etc/appliance/config.toml")
ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: $APPLIANCE_CONFIG, then "
                         "/etc/appliance/config.toml if it exists, else built-in defaults)")


class UserError(Exception):
    """Something the user can fix; printed as one clear message, exit code 2, no traceback."""


def _config_path(path: Optional[Path]) -> Optional[Path]:
    if path is not None:
        return path
    if os.environ.get("APPLIANCE_CONFIG"):
        return Path(os.environ["APPLIANCE_CONFIG"])
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def _load(path: Optional[Path], **overrides) -> AppConfig:
    return load_config(_config_path(path), overrides=overrides)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _summary_line(p: dict) -> str:
    start = datetime.fromisoformat(p["window_start"].replace("Z", "+00:00")).strftime("%H:%M:%S")
    end = datetime.fromisoformat(p["window_end"].replace("Z", "+00:00")).strftime("%H:%M:%S")
    head = f"summary seq={p['seq']} {start}-{end}"
    if p["suppressed"]:
        return f"{head}  suppressed ({p['suppressed_reason']})"
    parts = [head]
    if p["faces"]:
        f = p["faces"]
        parts.append(f"faces {f['observations']} obs/{f['distinct_faces']} distinct/{f['observed_seconds']:.1f} s: "
                     + _top(f["distribution"]))
    if p["voice"]:
        parts.append(f"voice {p['voice']['speech_seconds']:.1f} s speech: " + _top(p["voice"]["distribution"]))
    if p["anger_index"] is not None:
        parts.append(f"anger {p['anger_index']:.2f}")
    return "  |  ".join(parts)


def _top(distribution: dict, n: int = 3) -> str:
    top = sorted(distribution.items(), key=lambda kv: kv[1], reverse=True)[:n]
    return " ".join(f"{label} {prob:.2f}" for label, prob in top)


# ------------------------------------------------------------------------------------------------ run
@app.command()
def run(
    config: Optional[Path] = ConfigOpt,
    video: Optional[str] = typer.Option(None, "--video", help="video file to play as the camera"),
    camera: Optional[str] = typer.Option(None, "--camera", help="device index, /dev/videoN, rtsp:// URL or "
                                         "GStreamer pipeline"),
    audio: Optional[str] = typer.Option(None, "--audio", help="WAV/FLAC file to play as the microphone, or 'none'"),
    mic: Optional[str] = typer.Option(None, "--mic", help="microphone by name substring or index ('default' for "
                                      "the system default)"),
    broker: Optional[str] = typer.Option(None, "--broker", help="mqtt://HOST:PORT (default: embedded broker)"),
    device_id: Optional[str] = typer.Option(None, "--device-id"),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.1, help="seconds to run (default: until "
                                             "the video ends, forever for cameras and the looping demo)"),
    fast: bool = typer.Option(False, "--fast", help="read files as fast as they decode instead of at their fps"),
    loop: Optional[bool] = typer.Option(None, "--loop/--no-loop", help="replay a file at its end "
                                        "(default: only the demo loops)"),
    json_lines: bool = typer.Option(False, "--json", help="print each summary as its JSON payload"),
) -> None:
    """Run the pipeline: with no options, the bundled demo recording to an embedded broker."""
    if video and camera:
        raise UserError("give --video or --camera, not both")
    if audio and mic:
        raise UserError("give --audio or --mic, not both")
    audio_source = audio or (("mic" if mic == "default" else f"mic:{mic}") if mic else None)
    overrides = {"camera.source": video or camera, "audio.source": audio_source, "mqtt.broker": broker,
                 "device.id": device_id, "camera.loop": loop, "camera.realtime": False if fast else None,
                 "audio.realtime": False if fast else None}
    cfg = _load(config, **overrides)
    _setup_logging(cfg.log.level)
    from appliance.daemon.pipeline import Pipeline

    def show(payload: dict) -> None:
        print(json.dumps(payload) if json_lines else _summary_line(payload), flush=True)

    def announce(url: str) -> None:
        where = "embedded broker" if cfg.mqtt.broker is None else "broker"
        print(f"publishing to {where} {url} under {cfg.mqtt.topic_prefix}/{cfg.device.id}/ "
              f"(subscribe: mosquitto_sub -h {url.split('://')[1].split(':')[0]} "
              f"-p {url.rsplit(':', 1)[1]} -t '{cfg.mqtt.topic_prefix}/#' -v)", flush=True)

    def show_alert(payload: dict) -> None:
        print(json.dumps(payload) if json_lines else
              f"ALERT anger index {payload['anger_index']:.2f} over {payload['window_seconds']:g} s "
              f"(face {payload['face_anger']}, voice {payload['voice_anger']})", flush=True)

    pipeline = Pipeline(cfg, on_summary=show, on_broker=announce, on_alert=show_alert)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: pipeline.stop())
    # Local opt-out without a network: `systemctl kill -s USR1 appliance` pauses, USR2 resumes.
    signal.signal(signal.SIGUSR1, lambda *_: pipeline.request_pause(True))
    signal.signal(signal.SIGUSR2, lambda *_: pipeline.request_pause(False))
    print(f"appliance {__version__}: device {cfg.device.id}, profile {cfg.device.profile} (k={cfg.k_min}), "
          f"camera {pipeline.spec.describe()}, audio {pipeline.audio.describe() if pipeline.audio else 'none'}, "
          f"{cfg.loop.rate_hz:g} Hz, {cfg.aggregate.window_s:g} s windows, alerts "
          f"{'on' if cfg.alerts_enabled else 'off'}; models: "
          + ", ".join(f"{m['model']} {m['provider']} {m['precision']}" for m in pipeline.models), flush=True)
    report = pipeline.run(duration)
    print(f"done: {report.ticks} ticks at {report.rate_hz:.2f} Hz, {report.deadline_misses} deadline misses, "
          f"tick p50 {report.end_to_end['p50_ms']:.1f} ms p99 {report.end_to_end['p99_ms']:.1f} ms, "
          f"{report.summaries} summaries, {report.alerts} alerts, {report.frames_dropped} camera frames dropped",
          flush=True)


# ------------------------------------------------------------------------------------------------ bench
@app.command()
def bench(
    config: Optional[Path] = ConfigOpt,
    seconds: float = typer.Option(60.0, "--seconds", min=1.0, help="how long to drive the loop"),
    json_out: Path = typer.Option(Path("bench.json"), "--json", help="JSON report; the markdown (.md) and plot "
                                  "(.png) are written next to it"),
    video: Optional[str] = typer.Option(None, "--video", help="input video (default: as configured, the demo)"),
    camera: Optional[str] = typer.Option(None, "--camera", help="live camera instead of a recording"),
    audio: Optional[str] = typer.Option(None, "--audio", help="WAV/FLAC, 'none', or as configured"),
    mic: Optional[str] = typer.Option(None, "--mic", help="live microphone by name or index"),
    faces: int = typer.Option(0, "--faces", min=0, max=64, help="replicate the detected face N times to stress "
                              "the expression stage"),
    rate: Optional[float] = typer.Option(None, "--rate", help="try another loop rate (Hz)"),
    wakeup_us: Optional[int] = typer.Option(None, "--cpu-wakeup-latency-us", min=0, help="hold CPUs out of idle "
                                            "states slower than this to wake (0 = poll; see loop."
                                            "cpu_wakeup_latency_us)"),
    do_matrix: bool = typer.Option(False, "--matrix", help="also time every model x provider x precision"),
    faces_data: Optional[Path] = typer.Option(None, "--faces-data", help="face dataset folder for accuracy"),
    voice_data: Optional[Path] = typer.Option(None, "--voice-data", help="voice dataset folder for accuracy"),
    voice_where: Optional[list[str]] = typer.Option(None, "--voice-where", help="COLUMN=V1,V2 filter for "
                                                    "--voice-data, e.g. speaker=ravdess-17,ravdess-18"),
) -> None:
    """Per-stage latency, deadline misses, providers and precisions (and accuracy) of this unit, as a report."""
    from appliance.tools import bench as b

    if video and camera:
        raise UserError("give --video or --camera, not both")
    audio_source = audio or (("mic" if mic == "default" else f"mic:{mic}") if mic else None)
    cfg = _load(config, **{"camera.source": video or camera, "audio.source": audio_source, "loop.rate_hz": rate,
                           "loop.cpu_wakeup_latency_us": wakeup_us, "mqtt.embedded_port": 0, "log.level": "WARNING"})
    _setup_logging(cfg.log.level)
    desc = f"camera {cfg.camera.source}, audio {cfg.audio.source}"
    print(f"bench: {seconds:g} s of the real loop at {cfg.loop.rate_hz:g} Hz on {desc}", file=sys.stderr)
    result = b.header(cfg, desc) | b.run_loop(cfg, seconds, faces)
    if do_matrix:
        result["matrix"] = b.matrix(cfg)
    if faces_data or voice_data:
        result["accuracy"] = b.accuracy(cfg, faces_data, voice_data, _filters(voice_where), json_out.parent)
    for path in b.save(result, json_out):
        print(f"wrote {path}", file=sys.stderr)
    print(b.markdown(result), end="")


@app.command()
def compare(
    a: Path = typer.Argument(..., help="a JSON report written by appliance bench --json"),
    b: Path = typer.Argument(..., help="another one: another unit, another version, or the same unit again"),
    tolerance: float = typer.Option(0.10, "--tolerance", min=0.0, help="largest relative difference of medians "
                                    "that counts as the same"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the comparison as JSON"),
) -> None:
    """Compare two saved bench reports: medians per stage, and whether the CPU itself ran at another speed.
    Exit 0 when every median is within the tolerance, 1 when one is not, 3 when only the machine's speed differed."""
    from appliance.tools import compare as c

    reports = []
    for path in (a, b):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot read a bench report ({e})") from e
        if not isinstance(report, dict) or not {"stages", "end_to_end"} <= set(report):
            raise UserError(f"{path}: not an appliance bench report (no 'stages'/'end_to_end'); write one with "
                            f"appliance bench --json FILE")
        reports.append(report)
    result = c.compare(*reports, tolerance=tolerance)
    print(f"A: {a} (appliance {reports[0].get('version', '?')}, {reports[0].get('machine', '?')})")
    print(f"B: {b} (appliance {reports[1].get('version', '?')}, {reports[1].get('machine', '?')})")
    print()
    print(c.markdown(result), end="")
    if json_out:
        json_out.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    raise typer.Exit({"same": 0, "differs": 1, "machine": 3}[result.verdict])


def _filters(items: Optional[list[str]]) -> dict[str, set[str]]:
    filters = {}
    for item in items or []:
        column, sep, values = item.partition("=")
        if not sep or not values:
            raise UserError(f"{item!r}: expected COLUMN=V1,V2")
        filters[column] = set(values.split(","))
    return filters


# ------------------------------------------------------------------------------------------------ config
@config_app.command("init")
def config_init(out: Path = typer.Argument(Path("config.toml"), help="where to write"),
                force: bool = typer.Option(False, "--force", help="overwrite an existing file")) -> None:
    """Write an annotated config file with the defaults."""
    if out.exists() and not force:
        raise UserError(f"{out} exists; use --force to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(EXAMPLE_CONFIG.read_text())
    print(f"wrote {out}; check it with: appliance config validate --config {out}")


@config_app.command("validate")
def config_validate(config: Optional[Path] = ConfigOpt) -> None:
    """Check a config (file + APPLIANCE_* environment); exit 2 naming every bad key."""
    path = _config_path(config)
    cfg = _load(config)
    print(f"config OK ({path or 'built-in defaults'}): device {cfg.device.id}, profile {cfg.device.profile}, "
          f"k={cfg.k_min}, camera {cfg.camera.source}, broker {cfg.mqtt.broker or 'embedded'}")


@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOpt) -> None:
    """Print the effective config (defaults < file < environment) as TOML."""
    print(to_toml(_load(config)), end="")


# ------------------------------------------------------------------------------------------------ eval
@eval_app.command("faces")
def eval_faces(
    directory: Path = typer.Argument(..., help="DIR/<label>/*.png|jpg (labels as in the model manifest), or with "
                                     "--labels ferplus the FER+ index (ferplus_index.csv or the folder holding it)"),
    labels: str = typer.Option("folder", "--labels", help="folder: the folder names; ferplus: the FER+ crowd "
                               "majority (and FER2013's label beside it)"),
    split: str = typer.Option("public_test", "--split", help="with --labels ferplus: the split to read"),
    model: Optional[str] = typer.Option(None, "--model", help="model folder name under models/onnx, or a path "
                                        "to a model folder or .onnx file with its manifest.json beside it"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | int8 (default: runtime's choice)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    png: Optional[Path] = typer.Option(None, "--png", help="write the confusion matrix as PNG"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Accuracy, macro-F1, per-class recall/precision and calibration error (ECE) of the expression model."""
    from appliance.tools.evaluation import evaluate_faces, evaluate_ferplus, stderr_progress
    from appliance.perception.expression import ExpressionModel

    if labels not in ("folder", "ferplus"):
        raise UserError(f"--labels {labels!r}: use 'folder' or 'ferplus'")
    cfg = _load(config, **{"runtime.precision": precision})
    _setup_logging("WARNING")
    manifest = _model_manifest(model or cfg.expression.model, cfg)
    expression = ExpressionModel(manifest, cfg.runtime)
    progress = stderr_progress("evaluating")
    report = (evaluate_ferplus(directory, expression, split, progress=progress) if labels == "ferplus"
              else evaluate_faces(directory, expression, progress=progress))
    print(report.table())
    _write_outputs(report.as_dict(), json_out, report, png)


@eval_app.command("voice")
def eval_voice(
    directory: Path = typer.Argument(..., help="folder with index.csv (path,label columns; paths relative to it)"),
    model: Optional[str] = typer.Option(None, "--model", help="model folder name under models/onnx, or a path"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | int8 (default: runtime's choice)"),
    where: Optional[list[str]] = typer.Option(None, "--where", help="keep rows whose COLUMN is one of the values: "
                                              "COLUMN=V1,V2 (repeatable), e.g. speaker=ravdess-17,ravdess-18"),
    index: Optional[Path] = typer.Option(None, "--index", help="another CSV instead of DIR/index.csv"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    png: Optional[Path] = typer.Option(None, "--png", help="write the confusion matrix as PNG (default: next "
                                       "to --json)"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Accuracy, macro-F1, per-class recall and anger recall/precision of the vocal-tone model on clips."""
    from appliance.tools.evaluation import evaluate_voice, stderr_progress
    from appliance.perception.voice import VoiceToneModel

    cfg = _load(config, **{"runtime.precision": precision})
    _setup_logging("WARNING")
    filters = _filters(where)
    manifest = _model_manifest(model or cfg.voice.model, cfg)
    tone = VoiceToneModel(manifest, cfg.runtime)
    report = evaluate_voice(directory, tone, index=index, where=filters, progress=stderr_progress("evaluating"))
    angry = report.per_class.get("angry")
    print(report.table())
    if angry:
        auc = f", ROC AUC angry vs rest {report.angry_auc:.3f}" if report.angry_auc is not None else ""
        print(f"\nanger: recall {angry['recall']:.3f}, precision {angry['precision']:.3f} (n={angry['n']}){auc}")
    _write_outputs(report.as_dict() | ({"anger": angry} if angry else {}), json_out, report,
                   png or (json_out.with_suffix(".png") if json_out else None))


@eval_app.command("video")
def eval_video(
    directory: Path = typer.Argument(..., help="folder with index.csv (path,label[,audio] columns; paths relative "
                                     "to it)"),
    index: Optional[Path] = typer.Option(None, "--index", help="another CSV instead of DIR/index.csv"),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="simulated seconds per clip, looped (default: "
                                            "one summary window, aggregate.window_s)"),
    model: Optional[str] = typer.Option(None, "--model", help="expression model folder under models/onnx"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | int8 (default: runtime's choice)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    png: Optional[Path] = typer.Option(None, "--png", help="write the face confusion matrix as PNG (default: next "
                                       "to --json)"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Labelled clips through the real daemon pipeline: per clip faces seen, face and voice distributions, anger
    index and alerts."""
    from appliance.tools.evaluation import stderr_progress
    from appliance.manifest import load_manifest
    from appliance.perception.expression import ExpressionModel
    from appliance.tools.video_eval import as_json, confusion_report, evaluate_clips, quiet_pipeline_logs, table

    cfg = _load(config, **{"runtime.precision": precision, "expression.model": model})
    _setup_logging("WARNING")
    quiet_pipeline_logs()
    # What the daemon will pick for the face model (same config, same runtime planning).
    picked = ExpressionModel(load_manifest(cfg.models.dir / "onnx" / cfg.expression.model), cfg.runtime)
    results = evaluate_clips(directory, cfg, picked.labels, index=index, seconds=seconds,
                             progress=stderr_progress("playing clips"))
    print(table(results))
    report = confusion_report(results, picked.labels, cfg.expression.model, picked.report.precision,
                              picked.report.provider, str(directory))
    meta = {"model": cfg.expression.model, "voice_model": cfg.voice.model, "precision": picked.report.precision,
            "provider": picked.report.provider, "dataset": str(directory),
            "seconds_per_clip": seconds or cfg.aggregate.window_s, "rate_hz": cfg.loop.rate_hz}
    _write_outputs(as_json(results, meta), json_out, report,
                   png or (json_out.with_suffix(".png") if json_out else None))


@eval_app.command("sessions")
def eval_sessions(
    directory: Path = typer.Argument(..., help="speech folder with index.csv / index_more.csv (path,corpus,speaker,"
                                     "label columns)"),
    where: Optional[list[str]] = typer.Option(None, "--where", help="keep rows whose COLUMN is one of the values: "
                                              "COLUMN=V1,V2 (repeatable), e.g. the speakers no model trained on"),
    video: Optional[Path] = typer.Option(None, "--video", help="clip folder (index.csv path,label): a face clip of "
                                         "the session's emotion plays beside it; default: a camera that sees no one"),
    seconds: float = typer.Option(60.0, "--seconds", help="each session at least this long (clips reused)"),
    seed: int = typer.Option(20261127, "--seed", help="the order of clips and pauses"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write sessions and summary as JSON (markdown and "
                                            "a plot beside it)"),
    choose_thresholds: Optional[float] = typer.Option(
        None, "--choose-thresholds", min=0, metavar="FALSE_ALERTS_PER_HOUR",
        help="also choose the alert on/off thresholds that keep false alerts per hour (neutral, calm, happy, sad "
             "sessions) within this, on two folds of speakers (chosen on one, scored on the other) and on all"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Minute-long sessions of one speaker in one emotion through the real daemon: share alerted, time to the first
    alert, window anger index, false alerts per hour; by emotion, speaker sex and corpus."""
    import shlex

    from appliance.tools.evaluation import stderr_progress
    from appliance.tools.session_eval import as_json, evaluate_sessions, markdown, plot, summarise
    from appliance.tools.video_eval import quiet_pipeline_logs

    cfg = _load(config)
    if not cfg.alerts_enabled:
        raise UserError("alerts are off in this config (kiosk profile, customer-experience purpose): nothing to "
                        "measure")
    _setup_logging("WARNING")
    quiet_pipeline_logs()
    results = evaluate_sessions(directory, cfg, _filters(where), video, seconds, seed,
                                progress=stderr_progress("playing sessions"), trace=choose_thresholds is not None)
    summary = summarise(results)
    if choose_thresholds is not None:
        from appliance.tools.thresholds import cross_fit

        summary["thresholds"] = cross_fit(results, cfg.alerts, choose_thresholds)
    meta = {"command": "appliance eval sessions " + shlex.join(sys.argv[3:]), "sessions": len(results),
            "hours": sum(r.seconds for r in results) / 3600, "on_threshold": cfg.alerts.on_threshold,
            "off_threshold": cfg.alerts.off_threshold, "alert_window_s": cfg.alerts.window_s,
            "cooldown_s": cfg.alerts.cooldown_s,
            "models": f"{cfg.expression.model} + {cfg.voice.model}" if video else cfg.voice.model}
    text = markdown(summary, meta)
    print(text)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(as_json(results, summary, meta), indent=2) + "\n")
        json_out.with_suffix(".md").write_text(text)
        print(f"wrote {json_out}, {json_out.with_suffix('.md')}, {plot(results, json_out.with_suffix('.png'))}")


def _write_outputs(data: dict, json_out: Optional[Path], report, png: Optional[Path]) -> None:
    """An eval command's JSON (where asked) and confusion matrix PNG (where asked)."""
    from appliance.tools.evaluation import confusion_png

    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {json_out}")
    if png:
        print(f"wrote {confusion_png(report, png)}")


def _model_manifest(name: str, cfg: AppConfig):
    from appliance.manifest import load_manifest

    path = Path(name)
    folder = path.parent if path.suffix == ".onnx" else (path if path.is_dir() else cfg.models.dir / "onnx" / name)
    manifest = load_manifest(folder)
    if path.suffix == ".onnx":
        # A specific file: evaluate exactly that variant.
        chosen = next((v for v in manifest.variants if v.file == path.name), None)
        if chosen is None:
            raise UserError(f"{name} is not listed in {folder}/manifest.json")
        cfg.runtime.precision = chosen.precision
    return manifest


# ------------------------------------------------------------------------------------------------ models
def _engine_manifests(cfg: AppConfig):
    # The VAD is tiny and stateful (one 32 ms chunk per call): it stays on the CPU everywhere, so no engine.
    from appliance.manifest import load_manifest

    return [load_manifest(cfg.models.dir / "onnx" / cfg.expression.model),
            load_manifest(cfg.models.dir / "onnx" / cfg.voice.model)]


@models_app.command("list")
def models_list(config: Optional[Path] = ConfigOpt) -> None:
    """Every shipped model: files, sha256 check, measured accuracy, and what this unit's runtime picks."""
    from appliance.tools.doctor import check_models
    from appliance.manifest import load_manifest
    from appliance.runtime import open_session

    cfg = _load(config)
    _setup_logging("WARNING")
    for check in check_models(cfg):
        print(check.line())
    from appliance.perception import vad

    for manifest, runtime in [(m, cfg.runtime) for m in _engine_manifests(cfg)] + [
            (load_manifest(cfg.models.dir / "onnx" / cfg.voice.vad_model), vad.RUNTIME)]:
        _, report = open_session(manifest, runtime)
        print(f"       {manifest.name}: runtime picks {report.provider} {report.precision} ({report.file})")


@models_app.command("build-engines")
def models_build_engines(config: Optional[Path] = ConfigOpt) -> None:
    """Build (warm) the TensorRT engine cache for every model at the configured precision, before first start."""
    import time

    import numpy as np

    from appliance.runtime import NoUsableProvider, _available_providers, open_session

    cfg = _load(config)
    _setup_logging("WARNING")
    available = _available_providers()
    if "TensorrtExecutionProvider" not in available:
        raise UserError("TensorRT is not available here: this onnxruntime offers "
                        f"{', '.join(available)}. On a Jetson, deploy/jetson/install.sh installs the onnxruntime-gpu "
                        "build for JetPack, whose TensorRT execution provider builds the engines; nothing to build "
                        "on a CPU-only machine.")
    trt_only = cfg.runtime.model_copy(update={"providers": ["tensorrt"]})
    manifests = _engine_manifests(cfg)
    for i, manifest in enumerate(manifests, 1):
        print(f"[{i}/{len(manifests)}] {manifest.name}: building TensorRT engine (minutes on first build)...",
              flush=True)
        t0 = time.monotonic()
        try:
            session, report = open_session(manifest, trt_only)
        except NoUsableProvider as e:
            raise UserError(f"{manifest.name}: TensorRT could not take it: {e}") from None
        item = session.get_inputs()[0]
        shape = manifest.input_shape or [d if isinstance(d, int) else 1 for d in item.shape[1:]]
        for batch in sorted({1, min(8, cfg.runtime.trt_max_batch), cfg.runtime.trt_max_batch}):
            session.run(None, {item.name: np.zeros((batch, *shape), np.float32)})
        cache = [p[1]["trt_engine_cache_path"] for p in session.get_provider_options().items()
                 if p[0] == "TensorrtExecutionProvider"] if hasattr(session, "get_provider_options") else []
        print(f"      {report.provider} {report.precision} ready in {time.monotonic() - t0:.0f} s"
              + (f" -> {cache[0]}" if cache else ""), flush=True)


# ------------------------------------------------------------------------------------------------ doctor
@app.command()
def doctor(config: Optional[Path] = ConfigOpt) -> None:
    """Check camera, microphone, models, providers, engine cache, broker, disk and clock; exit 1 on any failure."""
    from appliance.tools.doctor import run_checks

    cfg = _load(config)
    _setup_logging("ERROR")
    checks = run_checks(cfg)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed" + (f"; {len(failed)} failed" if failed
                                                                             else ""))
    if failed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ watch
@app.command()
def watch(
    config: Optional[Path] = ConfigOpt,
    broker: Optional[str] = typer.Option(None, "--broker", help="mqtt(s)://HOST:PORT (default: mqtt.broker of "
                                         "the config, else mqtt://127.0.0.1:1883)"),
    username: Optional[str] = typer.Option(None, "--username", help="dashboard user (password: "
                                           "APPLIANCE_MQTT_PASSWORD or --password-file)"),
    password_file: Optional[Path] = typer.Option(None, "--password-file", help="file holding the password"),
    seconds: Optional[float] = typer.Option(None, "--seconds", min=0.5, help="collect this long, print the "
                                            "table once and exit (default: live until Ctrl-C)"),
    json_out: bool = typer.Option(False, "--json", help="with --seconds: one JSON object per unit instead"),
) -> None:
    """Live table of every unit on the broker: status, last summary, anger index, alerts, stats, outbox depth."""
    from appliance.config import parse_broker_url
    from appliance.publish.mqtt import check_setup, tool_client
    from appliance.tools.watch import FleetView

    overrides = {"mqtt.broker": broker, "mqtt.username": username, "mqtt.password_file": password_file}
    cfg = _load(config, **overrides)
    _setup_logging("WARNING")
    url = cfg.mqtt.broker or "mqtt://127.0.0.1:1883"
    addr = parse_broker_url(url)
    check_setup(cfg.mqtt, addr)
    view = FleetView(cfg.mqtt.topic_prefix)
    lock = threading.Lock()
    client = tool_client(cfg.mqtt, addr, f"appliance-watch-{os.getpid()}")
    connected = threading.Event()

    def on_connect(c, userdata, flags, reason, props) -> None:
        if reason.is_failure:
            print(f"broker refused the connection: {reason}", file=sys.stderr, flush=True)
            return
        connected.set()
        for topic in view.subscriptions():
            c.subscribe(topic, qos=1)

    def on_message(c, userdata, message) -> None:
        with lock:
            view.update(message.topic, message.payload)

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(addr.host, addr.port, keepalive=30)
    except OSError as e:
        from appliance.publish.mqtt import describe_connect_error

        raise UserError(describe_connect_error(e, addr, cfg.mqtt)) from None
    client.loop_start()
    print(f"watching {url} ({', '.join(view.subscriptions())})", file=sys.stderr, flush=True)
    live = seconds is None and sys.stdout.isatty()
    try:
        if seconds is not None:
            time.sleep(seconds)
            if not connected.is_set():
                raise UserError(f"no MQTT connection to {url} within {seconds:g} s")
            with lock:
                print(json.dumps([u.as_dict() for u in view.units.values()], indent=1) if json_out
                      else view.render(), flush=True)
            return
        while True:
            with lock:
                table = view.render()
            stamp = datetime.now().strftime("%H:%M:%S")
            # A terminal gets a table redrawn in place every second; a log or pipe one every 10 s.
            print(("\x1b[H\x1b[J" if live else "") + f"{stamp}  {url}\n{table}\n", flush=True)
            time.sleep(1 if live else 10)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()


# ------------------------------------------------------------------------------------------------ privacy
@app.command()
def notice(config: Optional[Path] = ConfigOpt) -> None:
    """Print the signage text for this unit: what is measured, what is sent, retention, purpose, contact."""
    from appliance.tools.notice import notice_text

    print(notice_text(_load(config)))


zones_app = typer.Typer(no_args_is_help=True, help="Staff exclusion zones (never analysed).")
app.add_typer(zones_app, name="zones")


@zones_app.command("preview")
def zones_preview(
    out: Path = typer.Option(..., "--out", help="PNG to write"),
    config: Optional[Path] = ConfigOpt,
    video: Optional[str] = typer.Option(None, "--video", help="take the frame from this file"),
    camera: Optional[str] = typer.Option(None, "--camera", help="take the frame from this camera"),
    frame_index: int = typer.Option(30, "--frame", min=0, help="which frame of a file"),
) -> None:
    """Draw the exclusion zones and the faces that would be analysed on one frame, to check the zones."""
    import cv2

    from appliance.perception.faces import FaceDetector
    from appliance.perception.zones import ExclusionZones
    from appliance.daemon.assemble import face_detector_path
    from appliance.sources.camera import _default_capture, resolve_spec

    cfg = _load(config, **{"camera.source": video or camera})
    _setup_logging("WARNING")
    spec = resolve_spec(cfg.camera.source, cfg.camera)
    cap = _default_capture(spec)
    if spec.kind == "file":
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame_index)
    ok, frame = cap.read() if cap.isOpened() else (False, None)
    cap.release()
    if not ok:
        raise UserError(f"could not read a frame from {spec.describe()}")
    zones = ExclusionZones(cfg.privacy.exclusion_zones)
    with FaceDetector(face_detector_path(cfg), cfg.faces.score_threshold, cfg.faces.max_faces,
                      cfg.faces.min_face_px, cfg.faces.tiles) as detector:
        boxes = zones.drop(detector.detect(zones.apply(frame)).boxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), zones.preview(frame, boxes))
    print(f"wrote {out}: {len(cfg.privacy.exclusion_zones)} zones, {len(boxes)} faces would be analysed")


@app.command()
def audit(config: Optional[Path] = ConfigOpt, tail: int = typer.Option(20, "--tail", help="lines to show")) -> None:
    """Show the local audit log and check that its hash chain is intact (exit 1 if not)."""
    from appliance.host.audit import verify

    cfg = _load(config)
    path = Path(cfg.state.dir).expanduser() / "audit.log"
    if not path.exists():
        raise UserError(f"no audit log at {path} yet (written from the first `appliance run`)")
    for line in path.read_text().splitlines()[-tail:]:
        print(line)
    intact, n, what = verify(path)
    print(f"\n{path}: {n} entries, {what}")
    if not intact:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ entry
@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    from appliance.tools.evaluation import DatasetError
    from appliance.manifest import ModelFileError
    from appliance.runtime import NoUsableProvider
    from appliance.publish.mqtt import MqttSetupError
    from appliance.publish.outbox import OutboxError
    from appliance.sources.camera import SourceError
    from appliance.host.statedir import StateDirError

    try:
        # Without standalone mode click returns (not raises) the code of typer.Exit; pass it on.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except ConfigError as e:
        print("config error:", file=sys.stderr)
        for issue in e.issues:
            print(f"  {issue}", file=sys.stderr)
        sys.exit(2)
    except (UserError, SourceError, ModelFileError, NoUsableProvider, DatasetError, FileNotFoundError, MqttSetupError,
            OutboxError, StateDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:
        # Usage errors (unknown command or option) carry their own message and exit code. typer vendors click,
        # so the class is matched by what it offers rather than by import.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
