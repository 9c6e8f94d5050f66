"""Configuration: each component's pydantic section lives beside it; this root gathers them and loads them.

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

from pydantic import Field, ValidationError, model_validator

from appliance.daemon.loop import LoopConfig
from appliance.host.statedir import StateConfig
from appliance.perception.config import ExpressionConfig, FacesConfig, VoiceConfig
from appliance.privacy import DEMO_PURPOSE, PrivacyConfig, alerts_allowed, enforce, required_k
from appliance.publish.config import MqttConfig, OutboxConfig
from appliance.runtime import RuntimeConfig
from appliance.section import FilePath, Section
from appliance.sources.config import AudioConfig, CameraConfig
from appliance.windows.config import AggregateConfig, AlertsConfig

ENV_PREFIX = "APPLIANCE_"
# Environment variables with the prefix that are not config keys.
ENV_NOT_KEYS = {"APPLIANCE_CONFIG", "APPLIANCE_MQTT_PASSWORD"}

PACKAGE_DIR = Path(__file__).resolve().parent
EXAMPLE_CONFIG = PACKAGE_DIR / "config.example.toml"


def default_models_dir() -> Path:
    # A source checkout (and the Jetson install, which installs from one) keeps models/ beside the package.
    return PACKAGE_DIR.parent / "models"


class DeviceConfig(Section):
    id: str = Field(default="kiosk-demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                    description="unique per unit; used in MQTT topics and the client id")
    profile: Literal["kiosk", "store-camera"] = "kiosk"


class ModelsConfig(Section):
    dir: FilePath = Field(default_factory=default_models_dir)


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
    def _rules_across_sections(self) -> "AppConfig":
        # Cross-section errors start with the key's dotted path so the error report can name it.
        enforce(self.camera.source, self.privacy, self.device.profile, self.aggregate.k_min, self.alerts.enabled)
        if self.alerts.off_threshold >= self.alerts.on_threshold:
            raise ValueError("alerts.off_threshold: must be below alerts.on_threshold (hysteresis)")
        if self.aggregate.window_s * self.loop.rate_hz < 1:
            raise ValueError("aggregate.window_s: shorter than one loop tick")
        if self.faces.max_faces > self.runtime.trt_max_batch:
            raise ValueError(f"faces.max_faces: {self.faces.max_faces} is above runtime.trt_max_batch "
                             f"({self.runtime.trt_max_batch}), the largest batch a TensorRT engine is built for")
        return self

    @property
    def purpose(self) -> str:
        # The bundled demo is a customer-experience kiosk; every real camera must say its purpose.
        return self.privacy.purpose or DEMO_PURPOSE

    @property
    def alerts_enabled(self) -> bool:
        return alerts_allowed(self.device.profile, self.purpose) and self.alerts.enabled is not False

    @property
    def pause_file(self) -> Path:
        return Path(self.privacy.pause_file).expanduser() if self.privacy.pause_file else self.state.paused

    @property
    def k_min(self) -> int:
        return required_k(self.device.profile, self.aggregate.k_min)


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
            keys_values = _walk(data)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError([ConfigIssue("(file)", f"not valid TOML: {e}", str(path))]) from None
        except RecursionError:
            raise ConfigError([ConfigIssue("(file)", "values nested too deeply to read (hundreds of levels of "
                                           "arrays or tables): no setting is nested more than three levels; "
                                           "start from `appliance config init`", str(path))]) from None
        except OSError as e:
            raise ConfigError([ConfigIssue("(file)", f"config file {path} cannot be read ({e.strerror}): check its "
                                           "owner and permissions (the service runs as its own user)",
                                           str(path))]) from None
        for keys, value in keys_values:
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
    except RecursionError:    # a deeply nested value from the environment (JSON)
        raise ConfigError([ConfigIssue("(root)", "a value is nested too deeply to check", "environment")]) from None


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
            got = repr(err["input"])
            if len(got) > 80:     # a 70,000-character value must not become a 70,000-character error line
                got = f"{got[:60]}... ({len(str(err['input']))} characters)"
            message += f" (got {got})"
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
