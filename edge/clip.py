"""`python -m edge clip`: render a synthetic service clip of the pass, with a timeline of what happens when.

Why: the daemon must be tested and benchmarked on what a fixed camera over a pass sees — a counter, plates slid
into slots by a hand that occludes them while it moves, plates resting, then taken away — with a ground truth
to compare its events with. Plates are the dataset's own test images (edge must not import train/, so the MVTec
`test/<defect>/**` folders are read directly); good and anomalous plates alternate, so a model that knows the
dataset gives a known verdict per plate.

Timeline (JSON): video, size, fps, duration_s, slots [{id, rect}], plates [{slot, image, defect, anomalous,
t_enter, t_still_start, t_still_end, t_leave}] in seconds from the first frame. The still window is measured on
the rendered frames: the plate rests and no part of the hand overlaps the slot.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import UserError
from edge.preprocess import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)

SLIDE_S = 1.2  # a plate slides in (or out) this long, carried by the hand
RETRACT_S = 0.8  # the hand leaves (or comes back) this long
SLOT_STAGGER_S = 1.3  # slots start this much apart so hands overlap in time
SKIN = np.array([105, 150, 205], np.float32)  # BGR
SLOT_NAMES = {1: ["centre"], 2: ["left", "right"], 3: ["left", "centre", "right"]}


@dataclass(frozen=True)
class Plate:
    slot: int
    image: str
    defect: str
    t_enter: float
    t_rest: float  # reaches its resting place
    t_hand_out: float  # hand out of the frame
    t_hand_back: float  # hand starts coming back
    t_grab: float  # hand holds the plate again
    t_gone: float  # plate out of the frame

    @property
    def anomalous(self) -> bool:
        return self.defect != "good"


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size: expected WxH such as 1280x720, got {text!r}") from None
    if w < 64 or h < 48:
        raise UserError(f"--size: at least 64x48, got {text}")
    return w, h


def slot_rects(w: int, h: int, n: int) -> list[tuple[int, int, int, int]]:
    """Where the slots are for a frame size: squares of 40 % of the height, evenly spaced, in the upper part."""
    side = int(0.4 * h) // 2 * 2
    gap = (w - n * side) / (n + 1)
    if gap < 4:
        raise UserError(f"--slots: {n} slots do not fit a {w}x{h} frame")
    return [(int(gap + i * (side + gap)), int(0.12 * h), side, side) for i in range(n)]


def slot_ids(n: int) -> list[str]:
    return SLOT_NAMES.get(n, [f"slot{i + 1}" for i in range(n)])


def test_images(data: Path, defect: str | None = None) -> tuple[list[Path], dict[str, list[Path]]]:
    """(good test images, {defect: images}) of an MVTec-layout dataset."""
    test = data / "test"
    if not test.is_dir():
        raise UserError(f"--data: {data} has no test split (expected {test}/good and {test}/<defect>)")

    def images(d: Path) -> list[Path]:
        return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    good = images(test / "good") if (test / "good").is_dir() else []
    defects = {d.name: images(d) for d in sorted(test.iterdir()) if d.is_dir() and d.name != "good"}
    defects = {k: v for k, v in defects.items() if v and (defect is None or k == defect)}
    if defect is not None and not defects:
        raise UserError(f"--defect: no images in {test / defect}")
    if not good and not defects:
        raise UserError(f"--data: {test} holds no images")
    return good, defects


def schedule(
    n_plates: int, n_slots: int, rest: float, gap: float, lead_in: float, good: list, defects: dict, rng
) -> list[Plate]:
    """Plates alternate good / anomalous (when both exist) and go round-robin over the slots."""
    free = [lead_in + i * SLOT_STAGGER_S for i in range(n_slots)]
    names = sorted(defects)
    plates = []
    for k in range(n_plates):
        s = k % n_slots
        want_bad = (k % 2 == 1 and names) or not good
        if want_bad:
            name = names[(k // 2) % len(names)]
            img, defect = defects[name][int(rng.integers(len(defects[name])))], name
        else:
            img, defect = good[int(rng.integers(len(good)))], "good"
        t0 = free[s]
        t_rest = t0 + SLIDE_S
        t_out = t_rest + RETRACT_S
        t_back = t_out + rest
        t_grab = t_back + RETRACT_S
        t_gone = t_grab + SLIDE_S
        plates.append(Plate(s, str(img), defect, t0, t_rest, t_out, t_back, t_grab, t_gone))
        free[s] = t_gone + gap
    return plates


def _ease(a: float, b: float, f: float) -> float:
    f = min(1.0, max(0.0, f))
    return a + (b - a) * (0.5 - 0.5 * math.cos(math.pi * f))


def counter_texture(w: int, h: int, rng) -> np.ndarray:
    """Brushed steel: horizontal streaks, a soft light falloff and a darker front edge."""
    noise = rng.normal(0, 22, (h, w)).astype(np.float32)
    streaks = cv2.blur(noise, (max(3, w // 12) | 1, 1))
    ys = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    grey = 150 + streaks * 2.0 + 25 * (1 - ys) - 18 * xs**2
    grey[int(0.9 * h) :] -= 45  # the front edge of the pass
    tex = np.stack([grey + 6, grey + 2, grey - 2], axis=-1)
    return np.clip(tex, 0, 255).astype(np.uint8)


def _plate_sprite(path: str, w: int, h: int, shape: str) -> tuple[np.ndarray, np.ndarray]:
    img = cv2.resize(read_image(path), (w, h), interpolation=cv2.INTER_LINEAR)
    mask = np.zeros((h, w), np.float32)
    if shape == "circle":
        cv2.ellipse(mask, (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    else:
        mask[:] = 1.0
    return img.astype(np.float32), mask[..., None]


def _paste(frame: np.ndarray, sprite: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    h, w = mask.shape[:2]
    fy0, fy1, fx0, fx1 = max(0, y), min(frame.shape[0], y + h), max(0, x), min(frame.shape[1], x + w)
    if fy0 >= fy1 or fx0 >= fx1:
        return
    sy0, sx0 = fy0 - y, fx0 - x
    m = mask[sy0 : sy0 + fy1 - fy0, sx0 : sx0 + fx1 - fx0]
    s = sprite[sy0 : sy0 + fy1 - fy0, sx0 : sx0 + fx1 - fx0]
    region = frame[fy0:fy1, fx0:fx1]
    region[:] = region * (1 - m) + s * m


def _draw_hand(frame: np.ndarray, cx: int, top: int, size: int) -> tuple[int, int, int, int]:
    """A skin-coloured hand and arm reaching up from the bottom edge; returns its bounding box (x, y, w, h)."""
    h, w = frame.shape[:2]
    palm_w, palm_h = int(0.55 * size), int(0.38 * size)
    arm_w = int(0.34 * size)
    x0 = cx - palm_w // 2 - 2
    box = (x0, top, palm_w + 4, h - top)
    if top >= h:
        return box
    mask = np.zeros((h, w), np.uint8)
    finger_w = palm_w // 4
    for i in range(4):  # fingers over the plate's edge
        fx = cx - palm_w // 2 + finger_w // 2 + i * finger_w
        cv2.ellipse(mask, (fx, top + palm_h // 3), (finger_w // 2 - 1, palm_h // 3), 0, 0, 360, 255, -1)
    cv2.ellipse(mask, (cx, top + palm_h * 2 // 3), (palm_w // 2, palm_h // 2), 0, 0, 360, 255, -1)
    cv2.rectangle(mask, (cx - arm_w // 2, top + palm_h * 2 // 3), (cx + arm_w // 2, h), 255, -1)
    y0 = max(0, top)
    m = mask[y0:].astype(np.float32) / 255.0
    soft = cv2.GaussianBlur(m, (0, 0), max(1.0, size / 40))  # rounded, shaded: darker towards the edges
    shade = (0.55 + 0.45 * soft)[..., None] * SKIN
    region = frame[y0:]
    mm = np.minimum(1.0, m * 1.0)[..., None]
    region[:] = region * (1 - mm) + shade * mm
    return box


def _intersects(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def render(
    out: Path,
    timeline: Path,
    data: Path,
    seed: int = 0,
    size: tuple[int, int] = (1280, 720),
    fps: float = 15.0,
    n_slots: int = 2,
    n_plates: int = 6,
    rest: float = 4.0,
    gap: float = 1.5,
    lead_in: float = 1.5,
    defect: str | None = None,
    shape: str = "square",
) -> dict[str, Any]:
    """Write the clip and its timeline; returns the timeline. Falls back to MJPG .avi when mp4v cannot be read back."""
    if n_slots < 1 or n_slots > 4:
        raise UserError(f"--slots: 1 to 4, got {n_slots}")
    if n_plates < 1 or fps <= 0 or rest <= 0 or gap < 0 or lead_in < 0:
        raise UserError("--plates, --fps, --rest must be positive and --gap, --lead-in >= 0")
    rng = np.random.default_rng(seed)
    w, h = size
    rects = slot_rects(w, h, n_slots)
    good, defects = test_images(data, defect)
    plates = schedule(n_plates, n_slots, rest, gap, lead_in, good, defects, rng)
    duration = max(p.t_gone for p in plates) + gap + 1.0
    n_frames = int(math.ceil(duration * fps))
    base = counter_texture(w, h, rng).astype(np.float32)
    noise = [rng.normal(0, 2.0, (h, w, 3)).astype(np.float32) for _ in range(6)]
    sprites = {
        i: _plate_sprite(p.image, rects[p.slot][2], rects[p.slot][3], shape) for i, p in enumerate(plates)
    }
    still: dict[int, list[float]] = {i: [] for i in range(len(plates))}
    inside: dict[int, list[float]] = {i: [] for i in range(len(plates))}

    writer, path = _open_writer(out, fps, (w, h))
    try:
        for k in range(n_frames):
            t = k / fps
            frame = base.copy()
            hands = []
            for i, p in enumerate(plates):
                if not p.t_enter <= t < p.t_gone:
                    continue
                x, ry, pw, ph = rects[p.slot]
                if t < p.t_rest:
                    y = _ease(h, ry, (t - p.t_enter) / SLIDE_S)
                elif t < p.t_grab:
                    y = ry
                else:
                    y = _ease(ry, h, (t - p.t_grab) / SLIDE_S)
                yi = int(round(y))
                shadow = np.zeros_like(sprites[i][1])
                shadow[:] = sprites[i][1] * 0.35
                _paste(frame, np.zeros_like(sprites[i][0]), shadow, x + pw // 30, yi + ph // 25)
                _paste(frame, *sprites[i], x, yi)
                grip = yi + ph - int(0.12 * ph)
                if t < p.t_rest or t >= p.t_grab:
                    top = grip
                elif t < p.t_hand_out:
                    top = int(_ease(grip, h, (t - p.t_rest) / RETRACT_S))
                elif t < p.t_hand_back:
                    top = h
                else:
                    top = int(_ease(h, grip, (t - p.t_hand_back) / RETRACT_S))
                hands.append((i, x + pw // 2, top, pw))
                if _intersects((x, yi, pw, ph), rects[p.slot]):
                    inside[i].append(t)
            for i, cx, top, pw in hands:
                box = _draw_hand(frame, cx, top, pw)
                p = plates[i]
                if p.t_rest <= t < p.t_grab and not _intersects(box, rects[p.slot]):
                    still[i].append(t)
            gain = 1.0 + 0.015 * math.sin(2 * math.pi * t / 2.3) + float(rng.normal(0, 0.004))
            frame = frame * gain + noise[k % len(noise)]
            writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    finally:
        writer.release()
    path = _verify_or_fallback(path, out, timeline, locals())
    ids = slot_ids(n_slots)
    tl = {
        "video": str(path),
        "size": [w, h],
        "fps": fps,
        "frames": n_frames,
        "duration_s": round(n_frames / fps, 3),
        "seed": seed,
        "slots": [{"id": ids[i], "rect": list(r)} for i, r in enumerate(rects)],
        "plates": [
            {
                "slot": ids[p.slot],
                "image": p.image,
                "defect": p.defect,
                "anomalous": p.anomalous,
                "t_enter": round(p.t_enter, 3),
                "t_still_start": round(min(still[i]), 3) if still[i] else None,
                "t_still_end": round(max(still[i]) + 1 / fps, 3) if still[i] else None,
                "t_leave": round(max(inside[i]) + 1 / fps, 3) if inside[i] else round(p.t_gone, 3),
            }
            for i, p in enumerate(plates)
        ],
    }
    timeline.parent.mkdir(parents=True, exist_ok=True)
    timeline.write_text(json.dumps(tl, indent=2) + "\n")
    return tl


def _open_writer(out: Path, fps: float, size: tuple[int, int], fourcc: str = "mp4v") -> tuple[Any, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        writer.release()
        if fourcc == "mp4v":
            return _open_writer(out.with_suffix(".avi"), fps, size, "MJPG")
        raise UserError(f"--out: cannot write a video to {out}")
    return writer, out


def _readable(path: Path) -> bool:
    cap = cv2.VideoCapture(str(path))
    ok = cap.isOpened() and cap.read()[0]
    cap.release()
    return bool(ok)


def _verify_or_fallback(path: Path, out: Path, timeline: Path, args: dict) -> Path:
    """Read the clip back; an unreadable mp4v file is re-rendered as MJPG .avi."""
    if _readable(path):
        return path
    if path.suffix.lower() == ".avi":
        raise UserError(f"--out: {path} was written but cannot be read back")
    log.warning("%s cannot be read back; writing MJPG .avi instead", path)
    path.unlink(missing_ok=True)
    kw = {
        k: args[k]
        for k in (
            "data",
            "seed",
            "size",
            "fps",
            "n_slots",
            "n_plates",
            "rest",
            "gap",
            "lead_in",
            "defect",
            "shape",
        )
    }
    return Path(render(out.with_suffix(".avi"), timeline, **kw)["video"])


def cli_main(args: Any) -> int:
    tl = render(
        Path(args.out),
        Path(args.timeline),
        Path(args.data),
        seed=args.seed,
        size=parse_size(args.size),
        fps=args.fps,
        n_slots=args.slots,
        n_plates=args.plates,
        rest=args.rest,
        gap=args.gap,
        lead_in=args.lead_in,
        defect=args.defect,
        shape=args.shape,
    )
    print(
        f"{tl['video']}: {tl['frames']} frames, {tl['duration_s']} s, {len(tl['plates'])} plates; timeline {args.timeline}"
    )
    return 0
