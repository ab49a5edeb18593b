"""Per-slot gating: decide, cheaply, when a plate stands still in a slot and must be scored — once.

Why a gate in front of the model: hands, arms and sliding plates are not dishes, and one dish must give one
event. Everything here works on the slot downscaled to gate.analysis_width and blurred (a few thousand pixels),
so a quiet pass costs a resize and two absdiffs per slot and frame. Colour is kept, not greyed: skin and steel can
have the same grey level. A pixel counts as changed when its largest channel difference exceeds diff_threshold.

Why a guard ring: "nothing moved for still_seconds" alone cannot tell a plate from a hand that pauses over it,
so the wait had to be long (1 s) and the event late. But a hand over a plate is always attached to a person
outside the slot: its arm crosses the slot's border. So each slot also watches a thin ring just outside its rect
(gate.guard_px wide, clipped to the frame), analysed at the slot's low resolution (four thin strips, about a
quarter of the slot's analysis pixels; while the slot is empty only every GUARD_IDLE_EVERY-th frame, so an idle
pass pays almost nothing). The ring is "blocked" (an arm may be in the slot) while
  - it moves (more than motion_fraction of its pixels changed since the previous frame), or
  - a region that differs from its empty reference connects the ring's inner edge (the slot border) to its outer
    edge: something crosses it. A plate's own shadow or rim spilling a little over the border touches only the
    inner edge, a neighbouring plate or a cloth at a distance only the outer edge: neither blocks.
With the ring clear, motion inside the slot is the plate settling, so a short still_seconds is enough.

States (published on <base>/<slot>/state):
  empty    the slot matches its empty reference; the reference follows slow light changes (background_alpha)
  busy     something differs from the empty reference or moves, and it has not been still for still_seconds
  ok / anomaly   scored once; held while the plate stays

Rules:
  - empty -> busy when the slot differs from the empty reference (changed_fraction) or moves (motion_fraction).
  - busy -> score when nothing has moved inside the slot for still_seconds, the guard ring does not move and
    nothing crossed it on this and the previous frame (GUARD_CLEAR_FRAMES: one clean frame may be a glitch of a
    resting arm) and the slot is not empty; the still view is kept as the `held` reference. A moving hand is
    never scored because it is never still; a resting hand is not scored because its arm blocks the ring.
  - held (ok/anomaly): motion over the plate (a hand reaching in) does not rescore. When the slot has been still
    for still_seconds again (ring clear) and differs from the held view by more than rescore_fraction (the plate
    was swapped without the slot going empty), it is scored again. A nudge smaller than that keeps the verdict.
  - busy or held -> empty after the slot has matched the empty reference for empty_seconds. A plate removed and
    put back after that is a new dish and a new event.
  - The empty references of slot and ring are learned from the first LEARN_FRAMES frames: the slot and its
    surroundings must be clear at start.
  - The ring reference follows slow light changes on its unchanged pixels while the ring is quiet. A static change
    that crosses the ring (a neighbour's plate or a tray overhanging the border, a box put down next to the slot)
    would block the slot for ever, so when the ring has been blocked but motionless for guard_relearn_seconds,
    the current view is learned as a second ("static") reference: the ring is clear when it matches either (so the
    neighbour's plate may come and go). A live arm rarely stays motionless that long, and any motion in the ring
    restarts the clock; an arm frozen for longer than guard_relearn_seconds is taken for furniture (then only
    still_seconds protects).
  - Limits: a slot side at (or a few pixels from) the frame edge has no ring there (an arm entering across that
    edge is not seen; a warning is logged). guard_px = 0 disables the ring: then still_seconds alone must
    outlast a pausing hand (about 1 s).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import GateConfig, SlotConfig

log = logging.getLogger(__name__)

EMPTY, BUSY, OK, ANOMALY = "empty", "busy", "ok", "anomaly"
LEARNING = "learning"  # internal: the empty reference is not known yet (published as empty)
LEARN_FRAMES = 5
GUARD_AUTO = 0.06  # gate.guard_px = -1: the ring is this fraction of the slot's shorter side ...
GUARD_MIN_CELLS = 3  # ... and at least this many analysis pixels thick, so "crossing" means something
GUARD_MIN_THICK = (
    2  # a side clipped by the frame to a thinner strip has no ring (one noisy pixel would cross it)
)
GUARD_CLEAR_FRAMES = 2  # nothing may cross the ring on this many consecutive frames before a score
GUARD_IDLE_EVERY = 8  # while the slot is empty the ring is only looked at every this many frames (idle CPU)
QUIET_SECONDS = 1.0  # nothing moved in the slot this long (empty or held): frames may come at camera.idle_fps


@dataclass(frozen=True)
class GateStep:
    state: str  # the state to publish
    score: bool  # True exactly once per dish: crop and score this frame
    changed: float  # fraction of pixels that differ from the empty reference
    motion: float  # fraction of pixels that changed since the previous frame
    guarded: bool = False  # the guard ring is blocked (an arm may be over the slot)


@dataclass(frozen=True)
class _Strip:
    """One side of the guard ring: a frame box, its analysis size and which lines touch the slot / the outside."""

    side: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels
    size: tuple[int, int]  # analysis (w, h)
    inner: tuple[int, int]  # (axis, index) of the line along the slot border
    outer: tuple[int, int]  # (axis, index) of the line farthest from the slot


def crop(frame: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """The slot's pixels (clipped to the frame); a view, not a copy."""
    x, y, w, h = rect
    return frame[max(0, y) : y + h, max(0, x) : x + w]


