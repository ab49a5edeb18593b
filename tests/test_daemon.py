"""The whole daemon as a user runs it: a subprocess on a real clip, a real broker, a real int8 bundle.

What is proven: one event per plate inside its still window with the right verdict, nothing for moving hands;
a clean exit 0 with `offline` retained at the end of a file and on SIGTERM; events survive SIGKILL (spool) and a
10-s broker outage (all arrive, in order, each id once after de-duplication); READY/WATCHDOG over NOTIFY_SOCKET,
and no WATCHDOG once frames stop; config errors are one line.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import cv2
import pytest

from tests.conftest import assert_one_line_error, run_cli
from tests.daemon_helpers import Daemon, MjpegServer, Subscriber, wait_for, write_config

BASE = "dishwatch/pass1"


# --- fixtures -----------------------------------------------------------------------------------------
def _config(tmp_path: Path, clip: dict, bundle: Path, url: str, **extra) -> Path:
    return write_config(
        tmp_path / "pass.toml", clip["video"], clip["slots"], bundle, url, tmp_path / "spool.sqlite", **extra
    )


def _retained(broker, topic: str) -> bytes | None:
    """What a newly connecting client receives as the retained message of `topic`."""
    sub = Subscriber(broker.host, broker.port, topic)
    try:
        wait_for(lambda: sub.last(topic) is not None, timeout=5, what=topic)
    except AssertionError:
        return None
    finally:
        sub.close()
    return sub.last(topic)


def _check_against_timeline(events: list[dict], clip: dict) -> None:
    assert len(events) == len(clip["plates"]), [(e["slot"], e["position_s"]) for e in events]
    for p in clip["plates"]:
        mine = [
            e
            for e in events
            if e["slot"] == p["slot"] and p["t_still_start"] <= e["position_s"] <= p["t_still_end"]
        ]
        assert len(mine) == 1, (p, [(e["slot"], e["position_s"]) for e in events])
        assert mine[0]["verdict"] == ("anomaly" if p["anomalous"] else "ok"), (p, mine[0])


# --- the clip, end to end ---------------------------------------------------------------------------
def test_clip_gives_one_event_per_plate_and_ends_cleanly(tmp_path, clip, tiny_bundle, broker):
    sub = Subscriber(broker.host, broker.port, f"{BASE}/#")
    d = Daemon(_config(tmp_path, clip, tiny_bundle, broker.url))
    assert d.wait() == 0, d.stderr()[-3000:]
    assert "Traceback" not in d.stderr()
    _check_against_timeline(d.events, clip)
    e = d.events[1]
    assert set(e) >= {
        "id",
        "camera",
        "slot",
        "ts",
        "verdict",
        "score",
        "threshold",
        "severity",
        "regions",
        "model",
        "snapshot",
    }
    assert e["ts"].endswith("Z") and e["snapshot"] == f"{BASE}/{e['slot']}/snapshot"
    rect = next(s["rect"] for s in clip["slots"] if s["id"] == e["slot"])
    for r in (x for ev in d.events for x in ev["regions"] if ev["slot"] == e["slot"]):
        assert rect[0] <= r["x"] < rect[0] + rect[2] and rect[1] <= r["y"] < rect[1] + rect[3], "frame pixels"
    wait_for(lambda: set(sub.arrivals()) >= {e["id"] for e in d.events}, timeout=10, what="all events")
    snap = sub.last(f"{BASE}/left/snapshot")
    assert (
        snap is not None
        and snap[:2] == b"\xff\xd8"
        and cv2.imdecode(__import__("numpy").frombuffer(snap, "uint8"), cv2.IMREAD_COLOR) is not None
    )
    sub.close()
    assert _retained(broker, f"{BASE}/availability") == b"offline"
    assert _retained(broker, f"{BASE}/left/state") in (b"empty", b"ok", b"anomaly", b"busy")
    stats = json.loads(_retained(broker, f"{BASE}/stats"))
    assert stats["camera"] == "ended" and stats["events"] == len(clip["plates"])
    # While the pass is quiet (slots empty or holding a still, scored dish) frames are taken at camera.idle_fps
    # (5 of the clip's 10): the rest are grabbed, never converted, and the events above still came one per plate
    # in its still window.
    assert stats["frames_rate_skipped"] > 0 and "processed_fps" in stats
    assert 0 < stats["rss_anon_mb"] < stats["rss_mb"]
    assert "only kNN bundles learn" in d.stderr() and "learned_rows" not in stats, "a CAE bundle has no bank"


def test_the_kitchens_threshold_decides_every_verdict(tmp_path, clip, tiny_bundle, broker):
    """`model.threshold` replaces the bundle's: far below every score, each plate is an anomaly, published
    with the threshold it was compared against."""
    d = Daemon(_config(tmp_path, clip, tiny_bundle, broker.url, model={"threshold": 1e-9}))
    assert d.wait() == 0, d.stderr()[-3000:]
    assert len(d.events) == len(clip["plates"])
    assert all(e["verdict"] == "anomaly" and e["threshold"] == 1e-9 for e in d.events), d.events
    assert "threshold 1e-09: model.threshold" in d.stderr()


def test_broker_outage_of_10_s_loses_no_event(tmp_path, clip, tiny_bundle, broker):
    sub = Subscriber(broker.host, broker.port, f"{BASE}/events")
    d = Daemon(_config(tmp_path, clip, tiny_bundle, broker.url))
    wait_for(lambda: len(d.events) >= 1, timeout=60, what="first event")
    broker.stop()
    n_before = len(d.events)
    time.sleep(10)
    assert len(d.events) > n_before, "the outage must cover events"
    broker.start()
    assert d.wait() == 0, d.stderr()[-3000:]
    printed = [e["id"] for e in d.events]
    wait_for(lambda: set(sub.arrivals()) >= set(printed), timeout=20, what="replayed events")
    arrivals = sub.arrivals()
    assert sorted(printed, key=arrivals.get) == printed, "events arrive in the order they were scored"
    sub.close()
    _check_against_timeline(d.events, clip)


def test_sigkill_mid_clip_then_restart_delivers_spooled_events(tmp_path, clip, tiny_bundle, broker):
    broker.stop()  # nothing can be delivered: every event stays in the spool
    cfg = _config(tmp_path, clip, tiny_bundle, broker.url)
    d = Daemon(cfg)
    wait_for(lambda: len(d.events) >= 2, timeout=60, what="two events")
    d.proc.kill()
    d.wait()
    spooled = [e["id"] for e in d.events]
    broker.start()
    sub = Subscriber(broker.host, broker.port, f"{BASE}/events")
    d2 = Daemon(cfg)
    wait_for(lambda: set(sub.arrivals()) >= set(spooled), timeout=30, what="spooled events after restart")
    d2.proc.send_signal(signal.SIGTERM)
    assert d2.wait(30) == 0, d2.stderr()[-3000:]
    sub.close()
    assert _retained(broker, f"{BASE}/availability") == b"offline"


# --- health and signals -----------------------------------------------------------------------------
def _notify_socket(path: Path) -> tuple[socket.socket, list[str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0.2)
    got: list[str] = []

    def read() -> None:
        while True:
            try:
                got.extend(s.recv(4096).decode().splitlines())
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=read, daemon=True).start()
    return s, got


def test_notify_ready_watchdog_only_while_frames_flow_and_sigterm(tmp_path, clip, tiny_bundle, broker):
    cap = cv2.VideoCapture(clip["video"])
    frames = [cap.read()[1] for _ in range(5)]  # the empty pass
    cam = MjpegServer(frames, period_s=0.1).start()
    sock, got = _notify_socket(tmp_path / "notify.sock")
    cfg = write_config(
        tmp_path / "pass.toml",
        cam.url,
        clip["slots"],
        tiny_bundle,
        broker.url,
        tmp_path / "spool.sqlite",
        camera={"stall_timeout_s": 60.0},
        health={"watchdog_max_stall_s": 1.0},
    )
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    d = Daemon(cfg, env=env)
    try:
        wait_for(lambda: "READY=1" in got and got.count("WATCHDOG=1") >= 3, timeout=60, what="READY + pings")
        assert got.index("READY=1") < got.index("WATCHDOG=1")
        cam.stop()  # no more frames: the watchdog must starve
        time.sleep(2.0)
        n = got.count("WATCHDOG=1")
        time.sleep(2.0)
        assert got.count("WATCHDOG=1") == n, "no WATCHDOG ping while no frame arrives"
        cam.start()
        wait_for(lambda: got.count("WATCHDOG=1") > n, timeout=30, what="pings after the camera returns")
    finally:
        cam.stop()
        d.proc.send_signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.stderr()[-3000:]
    sock.close()
    assert "STOPPING=1" in got
    assert _retained(broker, f"{BASE}/availability") == b"offline"


# --- bad configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"camera": {"colour": "red"}}, "camera.colour"),
        ({"camera": {"fps": "fast"}}, "camera.fps"),
        ({"camera": {"idle_fps": 30}}, "camera.idle_fps"),  # over camera.fps (10)
        ({"model_bundle": "/nonexistent/bundle"}, "model.bundle"),
        ({"model": {"target_fpr": 1.5}}, "model.target_fpr"),
        ({"model": {"threshold": 1.2, "target_fpr": 0.05}}, "model.threshold and model.target_fpr"),
        ({"mqtt": {"password_file": "/nonexistent/secret"}}, "mqtt.password_file"),
    ],
)
def test_config_errors_are_one_line(tmp_path, tiny_bundle, patch, needle):
    bundle = Path(patch.pop("model_bundle", tiny_bundle))
    cfg = write_config(
        tmp_path / "bad.toml",
        str(tmp_path / "c.mp4"),
        [{"id": "left", "rect": [0, 0, 32, 32]}],
        bundle,
        "mqtt://127.0.0.1:1883",
        tmp_path / "spool.sqlite",
        **patch,
    )
    assert_one_line_error(run_cli("edge", "check-config", str(cfg), timeout=60), needle)
    assert_one_line_error(run_cli("edge", "run", "--config", str(cfg), timeout=60), needle)


def test_watchdog_pings_only_while_frames_flow_and_inference_returns(tmp_path):
    from edge.health import Notifier, Watchdog

    sock, got = _notify_socket(tmp_path / "n.sock")
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "200000"})
    w = Watchdog(n, max_stall_s=1.0)
    assert not w.tick(10.0, 9.9), "no ping before READY"
    w.mark_ready("watching")
    assert w.tick(10.0, 9.9)
    assert not w.tick(10.05, 10.0), "not before half of WATCHDOG_USEC"
    assert not w.tick(10.2, 9.0) and w.stalled_reason == "no frame"
    w.inference_started = 8.9
    assert not w.tick(10.3, 10.25) and w.stalled_reason == "inference hangs"
    w.inference_started = 0.0
    assert w.tick(10.4, 10.35)
    wait_for(lambda: got.count("WATCHDOG=1") == 2, timeout=5, what="two pings")
    assert got[0] == "READY=1" and got[1].startswith("STATUS=")
    sock.close()
    assert not Notifier({}).enabled and not Notifier({}).notify("READY=1")


def test_garbage_frames_do_not_stop_the_daemon(tmp_path, clip, tiny_bundle, broker):
    cap = cv2.VideoCapture(clip["video"])
    d = tmp_path / "frames"
    d.mkdir()
    for k in range(20):
        cv2.imwrite(str(d / f"{k:03d}.png"), cap.read()[1])
    (d / "005a.png").write_bytes(b"\x00garbage" * 100)
    (d / "007a.jpg").write_bytes(b"")
    cfg = write_config(
        tmp_path / "pass.toml",
        str(d),
        clip["slots"],
        tiny_bundle,
        broker.url,
        tmp_path / "spool.sqlite",
        camera={"idle_fps": 0},  # every frame decoded: a frame over the idle rate is never looked at
    )
    daemon = Daemon(cfg)
    assert daemon.wait(60) == 0, daemon.stderr()[-3000:]
    assert "Traceback" not in daemon.stderr()
    stats = json.loads(_retained(broker, f"{BASE}/stats"))
    assert stats["frames_bad"] == {"garbage": 2} and stats["frames_in"] == 20 and stats["camera"] == "ended"
    assert stats["frames_rate_skipped"] == 0
