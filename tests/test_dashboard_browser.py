"""The pass dashboard in a real headless Chromium (Debian's), against a real Mosquitto, the real server process and
the real daemon.

What is proven: events, slot states, camera health and the snapshot (decoded by the browser) appear live; an
offline camera and stats that stop get a banner; a broker restart is survived and shown; markup in a payload is
shown as text and injects nothing; pressing "false alarm" / "confirm defect" publishes the feedback message and
the daemon files the unannotated crop into the MVTec-layout dataset, which the training loader reads; feedback
for an unknown id or bad JSON is one log line and the daemon keeps running. The browser has no network beyond
loopback (checked). A screenshot is kept in build/test-artifacts/dashboard.png.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from tests.broker import free_port, stop_process
from tests.conftest import ROOT, run_cli
from tests.daemon_helpers import Subscriber, mini_dataset, wait_for, write_config

BASE = "dishwatch/pass1"
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMEDRIVER = "/usr/bin/chromedriver"


# --- the browser -------------------------------------------------------------------------------------------
def _chromium() -> str:
    for exe in ("chromium", "chromium-browser"):
        if path := shutil.which(exe):
            return path
    pytest.fail(
        "chromium is not installed: run `make setup` (scripts/system-deps.sh installs Debian's chromium and "
        "chromium-driver)",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session, loopback only; selenium-manager never downloads anything."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = _chromium()
    if not Path(CHROMEDRIVER).is_file():
        pytest.fail(
            "chromedriver is not installed: run `make setup` (installs chromium-driver)", pytrace=False
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        "--autoplay-policy=no-user-gesture-required",
        # No network beyond loopback: everything else goes to a dead proxy and no name resolves.
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def wait_js(driver, script: str, timeout: float = 20.0, what: str = ""):
    """Poll a JS expression (`return ...`) until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or script}")
        time.sleep(0.1)


# --- the dashboard server --------------------------------------------------------------------------------
class DashboardProc:
    def __init__(self, broker_url: str, workdir: Path, stale_after: float = 60.0) -> None:
        self.port = free_port()
        self.log_path = workdir / "dashboard.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "dashboard", "--mqtt", broker_url, "--port", str(self.port),
             "--stale-after", str(stale_after)],
            cwd=ROOT, stdout=self.log, stderr=self.log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "dashboard did not listen"
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@pytest.fixture
def dashboard(broker, tmp_path):
    d = DashboardProc(broker.url, tmp_path, stale_after=5.0)
    yield d
    d.stop()


def publisher(broker) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:6]}")
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def send(c: mqtt.Client, topic: str, payload, qos: int = 1, retain: bool = False) -> None:
    if isinstance(payload, dict | list):
        payload = json.dumps(payload)
    c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)


def jpeg(colour: tuple[int, int, int], size: int = 96) -> bytes:
    img = np.full((size, size, 3), colour, np.uint8)
    cv2.rectangle(img, (20, 20), (60, 60), (0, 0, 255), 3)
    return cv2.imencode(".jpg", img)[1].tobytes()


def event(slot: str, verdict: str, score: float, **extra) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "camera": "pass1",
        "slot": slot,
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "verdict": verdict,
        "score": score,
        "threshold": 0.01,
        "severity": round(score / 0.01, 4),
        "regions": [{"x": 40, "y": 50, "w": 30, "h": 20, "score": 0.05}] if verdict == "anomaly" else [],
        "model": {"name": "default", "sha256": "0" * 64},
        "snapshot": f"{BASE}/{slot}/snapshot",
        "position_s": None,
        **extra,
    }


def publish_scored(c: mqtt.Client, ev: dict, snap: bytes) -> None:
    """What the daemon sends for one scored dish (DESIGN §5): event, state, score, snapshot."""
    send(c, f"{BASE}/events", ev)
    send(c, f"{BASE}/{ev['slot']}/state", ev["verdict"], retain=True)
    send(c, f"{BASE}/{ev['slot']}/score", repr(ev["score"]), qos=0, retain=True)
    send(c, f"{BASE}/{ev['slot']}/snapshot", snap, qos=0, retain=True)


def item_js(eid: str) -> str:
    return f"document.querySelector('#feed li[data-id=\"{eid}\"]')"


def open_connected(driver, url: str) -> None:
    """Load the page and wait until it says its server is connected to the broker."""
    driver.get(url)
    wait_js(
        driver, "return document.querySelector('#broker').textContent === 'broker connected'", what="connect"
    )


def snapshot_loaded(driver, eid: str, timeout: float = 15) -> None:
    wait_js(
        driver,
        f"const li = {item_js(eid)}; const img = li && li.querySelector('img.snap');"
        " return img && img.complete && img.naturalWidth > 0;",
        timeout,
        f"snapshot of {eid} loaded",
    )


def screenshot(driver, name: str = "dashboard.png") -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / name
    driver.save_screenshot(str(out))
    return out


