"""The pass dashboard's picture of the world, built from MQTT messages only (no I/O here, so it is unit-tested).

Why the server keeps state instead of each browser subscribing itself: a plain Mosquitto has no WebSocket
listener by default, events are not retained (a tablet that reloads would see an empty feed), and snapshots
arrive on a per-slot retained topic, not with the event. Here every message becomes a small JSON update that the
server pushes to the browsers (Server-Sent Events), and `snapshot()` is what a page loads first.

Payloads are data: every field that reaches a browser is coerced to a plain string or number here, and the page
renders it only as text. A malformed message is dropped with one debug line, never an exception.

Matching a snapshot to its event: the daemon publishes the event through its spool (a sender thread) and the
slot's score and snapshot directly, so the snapshot may arrive before or after its event, and after an outage
the replayed events come after the re-sent retained snapshot. The score published just before the snapshot tags
it; it goes to the event of that slot with the same score (else to the slot's newest event without one).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge.config import ID_RE
from edge.feedback import validate_feedback

log = logging.getLogger(__name__)

MAX_EVENTS = 200
HISTORY_S = 3600.0
PENDING_SNAPSHOT_S = 30.0  # an untagged snapshot waits this long for its event
MAX_TEXT = 200
SLOT_STATES = ("empty", "busy", "ok", "anomaly")


def _text(v: Any, limit: int = MAX_TEXT) -> str | None:
    if v is None:
        return None
    s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, dict | list) else str(v)
    return s[:limit]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _epoch(ts: Any, default: float) -> float:
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return default


def clean_event(doc: Any, camera: str, now: float) -> dict | None:
    """The fields of a DESIGN §5 event the page shows, as plain strings and numbers; None if unusable."""
    if not isinstance(doc, dict):
        return None
    eid = doc.get("id")
    if not isinstance(eid, str) or not eid or len(eid) > 100:
        return None
    regions = []
    for r in doc.get("regions") if isinstance(doc.get("regions"), list) else []:
        if isinstance(r, dict):
            regions.append(
                {
                    **{k: _num(r.get(k)) for k in ("x", "y", "w", "h", "score")},
                    "defect": _text(r.get("defect") or r.get("label"), 80),
                }
            )
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    return {
        "id": eid,
        "camera": camera,
        "slot": _text(doc.get("slot")) or "",
        "ts": _text(doc.get("ts"), 40) or "",
        "t": _epoch(doc.get("ts"), now),
        "verdict": _text(doc.get("verdict"), 40) or "",
        "score": _num(doc.get("score")),
        "threshold": _num(doc.get("threshold")),
        "severity": _num(doc.get("severity")),
        "regions": regions[:50],
        "defect": _text(doc.get("defect"), 80),
        "model": _text(model.get("name"), 80),
        "position_s": _num(doc.get("position_s")),
        "snapshot": False,
        "feedback": None,
    }


@dataclass
class _Snap:
    jpeg: bytes
    score: float | None  # the slot's score published just before it
    at: float
    event_id: str | None = None


@dataclass
class Camera:
    id: str
    availability: str | None = None
    stats: dict | None = None
    stats_at: float | None = None  # time.time() of the last stats message
    slots: dict[str, str] = field(default_factory=dict)


class DashboardState:
    """Thread-safe: paho's thread calls handle(), HTTP threads call snapshot() and the getters."""

    def __init__(
        self, base_topic: str = "dishwatch", stale_after_s: float = 75.0, history_s: float = HISTORY_S
    ):
        self.base = base_topic.strip("/")
        self.stale_after_s = stale_after_s
        self.history_s = history_s
        self.lock = threading.RLock()
        self.cameras: dict[str, Camera] = {}
        self.events: deque[dict] = deque(maxlen=MAX_EVENTS)
        self.jpegs: dict[str, bytes] = {}  # event id -> its snapshot
        self.scores: dict[tuple[str, str], float] = {}
        self.latest: dict[tuple[str, str], _Snap] = {}
        self.history: dict[tuple[str, str], deque[tuple[float, float, float | None]]] = {}
        self.broker: dict[str, Any] = {
            "connected": False,
            "ever_connected": False,
            "reconnects": 0,
            "since": None,
            "where": "",
        }

    # --- MQTT in ------------------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, now: float | None = None) -> list[dict]:
        """Apply one message; returns the updates to push to the browsers."""
        now = time.time() if now is None else now
        base = self.base.split("/")
        parts = topic.split("/")
        if parts[: len(base)] != base:
            return []
        rest = parts[len(base) :]
        try:
            with self.lock:
                if len(rest) == 2:
                    return self._camera_topic(rest[0], rest[1], payload, now)
                if len(rest) == 3:
                    return self._slot_topic(rest[0], rest[1], rest[2], payload, now)
        except Exception:  # a payload must never take the dashboard down
            log.debug("message on %s ignored", topic, exc_info=True)
        return []

    def _cam(self, cid: str) -> Camera | None:
        if not ID_RE.match(cid):
            return None
        if cid not in self.cameras:
            self.cameras[cid] = Camera(cid)
        return self.cameras[cid]

    def _camera_topic(self, cid: str, leaf: str, payload: bytes, now: float) -> list[dict]:
        if leaf == "feedback":  # from any dashboard: every open page shows what staff said about an event
            fb = validate_feedback(json.loads(payload))
            return self.set_feedback(fb.id, fb.label, fb.defect)
        if leaf not in ("availability", "stats", "events") or (cam := self._cam(cid)) is None:
            return []
        if leaf == "availability":
            cam.availability = _text(payload.decode("utf-8", "replace").strip(), 40)
            return [{"type": "camera", "camera": self.camera_view(cam, now)}]
        if leaf == "stats":
            doc = json.loads(payload)
            if not isinstance(doc, dict):
                return []
            cam.stats = {k: (_num(v) if _num(v) is not None else _text(v, 80)) for k, v in doc.items()}
            cam.stats_at = now
            return [{"type": "camera", "camera": self.camera_view(cam, now)}]
        ev = clean_event(json.loads(payload), cid, now)
        if ev is None or any(e["id"] == ev["id"] for e in self.events):
            return []  # unusable, or a re-send after an outage (ids are stable)
        if len(self.events) == self.events.maxlen:
            self.jpegs.pop(self.events[0]["id"], None)
        self.events.append(ev)
        out = [{"type": "event", "event": ev}]
        if ev["score"] is not None:
            h = self.history.setdefault((cid, ev["slot"]), deque())
            h.append((ev["t"], ev["score"], ev["threshold"]))
            while h and h[0][0] < now - self.history_s:
                h.popleft()
        snap = self.latest.get((cid, ev["slot"]))
        if snap is not None and snap.event_id is None:
            same = snap.score is not None and ev["score"] is not None and abs(snap.score - ev["score"]) < 1e-9
            if same or (snap.score is None and now - snap.at <= PENDING_SNAPSHOT_S):
                out += self._attach(snap, ev)
        return out

    def _slot_topic(self, cid: str, slot: str, leaf: str, payload: bytes, now: float) -> list[dict]:
        if not ID_RE.match(slot) or (cam := self._cam(cid)) is None:
            return []
        key = (cid, slot)
        if leaf == "state":
            state = payload.decode("utf-8", "replace").strip()
            cam.slots[slot] = state if state in SLOT_STATES else "unknown"
            return [{"type": "slot", "camera": cid, "slot": slot, "state": cam.slots[slot]}]
        if leaf == "score":
            score = _num(float(payload.decode().strip()))
            if score is not None:
                self.scores[key] = score
            return []
        if leaf != "snapshot" or not payload.startswith(b"\xff\xd8"):
            return []
        cam.slots.setdefault(slot, "unknown")
        prev = self.latest.get(key)
        if prev is not None and prev.jpeg == payload:
            return []  # the same retained snapshot again (a reconnect)
        snap = _Snap(bytes(payload), self.scores.get(key), now)
        self.latest[key] = snap
        mine = [e for e in self.events if e["camera"] == cid and e["slot"] == slot]
        target = None
        if snap.score is not None:
            target = next((e for e in reversed(mine) if not e["snapshot"] and e["score"] == snap.score), None)
        elif mine and not mine[-1]["snapshot"]:
            target = mine[-1]
        out: list[dict] = [{"type": "latest", "camera": cid, "slot": slot}]
        return out + (self._attach(snap, target) if target else [])

    def _attach(self, snap: _Snap, ev: dict) -> list[dict]:
        snap.event_id = ev["id"]
        ev["snapshot"] = True
        self.jpegs[ev["id"]] = snap.jpeg
        return [{"type": "snapshot", "id": ev["id"]}]

    # --- the rest of the world ----------------------------------------------------------------------------
    def set_broker(self, connected: bool, where: str = "") -> list[dict]:
        with self.lock:
            b = self.broker
            if connected == b["connected"]:
                return []
            if connected and b["ever_connected"]:
                b["reconnects"] += 1
            b.update(connected=connected, since=time.time(), where=where or b["where"])
            b["ever_connected"] = b["ever_connected"] or connected
            return [{"type": "broker", "broker": dict(b)}]

    def set_feedback(self, event_id: str, label: str, defect: str) -> list[dict]:
        with self.lock:
            for e in self.events:
                if e["id"] == event_id:
                    e["feedback"] = {"label": label, "defect": defect or None}
                    return [{"type": "feedback", "id": event_id, "feedback": e["feedback"]}]
        return []

    def event_camera(self, event_id: str) -> str | None:
        with self.lock:
            return next((e["camera"] for e in self.events if e["id"] == event_id), None)

    def camera_view(self, cam: Camera, now: float) -> dict:
        age = None if cam.stats_at is None else round(now - cam.stats_at, 1)
        stale = age is None or age > self.stale_after_s
        problem = None
        if cam.availability == "offline":
            problem = "offline"
        elif cam.stats_at is None:
            problem = "no stats received yet" if cam.availability != "online" else None
        elif stale:
            problem = f"no stats for {int(age)} s"
        return {
            "id": cam.id,
            "availability": cam.availability,
            "stats": cam.stats,
            "stats_age_s": age,
            "online": cam.availability == "online" and problem is None,
            "problem": problem,
            "slots": dict(sorted(cam.slots.items())),
        }

    def health(self, now: float | None = None) -> dict[str, dict]:
        now = time.time() if now is None else now
        with self.lock:
            return {c.id: self.camera_view(c, now) for c in self.cameras.values()}

    def jpeg(self, event_id: str) -> bytes | None:
        with self.lock:
            return self.jpegs.get(event_id)

    def latest_jpeg(self, camera: str, slot: str) -> bytes | None:
        with self.lock:
            s = self.latest.get((camera, slot))
            return s.jpeg if s else None

    def snapshot(self, now: float | None = None) -> dict:
        """Everything a page needs to draw itself (then it follows the updates)."""
        now = time.time() if now is None else now
        with self.lock:
            return {
                "now": now,
                "base_topic": self.base,
                "stale_after_s": self.stale_after_s,
                "history_s": self.history_s,
                "broker": dict(self.broker),
                "cameras": [
                    self.camera_view(c, now) for c in sorted(self.cameras.values(), key=lambda c: c.id)
                ],
                "events": list(reversed(self.events)),  # newest first
                "history": [
                    {"camera": c, "slot": s, "points": [p for p in h if p[0] >= now - self.history_s]}
                    for (c, s), h in sorted(self.history.items())
                ],
            }
