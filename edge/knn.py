"""Nearest-neighbour scoring against a memory bank of good patch features (PatchCore-style): numpy, or a TFLite model.

The backbone runs as int8 TFLite and outputs a grid of patch features; the search over a coreset bank of a few
thousand vectors is one matrix product per crop. The bank ships in the bundle as `bank.npz` with its sha256
checked like the model's. Here the search is numpy (exact; the reference, and what training and bundles without a
search model use); a bundle made by today's convert also carries the fine bank's search as an int8 TFLite model
(`search.tflite`, edge.search), which Bank.score uses in its place: on one thread the search takes 4.8 ms instead
of 19, a crop end to end 16.0 ms instead of 30 (README, "Speed and memory").

Scores are Euclidean distances: a patch's score is the distance to its nearest good patch; the anomaly map is the
patch scores brought to the crop's size and blurred; the image's patch score is the map's peak (one bad spot is
enough), so the number compared with the threshold is the top of the heat map the kitchen sees, and a flagged crop
always has a region above the threshold. (Format-1 bundles took the largest raw patch score, `peak = "patch"`; the
map's peak was +0.020 image AUROC on dsm100, better on each of four coreset selections, docs/measurements.md.) The
global score is the distance of the crop's mean feature to the nearest good image's mean feature (a dish that is not
on the menu shifts everything a little).

`distance = "relative"` divides the distance to each bank row by that row's spacing (its distance to the nearest
other bank row) before taking the minimum. Why: good patches are not spread evenly: a plain steel rim is a dense
cluster, a garnish's texture is sparse. An absolute distance that is ordinary in a sparse region is large in a dense
one, so one threshold over-flags rare good textures and under-flags small changes to common ones (a hair on the
rim). PatchCore reweights its scores for the same reason. Measured on dsm100 (docs/measurements.md): +0.009 image
AUROC on average over five coreset selections (-0.019 to +0.032), inside their noise, so it is an option, not the
default.

`distance = "calibrated"` (the default for new runs) divides by a row scale measured on held-out good patches
instead: each training photo's patches are matched to the bank without the rows that came from that photo, and a
row's scale is the mean distance of the held-out patches it was nearest to (shrunk towards the median of all of
them, so a row that few patches reach keeps a typical scale). Why: a row's spacing says how sparse the bank is
there, not how far a new good patch of that kind lands; the held-out distance is that number, so the ratio reads
"how unusual is this distance for a patch that looks like this". Food re-rendered on every plate gets a large scale,
a clean rim a small one, and a chip or a spill on the rim stands out. Measured (docs/measurements.md): +0.019 image
AUROC on dsm100 and +0.014 on dsm50, better on each of six coreset selections; chipped plates +0.08. The coarse
stage carries its own row scales, made the same way. On the device it is the same arithmetic as "relative".

A **coarse stage** (`Bank.coarse`, an extension of bundle format 2): a second, small bank of a deep feature stage
(the backbone's first stride-32 block, a 7x7 grid at 224 px) whose map is averaged with the fine one. Why: a
stride-8 patch sees a few millimetres of food or rim, so a dish served on another menu dish's plate, or a
combination of components that are each on the menu, is made of patches the fine bank knows; a stride-32 cell sees a
quarter of the plate with what lies on it. Measured on dsm100, int8 (docs/measurements.md): pixel AUROC 0.80 ->
0.88, wrong-plate image AUROC 0.86 -> 0.98, image AUROC 0.813 -> 0.821 (within the coreset noise). The model appends
the coarse stage's channels to its grid, nearest-upsampled (each coarse cell a step x step block), so one output
tensor carries both and the device reads every step-th cell.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge.bundle import read_checked
from edge.errors import UserError

if TYPE_CHECKING:
    from edge.learning import LearnedRows

log = logging.getLogger(__name__)

BANK_FILE = "bank.npz"


DISTANCES = ("euclidean", "relative", "calibrated")
ROW_SCALED = ("relative", "calibrated")  # distances that divide by a per-row scale (patch_spacing)
PEAKS = ("map", "patch")


def nn_distances(
    query: np.ndarray,
    bank: np.ndarray,
    chunk: int = 512,
    row_scale: np.ndarray | None = None,
    skip_self: bool = False,
    exclude: np.ndarray | None = None,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Distance of each query row to its nearest bank row; with `row_scale` (M,), the distance to bank row j is
    divided by row_scale[j] first (the "relative" and "calibrated" distances). `skip_self` (query is bank) ignores
    each row itself; `exclude` (M,) bool ignores those rows (held-out scoring: a query with nothing left to
    match is infinitely far). `return_index` also returns each query's nearest row (0 when there is none).

    |q - b|^2 = |q|^2 - 2 q.b + |b|^2, evaluated in bank chunks so memory stays at (N x chunk) floats: 784
    patches x 512 is 1.6 MB and fits the cache (784 x 4814 x 152 on one thread, in one run: chunks of 2048, 1024,
    512, 256 took 13.7, 13.8, 11.9, 13.0 ms; the default bundle's scorer peaked at 122 MB RSS with 2048, 113 MB
    with 512).
    """
    q = np.ascontiguousarray(query, dtype=np.float32)
    q2 = np.einsum("ij,ij->i", q, q)
    q_minus2 = -2.0 * q
    best = np.full(q.shape[0], np.inf, dtype=np.float32)
    index = np.zeros(q.shape[0], dtype=np.int64)
    for start in range(0, bank.shape[0], chunk):
        b = np.asarray(bank[start : start + chunk], dtype=np.float32)
        # in place on the one (N x chunk) product: the temporaries of `q2 - 2 q.b + b2` cost more than the
        # matrix product itself (measured, docs/measurements.md)
        d2 = q_minus2 @ b.T
        d2 += np.einsum("ij,ij->i", b, b)[None, :]
        # a ratio needs the whole squared distance; otherwise |q|^2 can wait until after the min
        if row_scale is not None:
            d2 += q2[:, None]
            np.maximum(d2, 0.0, out=d2)
            d2 /= np.square(np.asarray(row_scale[start : start + chunk], dtype=np.float32))[None, :]
        if skip_self:
            rows = np.arange(start, min(start + chunk, bank.shape[0]))
            d2[rows, rows - start] = np.inf
        if exclude is not None:
            d2[:, np.asarray(exclude[start : start + chunk], dtype=bool)] = np.inf
        j = d2.argmin(axis=1) if return_index else None
        nearest = d2.min(axis=1) if j is None else d2[np.arange(len(j)), j]
        if row_scale is None:
            nearest += q2
        if j is not None:
            index = np.where(nearest < best, j + start, index)
        np.minimum(best, nearest, out=best)
    distance = np.sqrt(np.maximum(best, 0.0))
    return (distance, index) if return_index else distance