# --- tests ------------------------------------------------------------------------------------------
def test_browser_has_no_network_beyond_loopback(browser, dashboard):
    from selenium.common.exceptions import WebDriverException

    for url in ("http://example.com/", "https://93.184.215.14/"):
        try:
            browser.get(url)
        except WebDriverException as exc:
            assert "ERR_PROXY_CONNECTION_FAILED" in str(exc) or "ERR_NAME_NOT_RESOLVED" in str(exc), exc
        else:
            assert "Example Domain" not in browser.page_source
    browser.get(dashboard.url)  # loopback still works
    wait_js(browser, "return document.body.dataset.ready === '1'", what="page ready")


def test_live_events_states_health_and_snapshots(browser, broker, dashboard):
    c = publisher(broker)
    send(c, f"{BASE}/availability", "online", retain=True)
    stats = {
        "uptime_s": 12.0,
        "input_fps": 14.8,
        "inference_ms_p50": 2.9,
        "spool_depth": 3,
        "camera": "streaming",
        "learned_rows": 180,
        "learned_events": 3,
    }
    send(c, f"{BASE}/stats", stats, qos=0, retain=True)
    send(c, f"{BASE}/left/state", "empty", retain=True)
    browser.get(dashboard.url)
    wait_js(browser, "return document.body.dataset.ready === '1'", what="page ready")
    wait_js(browser, "return document.querySelector('.slot[data-slot=\"left\"]')", what="left slot tile")

    good = event("right", "ok", 0.004)
    publish_scored(c, good, jpeg((40, 160, 40)))
    bad = event("left", "anomaly", 0.031)
    publish_scored(c, bad, jpeg((200, 200, 200)))
    snapshot_loaded(browser, bad["id"])
    snapshot_loaded(browser, good["id"])
    # newest first, with verdict, score against threshold and the regions
    ids = browser.execute_script(
        "return [...document.querySelectorAll('#feed li.event')].map(e => e.dataset.id)"
    )
    assert ids[:2] == [bad["id"], good["id"]]
    text = browser.execute_script(f"return {item_js(bad['id'])}.innerText")
    assert "ANOMALY" in text.upper() and "score 0.031 / threshold 0.01" in text and "(3.1×)" in text
    assert "x 40, y 50, 30×20 px" in text
    # the snapshot served for this event is exactly the published JPEG
    assert browser.execute_script(f"return {item_js(bad['id'])}.querySelector('img.snap').naturalWidth") == 96
    # slot states, large and coloured; the anomaly is red
    wait_js(browser, "return document.querySelector('.slot[data-slot=\"left\"]').dataset.state === 'anomaly'")
    colour = browser.execute_script(
        "return getComputedStyle(document.querySelector('.slot[data-slot=\"left\"]')).backgroundColor"
    )
    r, g, b = (int(v) for v in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3])
    assert r > 120 and g < 60 and b < 60, colour
    size = browser.execute_script(
        "return parseFloat(getComputedStyle(document.querySelector('.slot-state')).fontSize)"
    )
    assert size >= 36
    # health from stats, a chart per slot, the beep counted (sound on by default)
    send(c, f"{BASE}/stats", stats, qos=0, retain=True)
    health = wait_js(
        browser,
        "const h = document.querySelector('.camera .health').textContent; return h.startsWith('online') && h",
        what="camera online",
    )
    assert (
        "online" in health and "14.8 fps" in health and "inference 2.9 ms" in health and "spool 3" in health
    )
    assert "learned from 3 false alarms" in health
    wait_js(browser, "return document.querySelectorAll('#charts canvas').length === 2", what="two charts")
    assert int(browser.execute_script("return document.body.dataset.beeps || '0'")) >= 1
    out = screenshot(browser)
    assert out.stat().st_size > 10_000

    # stats stop (--stale-after 5 s): a banner; then the camera goes offline: a banner saying so
    wait_js(browser, "return document.querySelector('#banners').textContent.includes('no stats for')", 15)
    send(c, f"{BASE}/availability", "offline", retain=True)
    wait_js(
        browser, "return document.querySelector('#banners').textContent.includes('Camera pass1: OFFLINE')", 10
    )
    c.loop_stop()
    c.disconnect()


def test_broker_restart_is_survived_and_shown(browser, broker, dashboard):
    open_connected(browser, dashboard.url)
    broker.stop()
    wait_js(browser, "return document.querySelector('#banners').textContent.includes('reconnecting')", 15)
    broker.start()
    wait_js(browser, "return document.querySelector('#broker').dataset.reconnects === '1'", 20, "reconnect")
    assert "reconnected 1×" in browser.execute_script("return document.querySelector('#broker').textContent")
    assert "restored" in browser.execute_script("return document.querySelector('#banners').textContent")
    c = publisher(broker)
    ev = event("left", "anomaly", 0.02)
    publish_scored(c, ev, jpeg((90, 90, 200)))
    snapshot_loaded(browser, ev["id"])
    c.loop_stop()
    c.disconnect()


