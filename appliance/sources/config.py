"""Config of the sources: ``[camera]`` and ``[audio]``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from appliance.section import Section

# The bundled demo recording (video, and its soundtrack beside it as .flac).
DEMO_VIDEO = Path(__file__).resolve().parents[1] / "demo" / "short_hamilton_clip.mp4"


class CameraConfig(Section):
    source: str = Field(default="demo", description="'demo', a file path, a device index, /dev/videoN, "
                        "an rtsp:// URL or a GStreamer pipeline (contains '!')")
    loop: bool | None = Field(default=None, description="replay a file at its end; default: only for the demo")
    realtime: bool = Field(default=True, description="pace files at their own fps (false: as fast as decoded)")
    buffer_frames: int = Field(default=2, ge=1, le=64)
    retry_initial_s: float = Field(default=0.5, gt=0, le=3600)
    retry_max_s: float = Field(default=30.0, gt=0, le=3600)
    stall_timeout_s: float = Field(default=5.0, gt=0, le=3600, description="an open camera with no frame for this long is reported as stalled")
    width: int = Field(default=1280, ge=160, le=8192, description="capture size for csi:/usb: GStreamer sources")
    height: int = Field(default=720, ge=120, le=8192)
    fps: int = Field(default=30, ge=1, le=120)
    flip: int = Field(default=0, ge=0, le=7, description="nvvidconv flip-method (2 = camera mounted upside down)")


class AudioConfig(Section):
    source: str = Field(default="auto", description="'auto' (the demo's soundtrack when the camera is the demo, "
                        "else none), 'none', 'mic' (default input), 'mic:NAME' (name substring or index), or a "
                        "WAV/FLAC file")
    loop: bool | None = Field(default=None, description="replay a file at its end; default: as the camera does")
    realtime: bool = True
    ring_seconds: float = Field(default=4.0, ge=1.0, le=60.0)
    retry_initial_s: float = Field(default=0.5, gt=0, le=3600)
    retry_max_s: float = Field(default=30.0, gt=0, le=3600)
