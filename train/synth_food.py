"""Painters for plates, food, sauces, spills and foreign objects of the synthetic dish generator.

Why painters rather than sprites: every image needs a slightly different piece of salmon, the same dish must be
recognisable across images, and a defect (a missing garnish, a hair) must come with an exact pixel mask. Each
painter draws one component into its own patch as coverage + albedo + height; `train.synth_render.composite`
lights it, throws its shadow and keeps the defect mask. Sizes are in units of `s`, the component's radius in
pixels, so the same dish renders at any image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from train.synth_render import (
    F32,
    Paint,
    bezier,
    blob,
    col,
    disc,
    dome,
    fbm,
    fill,
    lerp,
    smoothstep,
    stroke,
    superellipse,
)


@dataclass(frozen=True)
class Layer:
    """One thing to draw, placed in image pixels. `tagged` layers are defects; `hidden` ones are missing."""

    kind: str
    role: str
    x: float
    y: float
    s: float
    angle: float  # radians
    tint: tuple[float, float, float]
    variant: int = 0
    seed: int = 0
    tagged: bool = False
    hidden: bool = False
    params: dict = field(default_factory=dict, hash=False, compare=False)


class Canvas:
    """A square patch around a component, with its local frame (u along the component's angle, in units of s)."""

    def __init__(self, rng: np.random.Generator, layer: Layer, extent: float, px: float) -> None:
        r = int(math.ceil(extent * layer.s + 4 + 3 * px))
        self.rng, self.s, self.angle, self.px = rng, layer.s, layer.angle, px
        self.x0, self.y0 = math.floor(layer.x) - r, math.floor(layer.y) - r
        self.shape = (2 * r + 1, 2 * r + 1)
        self.cx, self.cy = layer.x - self.x0, layer.y - self.y0
        self.tint = col(layer.tint)
        self.variant = layer.variant
        self._uv: tuple[np.ndarray, np.ndarray] | None = None

    def at(self, u: float, v: float) -> tuple[float, float]:
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        return self.cx + self.s * (u * ca - v * sa), self.cy + self.s * (u * sa + v * ca)

    def uv(self) -> tuple[np.ndarray, np.ndarray]:
        if self._uv is None:
            h, w = self.shape
            y, x = np.mgrid[0:h, 0:w].astype(F32)
            x, y = (x - self.cx) / self.s, (y - self.cy) / self.s
            ca, sa = math.cos(self.angle), math.sin(self.angle)
            self._uv = (x * ca + y * sa, -x * sa + y * ca)
        return self._uv

    def noise(self, cell: float, octaves: int = 3, stretch: float = 1.0) -> np.ndarray:
        """fbm with features of `cell` * s pixels; stretched features run along the component's u axis."""
        h, w = self.shape
        n = fbm(self.rng, h, w, max(cell * self.s, 1.0), octaves, stretch)
        if stretch != 1.0:
            m = cv2.getRotationMatrix2D((w / 2, h / 2), -math.degrees(self.angle), 1.0)
            n = cv2.warpAffine(n, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return n

    def paint(self, alpha, colour, height, **kw) -> Paint:
        return Paint(self.x0, self.y0, alpha.astype(F32), colour.astype(F32), height.astype(F32), **kw)

    def colour_field(self, base: np.ndarray, amount: float, cell: float = 0.3) -> np.ndarray:
        """A base colour modulated by low-frequency noise: no real food has a flat colour."""
        n = self.noise(cell, 3)
        h, w = self.shape
        return np.broadcast_to(base, (h, w, 3)) * (1.0 + amount * n)[..., None]


class Pieces:
    """Back-to-front stack of pieces inside one component (slices of steak, leaves, peas)."""

    def __init__(self, c: Canvas) -> None:
        h, w = c.shape
        self.alpha = np.zeros((h, w), F32)
        self.colour = np.zeros((h, w, 3), F32)
        self.height = np.zeros((h, w), F32)

    def add(self, a: np.ndarray, colour: np.ndarray, height: np.ndarray) -> None:
        self.colour = lerp(self.colour, colour, a)
        self.height = self.height + (height - self.height) * a
        self.alpha = np.maximum(self.alpha, a)


def blob_edge_dt(a: np.ndarray) -> np.ndarray:
    """Distance (pixels) of every pixel outside coverage `a` to it: how far from a chip's edge."""
    return cv2.distanceTransform((a < 0.5).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(F32)


def dist_inside(a: np.ndarray) -> np.ndarray:
    """Distance (pixels) of every covered pixel to the edge of coverage `a`: crusts, bevels, rinds."""
    return cv2.distanceTransform((a > 0.5).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(F32)


def sphere(c: Canvas, x: float, y: float, r: float) -> np.ndarray:
    h, w = c.shape
    yy, xx = np.ogrid[0:h, 0:w]
    d2 = ((xx - x) ** 2 + (yy - y) ** 2).astype(F32)
    return np.sqrt(np.clip(r * r - d2, 0, None))


def scatter(c: Canvas, n: int, radius: float, min_gap: float) -> list[tuple[float, float]]:
    """Up to n points in a disc of `radius` (units of s), kept `min_gap` apart: pieces that do not pile up."""
    out: list[tuple[float, float]] = []
    for _ in range(n * 6):
        r = radius * math.sqrt(c.rng.random())
        t = c.rng.uniform(0, 2 * math.pi)
        u, v = r * math.cos(t), r * math.sin(t)
        if all((u - a) ** 2 + (v - b) ** 2 >= min_gap**2 for a, b in out):
            out.append((u, v))
        if len(out) == n:
            break
    return out


# --- proteins -----------------------------------------------------------------------------------------


def p_salmon(c: Canvas) -> Paint:
    a = fill(c.shape, blob(c.rng, c.cx, c.cy, c.s, 0.62 * c.s, c.angle, 0.06, n=3.0))
    u, v = c.uv()
    wav = np.sin((u * 4.5 + 1.4 * np.abs(v) + 0.25 * c.noise(0.5, 2)) * math.pi)
    fat = smoothstep(0.9, 0.99, wav) * (0.6 + 0.4 * smoothstep(-1, 1, c.noise(0.2, 2)))
    colour = c.colour_field(c.tint, 0.07)
    colour = lerp(colour, col((185, 200, 245)), fat * 0.75)
    if c.variant % 2:  # seared top, darker where the pan was hottest
        sear = smoothstep(-0.4, 1.2, c.noise(0.35, 3) + 0.6 * u)
        colour = lerp(colour, col((55, 95, 165)), sear * 0.75)
    height = dome(a, 0.35 * c.s, 0.35 * c.s) + fat * 0.04 * c.s
    return c.paint(a, colour, height, gloss=0.25, shininess=24, lift=0.12 * c.s)


def p_whitefish(c: Canvas) -> Paint:
    a = fill(c.shape, blob(c.rng, c.cx, c.cy, 0.95 * c.s, 0.6 * c.s, c.angle, 0.1, n=2.6))
    u, v = c.uv()
    flakes = np.abs(np.sin((u * 3.2 + 0.4 * v * v + 0.2 * c.noise(0.4, 2)) * math.pi))
    colour = c.colour_field(c.tint, 0.05)
    crust = smoothstep(-0.2, 1.0, c.noise(0.5, 3) - 0.2 * v)
    colour = lerp(colour, col((90, 160, 210)), crust * (0.5 if c.variant % 2 else 0.15))
    height = dome(a, 0.3 * c.s, 0.3 * c.s) + smoothstep(0.0, 0.25, flakes) * 0.05 * c.s
    return c.paint(a, colour, height, gloss=0.18, shininess=20, lift=0.12 * c.s)


def p_steak(c: Canvas) -> Paint:
    pcs = Pieces(c)
    n = 4 + c.variant % 2
    fib = c.noise(0.08, 2, stretch=6.0)
    for i in range(n):
        off = (i - (n - 1) / 2) * 0.3
        fan = (i - (n - 1) / 2) * 0.08
        x, y = c.at(0.05 * off, off)
        poly = superellipse(x, y, 0.75 * c.s, 0.2 * c.s, c.angle + fan, n=7)
        a = fill(c.shape, poly)
        d = dist_inside(a) / max(0.2 * c.s, 1.0)
        inner = lerp(col((60, 80, 130)), c.tint, smoothstep(0.25, 0.8, d))
        colour = lerp(col((30, 42, 62)), inner, smoothstep(0.05, 0.3, d))
        colour = colour * (1.0 + 0.12 * fib)[..., None]
        pcs.add(a, colour, dome(a, 0.05 * c.s, 0.06 * c.s) + fib * 0.004 * c.s + i * 0.06 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.22, shininess=18, lift=0.1 * c.s)


def p_chicken(c: Canvas) -> Paint:
    a = fill(c.shape, blob(c.rng, c.cx, c.cy, c.s, 0.66 * c.s, c.angle, 0.12, n=2.3))
    u, v = c.uv()
    colour = c.colour_field(c.tint, 0.08)
    colour = colour * (1.0 + 0.07 * c.noise(0.06, 2, stretch=5.0))[..., None]
    grill = np.abs(np.sin((u * 0.7 + v * 0.7) * math.pi / 0.3))
    burn = smoothstep(0.12, 0.0, grill) * smoothstep(-0.6, 0.4, c.noise(0.4, 2))
    colour = lerp(colour, col((25, 45, 70)), burn * 0.85)
    height = dome(a, 0.4 * c.s, 0.3 * c.s) - burn * 0.02 * c.s
    return c.paint(a, colour, height, gloss=0.2, shininess=20, lift=0.12 * c.s)


def p_shrimp(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for u0, v0 in scatter(c, 4 + c.variant % 2, 0.55, 0.5):
        x, y = c.at(u0, v0)
        rot = c.rng.uniform(0, 360)
        r = 0.28 * c.s
        m = np.zeros(c.shape, np.uint8)
        cv2.ellipse(
            m, (round(x * 16), round(y * 16)), (round(r * 16),) * 2, rot, 20, 290, 255,
            max(1, round(0.2 * c.s)), cv2.LINE_AA, 4,
        )  # fmt: skip
        a = m.astype(F32) / 255
        h, w = c.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(F32)
        theta = np.arctan2(yy - y, xx - x)
        seg = smoothstep(0.6, 0.95, np.sin(theta * 9.0))
        colour = lerp(np.broadcast_to(c.tint, (h, w, 3)), col((170, 190, 250)), seg * 0.6)
        tx, ty = x + r * math.cos(math.radians(rot + 290)), y + r * math.sin(math.radians(rot + 290))
        tail = disc(c.shape, tx, ty, 0.12 * c.s)
        colour = lerp(colour, col((40, 60, 190)), tail)
        a = np.maximum(a, tail)
        pcs.add(a, colour, dome(a, 0.1 * c.s, 0.1 * c.s) + seg * 0.01 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.35, shininess=30, lift=0.08 * c.s)


def p_meatballs(c: Canvas) -> Paint:
    pcs = Pieces(c)
    bumps = c.noise(0.08, 2)
    for u0, v0 in scatter(c, 3 + c.variant % 3, 0.5, 0.55):
        x, y = c.at(u0, v0)
        r = c.rng.uniform(0.27, 0.33) * c.s
        a = disc(c.shape, x, y, r)
        colour = np.broadcast_to(c.tint, (*c.shape, 3)) * (1.0 + 0.15 * bumps)[..., None]
        pcs.add(a, colour, sphere(c, x, y, r) + bumps * 0.02 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.35, shininess=25, lift=0.1 * c.s)


def p_tofu(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for u0, v0 in scatter(c, 4 + c.variant % 3, 0.5, 0.42):
        x, y = c.at(u0, v0)
        a = fill(c.shape, superellipse(x, y, 0.19 * c.s, 0.19 * c.s, c.rng.uniform(0, 3), n=6))
        d = dist_inside(a) / max(0.07 * c.s, 1.0)
        colour = lerp(col((60, 120, 170)), c.tint, smoothstep(0.0, 1.2, d))
        pcs.add(a, colour, np.clip(d, 0, 1) * 0.12 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.15, shininess=20, lift=0.1 * c.s)


# --- starches -----------------------------------------------------------------------------------------


def _grains(c: Canvas, a: np.ndarray, length: float, width: float, n: int, palette=None):
    """Individually drawn grains (rice, quinoa): each one catches the light on its own."""
    h, w = c.shape
    hm = np.zeros((h, w), np.uint8)
    tone = np.zeros((h, w), np.uint8)
    ys, xs = np.nonzero(a > 0.5)
    if len(xs) == 0:
        return hm.astype(F32), tone.astype(F32)
    idx = c.rng.integers(0, len(xs), n)
    angs = c.rng.uniform(0, 360, n)
    tones = c.rng.integers(120, 256, n)
    ax = (max(1, round(length * 8)), max(1, round(width * 8)))
    for i in range(n):
        center = (int(xs[idx[i]]) * 16 + 8, int(ys[idx[i]]) * 16 + 8)
        cv2.ellipse(hm, center, ax, float(angs[i]), 0, 360, 255, -1, cv2.LINE_AA, 4)
        cv2.ellipse(tone, center, ax, float(angs[i]), 0, 360, int(tones[i]), -1, cv2.LINE_AA, 4)
    return hm.astype(F32) / 255, tone.astype(F32) / 255


def p_rice(c: Canvas) -> Paint:
    a = fill(c.shape, blob(c.rng, c.cx, c.cy, c.s, 0.85 * c.s, c.angle, 0.12))
    glen = max(1.2, 0.13 * c.s)
    area = float(a.sum())
    n = int(min(2500, 1.3 * area / max(glen * glen * 0.4, 1.0)))
    g, tone = _grains(c, a, glen, glen * 0.38, n)
    colour = c.colour_field(c.tint, 0.04)
    colour = colour * (0.9 + 0.1 * tone)[..., None] * (0.94 + 0.06 * g)[..., None]
    height = dome(a, 0.6 * c.s, 0.35 * c.s) + cv2.GaussianBlur(g, (0, 0), 0.5) * 0.025 * c.s
    return c.paint(a, colour, height, gloss=0.18, shininess=30, lift=0.1 * c.s)


def p_quinoa(c: Canvas) -> Paint:
    a = fill(c.shape, blob(c.rng, c.cx, c.cy, c.s, 0.85 * c.s, c.angle, 0.15))
    h, w = c.shape
    speck = c.rng.random((h, w)).astype(F32)
    dots = cv2.GaussianBlur((speck > 0.55).astype(F32), (0, 0), max(0.5, 0.03 * c.s))
    red = cv2.GaussianBlur((speck > 0.95).astype(F32), (0, 0), max(0.5, 0.03 * c.s))
    colour = c.colour_field(c.tint, 0.06) * (0.85 + 0.2 * dots)[..., None]
    colour = lerp(colour, col((40, 50, 120)), np.clip(red * 1.5, 0, 0.8))
    herbs = (c.rng.random((h, w)) > 0.985).astype(F32)
    colour = lerp(colour, col((40, 110, 50)), cv2.GaussianBlur(herbs, (0, 0), 0.6) * 1.5)
    height = dome(a, 0.6 * c.s, 0.3 * c.s) + dots * 0.03 * c.s
    return c.paint(a, colour, height, gloss=0.1, shininess=20, lift=0.1 * c.s)


def p_mash(c: Canvas) -> Paint:
    elong = 1.0 if c.variant % 2 == 0 else 1.3
    a = fill(c.shape, blob(c.rng, c.cx, c.cy, c.s * elong, 0.8 * c.s, c.angle, 0.15))
    u, v = c.uv()
    r = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    swirl = np.sin(theta * 5 + r * 9 + 0.6 * c.noise(0.3, 2))
    colour = c.colour_field(c.tint, 0.04)
    height = dome(a, 0.7 * c.s, 0.45 * c.s) + (swirl * 0.035 + c.noise(0.04, 2) * 0.006) * c.s * a
    return c.paint(a, colour, height, gloss=0.08, shininess=12, lift=0.1 * c.s)


def p_pasta(c: Canvas) -> Paint:
    sauce_a = fill(c.shape, blob(c.rng, c.cx, c.cy, 0.95 * c.s, 0.85 * c.s, c.angle, 0.15)) * 0.95
    sauce_col = (col((40, 55, 175)), col((175, 215, 235)), col((45, 120, 70)))[c.variant % 3]
    pcs = Pieces(c)
    pcs.add(sauce_a, np.broadcast_to(sauce_col, (*c.shape, 3)), dome(sauce_a, 0.3 * c.s, 0.1 * c.s))
    thick = max(1.0, 0.075 * c.s)
    pasta = np.broadcast_to(c.tint, (*c.shape, 3))
    for i in range(24):
        r = 0.75 * math.sqrt(c.rng.random())
        t = c.rng.uniform(0, 2 * math.pi)
        u, v = r * math.cos(t), r * math.sin(t)
        d = c.rng.uniform(0, 2 * math.pi)
        path = []
        for _ in range(9):
            path.append(c.at(u, v))
            d += c.rng.normal(0, 0.5)
            u, v = u + 0.12 * math.cos(d), v + 0.12 * math.sin(d)
            if u * u + v * v > 0.8:
                d += math.pi / 2
        a = stroke(c.shape, np.array(path), thick)
        tube = cv2.GaussianBlur(a, (0, 0), max(0.5, thick / 3))
        pcs.add(a, pasta, pcs.height * 0 + (0.1 + 0.012 * i) * c.s + tube * 0.05 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.3, shininess=30, lift=0.1 * c.s)


def p_potatoes(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for u0, v0 in scatter(c, 4 + c.variant % 3, 0.55, 0.45):
        x, y = c.at(u0, v0)
        a = fill(c.shape, blob(c.rng, x, y, 0.26 * c.s, 0.2 * c.s, c.rng.uniform(0, 3), 0.35, n=2.5))
        d = dist_inside(a) / max(0.09 * c.s, 1.0)
        colour = lerp(col((35, 85, 150)), c.tint, smoothstep(0.0, 1.0, d))
        colour = colour * (1.0 + 0.12 * c.noise(0.1, 2))[..., None]
        pcs.add(a, colour, np.sqrt(np.clip(d, 0, 1)) * 0.15 * c.s)
    specks = cv2.GaussianBlur((c.rng.random(c.shape) > 0.99).astype(F32), (0, 0), 0.6)
    colour = lerp(pcs.colour, col((40, 100, 50)), np.clip(specks * 2.0, 0, 1) * pcs.alpha)
    return c.paint(pcs.alpha, colour, pcs.height, gloss=0.3, shininess=25, lift=0.1 * c.s)


def p_polenta(c: Canvas) -> Paint:
    a = fill(c.shape, superellipse(c.cx, c.cy, 0.85 * c.s, 0.55 * c.s, c.angle, n=6))
    u, v = c.uv()
    d = dist_inside(a) / max(0.08 * c.s, 1.0)
    grill = smoothstep(0.15, 0.0, np.abs(np.sin((u + 0.5 * v) * math.pi / 0.32))) * (c.variant % 2)
    colour = c.colour_field(c.tint, 0.06)
    colour = lerp(colour, col((40, 80, 120)), np.clip(grill * 0.8 + (1 - np.clip(d, 0, 1)) * 0.4, 0, 1))
    return c.paint(a, colour, np.clip(d, 0, 1) * 0.2 * c.s, gloss=0.15, shininess=20, lift=0.14 * c.s)


# --- vegetables ---------------------------------------------------------------------------------------


def p_broccoli(c: Canvas) -> Paint:
    pcs = Pieces(c)
    bumps = c.noise(0.05, 2)
    for u0, v0 in scatter(c, 3 + c.variant % 2, 0.45, 0.55):
        hx, hy = c.at(u0, v0)
        out = c.rng.uniform(0, 2 * math.pi)
        sx, sy = hx + 0.3 * c.s * math.cos(out), hy + 0.3 * c.s * math.sin(out)
        sa = stroke(c.shape, np.array([[hx, hy], [sx, sy]]), 0.12 * c.s)
        pcs.add(sa, np.broadcast_to(col((120, 190, 150)), (*c.shape, 3)), dome(sa, 0.06 * c.s, 0.06 * c.s))
        head = np.zeros(c.shape, F32)
        hh = np.zeros(c.shape, F32)
        for _ in range(9):
            r = c.rng.uniform(0.1, 0.15) * c.s
            ang, rad = c.rng.uniform(0, 2 * math.pi), c.rng.uniform(0, 0.18) * c.s
            x, y = hx + rad * math.cos(ang), hy + rad * math.sin(ang)
            head = np.maximum(head, disc(c.shape, x, y, r))
            hh = np.maximum(hh, sphere(c, x, y, r))
        colour = np.broadcast_to(c.tint, (*c.shape, 3)) * (1.0 + 0.25 * bumps)[..., None]
        pcs.add(head, colour, 0.1 * c.s + hh * 0.8 + bumps * 0.03 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.08, shininess=15, lift=0.14 * c.s)


def p_carrots(c: Canvas) -> Paint:
    pcs = Pieces(c)
    coins = c.variant % 2 == 0
    for u0, v0 in scatter(c, 6 if coins else 5, 0.55, 0.36 if coins else 0.25):
        x, y = c.at(u0, v0)
        if coins:
            r = c.rng.uniform(0.16, 0.21) * c.s
            a = disc(c.shape, x, y, r)
            h, w = c.shape
            yy, xx = np.ogrid[0:h, 0:w]
            d = np.sqrt((xx - x) ** 2 + (yy - y) ** 2).astype(F32) / r
            colour = lerp(col((40, 150, 245)), c.tint, smoothstep(0.3, 0.6, d))
            colour = colour * (1.0 + 0.05 * np.sin(d * 18))[..., None]
        else:
            ang = c.angle + c.rng.normal(0, 0.25)
            a = fill(c.shape, superellipse(x, y, 0.36 * c.s, 0.07 * c.s, ang, n=3))
            colour = c.colour_field(c.tint, 0.08)
        pcs.add(a, colour, dome(a, 0.08 * c.s, 0.07 * c.s) + pcs.height.max() * 0 + 0.02 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.3, shininess=30, lift=0.06 * c.s)


def p_peas(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for u0, v0 in scatter(c, 11, 0.6, 0.24):
        x, y = c.at(u0, v0)
        r = c.rng.uniform(0.11, 0.13) * c.s
        a = disc(c.shape, x, y, r)
        tone = c.tint * c.rng.uniform(0.85, 1.12)
        pcs.add(a, np.broadcast_to(tone, (*c.shape, 3)), sphere(c, x, y, r))
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.45, shininess=40, lift=0.05 * c.s)


def p_asparagus(c: Canvas) -> Paint:
    pcs = Pieces(c)
    n = 3 + c.variant % 3
    for i in range(n):
        off = (i - (n - 1) / 2) * 0.2
        ang = c.rng.normal(0, 0.05)
        p0, p1 = c.at(-0.8, off), c.at(0.8, off + ang)
        a = stroke(c.shape, np.array([p0, p1]), 0.14 * c.s)
        tip = fill(c.shape, blob(c.rng, *c.at(0.82, off + ang), 0.16 * c.s, 0.085 * c.s, c.angle + ang, 0.1))
        u, _ = c.uv()
        colour = lerp(col((140, 200, 180)), c.tint, smoothstep(-0.8, 0.2, u))
        colour = lerp(colour, col((70, 90, 70)), tip * 0.6)
        bracts = smoothstep(0.85, 1.0, np.sin(u * 28)) * smoothstep(-0.2, 0.5, u)
        colour = colour * (1.0 - 0.2 * bracts)[..., None]
        a = np.maximum(a, tip)
        pcs.add(a, colour, dome(a, 0.07 * c.s, 0.07 * c.s) + 0.02 * i * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.35, shininess=30, lift=0.07 * c.s)


def _leaf(c: Canvas, x: float, y: float, length: float, width: float, ang: float, tone: np.ndarray):
    """A pointed leaf with a midrib and side veins: alpha, colour, height."""
    t = np.linspace(0, math.pi, 24)
    half = np.sin(t) ** 0.8 * width
    xs = -np.cos(t) * length
    outline = np.concatenate([np.stack([xs, half], 1), np.stack([xs[::-1], -half[::-1]], 1)])
    ca, sa = math.cos(ang), math.sin(ang)
    poly = np.stack(
        [x + outline[:, 0] * ca - outline[:, 1] * sa, y + outline[:, 0] * sa + outline[:, 1] * ca], 1
    )
    a = fill(c.shape, poly)
    vein_w = max(1.0, 0.02 * c.s)
    veins = stroke(
        c.shape, np.array([[x - length * ca, y - length * sa], [x + length * ca, y + length * sa]]), vein_w
    )
    for k in (-0.5, 0.0, 0.5):
        bx, by = x + k * length * ca, y + k * length * sa
        for side in (-1, 1):
            ex = bx + 0.5 * length * ca - side * 0.8 * width * sa
            ey = by + 0.5 * length * sa + side * 0.8 * width * ca
            veins = np.maximum(veins, stroke(c.shape, np.array([[bx, by], [ex, ey]]), vein_w) * 0.7)
    colour = np.broadcast_to(tone, (*c.shape, 3)) * (1.0 + 0.1 * c.noise(0.15, 2))[..., None]
    colour = lerp(colour, tone * 1.35 + 0.05, veins * 0.6)
    height = dome(a, 0.5 * width, 0.3 * width) - veins * 0.02 * c.s
    return a, colour, height


LEAF_TONES = ((70, 185, 115), (40, 105, 45), (85, 45, 130), (45, 140, 70), (90, 200, 150))


def p_greens(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for i, (u0, v0) in enumerate(scatter(c, 7, 0.55, 0.22)):
        x, y = c.at(u0, v0)
        tone = col(LEAF_TONES[(i * 3 + c.variant) % len(LEAF_TONES)]) * c.rng.uniform(0.9, 1.1)
        a, colour, h = _leaf(c, x, y, 0.32 * c.s, 0.16 * c.s, c.rng.uniform(0, 2 * math.pi), tone)
        pcs.add(a, colour, h + i * 0.03 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.3, shininess=30, lift=0.1 * c.s)


def p_tomato(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for i, (u0, v0) in enumerate(scatter(c, 3, 0.45, 0.4)):
        x, y = c.at(u0, v0)
        r = 0.3 * c.s
        a = disc(c.shape, x, y, r)
        colour = np.broadcast_to(c.tint, (*c.shape, 3)).copy()
        rot = c.rng.uniform(0, 2 * math.pi)
        for k in range(4):
            ang = rot + k * math.pi / 2
            gx, gy = x + 0.5 * r * math.cos(ang), y + 0.5 * r * math.sin(ang)
            gel = fill(c.shape, superellipse(gx, gy, 0.3 * r, 0.2 * r, ang + math.pi / 2))
            colour = lerp(colour, col((70, 120, 230)), gel * 0.8)
            for _ in range(3):
                sx, sy = gx + c.rng.normal(0, 0.1 * r), gy + c.rng.normal(0, 0.1 * r)
                colour = lerp(colour, col((150, 210, 240)), disc(c.shape, sx, sy, max(0.6, 0.06 * r)) * 0.8)
        ring = a - disc(c.shape, x, y, r * 0.88)
        colour = lerp(colour, c.tint * 0.7, np.clip(ring, 0, 1))
        pcs.add(a, colour, dome(a, 0.08 * c.s, 0.05 * c.s) + i * 0.03 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.5, shininess=40, lift=0.05 * c.s)


def p_beans(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for i in range(8):
        off = c.rng.uniform(-0.45, 0.45)
        bend = c.rng.normal(0, 0.12)
        ang = c.rng.normal(0, 0.15)
        p = bezier(
            c.at(-0.6, off), c.at(-0.2, off + bend), c.at(0.2, off + bend + ang), c.at(0.6, off + ang), 12
        )
        a = stroke(c.shape, p, 0.09 * c.s)
        pcs.add(
            a,
            np.broadcast_to(c.tint * c.rng.uniform(0.85, 1.1), (*c.shape, 3)),
            dome(a, 0.05 * c.s, 0.05 * c.s) + i * 0.015 * c.s,
        )
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.35, shininess=30, lift=0.06 * c.s)


# --- garnish ------------------------------------------------------------------------------------------


def p_herb(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for i, (u0, v0) in enumerate(scatter(c, 3, 0.35, 0.3)):
        x, y = c.at(u0, v0)
        tone = c.tint * c.rng.uniform(0.9, 1.1)
        a, colour, h = _leaf(c, x, y, 0.42 * c.s, 0.24 * c.s, c.angle + c.rng.uniform(-1.2, 1.2), tone)
        pcs.add(a, colour, h + i * 0.05 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.4, shininess=35, lift=0.12 * c.s)


def p_lemon(c: Canvas) -> Paint:
    r = 0.9 * c.s
    t = np.linspace(0, math.pi, 32)
    x0, y0 = c.at(0, 0.35)
    ca, sa = math.cos(c.angle), math.sin(c.angle)
    arc = np.stack([np.cos(t) * r, -np.sin(t) * r * 0.75], 1)
    poly = np.stack([x0 + arc[:, 0] * ca - arc[:, 1] * sa, y0 + arc[:, 0] * sa + arc[:, 1] * ca], 1)
    a = fill(c.shape, poly)
    rind = np.clip(a - fill(c.shape, (poly - [x0, y0]) * 0.85 + [x0, y0]), 0, 1)
    pith = np.clip(
        fill(c.shape, (poly - [x0, y0]) * 0.85 + [x0, y0])
        - fill(c.shape, (poly - [x0, y0]) * 0.78 + [x0, y0]),
        0,
        1,
    )
    colour = c.colour_field(c.tint, 0.08)
    u, v = c.uv()
    seg = smoothstep(0.93, 1.0, np.cos(np.arctan2(v - 0.35, u) * 8.0))
    colour = lerp(colour, col((170, 230, 245)), np.clip(seg + pith, 0, 1) * 0.8)
    colour = lerp(colour, col((20, 170, 235)), rind)
    return c.paint(a, colour, dome(a, 0.2 * c.s, 0.2 * c.s), gloss=0.45, shininess=40, lift=0.1 * c.s)


def p_microgreens(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for i, (u0, v0) in enumerate(scatter(c, 9, 0.6, 0.15)):
        x, y = c.at(u0, v0)
        ang = c.rng.uniform(0, 2 * math.pi)
        ex, ey = x + 0.25 * c.s * math.cos(ang), y + 0.25 * c.s * math.sin(ang)
        stem = stroke(c.shape, np.array([[x, y], [ex, ey]]), max(1.0, 0.025 * c.s))
        pcs.add(stem * 0.8, np.broadcast_to(col((160, 220, 200)), (*c.shape, 3)), stem * 0.02 * c.s)
        for side in (-1, 1):
            la = ang + side * 0.9
            lx, ly = ex + 0.09 * c.s * math.cos(la), ey + 0.09 * c.s * math.sin(la)
            leaf = fill(c.shape, superellipse(lx, ly, 0.1 * c.s, 0.055 * c.s, la))
            pcs.add(
                leaf,
                np.broadcast_to(c.tint * c.rng.uniform(0.85, 1.15), (*c.shape, 3)),
                leaf * 0.04 * c.s + i * 0.01 * c.s,
            )
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.3, shininess=30, lift=0.08 * c.s)


def p_chives(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for u0, v0 in scatter(c, 12, 0.75, 0.1):
        x, y = c.at(u0, v0)
        ang = c.rng.uniform(0, math.pi)
        half = c.rng.uniform(0.05, 0.1) * c.s
        p = np.array(
            [
                [x - half * math.cos(ang), y - half * math.sin(ang)],
                [x + half * math.cos(ang), y + half * math.sin(ang)],
            ]
        )
        a = stroke(c.shape, p, max(1.0, 0.05 * c.s))
        pcs.add(a, np.broadcast_to(c.tint * c.rng.uniform(0.85, 1.15), (*c.shape, 3)), a * 0.02 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.3, shininess=30, lift=0.04 * c.s)


# --- sauces and spills --------------------------------------------------------------------------------


def p_dot(c: Canvas) -> Paint:
    a = fill(c.shape, blob(c.rng, c.cx, c.cy, c.s, c.s, 0.0, 0.05))
    return c.paint(
        a,
        c.colour_field(c.tint, 0.03),
        dome(a, 0.6 * c.s, 0.4 * c.s),
        gloss=0.7,
        shininess=60,
        lift=0.05 * c.s,
        shadow=0.25,
    )


def brush(c: Canvas, path: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Coverage of a brush stroke of varying width along `path` (sauce, smears)."""
    m = np.zeros(c.shape, np.uint8)
    for (x, y), r in zip(path, widths, strict=True):
        cv2.circle(m, (round(x * 16), round(y * 16)), max(8, round(r * 16)), 255, -1, cv2.LINE_AA, 4)
    return m.astype(F32) / 255


def p_drizzle(c: Canvas) -> Paint:
    t = np.linspace(-1, 1, 60)
    zig = np.sin(t * math.pi * (2.0 + c.variant % 2) + c.rng.uniform(0, 1))
    path = np.array([c.at(0.9 * x, 0.35 * z) for x, z in zip(t, zig, strict=True)])
    path = path + c.rng.normal(0, 0.015 * c.s, path.shape).cumsum(0) * 0.3
    widths = max(0.6, 0.025 * c.s) * (1.0 + 0.4 * np.sin(t * 7 + c.rng.uniform(0, 6)))
    a = brush(c, path, widths)
    return c.paint(
        a,
        c.colour_field(c.tint, 0.03),
        cv2.GaussianBlur(a, (0, 0), 0.8) * 0.05 * c.s,
        gloss=0.8,
        shininess=60,
        lift=0.02 * c.s,
        shadow=0.2,
    )


def p_swoosh(c: Canvas) -> Paint:
    t = np.linspace(0, 1, 60)
    ang = (t - 0.5) * 1.6
    path = np.array([c.at(math.sin(a) * 0.9, (1 - math.cos(a)) * 0.9 - 0.3) for a in ang])
    widths = 0.22 * c.s * np.sin(np.pi * np.clip(t * 1.1, 0, 1)) ** 0.6
    a = brush(c, path, widths)
    streak = c.noise(0.05, 2, stretch=8.0)
    alpha = a * np.clip(0.85 + 0.25 * streak, 0, 1)
    return c.paint(
        alpha,
        c.colour_field(c.tint, 0.05),
        a * 0.02 * c.s + streak * 0.01 * c.s,
        gloss=0.5,
        shininess=40,
        lift=0.01 * c.s,
        shadow=0.1,
    )


# --- registry -----------------------------------------------------------------------------------------

Painter = Callable[[Canvas], Paint]
# kind -> (painter, patch extent in units of s)
PAINTERS: dict[str, tuple[Painter, float]] = {
    "salmon": (p_salmon, 1.2),
    "whitefish": (p_whitefish, 1.2),
    "steak": (p_steak, 1.3),
    "chicken": (p_chicken, 1.2),
    "shrimp": (p_shrimp, 1.1),
    "meatballs": (p_meatballs, 1.0),
    "tofu": (p_tofu, 1.0),
    "rice": (p_rice, 1.3),
    "quinoa": (p_quinoa, 1.3),
    "mash": (p_mash, 1.5),
    "pasta": (p_pasta, 1.3),
    "potatoes": (p_potatoes, 1.1),
    "polenta": (p_polenta, 1.1),
    "broccoli": (p_broccoli, 1.1),
    "carrots": (p_carrots, 1.1),
    "peas": (p_peas, 0.9),
    "asparagus": (p_asparagus, 1.2),
    "greens": (p_greens, 1.1),
    "tomato": (p_tomato, 1.0),
    "beans": (p_beans, 1.0),
    "herb": (p_herb, 1.0),
    "lemon": (p_lemon, 1.3),
    "microgreens": (p_microgreens, 1.1),
    "chives": (p_chives, 1.0),
    "dot": (p_dot, 1.4),
    "drizzle": (p_drizzle, 1.2),
    "swoosh": (p_swoosh, 1.5),
}
