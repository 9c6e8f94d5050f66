"""One module per model stage: typed numpy in, dataclasses out; no MQTT, config files or loop in here."""
