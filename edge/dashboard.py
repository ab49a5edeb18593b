"""`python -m edge dashboard --mqtt URL [--port 8080]`: the pass dashboard, live in a browser, plus staff feedback.

Why a Python server and not a page talking MQTT itself: it must work with a plain Mosquitto (no WebSocket
listener), and a tablet that reloads must still see the recent events, which are not retained. So one paho
client subscribes to `<base_topic>/#`, `DashboardState` keeps the picture, and browsers get it as JSON
(`/api/state`) and then follow it with Server-Sent Events (`/api/stream`). Standard library and paho only; the
page (edge/dashboard_static/) is plain HTML, JS and CSS served from here: no CDN, no npm, and a
Content-Security-Policy that allows nothing else.

Binds to 127.0.0.1 unless `--host` says otherwise: the feedback button writes into a training set.
`POST /api/feedback` publishes `<base>/<camera>/feedback` (QoS 1, not retained) for the daemon to file.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt

from edge.config import ID_RE, MqttConfig, check_mqtt_url, read_password_file
from edge.dashboard_state import DashboardState
from edge.errors import UserError
from edge.feedback import validate_feedback
from edge.mqtt import RECONNECT_MAX_S, RECONNECT_MIN_S, apply_tls_and_auth, describe_connect_error

log = logging.getLogger(__name__)

STATIC = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
          "/style.css": ("style.css", "text/css")}  # fmt: skip
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "media-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
TICK_S = 1.0
KEEPALIVE_S = 15.0
MAX_BODY = 4096
SNAP_RE = re.compile(r"^/snapshot/([A-Za-z0-9_-]{1,100})\.jpg$")
LATEST_RE = re.compile(r"^/snapshot/([a-z0-9_-]+)/([a-z0-9_-]+)\.jpg$")


class Hub:
    """Fans updates out to every connected browser (one bounded queue per stream)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: set[queue.Queue[str | None]] = set()

    def add(self) -> queue.Queue[str | None]:
        q: queue.Queue[str | None] = queue.Queue(maxsize=1000)
        with self.lock:
            self.clients.add(q)
        return q

    def remove(self, q: queue.Queue[str | None]) -> None:
        with self.lock:
            self.clients.discard(q)

    def send(self, updates: list[dict]) -> None:
        if not updates:
            return
        with self.lock:
            clients = list(self.clients)
        for u in updates:
            data = json.dumps(u, separators=(",", ":"))
            for q in clients:
                try:
                    q.put_nowait(data)
                except queue.Full:  # a browser that stopped reading: drop it, it reloads the state
                    self.remove(q)

    def close(self) -> None:
        with self.lock:
            for q in self.clients:
                try:
                    q.put_nowait(None)
                except queue.Full:
                    pass


class Dashboard:
    """The MQTT side (one paho client) and the HTTP side, sharing a DashboardState."""

    def __init__(
        self,
        mqtt_cfg: MqttConfig,
        host: str = "127.0.0.1",
        port: int = 8080,
        stale_after_s: float = 75.0,
        static_dir: Path | None = None,
    ) -> None:
        self.cfg = mqtt_cfg
        self.state = DashboardState(mqtt_cfg.base_topic, stale_after_s)
        self.hub = Hub()
        self.where = f"{mqtt_cfg.host}:{mqtt_cfg.port}{' (TLS)' if mqtt_cfg.tls else ''}"
        self.static = static_dir
        self.stop_event = threading.Event()
        self._problem: str | None = ""
        self._health: dict[str, Any] = {}
        self.httpd = self._bind(host, port)
        self.client = self._make_client()

    # --- MQTT -----------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.cfg.client_id or f"dishwatch-dashboard-{int(time.time() * 1000) % 10**8}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        c.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        apply_tls_and_auth(c, self.cfg, ca_key="--ca-file", user_key="--username")
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        return c

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            self._problem_changed(
                f"the broker refused the connection ({reason}); check --username/--password-file"
            )
            return
        client.subscribe(f"{self.state.base}/#", qos=1)
        log.info("connected to %s", self.where)
        self._problem = None
        self.hub.send(self.state.set_broker(True, self.where))

    def _on_connect_fail(self, _client: mqtt.Client, _u: object) -> None:
        self._problem_changed(f"cannot connect to {self.where}: {describe_connect_error(sys.exception())}")

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if not self.stop_event.is_set():
            self._problem_changed(f"connection to {self.where} lost ({reason})")
        self.hub.send(self.state.set_broker(False))

    def _problem_changed(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.warning("%s; retrying in the background", problem)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.hub.send(self.state.handle(msg.topic, msg.payload))

    def publish_feedback(self, doc: Any) -> tuple[int, dict]:
        """Validate and publish one feedback message; (HTTP status, JSON answer)."""
        try:
            fb = validate_feedback(doc)
        except ValueError as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        camera = doc.get("camera") if isinstance(doc, dict) else None
        known = self.state.event_camera(fb.id)
        camera = camera or known
        if not isinstance(camera, str) or not ID_RE.match(camera):
            return HTTPStatus.BAD_REQUEST, {"error": "camera: expected a camera id ([a-z0-9_-]+)"}
        if known is not None and known != camera:
            return HTTPStatus.BAD_REQUEST, {"error": f"camera: event {fb.id} is from camera {known}"}
        if not self.client.is_connected():
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "not connected to the broker; try again"}
        topic = f"{self.state.base}/{camera}/feedback"
        info = self.client.publish(topic, fb.payload(camera), qos=1, retain=False)
        try:
            info.wait_for_publish(5.0)
        except (RuntimeError, ValueError):
            pass
        if not info.is_published():
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the broker did not acknowledge; try again"}
        log.info("feedback %s for event %s published on %s", fb.label, fb.id, topic)
        self.hub.send(self.state.set_feedback(fb.id, fb.label, fb.defect))
        return HTTPStatus.ACCEPTED, {"ok": True, "topic": topic, "id": fb.id, "label": fb.label}

    # --- HTTP -------------------------------------------------------------------------------------
    def _bind(self, host: str, port: int) -> ThreadingHTTPServer:
        owner = self

        class Handler(_Handler):
            dashboard = owner

        try:
            return ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise UserError(f"--host {host} --port {port}: cannot listen ({exc.strerror or exc})") from None

    def static_file(self, name: str) -> bytes:
        if self.static is not None:
            return (self.static / name).read_bytes()
        return resources.files("edge").joinpath("dashboard_static", name).read_bytes()

    def _ticker(self) -> None:
        """Camera health changes with time (stats stop arriving): re-check it every second."""
        while not self.stop_event.wait(TICK_S):
            health = self.state.health()
            for cid, view in health.items():
                key = (view["problem"], view["online"])
                if self._health.get(cid) != key:
                    self._health[cid] = key
                    self.hub.send([{"type": "camera", "camera": view}])

    def serve(self) -> int:
        host, port = self.httpd.server_address[:2]
        log.info(
            "dashboard on http://%s:%s/ (broker %s, topics %s/#)", host, port, self.where, self.state.base
        )
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive)
        self.client.loop_start()
        threading.Thread(target=self._ticker, name="dashboard-ticker", daemon=True).start()
        try:
            self.httpd.serve_forever(poll_interval=0.5)
        finally:
            self.close()
        return 0

    def close(self) -> None:
        if self.stop_event.is_set():
            return
        self.stop_event.set()
        self.hub.close()
        self.client.disconnect()
        self.client.loop_stop()  # returns within paho's reconnect backoff (at most 5 s) while the broker is away
        self.httpd.server_close()
        log.info("stopped")


