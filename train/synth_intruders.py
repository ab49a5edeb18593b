"""Painters for what should not be on a plate of the menu: spills, foreign objects, and off-menu food.

Why apart from `train.synth_food`: these only ever appear in defect images; keeping them here keeps the menu's
painters (what good images are made of) in one place and the defect catalogue in another.
"""

from __future__ import annotations

import math

import numpy as np

from train.synth_food import Canvas, Painter, Pieces, brush, dist_inside, scatter, sphere
from train.synth_render import (
    F32,
    Paint,
    bezier,
    blob,
    col,
    disc,
    dome,
    fill,
    lerp,
    smoothstep,
    stroke,
    superellipse,
)


def p_spill(c: Canvas) -> Paint:
    """Sauce where it should not be: a drop, a smear dragged across the rim, or a trail of drips."""
    kind = c.variant % 3
    if kind == 0:
        a = fill(c.shape, blob(c.rng, c.cx, c.cy, c.s, 0.8 * c.s, c.angle, 0.5, count=48))
        alpha, h = a * 0.95, dome(a, 0.5 * c.s, 0.2 * c.s)
    elif kind == 1:
        t = np.linspace(0, 1, 40)
        path = np.array([c.at(-1 + 2 * x, 0.2 * math.sin(x * 3)) for x in t])
        a = brush(c, path, 0.35 * c.s * (1 - 0.6 * t))
        streak = c.noise(0.06, 2, stretch=10.0)
        fade = np.clip(1.1 - 0.9 * (c.uv()[0] + 1) / 2, 0.15, 1)
        alpha = a * np.clip(fade * (0.7 + 0.4 * streak), 0, 0.95)
        h = a * 0.02 * c.s
    else:
        path = [c.at(-0.9 + 0.45 * i, c.rng.normal(0, 0.1)) for i in range(5)]
        a = np.zeros(c.shape, F32)
        for i, (x, y) in enumerate(path):
            a = np.maximum(a, disc(c.shape, x, y, c.s * (0.35 - 0.05 * i)))
        alpha, h = a * 0.95, dome(a, 0.2 * c.s, 0.15 * c.s)
    return c.paint(
        alpha, c.colour_field(c.tint, 0.04), h, gloss=0.7, shininess=50, lift=0.02 * c.s, shadow=0.15
    )


# --- foreign objects ----------------------------------------------------------------------------------


def p_hair(c: Canvas) -> Paint:
    ang = c.rng.uniform(0, 2 * math.pi)
    pts = [c.at(0, 0)]
    for _k in range(3):
        ang += c.rng.normal(0, 0.9)
        x, y = pts[-1]
        pts.append((x + c.s * 0.35 * math.cos(ang), y + c.s * 0.35 * math.sin(ang)))
    p = bezier(*pts, n=40)
    p -= p.mean(0) - [c.cx, c.cy]
    a = stroke(c.shape, p, max(1.0, 0.6 * c.px)) * 0.9
    return c.paint(
        a, c.colour_field(c.tint, 0.1), a * 0.5, gloss=0.3, shininess=30, lift=1.0 * c.px, shadow=0.25
    )


def p_shard(c: Canvas) -> Paint:
    n = 3 + c.variant % 3
    ang = np.sort(c.rng.uniform(0, 2 * math.pi, n))
    r = c.s * c.rng.uniform(0.5, 1.0, n)
    r[0] = c.s
    poly = np.stack([c.cx + r * np.cos(ang), c.cy + r * 0.5 * np.sin(ang)], 1)
    a = fill(c.shape, poly)
    edge = stroke(c.shape, poly, max(1.0, 0.8 * c.px), closed=True)
    u, v = c.uv()
    glint = smoothstep(0.7, 1.0, np.cos((u + v) * 2.5))
    colour = np.broadcast_to(c.tint, (*c.shape, 3)) + (edge * 0.5 + glint * 0.4)[..., None]
    alpha = np.clip(a * (0.55 + 0.3 * glint) + edge * 0.4, 0, 1)
    return c.paint(
        alpha, colour, a * 0.02 * c.s, gloss=0.8, shininess=60, lift=0.5 * c.px, shadow=0.15, ambient=0.6
    )


