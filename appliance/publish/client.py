"""Everything about an MQTT client short of running one: topics, TLS, credentials, backoff, the properties an
MQTT 5 message carries, and connection errors in words a technician can act on. Shared by the daemon's publisher
and the CLI tools."""

from __future__ import annotations

import logging
import random
import socket
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.publish.config import BrokerAddress, MqttConfig

log = logging.getLogger(__name__)


class Topics:
    def __init__(self, prefix: str, device_id: str):
        self.base = f"{prefix}/{device_id}"

    def __getattr__(self, kind: str) -> str:  # summary, alert, status, stats, reply
        return f"{self.base}/{kind}"


class Backoff:
    """Capped exponential backoff with jitter: waits of min·2ⁿ up to max, each scaled by a random 50-100% so that a
    fleet that lost its broker together does not come back in one synchronised wave."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random):
        self.min_s, self.max_s, self.rng = min_s, max_s, rng
        self.failures = 0

    def next(self) -> float:
        delay = min(self.max_s, self.min_s * 2 ** min(self.failures, 30))
        self.failures += 1
        return delay * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class MqttSetupError(ValueError):
    """A broker setting that cannot work (bad certificate file, unreadable password file): a start-up error."""


def check_setup(cfg: MqttConfig, broker: BrokerAddress) -> None:
    """Fail at start, naming the key, rather than in the MQTT thread on every reconnect."""
    if broker.tls:
        tls_context(cfg)
    elif cfg.tls.cert_file or cfg.tls.ca_file:
        log.warning("mqtt.tls is set but the broker URL is not mqtts://: the connection is NOT encrypted")
    try:
        password = cfg.password()
    except ValueError as e:
        raise MqttSetupError(str(e)) from None
    if password is not None and not cfg.username:
        raise MqttSetupError("mqtt.username: a password is set (mqtt.password_file or APPLIANCE_MQTT_PASSWORD) "
                             "but no username")


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The TLS context for ``mqtts://``; bad files are start-up errors that name the key."""
    tls = cfg.tls
    try:
        context = ssl.create_default_context(cafile=str(Path(tls.ca_file).expanduser()) if tls.ca_file else None)
    except (ssl.SSLError, OSError) as e:
        raise MqttSetupError(f"mqtt.tls.ca_file: {tls.ca_file} is not a CA certificate bundle ({e})") from None
    if tls.cert_file:
        try:
            context.load_cert_chain(str(Path(tls.cert_file).expanduser()), str(Path(tls.key_file).expanduser()))
        except (ssl.SSLError, OSError) as e:
            raise MqttSetupError(f"mqtt.tls.cert_file: {tls.cert_file} / {tls.key_file} are not a matching "
                             f"certificate and key ({e})") from None
    if tls.insecure:
        context.check_hostname = False
    return context


def tool_client(cfg: MqttConfig, broker: BrokerAddress, client_id: str) -> mqtt.Client:
    """A plain MQTT 3.1.1 client for the CLI tools (doctor, watch), with the config's TLS and credentials."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    secure(client, cfg, tls_context(cfg) if broker.tls else None)
    return client


def secure(client: mqtt.Client, cfg: MqttConfig, ssl_context: ssl.SSLContext | None) -> None:
    """Credentials and TLS, the same for the daemon and the tools. The password is read now, never kept."""
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password())
    if ssl_context is not None:
        client.tls_set_context(ssl_context)


def describe_connect_error(error: BaseException, broker: BrokerAddress, cfg: MqttConfig) -> str:
    """A connection failure in words a technician can act on."""
    where = f"{broker.host}:{broker.port}"
    if isinstance(error, ssl.SSLCertVerificationError):
        trust = f"mqtt.tls.ca_file = {cfg.tls.ca_file}" if cfg.tls.ca_file else "the system trust store"
        return (f"TLS: the certificate of {where} is not trusted (certificate verify failed: {error.verify_message}); it must be signed by the "
                f"CA in {trust}")
    if isinstance(error, ssl.SSLError):
        hint = "" if cfg.tls.cert_file else "; a broker that requires client certificates needs mqtt.tls.cert_file " \
                                            "and mqtt.tls.key_file"
        return f"TLS handshake with {where} failed ({error.reason or error}){hint}"
    if isinstance(error, ConnectionRefusedError):
        return f"nothing accepts connections on {where} (broker down?)"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve {broker.host} ({error.strerror})"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"{where} did not answer in time"
    return f"{where}: {error}"


def refusal_hint(reason: str) -> str:
    lowered = reason.lower()
    if "auth" in lowered or "password" in lowered:
        return ": check mqtt.username and the password (mqtt.password_file or APPLIANCE_MQTT_PASSWORD)"
    if "identifier" in lowered:
        return ": check mqtt.client_id"
    return ""


def message_properties(protocol: str, device_id: str, packet: int = PacketTypes.PUBLISH, event=None,
                       max_age_s: float = 0.0) -> Properties | None:
    """MQTT 5 properties: content type, the device, and for an outbox event its id, seq and an expiry that ends
    when the outbox itself would have dropped it. None on 3.1.1."""
    if protocol != "5":
        return None
    props = Properties(packet)
    props.ContentType = "application/json"
    props.PayloadFormatIndicator = 1
    user = [("device_id", device_id)]
    if event is not None:
        props.MessageExpiryInterval = max(1, int(max_age_s - event.age_s))
        user += [("event_id", event.event_id), ("seq", str(event.seq))]
    props.UserProperty = user
    return props
