"""``appliance run``: the daemon in the foreground, one line per summary and alert."""

from __future__ import annotations

import json
import signal
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from appliance import __version__
from appliance.cli.app import app
from appliance.host.memory import one_malloc_arena
from appliance.cli.common import ConfigOpt, UserError, load, setup_logging


def summary_line(p: dict) -> str:
    start = datetime.fromisoformat(p["window_start"].replace("Z", "+00:00")).strftime("%H:%M:%S")
    end = datetime.fromisoformat(p["window_end"].replace("Z", "+00:00")).strftime("%H:%M:%S")
    head = f"summary seq={p['seq']} {start}-{end}"
    if p["suppressed"]:
        return f"{head}  suppressed ({p['suppressed_reason']})"
    parts = [head]
    if p["faces"]:
        f = p["faces"]
        parts.append(f"faces {f['observations']} obs/{f['distinct_faces']} distinct/{f['observed_seconds']:.1f} s: "
                     + top(f["distribution"]))
    if p["voice"]:
        parts.append(f"voice {p['voice']['speech_seconds']:.1f} s speech: " + top(p["voice"]["distribution"]))
    if p["anger_index"] is not None:
        parts.append(f"anger {p['anger_index']:.2f}")
    return "  |  ".join(parts)


def top(distribution: dict, n: int = 3) -> str:
    top = sorted(distribution.items(), key=lambda kv: kv[1], reverse=True)[:n]
    return " ".join(f"{label} {prob:.2f}" for label, prob in top)



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
    cfg = load(config, **overrides)
    setup_logging(cfg.log.level)
    one_malloc_arena()          # before the daemon's threads start (host/memory.py)
    from appliance.daemon.pipeline import Pipeline

    def show(payload: dict) -> None:
        print(json.dumps(payload) if json_lines else summary_line(payload), flush=True)

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