class _Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    protocol_version = "HTTP/1.1"
    server_version = "dishwatch-dashboard"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype: str, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc, separators=(",", ":")).encode(), "application/json")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        d = self.dashboard
        path = unquote(urlparse(self.path).path)
        if path in STATIC:
            name, ctype = STATIC[path]
            return self._send(200, d.static_file(name), f"{ctype}; charset=utf-8")
        if path == "/api/state":
            return self._json(200, d.state.snapshot())
        if path == "/api/stream":
            return self._stream() if self.command == "GET" else self._json(405, {"error": "GET only"})
        if m := SNAP_RE.match(path):
            jpeg = d.state.jpeg(m.group(1))
        elif m := LATEST_RE.match(path):
            jpeg = d.state.latest_jpeg(m.group(1), m.group(2))
        else:
            return self._json(404, {"error": "not found"})
        if jpeg is None:
            return self._json(404, {"error": "no snapshot"})
        self._send(
            200, jpeg, "image/jpeg", cache="private, max-age=3600" if SNAP_RE.match(path) else "no-store"
        )

    def do_POST(self) -> None:
        if urlparse(self.path).path != "/api/feedback":
            return self._json(404, {"error": "not found"})
        # Only this page may post: JSON forces a CORS preflight elsewhere, and a foreign Origin is refused.
        origin = self.headers.get("Origin")
        if origin and urlparse(origin).netloc != self.headers.get("Host"):
            return self._json(403, {"error": "cross-origin request refused"})
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._json(415, {"error": "expected application/json"})
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if not 0 < n <= MAX_BODY:
            return self._json(400, {"error": f"expected a JSON body of at most {MAX_BODY} bytes"})
        try:
            doc = json.loads(self.rfile.read(n))
        except ValueError:
            return self._json(400, {"error": "not JSON"})
        status, answer = self.dashboard.publish_feedback(doc)
        self._json(status, answer)

    def _stream(self) -> None:
        d = self.dashboard
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        q = d.hub.add()
        self.close_connection = True
        try:
            self.wfile.write(b"retry: 1000\n: connected\n\n")
            self.wfile.flush()
            while not d.stop_event.is_set():
                try:
                    data = q.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    if q not in d.hub.clients:
                        break  # dropped for falling behind: the browser reconnects and reloads the state
                    self.wfile.write(b": keepalive\n\n")
                else:
                    if data is None:
                        break
                    self.wfile.write(b"data: " + data.encode() + b"\n\n")
                self.wfile.flush()
        except OSError:
            pass  # the browser went away
        finally:
            d.hub.remove(q)


def cli_main(args: Any) -> int:
    """Build the MQTT settings from the flags (errors name the flag) and serve until Ctrl-C / SIGTERM."""
    import signal

    url = check_mqtt_url(args.mqtt, "--mqtt")
    password = read_password_file(args.password_file, "--password-file") if args.password_file else ""
    if args.ca_file and not Path(args.ca_file).is_file():
        raise UserError(f"--ca-file: {args.ca_file} does not exist")
    if not all(ID_RE.match(level) for level in args.base_topic.split("/")):
        raise UserError(f"--base-topic: expected topic levels of [a-z0-9_-], got {args.base_topic!r}")
    if args.stale_after <= 0:
        raise UserError(f"--stale-after: must be > 0, got {args.stale_after}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port: expected 0..65535, got {args.port}")
    cfg = MqttConfig(
        url=url,
        username=args.username or "",
        ca_file=args.ca_file or "",
        base_topic=args.base_topic,
        client_id=args.client_id or "",
        password=password,
        discovery_prefix="",
    )
    dash = Dashboard(cfg, args.host, args.port, args.stale_after)

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        threading.Thread(target=dash.httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return dash.serve()
