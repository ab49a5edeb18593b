"""Patch-feature extractors for the feature-distance score methods (`effnet-knn`, `cae-knn`).

Why a Keras model that ends in the patch grid: pooling, resizing and concatenation are then part of the network
the device runs as int8 TFLite (all builtin ops), so the device only does the nearest-neighbour search in numpy
and computes the same features that built the bank.

PatchCore recipe: take two mid-level feature maps, average each over a 3x3 neighbourhood (a patch sees a little
context), bring the deeper one to the shallower grid, concatenate. A coarse (context) stage, when asked for, is
appended after them, nearest-upsampled so each of its cells is an exact block of the grid (edge.knn.CoarseBank
reads every step-th cell back).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from edge.knn import (
    DISTANCES,
    PEAKS,
    Bank,
    CoarseBank,
    global_embedding,
    nn_distances,
    row_spacing,
    snap_scales,
)
from train.coreset import greedy_coreset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """Where `effnet-knn` cuts a pretrained EfficientNet-Lite: the ends of its stride-8 and stride-16 (112/120
    channel) stages, 28x28 and 14x14 grids at 224 px, and the first stride-32 block as the coarse stage (a 7x7
    grid, edge.knn.CoarseBank; docs/measurements.md)."""

    variant: str  # train.effnet_lite.SCALING
    taps: tuple[str, ...]
    coarse: str


BACKBONES = {
    "efficientnet-lite0": Backbone("lite0", ("block4", "block10"), "block11"),
    # the default since it measured +0.03 image AUROC on dsm50 and dsm100 (docs/measurements.md)
    "efficientnet-lite2": Backbone("lite2", ("block6", "block14"), "block15"),
}
DEFAULT_BACKBONE = "efficientnet-lite2"
CAE_TAPS = ("enc1_down", "enc2_down")  # strides 4 and 8 of the Inception CAE's encoder


def patch_feature_model(
    backbone, taps: tuple[str, ...], pool: int = 3, name: str = "patch_features", coarse: str | None = None
):
    """Cut `backbone` at `taps` and return a model: image -> (h, w, D) locally pooled patch features.

    `coarse`: a deeper layer whose pooled cells are appended last, each repeated over a block of the grid.
    """
    import keras
    from keras import layers

    outs = [backbone.get_layer(t).output for t in taps]
    pooled = [
        layers.AveragePooling2D(pool, strides=1, padding="same", name=f"{t}_pool")(o)
        for t, o in zip(taps, outs, strict=True)
    ]
    h = int(pooled[0].shape[1])
    grid = [pooled[0]]
    for t, p in zip(taps[1:], pooled[1:], strict=True):
        factor = h // int(p.shape[1])
        grid.append(
            p if factor == 1 else layers.UpSampling2D(factor, interpolation="bilinear", name=f"{t}_up")(p)
        )
    if coarse is not None:
        c = layers.AveragePooling2D(pool, strides=1, padding="same", name="coarse_pool")(
            backbone.get_layer(coarse).output
        )
        step = h // int(c.shape[1])
        grid.append(layers.UpSampling2D(step, interpolation="nearest", name="coarse_up")(c))
    out = grid[0] if len(grid) == 1 else layers.Concatenate(name="patches")(grid)
    return keras.Model(backbone.input, out, name=name)


def coarse_layout(model) -> dict | None:
    """{"channels", "step", "dim"} of a patch-feature model's coarse stage (BankRecipe), or None without one."""
    try:
        up = model.get_layer("coarse_up")
    except ValueError:
        return None
    dim = int(up.output.shape[-1])
    return {
        "channels": int(model.output_shape[-1]) - dim,
        "step": int(model.output_shape[1]) // int(up.input.shape[1]),
        "dim": dim,
    }