def p_insect(c: Canvas) -> Paint:
    pcs = Pieces(c)
    body = np.broadcast_to(c.tint, (*c.shape, 3))
    legs = np.zeros(c.shape, F32)
    lw = max(1.0, 0.5 * c.px)
    for k in (-0.3, 0.0, 0.3):
        for side in (-1, 1):
            p0 = c.at(k * 0.6, 0)
            p1 = c.at(k * 0.6 + 0.2 * (k + 0.1), side * 0.55)
            p2 = c.at(k * 0.6 + 0.5 * k, side * 0.85)
            legs = np.maximum(legs, stroke(c.shape, np.array([p0, p1, p2]), lw))
    pcs.add(legs, body, legs * 0.05 * c.s)
    if c.variant % 2 == 0:  # fly: translucent wings
        for side in (-1, 1):
            wing = fill(
                c.shape, superellipse(*c.at(-0.35, side * 0.28), 0.42 * c.s, 0.16 * c.s, c.angle + side * 0.5)
            )
            pcs.add(wing * 0.45, np.broadcast_to(col((200, 200, 195)), (*c.shape, 3)), wing * 0.25 * c.s)
    parts = ((0.45, 0.16, 0.14), (0.12, 0.22, 0.2), (-0.32, 0.32, 0.22))
    for u0, ra, rb in parts:
        x, y = c.at(u0, 0)
        a = fill(c.shape, superellipse(x, y, ra * c.s, rb * c.s, c.angle))
        pcs.add(a, body, dome(a, 0.15 * c.s, 0.2 * c.s))
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.6, shininess=50, lift=0.2 * c.s, shadow=0.35)


# --- dishes not on the menu ---------------------------------------------------------------------------


