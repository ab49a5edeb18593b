"""The Publisher against a real Mosquitto: availability and last will, QoS 1 events in order through a broker
outage, retained state, TLS with a private CA, password authentication, and no secret in the logs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from edge.mqtt import Publisher
from tests.broker import Broker, free_port
from tests.daemon_helpers import Subscriber, wait_for
from tests.mqtt_helpers import MODEL, event, kill9, make_tls, mqtt_cfg, read_lines, spawn_child

AVAIL = "dishwatch/pass1/availability"


def publisher(broker_url: str, tmp_path, **kw) -> Publisher:
    return Publisher(mqtt_cfg(broker_url, tmp_path / "spool.sqlite", **kw), "pass1", ["left", "right"], MODEL)


def retained_now(host: str, port: int, topic: str) -> bytes | None:
    """What a client connecting now gets as the retained message of `topic`."""
    sub = Subscriber(host, port, topic)
    try:
        wait_for(lambda: sub.last(topic) is not None, timeout=3, what=f"retained {topic}")
        return sub.last(topic)
    except AssertionError:
        return None
    finally:
        sub.close()


def test_online_on_connect_and_offline_on_clean_stop(broker, tmp_path):
    pub = publisher(broker.url, tmp_path)
    pub.start()
    wait_for(lambda: pub.connected, timeout=10, what="connect")
    wait_for(lambda: retained_now(broker.host, broker.port, AVAIL) == b"online", timeout=10, what="online")
    pub.stop()
    assert retained_now(broker.host, broker.port, AVAIL) == b"offline"


def test_last_will_offline_when_the_process_is_killed(broker, tmp_path):
    child = spawn_child(broker.url, tmp_path / "spool.sqlite", keepalive=2)
    try:
        assert read_lines(child, 1) == ["connected"]
        wait_for(
            lambda: retained_now(broker.host, broker.port, AVAIL) == b"online", timeout=10, what="online"
        )
        sub = Subscriber(broker.host, broker.port, AVAIL)
        kill9(child)
        # the broker notices the silent client after 1.5 keepalives and publishes the will, retained
        wait_for(lambda: sub.last(AVAIL) == b"offline", timeout=15, what="last will")
        sub.close()
        assert retained_now(broker.host, broker.port, AVAIL) == b"offline"
    finally:
        if child.poll() is None:
            kill9(child)


def test_events_qos1_in_order_and_retained_state(broker, tmp_path):
    sub = Subscriber(broker.host, broker.port, "dishwatch/#")
    pub = publisher(broker.url, tmp_path)
    pub.start()
    sent = [event(i) for i in range(30)]
    for e in sent:
        pub.publish_event(e)
    pub.publish_state("left", "anomaly")
    pub.publish_score("left", 0.4321)
    pub.publish_snapshot("left", b"\xff\xd8jpeg")
    assert pub.flush(20)
    assert pub.spool_depth == 0
    wait_for(lambda: len(sub.arrivals()) == 30, timeout=10, what="30 events")
    assert list(sub.arrivals()) == [e["id"] for e in sent]
    assert sub.events()[0] == sent[0]  # the payload is the event, unchanged
    pub.stop()
    sub.close()
    assert retained_now(broker.host, broker.port, "dishwatch/pass1/left/state") == b"anomaly"
    assert float(retained_now(broker.host, broker.port, "dishwatch/pass1/left/score")) == pytest.approx(
        0.4321
    )
    assert retained_now(broker.host, broker.port, "dishwatch/pass1/left/snapshot") == b"\xff\xd8jpeg"


def test_broker_outage_loses_no_event_and_keeps_the_order(broker, tmp_path):
    sub = Subscriber(broker.host, broker.port, "dishwatch/#")
    pub = publisher(broker.url, tmp_path)
    pub.start()
    wait_for(lambda: pub.connected, timeout=10, what="connect")
    sent: list[str] = []

    def emit(n: int, pause: float) -> None:
        for _ in range(n):
            e = event(len(sent))
            pub.publish_event(e)
            sent.append(e["id"])
            time.sleep(pause)

    emit(10, 0.01)
    broker.stop()
    wait_for(lambda: not pub.connected, timeout=10, what="publisher notices the outage")
    t_down = time.monotonic()
    while time.monotonic() - t_down < 10:  # events keep coming during a 10 s outage
        emit(5, 0.1)
        pub.publish_state("left", f"s{len(sent)}")  # state while down: only the latest is sent later
    assert pub.spool_depth > 0
    broker.start()
    emit(10, 0.01)
    assert pub.flush(30), f"spool not drained: {pub.spool_depth}"
    wait_for(lambda: len(sub.arrivals()) >= len(sent), timeout=15, what="every event")
    firsts = list(sub.arrivals())  # ids in order of first arrival = de-duplicated stream
    assert firsts == sent
    assert sub.last("dishwatch/pass1/left/state") == f"s{len(sent) - 10}".encode()
    pub.stop()
    sub.close()


def test_subscribe_callback_survives_reconnect(broker, tmp_path):
    pub = publisher(broker.url, tmp_path)
    got: list[tuple[str, bytes]] = []
    pub.subscribe("dishwatch/pass1/feedback/#", lambda t, p: got.append((t, p)))
    pub.start()
    wait_for(lambda: pub.connected, timeout=10, what="connect")

    def send(payload: bytes) -> None:
        subprocess.run(
            ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1"]
            + ["-t", "dishwatch/pass1/feedback/x", "-m", payload.decode()],
            check=True,
        )

    wait_for(lambda: send(b"one") or got, timeout=10, what="first feedback")
    broker.stop()
    wait_for(lambda: not pub.connected, timeout=10, what="disconnect")
    broker.start()
    wait_for(lambda: pub.connected, timeout=15, what="reconnect")
    wait_for(
        lambda: send(b"two") or (got and got[-1][1] == b"two"), timeout=10, what="feedback after reconnect"
    )
    pub.stop()


@pytest.fixture
def tls(tmp_path):
    return make_tls(tmp_path / "tls")


def tls_broker(tmp_path, tls: dict, extra: str = "") -> tuple[Broker, int]:
    """A broker with a TLS listener (its `port`) and a plain one for the test's subscriber."""
    tls_port, plain_port = free_port(), free_port()
    conf = (
        # as root, mosquitto would drop to its own user, which cannot read pytest's private tmp folder
        ("user root\n" if os.geteuid() == 0 else "") + "per_listener_settings true\n"
        f"listener {tls_port} 127.0.0.1\ncafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n"
        f"{extra or 'allow_anonymous true'}\n"
        f"listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
    )
    (tmp_path / "tb").mkdir(exist_ok=True)
    return Broker(port=tls_port, extra_conf=conf, workdir=tmp_path / "tb").start(), plain_port


