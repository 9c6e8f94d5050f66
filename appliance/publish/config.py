"""Config of publishing: ``[mqtt]`` (with ``[mqtt.tls]``, ``[mqtt.home_assistant]``) and ``[outbox]``, and the
broker URL they name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from appliance.section import FilePath, Section


# MQTT strings carry a 16-bit length; a 5 message expiry is a 32-bit count of seconds.
MQTT_STRING_MAX = 65535
MAX_AGE_H = (2**32 - 1) // 3600


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


class TlsConfig(Section):
    ca_file: FilePath | None = Field(default=None, description="CA bundle that signed the broker's certificate; unset: "
                                 "the system's trust store")
    cert_file: FilePath | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: FilePath | None = Field(default=None, description="client private key (mutual TLS)")
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
    topic_prefix: str = Field(default="emotion", pattern=r"^[^#+\x00-\x1f]+$", max_length=1000)
    qos: Literal[1, 2] = Field(default=1, description="events are never sent at QoS 0: the outbox needs the ack")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto", description="auto: MQTT 5, falling back to 3.1.1 when the broker refuses 5")
    client_id: str | None = Field(default=None, description="default: appliance-<device.id>; at most 65535 bytes "
                                   "(MQTT); some MQTT 3.1.1 brokers take only 1-23 letters and digits")
    username: str | None = Field(default=None, description="default: none (anonymous)")
    password_file: FilePath | None = Field(
        default=None, description="file holding the password (mode 0600); or set APPLIANCE_MQTT_PASSWORD. Never "
        "on the command line, where any user could read it in the process list")
    tls: TlsConfig = Field(default_factory=TlsConfig)
    keepalive_s: int = Field(default=30, ge=5, le=65535, description="MQTT carries it in 16 bits; a delivery that "
                             "waits for acknowledgements longer than 2 keepalives is reported as stalled")
    reconnect_min_s: float = Field(default=1.0, gt=0, le=3600)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600, description="backoff cap; each wait is jittered to 50-100%")
    inflight: int = Field(default=20, ge=1, le=1000, description="events sent and not yet acknowledged")
    stats_interval_s: float = Field(default=60.0, ge=1, le=86400, description="how often the stats event is published")
    embedded_port: int = Field(default=1883, ge=0, le=65535, description="0 = any free port")
    home_assistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        parse_broker_url(v)
        return v

    @field_validator("client_id", "username")
    @classmethod
    def _mqtt_string(cls, v: str | None, info) -> str | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must not be empty (leave the key out for the default)")
        if len(v.encode("utf-8")) > MQTT_STRING_MAX:
            raise ValueError(f"{len(v.encode('utf-8'))} bytes; MQTT carries at most {MQTT_STRING_MAX}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in v):
            raise ValueError("holds a control character, which MQTT does not allow in a string")
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
    max_age_h: float = Field(default=168.0, gt=0, le=MAX_AGE_H, description="events older than this are dropped "
                             "(counted): a week-old window no longer helps a store. At most 2^32-1 s, the longest "
                             "MQTT 5 message expiry")
    max_mb: float = Field(default=64.0, gt=0, le=1_048_576, description="payload bytes kept on disk at most")
    max_events: int = Field(default=200_000, ge=1, le=1_000_000_000, description="events kept at most")
    sync: Literal["full", "normal"] = Field(
        default="full", description="full: each event is on disk before the loop goes on (survives power loss); "
        "normal: survives a crash of the daemon, not of the machine")
