"""The daemon's MQTT side: availability, spooled events, retained state, Home Assistant discovery (DESIGN §5).

Why one sender thread owns every event publish: events must reach the broker in the order they were scored, even
across outages. The spool is the only queue; paho's own in-memory copies are dropped on every (re)connect and the
sender replays the spool oldest first, a window of QoS 1 messages at a time, deleting a row only on its PUBACK.
paho calls back from its network thread while holding its own locks, so the callbacks here never publish: they
post to the sender's inbox (acks, connects, Home Assistant restarts) and return.

Retained topics (state, score, snapshot) are state, not events: only the latest per topic is kept in memory and
sent again on reconnect. Connection problems are logged once per change of state, never per retry, and never with
the password.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt

from edge.config import MqttConfig
from edge.discovery import discovery_payload, discovery_topic
from edge.errors import UserError
from edge.events import significant
from edge.spool import Spool

log = logging.getLogger(__name__)

WINDOW = 10  # events in flight at once (paho's own in-flight limit is 20, shared with state messages)
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 5  # a LAN broker that comes back is found again within 5 s


def describe_connect_error(exc: BaseException | None) -> str:
    """A stable, human sentence for a failed connection attempt (stable, so repeats are not logged again)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message}); check mqtt.ca_file"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running?)"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "connection timed out"
    if exc is None:
        return "connection failed"
    return f"{type(exc).__name__}: {exc}"


