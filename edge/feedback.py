"""Staff feedback from the pass dashboard becomes training data (README "The pass dashboard and staff feedback").

Why keep crops at all: the cases the model got wrong are the ones worth retraining on, and only the people at the
pass know which they are. The daemon keeps the unannotated crop of each recent event (PNG, named by event id,
bounded by `feedback.max_crops`); when `<base>/<camera>/feedback` names one, it is filed into an MVTec-layout
folder that `python -m train fit --data` reads as it is: `train/good/<id>.png` for a false alarm,
`test/<defect>/<id>.png` for a confirmed defect (`unspecified` without a name).

Feedback arrives on paho's network thread: the work is one small file copy (and, for a kNN bundle, one crop
taught to the bank, edge/learning.py), every failure is one log line, and nothing here may raise into the client
or block the main loop. The payload checks are shared with the dashboard
(`validate_feedback`), so what the dashboard accepts the daemon files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.errors import UserError

log = logging.getLogger(__name__)

LABELS = ("false_alarm", "confirmed")
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a UUID, and never a path
DEFECT_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
CAMERA_RE = re.compile(r"^[a-z0-9_-]+$")
UNSPECIFIED = "unspecified"


@dataclass(frozen=True)
class Feedback:
    id: str
    label: str  # false_alarm | confirmed
    defect: str  # "" unless confirmed with a name
    ts: str

    def payload(self, camera: str) -> bytes:
        """The `<base>/<camera>/feedback` message (JSON)."""
        doc = {
            "id": self.id,
            "camera": camera,
            "label": self.label,
            "defect": self.defect or None,
            "ts": self.ts,
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def validate_feedback(doc: Any) -> Feedback:
    """Check a feedback document; ValueError with a one-line reason naming the field."""
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    eid = doc.get("id")
    if not isinstance(eid, str) or not EVENT_ID_RE.match(eid):
        raise ValueError(f"id: expected an event id ([A-Za-z0-9_-], at most 64), got {str(eid)[:80]!r}")
    label = doc.get("label")
    if label not in LABELS:
        raise ValueError(f"label: expected one of {', '.join(LABELS)}, got {str(label)[:40]!r}")
    defect = doc.get("defect") or ""
    if not isinstance(defect, str) or (defect and not DEFECT_RE.match(defect)):
        raise ValueError(f"defect: expected a name matching [a-z0-9_-]+, got {str(defect)[:80]!r}")
    if label == "false_alarm" and defect:
        raise ValueError("defect: only a confirmed defect has a name")
    ts = doc.get("ts")
    return Feedback(eid, label, defect, ts if isinstance(ts, str) and len(ts) <= 40 else now_iso())


class CropStore:
    """The unannotated crops of recent events, `<crops_dir>/<event id>.png`, the oldest pruned past `max_crops`."""

    def __init__(self, crops_dir: str | Path, max_crops: int) -> None:
        self.dir = Path(crops_dir)
        self.max_crops = max_crops
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"feedback.crops_dir: cannot create {self.dir} ({exc.strerror or exc})") from None
        self._lock = threading.Lock()

    def path(self, event_id: str) -> Path | None:
        """The crop of an event still kept, else None (unknown, expired or not a valid id)."""
        if not EVENT_ID_RE.match(event_id):
            return None
        p = self.dir / f"{event_id}.png"
        return p if p.is_file() else None

    def save(self, event_id: str, crop_bgr: Any) -> Path | None:
        """Write the crop (atomically: a dataset never gets half a PNG) and prune; failures are logged."""
        import cv2

        if not EVENT_ID_RE.match(event_id):
            log.warning("event id %r is not a file name; its crop is not kept", event_id)
            return None
        final = self.dir / f"{event_id}.png"
        tmp = self.dir / f".{event_id}.png.tmp"
        try:
            ok, buf = cv2.imencode(".png", crop_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if not ok:
                raise OSError("PNG encoding failed")
            tmp.write_bytes(buf.tobytes())
            os.replace(tmp, final)
            self.prune()
        except OSError as exc:
            log.warning("crop of event %s not kept in %s (%s)", event_id, self.dir, exc)
            tmp.unlink(missing_ok=True)
            return None
        return final

    def prune(self) -> int:
        """Delete the oldest crops beyond max_crops; returns how many went."""
        with self._lock:
            crops = []
            for e in os.scandir(self.dir):
                if e.name.endswith(".png") and not e.name.startswith("."):
                    try:
                        crops.append((e.stat().st_mtime_ns, e.name))
                    except FileNotFoundError:
                        continue
            excess = len(crops) - self.max_crops
            if excess <= 0:
                return 0
            crops.sort()
            for _t, name in crops[:excess]:
                (self.dir / name).unlink(missing_ok=True)
            return excess


class FeedbackFiler:
    """Files feedback into `dataset_dir` (MVTec layout); the latest label for an event wins."""

    def __init__(
        self,
        store: CropStore,
        dataset_dir: str | Path,
        on_label: Callable[[str, str, Path | None], None] | None = None,
    ) -> None:
        """`on_label(event id, label, kept crop or None)` runs after each valid feedback, filed or not (the
        device learning from it, edge.learning.Teacher)."""
        self.store = store
        self.dataset = Path(dataset_dir)
        self.filed = 0
        self.on_label = on_label

    def target(self, fb: Feedback) -> Path:
        if fb.label == "false_alarm":
            return self.dataset / "train" / "good" / f"{fb.id}.png"
        return self.dataset / "test" / (fb.defect or UNSPECIFIED) / f"{fb.id}.png"

    def file(self, fb: Feedback) -> Path | None:
        """Copy the event's crop to its place; None (and one log line) when the crop is gone."""
        src = self.store.path(fb.id)
        if src is None:
            log.warning(
                "feedback %s for event %s ignored: no crop kept for that id (unknown, or expired: "
                "%s keeps the last %d)",
                fb.label,
                fb.id,
                self.store.dir,
                self.store.max_crops,
            )
            return None
        dst = self.target(fb)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        for old in self._copies(fb.id):  # relabelled: drop the earlier verdict so the dataset never says both
            if old != dst:
                old.unlink(missing_ok=True)
        self.filed += 1
        log.info("feedback %s for event %s: crop filed as %s", fb.label, fb.id, dst.relative_to(self.dataset))
        return dst

    def _copies(self, event_id: str) -> list[Path]:
        name = f"{event_id}.png"
        out = [self.dataset / "train" / "good" / name]
        test = self.dataset / "test"
        if test.is_dir():
            out += [d / name for d in test.iterdir() if d.is_dir()]
        return [p for p in out if p.is_file()]

    def on_message(self, topic: str, payload: bytes) -> None:
        """The MQTT handler: never raises (one log line per problem)."""
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("feedback on %s ignored: not JSON (%s)", topic, exc)
            return
        try:
            fb = validate_feedback(doc)
        except ValueError as exc:
            log.warning("feedback on %s ignored: %s", topic, exc)
            return
        try:
            self.file(fb)
        except OSError as exc:
            log.warning("feedback %s for event %s not filed in %s (%s)", fb.label, fb.id, self.dataset, exc)
        if self.on_label is not None:
            self.on_label(fb.id, fb.label, self.store.path(fb.id))
