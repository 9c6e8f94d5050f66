"""Edge emotion appliance: camera and microphone in, anonymised aggregated emotion events out over MQTT."""

import os as _os

__version__ = "0.1.0"

# Set before any third-party library loads, because they read these once at import:
# - ONNX Runtime 1.2x+ on Linux ships 1DS telemetry that writes a persistent device id and an offline event store
#   under ~/.cache/Microsoft and uploads process/model events. Nothing may leave this device: opt out fully.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# - mediapipe's vision package imports matplotlib, which writes a font cache; keep it with our other caches.
_os.environ.setdefault("MPLCONFIGDIR", _os.path.expanduser("~/.cache/appliance/matplotlib"))
# - numpy's OpenBLAS starts one thread per core for every matrix product. The daemon's products are tiny (log-mel:
#   197x257 @ 257x64) and its cores are busy with inference: waking those threads cost a mean 3.5 ms per log-mel
#   call with a p95 of 8.8 ms (benchmarks, 2 cores), against 1.0 ms single-threaded.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
