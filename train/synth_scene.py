"""The menu, the canonical plating of each dish, and the defects of the synthetic dish generator.

Why a menu of canonical platings: the anomaly detector learns "how this kitchen plates this dish", so every good
image of a dish must share its plate, components and their places, and differ only by what varies in service
(a component a little off, a turn of the plate, the light). A defect is then a small, named edit of the scene
(a layer hidden, moved, swapped, added, a chip in the plate), so its pixel mask is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from train.synth_food import PAINTERS, Canvas, Layer
from train.synth_intruders import INTRUDER_PAINTERS
from train.synth_plate import p_plate
from train.synth_render import Paint

SEVERITIES = ("obvious", "moderate", "subtle")
DEFECTS = (
    "missing_component",
    "extra_component",
    "misplaced_component",
    "spill",
    "foreign_object",
    "chipped_plate",
    "wrong_plate",
    "unknown_meal",
)

# kind -> (role, size in plate radii, tints BGR 0..255, variants)
KINDS: dict[str, tuple[str, float, tuple[tuple[int, int, int], ...], int]] = {
    "salmon": ("protein", 0.41, ((95, 135, 240), (105, 150, 245)), 2),
    "whitefish": ("protein", 0.41, ((215, 232, 240), (200, 225, 238)), 2),
    "steak": ("protein", 0.41, ((80, 80, 175), (90, 95, 190)), 2),
    "chicken": ("protein", 0.41, ((95, 170, 220), (110, 185, 230)), 1),
    "shrimp": ("protein", 0.41, ((110, 150, 245), (95, 135, 240)), 2),
    "meatballs": ("protein", 0.38, ((45, 75, 125), (50, 90, 140)), 3),
    "tofu": ("protein", 0.38, ((160, 215, 235), (120, 180, 220)), 3),
    "rice": ("starch", 0.36, ((222, 235, 240), (80, 190, 235), (150, 185, 205)), 1),
    "quinoa": ("starch", 0.36, ((150, 195, 220), (120, 170, 200)), 1),
    "mash": ("starch", 0.34, ((160, 215, 238), (150, 110, 150)), 2),
    "pasta": ("starch", 0.41, ((120, 205, 235), (110, 190, 225)), 3),
    "potatoes": ("starch", 0.38, ((110, 195, 235), (100, 180, 225)), 3),
    "polenta": ("starch", 0.36, ((70, 190, 235), (90, 200, 240)), 2),
    "broccoli": ("veg", 0.30, ((45, 120, 45), (55, 135, 60)), 2),
    "carrots": ("veg", 0.28, ((30, 125, 240), (40, 110, 230)), 2),
    "peas": ("veg", 0.27, ((60, 175, 95), (50, 160, 80)), 1),
    "asparagus": ("veg", 0.30, ((70, 150, 95), (60, 140, 85)), 3),
    "greens": ("veg", 0.31, ((70, 185, 115), (45, 140, 70)), 5),
    "tomato": ("veg", 0.28, ((40, 50, 205), (50, 60, 220)), 1),
    "beans": ("veg", 0.28, ((60, 150, 70), (55, 140, 60)), 1),
    "herb": ("garnish", 0.12, ((40, 115, 45), (50, 130, 55)), 1),
    "lemon": ("garnish", 0.11, ((60, 215, 245), (90, 220, 235)), 1),
    "microgreens": ("garnish", 0.14, ((70, 200, 120), (90, 180, 140)), 1),
    "chives": ("garnish", 0.14, ((50, 140, 60), (60, 160, 70)), 1),
}
SAUCES = ((30, 40, 65), (45, 130, 70), (50, 100, 200), (170, 215, 235), (80, 30, 150), (40, 165, 235))
OFF_MENU = ("sushi", "dumplings", "soup", "egg", "pizza")
OFF_TINTS = {
    "sushi": (80, 120, 240),
    "dumplings": (185, 215, 230),
    "soup": (50, 90, 200),
    "egg": (235, 242, 248),
    "pizza": (110, 200, 240),
}

# plate shapes: superellipse exponent, aspect, well (flat part, fraction of radius), style
SHAPES = {
    "round": dict(n=2.0, aspect=1.0, well=0.68, style="plate", rim_h=0.1),
    "coupe": dict(n=2.0, aspect=1.0, well=0.82, style="plate", rim_h=0.12),
    "oval": dict(n=2.0, aspect=0.78, well=0.7, style="plate", rim_h=0.1),
    "square": dict(n=5.0, aspect=1.0, well=0.72, style="plate", rim_h=0.1),
    "bowl": dict(n=2.0, aspect=1.0, well=0.6, style="bowl", rim_h=0.0),
    "slate": dict(n=12.0, aspect=0.72, well=0.95, style="slate", rim_h=0.0),
}
# plate colours: albedo, texture, gloss, shininess, exposed body colour (seen in a chip)
COLOURS = {
    "white": ((232, 236, 238), "plain", 0.55, 70, (185, 195, 200)),
    "cream": ((196, 222, 236), "plain", 0.5, 70, (170, 185, 195)),
    "black": ((50, 48, 47), "plain", 0.45, 70, (150, 155, 160)),
    "blue": ((140, 90, 45), "glaze", 0.5, 60, (175, 185, 190)),
    "grey": ((170, 174, 178), "speckled", 0.3, 40, (140, 150, 160)),
    "sage": ((150, 178, 155), "glaze", 0.45, 60, (170, 185, 190)),
    "slate": ((58, 56, 55), "stone", 0.08, 15, (110, 110, 110)),
}


@dataclass(frozen=True)
class Component:
    kind: str
    role: str
    u: float  # plate coordinates, in plate radii
    v: float
    size: float
    angle: float
    tint: tuple[int, int, int]
    variant: int


@dataclass(frozen=True)
class Dish:
    name: str
    shape: str
    colour: str
    plate_scale: float
    plate_angle: float
    components: tuple[Component, ...]


def plate_params(shape: str, colour: str) -> dict:
    albedo, texture, gloss, shininess, body = COLOURS[colour]
    return {**SHAPES[shape], "texture": texture, "gloss": gloss, "shininess": shininess, "body": body,
            "chip_body": 0.8, "albedo": albedo}  # fmt: skip


def _plate_choice(rng: np.random.Generator) -> tuple[str, str]:
    shape = str(rng.choice(list(SHAPES), p=[0.3, 0.12, 0.14, 0.14, 0.18, 0.12]))
    if shape == "slate":
        return shape, "slate"
    colour = str(
        rng.choice(["white", "cream", "black", "blue", "grey", "sage"], p=[0.38, 0.14, 0.14, 0.12, 0.12, 0.1])
    )
    return shape, colour


def _comp(rng: np.random.Generator, kind: str, r: float, theta: float, scale: float = 1.0) -> Component:
    role, size, tints, variants = KINDS[kind]
    tint = tints[int(rng.integers(len(tints)))]
    return Component(
        kind, role, r * math.cos(theta), r * math.sin(theta), size * scale * rng.uniform(0.92, 1.08),
        rng.uniform(0, 2 * math.pi), tint, int(rng.integers(variants)),
    )  # fmt: skip


def _of_role(role: str) -> list[str]:
    return [k for k, v in KINDS.items() if v[0] == role]


def make_dish(rng: np.random.Generator, name_prefix: str, index: int, kinds: dict | None = None) -> Dish:
    """One dish with its canonical plating. `kinds` may force {protein, starch, vegs, garnish, shape, colour}.

    A plating where a component hides under another is drawn again: what the menu shows must be visible, or
    its `missing_component` defect would change nothing."""
    while True:
        dish = _plating(rng, name_prefix, index, kinds)
        if _all_visible(dish.components):
            return dish


def _all_visible(comps: tuple[Component, ...]) -> bool:
    for i, below in enumerate(comps):
        for above in comps[i + 1 :]:
            if above.role in ("garnish", "sauce") or below.size > 1.3 * above.size:
                continue
            if math.hypot(below.u - above.u, below.v - above.v) < 0.55 * above.size:
                return False
    return True


def _plating(rng: np.random.Generator, name_prefix: str, index: int, kinds: dict | None) -> Dish:
    kinds = kinds or {}
    shape, colour = kinds.get("shape"), kinds.get("colour")
    if shape is None or colour is None:
        shape, colour = _plate_choice(rng)
    protein = kinds.get("protein", str(rng.choice(_of_role("protein"))))
    starch = kinds.get("starch", str(rng.choice(_of_role("starch"))))
    vegs = kinds.get("vegs") or list(rng.choice(_of_role("veg"), size=int(rng.integers(1, 3)), replace=False))
    garnish = kinds.get("garnish", str(rng.choice(_of_role("garnish"))))
    t0 = rng.uniform(0, 2 * math.pi)
    comps: list[Component] = []
    sauce = str(rng.choice(["dots", "drizzle", "swoosh", "none"], p=[0.35, 0.25, 0.2, 0.2]))
    sauce_tint = SAUCES[int(rng.integers(len(SAUCES)))]
    if shape == "bowl":
        comps.append(_comp(rng, starch, 0.1, t0, 1.7))
        comps[-1] = replace(comps[-1], u=0.0, v=0.0)
        for i, veg in enumerate(vegs):
            comps.append(_comp(rng, veg, 0.3, t0 + 2.3 + 1.6 * i, 0.9))
        comps.append(_comp(rng, protein, 0.2, t0, 0.95))
        comps.append(_comp(rng, garnish, 0.05, t0 + 1.0))
        sauce = "drizzle" if sauce == "swoosh" else sauce
    elif shape in ("oval", "slate"):
        axis = rng.choice([-1.0, 1.0])
        comps.append(_comp(rng, starch, 0.38, 0.0 if axis > 0 else math.pi, 0.95))
        for i, veg in enumerate(vegs):
            comps.append(
                _comp(rng, veg, 0.33, math.pi * (0.55 + 0.9 * i) + (0 if axis > 0 else math.pi), 0.85)
            )
        comps.append(_comp(rng, protein, 0.12, math.pi if axis > 0 else 0.0))
        comps.append(_comp(rng, garnish, 0.12, math.pi if axis > 0 else 0.0))
        sauce = "drizzle" if sauce == "swoosh" else sauce
    else:
        stacked = rng.random() < 0.35
        if stacked:  # protein on a bed of the starch, vegetables beside
            comps.append(_comp(rng, starch, 0.05, t0, 1.25))
            for i, veg in enumerate(vegs):
                comps.append(_comp(rng, veg, 0.42, t0 + 2.0 + 2.2 * i, 0.85))
            comps.append(_comp(rng, protein, 0.12, t0 + math.pi, 0.75))
            comps.append(_comp(rng, garnish, 0.12, t0 + math.pi))
        else:  # starch and protein facing each other, vegetables at the sides
            comps.append(_comp(rng, starch, 0.28, t0))
            for i, veg in enumerate(vegs):
                comps.append(_comp(rng, veg, 0.38, t0 + (1 if i == 0 else -1) * (math.pi / 2 + 0.15), 0.9))
            comps.append(_comp(rng, protein, 0.26, t0 + math.pi * 0.95))
            p = comps[-1]
            comps.append(_comp(rng, garnish, 0.0, 0.0))
            comps[-1] = replace(comps[-1], u=p.u + 0.03, v=p.v - 0.03)
    under: list[Component] = []
    over: list[Component] = []
    if sauce == "dots":
        ta = t0 + rng.choice([-1.0, 1.0]) * math.pi / 4 - 0.3
        for k in range(int(rng.integers(3, 6))):
            sz = 0.035 - 0.004 * k
            under.append(
                Component(
                    "dot",
                    "sauce",
                    0.56 * math.cos(ta + 0.22 * k),
                    0.56 * math.sin(ta + 0.22 * k),
                    sz,
                    0.0,
                    sauce_tint,
                    0,
                )
            )
    elif sauce == "swoosh":
        under.append(
            Component(
                "swoosh",
                "sauce",
                0.1 * math.cos(t0 + 2.5),
                0.1 * math.sin(t0 + 2.5),
                0.42,
                t0 + 1.0,
                sauce_tint,
                0,
            )
        )
    elif sauce == "drizzle":
        p = next(c for c in comps if c.role == "protein")
        over.append(
            Component(
                "drizzle", "sauce", p.u, p.v, p.size * 0.9, p.angle + 0.3, sauce_tint, int(rng.integers(2))
            )
        )
    comps = under + comps
    comps = [c for c in comps if c.role != "garnish"] + over + [c for c in comps if c.role == "garnish"]
    return Dish(
        f"{name_prefix}{index:03d}_{protein}_{starch}", shape, colour, rng.uniform(0.93, 1.0),
        rng.uniform(-0.15, 0.15) if shape in ("oval", "slate", "square") else 0.0, tuple(comps),
    )  # fmt: skip


def make_menu(seed: int, n: int) -> list[Dish]:
    """The menu of a kitchen: `n` dishes, deterministic for the seed, no two with the same protein+starch+veg."""
    rng = np.random.default_rng([seed, 0x3E7])
    dishes: list[Dish] = []
    seen: set = set()
    while len(dishes) < n:
        d = make_dish(rng, "d", len(dishes))
        key = tuple(sorted(c.kind for c in d.components if c.role in ("protein", "starch", "veg")))
        if key in seen:
            continue
        seen.add(key)
        dishes.append(d)
    return dishes


def make_unknown(seed: int, index: int, severity: str, menu: list[Dish]) -> Dish:
    """A dish that is not on the menu: off-menu food (obvious), a new combination on a new plate (moderate), or
    a new combination on a plate the menu uses (subtle)."""
    rng = np.random.default_rng([seed, 0xBAD, index])
    on_menu = {
        tuple(sorted(c.kind for c in d.components if c.role in ("protein", "starch", "veg"))) for d in menu
    }
    if severity == "obvious":
        main = OFF_MENU[index % len(OFF_MENU)]
        shape = "bowl" if main == "soup" else str(rng.choice(["round", "coupe", "square", "oval"]))
        colour = str(rng.choice(["white", "cream", "black", "blue", "grey"]))
        size = {"soup": 0.72, "sushi": 0.62, "dumplings": 0.6}.get(main, 0.45)
        comps = [
            Component(
                main,
                "main",
                0.0 if main == "soup" else 0.12,
                0.0,
                size,
                rng.uniform(0, 6.3),
                OFF_TINTS[main],
                int(rng.integers(3)),
            )
        ]
        if main != "soup":
            comps.insert(0, _comp(rng, str(rng.choice(_of_role("veg"))), 0.4, rng.uniform(0, 6.3), 0.8))
        comps.append(_comp(rng, str(rng.choice(_of_role("garnish"))), 0.05, rng.uniform(0, 6.3)))
        return Dish(f"u{index:03d}_{main}", shape, colour, 0.96, 0.0, tuple(comps))
    while True:
        kinds: dict = {}
        if severity == "subtle":
            ref = menu[int(rng.integers(len(menu)))]
            kinds.update(shape=ref.shape, colour=ref.colour)
        d = make_dish(rng, "u", index, kinds)
        key = tuple(sorted(c.kind for c in d.components if c.role in ("protein", "starch", "veg")))
        if key not in on_menu:
            return d


# --- a dish in one photo ------------------------------------------------------------------------------


@dataclass
class Scene:
    """A dish placed on the pass in one photo: the plate layer first, then food in drawing order."""

    layers: list[Layer]
    cx: float
    cy: float
    radius: float
    rot: float


def place(dish: Dish, rng: np.random.Generator, size: int, tagged: bool = False) -> Scene:
    """Lay out a dish for one photo, with the small variation of service (camera bolted above the pass)."""
    cx = size / 2 + rng.normal(0, 0.02) * size
    cy = size / 2 + rng.normal(0, 0.02) * size
    rot = rng.normal(0, 0.05)
    radius = size * 0.42 * dish.plate_scale * (1 + rng.normal(0, 0.012))
    layers = [plate_layer(dish.shape, dish.colour, cx, cy, radius, dish.plate_angle + rot, rng)]
    for c in dish.components:
        layers.append(component_layer(c, rng, cx, cy, radius, rot, tagged))
    return Scene(layers, cx, cy, radius, rot)


def plate_layer(shape: str, colour: str, cx: float, cy: float, radius: float, angle: float, rng) -> Layer:
    params = plate_params(shape, colour)
    return Layer(
        "plate", "plate", cx, cy, radius, angle, params["albedo"], 0, int(rng.integers(2**62)), params=params
    )


def component_layer(
    c: Component, rng, cx: float, cy: float, radius: float, rot: float, tagged: bool
) -> Layer:
    jitter = 0.02 if c.role != "sauce" else 0.01
    u = c.u + rng.normal(0, jitter)
    v = c.v + rng.normal(0, jitter)
    cr, sr = math.cos(rot), math.sin(rot)
    x = cx + radius * (u * cr - v * sr)
    y = cy + radius * (u * sr + v * cr)
    s = max(1.0, c.size * radius * (1 + rng.normal(0, 0.04)))
    angle = c.angle + rot + rng.normal(0, 0.1 if c.role in ("protein", "starch", "veg") else 0.05)
    return Layer(c.kind, c.role, x, y, s, angle, c.tint, c.variant, int(rng.integers(2**62)), tagged=tagged)


# --- defects ------------------------------------------------------------------------------------------


def _pick(layers: list[Layer], roles: tuple[str, ...], rng) -> int | None:
    idx = [i for i, layer in enumerate(layers) if layer.role in roles and not layer.hidden]
    return int(rng.choice(idx)) if idx else None


def _by_severity(layers, severity, rng, table: dict[str, tuple[str, ...]]) -> int:
    order = list(SEVERITIES[SEVERITIES.index(severity) :]) + list(SEVERITIES[: SEVERITIES.index(severity)])
    for sev in order:
        i = _pick(layers, table[sev], rng)
        if i is not None:
            return i
    raise AssertionError("a dish always has a protein")


def _free_spot(scene: Scene, rng, r_lo: float, r_hi: float) -> tuple[float, float]:
    """A place on the plate (image pixels) away from the food already there, when there is one."""
    best, best_d = (scene.cx, scene.cy), -1.0
    for _ in range(24):
        r = scene.radius * rng.uniform(r_lo, r_hi)
        t = rng.uniform(0, 2 * math.pi)
        x, y = scene.cx + r * math.cos(t), scene.cy + r * math.sin(t)
        d = min(
            (math.hypot(x - ly.x, y - ly.y) - ly.s for ly in scene.layers[1:] if not ly.hidden), default=9e9
        )
        if d > best_d:
            best, best_d = (x, y), d
    return best


def apply_defect(defect: str, scene: Scene, dish: Dish, rng, severity: str, px: float) -> str:
    """Edit the scene in place to show `defect` at `severity`; return the sub-kind (what exactly is wrong)."""
    L = scene.layers
    R = scene.radius
    if defect == "missing_component":
        i = _by_severity(
            L, severity, rng, {"obvious": ("protein", "starch"), "moderate": ("veg",), "subtle": ("garnish",)}
        )
        L[i] = replace(L[i], hidden=True, tagged=True)
        return L[i].role
    if defect == "extra_component":
        if severity == "obvious":
            i = _by_severity(L, "obvious", rng, {s: ("protein", "starch") for s in SEVERITIES})
            role = L[i].role
            other = [k for k in _of_role(role) if k not in {ly.kind for ly in L}]
            kind = str(rng.choice(other))
            _, _, tints, variants = KINDS[kind]
            L[i : i + 1] = [replace(L[i], hidden=True, tagged=True),
                            replace(L[i], kind=kind, tint=tints[0], variant=int(rng.integers(variants)), tagged=True)]  # fmt: skip
            return f"wrong_{role}"
        role = "veg" if severity == "moderate" else "garnish"
        kind = str(rng.choice([k for k in _of_role(role) if k not in {ly.kind for ly in L}]))
        x, y = _free_spot(scene, rng, 0.15, 0.5)
        _, size, tints, variants = KINDS[kind]
        s = size * R * (0.8 if role == "veg" else 0.9)
        L.append(
            Layer(
                kind,
                role,
                x,
                y,
                s,
                rng.uniform(0, 6.3),
                tints[0],
                int(rng.integers(variants)),
                int(rng.integers(2**62)),
                tagged=True,
            )
        )
        return f"extra_{role}"
    if defect == "misplaced_component":
        table = {
            "obvious": ("protein", "starch"),
            "moderate": ("veg", "protein"),
            "subtle": ("garnish", "veg"),
        }
        i = _by_severity(L, severity, rng, table)
        dist = {"obvious": 0.45, "moderate": 0.3, "subtle": 0.2}[severity] * R
        t = rng.uniform(0, 2 * math.pi)
        nx, ny = L[i].x + dist * math.cos(t), L[i].y + dist * math.sin(t)
        lim = 0.62 * R
        dx, dy = nx - scene.cx, ny - scene.cy
        k = min(1.0, lim / max(math.hypot(dx, dy), 1e-6))
        moved = replace(L[i], x=scene.cx + dx * k, y=scene.cy + dy * k, tagged=True)
        if math.hypot(moved.x - L[i].x, moved.y - L[i].y) < 0.1 * R:  # clamped back: turn it instead
            moved = replace(moved, x=L[i].x, y=L[i].y, angle=L[i].angle + math.pi / 2)
        L[i : i + 1] = [replace(L[i], hidden=True, tagged=True), moved]
        return L[i].role
    if defect == "spill":
        size = {"obvious": 0.21, "moderate": 0.1, "subtle": 0.045}[severity] * R
        p = L[0].params
        outer = 1.0 if p["style"] != "slate" else 0.9
        t = rng.uniform(0, 2 * math.pi)
        r = R * rng.uniform(p["well"] + 0.05, outer - 0.06) if p["well"] < 0.9 else R * rng.uniform(0.6, 0.8)
        aspect = p["aspect"]
        x, y = scene.cx + r * math.cos(t), scene.cy + r * math.sin(t) * aspect
        sauces = [ly.tint for ly in L if ly.role == "sauce"]
        tint = sauces[0] if sauces else SAUCES[int(rng.integers(len(SAUCES)))]
        variant = int(rng.integers(3))
        L.append(
            Layer(
                "spill",
                "spill",
                x,
                y,
                max(1.5 * px, size),
                t + math.pi / 2,
                tint,
                variant,
                int(rng.integers(2**62)),
                tagged=True,
            )
        )
        return ("drop", "smear", "drips")[variant]
    if defect == "foreign_object":
        sub = str(rng.choice(["hair", "shard", "insect"], p=[0.45, 0.25, 0.3]))
        frac = {"hair": (0.7, 0.45, 0.25), "shard": (0.12, 0.08, 0.05), "insect": (0.1, 0.07, 0.045)}[sub]
        size = max(2.0 * px, frac[SEVERITIES.index(severity)] * R)
        r = R * rng.uniform(0.0, 0.8)
        t = rng.uniform(0, 2 * math.pi)
        tint = {
            "hair": [(20, 25, 35), (40, 60, 90), (90, 140, 175), (15, 15, 15)][int(rng.integers(4))],
            "shard": [(200, 120, 30), (230, 225, 215)][int(rng.integers(2))],
            "insect": (22, 25, 28),
        }[sub]
        L.append(
            Layer(
                sub,
                "foreign",
                scene.cx + r * math.cos(t),
                scene.cy + r * math.sin(t),
                size,
                rng.uniform(0, 6.3),
                tint,
                int(rng.integers(4)),
                int(rng.integers(2**62)),
                tagged=True,
            )
        )
        return sub
    if defect == "chipped_plate":
        sub = "chip" if rng.random() < 0.6 else "crack"
        k = SEVERITIES.index(severity)
        params = dict(L[0].params)
        ang = rng.uniform(0, 2 * math.pi)
        if sub == "chip":
            params["chip"] = (ang, max(1.5 * px, (0.11, 0.065, 0.035)[k] * R), int(rng.integers(2**62)))
            params["chip_body"] = float(rng.uniform(0.7, 1.0))
        else:
            params["crack"] = (ang, (0.4, 0.25, 0.13)[k] * R, int(rng.integers(2**62)))
        L[0] = replace(L[0], params=params)
        return sub
    if defect == "wrong_plate":
        shape, colour = dish.shape, dish.colour
        if severity == "obvious":
            choices = [
                (s, c)
                for s in SHAPES
                for c in COLOURS
                if s != shape and c != colour and (s == "slate") == (c == "slate")
            ]
        elif severity == "moderate":
            choices = [
                (s, c)
                for s in SHAPES
                for c in COLOURS
                if (s == shape) != (c == colour) and (s == "slate") == (c == "slate")
            ]
            if shape == "slate":
                choices = [("square", "black"), ("oval", "black"), ("square", "grey")]
        else:
            # a look-alike: white <-> cream, or the same glaze on a near shape (round <-> coupe ...)
            similar = {"white": "cream", "cream": "white", "grey": "white"}
            near_shape = {
                "round": "coupe",
                "coupe": "round",
                "square": "round",
                "oval": "round",
                "bowl": "coupe",
            }
            if shape == "slate":
                choices = [("square", "black")]
            elif colour in similar:
                choices = [(shape, similar[colour])]
            else:
                choices = [(near_shape[shape], colour)]
        new_shape, new_colour = choices[int(rng.integers(len(choices)))]
        old = L[0]
        new = plate_layer(new_shape, new_colour, old.x, old.y, old.s, old.angle, rng)
        L[0:1] = [replace(old, hidden=True, tagged=True), replace(new, tagged=True)]
        return f"{new_shape}_{new_colour}"
    raise ValueError(defect)


def paint_layer(layer: Layer, px: float) -> Paint:
    """Render one layer into its patch, with a generator seeded by the layer alone (so a defect elsewhere
    never changes how an untouched component looks)."""
    rng = np.random.default_rng(layer.seed)
    if layer.kind == "plate":
        return p_plate(Canvas(rng, layer, 1.05, px), layer)
    painter, extent = PAINTERS.get(layer.kind) or INTRUDER_PAINTERS[layer.kind]
    return painter(Canvas(rng, layer, extent, px))
