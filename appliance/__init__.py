"""Edge emotion appliance: camera and microphone in, anonymised aggregated emotion events out over MQTT."""

__version__ = "0.1.0"
