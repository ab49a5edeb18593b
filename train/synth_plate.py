"""The plate painter: round, coupe, oval, square, bowl or slate, with an optional chip or crack in the rim.

Why analytic geometry: a plate's rim is a large, glossy, smooth surface; heights taken from distance transforms
of polygons show facets and radial streaks under a specular light. The normalised superellipse radius `rho`
(0 at the centre, 1 on the outline) is smooth everywhere, so the rim profile is a function of `rho` alone.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from train.synth_food import Canvas, Layer, blob_edge_dt
from train.synth_render import F32, Paint, blob, col, disc, fill, lerp, smoothstep, stroke


def rho_field(c: Canvas, layer: Layer) -> np.ndarray:
    """Normalised superellipse radius of every patch pixel (1.0 on the plate's outline)."""
    p = layer.params
    h, w = c.shape
    y, x = np.mgrid[0:h, 0:w].astype(F32)
    dx, dy = x - c.cx, y - c.cy
    ca, sa = math.cos(layer.angle), math.sin(layer.angle)
    xr = np.abs(dx * ca + dy * sa) / layer.s
    yr = np.abs(-dx * sa + dy * ca) / (layer.s * p["aspect"])
    n = p["n"]
    return (xr**n + yr**n) ** (1.0 / n)


def edge_point(layer: Layer, cx: float, cy: float, ang: float) -> tuple[float, float]:
    """The point of the plate's outline in direction `ang` (radians, image frame) from its centre."""
    p = layer.params
    ca, sa = math.cos(ang - layer.angle), math.sin(ang - layer.angle)
    n = p["n"]
    r = (abs(ca) ** n + abs(sa / p["aspect"]) ** n) ** (-1.0 / n) * layer.s
    return cx + r * math.cos(ang), cy + r * math.sin(ang)


def p_plate(c: Canvas, layer: Layer) -> Paint:
    """Glazed ceramic or slate: rim slope and roll-off as functions of rho, plus a chip or crack if asked."""
    p = layer.params
    h, w = c.shape
    R = layer.s
    rho = rho_field(c, layer)
    d_out = (1.0 - rho) * R  # about the distance to the outline, in pixels
    outer = np.clip(d_out + 0.5, 0.0, 1.0)
    chip_defect = np.zeros((h, w), F32)
    hole = None
    if "chip" in p:
        ang, size, seed = p["chip"]
        ex, ey = edge_point(layer, c.cx, c.cy, ang)
        hole = fill(c.shape, blob(np.random.default_rng(seed), ex, ey, size, size * 0.7, ang, 0.4, count=32))
        chip_defect = np.maximum(chip_defect, np.minimum(hole, outer))
        outer = np.clip(outer - hole, 0, 1)
    roll = smoothstep(0.0, max(1.5, 0.035 * R), d_out)
    if p["style"] == "bowl":
        wall = np.clip(d_out / (0.4 * R), 0, 1)
        lip = smoothstep(0.0, 0.03 * R, d_out) * (1 - smoothstep(0.03 * R, 0.08 * R, d_out))
        height = -(wall**0.7) * 0.4 * R + lip * 0.02 * R
    elif p["style"] == "slate":
        height = roll * 0.02 * R
    else:
        rim = smoothstep(p["well"] - 0.02, p["well"] + 0.1, rho) * (
            1 - smoothstep(p["well"] + 0.1, 1.0, rho) * 0.3
        )
        height = rim * p["rim_h"] * R * roll + roll * 0.01 * R
    colour = c.colour_field(c.tint, 0.015, cell=0.3)
    if p["texture"] == "speckled":
        specks = cv2.GaussianBlur((c.rng.random((h, w)) > 0.985).astype(F32), (0, 0), max(0.5, 0.5 * c.px))
        colour = colour * (1.0 - 0.5 * np.clip(specks * 2, 0, 1))[..., None]
    elif p["texture"] == "stone":
        grain = c.noise(0.02, 2, stretch=12.0) * 0.04 + c.noise(0.3, 2) * 0.04
        colour = colour * (1.0 + grain)[..., None]
    elif p["texture"] == "glaze":  # reactive glaze pools darker towards the rim
        band = smoothstep(p["well"] + 0.05, 1.0, rho)
        colour = lerp(colour, c.tint * 0.6, band * 0.7)
    if p["style"] == "bowl":  # the inside wall sees less of the room's light
        colour = colour * (1.0 - smoothstep(0.0, 0.35 * R, d_out) * 0.25)[..., None]
    if "crack" in p:
        ang, length, seed = p["crack"]
        crng = np.random.default_rng(seed)
        ex, ey = edge_point(layer, c.cx, c.cy, ang)
        dirx, diry = c.cx - ex, c.cy - ey
        norm = math.hypot(dirx, diry)
        dirx, diry = dirx / norm, diry / norm
        path = [(ex - dirx, ey - diry)]
        step = length / 8
        for _ in range(8):
            jx = crng.normal(0, 0.35 * step)
            path.append((path[-1][0] + dirx * step - diry * jx, path[-1][1] + diry * step + dirx * jx))
        crack = stroke(c.shape, np.array(path), max(1.0, 0.5 * c.px)) * (outer > 0.5)
        colour = lerp(colour, colour * 0.3, crack * 0.9)
        height = height - crack * 0.3
        chip_defect = np.maximum(chip_defect, crack)
    if hole is not None:  # the exposed ceramic body around the chip: rough, unglazed
        ex, ey = edge_point(layer, c.cx, c.cy, p["chip"][0])
        near = disc(c.shape, ex, ey, p["chip"][1] * 1.6) * outer
        body = p["chip_body"] * (1 + 0.12 * c.noise(0.02, 1))
        rough = near * smoothstep(max(2.0, 0.3 * p["chip"][1]), 0.0, blob_edge_dt(hole) - 0.5)
        colour = lerp(colour, np.broadcast_to(col(p["body"]), (h, w, 3)) * body[..., None], rough)
        dent = 1.0 - smoothstep(0.0, max(1.5, 0.035 * R), blob_edge_dt(hole))
        height = height - np.maximum(rough, dent) * 0.02 * R
        chip_defect = np.maximum(chip_defect, (rough > 0.2).astype(F32))
    return c.paint(
        outer, colour, height, gloss=p["gloss"], shininess=p["shininess"], lift=0.05 * R, shadow=0.45,
        defect=chip_defect if chip_defect.any() else None, ambient=0.4,
    )  # fmt: skip
