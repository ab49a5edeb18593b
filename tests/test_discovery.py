"""Home Assistant device discovery: the payload HA needs, published retained on connect and again when HA says
`online` on homeassistant/status."""

from __future__ import annotations

import json
import subprocess

from edge.discovery import discovery_payload
from edge.mqtt import Publisher
from tests.daemon_helpers import Subscriber, wait_for
from tests.mqtt_helpers import MODEL, mqtt_cfg

TOPIC = "homeassistant/device/dishwatch_pass1/config"


def test_payload_has_what_home_assistant_requires():
    d = discovery_payload("dishwatch/pass1", "pass1", ["left", "right"], MODEL)
    assert d["dev"]["identifiers"] == ["dishwatch_pass1"]
    assert d["dev"]["manufacturer"] == "dishwatch" and d["dev"]["name"] and d["dev"]["model"]
    assert d["dev"]["sw_version"] and d["o"]["name"] == "dishwatch" and d["o"]["sw"]
    assert d["avty_t"] == "dishwatch/pass1/availability"
    assert (d["payload_available"], d["payload_not_available"]) == ("online", "offline")
    cmps = d["cmps"]
    assert all("p" in c and c["unique_id"].startswith("dishwatch_pass1_") for c in cmps.values())
    assert len({c["unique_id"] for c in cmps.values()}) == len(cmps) == 1 + 3 * 2
    ev = cmps["events"]
    assert (ev["p"], ev["state_topic"], ev["event_types"]) == (
        "event",
        "dishwatch/pass1/events",
        ["ok", "anomaly"],
    )
    assert "value_json.verdict" in ev["value_template"] and "event_type" in ev["value_template"]
    for slot in ("left", "right"):
        b = cmps[f"{slot}_anomaly"]
        assert (b["p"], b["device_class"], b["state_topic"]) == (
            "binary_sensor",
            "problem",
            f"dishwatch/pass1/{slot}/state",
        )
        assert b["unique_id"] == f"dishwatch_pass1_{slot}_anomaly" and "'anomaly'" in b["value_template"]
        s = cmps[f"{slot}_score"]
        assert (s["p"], s["state_topic"], s["state_class"]) == (
            "sensor",
            f"dishwatch/pass1/{slot}/score",
            "measurement",
        )
        i = cmps[f"{slot}_snapshot"]
        assert (i["p"], i["image_topic"], i["content_type"]) == (
            "image",
            f"dishwatch/pass1/{slot}/snapshot",
            "image/jpeg",
        )


def test_published_retained_and_resent_when_home_assistant_comes_online(broker, tmp_path):
    sub = Subscriber(broker.host, broker.port, "homeassistant/#")
    pub = Publisher(mqtt_cfg(broker.url, tmp_path / "spool.sqlite"), "pass1", ["left"], MODEL)
    pub.start()
    count = lambda: sum(1 for t, _, _, _ in sub.messages if t == TOPIC)  # noqa: E731
    wait_for(lambda: count() == 1, timeout=10, what="discovery on connect")
    assert json.loads(sub.last(TOPIC))["cmps"]["left_score"]["p"] == "sensor"
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            "homeassistant/status",
            "-m",
            "online",
        ],
        check=True,
    )
    wait_for(lambda: count() == 2, timeout=10, what="discovery re-sent after HA birth")
    pub.stop()
    sub.close()
    late = Subscriber(broker.host, broker.port, TOPIC)
    wait_for(lambda: late.last(TOPIC) is not None, timeout=10, what="retained discovery")
    assert [r for _, _, r, _ in late.messages] == [True]
    late.close()
