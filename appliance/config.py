"""Configuration: one pydantic model per component, gathered in one root.

Layers, later wins: built-in defaults < TOML file < ``APPLIANCE_*`` environment < CLI flags.
Environment keys use ``__`` between levels: ``APPLIANCE_MQTT__BROKER=mqtt://10.0.0.5:1883``.
Unknown keys and bad values are errors that name the dotted path of the key and where it came from.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "APPLIANCE_"
# Environment variables with the prefix that are not config keys.
ENV_NOT_KEYS = {"APPLIANCE_CONFIG", "APPLIANCE_MQTT_PASSWORD"}

PACKAGE_DIR = Path(__file__).resolve().parent
DEMO_VIDEO = PACKAGE_DIR / "demo" / "short_hamilton_clip.mp4"
EXAMPLE_CONFIG = PACKAGE_DIR / "config.example.toml"


def default_models_dir() -> Path:
    # A source checkout (and the Jetson install, which installs from one) keeps models/ beside the package.
    return PACKAGE_DIR.parent / "models"


class Section(BaseModel):
    # coerce_numbers_to_str: APPLIANCE_CAMERA__SOURCE=0 (a device index) arrives as the number 0.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


# Deployment profiles fix the privacy floor: the minimum number of distinct faces a window needs before its
# distribution may leave the device.
PROFILE_MIN_K = {"kiosk": 1, "store-camera": 3}


class DeviceConfig(Section):
    id: str = Field(default="kiosk-demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                    description="unique per unit; used in MQTT topics and the client id")
    profile: Literal["kiosk", "store-camera"] = "kiosk"


class CameraConfig(Section):
    source: str = Field(default="demo", description="'demo', a file path, a device index, /dev/videoN, "
                        "an rtsp:// URL or a GStreamer pipeline (contains '!')")
    loop: bool | None = Field(default=None, description="replay a file at its end; default: only for the demo")
    realtime: bool = Field(default=True, description="pace files at their own fps (false: as fast as decoded)")
    buffer_frames: int = Field(default=2, ge=1, le=64)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    stall_timeout_s: float = Field(default=5.0, gt=0, description="an open camera with no frame for this long is reported as stalled")
    width: int = Field(default=1280, ge=160, description="capture size for csi:/usb: GStreamer sources")
    height: int = Field(default=720, ge=120)
    fps: int = Field(default=30, ge=1, le=120)
    flip: int = Field(default=0, ge=0, le=7, description="nvvidconv flip-method (2 = camera mounted upside down)")


class AudioConfig(Section):
    source: str = Field(default="auto", description="'auto' (the demo's soundtrack when the camera is the demo, "
                        "else none), 'none', 'mic' (default input), 'mic:NAME' (name substring or index), or a "
                        "WAV/FLAC file")
    loop: bool | None = Field(default=None, description="replay a file at its end; default: as the camera does")
    realtime: bool = True
    ring_seconds: float = Field(default=4.0, ge=1.0, le=60.0)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)


class FacesConfig(Section):
    model: str = Field(default="blazeface_short_range", description="the face detector: a model folder under "
                       "models.dir/tflite")
    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_faces: int = Field(default=8, ge=1, le=64)
    min_face_px: int = Field(default=40, ge=8, description="smaller faces are ignored (too few pixels to read)")
    tiles: int = Field(default=1, ge=1, le=4, description="1: whole frame; N: also an NxN grid of overlapping "
                       "tiles, for small faces far from the camera (store-camera); costs N*N+1 detector runs")
    margin: float | None = Field(default=None, ge=0.0, le=1.0, description="crop margin around the box, per side; "
                                 "default: the expression model's own (its manifest's crop_margin, measured for it)")


class ExpressionConfig(Section):
    model: str = Field(default="ferplus_cnn", description="a model folder under models.dir/onnx: "
                       "ferplus_cnn (FER+ crowd labels, calibrated) or fer_mini_xception (the earlier one)")


class VoiceConfig(Section):
    model: str = Field(default="voice_tone_cnn", description="a model folder under models.dir/onnx")
    vad_model: str = Field(default="silero_vad")
    vad_threshold: float = Field(default=0.5, gt=0, lt=1)
    step_s: float = Field(default=1.0, ge=0.25, le=5.0, description="run the tone model on each this much new speech")
    min_speech_s: float = Field(default=1.0, ge=0.0, description="a window needs this much speech for a voice section")


class AlertsConfig(Section):
    enabled: bool | None = Field(default=None, description="default: on for the kiosk profile only; the "
                                 "store-camera profile cannot have alerts (one person's escalation is not aggregate)")
    window_s: float = Field(default=5.0, ge=1.0, le=60.0, description="the short window the anger index is taken over")
    # Chosen by `appliance eval sessions --choose-thresholds 1` on the voice model's validation speakers (README
    # 'Anger index and alerts'): at most 1 false alert per hour of calm speech, the most angry sessions alerted.
    on_threshold: float = Field(default=0.59, gt=0, le=1)
    off_threshold: float = Field(default=0.44, ge=0, lt=1, description="re-arms below this (hysteresis)")
    cooldown_s: float = Field(default=60.0, ge=0, description="no second alert within this time of the first")
    min_evidence_s: float = Field(default=2.0, ge=0, description="seconds of face or speech the short window needs")


class ModelsConfig(Section):
    dir: Path = Field(default_factory=default_models_dir)


class RuntimeConfig(Section):
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(
        default_factory=lambda: ["tensorrt", "cuda", "cpu"], min_length=1,
        description="preference order; only those that are available are tried")
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    engine_cache_dir: Path = Field(default=Path("~/.cache/appliance/trt-engines"))
    trt_max_batch: int = Field(default=16, ge=1, description="largest batch TensorRT engines are built for")
    intra_op_threads: int = Field(default=1, ge=0, description="0 = ONNX Runtime's default")


class LoopConfig(Section):
    rate_hz: float = Field(default=10.0, gt=0, le=120)
    cpu_wakeup_latency_us: int | None = Field(
        default=None, ge=0, le=1_000_000,
        description="while running, keep CPUs out of idle states slower than this to wake (us; 0 = poll, the "
                    "steadiest tick times, more power); unset = the kernel's choice")


class AggregateConfig(Section):
    window_s: float = Field(default=10.0, ge=1.0, le=3600)
    min_observed_s: float = Field(default=2.0, ge=0.0,
                                  description="a window needs faces in at least this many seconds of ticks")
    k_min: int | None = Field(default=None, ge=1,
                              description="distinct faces a window needs; default and floor come from the profile")
    track_max_age_s: float = Field(default=1.0, gt=0, description="a face unseen this long is a new face")
    track_iou: float = Field(default=0.3, gt=0, lt=1)

    @model_validator(mode="after")
    def _observable(self) -> "AggregateConfig":
        if self.min_observed_s > self.window_s:
            raise ValueError(f"min_observed_s ({self.min_observed_s:g}) is longer than window_s "
                             f"({self.window_s:g}): no window could ever carry face figures")
        return self


class TlsConfig(Section):
    ca_file: Path | None = Field(default=None, description="CA bundle that signed the broker's certificate; unset: "
                                 "the system's trust store")
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="client private key (mutual TLS)")
    insecure: bool = Field(default=False, description="skip the host name check (testing only; never in a store)")

    @model_validator(mode="after")
    def _pair(self) -> "TlsConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mqtt.tls.key_file: cert_file and key_file go together (mutual TLS needs both)")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is not None and not Path(path).expanduser().is_file():
                raise ValueError(f"mqtt.tls.{key}: {path} is not a readable file")
        return self


class HomeAssistantConfig(Section):
    enabled: bool = Field(default=False, description="publish Home Assistant MQTT discovery (retained)")
    prefix: str = Field(default="homeassistant", pattern=r"^[^#+/][^#+]*$")


class MqttConfig(Section):
    broker: str | None = Field(default=None, description="mqtt://host:port or mqtts://host:port (TLS); unset: start "
                               "an embedded broker")
    topic_prefix: str = Field(default="emotion", pattern=r"^[^#+]+$")
    qos: Literal[1, 2] = Field(default=1, description="events are never sent at QoS 0: the outbox needs the ack")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto", description="auto: MQTT 5, falling back to 3.1.1 when the broker refuses 5")
    client_id: str | None = Field(default=None, description="default: appliance-<device.id>")
    username: str | None = Field(default=None, description="default: none (anonymous)")
    password_file: Path | None = Field(
        default=None, description="file holding the password (mode 0600); or set APPLIANCE_MQTT_PASSWORD. Never "
        "on the command line, where any user could read it in the process list")
    tls: TlsConfig = Field(default_factory=TlsConfig)
    keepalive_s: int = Field(default=30, ge=5)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0, description="backoff cap; each wait is jittered to 50-100%")
    inflight: int = Field(default=20, ge=1, le=1000, description="events sent and not yet acknowledged")
    stats_interval_s: float = Field(default=60.0, ge=1, description="how often the stats event is published")
    embedded_port: int = Field(default=1883, ge=0, le=65535, description="0 = any free port")
    home_assistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        parse_broker_url(v)
        return v

    @model_validator(mode="after")
    def _backoff(self) -> "MqttConfig":
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("mqtt.reconnect_max_s: must not be below mqtt.reconnect_min_s")
        return self

    def password(self) -> str | None:
        """The broker password: the file first, then APPLIANCE_MQTT_PASSWORD; read when connecting, never stored."""
        if self.password_file is not None:
            path = Path(self.password_file).expanduser()
            try:
                return path.read_text().rstrip("\r\n")
            except OSError as e:
                raise ValueError(f"mqtt.password_file: cannot read {path}: {e.strerror}") from None
        return os.environ.get("APPLIANCE_MQTT_PASSWORD")


class OutboxConfig(Section):
    max_age_h: float = Field(default=168.0, gt=0, description="events older than this are dropped (counted): a "
                             "week-old window no longer helps a store")
    max_mb: float = Field(default=64.0, gt=0, description="payload bytes kept on disk at most")
    max_events: int = Field(default=200_000, ge=1, description="events kept at most")
    sync: Literal["full", "normal"] = Field(
        default="full", description="full: each event is on disk before the loop goes on (survives power loss); "
        "normal: survives a crash of the daemon, not of the machine")


class StateConfig(Section):
    dir: Path = Field(default=Path("~/.local/state/appliance"), description="persistent device state (outbox with "
                      "seq, audit log, pause file)")


def is_live_camera(source: str) -> bool:
    """A camera that looks at people now (device, stream, pipeline), as opposed to a recorded file."""
    source = source.strip()
    return (source.isdigit() or "!" in source or "://" in source or source.startswith("/dev/")
            or source.split(":", 1)[0] in ("csi", "usb", "usb-raw"))


# EU member states (ISO 3166-1 alpha-2): the EU AI Act applies in each of them.
EU_MEMBERS = {"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT",
              "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"}
Purpose = Literal["customer-experience", "market-research", "workplace", "education"]


class PrivacyConfig(Section):
    purpose: Purpose | None = Field(default=None, description="required for any camera but the bundled demo")
    jurisdiction: str | None = Field(default=None, description="'EU', an ISO 3166-1 alpha-2 country code, or 'other'")
    controller: str = Field(default="", description="who runs the unit, for the notice")
    contact: str = Field(default="", description="where people ask or object, for the notice")
    exclusion_zones: list[list[tuple[float, float]]] = Field(
        default_factory=list, description="polygons in camera pixels (e.g. behind the counter), masked before "
        "face detection: no face there is ever analysed")
    pause_file: Path | None = Field(default=None, description="while this file exists the unit is paused; "
                                    "default: <state.dir>/paused (a GPIO button can create and remove it)")

    @field_validator("jurisdiction")
    @classmethod
    def _jurisdiction(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if v in ("EU", "other") or re.fullmatch(r"[A-Z]{2}", v):
            return v
        raise ValueError(f"{v!r} is not 'EU', 'other' or an ISO 3166-1 alpha-2 code (e.g. 'DE', 'US')")

    @field_validator("exclusion_zones")
    @classmethod
    def _polygons(cls, zones: list) -> list:
        for i, zone in enumerate(zones):
            if len(zone) < 3:
                raise ValueError(f"zone {i} has {len(zone)} points; a polygon needs at least 3")
        return zones

    @property
    def in_eu(self) -> bool:
        return self.jurisdiction == "EU" or self.jurisdiction in EU_MEMBERS


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AppConfig(Section):
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    faces: FacesConfig = Field(default_factory=FacesConfig)
    expression: ExpressionConfig = Field(default_factory=ExpressionConfig)
    voice: VoiceConfig = Field(default_factory=VoiceConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    aggregate: AggregateConfig = Field(default_factory=AggregateConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _privacy_floor(self) -> "AppConfig":
        if is_live_camera(self.camera.source):
            for key in ("purpose", "jurisdiction"):
                if getattr(self.privacy, key) is None:
                    raise ValueError(f"privacy.{key}: required for a live camera (recordings such as the demo run "
                                     "without); see `appliance notice` and the README's Privacy section")
        if self.privacy.purpose in ("workplace", "education") and self.privacy.in_eu:
            raise ValueError(
                f"privacy.purpose: '{self.privacy.purpose}' is prohibited in {self.privacy.jurisdiction}: the EU AI "
                "Act, Art. 5(1)(f), forbids emotion recognition in the workplace and in education institutions "
                "(except for medical or safety reasons, which this product does not serve)")
        floor = PROFILE_MIN_K[self.device.profile]
        if self.aggregate.k_min is not None and self.aggregate.k_min < floor:
            # Cross-field errors start with the key's dotted path so the error report can name it.
            raise ValueError(
                f"aggregate.k_min: {self.aggregate.k_min} is below the '{self.device.profile}' profile's floor "
                f"of {floor} distinct faces")
        if self.alerts.enabled and (self.device.profile != "kiosk" or self.purpose != "customer-experience"):
            raise ValueError("alerts.enabled: alerts exist only in the kiosk profile with purpose "
                             "customer-experience (an alert is about one customer's escalation, for staff to help; a "
                             "crowd profile or a research purpose must not single anyone out)")
        if self.alerts.off_threshold >= self.alerts.on_threshold:
            raise ValueError("alerts.off_threshold: must be below alerts.on_threshold (hysteresis)")
        if self.aggregate.window_s * self.loop.rate_hz < 1:
            raise ValueError("aggregate.window_s: shorter than one loop tick")
        return self

    @property
    def purpose(self) -> str:
        # The bundled demo is a customer-experience kiosk; every real camera must say its purpose.
        return self.privacy.purpose or "customer-experience"

    @property
    def alerts_enabled(self) -> bool:
        return (self.device.profile == "kiosk" and self.purpose == "customer-experience"
                and self.alerts.enabled is not False)

    @property
    def pause_file(self) -> Path:
        return Path(self.privacy.pause_file or Path(self.state.dir) / "paused").expanduser()

    @property
    def k_min(self) -> int:
        floor = PROFILE_MIN_K[self.device.profile]
        return max(self.aggregate.k_min or floor, floor)


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str
    source: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} (from {self.source})"


class ConfigError(Exception):
    """Invalid configuration; ``issues`` name each bad key by its dotted path."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker URL scheme must be mqtt:// or mqtts://, got {parts.scheme}://")
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host")
    if parts.username or parts.password:
        raise ValueError("broker URL must not carry credentials (they would show in the process list and logs): "
                         "set mqtt.username and mqtt.password_file, or APPLIANCE_MQTT_PASSWORD")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"broker URL {url!r}: {e}") from None
    tls = parts.scheme in ("mqtts", "ssl")
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883), tls)


