"""Rendering primitives of the synthetic dish generator: noise fields, counter textures, lighting, compositing.

Why its own module: the food painters (`train.synth_food`) and the daemon's clip maker both need the same
counter, light and camera model, and none of it needs more than numpy + OpenCV. Every function takes its random
generator as an argument: no global random state, so an image is a pure function of its seed.

Conventions: images are float32 BGR in [0, 1]; heights are in pixels (a bump of height h over a run of h pixels
is a 45 degree slope); a `Paint` is one component rendered in its own small patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

F32 = np.float32
COUNTER_KINDS = ("steel", "wood", "stone")


def col(bgr: tuple[float, float, float]) -> np.ndarray:
    """A BGR 0..255 triple as a float32 unit colour."""
    return np.asarray(bgr, dtype=F32) / 255.0


def fbm(
    rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 3, stretch: float = 1.0
) -> np.ndarray:
    """Band-limited noise (fractal sum of upsampled white noise), about zero mean and unit spread.

    `cell` is the feature size in pixels of the coarsest octave; `stretch` > 1 elongates features along x
    (brushed metal, wood grain, meat fibres). Upsampling small random grids is far cheaper than blurring.
    """
    out = np.zeros((h, w), F32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        gh = max(2, int(h / cell) + 2)
        gw = max(2, int(w / (cell * stretch)) + 2)
        small = rng.standard_normal((gh, gw)).astype(F32)
        out += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp * amp
        amp *= 0.5
        cell = max(cell / 2.0, 1.0)
    return out * F32(1.8 / math.sqrt(total))


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colour images or colours `a` -> `b` by a (H, W) weight."""
    if t.ndim == 2 and (np.ndim(a) == 3 or np.ndim(b) == 3 or np.ndim(a) == 1 or np.ndim(b) == 1):
        t = t[..., None]
    return a + (b - a) * t


# --- the counter -------------------------------------------------------------------------------------


