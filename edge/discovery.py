"""Home Assistant MQTT discovery: one device-based message that declares every entity of a camera.

Why device-based (`<prefix>/device/<id>/config` with `dev`, `o`, `cmps`): one retained message creates or
updates the whole device at once, availability is declared once for all entities, and removing the device is one
empty retained payload. Each component carries its platform (`p`) and a stable `unique_id`, which HA requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

MANUFACTURER = "dishwatch"


def sw_version() -> str:
    try:
        return metadata.version("dishwatch")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def discovery_topic(prefix: str, camera_id: str) -> str:
    return f"{prefix}/device/dishwatch_{camera_id}/config"


def discovery_payload(base: str, camera_id: str, slot_ids: Sequence[str], model: dict) -> dict:
    """The discovery document for a camera whose topics live under `base` (`<base_topic>/<camera>`)."""
    dev_id = f"dishwatch_{camera_id}"
    version = sw_version()
    cmps: dict[str, dict] = {
        "events": {
            "p": "event",
            "name": "Dish served",
            "unique_id": f"{dev_id}_events",
            "state_topic": f"{base}/events",
            "event_types": ["ok", "anomaly"],
            # HA wants a JSON object with event_type; the other keys become attributes of the event.
            "value_template": (
                '{"event_type": "{{ value_json.verdict }}", "slot": "{{ value_json.slot }}", '
                '"score": {{ value_json.score }}, "id": "{{ value_json.id }}"}'
            ),
            "qos": 1,
        }
    }
    for slot in slot_ids:
        uid = f"{dev_id}_{slot}"
        cmps[f"{slot}_anomaly"] = {
            "p": "binary_sensor",
            "name": f"{slot} anomaly",
            "unique_id": f"{uid}_anomaly",
            "device_class": "problem",
            "state_topic": f"{base}/{slot}/state",
            "value_template": "{{ 'ON' if value == 'anomaly' else 'OFF' }}",
            "qos": 1,
        }
        cmps[f"{slot}_score"] = {
            "p": "sensor",
            "name": f"{slot} score",
            "unique_id": f"{uid}_score",
            "state_topic": f"{base}/{slot}/score",
            "state_class": "measurement",
        }
        cmps[f"{slot}_snapshot"] = {
            "p": "image",
            "name": f"{slot} snapshot",
            "unique_id": f"{uid}_snapshot",
            "image_topic": f"{base}/{slot}/snapshot",
            "content_type": "image/jpeg",
        }
    return {
        "dev": {
            "identifiers": [dev_id],
            "name": f"dishwatch {camera_id}",
            "manufacturer": MANUFACTURER,
            "model": f"pass camera ({model.get('name', 'unknown model')})",
            "sw_version": version,
        },
        "o": {"name": "dishwatch", "sw": version},
        "avty_t": f"{base}/availability",
        "payload_available": "online",
        "payload_not_available": "offline",
        "cmps": cmps,
    }
