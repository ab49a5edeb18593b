"""`python -m train synth`: a synthetic, DSM-sized dataset of plated dishes on a pass, in MVTec layout with masks.

Why synthetic: the DSM-50 / DSM-100 photos the seed trained on cannot be downloaded. This generator mirrors their
size (dish types, good images, the two kinds of anomaly: incorrectly served known dishes and dishes not on the
menu) and adds what the originals lack: a pixel mask and a severity for every defect, so each scoring method can
be measured on subtle defects too. numpy + OpenCV only (no TensorFlow): `make run` and the clip maker use it.

Layout written (DESIGN.md section 2):
    DIR/train/good/<dish>/<n>.png, DIR/test/good/<dish>/<n>.png, DIR/test/<defect>/<dish>/<n>.png,
    DIR/ground_truth/<defect>/<dish>/<n>_mask.png (uint8 0/255, white = defective),
    DIR/meta.json (preset, seed, size, generator version, and per test image: defect, kind, dish, severity),
    DIR/contact_sheet.png (good samples and defects with their mask outlined).
The bytes written are a function of (preset, seed, size, scene, train_per_dish) only: every image has its own
generator seeded from (seed, split, defect, index), so a run with more good training photos per dish writes the
preset's photos unchanged and adds new ones (the test split never changes): a clean experiment on how many photos
of each dish a kitchen should take.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import UserError
from train.data import META_FILE
from train.synth_render import COUNTER_KINDS, Light, Optics, camera, composite, mark_hidden, render_counter
from train.synth_scene import (
    DEFECTS,
    SEVERITIES,
    Dish,
    apply_defect,
    make_menu,
    make_unknown,
    paint_layer,
    place,
)

log = logging.getLogger(__name__)

GENERATOR = "dishwatch.synth"
GENERATOR_VERSION = 2  # 2: one fixed pass (counter, key light, optics) per dataset by default
SCENES = ("fixed", "varied")
MIN_SIZE, MAX_SIZE = 32, 1024
MAX_TRAIN_PER_DISH = 100
OWNED = ("train", "test", "ground_truth", META_FILE, "contact_sheet.png")
SPLIT_CODE = {"train": 1, "test": 2}
DEFECT_CODE = {"good": 0, **{d: i + 1 for i, d in enumerate(DEFECTS)}}


@dataclass(frozen=True)
class Preset:
    dishes: int
    train_good: int
    test_good: int
    per_defect: int


PRESETS = {
    "dsm50": Preset(dishes=45, train_good=155, test_good=36, per_defect=21),
    "dsm100": Preset(dishes=84, train_good=335, test_good=40, per_defect=24),
    "tiny": Preset(dishes=4, train_good=24, test_good=4, per_defect=3),
}


@dataclass(frozen=True)
class Item:
    """One image the generator will write."""

    split: str  # train | test
    defect: str  # good | one of DEFECTS
    dish: str  # folder name
    dish_index: int  # menu index, or unknown-dish index for unknown_meal
    number: int  # running number within (split, defect)
    severity: str  # "" for good images

    @property
    def path(self) -> str:
        return f"{self.split}/{self.defect}/{self.dish}/{self.number:03d}.png"

    @property
    def mask_path(self) -> str | None:
        if self.defect == "good":
            return None
        return f"ground_truth/{self.defect}/{self.dish}/{self.number:03d}_mask.png"


def plan(preset: str, seed: int, train_per_dish: int | None = None) -> list[Item]:
    """Every image a run would write, in order, without rendering anything (cheap: the menu is just numbers).

    train_per_dish replaces the preset's number of good training photos by that many per dish. Photo k is always
    of dish k mod dishes and seeded by k, so runs with different numbers share their first photos (a larger number
    keeps all of the preset's, a smaller one a prefix of them).
    """
    p = PRESETS[preset]
    menu = make_menu(seed, p.dishes)
    n_train = p.train_good if train_per_dish is None else train_per_dish * p.dishes
    items = [Item("train", "good", menu[k % p.dishes].name, k % p.dishes, k, "") for k in range(n_train)]
    offset = p.dishes // 2
    items += [
        Item("test", "good", menu[(k + offset) % p.dishes].name, (k + offset) % p.dishes, k, "")
        for k in range(p.test_good)
    ]
    n_unknown = max(2, p.per_defect // 2)
    for j, defect in enumerate(DEFECTS):
        for k in range(p.per_defect):
            if defect == "unknown_meal":
                u = k % n_unknown
                sev = SEVERITIES[u % 3]
                items.append(Item("test", defect, make_unknown(seed, u, sev, menu).name, u, k, sev))
                continue
            d = int(np.random.default_rng([seed, 0x9E, j, k]).integers(p.dishes))
            items.append(Item("test", defect, menu[d].name, d, k, SEVERITIES[k % 3]))
    return items


# --- rendering ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Venue:
    """One pass as its bolted camera sees it: the same counter, key light and optics in every photo.

    Why: a real data set comes from one pass. Drawing a new counter per photo (scene "varied") makes the
    background, not the dish, the biggest difference between two good photos, which no real kitchen shows and
    which buries every defect under background variation. A little camera shake, light drift and white-balance
    drift per photo remain.
    """

    counter: np.ndarray  # float32 BGR, `shake` px larger than the photo on every side
    azimuth: float  # radians
    elevation: float
    optics: Optics
    shake: int

    @classmethod
    def make(cls, seed: int, size: int) -> Venue:
        rng = np.random.default_rng([seed, 0x7A55])
        shake = max(1, round(size / 128))
        kind = str(rng.choice(COUNTER_KINDS, p=[0.5, 0.25, 0.25]))
        counter = render_counter(rng, size + 2 * shake, size + 2 * shake, kind)
        azimuth = math.radians(-135 + rng.normal(0, 15))
        return cls(counter, azimuth, math.radians(rng.uniform(42, 62)), Optics.random(rng), shake)

    def background(self, rng: np.random.Generator, size: int) -> np.ndarray:
        dx, dy = (int(v) for v in rng.integers(0, 2 * self.shake + 1, size=2))
        return self.counter[dy : dy + size, dx : dx + size].copy()

    def light(self, rng: np.random.Generator) -> Light:
        return Light.from_angles(
            self.azimuth + math.radians(rng.normal(0, 4)), self.elevation + math.radians(rng.normal(0, 3))
        )


def render_layers(
    layers, rng: np.random.Generator, size: int, venue: Venue | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Counter, key light, layers, camera: a uint8 BGR photo and the float defect coverage of its pixels.

    With a `venue` the counter, light and optics are the pass's own; without, each photo draws its own.
    """
    px = size / 256.0
    if venue is None:
        img = render_counter(rng, size, size)
        light = Light.from_angles(math.radians(-135 + rng.normal(0, 15)), math.radians(rng.uniform(42, 62)))
    else:
        img = venue.background(rng, size)
        light = venue.light(rng)
    acc = np.zeros((size, size), np.float32)
    for layer in layers:
        paint = paint_layer(layer, px)
        if layer.hidden:
            mark_hidden(paint, acc)
        else:
            composite(img, paint, light, acc, layer.tagged)
    return camera(img, rng, venue.optics if venue else None), acc


def render_item(
    item: Item, menu: list[Dish], seed: int, size: int, venue: Venue | None = None
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """One photo (uint8 BGR), its mask (uint8 0/255, None for good images) and the defect's sub-kind."""
    img, mask, kind, _ = _render(item, menu, seed, size, venue, twin=False)
    return img, mask, kind


def render_twin(
    item: Item, menu: list[Dish], seed: int, size: int, venue: Venue | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(photo, twin, mask, kind) of a defect: the photo render_item writes, and the same photo without the
    defect (the same placement, counter, light and camera noise; only the defect left out).

    Why: the twin is the plate as it should have left the pass, so how far a model's score and map move between
    the two is the defect's own signal, free of the dish-to-dish variation every other comparison carries
    (train.twins). A dish not on the menu has no correct version, so it has no twin.
    """
    if item.defect in ("good", "unknown_meal"):
        raise ValueError(f"{item.path}: a {item.defect} photo has no defect-free twin")
    img, mask, kind, twin = _render(item, menu, seed, size, venue, twin=True)
    assert mask is not None and twin is not None
    return img, twin, mask, kind


def _render(item: Item, menu: list[Dish], seed: int, size: int, venue: Venue | None, twin: bool):
    rng = np.random.default_rng([seed, SPLIT_CODE[item.split], DEFECT_CODE[item.defect], item.number])
    if item.defect == "unknown_meal":
        dish = make_unknown(seed, item.dish_index, item.severity, menu)
    else:
        dish = menu[item.dish_index]
    for _attempt in range(8):
        scene = place(dish, rng, size, tagged=item.defect == "unknown_meal")
        clean = copy.deepcopy(scene.layers) if twin else None  # before the defect touches them
        kind = ""
        if item.defect not in ("good", "unknown_meal"):
            kind = apply_defect(item.defect, scene, dish, rng, item.severity, size / 256.0)
        elif item.defect == "unknown_meal":
            kind = dish.name.split("_", 1)[1] if item.severity == "obvious" else "new_combination"
        twin_rng = copy.deepcopy(rng) if twin else None  # the twin draws the same counter, light and noise
        img, acc = render_layers(scene.layers, rng, size, venue)
        if item.defect == "good":
            return img, None, "", None
        mask = np.where(acc > 0.3, 255, 0).astype(np.uint8)
        if np.count_nonzero(mask) >= 2:
            twin_img = render_layers(clean, twin_rng, size, venue)[0] if twin else None
            return img, mask, kind, twin_img
        log.debug("%s: defect hidden by the rest of the dish, placing it again", item.path)
    raise RuntimeError(
        f"{item.path}: could not place a visible {item.defect}"
    )  # a generator bug, not bad input


# --- writing ------------------------------------------------------------------------------------------


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover
        raise UserError(f"{path}: cannot encode PNG")
    path.write_bytes(buf.tobytes())


def prepare_out(out: Path) -> None:
    """Make `out` ready: new or empty, or a previous synth output that is cleared first. Never touch others."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        meta = out / META_FILE
        try:
            ours = json.loads(meta.read_text()).get("generator") == GENERATOR
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise UserError(
                f"--out {out}: folder is not empty and holds no synth output (meta.json); use a new folder"
            )
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _sheet_picks(items: list[Item]) -> list[Item]:
    """8 good photos of different dishes, then per defect an obvious and a subtle one."""
    goods, seen = [], set()
    for it in items:
        if it.defect == "good" and it.dish not in seen:
            goods.append(it)
            seen.add(it.dish)
    picks = goods[:8]
    for defect in DEFECTS:
        mine = [it for it in items if it.defect == defect]
        for sev in ("obvious", "subtle"):
            found = next((it for it in mine if it.severity == sev), None)
            if found is not None:
                picks.append(found)
    return picks


def contact_sheet(tiles: list[tuple[np.ndarray, np.ndarray | None, str]], cols: int = 8) -> np.ndarray:
    """A grid of photos; defects with their mask outlined in magenta and a label."""
    side = max(96, min(256, tiles[0][0].shape[0] * 2 if tiles[0][0].shape[0] < 96 else tiles[0][0].shape[0]))
    rows = math.ceil(len(tiles) / cols)
    sheet = np.full((rows * (side + 4) + 4, cols * (side + 4) + 4, 3), 30, np.uint8)
    font = max(0.3, side / 256 * 0.42)
    for i, (img, mask, label) in enumerate(tiles):
        t = cv2.resize(
            img, (side, side), interpolation=cv2.INTER_AREA if img.shape[0] > side else cv2.INTER_NEAREST
        )
        if mask is not None:
            m = cv2.resize(mask, (side, side), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(t, contours, -1, (255, 0, 255), 1, cv2.LINE_AA)
        cv2.rectangle(t, (0, 0), (side, int(16 * font / 0.42)), (0, 0, 0), -1)
        cv2.putText(
            t,
            label,
            (3, int(12 * font / 0.42)),
            cv2.FONT_HERSHEY_SIMPLEX,
            font,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        r, c = divmod(i, cols)
        sheet[
            4 + r * (side + 4) : 4 + r * (side + 4) + side, 4 + c * (side + 4) : 4 + c * (side + 4) + side
        ] = t
    return sheet


@dataclass(frozen=True)
class Summary:
    out: Path
    counts: dict[str, int]
    dishes: int
    seconds: float


def generate(
    preset: str,
    out: str | Path,
    seed: int = 0,
    size: int = 256,
    scene: str = "fixed",
    train_per_dish: int | None = None,
) -> Summary:
    """Write the whole dataset for (preset, seed, size, scene, train_per_dish) into `out`; see the module docstring.

    scene "fixed": one pass (counter, light, optics) for every photo, as a real installation; "varied": each
    photo on its own counter under its own light (a harder, less realistic set, kept to test robustness).
    train_per_dish: good training photos per dish instead of the preset's number (None keeps the preset's).
    """
    if preset not in PRESETS:
        raise UserError(f"--preset: unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    if scene not in SCENES:
        raise UserError(f"--scene: unknown scene {scene!r} (choose from {', '.join(SCENES)})")
    if train_per_dish is not None and not 1 <= train_per_dish <= MAX_TRAIN_PER_DISH:
        raise UserError(f"--train-per-dish must be between 1 and {MAX_TRAIN_PER_DISH}, got {train_per_dish}")
    out = Path(out)
    prepare_out(out)
    t0 = time.perf_counter()
    items = plan(preset, seed, train_per_dish)
    menu = make_menu(seed, PRESETS[preset].dishes)
    venue = Venue.make(seed, size) if scene == "fixed" else None
    meta = {"generator": GENERATOR, "version": GENERATOR_VERSION, "preset": preset, "seed": seed, "size": size,
            "scene": scene, "train_per_dish": train_per_dish, "complete": False}  # fmt: skip
    (out / META_FILE).write_text(json.dumps(meta))  # marks the folder as ours even if the run is cut short
    picks = {it.path: None for it in _sheet_picks(items)}
    images: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for n, it in enumerate(items):
        img, mask, kind = render_item(it, menu, seed, size, venue)
        _write_png(out / it.path, img)
        key = f"{it.split}/{it.defect}"
        counts[key] = counts.get(key, 0) + 1
        if it.split == "test":
            rec = {"defect": it.defect, "kind": kind, "dish": it.dish, "severity": it.severity or None}
            if mask is not None:
                _write_png(out / it.mask_path, mask)
                rec["mask"] = it.mask_path
                rec["mask_fraction"] = round(float(np.count_nonzero(mask)) / mask.size, 6)
            images[it.path] = rec
        if it.path in picks:
            label = "good" if it.defect == "good" else f"{it.defect} {kind} {it.severity}"
            picks[it.path] = (img, mask, label)
        if (n + 1) % 100 == 0:
            log.info("synth: %d/%d images", n + 1, len(items))
    _write_png(out / "contact_sheet.png", contact_sheet([v for v in picks.values() if v is not None]))
    seconds = time.perf_counter() - t0
    meta.update(
        complete=True,
        dishes=[d.name for d in menu],
        unknown_dishes=sorted({it.dish for it in items if it.defect == "unknown_meal"}),
        defects=list(DEFECTS),
        severities=list(SEVERITIES),
        counts=counts,
        images=images,
    )
    (out / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return Summary(out, counts, len(menu), seconds)


def cli_main(args) -> int:
    """Handler of `python -m train synth`."""
    s = generate(
        args.preset,
        args.out,
        seed=args.seed,
        size=args.size,
        scene=args.scene,
        train_per_dish=args.train_per_dish,
    )
    total = sum(s.counts.values())
    defects = sum(v for k, v in s.counts.items() if not k.endswith("/good"))
    print(
        f"synth {args.preset}: {total} images of {s.dishes} dishes "
        f"(train good {s.counts.get('train/good', 0)}, test good {s.counts.get('test/good', 0)}, "
        f"defects {defects} in {len(DEFECTS)} types) in {s.seconds:.1f} s -> {s.out}"
    )
    return 0
