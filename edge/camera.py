"""Frame sources and the grabber thread that keeps only the newest frame.

Why a thread that overwrites: the pass is watched live. A scorer that is busy for 200 ms must see the pass as it
is *now*, not a queue of stale frames, so the grabber keeps one slot and counts what it overwrote (`dropped`).

Why the grabber also enforces camera.fps: a frame over the processing rate is only grabbed (the camera's
buffer advanced, for a stream the packet decoded), never converted to BGR or, for a V4L2 MJPEG camera, decoded:
that conversion is the larger half of a frame's cost. The daemon lowers the rate while the pass is quiet
(camera.idle_fps, `set_fps`): every slot empty or holding a scored dish, and nothing moving in any.

Why files are paced by the wall clock: a clip on disk stands in for a camera in tests, `make run` and the
benchmark, so it must play in real time (its native fps, or camera.fps when it has none); a grabber that falls
behind skips frames to catch up, as a real camera would.

Lost sources: a device or stream whose read fails, or that gives no frame for camera.stall_timeout_s, is
reopened with capped exponential backoff. A sparse stream (a frame every few seconds) is not lost: only the
stall timeout counts, never the gap between two frames. A video file or folder that ends without `loop` ends
the run (state `ended`). Bad frames (None, wrong dtype or shape, wrong size, flat grey, empty reads) are
counted per reason and skipped, never fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.config import CameraConfig
from edge.preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

CONNECTING, STREAMING, RECONNECTING, ENDED = "connecting", "streaming", "reconnecting", "ended"
MAX_FAILED_READS = 5  # consecutive failed reads of a live source before it is reopened
FLAT_RANGE = 2  # a frame whose grey levels span no more than this is a decoder's blank, not a scene


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR uint8 (h, w, 3)
    index: int  # frames accepted since start
    t: float  # time.monotonic() when grabbed
    wall: float  # time.time() when grabbed
    position_s: float | None  # position in a file source (seconds), None for live sources


class SourceEnded(Exception):
    """A non-looping file or folder reached its end."""


class SourceLost(Exception):
    """A source could not be opened or stopped giving frames."""


def source_kind(source: str) -> str:
    """`device`, `stream`, `file` or `folder`; the daemon and the grabber treat them differently."""
    if source.isdigit() or source.startswith("/dev/"):
        return "device"
    if "://" in source:
        return "stream"
    if Path(source).is_dir():
        return "folder"
    return "file"


class _CaptureSource:
    """cv2.VideoCapture over a device, a stream URL or a video file."""

    def __init__(self, source: str, kind: str, stall_timeout_s: float) -> None:
        self.source, self.kind, self.stall_ms = source, kind, int(stall_timeout_s * 1000)
        self.cap: cv2.VideoCapture | None = None
        self.fps = 0.0
        self.pos = 0  # frames read from a file since it was opened

    def open(self) -> None:
        if self.kind == "file" and not Path(self.source).is_file():
            raise SourceLost(f"{self.source}: no such file")
        target: str | int = int(self.source) if self.source.isdigit() else self.source
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            self.stall_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            self.stall_ms,
        ]
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            raise SourceLost(f"cannot open {self.source}")
        self.cap, self.pos = cap, 0
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not 0.5 <= self.fps <= 240:
            self.fps = 0.0

    def grab(self) -> bool:
        """Advance to the next frame without converting it."""
        ok = bool(self.cap is not None and self.cap.grab())
        self.pos += ok
        return ok

    def retrieve(self) -> object:
        """The grabbed frame as BGR, or None when it cannot be decoded."""
        if self.cap is None:
            return None
        ok, img = self.cap.retrieve()
        return img if ok else None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
        self.cap = None


class _FolderSource:
    """Sorted images of a folder, one per frame; an unreadable file is a garbage frame, a vanished folder is lost."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.files: list[Path] = []
        self.fps = 0.0
        self.pos = 0

    def open(self) -> None:
        d = Path(self.source)
        try:
            self.files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise SourceLost(f"{self.source}: {exc.strerror or exc}") from None
        if not self.files:
            raise SourceLost(f"{self.source}: no images")
        self.pos = 0

    def grab(self) -> bool:
        if self.pos >= len(self.files):
            return False
        self.pos += 1
        return True

    def retrieve(self) -> object:
        p = self.files[self.pos - 1]
        if not p.exists() and not Path(self.source).is_dir():
            raise SourceLost(f"{self.source}: folder vanished")
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        return img if img is not None else f"unreadable {p.name}"  # a garbage frame, counted

    def close(self) -> None:
        self.files = []