def test_tls_with_a_private_ca(tmp_path, tls):
    b, plain = tls_broker(tmp_path, tls)
    try:
        sub = Subscriber(b.host, plain, "dishwatch/#")
        pub = publisher(f"mqtts://127.0.0.1:{b.port}", tmp_path, ca_file=str(tls["ca"]))
        pub.start()
        e = event(0)
        pub.publish_event(e)
        assert pub.flush(20)
        wait_for(lambda: e["id"] in sub.arrivals(), timeout=10, what="event over TLS")
        pub.stop()
        sub.close()
    finally:
        b.stop()


def test_wrong_ca_warns_once_and_keeps_retrying(tmp_path, tls, caplog):
    other = make_tls(tmp_path / "other", cn="someone-else")
    b, _ = tls_broker(tmp_path, tls)
    try:
        caplog.set_level(logging.INFO, logger="edge")
        pub = publisher(f"mqtts://127.0.0.1:{b.port}", tmp_path, ca_file=str(other["ca"]))
        pub.start()
        pub.publish_event(event(0))
        log_file = b.dir / "mosquitto.log"
        # one "unknown ca" line in the broker's log per refused handshake
        attempts = lambda: log_file.read_text(errors="replace").count("unknown ca")  # noqa: E731
        wait_for(lambda: attempts() >= 3, timeout=20, what="three connection attempts")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "certificate verification failed" in warnings[0] and "mqtt.ca_file" in warnings[0]
        assert not pub.connected and pub.spool_depth == 1
        pub.stop(timeout=1)
    finally:
        b.stop()