def _set_path(tree: dict, path: list[str], value: Any, origins: dict, origin: str) -> None:
    node = tree
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value
    origins[".".join(path)] = origin


def _walk(tree: Mapping, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out += _walk(value, prefix + (key,))
        else:
            out.append((prefix + (key,), value))
    return out


def _env_value(raw: str) -> Any:
    # JSON first so lists, numbers and booleans work (APPLIANCE_RUNTIME__PROVIDERS='["cpu"]'); else the string.
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> AppConfig:
    """Build the root config from file, environment and CLI overrides (dotted keys), naming any bad key."""
    env = os.environ if env is None else env
    tree: dict = {}
    origins: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError([ConfigIssue("(file)", f"config file {path} is a folder; give the file in it "
                                           "(e.g. config.toml)", str(path))])
        if not path.is_file():
            raise ConfigError([ConfigIssue("(file)", f"config file {path} does not exist", str(path))])
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError([ConfigIssue("(file)", f"not valid TOML: {e}", str(path))]) from None
        except OSError as e:
            raise ConfigError([ConfigIssue("(file)", f"config file {path} cannot be read ({e.strerror}): check its "
                                           "owner and permissions (the service runs as its own user)",
                                           str(path))]) from None
        for keys, value in _walk(data):
            _set_path(tree, list(keys), value, origins, str(path))
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name not in ENV_NOT_KEYS:
            keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__")]
            _set_path(tree, keys, _env_value(raw), origins, f"env {name}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, dotted.split("."), value, origins, "command line")
    try:
        return AppConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_issues(e, origins)) from None


def _origin_of(loc: list[str], origins: dict[str, str]) -> str:
    """Where a key came from: its own record, else the nearest recorded parent (list items), else a child
    (a whole unknown section)."""
    for i in range(len(loc), 0, -1):
        if ".".join(loc[:i]) in origins:
            return origins[".".join(loc[:i])]
    for i in range(len(loc), 0, -1):   # a cross-field error: a sibling key that was set
        prefix = ".".join(loc[:i]) + "."
        source = next((src for key, src in origins.items() if key.startswith(prefix)), None)
        if source:
            return source
    return "defaults"


def _issues(error: ValidationError, origins: dict[str, str]) -> list[ConfigIssue]:
    issues = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        message = err["msg"].removeprefix("Value error, ")
        cross_field = re.match(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", message)
        if cross_field and cross_field.group(1).startswith(".".join(loc)):
            loc, message = cross_field.group(1).split("."), cross_field.group(2)
        # List items report their index; the origin is recorded for the list's key.
        dotted = ".".join(loc) or "(root)"
        origin = _origin_of(loc, origins)
        if err["type"] == "extra_forbidden":
            message = "unknown key"
            if dotted == "mqtt.password":
                message += "; a password goes in the file named by mqtt.password_file, or in APPLIANCE_MQTT_PASSWORD"
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            message += f" (got {err['input']!r})"
        issues.append(ConfigIssue(dotted, message, origin))
    return issues


def to_toml(config: AppConfig) -> str:
    """Render a config as TOML (tables of scalars and lists, nested tables such as [mqtt.tls] after their parent)."""
    lines: list[str] = []

    def table(name: str, values: dict) -> None:
        lines.append(f"[{name}]")
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        for key, value in values.items():
            if key in nested:
                continue
            lines.append(f"# {key} = (unset)" if value is None else f"{key} = {json.dumps(value)}")
        lines.append("")
        for key, value in nested.items():
            table(f"{name}.{key}", value)

    for section, values in config.model_dump(mode="json").items():
        table(section, values)
    return "\n".join(lines)