# row scales are stored on a grid of 2 % steps (snap_scales)
SCALE_STEP = 1.02


def snap_scales(scales: np.ndarray, step: float = SCALE_STEP) -> np.ndarray:
    """Row scales rounded to the nearest power of `step` (at most 1 % off).

    Why: rows that share a scale can be searched as one block whose distances are divided once, after the row
    minimum; that is how the search model (convert.search) avoids a per-row pass over the (patches x rows)
    product, which cost 14 MB of memory. The default bank's scales span 1.4x, so 18 levels; image AUROC 0.881
    with and without snapping, scores within 0.1 % (dsm100, float; README "The search model"). Stored snapped in
    bank.npz, so the numpy search and the model compute the same distances.
    """
    s = np.asarray(scales, np.float64)
    return np.power(step, np.round(np.log(s) / np.log(step))).astype(np.float32)


def row_spacing(patches: np.ndarray, floor: float = 0.25) -> np.ndarray:
    """Each bank row's distance to its nearest other row: the `row_scale` of the relative distance.

    Floored at `floor` x the median spacing, so two (near-)identical rows, which int8 features can make, do not
    turn every distance to them into a division by zero (on dsm100 no row of a 2 % coreset is that close).
    """
    if len(patches) < 2:
        return np.ones(len(patches), np.float32)  # no other row: the relative distance is the plain one
    r = nn_distances(patches, patches, skip_self=True)
    return np.maximum(r, floor * float(np.median(r))).astype(np.float32)