def test_password_from_file_and_never_in_logs(tmp_path, tls, caplog):
    secret = "s3cr3t-Pa55-do-not-log"
    pwfile = tmp_path / "mosquitto.passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pwfile), "edge", secret], check=True, capture_output=True
    )
    pwfile.chmod(0o600)
    b, plain = tls_broker(tmp_path, tls, extra=f"allow_anonymous false\npassword_file {pwfile}")
    caplog.set_level(logging.DEBUG)
    try:
        # the password as the daemon gets it: read from mqtt.password_file by edge.config
        from edge.config import parse

        secret_file = tmp_path / "mqtt.secret"
        secret_file.write_text(secret + "\n")
        mq = {"url": f"mqtts://127.0.0.1:{b.port}", "username": "edge", "password_file": str(secret_file)}
        mq |= {"ca_file": str(tls["ca"]), "spool": str(tmp_path / "spool.sqlite")}
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        (bundle / "bundle.json").write_text("{}")
        (bundle / "model.tflite").write_bytes(b"")
        cfg = parse(
            {"slots": [{"id": "left", "rect": [0, 0, 64, 64]}], "model": {"bundle": str(bundle)}, "mqtt": mq}
        )
        assert cfg.mqtt.password == secret

        sub = Subscriber(b.host, plain, "dishwatch/#")
        pub = Publisher(cfg.mqtt, "pass1", ["left"], MODEL)
        pub.start()
        e = event(0)
        pub.publish_event(e)
        assert pub.flush(20)
        wait_for(lambda: e["id"] in sub.arrivals(), timeout=10, what="event with a password")
        pub.stop()
        sub.close()

        wrong = Publisher(
            mqtt_cfg(
                mq["url"],
                tmp_path / "s2.sqlite",
                username="edge",
                password=secret + "x",
                ca_file=mq["ca_file"],
            ),
            "pass1",
            ["left"],
            MODEL,
        )
        wrong.start()
        wait_for(lambda: any("refused" in r.getMessage() for r in caplog.records), timeout=15, what="refusal")
        assert not wrong.connected
        wrong.stop(timeout=1)
    finally:
        b.stop()
    assert secret not in caplog.text
    assert all(secret not in str(r.args) for r in caplog.records)


def test_no_broker_is_not_an_error(tmp_path):
    pub = publisher(f"mqtt://127.0.0.1:{free_port()}", tmp_path)
    pub.start()
    pub.publish_event(event(0))
    pub.publish_state("left", "ok")
    pub.publish_stats({"uptime": 1})
    assert not pub.connected and pub.spool_depth == 1
    assert not pub.flush(0.2)
    pub.stop(timeout=1)


def test_stats_report_spool_and_connection(broker, tmp_path):
    pub = publisher(broker.url, tmp_path)
    pub.start()
    wait_for(lambda: pub.connected, timeout=10, what="connect")
    got = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    msgs: list[dict] = []
    c.on_message = lambda cl, u, m: (msgs.append(json.loads(m.payload)), got.set())
    c.connect(broker.host, broker.port)
    c.subscribe("dishwatch/pass1/stats")
    c.loop_start()
    pub.publish_stats({"uptime": 5})
    assert got.wait(10)
    assert msgs[-1] == {"uptime": 5, "spool_depth": 0, "spool_dropped": 0, "mqtt_connected": True}
    c.loop_stop()
    c.disconnect()
    pub.stop()
