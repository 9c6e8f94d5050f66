"""GStreamer capture pipelines for Jetson cameras, with the conversion done by the hardware (nvvidconv / NVMM).

``camera.source`` may name them directly: ``csi:0`` (sensor 0 through nvarguscamerasrc) or ``usb:/dev/video0``
(V4L2; MJPEG decoded by the hardware JPEG decoder). The strings are what JetPack's OpenCV (built with GStreamer)
opens with ``cv2.CAP_GSTREAMER``; pip's OpenCV has no GStreamer and the camera source says so at start.
"""

from __future__ import annotations

from dataclasses import dataclass

APPSINK = "appsink drop=true max-buffers=1 sync=false"


@dataclass(frozen=True)
class CaptureFormat:
    width: int = 1280
    height: int = 720
    fps: int = 30
    flip: int = 0          # nvvidconv flip-method: 0 none, 2 rotate 180 (camera mounted upside down)


def csi_pipeline(sensor_id: int = 0, fmt: CaptureFormat = CaptureFormat()) -> str:
    """Argus CSI camera -> NVMM NV12 -> hardware conversion to BGRx -> BGR for OpenCV."""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM),width={fmt.width},height={fmt.height},framerate={fmt.fps}/1,format=NV12 ! "
            f"nvvidconv flip-method={fmt.flip} ! video/x-raw,format=BGRx ! "
            f"videoconvert ! video/x-raw,format=BGR ! {APPSINK}")


def usb_pipeline(device: str = "/dev/video0", fmt: CaptureFormat = CaptureFormat(), mjpeg: bool = True) -> str:
    """UVC camera. MJPEG (what most USB cameras deliver at 720p30) is decoded by the hardware JPEG decoder."""
    caps = f"width={fmt.width},height={fmt.height},framerate={fmt.fps}/1"
    decode = (f"image/jpeg,{caps} ! nvv4l2decoder mjpeg=1 ! " if mjpeg
              else f"video/x-raw,{caps} ! ")
    return (f"v4l2src device={device} io-mode=2 ! {decode}"
            f"nvvidconv flip-method={fmt.flip} ! video/x-raw,format=BGRx ! "
            f"videoconvert ! video/x-raw,format=BGR ! {APPSINK}")


def expand(source: str, fmt: CaptureFormat = CaptureFormat()) -> str:
    """``csi:N`` / ``usb:DEVICE`` / ``usb-raw:DEVICE`` -> a pipeline string; anything else unchanged."""
    kind, sep, arg = source.partition(":")
    if not sep:
        return source
    if kind == "csi":
        if not arg.isdigit():
            raise ValueError(f"camera.source {source!r}: csi:N takes a sensor number, e.g. csi:0")
        return csi_pipeline(int(arg), fmt)
    if kind in ("usb", "usb-raw"):
        device = arg if arg.startswith("/dev/") else f"/dev/video{arg}"
        return usb_pipeline(device, fmt, mjpeg=kind == "usb")
    return source
