"""Per-slot gating: decide, cheaply, when a plate stands still in a slot and must be scored — once.

Why a gate in front of the model: hands, arms and sliding plates are not dishes, and one dish must give one
event. Everything here works on the slot downscaled to gate.analysis_width and blurred (a few thousand pixels),
so a quiet pass costs a resize and two absdiffs per slot and frame. Colour is kept, not greyed: skin and steel can
have the same grey level. A pixel counts as changed when its largest channel difference exceeds diff_threshold.

States (published on <base>/<slot>/state):
  empty    the slot matches its empty reference; the reference follows slow light changes (background_alpha)
  busy     something differs from the empty reference or moves, and it has not been still for still_seconds
  ok / anomaly   scored once; held while the plate stays

Rules:
  - empty -> busy when the slot differs from the empty reference (changed_fraction) or moves (motion_fraction).
  - busy -> score when nothing has moved for still_seconds and the slot is not empty; the still view is kept as
    the `held` reference. A moving hand is never scored because it is never still for still_seconds.
  - held (ok/anomaly): motion over the plate (a hand reaching in) does not rescore. When the slot has been still
    for still_seconds again and differs from the held view by more than rescore_fraction (the plate was swapped
    without the slot going empty), it is scored again. A nudge smaller than that keeps the verdict.
  - busy or held -> empty after the slot has matched the empty reference for empty_seconds. A plate removed and
    put back after that is a new dish and a new event.
  - The empty reference is learned from the first LEARN_FRAMES frames: the slot must be empty at start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import GateConfig, SlotConfig

log = logging.getLogger(__name__)

EMPTY, BUSY, OK, ANOMALY = "empty", "busy", "ok", "anomaly"
LEARNING = "learning"  # internal: the empty reference is not known yet (published as empty)
LEARN_FRAMES = 5


@dataclass(frozen=True)
class GateStep:
    state: str  # the state to publish
    score: bool  # True exactly once per dish: crop and score this frame
    changed: float  # fraction of pixels that differ from the empty reference
    motion: float  # fraction of pixels that changed since the previous frame


def crop(frame: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """The slot's pixels (clipped to the frame); a view, not a copy."""
    x, y, w, h = rect
    return frame[max(0, y) : y + h, max(0, x) : x + w]


class SlotGate:
    """The state machine of one slot. Feed it every processed frame with its capture time."""

    def __init__(self, slot: SlotConfig, cfg: GateConfig) -> None:
        self.slot, self.cfg = slot, cfg
        self.state = LEARNING
        self._ref: np.ndarray | None = None  # float32 empty reference
        self._learn: list[np.ndarray] = []
        self._prev: np.ndarray | None = None
        self._held: np.ndarray | None = None  # the view that was scored
        self._last_motion_t = 0.0
        self._last_busy_t = 0.0  # last time the slot was not matching the empty reference
        self._size: tuple[int, int] | None = None

    def _small(self, frame: np.ndarray) -> np.ndarray:
        c = crop(frame, self.slot.rect)
        if self._size is None:
            w = min(self.cfg.analysis_width, c.shape[1])
            self._size = (w, max(1, round(c.shape[0] * w / c.shape[1])))
        return cv2.GaussianBlur(cv2.resize(c, self._size, interpolation=cv2.INTER_AREA), (5, 5), 0)

    def _fraction(self, a: np.ndarray, b: np.ndarray) -> float:
        """Fraction of pixels whose largest channel difference exceeds gate.diff_threshold."""
        d = cv2.absdiff(a, b).max(axis=2)
        return cv2.countNonZero(cv2.threshold(d, self.cfg.diff_threshold, 255, cv2.THRESH_BINARY)[1]) / d.size

    def update(self, frame: np.ndarray, t: float) -> GateStep:
        """Advance with one frame captured at monotonic time `t`."""
        g = self._small(frame)
        motion = self._fraction(g, self._prev) if self._prev is not None else 0.0
        self._prev = g
        if self.state == LEARNING:
            self._learn.append(g.astype(np.float32))
            if len(self._learn) >= LEARN_FRAMES:
                self._ref = np.median(np.stack(self._learn), axis=0).astype(np.float32)
                self._learn = []
                self.state = EMPTY
                log.info("slot %s: empty reference learned", self.slot.id)
            return GateStep(EMPTY, False, 0.0, motion)

        assert self._ref is not None
        changed = self._fraction(g, cv2.convertScaleAbs(self._ref))
        is_empty = changed <= self.cfg.changed_fraction
        if motion > self.cfg.motion_fraction:
            self._last_motion_t = t
        if not is_empty:
            self._last_busy_t = t
        still = t - self._last_motion_t >= self.cfg.still_seconds
        score = False

        if self.state == EMPTY:
            if is_empty and motion <= self.cfg.motion_fraction:
                cv2.accumulateWeighted(g.astype(np.float32), self._ref, self.cfg.background_alpha)
            else:
                self.state = BUSY
                self._last_motion_t = t  # a dish is never scored on the frame it appears
                self._last_busy_t = t
        elif self.state == BUSY:
            if is_empty and t - self._last_busy_t >= self.cfg.empty_seconds:
                self.state = EMPTY
            elif not is_empty and still:
                score = True
        else:  # OK / ANOMALY: held while the plate stays
            if is_empty and t - self._last_busy_t >= self.cfg.empty_seconds:
                self.state, self._held = EMPTY, None
            elif (
                not is_empty
                and still
                and self._held is not None
                and self._fraction(g, self._held) > self.cfg.rescore_fraction
            ):
                log.info("slot %s: the held dish changed and settled again; scoring again", self.slot.id)
                score = True
        if score:
            self._held = g
        return GateStep(self.state, score, changed, motion)

    @property
    def public_state(self) -> str:
        """The state to publish: learning the empty reference is shown as empty."""
        return EMPTY if self.state == LEARNING else self.state

    def set_verdict(self, anomalous: bool) -> str:
        """Record the scorer's verdict for the dish just scored; returns the new state."""
        self.state = ANOMALY if anomalous else OK
        return self.state