def p_sushi(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for u0, v0 in scatter(c, 5, 0.6, 0.48):
        x, y = c.at(u0, v0)
        r = 0.24 * c.s
        nori = disc(c.shape, x, y, r)
        rice = disc(c.shape, x, y, r * 0.85)
        fill_ = disc(c.shape, x, y, r * 0.35)
        colour = lerp(
            np.broadcast_to(col((30, 40, 28)), (*c.shape, 3)),
            col((225, 235, 240)) * (1 + 0.1 * c.noise(0.04, 1))[..., None],
            rice,
        )
        colour = lerp(colour, c.tint, fill_)
        pcs.add(nori, colour, nori * 0.15 * c.s + rice * 0.02 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.25, shininess=30, lift=0.15 * c.s)


def p_dumplings(c: Canvas) -> Paint:
    pcs = Pieces(c)
    for u0, v0 in scatter(c, 4, 0.5, 0.5):
        x, y = c.at(u0, v0)
        ang = c.rng.uniform(0, 2 * math.pi)
        t = np.linspace(0, math.pi, 24)
        ca, sa = math.cos(ang), math.sin(ang)
        loc = np.stack([np.cos(t) * 0.32 * c.s, -np.sin(t) * 0.24 * c.s + 0.08 * c.s], 1)
        poly = np.stack([x + loc[:, 0] * ca - loc[:, 1] * sa, y + loc[:, 0] * sa + loc[:, 1] * ca], 1)
        a = fill(c.shape, poly)
        h, w = c.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(F32)
        theta = np.arctan2(yy - y, xx - x)
        pleat = smoothstep(0.7, 1.0, np.sin(theta * 14)) * smoothstep(
            0.5, 1.0, 1 - dist_inside(a) / max(0.1 * c.s, 1)
        )
        colour = lerp(np.broadcast_to(c.tint, (h, w, 3)), c.tint * 0.8, pleat)
        pcs.add(a, colour, dome(a, 0.15 * c.s, 0.15 * c.s) + pleat * 0.02 * c.s)
    return c.paint(pcs.alpha, pcs.colour, pcs.height, gloss=0.4, shininess=30, lift=0.12 * c.s)


def p_soup(c: Canvas) -> Paint:
    a = fill(c.shape, blob(c.rng, c.cx, c.cy, c.s, c.s, 0.0, 0.02))
    colour = c.colour_field(c.tint, 0.05)
    ripple = c.noise(0.2, 2)
    for _ in range(10):
        r = 0.8 * c.s * math.sqrt(c.rng.random())
        t = c.rng.uniform(0, 2 * math.pi)
        colour = lerp(
            colour,
            c.tint * 1.3 + 0.05,
            disc(c.shape, c.cx + r * math.cos(t), c.cy + r * math.sin(t), c.rng.uniform(0.02, 0.05) * c.s),
        )
    t = np.linspace(0, 4 * math.pi, 80)
    spiral = np.stack([c.cx + 0.05 * c.s * t * np.cos(t), c.cy + 0.05 * c.s * t * np.sin(t)], 1)
    colour = lerp(colour, col((230, 240, 245)), stroke(c.shape, spiral, max(1.0, 0.04 * c.s)) * 0.9)
    return c.paint(a, colour, ripple * 0.01 * c.s, gloss=0.5, shininess=60, lift=0.0, shadow=0.0)


def p_egg(c: Canvas) -> Paint:
    white = fill(c.shape, blob(c.rng, c.cx, c.cy, c.s, 0.85 * c.s, c.angle, 0.3, count=48))
    x, y = c.at(0.1, 0.05)
    yolk = disc(c.shape, x, y, 0.32 * c.s)
    colour = lerp(c.colour_field(col((235, 242, 248)), 0.03), col((20, 160, 250)), yolk)
    frill = 1 - smoothstep(0.0, 0.15 * c.s, dist_inside(white))
    colour = lerp(colour, col((70, 140, 200)), frill * 0.6)
    height = dome(white, 0.2 * c.s, 0.05 * c.s) + sphere(c, x, y, 0.32 * c.s) * 0.7
    return c.paint(white, colour, height, gloss=0.5, shininess=50, lift=0.05 * c.s)


def p_pizza(c: Canvas) -> Paint:
    t = np.linspace(-0.45, 0.45, 20)
    far = np.stack([np.cos(t), np.sin(t)], 1) * 1.6 * c.s
    loc = np.vstack([[[0, 0]], far]) - [0.8 * c.s, 0]
    ca, sa = math.cos(c.angle), math.sin(c.angle)
    poly = np.stack([c.cx + loc[:, 0] * ca - loc[:, 1] * sa, c.cy + loc[:, 0] * sa + loc[:, 1] * ca], 1)
    a = fill(c.shape, poly)
    u, v = c.uv()
    crust = smoothstep(0.62, 0.72, np.sqrt((u + 0.8) ** 2 + v * v) / 1.6)
    colour = lerp(c.colour_field(col((110, 200, 240)), 0.12), col((60, 120, 190)), crust)
    for _ in range(4):
        px_, py_ = c.at(c.rng.uniform(-0.5, 0.5), c.rng.uniform(-0.25, 0.25))
        colour = lerp(colour, col((40, 45, 165)), disc(c.shape, px_, py_, 0.16 * c.s))
    return c.paint(
        a,
        colour,
        dome(a, 0.2 * c.s, 0.1 * c.s) + crust * 0.08 * c.s,
        gloss=0.35,
        shininess=30,
        lift=0.06 * c.s,
    )


# kind -> (painter, patch extent in units of s)
INTRUDER_PAINTERS: dict[str, tuple[Painter, float]] = {
    "spill": (p_spill, 1.6),
    "hair": (p_hair, 1.3),
    "shard": (p_shard, 1.2),
    "insect": (p_insect, 1.2),
    "sushi": (p_sushi, 1.0),
    "dumplings": (p_dumplings, 1.0),
    "soup": (p_soup, 1.1),
    "egg": (p_egg, 1.4),
    "pizza": (p_pizza, 1.2),
}
