"""Helpers shared by the daemon, gate, camera and clip tests: a mini MVTec test split and configs for clips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import ROOT


def mini_dataset(root: Path, n: int = 4, size: int = 64) -> Path:
    """A tiny MVTec-layout test split: plates (good) and plates with a red stain (defect `stain`)."""
    rng = np.random.default_rng(0)
    for split, stain in (("test/good", False), ("test/stain", True)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((size, size, 3), 60, np.uint8)
            c = size // 2
            cv2.circle(img, (c, c), int(size * 0.44), (235, 235, 235), -1)
            cv2.circle(img, (c, c), size // 4, (40, 120, 200), -1)
            if stain:
                cv2.circle(img, (int(size * 0.7), int(size * 0.6)), size // 8, (20, 20, 200), -1)
            img = np.clip(img.astype(int) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / split / f"{i:03d}.png"), img)
    return root


def write_config(
    path: Path, source: str, slots: list[dict], bundle: Path, mqtt_url: str, spool: Path, **extra
) -> Path:
    """A daemon config (TOML) for a clip; `extra` maps section -> {key: value} overrides."""
    cam = {"id": "pass1", "source": source, "fps": 10, "loop": False, **extra.pop("camera", {})}
    lines = ["[camera]"] + [f"{k} = {json.dumps(v)}" for k, v in cam.items()]
    for s in slots:
        lines += ["[[slots]]", f'id = "{s["id"]}"', f"rect = {json.dumps(list(s['rect']))}"]
    model = {"bundle": str(bundle), "threads": 1, **extra.pop("model", {})}
    lines += ["[model]"] + [f"{k} = {json.dumps(v)}" for k, v in model.items()]
    mq = {"url": mqtt_url, "spool": str(spool), "stats_interval_s": 2.0, **extra.pop("mqtt", {})}
    lines += ["[mqtt]"] + [f"{k} = {json.dumps(v)}" for k, v in mq.items()]
    for section, table in extra.items():
        lines += [f"[{section}]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class MjpegServer:
    """A local HTTP MJPEG camera (multipart/x-mixed-replace) that can stop and start on the same port."""

    def __init__(self, frames: list[np.ndarray], period_s: float = 0.1) -> None:
        import socket

        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.period_s = period_s
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = None
        self.sent = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegServer:
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                k = 0
                try:
                    while owner.server is srv:
                        jpg = owner.jpegs[k % len(owner.jpegs)]
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                            + str(len(jpg)).encode()
                            + b"\r\n\r\n"
                            + jpg
                            + b"\r\n"
                        )
                        self.wfile.flush()
                        owner.sent += 1
                        k += 1
                        time.sleep(owner.period_s)
                except OSError:
                    pass

        ThreadingHTTPServer.allow_reuse_address = True
        srv = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        srv.daemon_threads = True
        self.server = srv
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        srv, self.server = self.server, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()


class Subscriber:
    """A real MQTT client that records every message (topic, payload, retained, arrival time.time()).

    It re-subscribes on every connect and retries fast, so after a broker restart it is back before the daemon's
    spool replay.
    """

    def __init__(self, host: str, port: int, topic: str = "#") -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}")
        self.c.reconnect_delay_set(0.05, 0.2)

        def on_connect(client, userdata, flags, rc, props=None):
            client.subscribe(topic, qos=1)
            self.connected.set()

        def on_message(client, userdata, msg):
            import time

            with self.lock:
                self.messages.append((msg.topic, msg.payload, bool(msg.retain), time.time()))

        self.c.on_connect, self.c.on_message = on_connect, on_message
        self.c.connect_async(host, port, keepalive=5)
        self.c.loop_start()
        assert self.connected.wait(10), "subscriber could not connect"

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _, _ in self.messages if t.endswith("/events")]

    def arrivals(self) -> dict[str, float]:
        """Event id -> first arrival time."""
        out: dict[str, float] = {}
        with self.lock:
            for t, p, _, at in self.messages:
                if t.endswith("/events"):
                    out.setdefault(json.loads(p)["id"], at)
        return out

    def last(self, topic: str) -> bytes | None:
        with self.lock:
            hits = [p for t, p, _, _ in self.messages if t == topic]
        return hits[-1] if hits else None

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def wait_for(cond, timeout: float = 30.0, step: float = 0.05, what: str = "") -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(step)


class Daemon:
    """`python -m edge run --config CFG --print-events` as a subprocess; stdout events collected by a thread."""

    def __init__(self, config: Path, env: dict | None = None) -> None:
        self.err = open(config.with_suffix(".stderr"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(config), "--print-events"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                **(env or {}),
            },
        )
        self.events: list[dict] = []
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr_path = config.with_suffix(".stderr")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self.events.append(json.loads(line))

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.err.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text()