def changed_mask(a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 mask, 255 where any colour channel differs by more than `threshold`.

    OpenCV only (threshold per channel, then grey: any 255 channel gives a non-zero grey): numpy's max over the
    3-long channel axis costs more than all the rest of the gate."""
    t = cv2.threshold(cv2.absdiff(a, b), threshold, 255, cv2.THRESH_BINARY)[1]
    if t.ndim == 3:
        t = cv2.threshold(cv2.cvtColor(t, cv2.COLOR_BGR2GRAY), 0, 255, cv2.THRESH_BINARY)[1]
    return t


def _line(a: np.ndarray, where: tuple[int, int]) -> np.ndarray:
    axis, idx = where
    return a[idx, :] if axis == 0 else a[:, idx]


def _crosses(mask: np.ndarray, strip: _Strip) -> bool:
    """True when one 8-connected region of `mask` touches both the inner and the outer line of the strip."""
    if not mask.any():
        return False
    labels = cv2.connectedComponents(mask, connectivity=8)[1]
    inner, outer = _line(labels, strip.inner), _line(labels, strip.outer)
    return bool(np.intersect1d(inner[inner > 0], outer[outer > 0]).size)


def guard_strips(
    rect: tuple[int, int, int, int], frame_wh: tuple[int, int], guard_px: int, scale: float
) -> tuple[list[_Strip], list[str]]:
    """The ring's strips (top and bottom include the corners) clipped to the frame, and the sides without one."""
    W, H = frame_wh
    x, y, w, h = rect
    sx0, sy0, sx1, sy1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if guard_px < 0:
        guard_px = max(round(GUARD_AUTO * min(w, h)), math.ceil(GUARD_MIN_CELLS / scale))
    if guard_px == 0:
        return [], []
    ox0, oy0 = max(0, sx0 - guard_px), max(0, sy0 - guard_px)
    ox1, oy1 = min(W, sx1 + guard_px), min(H, sy1 + guard_px)
    boxes = {  # side: (box, inner line, outer line) with the lines as (axis, index); -1 = last
        "top": ((ox0, oy0, ox1, sy0), (0, -1), (0, 0)),
        "bottom": ((ox0, sy1, ox1, oy1), (0, 0), (0, -1)),
        "left": ((ox0, sy0, sx0, sy1), (1, -1), (1, 0)),
        "right": ((sx1, sy0, ox1, sy1), (1, 0), (1, -1)),
    }
    strips, blind = [], []
    for side, (box, inner, outer) in boxes.items():
        bw, bh = box[2] - box[0], box[3] - box[1]
        if bw <= 0 or bh <= 0:
            blind.append(side)
            continue
        size = (max(1, round(bw * scale)), max(1, round(bh * scale)))
        if (size[1] if side in ("top", "bottom") else size[0]) < GUARD_MIN_THICK:
            blind.append(side)
            continue
        strips.append(_Strip(side, box, size, inner, outer))
    return strips, blind


class _Ring:
    """The guard ring of one slot: references, previous view and the blocked / clear bookkeeping."""

    def __init__(self, strips: list[_Strip], cfg: GateConfig) -> None:
        self.strips, self.cfg = strips, cfg
        self.n_px = sum(s.size[0] * s.size[1] for s in strips)
        self.ref: list[np.ndarray] | None = None  # float32 empty reference per strip
        self.static: list[np.ndarray] | None = None  # a learned static change (see the module docstring)
        self.learn: list[list[np.ndarray]] = []
        self.prev: list[np.ndarray] | None = None
        self.quiet_blocked_since: float | None = None
        self.uncrossed_frames = 0  # consecutive updates without a crossing
        self.moving = True

    @property
    def clear(self) -> bool:
        """No arm: nothing crossed the ring on the last GUARD_CLEAR_FRAMES frames and it does not move now."""
        return not self.moving and self.uncrossed_frames >= GUARD_CLEAR_FRAMES

    def views(self, frame: np.ndarray) -> list[np.ndarray]:
        out = []
        for s in self.strips:
            x0, y0, x1, y1 = s.box
            v = cv2.resize(frame[y0:y1, x0:x1], s.size, interpolation=cv2.INTER_AREA)
            out.append(cv2.GaussianBlur(v, (5, 5), 0))
        return out

    def _masks(self, views: list[np.ndarray], refs: list[np.ndarray]) -> list[np.ndarray]:
        thr = self.cfg.diff_threshold
        return [changed_mask(v, cv2.convertScaleAbs(r), thr) for v, r in zip(views, refs, strict=True)]

    def _crossing(self, masks: list[np.ndarray]) -> bool:
        return any(_crosses(m, s) for m, s in zip(masks, self.strips, strict=True))

    def _follow(self, views: list[np.ndarray], refs: list[np.ndarray], masks: list[np.ndarray]) -> None:
        """Slow light changes: blend the view into the reference where it still matches."""
        for v, r, m in zip(views, refs, masks, strict=True):
            cv2.accumulateWeighted(
                v.astype(np.float32), r, self.cfg.background_alpha, mask=cv2.bitwise_not(m)
            )

    def learn_frame(self, frame: np.ndarray) -> None:
        views = self.views(frame)
        self.prev = views
        self.learn.append([v.astype(np.float32) for v in views])
        if len(self.learn) >= LEARN_FRAMES:
            self.ref = [
                np.median(np.stack(vs), axis=0).astype(np.float32) for vs in zip(*self.learn, strict=True)
            ]
            self.learn = []

    def update(self, frame: np.ndarray, t: float, slot_id: str) -> bool:
        """Advance with one frame; True when the ring is blocked (an arm may be over the slot)."""
        assert self.ref is not None
        views = self.views(frame)
        moved = 0
        if self.prev is not None:
            thr = self.cfg.diff_threshold
            moved = sum(
                cv2.countNonZero(changed_mask(v, p, thr)) for v, p in zip(views, self.prev, strict=True)
            )
        self.prev = views
        self.moving = moving = moved > max(
            2.0, self.cfg.motion_fraction * self.n_px
        )  # never 1-2 noisy pixels
        masks = self._masks(views, self.ref)
        crossing = self._crossing(masks)
        if not crossing:
            if not moving:
                self._follow(views, self.ref, masks)
        elif self.static is not None:
            smasks = self._masks(views, self.static)
            crossing = self._crossing(smasks)
            if not crossing and not moving:
                self._follow(views, self.static, smasks)
        if crossing and not moving:
            if self.quiet_blocked_since is None:
                self.quiet_blocked_since = t
            elif t - self.quiet_blocked_since >= self.cfg.guard_relearn_seconds:
                log.info(
                    "slot %s: a still change across the guard ring for %.1f s is learned as background",
                    slot_id,
                    t - self.quiet_blocked_since,
                )
                self.static = [v.astype(np.float32) for v in views]
                self.quiet_blocked_since, crossing = None, False
        else:
            self.quiet_blocked_since = None
        self.uncrossed_frames = 0 if crossing else self.uncrossed_frames + 1
        return moving or crossing


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
        self._ring: _Ring | None = None  # built on the first frame (needs the frame size); None = no ring
        self._frames = 0

    def _small(self, frame: np.ndarray) -> np.ndarray:
        c = crop(frame, self.slot.rect)
        if self._size is None:
            w = min(self.cfg.analysis_width, c.shape[1])
            self._size = (w, max(1, round(c.shape[0] * w / c.shape[1])))
            self._make_ring(frame, w / c.shape[1])
        return cv2.GaussianBlur(cv2.resize(c, self._size, interpolation=cv2.INTER_AREA), (5, 5), 0)

    def _make_ring(self, frame: np.ndarray, scale: float) -> None:
        strips, blind = guard_strips(
            self.slot.rect, (frame.shape[1], frame.shape[0]), self.cfg.guard_px, scale
        )
        if strips:
            self._ring = _Ring(strips, self.cfg)
        if blind:
            log.warning(
                "slot %s: no guard ring on the %s side (the slot is at the frame edge): an arm entering there is"
                " not seen",
                self.slot.id,
                "/".join(blind),
            )

    def _fraction(self, a: np.ndarray, b: np.ndarray) -> float:
        """Fraction of pixels whose largest channel difference exceeds gate.diff_threshold."""
        m = changed_mask(a, b, self.cfg.diff_threshold)
        return cv2.countNonZero(m) / m.size

    def update(self, frame: np.ndarray, t: float) -> GateStep:
        """Advance with one frame captured at monotonic time `t`."""
        g = self._small(frame)
        motion = self._fraction(g, self._prev) if self._prev is not None else 0.0
        self._prev = g
        if self.state == LEARNING:
            self._learn.append(g.astype(np.float32))
            if self._ring is not None:
                self._ring.learn_frame(frame)
            if len(self._learn) >= LEARN_FRAMES:
                self._ref = np.median(np.stack(self._learn), axis=0).astype(np.float32)
                self._learn = []
                self.state = EMPTY
                log.info("slot %s: empty reference learned", self.slot.id)
            return GateStep(EMPTY, False, 0.0, motion)

        assert self._ref is not None
        self._frames += 1
        # An empty slot needs the ring only to follow the light and learn static changes: look at it sparsely.
        ring_due = self._ring is not None and (self.state != EMPTY or self._frames % GUARD_IDLE_EVERY == 0)
        guarded = self._ring.update(frame, t, self.slot.id) if ring_due else False
        ring_clear = self._ring is None or self._ring.clear
        changed = self._fraction(g, cv2.convertScaleAbs(self._ref))
        is_empty = changed <= self.cfg.changed_fraction
        if motion > self.cfg.motion_fraction:
            self._last_motion_t = t
        if not is_empty:
            self._last_busy_t = t
        still = t - self._last_motion_t >= self.cfg.still_seconds and ring_clear
        score = False

        if self.state == EMPTY:
            if is_empty and motion <= self.cfg.motion_fraction:
                cv2.accumulateWeighted(g.astype(np.float32), self._ref, self.cfg.background_alpha)
            else:
                self.state = BUSY
                self._last_motion_t = t  # a dish is never scored on the frame it appears
                if self._ring is not None:
                    self._ring.uncrossed_frames = (
                        0  # sparse idle looks do not count: clear frames must follow
                    )
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
        return GateStep(self.state, score, changed, motion, guarded)

    def quiet(self, t: float) -> bool:
        """Empty or holding a scored dish, and nothing moved in the slot for QUIET_SECONDS.

        Why a held dish counts: plates wait at the pass for their pickup far longer than they take to arrive, and
        nothing about a still, scored plate needs 15 frames a second; the hand that takes it away or swaps it
        moves in the slot, which ends the quiet on the next (idle-rate) frame."""
        return self.state in (EMPTY, OK, ANOMALY) and t - self._last_motion_t >= QUIET_SECONDS

    @property
    def public_state(self) -> str:
        """The state to publish: learning the empty reference is shown as empty."""
        return EMPTY if self.state == LEARNING else self.state

    def set_verdict(self, anomalous: bool) -> str:
        """Record the scorer's verdict for the dish just scored; returns the new state."""
        self.state = ANOMALY if anomalous else OK
        return self.state