@dataclass(frozen=True)
class Projection:
    """The fine features' leading principal components: the fine stage of the grid becomes (x - mean) @ basis.

    Why: the device's cost beyond the backbone is the fine search, patches x bank rows x dims multiply-adds; on
    a host without AVX512-VNNI it took longer than the backbone and put a crop over its 40 ms budget. Fewer dims
    cut it in proportion, and the principal components keep most of what distances measure (dsm100, the default
    bundle's int8 features: 96 of 168 dims keep 95 % of the variance; docs/measurements.md). The projection is a
    1x1 convolution appended to the feature network (with_projection), so the int8 model outputs the projected
    grid and the bank, the search model and the device code see an ordinary, narrower feature grid.
    """

    mean: np.ndarray  # (D,) of the fine channels
    basis: np.ndarray  # (D, k) orthonormal columns, largest variance first
    variance: float  # the fraction of the fine channels' variance the k components keep

    @property
    def dims(self) -> int:
        return int(self.basis.shape[1])

    def apply(self, feats: np.ndarray, fine_channels: int) -> np.ndarray:
        """Feature grids (..., D) -> (..., k + the coarse channels): what with_projection's model outputs."""
        fine = (feats[..., :fine_channels] - self.mean) @ self.basis
        return np.concatenate([fine.astype(np.float32), feats[..., fine_channels:]], axis=-1)

    def to_json(self) -> dict:
        return {"dims": self.dims, "of": int(self.basis.shape[0]), "variance": round(self.variance, 4)}


# rows the principal components are fitted on at most (a random sample: 100 000 x 168 is a second of SVD)
PROJECTION_ROWS = 100_000


def fit_projection(train_feats: np.ndarray, fine_channels: int, dims: int, seed: int = 0) -> Projection:
    """The `dims` leading principal components of the training grids' fine patches."""
    rows = train_feats[..., :fine_channels].reshape(-1, fine_channels)
    if len(rows) > PROJECTION_ROWS:
        rows = rows[np.random.default_rng(seed).choice(len(rows), PROJECTION_ROWS, replace=False)]
    rows = rows.astype(np.float64)
    mean = rows.mean(axis=0)
    _, sv, vt = np.linalg.svd(rows - mean, full_matrices=False)
    var = sv**2
    kept = float(var[:dims].sum() / max(var.sum(), 1e-30))
    return Projection(mean.astype(np.float32), np.ascontiguousarray(vt[:dims].T, dtype=np.float32), kept)


def with_projection(model, proj: Projection):
    """The feature model with its fine channels projected (a 1x1 convolution, Projection), coarse ones as they
    were: the same network plus one small layer, so conversion and the device need nothing new."""
    import keras
    from keras import layers

    layout = coarse_layout(model)
    try:
        parts = list(model.get_layer("patches").input)
    except ValueError:  # one tap and no coarse stage: the output is the fine grid itself
        parts = [model.output]
    coarse = parts.pop() if layout is not None else None
    fine = parts[0] if len(parts) == 1 else layers.Concatenate(name="fine_patches")(parts)
    if int(fine.shape[-1]) != proj.basis.shape[0]:
        raise ValueError(
            f"projection of {proj.basis.shape[0]} channels for a {fine.shape[-1]}-channel fine grid"
        )
    conv = layers.Conv2D(proj.dims, 1, name="project")
    out = conv(fine)
    conv.set_weights([proj.basis[None, None], -(proj.mean @ proj.basis)])
    if coarse is not None:
        out = layers.Concatenate(name="projected_patches")([out, coarse])
    return keras.Model(model.input, out, name=model.name)


def effnet_feature_model(input_size: int = 224, backbone: str = DEFAULT_BACKBONE, coarse: bool = True):
    """The `effnet-knn` feature network of a BACKBONES entry, with or without its coarse stage."""
    from train import effnet_lite

    b = BACKBONES[backbone]
    taps = b.taps if not coarse else (*b.taps, b.coarse)
    net = effnet_lite.pretrained(input_size, include_top=False, taps=taps, variant=b.variant)
    layer_names = tuple(effnet_lite.tap_layer_name(t, b.variant) for t in b.taps)
    deep = effnet_lite.tap_layer_name(b.coarse, b.variant) if coarse else None
    return patch_feature_model(net, layer_names, name=f"effnet_{b.variant}_patches", coarse=deep)


def cae_feature_model(cae, taps: tuple[str, ...] = CAE_TAPS):
    return patch_feature_model(cae, taps, name="cae_patches")