def test_markup_in_payloads_is_shown_as_text(browser, broker, dashboard):
    open_connected(browser, dashboard.url)
    evil_slot = "<img src=x onerror=window.pwned=1>"
    ev = event("left", "anomaly", 0.05, defect="<script>window.pwned=2</script>")
    ev["slot"] = evil_slot
    ev["regions"] = [{"x": 1, "y": 2, "w": 3, "h": 4, "score": 0.1, "defect": "<b>bold</b>"}]
    ev["verdict"] = "anomaly"
    c = publisher(broker)
    send(c, f"{BASE}/events", ev)
    send(c, f"{BASE}/<i>x<i>/state", "<b>anomaly</b>", retain=True)  # not a slot id: ignored
    li = wait_js(browser, f"return {item_js(ev['id'])}", what="the event")
    text = li.text
    assert evil_slot in text and "<b>bold</b>" in text and "<script>window.pwned=2</script>" in text
    assert (
        browser.execute_script(f"return {item_js(ev['id'])}.querySelectorAll('img, b, script').length") == 0
    )
    assert browser.execute_script("return document.querySelectorAll('b, script:not([src])').length") == 0
    time.sleep(0.5)
    assert browser.execute_script("return window.pwned === undefined")
    c.loop_stop()
    c.disconnect()


# --- with the real daemon ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_clip(tmp_path_factory) -> dict:
    """A 320x240, 10 fps clip: 2 plates per slot from a mini test split (no TensorFlow needed)."""
    d = tmp_path_factory.mktemp("dash_clip")
    data = mini_dataset(d / "data", n=2, size=96)
    args = (
        "--size",
        "320x240",
        "--fps",
        "10",
        "--plates",
        "4",
        "--rest",
        "2",
        "--gap",
        "1",
        "--lead-in",
        "1",
    )
    proc = run_cli(
        "edge", "clip", "--data", str(data), "--out", str(d / "c.mp4"), "--timeline", str(d / "c.json"), *args
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((d / "c.json").read_text())


def test_feedback_from_the_page_files_the_crop(browser, broker, dashboard, short_clip, tmp_path):
    crops, dataset = tmp_path / "crops", tmp_path / "feedback"
    cfg = write_config(
        tmp_path / "pass.toml", short_clip["video"], short_clip["slots"], ROOT / "models" / "default",
        broker.url, tmp_path / "spool.sqlite", camera={"loop": True},
        feedback={"crops_dir": str(crops), "dataset_dir": str(dataset), "max_crops": 50},
    )  # fmt: skip
    sub = Subscriber(broker.host, broker.port, f"{BASE}/feedback")
    err = open(tmp_path / "daemon.stderr", "ab")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(cfg)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        browser.get(dashboard.url)
        wait_js(
            browser, "return document.querySelectorAll('#feed li.event img.snap').length >= 2", 60, "2 events"
        )
        first, second = browser.execute_script(
            "return [...document.querySelectorAll('#feed li.event')].slice(-2).map(e => e.dataset.id)"
        )
        snapshot_loaded(browser, first)
        assert (crops / f"{first}.png").is_file(), "the daemon keeps the crop of each event"

        browser.execute_script(f"{item_js(first)}.querySelector('button.fb-false').click()")
        wait_js(
            browser, f"return {item_js(first)}.querySelector('.feedback').dataset.label === 'false_alarm'"
        )
        wait_for(lambda: sub.last(f"{BASE}/feedback") is not None, timeout=10, what="feedback message")
        msg = json.loads(sub.last(f"{BASE}/feedback"))
        assert msg["id"] == first and msg["label"] == "false_alarm" and msg["camera"] == "pass1" and msg["ts"]
        good = dataset / "train" / "good" / f"{first}.png"
        wait_for(good.is_file, timeout=10, what="crop in train/good")
        assert good.read_bytes() == (crops / f"{first}.png").read_bytes(), "the unannotated crop, as kept"

        # confirm a defect with a name typed in the page
        box = f"{item_js(second)}.querySelector('.feedback')"
        browser.execute_script(f"{box}.querySelector('input').value = 'Chipped Rim'")
        browser.execute_script(f"{box}.querySelector('button.fb-confirm').click()")
        confirmed = dataset / "test" / "chipped_rim" / f"{second}.png"
        wait_for(confirmed.is_file, timeout=10, what="crop in test/chipped_rim")

        # the training loader reads the folder as it is
        from train.data import load_dataset

        ds = load_dataset(dataset)
        assert ds.layout == "mvtec" and len(ds.samples) == 2

        # unknown id and bad JSON: one clear log line each, the daemon keeps running
        c = publisher(broker)
        unknown = str(uuid.uuid4())
        send(c, f"{BASE}/feedback", {"id": unknown, "label": "false_alarm"})
        send(c, f"{BASE}/feedback", b"{not json")
        log_path = tmp_path / "daemon.stderr"
        wait_for(
            lambda: f"event {unknown} ignored: no crop kept" in log_path.read_text(), 10, what="log line"
        )
        wait_for(lambda: "ignored: not JSON" in log_path.read_text(), 10, what="bad JSON log line")
        time.sleep(0.5)
        assert daemon.poll() is None, "the daemon survives bad feedback"
        c.loop_stop()
        c.disconnect()
        screenshot(browser, "dashboard-feedback.png")
    finally:
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(30)
        err.close()
        sub.close()
    stderr = (tmp_path / "daemon.stderr").read_text()
    assert rc == 0 and "Traceback" not in stderr, stderr[-3000:]