def apply_tls_and_auth(
    c: mqtt.Client, cfg: MqttConfig, ca_key: str = "mqtt.ca_file", user_key: str = "mqtt.username"
) -> None:
    """TLS (mqtts://, with cfg.ca_file or the system CAs) and credentials; shared by the daemon and the dashboard.

    The keys name where the value came from (a config key or a command-line flag) in the one-line errors.
    """
    if cfg.tls:
        try:
            c.tls_set(ca_certs=cfg.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise UserError(f"{ca_key}: cannot load {cfg.ca_file or 'the system CAs'} ({exc})") from None
    if cfg.username:
        c.username_pw_set(cfg.username, cfg.password or None)
    elif cfg.password:
        log.warning("a password is configured but %s is empty; no credentials are sent", user_key)


class Publisher:
    """Publishes one camera's topics under `<base_topic>/<camera_id>`; see the module docstring for the why."""

    def __init__(self, cfg: MqttConfig, camera_id: str, slot_ids: Sequence[str], model: dict) -> None:
        self.cfg = cfg
        self.camera_id = camera_id
        self.slot_ids = list(slot_ids)
        self.model = {"name": model.get("name", ""), "sha256": model.get("sha256", "")}
        self.base = f"{cfg.base_topic}/{camera_id}"
        self.availability_topic = f"{self.base}/availability"
        self.events_topic = f"{self.base}/events"
        self.where = (
            f"{cfg.host}:{cfg.port}{' (TLS)' if cfg.tls else ''}"  # never the URL: it may carry a user
        )
        self.client_id = cfg.client_id or f"dishwatch-{camera_id}"
        self.spool = Spool(cfg.spool, cfg.spool_max_events)
        self._send_lock = threading.RLock()  # orders our publishes against (re)connect handling
        self._connected = False
        self._gen = 0  # connection generation: a publish for an older connection is never sent on a newer one
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._subs: dict[str, Callable[[str, bytes], None]] = {}
        self._inbox: queue.Queue[tuple[str, int]] = queue.Queue()
        self._drained = threading.Condition()
        self._problem: str | None = (
            ""  # "" = never connected yet, None = connected, else the last logged problem
        )
        self._sender: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self.client = self._make_client()

    # --- public API -----------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def spool_depth(self) -> int:
        return self.spool.depth

    @property
    def spool_dropped(self) -> int:
        return self.spool.dropped

    def start(self) -> None:
        """Connect in the background; the broker being down is not an error (events wait in the spool)."""
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()
        log.info("connecting to %s as %s", self.where, self.client_id)
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive)
        self.client.loop_start()
        if self.spool.depth:
            self._inbox.put(("event", 0))

    def publish_event(self, event: dict) -> None:
        """Spool the event (durably), then let the sender publish it in order."""
        eid = str(event.get("id") or uuid.uuid4())
        payload = json.dumps({**event, "id": eid}, separators=(",", ":")).encode()
        self.spool.append(eid, self.events_topic, payload)
        self._inbox.put(("event", 0))

    def publish_state(self, slot: str, state: str) -> None:
        self._publish_retained(f"{self.base}/{slot}/state", state.encode(), 1)

    def publish_score(self, slot: str, score: float) -> None:
        self._publish_retained(f"{self.base}/{slot}/score", repr(significant(score)).encode(), 0)

    def publish_snapshot(self, slot: str, jpeg: bytes) -> None:
        self._publish_retained(f"{self.base}/{slot}/snapshot", bytes(jpeg), 0)

    def publish_stats(self, stats: dict) -> None:
        """Stats plus the publisher's own health; not kept for reconnect (the next report is at most 30 s away)."""
        doc = {
            **stats,
            "spool_depth": self.spool.depth,
            "spool_dropped": self.spool.dropped,
            "mqtt_connected": self._connected,
        }
        self._publish_retained(f"{self.base}/stats", json.dumps(doc).encode(), 0, remember=False)

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        """Call `callback(topic, payload)` for messages on `topic` (a filter); re-subscribed on every connect."""

        def handler(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
            try:
                callback(msg.topic, msg.payload)
            except Exception:
                log.exception("handler for %s failed", msg.topic)

        with self._send_lock:
            self._subs[topic] = callback
            self.client.message_callback_add(topic, handler)
            if self._connected:
                self.client.subscribe(topic, qos=1)

    def flush(self, timeout: float) -> bool:
        """Wait until every spooled event is acknowledged; True if the spool is empty."""
        with self._drained:
            return self._drained.wait_for(lambda: self.spool.depth == 0, max(0.0, timeout))

    def stop(self, timeout: float = 5.0) -> None:
        """Flush (bounded), announce `offline`, disconnect cleanly (no last will), close the spool."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        if self._sender is not None:
            if self._connected:
                self.flush(deadline - time.monotonic())
            with self._send_lock:
                self._stopping = True
                info = None
                if self._connected:
                    info = self.client.publish(self.availability_topic, "offline", qos=1, retain=True)
            if info is not None:
                try:
                    info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                except (RuntimeError, ValueError):
                    log.debug("offline not confirmed", exc_info=True)
            self.client.drop_out_messages()  # what is not acknowledged is in the spool for the next start
            self.client.disconnect()
            self.client.loop_stop()
            self._inbox.put(("quit", 0))
            self._sender.join(max(0.1, deadline - time.monotonic()))
        depth = self.spool.depth
        self.spool.close()
        self._closed = True
        log.info("stopped (%d event(s) left in the spool)", depth)

    # --- client and callbacks (paho's network thread: no publishing here) ----------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        c.will_set(self.availability_topic, "offline", qos=1, retain=True)
        c.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        apply_tls_and_auth(c, cfg)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        if cfg.discovery_prefix:
            c.message_callback_add(f"{cfg.discovery_prefix}/status", self._on_ha_status)
        return c

    def _on_connect(
        self, client: mqtt.Client, _u: object, _flags: object, reason: object, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self._problem_changed(
                f"the broker refused the connection ({reason}); check mqtt.username/password"
            )
            return
        with self._send_lock:
            client.drop_out_messages()  # stale copies would be re-sent after the replay and break the order
            self._gen += 1
            self._connected = True
            gen = self._gen
        if self._problem is not None:
            log.info("connected to %s", self.where)
        self._problem = None
        self._inbox.put(("connected", gen))

    def _on_connect_fail(self, _client: mqtt.Client, _u: object) -> None:
        # paho calls this from inside its `except OSError:` block, so the exception is still at hand.
        self._problem_changed(f"cannot connect to {self.where}: {describe_connect_error(sys.exception())}")

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _flags: object, reason: object, _p: object) -> None:
        was = self._connected
        self._connected = False
        self._inbox.put(("disconnected", 0))
        if was and not self._stopping:
            self._problem_changed(f"connection to {self.where} lost ({reason})")

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, _reason: object, _p: object) -> None:
        self._inbox.put(("ack", mid))

    def _on_ha_status(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.payload.strip() == b"online":
            self._inbox.put(("discovery", 0))

    def _problem_changed(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.warning("%s; retrying in the background, events are spooled", problem)

    # --- the sender thread ------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        inflight: dict[int, int] = {}  # mid -> spool seq
        state = {"gen": 0, "last": 0}  # the connection we send on; the last spool seq sent on it
        while True:
            kind, arg = self._inbox.get()
            if kind == "quit":
                return
            try:
                if kind == "connected":
                    inflight.clear()
                    state.update(gen=arg, last=0)  # replay everything still in the spool, oldest first
                    self._announce(arg)
                elif kind == "disconnected":
                    inflight.clear()
                    state["last"] = 0
                elif kind == "discovery":
                    with self._send_lock:
                        if self._connected:
                            self._publish_discovery()
                elif kind == "ack":
                    seq = inflight.pop(arg, None)
                    if seq is not None:
                        self.spool.delete(seq)
                        with self._drained:
                            self._drained.notify_all()
                self._pump(inflight, state)
            except Exception:
                log.exception("sender error (the spool keeps the events)")

    def _pump(self, inflight: dict[int, int], state: dict[str, int]) -> None:
        while len(inflight) < WINDOW:
            rows = self.spool.after(state["last"], WINDOW - len(inflight))
            if not rows:
                return
            with self._send_lock:
                for seq, _eid, topic, payload in rows:
                    if not self._connected or self._gen != state["gen"]:
                        return
                    info = self.client.publish(topic, payload, qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        return  # the connection just dropped: replayed from the spool on the next connect
                    inflight[info.mid] = seq
                    state["last"] = seq

    def _announce(self, gen: int) -> None:
        """On every connect: online, discovery, subscriptions, the latest retained state."""
        with self._send_lock:
            if not self._connected or self._gen != gen:
                return
            c = self.client
            c.publish(self.availability_topic, "online", qos=1, retain=True)
            if self.cfg.discovery_prefix:
                self._publish_discovery()
                c.subscribe(f"{self.cfg.discovery_prefix}/status", qos=1)
            for topic in self._subs:
                c.subscribe(topic, qos=1)
            for topic, (payload, qos) in self._retained.items():
                c.publish(topic, payload, qos=qos, retain=True)

    def _publish_discovery(self) -> None:
        if not self.cfg.discovery_prefix:
            return
        doc = discovery_payload(self.base, self.camera_id, self.slot_ids, self.model)
        topic = discovery_topic(self.cfg.discovery_prefix, self.camera_id)
        self.client.publish(topic, json.dumps(doc), qos=1, retain=True)

    def _publish_retained(self, topic: str, payload: bytes, qos: int, remember: bool = True) -> None:
        with self._send_lock:
            if remember:
                self._retained[topic] = (payload, qos)
            if self._connected:
                self.client.publish(topic, payload, qos=qos, retain=True)
