"""Everything that leaves the device: payload building, the MQTT client and the embedded broker."""