def render_counter(rng: np.random.Generator, h: int, w: int, kind: str | None = None) -> np.ndarray:
    """A textured pass counter (brushed steel, wood grain or stone), float32 BGR (h, w, 3) in [0, 1].

    Public for the daemon's clip maker: a clip's empty pass must look like the background of the training
    photos. `kind` is one of COUNTER_KINDS, or None for a random one (steel most often, as on most passes).
    Deterministic for the state of `rng`; about 1 ms at 256 px.
    """
    if kind is None:
        kind = str(rng.choice(COUNTER_KINDS, p=[0.5, 0.25, 0.25]))
    if kind not in COUNTER_KINDS:
        raise ValueError(f"counter kind must be one of {COUNTER_KINDS}, not {kind!r}")
    scale = max(h, w) / 256.0
    transpose = bool(rng.random() < 0.5)
    hh, ww = (w, h) if transpose else (h, w)  # grain runs along x of the (hh, ww) canvas
    if kind == "steel":
        tone = rng.uniform(0.55, 0.72)
        base = np.array([tone * rng.uniform(1.0, 1.03), tone, tone * rng.uniform(0.97, 1.0)], F32)
        brushed = fbm(rng, hh, ww, 3.0 * scale, octaves=2, stretch=30.0) * 0.02
        lines = cv2.resize(rng.standard_normal((hh, max(2, ww // 64))).astype(F32), (ww, hh)) * 0.02
        fine = rng.standard_normal((hh, ww)).astype(F32) * 0.01
        brushed = brushed + lines
        sheen = fbm(rng, hh, ww, 90.0 * scale, octaves=2) * 0.05
        img = base[None, None, :] * (1.0 + brushed + sheen + fine)[..., None]
        # a soft reflection of the kitchen lights: a bright band across the steel
        y = np.linspace(-1, 1, hh, dtype=F32)[:, None]
        x = np.linspace(-1, 1, ww, dtype=F32)[None, :]
        a = rng.uniform(0, math.pi)
        d = (x * math.cos(a) + y * math.sin(a)) - rng.uniform(-0.8, 0.8)
        img = (
            img + (np.exp(-(d * d) / (2 * rng.uniform(0.08, 0.25) ** 2)) * rng.uniform(0.05, 0.16))[..., None]
        )
        scratches = _scratches(rng, hh, ww, scale)
        img = img + scratches[..., None] * 0.06
    elif kind == "wood":
        red = rng.uniform(175, 215)
        light = col((red * rng.uniform(0.52, 0.62), red * rng.uniform(0.74, 0.8), red))
        dark = light * rng.uniform(0.6, 0.72)
        y = np.arange(hh, dtype=F32)[:, None] / scale
        warp = fbm(rng, hh, ww, 50.0 * scale, octaves=3, stretch=5.0) * rng.uniform(4.0, 9.0)
        period = rng.uniform(5.0, 9.0)
        phase = (y + warp) / period + 0.25 * fbm(rng, hh, ww, 20.0 * scale, octaves=2, stretch=8.0)
        rings = (phase - np.floor(phase)) ** 4  # growth rings: a sharp dark latewood line each period
        streak = fbm(rng, hh, ww, 1.5 * scale, octaves=2, stretch=25.0) * 0.05
        img = lerp(light, dark, np.clip(rings * 0.9 + 0.15 * fbm(rng, hh, ww, 30.0 * scale, 2), 0, 1))
        img = img * (1.0 + streak)[..., None]
        plank = rng.uniform(70.0, 120.0) * scale
        tone = np.ones((hh, 1), F32)
        for i, sy in enumerate(np.arange(rng.uniform(0, plank), hh, plank)):
            tone[int(sy) :] = 1.0 + 0.06 * math.sin(i * 2.3 + rng.uniform(0, 6.3))
            tone[int(sy) : int(sy + max(1.0, scale))] *= 0.6
        img = img * tone[..., None]
    else:
        v = rng.uniform(120, 200)
        base = col((v * rng.uniform(0.93, 0.99), v * rng.uniform(0.97, 1.0), v))
        mottled = fbm(rng, hh, ww, 25.0 * scale, octaves=4) * 0.05
        img = base[None, None, :] * (1.0 + mottled)[..., None]
        speck = rng.random((hh, ww)).astype(F32)
        dark = cv2.GaussianBlur((speck > 0.93).astype(F32), (0, 0), 0.6 * scale)
        bright = cv2.GaussianBlur((speck < 0.03).astype(F32), (0, 0), 0.6 * scale)
        img = img * (1.0 - 0.35 * dark)[..., None] + 0.12 * bright[..., None]
        if rng.random() < 0.3:  # a marble vein or two where a turbulent field crosses a level
            v = fbm(rng, hh, ww, 120.0 * scale, octaves=4) + np.linspace(-1.5, 1.5, ww, dtype=F32)[None, :]
            veins = np.exp(-np.abs(v - rng.uniform(-0.5, 0.5)) * 25)
            img = img * (1.0 - 0.2 * veins)[..., None]
    if transpose:
        img = np.ascontiguousarray(img.transpose(1, 0, 2))
    return np.clip(img, 0.0, 1.0).astype(F32)


def _scratches(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """A few faint hairline scratches on steel, mostly along the brushing direction."""
    m = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        ang = rng.normal(0, 0.15) + (0 if rng.random() < 0.8 else rng.uniform(0, math.pi))
        length = rng.uniform(0.1, 0.5) * w
        x1, y1 = x0 + length * math.cos(ang), y0 + length * math.sin(ang)
        cv2.line(m, _p(x0, y0), _p(x1, y1), int(rng.integers(60, 200)), 1, cv2.LINE_AA, 4)
    return m.astype(F32) / 255.0


# --- geometry helpers for painters --------------------------------------------------------------------

SHIFT = 4  # fractional bits for sub-pixel OpenCV drawing
ONE = 1 << SHIFT


def _p(x: float, y: float) -> tuple[int, int]:
    return round(x * ONE), round(y * ONE)


def pts(xy: np.ndarray) -> np.ndarray:
    """Float (N, 2) points -> int32 sub-pixel points for cv2 drawing with shift=SHIFT."""
    return np.round(np.asarray(xy, np.float64) * ONE).astype(np.int32)


def superellipse(
    cx: float, cy: float, a: float, b: float, angle: float, n: float = 2.0, count: int = 96
) -> np.ndarray:
    """Outline of |x/a|^n + |y/b|^n = 1 turned by `angle` radians: n=2 ellipse, n>=4 rounded rectangle."""
    t = np.linspace(0, 2 * math.pi, count, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = a * np.sign(c) * np.abs(c) ** (2.0 / n)
    y = b * np.sign(s) * np.abs(s) ** (2.0 / n)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([cx + x * ca - y * sa, cy + x * sa + y * ca], axis=1)


def blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    a: float,
    b: float,
    angle: float,
    wobble: float = 0.1,
    n: float = 2.0,
    count: int = 64,
) -> np.ndarray:
    """An irregular organic outline: a superellipse whose radius is modulated by a few random harmonics."""
    t = np.linspace(0, 2 * math.pi, count, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 5):
        r += wobble / k * rng.normal() * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    c, s = np.cos(t), np.sin(t)
    x = a * r * np.sign(c) * np.abs(c) ** (2.0 / n)
    y = b * r * np.sign(s) * np.abs(s) ** (2.0 / n)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([cx + x * ca - y * sa, cy + x * sa + y * ca], axis=1)


def fill(shape: tuple[int, int], *polys: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage (float32 0..1) of filled polygons on a canvas of `shape`."""
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [pts(p) for p in polys], 255, cv2.LINE_AA, SHIFT)
    return m.astype(F32) * F32(1 / 255)


def stroke(shape: tuple[int, int], poly: np.ndarray, thickness: float, closed: bool = False) -> np.ndarray:
    """Anti-aliased coverage of a polyline of the given thickness (>= 1 px)."""
    m = np.zeros(shape, np.uint8)
    cv2.polylines(m, [pts(poly)], closed, 255, max(1, round(thickness)), cv2.LINE_AA, SHIFT)
    return m.astype(F32) * F32(1 / 255)


def disc(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, _p(cx, cy), max(1, round(r * ONE)), 255, -1, cv2.LINE_AA, SHIFT)
    return m.astype(F32) * F32(1 / 255)


def dome(alpha: np.ndarray, radius: float, height: float) -> np.ndarray:
    """A soft mound over a coverage mask: what a heap of food looks like to the light."""
    d = cv2.distanceTransform((alpha > 0.5).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(F32)
    t = np.clip(d / max(radius, 1.0), 0.0, 1.0)
    return t * (2.0 - t) * F32(0.6 * height) * alpha


def bezier(p0, p1, p2, p3, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2, p3 = (np.asarray(p, np.float64) for p in (p0, p1, p2, p3))
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t * t * p2 + t**3 * p3


# --- light and compositing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Light:
    """One directional key light; `to_light` is the unit vector towards it (x right, y down, z to camera)."""

    lx: float
    ly: float
    lz: float

    @classmethod
    def from_angles(cls, azimuth: float, elevation: float) -> Light:
        """azimuth: radians in the image plane; elevation: radians above the counter."""
        ce = math.cos(elevation)
        return cls(ce * math.cos(azimuth), ce * math.sin(azimuth), math.sin(elevation))

    def half(self) -> tuple[float, float, float]:
        hx, hy, hz = self.lx, self.ly, self.lz + 1.0
        n = math.sqrt(hx * hx + hy * hy + hz * hz)
        return hx / n, hy / n, hz / n

    def shadow_offset(self, lift: float) -> tuple[int, int]:
        """Where a thing `lift` pixels above the counter throws its shadow, in whole pixels."""
        k = lift / max(self.lz, 0.2)
        return round(-self.lx * k), round(-self.ly * k)


def shade(height: np.ndarray, light: Light, shininess: float) -> tuple[np.ndarray, np.ndarray]:
    """Lambert diffuse (1.0 on a flat surface) and Blinn-Phong specular of a height field."""
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3) * F32(0.125)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3) * F32(0.125)
    inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    ndl = (light.lz - gx * light.lx - gy * light.ly) * inv
    hx, hy, hz = light.half()
    ndh = np.clip((hz - gx * hx - gy * hy) * inv, 0.0, 1.0)
    diffuse = np.clip(ndl, 0.0, None) / light.lz
    spec = ndh**shininess - hz**shininess  # highlights only where the surface turns to the light
    return diffuse, np.clip(spec, 0.0, None)


@dataclass
class Paint:
    """One component rendered in a patch whose top-left pixel is (x0, y0) in the image."""

    x0: int
    y0: int
    alpha: np.ndarray  # (h, w) coverage 0..1
    colour: np.ndarray  # (h, w, 3) albedo
    height: np.ndarray  # (h, w) pixels above the surface below
    gloss: float = 0.15  # specular strength
    shininess: float = 30.0
    lift: float = 2.0  # pixels above what is below: drop shadow offset and softness
    shadow: float = 0.35  # drop shadow opacity
    defect: np.ndarray | None = None  # (h, w) defect coverage when only part of the paint is a defect
    ambient: float = 0.35  # share of light that does not depend on the surface normal


def _boxes(img_shape: tuple[int, ...], x0: int, y0: int, ph: int, pw: int):
    h, w = img_shape[:2]
    ix0, iy0 = max(0, x0), max(0, y0)
    ix1, iy1 = min(w, x0 + pw), min(h, y0 + ph)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def composite(img: np.ndarray, paint: Paint, light: Light, defect_acc: np.ndarray, tagged: bool) -> None:
    """Shadow, shade and alpha-blend `paint` into `img` in place; keep the defect mask in step.

    `defect_acc` tracks which visible pixels are defective: an untagged paint covers (hides) defect pixels
    below it, a tagged paint or a paint's own `defect` map adds its pixels.
    """
    ph, pw = paint.alpha.shape
    if paint.shadow > 0:
        sig = max(0.7, paint.lift * 0.7)
        sh = cv2.GaussianBlur(paint.alpha, (0, 0), sig) * F32(paint.shadow)
        dx, dy = light.shadow_offset(paint.lift)
        b = _boxes(img.shape, paint.x0 + dx, paint.y0 + dy, ph, pw)
        if b is not None:
            img[b[0]] *= (1.0 - sh[b[1]])[..., None]
    b = _boxes(img.shape, paint.x0, paint.y0, ph, pw)
    if b is None:
        return
    diffuse, spec = shade(paint.height, light, paint.shininess)
    lit = paint.colour * (paint.ambient + (1.0 - paint.ambient) * diffuse)[..., None]
    lit = lit + (spec * F32(paint.gloss))[..., None]
    a = paint.alpha[b[1]]
    img[b[0]] = lerp(img[b[0]], lit[b[1]], a)
    d = defect_acc[b[0]]
    d *= 1.0 - a
    if tagged:
        d += a
    if paint.defect is not None:
        np.maximum(d, paint.defect[b[1]], out=d)


def mark_hidden(paint: Paint, defect_acc: np.ndarray) -> None:
    """A component that should be there but is not: its footprint is defective (until something covers it)."""
    b = _boxes(defect_acc.shape, paint.x0, paint.y0, *paint.alpha.shape)
    if b is not None:
        np.maximum(defect_acc[b[0]], paint.alpha[b[1]], out=defect_acc[b[0]])


# --- the camera ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Optics:
    """What one camera installation contributes to every photo it takes: light fall-off, vignette, lens blur.

    Why fixed per installation: a camera bolted over a pass sees the same ramp and vignette all day; only the
    light level, white balance and noise move from photo to photo.
    """

    ramp_angle: float
    ramp: float
    vignette: float
    blur: float  # lens blur sigma at 256 px

    @classmethod
    def random(cls, rng: np.random.Generator) -> Optics:
        return cls(
            rng.uniform(0, 2 * math.pi),
            rng.uniform(0.03, 0.12),
            rng.uniform(0.08, 0.2),
            rng.uniform(0.35, 0.9),
        )


def camera(img: np.ndarray, rng: np.random.Generator, optics: Optics | None = None) -> np.ndarray:
    """Light level, white balance, vignette, lens blur, sensor noise and JPEG artefacts -> uint8 BGR.

    `optics` fixes the installation's ramp, vignette and blur (a fixed camera); None draws them per photo.
    """
    h, w = img.shape[:2]
    scale = max(h, w) / 256.0
    y = np.linspace(-1, 1, h, dtype=F32)[:, None]
    x = np.linspace(-1, 1, w, dtype=F32)[None, :]
    if optics is None:
        optics = Optics.random(rng)
        gain = rng.uniform(0.85, 1.12) * rng.uniform(0.97, 1.03, size=3).astype(F32)
    else:  # one installation: the light level and white balance drift a little over a service
        gain = rng.uniform(0.94, 1.06) * rng.uniform(0.985, 1.015, size=3).astype(F32)
    a = optics.ramp_angle
    ramp = 1.0 + optics.ramp * (x * math.cos(a) + y * math.sin(a))
    vignette = 1.0 - optics.vignette * (x * x + y * y)
    img = img * (ramp * vignette)[..., None] * gain
    sig = optics.blur * math.sqrt(scale)  # a sharper lens on a larger sensor
    img = cv2.GaussianBlur(img, (0, 0), sig)
    noise = rng.standard_normal(img.shape).astype(F32)
    lum_noise = rng.standard_normal((h, w, 1)).astype(F32)
    sd = rng.uniform(0.004, 0.018)
    img = img + (noise * 0.4 + lum_noise * 0.9) * F32(sd) * np.sqrt(np.clip(img, 0.02, 1.0))
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    q = int(rng.integers(62, 95))
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 image
        return out
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)
