"""``appliance zones preview``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from appliance.cli.app import zones_app
from appliance.cli.common import ConfigOpt, UserError, load, setup_logging


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

    from appliance.daemon.assemble import make_face_detector
    from appliance.perception.zones import ExclusionZones
    from appliance.sources.camera import read_frame, resolve_spec

    cfg = load(config, **{"camera.source": video or camera})
    setup_logging("WARNING")
    spec = resolve_spec(cfg.camera.source, cfg.camera)
    frame = read_frame(spec, frame_index)
    if frame is None:
        raise UserError(f"could not read a frame from {spec.describe()}")
    zones = ExclusionZones(cfg.privacy.exclusion_zones)
    with make_face_detector(cfg) as detector:
        boxes = zones.drop(detector.detect(zones.apply(frame)).boxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), zones.preview(frame, boxes))
    print(f"wrote {out}: {len(cfg.privacy.exclusion_zones)} zones, {len(boxes)} faces would be analysed")