def extract(model, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Float images (N, S, S, 3) in [0, 1] -> patch features (N, h, w, D) float32."""
    out = [np.asarray(model(images[i : i + batch], training=False)) for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class BankRecipe:
    coreset_fraction: float = 0.01  # of all good training patches (PatchCore: 1 % did as well as 10 %)
    min_patches: int = 256
    max_patches: int = 20000  # caps the bank at a few MB whatever the data size
    global_weight: float = 0.0  # see KnnFitConfig.global_weight
    seed: int = 0
    # "euclidean", "relative" or "calibrated" (edge.knn: each bank row's distance divided by its spacing or by its
    # held-out good distance, held_out_row_scales)
    distance: str = "euclidean"
    # the anomaly map's blur (map pixels) as the score uses it, so the scale is measured alike
    sigma: float = 8.0
    augment: int = 0  # shifted/turned/re-lit copies of each training image whose patches the coreset may pick
    peak: str = "map"  # edge.knn.Bank.peak
    # the coarse stage (edge.knn.CoarseBank): where it sits in the grid (coarse_layout; channels 0 = none),
    # its weight in the map, and the fraction of its cells the bank keeps (a 7x7 grid has few cells: on dsm100
    # 25 % scored like all of them, 10 % lost 0.01 pixel AUROC, docs/measurements.md)
    coarse_channels: int = 0
    coarse_step: int = 1
    coarse_weight: float = 0.0
    coarse_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"distance {self.distance!r} is not one of {', '.join(DISTANCES)}")
        if self.peak not in PEAKS:
            raise ValueError(f"peak {self.peak!r} is not one of {', '.join(PEAKS)}")
        if self.coarse_channels < 0 or self.coarse_step < 1 or not 0 <= self.coarse_weight <= 1:
            raise ValueError("coarse stage: channels >= 0, step >= 1 and a weight in [0, 1]")
        if self.has_coarse and self.peak != "map":
            raise ValueError("a coarse stage needs the map-peak score")

    @property
    def has_coarse(self) -> bool:
        return self.coarse_channels > 0


def split_grid(feats: np.ndarray, recipe: BankRecipe) -> tuple[np.ndarray, np.ndarray | None]:
    """(fine grids (N, h, w, Df), coarse cells (N, g, g, Dc) or None) of feature grids (N, h, w, D)."""
    if not recipe.has_coarse:
        return feats, None
    c, st = recipe.coarse_channels, recipe.coarse_step
    return feats[..., :c], feats[:, ::st, ::st, c:]


def coarse_cells(h: int, w: int, step: int) -> int:
    """Coarse cells in an (h, w) grid whose coarse stage repeats each cell over step x step (CoarseBank.cells)."""
    return len(range(0, h, step)) * len(range(0, w, step))


def patch_rows(feats_shape: tuple[int, ...], recipe: BankRecipe) -> int:
    """How many rows a coreset selection (coreset_keep) indexes for training grids of `feats_shape`: the fine
    patches, then the coarse cells."""
    n, h, w = feats_shape[:3]
    return n * h * w + (n * coarse_cells(h, w, recipe.coarse_step) if recipe.has_coarse else 0)


def split_keep(keep: np.ndarray, n_fine: int) -> tuple[np.ndarray, np.ndarray]:
    """(fine patch rows, coarse cell rows counted from 0) of a coreset selection: coreset_keep indexes the coarse
    cells after all `n_fine` fine patches."""
    keep = np.asarray(keep)
    return keep[keep < n_fine], keep[keep >= n_fine] - n_fine


def bank_views(images: np.ndarray, recipe: BankRecipe) -> tuple[np.ndarray, np.ndarray]:
    """The training images and `recipe.augment` copies of each, and for every view the image it came from.

    Why: a DSM-sized set has three or four photos of a dish, so a good plate that sits a little further left, is
    turned a few degrees or is lit a little warmer than all of them looks new to a plain bank. Copies made with
    the fixed-camera augmentation of training (train.augment) fill that gap; the coreset keeps the bank's size,
    so the device pays nothing. Deterministic (seeded by recipe.seed), so convert makes the same copies and the
    run's coreset rows (coreset.npy) index the same views. The originals come first: view i < len(images) is
    image i.
    """
    from train.augment import AugmentConfig, augment_image

    n = len(images)
    if recipe.augment <= 0 or n == 0:
        return images, np.arange(n)
    rng = np.random.default_rng(recipe.seed)
    copies = [augment_image(img, rng, AugmentConfig()) for img in images for _ in range(recipe.augment)]
    views = np.concatenate([images, np.stack(copies).astype(images.dtype)])
    return views, np.r_[np.arange(n), np.repeat(np.arange(n), recipe.augment)]


def coreset_keep(train_feats: np.ndarray, recipe: BankRecipe = BankRecipe()) -> np.ndarray:
    """Indices (into the (N*h*w, D) rows of `train_feats`) of the patches the bank keeps.

    Kept by the run (coreset.npy) so convert can take the same patches from the int8 model's features: a
    greedy selection is chaotic (one flipped argmax changes every later pick), and rebuilding it on int8
    features moved image AUROC by up to 0.04 between otherwise identical conversions, which hid the
    quantization's own effect in the parity report.
    """
    fine, coarse = split_grid(train_feats, recipe)
    keep = _select(fine, recipe.coreset_fraction, recipe)
    if coarse is None:
        return keep
    # coarse cells are indexed after every fine patch (patch_rows), so one array is the whole selection
    return np.r_[keep, np.prod(fine.shape[:3]) + _select(coarse, recipe.coarse_fraction, recipe)]


def _select(grids: np.ndarray, fraction: float, recipe: BankRecipe) -> np.ndarray:
    patches = grids.reshape(-1, grids.shape[-1])
    originals = len(patches) / (1 + max(recipe.augment, 0))  # the fraction is of the photos' own patches
    n = int(np.clip(round(fraction * originals), recipe.min_patches, recipe.max_patches))
    n = min(n, len(patches))
    return greedy_coreset(patches, n, seed=recipe.seed)


# pseudo-patches at the median held-out distance that each row's scale is averaged with (not tuned: a row needs a
# few dozen patches before its own mean dominates)
HELD_OUT_SHRINK = 10.0


def held_out_row_scales(
    rows: np.ndarray, row_image: np.ndarray, grids: np.ndarray, grid_image: np.ndarray
) -> np.ndarray:
    """Each bank row's typical distance to good patches that were not allowed to match themselves.

    Every grid's patches (grids (N, h, w, D), grid i from photo grid_image[i]) are matched to the nearest row
    (rows (M, D), row j from photo row_image[j]) that did not come from the same photo, and row j's scale is the
    mean of the distances that landed on it, shrunk towards their median by HELD_OUT_SHRINK pseudo-patches (a row
    few patches reach would otherwise get a scale from one or two distances, or none). The scales are what a
    "calibrated" bank divides by (edge.knn module docstring): a new good patch of that kind lands about 1.0 away.
    """
    rows = np.asarray(rows, np.float32)
    row_image = np.asarray(row_image)
    nearest, dist = [], []
    for g, photo in zip(grids, np.asarray(grid_image), strict=True):
        d, j = nn_distances(g.reshape(-1, rows.shape[1]), rows, exclude=row_image == photo, return_index=True)
        nearest.append(j)
        dist.append(d)
    j, d = np.concatenate(nearest), np.concatenate(dist)
    finite = np.isfinite(d)  # a bank made of one photo's rows leaves that photo's patches nothing to match
    j, d = j[finite], d[finite]
    typical = float(np.median(d)) if len(d) else 1.0
    typical = typical if typical > 0 else 1.0
    count = np.bincount(j, minlength=len(rows))
    total = np.bincount(j, weights=d, minlength=len(rows))
    return ((total + HELD_OUT_SHRINK * typical) / (count + HELD_OUT_SHRINK)).astype(np.float32)


def build_bank(
    train_feats: np.ndarray,
    val_feats: np.ndarray,
    hw: tuple[int, int],
    recipe: BankRecipe = BankRecipe(),
    keep: np.ndarray | None = None,
    source: np.ndarray | None = None,
) -> Bank:
    """Coreset bank from good training patches; scales from good validation crops (never test).

    The scales make the patch and global terms comparable: each is divided by the median of its value on good
    validation crops (the patch term as Bank.score computes it, on an `hw` map blurred by recipe.sigma), so the
    combined score is "how many times further from good than a typical good crop". `keep` reuses a selection
    (coreset_keep) instead of making a new one. `source`: the photo behind each training grid (bank_views), so a
    calibrated bank never measures a photo's patches against rows from its own augmented copies.
    """
    fine, coarse = split_grid(train_feats, recipe)
    n, h, w, d = fine.shape
    patches = fine.reshape(-1, d)
    source = np.arange(n) if source is None else np.asarray(source)
    if keep is None:
        keep = coreset_keep(train_feats, recipe)
    fine_keep, coarse_keep = split_keep(keep, len(patches))
    images = np.stack([global_embedding(f) for f in fine])
    kept = patches[fine_keep]
    spacing = None
    if recipe.distance == "relative":
        spacing = snap_scales(row_spacing(kept))
    elif recipe.distance == "calibrated":
        spacing = snap_scales(held_out_row_scales(kept, source[fine_keep // (h * w)], fine, source))
    bank = Bank(
        patches=kept,
        images=images,
        global_weight=recipe.global_weight,
        patch_spacing=spacing,
        scaling=recipe.distance,
        peak=recipe.peak,
    )
    stage = None
    if coarse is not None:
        coarse_rows = coarse.reshape(-1, coarse.shape[-1])[coarse_keep]
        coarse_scale = None
        if recipe.distance == "calibrated":
            cells = coarse_cells(h, w, recipe.coarse_step)
            coarse_scale = held_out_row_scales(coarse_rows, source[coarse_keep // cells], coarse, source)
        stage = CoarseBank(
            patches=coarse_rows,
            channels=recipe.coarse_channels,
            step=recipe.coarse_step,
            weight=recipe.coarse_weight,
            row_scale=coarse_scale,
        )
    if len(val_feats) == 0:
        log.warning("no validation images: bank scales left at 1.0")
        return replace(bank, coarse=stage)
    val_fine = split_grid(val_feats, recipe)[0]
    patch_only = replace(bank, global_weight=0.0)
    patch_val = [patch_only.score(f, hw, sigma=recipe.sigma)[0] for f in val_fine]
    image_val = nn_distances(np.stack([global_embedding(f) for f in val_fine]), images)
    log.info("bank: %d of %d patches kept, dim %d", len(fine_keep), len(patches), d)
    if stage is not None:  # its own scale, measured alike: the median peak of its map on good val crops
        peaks = [stage.distance_map(f, hw, recipe.sigma).max() for f in val_feats]
        stage = replace(stage, scale=float(np.median(peaks)) or 1.0)
        log.info(
            "coarse bank: %d of %d cells kept, dim %d",
            len(coarse_keep),
            int(np.prod(coarse.shape[:3])),
            coarse.shape[-1],
        )
    return replace(
        bank,
        patch_scale=float(np.median(patch_val)) or 1.0,
        image_scale=float(np.median(image_val)) or 1.0,
        coarse=stage,
    )


def held_out_train_scores(
    bank: Bank,
    train_feats: np.ndarray,
    keep: np.ndarray,
    hw: tuple[int, int],
    sigma: float,
    source: np.ndarray | None = None,
) -> np.ndarray:
    """Each good training image's score against the bank without its own patches and embedding.

    Why: the threshold wants a 1 % false-positive quantile, which needs about 100 held-out good images, and the
    validation split of a DSM-sized set has ~30. A training image scored without its own contribution to the
    bank stands in for a new photo of a dish the bank knows (the other photos of that dish stay in). Measured on
    dsm100 (docs/measurements.md): these scores sit in the same range as the validation images' (99th percentile 1.18 vs
    1.20 in units of the val median; a 5-fold rebuild of the coreset, five selections, gave 1.24). Only the
    coreset rows that came from image i (or from its augmented copies: `source`, bank_views) are dropped for
    image i. A relative bank keeps the other rows' spacings as built (a spacing measured to one of the dropped
    rows is then a little small: a slightly high score, so the threshold errs towards fewer false alarms).
    """
    source = np.arange(len(train_feats)) if source is None else np.asarray(source)
    n, h, w = train_feats.shape[:3]
    fine_keep, coarse_keep = split_keep(keep, n * h * w)
    row_image = source[fine_keep // (h * w)]  # the original image behind each bank row
    coarse_image = None
    if bank.coarse is not None:
        coarse_image = source[coarse_keep // coarse_cells(h, w, bank.coarse.step)]
    own_embeddings = len(bank.images) == len(train_feats)
    originals = int(source.max()) + 1 if len(source) else 0
    scores = np.empty(originals)
    for i in range(originals):
        without = bank.without(
            row_image == i,
            source == i if own_embeddings else None,
            None if coarse_image is None else coarse_image == i,
        )
        scores[i] = without.score(train_feats[i], hw, sigma=sigma)[0]
    return scores