def global_embedding(features: np.ndarray) -> np.ndarray:
    """One vector per crop: the mean patch feature (h, w, D) -> (D,)."""
    return features.reshape(-1, features.shape[-1]).mean(axis=0)


def _blurred_map(cells: np.ndarray, out_hw: tuple[int, int], sigma: float) -> np.ndarray:
    """A (h, w) grid of patch scores brought to the crop's size and blurred: the heat map the kitchen sees."""
    amap = cv2.resize(cells, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(amap, (0, 0), sigma) if sigma > 0 else amap


@dataclass(frozen=True)
class CoarseBank:
    """The coarse (context) stage of a bank: its own patches and scale, and where it sits in the feature grid."""

    patches: np.ndarray  # (M, Dc) good coarse-cell features, coreset-reduced
    channels: int  # the grid's channels [channels:] are the coarse stage, [:channels] the fine one
    step: int  # one coarse cell is a step x step block of grid cells (the model upsamples it by nearest)
    scale: float = 1.0  # like Bank.patch_scale: the median peak of the coarse map on good validation crops
    weight: float = 0.5  # the anomaly map is (1 - weight) x fine map + weight x coarse map
    row_scale: np.ndarray | None = None  # (M,) per-row scale of a "calibrated" bank; None: plain distances

    def cells(self, features: np.ndarray) -> np.ndarray:
        """The (g, g, Dc) coarse cells of an (h, w, D) feature grid."""
        return features[:: self.step, :: self.step, self.channels :]

    def distance_map(self, features: np.ndarray, out_hw: tuple[int, int], sigma: float) -> np.ndarray:
        """The coarse map in units of `scale`, blurred by one coarse cell (`sigma` is one fine cell).

        Blurred at 1/step of the crop's size, then brought up: a blur of one coarse cell (32 px at 224) at full
        size took 2 ms, a tenth of a crop's whole score, for a map that has no detail finer than a cell.
        """
        c = self.cells(features)
        d = nn_distances(c.reshape(-1, c.shape[-1]), self.patches, row_scale=self.row_scale)
        d = d.reshape(c.shape[:2]) / self.scale
        small = (max(1, out_hw[0] // self.step), max(1, out_hw[1] // self.step))
        return cv2.resize(
            _blurred_map(d, small, sigma), (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR
        )


@dataclass(frozen=True)
class Bank:
    """The memory bank the device searches, and how its two distances are combined into one score."""

    patches: np.ndarray  # (M, D) good patch features, coreset-reduced
    images: np.ndarray  # (K, D) good image embeddings (global_embedding of each training image)
    patch_scale: float = 1.0  # patch distances are divided by this (a high quantile on good validation crops)
    image_scale: float = 1.0  # likewise for the global distance
    global_weight: float = 1.0  # 0 disables the global (not-on-the-menu) term
    # (M,) per-row scale the distance to each row is divided by: row_spacing (relative) or held-out distances
    # (calibrated, train.features.held_out_row_scales); None: Euclidean
    patch_spacing: np.ndarray | None = None
    # the DISTANCES name of what patch_spacing holds ("relative" or "calibrated"); read only when it is set
    scaling: str = "relative"
    # the patch term: the anomaly map's peak ("map") or the largest raw patch score ("patch", format 1)
    peak: str = "map"
    coarse: CoarseBank | None = None  # the context stage (module docstring); None: the grid is all fine
    # (M,) bool: fine rows that held-out scoring skips (Bank.without); None: every row counts
    exclude: np.ndarray | None = None
    # the fine search as a TFLite model over exactly these rows and scales (edge.search.TfliteSearch, a bundle's
    # search.tflite); None: nn_distances in numpy
    search: Callable[[np.ndarray], np.ndarray] | None = None
    # fine rows the device learned from false alarms (edge.learning, Bank.with_learned), searched in numpy beside
    # the bank's own; None: none
    learned: LearnedRows | None = None

    @property
    def distance(self) -> str:
        return "euclidean" if self.patch_spacing is None else self.scaling

    @property
    def dim(self) -> int:
        """Channels of the feature grid this bank scores (the fine stage's, plus the coarse stage's)."""
        fine = int(self.patches.shape[1])
        return fine if self.coarse is None else fine + int(self.coarse.patches.shape[1])

    def without(
        self, rows: np.ndarray, images: np.ndarray | None = None, coarse_rows: np.ndarray | None = None
    ) -> Bank:
        """The bank minus patch rows, image embeddings and coarse rows (boolean masks of what to drop):
        held-out scoring. Fine rows are masked (`exclude`) rather than removed, so the rows keep their order
        and the bank its search model; a masked bank is searched in numpy (fine_distances)."""
        skip = np.asarray(rows, dtype=bool)
        skip = skip if self.exclude is None else skip | self.exclude
        embeddings = self.images if images is None else self.images[~np.asarray(images, dtype=bool)]
        coarse = self.coarse
        if coarse is not None and coarse_rows is not None:
            kept = ~np.asarray(coarse_rows, dtype=bool)
            scale = None if coarse.row_scale is None else coarse.row_scale[kept]
            coarse = replace(coarse, patches=coarse.patches[kept], row_scale=scale)
        return replace(self, images=embeddings, coarse=coarse, exclude=skip)

    def fine_distances(self, rows: np.ndarray) -> np.ndarray:
        """(N, D) fine patch rows -> (N,) distances to their nearest bank row (or learned row), by the search
        model when the bundle has one."""
        if self.search is not None and self.exclude is None:  # a model cannot skip rows: held-out is numpy
            d = self.search(rows)
        elif not len(self.patches):
            raise ValueError(
                "bank loaded without its fine rows (load_bank rows=False): a numpy search needs them"
            )
        else:
            d = nn_distances(rows, self.patches, row_scale=self.patch_spacing, exclude=self.exclude)
        if self.learned is not None and len(self.learned.fine):
            d = np.minimum(d, nn_distances(rows, self.learned.fine, row_scale=self.learned.fine_scale))
        return d

    def with_learned(self, learned: LearnedRows) -> Bank:
        """This bank and the rows learned on the device (edge.learning): the fine ones are searched beside the
        bank's own, since its search model holds a fixed set; the coarse ones join the coarse stage's rows,
        which are searched in numpy anyway. Call it on the bank as loaded, never on one already extended."""
        coarse = self.coarse
        if coarse is not None and len(learned.coarse):
            rows = np.concatenate([coarse.patches, learned.coarse.astype(coarse.patches.dtype)])
            # plain coarse distances (no row scales): the learned rows' scales are 1 (new_row_scales)
            scale = coarse.row_scale
            if scale is not None:
                scale = np.concatenate([scale, learned.coarse_scale])
            coarse = replace(coarse, patches=rows, row_scale=scale)
        return replace(self, coarse=coarse, learned=learned if len(learned.fine) else None)

    def new_row_scales(self) -> tuple[float, float]:
        """(fine, coarse) scale a learned row divides its distances by: the median of the bank's own (1 for
        plain distances). A learned row has no held-out photos to calibrate it on; the median is the typical
        good patch's spread."""
        fine = 1.0 if self.patch_spacing is None else float(np.median(self.patch_spacing))
        c = self.coarse
        coarse = 1.0 if c is None or c.row_scale is None else float(np.median(c.row_scale))
        return fine, coarse

    def score(
        self, features: np.ndarray, out_hw: tuple[int, int], sigma: float = 8.0
    ) -> tuple[float, np.ndarray]:
        """(h, w, D) feature grid of one crop -> (score, anomaly map of shape out_hw).

        The score is max(patch term, global term), each in units of its good-validation scale, so 1.0 means
        "as far from good as a typical good crop"; the threshold is then calibrated on that score. With a coarse
        stage the patch term is the peak of the weighted mean of the fine and the coarse map.
        """
        fine = features if self.coarse is None else features[..., : self.coarse.channels]
        h, w, d = fine.shape
        patch = self.fine_distances(fine.reshape(-1, d)).reshape(h, w) / self.patch_scale
        amap = _blurred_map(patch, out_hw, sigma)
        if self.coarse is not None:
            wc = self.coarse.weight
            amap = (1.0 - wc) * amap + wc * self.coarse.distance_map(features, out_hw, sigma)
        score = float(amap.max() if self.peak == "map" else patch.max())
        if self.global_weight > 0 and len(self.images):
            g = nn_distances(global_embedding(fine)[None], self.images)[0] / self.image_scale
            score = max(score, float(self.global_weight * g))
        return score, amap.astype(np.float32)


def save_bank(bundle_dir: str | Path, bank: Bank, dtype: str = "float16") -> dict:
    """Write bank.npz into a bundle; returns the bundle.json entry (file, sha256, sizes, scales)."""
    buf = io.BytesIO()
    arrays = {"patches": bank.patches.astype(dtype), "images": bank.images.astype(dtype)}
    if bank.patch_spacing is not None:  # float32: 4 bytes a row, and a ratio is sensitive to rounding
        arrays["patch_spacing"] = bank.patch_spacing.astype(np.float32)
    if bank.coarse is not None:
        arrays["coarse"] = bank.coarse.patches.astype(dtype)
        if bank.coarse.row_scale is not None:
            arrays["coarse_row_scale"] = bank.coarse.row_scale.astype(np.float32)
    np.savez(buf, **arrays)
    data = buf.getvalue()
    path = Path(bundle_dir) / BANK_FILE
    path.write_bytes(data)
    entry = {
        "file": BANK_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "dtype": dtype,
        "patches": int(bank.patches.shape[0]),
        "images": int(bank.images.shape[0]),
        "dim": int(bank.patches.shape[1]),
        "bytes": len(data),
        "patch_scale": float(bank.patch_scale),
        "image_scale": float(bank.image_scale),
        "global_weight": float(bank.global_weight),
        "distance": bank.distance,
        "peak": bank.peak,
    }
    if bank.coarse is not None:
        c = bank.coarse
        entry["coarse"] = {
            "patches": int(c.patches.shape[0]),
            "dim": int(c.patches.shape[1]),
            "channels": int(c.channels),
            "step": int(c.step),
            "scale": float(c.scale),
            "weight": float(c.weight),
        }
    return entry


def load_bank(bundle_dir: str | Path, meta: dict, threads: int = 1, rows: bool = True) -> Bank:
    """Read and verify a bundle's bank (and its search model, run on `threads`); a missing file or a hash
    mismatch is a one-line UserError.

    `rows=False` (the device): when the bank has a search model, which holds the fine rows itself, they stay in
    bank.npz instead of in memory (1.6 MB of the scorer's peak RSS, measured); only held-out scoring needs them.
    """
    path = Path(bundle_dir) / str(meta.get("file", BANK_FILE))
    data = read_checked(path, meta.get("sha256"), "memory bank")
    distance = meta.get("distance", "euclidean")  # format-1 bundles predate both fields
    if distance not in DISTANCES:
        raise UserError(
            f"{path}: bundle.json bank `distance` {distance!r} is not one of {', '.join(DISTANCES)}"
        )
    peak = meta.get("peak", "patch")
    if peak not in PEAKS:
        raise UserError(f"{path}: bundle.json bank `peak` {peak!r} is not one of {', '.join(PEAKS)}")
    coarse_meta = meta.get("coarse")
    searched = meta.get("search") is not None
    try:
        with np.load(io.BytesIO(data)) as z:
            if rows or not searched:
                patches = _rows(z["patches"])
                n_rows = len(patches)
            else:  # the search model holds them
                n_rows, dim = _stored_shape(z, "patches")
                patches = np.zeros((0, dim), np.float16)
            images = z["images"].astype(np.float32)
            spacing = z["patch_spacing"].astype(np.float32) if distance in ROW_SCALED else None
            coarse_rows = _rows(z["coarse"]) if coarse_meta is not None else None
            # a calibrated coarse stage's distances are in units of its rows' scales: without them, a wrong number
            calibrated_coarse = coarse_meta is not None and distance == "calibrated"
            coarse_scale = z["coarse_row_scale"].astype(np.float32) if calibrated_coarse else None
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"{path}: not a memory bank ({exc})") from None
    if patches.ndim != 2 or patches.shape[1] != meta.get("dim", patches.shape[1]):
        raise UserError(
            f"{path}: bank shape {patches.shape} does not match bundle.json dim {meta.get('dim')}"
        )
    if spacing is not None and not _row_scales_ok(spacing, n_rows):
        raise UserError(f"{path}: patch_spacing must hold one positive number per bank row ({n_rows})")
    coarse = None
    if coarse_rows is not None:
        coarse = _coarse_stage(path, coarse_meta, coarse_rows, patches, peak)
        if coarse_scale is not None and not _row_scales_ok(coarse_scale, len(coarse_rows)):
            raise UserError(
                f"{path}: coarse_row_scale must hold one positive number per coarse row ({len(coarse_rows)})"
            )
        coarse = replace(coarse, row_scale=coarse_scale)
    search = None
    if searched:
        from edge.search import load_search

        search = load_search(bundle_dir, meta["search"], patches.shape[1], threads)
    return Bank(
        patches=patches,
        images=images,
        patch_scale=float(meta.get("patch_scale", 1.0)),
        image_scale=float(meta.get("image_scale", 1.0)),
        global_weight=float(meta.get("global_weight", 1.0)),
        patch_spacing=spacing,
        scaling=distance,
        peak=peak,
        coarse=coarse,
        search=search,
    )


def _stored_shape(z, key: str) -> tuple[int, int]:
    """(rows, dim) of a bank.npz array from its .npy header alone, without reading the rows."""
    with z.zip.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape = header(f)[0]
    if len(shape) != 2:
        raise ValueError(f"{key} has shape {shape}, not (rows, dim)")
    return int(shape[0]), int(shape[1])


def _row_scales_ok(scales: np.ndarray, rows: int) -> bool:
    return scales.shape == (rows,) and bool(np.all(np.isfinite(scales))) and bool(np.all(scales > 0))


def _rows(stored: np.ndarray) -> np.ndarray:
    """Bank rows as stored when float16 or float32: nn_distances widens each chunk to float32 as it goes, so a
    float16 bank gives identical distances in half the memory. The trade, measured on the default bundle (quiet
    machine, one thread): 2.9 MB less scorer RSS (116.6 MB, goal 120) for 1-3 ms more per crop (19.5 ms, goal 40);
    memory is the goal with less room, so the rows stay float16."""
    return stored if stored.dtype in (np.float16, np.float32) else stored.astype(np.float32)


def _coarse_stage(path: Path, meta, rows: np.ndarray, fine: np.ndarray, peak: str) -> CoarseBank:
    """The bank's coarse stage from bundle.json's `bank.coarse` and bank.npz's `coarse`, checked."""
    where = f"{path}: bundle.json bank `coarse`"
    if not isinstance(meta, dict):
        raise UserError(f"{where} must be an object")
    try:
        channels, step = int(meta["channels"]), int(meta["step"])
        scale, weight = float(meta.get("scale", 1.0)), float(meta.get("weight", 0.5))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{where}: needs whole numbers `channels` and `step` ({exc})") from None
    if rows.ndim != 2 or rows.shape[1] != meta.get("dim", rows.shape[1]) or not len(rows):
        raise UserError(f"{where}: coarse rows {rows.shape} do not match its dim {meta.get('dim')}")
    if channels != fine.shape[1]:
        raise UserError(f"{where}: `channels` {channels} differs from the fine bank's dim {fine.shape[1]}")
    if step < 1 or not (scale > 0 and np.isfinite(scale)) or not 0 <= weight <= 1:
        raise UserError(f"{where}: needs step >= 1, a positive scale and a weight in [0, 1]")
    if peak != "map":
        raise UserError(f'{where}: needs the map-peak score (`peak` "map"), not {peak!r}')
    return CoarseBank(patches=rows, channels=channels, step=step, scale=scale, weight=weight)