def frame_problem(img: object, want_hw: tuple[int, int] | None) -> str | None:
    """Why a decoded frame must be skipped (a counter name), or None when it is usable."""
    if img is None:
        return "empty"
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        return "garbage"
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 8 or img.shape[1] < 8:
        return "garbage"
    if want_hw is not None and img.shape[:2] != want_hw:
        return "wrong_size"
    small = img[:: max(1, img.shape[0] // 32), :: max(1, img.shape[1] // 32)]
    if int(small.max()) - int(small.min()) <= FLAT_RANGE:
        return "grey"
    return None


class Grabber:
    """Owns the source in a background thread; `get()` hands the newest unseen frame to the main loop."""

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self.kind = source_kind(cfg.source)
        self.state = CONNECTING
        self.frames = 0  # accepted frames
        self.dropped = 0  # accepted but overwritten before the main loop took them, or skipped to keep pace
        self.rate_skipped = 0  # grabbed but not converted: over the processing rate (camera.fps or idle_fps)
        self.skipped: Counter[str] = Counter()  # bad frames by reason
        self.reconnects = 0
        self.last_frame_t = 0.0  # monotonic time of the newest accepted frame (0 = none yet)
        self._want_hw = (cfg.height, cfg.width) if cfg.width and cfg.height else None
        self._period = 1.0 / cfg.fps  # the processing rate; set_fps changes it from the main loop
        self._next_due = 0.0  # monotonic time from which the next frame is converted and handed out
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grabber", daemon=True)

    # --- main-loop side ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def set_fps(self, fps: float) -> None:
        """Hand out at most `fps` frames a second from now on; a faster rate takes the very next frame."""
        period = 1.0 / fps
        if period < self._period:
            self._next_due = 0.0
        self._period = period

    @property
    def ended(self) -> bool:
        return self.state == ENDED

    def get(self, timeout: float) -> Frame | None:
        """The newest frame not handed out yet; None after `timeout` or once the source has ended."""
        with self._cond:
            if self._latest is None and not self.ended:
                self._cond.wait(timeout)
            f, self._latest = self._latest, None
            return f

    # --- grabber thread ---------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("camera %s: %s", self.cfg.id, state)
            self.state = state

    def _open(self) -> _CaptureSource | _FolderSource:
        src = (
            _FolderSource(self.cfg.source)
            if self.kind == "folder"
            else _CaptureSource(self.cfg.source, self.kind, self.cfg.stall_timeout_s)
        )
        src.open()
        return src

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                src = self._open()
            except SourceLost as exc:
                self._set_state(RECONNECTING if self.frames or self.reconnects else CONNECTING)
                log.warning("camera %s: %s; retrying in %.1f s", self.cfg.id, exc, backoff)
                self.reconnects += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                continue
            try:
                self._pump(src)
                backoff = 0.5
            except SourceEnded:
                src.close()
                self._finish()
                return
            except SourceLost as exc:
                log.warning("camera %s: source lost (%s)", self.cfg.id, exc)
                self._set_state(RECONNECTING)
                self.reconnects += 1
            finally:
                src.close()
            if not self._stop.is_set() and self.state == RECONNECTING:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reconnect_max_s)

    def _finish(self) -> None:
        with self._cond:
            self._set_state(ENDED)
            self._cond.notify_all()

    def _pump(self, src: _CaptureSource | _FolderSource) -> None:
        """Read until stopped, lost or ended; files and folders are paced to play in real time."""
        paced = self.kind in ("file", "folder")
        period = 1.0 / (src.fps or self.cfg.fps) if paced else 0.0
        t0 = time.monotonic()
        failed, last_ok = 0, time.monotonic()
        while not self._stop.is_set():
            if paced:
                due = t0 + src.pos * period
                lag = time.monotonic() - due
                if lag < 0:
                    self._stop.wait(-lag)
                    continue
                while lag > period and src.grab():  # behind the clock: skip as a live camera would
                    self.dropped += 1
                    lag -= period
            ok = src.grab()
            now = time.monotonic()
            if not ok:
                if paced:
                    if self.cfg.loop and self.frames:
                        src.close()
                        src.open()
                        t0 = time.monotonic()
                        continue
                    raise SourceEnded
                self.skipped["empty"] += 1
                failed += 1
                if failed >= MAX_FAILED_READS or now - last_ok > self.cfg.stall_timeout_s:
                    raise SourceLost(f"{failed} failed reads")
                continue
            failed = 0
            if not self._due(now):
                self.rate_skipped += 1
                continue
            img = src.retrieve()
            problem = frame_problem(img, self._want_hw)
            if problem is None and isinstance(img, np.ndarray) and self._want_hw is None:
                self._want_hw = img.shape[:2]  # the first good frame fixes the size
            if problem:
                self.skipped[problem] += 1
                if self.skipped.total() % 100 == 1:
                    log.warning(
                        "camera %s: skipped a %s frame (%s so far)", self.cfg.id, problem, self.skipped
                    )
                continue
            last_ok = now
            pos = (src.pos - 1) * period if paced else None
            self._publish(img, now, pos)

    def _due(self, now: float) -> bool:
        """Whether a frame grabbed at `now` is within the processing rate: a steady schedule, bounded catch-up."""
        period = self._period
        if now < self._next_due - period * 0.25:
            return False
        # A frame a little late lets the next one come a little early (the schedule holds); a fresh schedule
        # (start, or a higher rate) starts at this frame.
        self._next_due = max(self._next_due + period, now - period) if self._next_due else now + period
        return True

    def _publish(self, img: np.ndarray, now: float, pos: float | None) -> None:
        with self._cond:
            if self._latest is not None:
                self.dropped += 1
            self._latest = Frame(img, self.frames, now, time.time(), pos)
            self.frames += 1
            self.last_frame_t = now
            self._set_state(STREAMING)
            self._cond.notify_all()
