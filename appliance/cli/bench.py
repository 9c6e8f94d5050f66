"""``appliance bench`` and ``appliance compare``: this unit's timing report, and two reports side by side."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from appliance.cli.app import app
from appliance.host.memory import one_malloc_arena
from appliance.cli.common import ConfigOpt, UserError, filters, load, setup_logging


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
    from appliance.tools.bench_matrix import matrix
    from appliance.tools.bench_report import markdown, save

    if video and camera:
        raise UserError("give --video or --camera, not both")
    audio_source = audio or (("mic" if mic == "default" else f"mic:{mic}") if mic else None)
    cfg = load(config, **{"camera.source": video or camera, "audio.source": audio_source, "loop.rate_hz": rate,
                           "loop.cpu_wakeup_latency_us": wakeup_us, "mqtt.embedded_port": 0, "log.level": "WARNING"})
    setup_logging(cfg.log.level)
    one_malloc_arena()          # before the daemon's threads start (host/memory.py)
    desc = f"camera {cfg.camera.source}, audio {cfg.audio.source}"
    print(f"bench: {seconds:g} s of the real loop at {cfg.loop.rate_hz:g} Hz on {desc}", file=sys.stderr)
    result = b.header(cfg, desc) | b.run_loop(cfg, seconds, faces)
    if do_matrix:
        result["matrix"] = matrix(cfg)
    if faces_data or voice_data:
        result["accuracy"] = b.accuracy(cfg, faces_data, voice_data, filters(voice_where), json_out.parent)
    for path in save(result, json_out):
        print(f"wrote {path}", file=sys.stderr)
    print(markdown(result), end="")


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
