"""The dashboard without a browser: the state model built from MQTT messages (pure), the HTTP API of the real
server against a real Mosquitto (feedback validation and publishing, headers, snapshots), and one-line CLI errors.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid

import pytest

from edge.config import MqttConfig
from edge.dashboard import Dashboard
from edge.dashboard_state import MAX_EVENTS, DashboardState
from tests.conftest import ROOT, assert_one_line_error, run_cli
from tests.daemon_helpers import Subscriber, wait_for

B = "dishwatch/pass1"
JPEG_A = b"\xff\xd8a-jpeg"
JPEG_B = b"\xff\xd8b-jpeg"


def ev(slot: str = "left", score: float = 0.02, **kw) -> bytes:
    doc = {"id": kw.pop("id", str(uuid.uuid4())), "slot": slot, "ts": "2026-11-29T10:00:00.000Z",
           "verdict": "anomaly", "score": score, "threshold": 0.01, "severity": score / 0.01, "regions": [], **kw}  # fmt: skip
    return json.dumps(doc).encode()


def types(updates: list[dict]) -> list[str]:
    return [u["type"] for u in updates]


# --- the state model ------------------------------------------------------------------------------------
def test_events_are_cleaned_deduplicated_and_newest_first():
    s = DashboardState()
    e1 = ev(id="a", regions=[{"x": 1, "y": 2, "w": 3, "h": 4, "score": 0.5, "defect": "<b>x</b>"}, "junk"])
    assert types(s.handle(f"{B}/events", e1)) == ["event"]
    assert s.handle(f"{B}/events", e1) == [], "a re-send after an outage is shown once"
    s.handle(f"{B}/events", ev(id="b", slot="<img src=x>", score=float("nan")))
    snap = s.snapshot()
    assert [e["id"] for e in snap["events"]] == ["b", "a"]
    a = snap["events"][1]
    assert a["regions"] == [{"x": 1.0, "y": 2.0, "w": 3.0, "h": 4.0, "score": 0.5, "defect": "<b>x</b>"}]
    assert a["camera"] == "pass1" and a["t"] > 0
    assert snap["events"][0]["slot"] == "<img src=x>" and snap["events"][0]["score"] is None


@pytest.mark.parametrize(
    "topic, payload",
    [
        (f"{B}/events", b"{not json"),
        (f"{B}/events", b'{"no": "id"}'),
        (f"{B}/events", b"[]"),
        ("dishwatch/<b>/events", ev()),
        ("other/pass1/events", ev()),
        (f"{B}/stats", b"nope"),
        (f"{B}/left/score", b"nope"),
        (f"{B}/left/snapshot", b"not a jpeg"),
        (f"{B}/a/b/c/d", b"x"),
    ],
)
def test_malformed_messages_are_dropped_quietly(topic, payload):
    s = DashboardState()
    assert s.handle(topic, payload) == []
    assert s.snapshot()["events"] == []


def test_snapshot_goes_to_its_event_whether_it_comes_before_or_after():
    s = DashboardState()
    # after: the event is there first
    s.handle(f"{B}/events", ev(id="e1", score=0.02))
    s.handle(f"{B}/left/score", b"0.02")
    assert types(s.handle(f"{B}/left/snapshot", JPEG_A)) == ["latest", "snapshot"]
    assert s.jpeg("e1") == JPEG_A
    # before: score and snapshot first, the event (spooled) a moment later
    s.handle(f"{B}/left/score", b"0.03")
    s.handle(f"{B}/left/snapshot", JPEG_B)
    assert types(s.handle(f"{B}/events", ev(id="e2", score=0.03))) == ["event", "snapshot"]
    assert s.jpeg("e2") == JPEG_B and s.latest_jpeg("pass1", "left") == JPEG_B
    # the same retained snapshot again (a reconnect) changes nothing
    assert s.handle(f"{B}/left/snapshot", JPEG_B) == []


def test_replayed_events_after_an_outage_get_the_snapshot_only_on_the_matching_score():
    s = DashboardState()
    s.handle(f"{B}/left/score", b"0.05")
    s.handle(f"{B}/left/snapshot", JPEG_A)  # re-sent retained before the spool replay
    for i, score in enumerate((0.01, 0.02, 0.05)):
        s.handle(f"{B}/events", ev(id=f"r{i}", score=score))
    assert [s.jpeg(f"r{i}") for i in range(3)] == [None, None, JPEG_A]


def test_slot_states_and_camera_health():
    s = DashboardState(stale_after_s=10)
    s.handle(f"{B}/left/state", b"anomaly", now=100)
    s.handle(f"{B}/right/state", b"<b>", now=100)
    s.handle(f"{B}/availability", b"online", now=100)
    view = s.health(now=100)["pass1"]
    assert view["slots"] == {"left": "anomaly", "right": "unknown"}
    assert view["online"] and view["problem"] is None, "online, first stats not yet due"
    s.handle(f"{B}/stats", json.dumps({"input_fps": 15, "camera": "streaming", "x": [1]}).encode(), now=101)
    view = s.health(now=105)["pass1"]
    assert view["online"] and view["stats"]["input_fps"] == 15.0 and view["stats_age_s"] == 4.0
    assert s.health(now=112)["pass1"]["problem"] == "no stats for 11 s"
    s.handle(f"{B}/availability", b"offline", now=112)
    assert s.health(now=112)["pass1"]["problem"] == "offline"


def test_broker_reconnects_are_counted_and_history_is_bounded():
    s = DashboardState(history_s=60)
    s.set_broker(True, "h:1")
    assert s.broker["reconnects"] == 0
    s.set_broker(False)
    assert s.set_broker(True)[0]["broker"]["reconnects"] == 1
    for i in range(MAX_EVENTS + 5):
        s.handle(f"{B}/events", ev(id=f"e{i}"), now=1e9)
        s.handle(f"{B}/left/snapshot", JPEG_A if i % 2 else JPEG_B, now=1e9)
    assert len(s.snapshot(now=1e9)["events"]) == MAX_EVENTS and len(s.jpegs) <= MAX_EVENTS
    assert s.jpeg("e0") is None and s.jpeg(f"e{MAX_EVENTS + 4}") is not None
    hist = s.snapshot(now=1e9)["history"]
    assert hist and all(p[0] >= 1e9 - 60 for h in hist for p in h["points"])


# --- the server over HTTP, with a real broker ----------------------------------------------------------------
@pytest.fixture
def server(broker):
    d = Dashboard(MqttConfig(url=broker.url, client_id="dash-test"), "127.0.0.1", 0, stale_after_s=5)
    t = threading.Thread(target=d.serve, daemon=True)
    t.start()
    wait_for(lambda: d.client.is_connected(), timeout=10, what="dashboard connected")
    d.url = f"http://127.0.0.1:{d.httpd.server_address[1]}"
    yield d
    d.httpd.shutdown()
    t.join(5)


def request(url: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post(server, doc, **headers):
    h = {"Content-Type": "application/json", **headers}
    return request(f"{server.url}/api/feedback", json.dumps(doc).encode(), h)


def test_page_and_api_headers(server):
    status, headers, body = request(server.url + "/")
    assert status == 200 and b'<script src="/app.js">' in body
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"]
    status, _, body = request(server.url + "/api/state")
    assert status == 200 and json.loads(body)["broker"]["connected"] is True
    for path in ("/snapshot/nope.jpg", "/snapshot/../../etc/passwd", "/snapshot/pass1/left.jpg", "/x"):
        assert request(server.url + path)[0] == 404


def test_feedback_is_validated_then_published_qos1(server, broker):
    sub = Subscriber(broker.host, broker.port, f"{B}/feedback")
    server.state.handle(f"{B}/events", ev(id="e-1"))
    assert post(server, {"camera": "pass1", "id": "e-1", "label": "nope"})[0] == 400
    assert post(server, {"camera": "pass1", "id": "../x", "label": "false_alarm"})[0] == 400
    assert post(server, {"camera": "pass2", "id": "e-1", "label": "false_alarm"})[0] == 400, "wrong camera"
    assert post(server, {"camera": "<b>", "id": "x1", "label": "false_alarm"})[0] == 400
    assert post(server, {"id": "e-1", "label": "false_alarm"}, Origin="http://evil.example")[0] == 403
    status, _, _ = request(f"{server.url}/api/feedback", b'{"id": "e-1"}', {"Content-Type": "text/plain"})
    assert status == 415
    assert sub.last(f"{B}/feedback") is None, "nothing invalid reaches the broker"
    status, _, body = post(
        server, {"id": "e-1", "label": "confirmed", "defect": "spill"}
    )  # camera from the event
    assert status == 202, body
    wait_for(lambda: sub.last(f"{B}/feedback") is not None, timeout=5, what="feedback")
    doc = json.loads(sub.last(f"{B}/feedback"))
    assert doc["id"] == "e-1" and doc["label"] == "confirmed" and doc["defect"] == "spill" and doc["ts"]
    assert server.state.snapshot()["events"][0]["feedback"] == {"label": "confirmed", "defect": "spill"}
    sub.close()


def test_feedback_while_the_broker_is_down_is_refused(server, broker):
    broker.stop()
    wait_for(lambda: not server.client.is_connected(), timeout=10, what="disconnect")
    status, _, body = post(server, {"camera": "pass1", "id": "e-2", "label": "false_alarm"})
    assert status == 503 and b"not connected" in body
    broker.start()


# --- the command line ---------------------------------------------------------------------------------
def test_cli_errors_are_one_line(tmp_path):
    assert_one_line_error(run_cli("edge", "dashboard", "--mqtt", "http://x"), "--mqtt: expected mqtt://")
    proc = run_cli("edge", "dashboard", "--password-file", str(tmp_path / "missing"))
    assert_one_line_error(proc, "--password-file: cannot read")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = run_cli("edge", "dashboard", "--port", str(s.getsockname()[1]), timeout=30)
    assert_one_line_error(proc, "cannot listen", "Address already in use")


def test_feedback_seen_on_the_broker_marks_the_event_for_every_page():
    s = DashboardState()
    s.handle(f"{B}/events", ev(id="e9"))
    fb = json.dumps({"id": "e9", "label": "confirmed", "defect": "chip", "camera": "pass1"}).encode()
    assert s.handle(f"{B}/feedback", fb) == [
        {"type": "feedback", "id": "e9", "feedback": {"label": "confirmed", "defect": "chip"}}
    ]
    assert s.handle(f"{B}/feedback", b'{"id": "e9", "label": "<b>"}') == []


def test_dashboard_and_feedback_need_no_tensorflow():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import edge.dashboard, edge.dashboard_state, edge.feedback, edge.daemon\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras') and sys.modules[m]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_listens_on_loopback_unless_told_otherwise():
    from edge.__main__ import build_parser

    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port, args.mqtt) == ("127.0.0.1", 8080, "mqtt://127.0.0.1:1883")
