"""Home Assistant MQTT discovery: retained config messages that make a unit appear on HA dashboards by itself.

Each entity reads the unit's own topics (summary, stats, status, alert); the pause/resume buttons write its
``cmd/`` topics, so a store can opt a unit out from the dashboard. Topics follow HA's
``<discovery prefix>/<component>/<node id>/<object id>/config``; the node id is the device id, which the example
ACL (deploy/broker/) lets a unit write to and no other.
"""

from __future__ import annotations

from appliance.publish.client import Topics

# (component, object id, name, topic kind, value template, unit, extra)
ENTITIES = [
    ("sensor", "anger_index", "Anger index", "summary", "{{ value_json.anger_index }}", None,
     {"state_class": "measurement", "icon": "mdi:emoticon-angry-outline"}),
    ("sensor", "distinct_faces", "Distinct faces", "summary",
     "{{ value_json.faces.distinct_faces if value_json.faces else 0 }}", None, {"state_class": "measurement"}),
    ("sensor", "speech_seconds", "Speech", "summary",
     "{{ value_json.voice.speech_seconds if value_json.voice else 0 }}", "s", {"state_class": "measurement"}),
    ("sensor", "state", "State", "status", "{{ value_json.state }}", None, {"icon": "mdi:power"}),
    ("sensor", "fps", "Loop rate", "stats", "{{ value_json.loop.fps }}", "Hz", {"state_class": "measurement"}),
    ("sensor", "deadline_misses", "Deadline misses", "stats", "{{ value_json.loop.deadline_misses_total }}", None,
     {"state_class": "total_increasing", "entity_category": "diagnostic"}),
    ("sensor", "outbox_depth", "Outbox depth", "stats", "{{ value_json.outbox.depth }}", None,
     {"state_class": "measurement", "entity_category": "diagnostic"}),
    ("sensor", "temperature", "Temperature", "stats", "{{ value_json.system.temperature_c }}", "°C",
     {"device_class": "temperature", "state_class": "measurement", "entity_category": "diagnostic"}),
    ("binary_sensor", "anger_alert", "Anger alert", "alert", "ON", None,
     {"off_delay": 60, "device_class": "problem"}),
]


def discovery_messages(prefix: str, topics: Topics, device_id: str, version: str) -> list[tuple[str, dict]]:
    """(topic, payload) pairs to publish retained on every connect."""
    device = {"identifiers": [f"appliance-{device_id}"], "name": f"Emotion appliance {device_id}",
              "manufacturer": "emotion appliance", "model": "edge inference appliance", "sw_version": version}
    availability = {"topic": topics.status, "value_template":
                    "{{ 'offline' if value_json.state == 'offline' else 'online' }}"}
    messages = []
    for component, object_id, name, kind, template, unit, extra in ENTITIES:
        config = {"name": name, "unique_id": f"appliance_{device_id}_{object_id}",
                  "state_topic": getattr(topics, kind), "value_template": template, "device": device,
                  "availability": [availability]} | extra
        if unit:
            config["unit_of_measurement"] = unit
        if kind == "status":
            config.pop("availability")   # the state sensor must show 'offline' itself
        messages.append((f"{prefix}/{component}/{device_id}/{object_id}/config", config))
    for action in ("pause", "resume"):
        messages.append((f"{prefix}/button/{device_id}/{action}/config", {
            "name": action.capitalize(), "unique_id": f"appliance_{device_id}_{action}",
            "command_topic": f"{topics.base}/cmd/{action}", "payload_press": '{"reason": "home assistant"}',
            "device": device, "availability": [availability],
            "icon": "mdi:pause-circle" if action == "pause" else "mdi:play-circle"}))
    return messages
