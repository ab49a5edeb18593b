"""Fit the feature-distance score methods: `effnet-knn` (pretrained EfficientNet-Lite2 or -Lite0) and `cae-knn` (the
trained Inception CAE's encoder). "Fitting" is building the memory bank from good training crops and
calibrating the threshold on good validation crops; no weights are trained.

The run folder has the same contract as a CAE run (config.json with `input`, `score`, `threshold`,
`calibration`; model.keras), plus bank.npz, so evaluate and convert treat both alike. The model here is the
patch-feature network: image -> (h, w, D) feature grid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.bundle import KNN_METHODS  # one list of kNN methods, shared with the device
from edge.errors import UserError
from edge.knn import DISTANCES, save_bank
from edge.preprocess import InputSpec

log = logging.getLogger(__name__)

CORESET_FILE = "coreset.npy"  # the bank's row indices into the training patches, reused by convert
CALIBRATION_SPLIT = "val+train-held-out"
MAX_BANK_AUGMENT = 16  # each copy is one more feature pass over the training set at fit and convert time
DEFAULT_COARSE_WEIGHT = (
    0.5  # the plain mean of the two maps, not tuned (0.3 and 0.7 measured, docs/measurements.md)
)


@dataclass(frozen=True)
class KnnFitConfig:
    data: str
    out: str
    method: str = "effnet-knn"
    image_size: int = 224  # effnet-knn: the backbone's native 224 px; cae-knn: the CAE run's size
    cae_run: str = ""  # cae-knn: the trained CAE run folder
    coreset_fraction: float = 0.01
    # of the coarse stage's cells (a 7x7 grid has few): 25 % scored like all of them on dsm100. A kitchen with
    # more photos of each dish lowers both fractions in proportion to keep the device's search the same size
    # (docs/measurements.md: sixteen photos a dish)
    coarse_coreset: float = 0.25
    global_weight: float = 0.0  # the whole-image term; measured to hurt on the presets (docs/measurements.md)
    target_fpr: float = 0.01
    seed: int = 0
    # edge.knn DISTANCES: "calibrated" beat "euclidean" on each of six coreset selections of dsm50 and dsm100
    # (+0.017 image AUROC on average); "relative" was within the coreset seed noise (docs/measurements.md)
    distance: str = "calibrated"
    bank_augment: int = 0  # augmented copies of each photo offered to the coreset (features.bank_views)
    # the coarse stage's weight in the map (edge.knn.CoarseBank); None: DEFAULT_COARSE_WEIGHT for effnet-knn,
    # 0 (none) for cae-knn, whose encoder has no deeper stage worth it
    coarse_weight: float | None = None
    backbone: str = ""  # effnet-knn: a train.features.BACKBONES name; "" = DEFAULT_BACKBONE
    # the fine channels' leading principal components the grid keeps (train.features.Projection); 0 = all. Off
    # by default: 64 of 168 scored like all of them (image AUROC, three coreset selections on each preset) but
    # recall at the threshold fell 3.5 points on average; it makes a crop 0.77x as long (docs/measurements.md)
    project: int = 0

    @property
    def coarse(self) -> float:
        if self.coarse_weight is not None:
            return float(self.coarse_weight)
        return DEFAULT_COARSE_WEIGHT if self.method == "effnet-knn" else 0.0

    def validate(self) -> KnnFitConfig:
        if self.method not in KNN_METHODS:
            raise UserError(
                f"--method {self.method!r}: not a feature-distance method ({', '.join(KNN_METHODS)})"
            )
        from train.features import BACKBONES

        if self.backbone and self.method != "effnet-knn":
            raise UserError(f"--backbone {self.backbone}: only effnet-knn has a pretrained backbone")
        if self.backbone and self.backbone not in BACKBONES:
            raise UserError(f"--backbone {self.backbone!r}: not one of {', '.join(BACKBONES)}")
        if self.method == "cae-knn" and not self.cae_run:
            raise UserError("--cae-run: required with --method cae-knn (a trained CAE run folder)")
        if self.distance not in DISTANCES:
            raise UserError(f"--distance {self.distance!r}: not one of {', '.join(DISTANCES)}")
        if not 0 <= self.bank_augment <= MAX_BANK_AUGMENT:
            raise UserError(f"--bank-augment {self.bank_augment}: must be 0 to {MAX_BANK_AUGMENT}")
        if self.global_weight < 0:
            raise UserError(f"--global-weight {self.global_weight}: must be 0 or more")
        if not 0 < self.coreset_fraction <= 1:
            raise UserError(f"--coreset {self.coreset_fraction}: must be in (0, 1]")
        if not 0 < self.coarse_coreset <= 1:
            raise UserError(f"--coarse-coreset {self.coarse_coreset}: must be in (0, 1]")
        if self.image_size < 32 or self.image_size % 16:
            raise UserError(f"--image-size {self.image_size}: must be a multiple of 16, at least 32")
        if not 0 <= self.coarse <= 1:
            raise UserError(f"--coarse-weight {self.coarse}: must be in [0, 1]")
        if self.project < 0:
            raise UserError(f"--project {self.project}: must be 0 (keep every channel) or a number of dims")
        if self.coarse > 0 and self.method != "effnet-knn":
            raise UserError(f"--coarse-weight {self.coarse}: only effnet-knn has a coarse stage; use 0")
        if self.coarse > 0 and self.image_size % 32:
            raise UserError(
                f"--image-size {self.image_size}: the coarse stage (stride 32) needs a multiple of 32,"
                " or --coarse-weight 0"
            )
        return self


def feature_model_for(fc: KnnFitConfig):
    """(feature model, InputSpec, description) for the configured method."""
    from train import features

    if fc.method == "effnet-knn":
        spec = InputSpec(height=fc.image_size, width=fc.image_size)
        name = fc.backbone or features.DEFAULT_BACKBONE
        backbone = features.BACKBONES[name]
        model = features.effnet_feature_model(fc.image_size, name, coarse=fc.coarse > 0)
        desc: dict = {"backbone": name, "taps": list(backbone.taps)}
        if fc.coarse > 0:
            desc["coarse"] = {"tap": backbone.coarse, **features.coarse_layout(model)}
        return model, spec, desc
    from train.model import load_run

    cae, cae_config = load_run(fc.cae_run)
    spec = InputSpec.from_json(cae_config["input"])
    return features.cae_feature_model(cae), spec, {"backbone": "inception-cae", "cae_run": str(fc.cae_run)}


def fit_knn(fc: KnnFitConfig) -> dict:
    """Build the bank and calibrate; writes RUN_DIR/{model.keras, bank.npz, config.json}. Returns config."""
    fc.validate()
    from train.data import load_images
    from train.features import BankRecipe, bank_views, build_bank, coreset_keep, extract, patch_rows
    from train.fit import git_commit, library_versions, make_run_dir, training_splits, write_json

    started = time.time()
    model, spec, desc = feature_model_for(fc)
    fine = int(desc["coarse"]["channels"]) if "coarse" in desc else int(model.output_shape[-1])
    if fc.project >= fine:
        raise UserError(f"--project {fc.project}: must be below the fine features' {fine} channels")
    dataset, train_s, val_s, _ = training_splits(fc.data)
    out = make_run_dir(fc.out)

    log.info("extracting %s features: %d train, %d val images", fc.method, len(train_s), len(val_s))
    val_f = extract(model, load_images(val_s, spec))
    hw = (spec.height, spec.width)
    views, source = bank_views(load_images(train_s, spec), BankRecipe(seed=fc.seed, augment=fc.bank_augment))
    if fc.bank_augment:
        log.info(
            "bank views: %d training images + %d augmented copies", len(train_s), len(views) - len(train_s)
        )
    train_f = extract(model, views)
    del views
    if fc.project:
        model, train_f, val_f = _project(fc.project, fine, fc.seed, model, desc, train_f, val_f)
    recipe = BankRecipe(
        coreset_fraction=fc.coreset_fraction,
        global_weight=fc.global_weight,
        seed=fc.seed,
        distance=fc.distance,
        sigma=map_sigma(hw, val_f.shape[1:3]),
        augment=fc.bank_augment,
        coarse_fraction=fc.coarse_coreset,
        **coarse_recipe(desc, fc.coarse),
    )
    keep = coreset_keep(train_f, recipe)
    bank = build_bank(train_f, val_f, hw, recipe, keep, source)
    bank_meta = save_bank(out, bank)
    np.save(out / CORESET_FILE, keep.astype(np.int64))
    val_scores = score_features(bank, val_f, hw, recipe.sigma)[0]
    cal = calibrate_knn(bank, train_f, keep, val_scores, hw, fc.target_fpr, recipe.sigma, source=source)
    model.save(out / "model.keras")
    config = {
        "format": 1,  # of the run folder (bundle.json has its own)
        "kind": "knn",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {
            **asdict(fc),
            "coarse_weight": fc.coarse,
            "backbone": desc["backbone"] if fc.method == "effnet-knn" else "",
        },
        "input": spec.to_json(),
        "features": {**desc, "grid": list(train_f.shape[1:3]), "dim": int(train_f.shape[-1])},
        "data": {
            "path": str(Path(fc.data).resolve()),
            "fingerprint": dataset.fingerprint(),
            "layout": dataset.layout,
            "n_train": len(train_s),
            "n_val_good": len(val_s),
        },
        "seed": fc.seed,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "training": {"epochs_run": 0, "seconds": round(time.time() - started, 1)},
        "score": {"method": fc.method, "params": {"bank": bank_meta, "sigma": recipe.sigma}},
        "threshold": cal["threshold"],
        "calibration": cal,
        "coreset": {"file": CORESET_FILE, "kept": int(len(keep)), "of": patch_rows(train_f.shape, recipe)},
        "checkpoints": {"best": "model.keras"},
    }
    write_json(out / "config.json", config)
    log.info(
        "bank %d patches x %d dims (%.1f MB), threshold %.4g (%s, n=%d)",
        bank_meta["patches"],
        bank_meta["dim"],
        bank_meta["bytes"] / 1e6,
        cal["threshold"],
        cal["rule"],
        cal["n"],
    )
    return config


def _project(dims: int, fine: int, seed: int, model, desc: dict, train_f: np.ndarray, val_f: np.ndarray):
    """(projected model, train and val features projected alike) for --project; updates `desc` in place."""
    from train.features import coarse_layout, fit_projection, with_projection

    proj = fit_projection(train_f, fine, dims, seed=seed)
    log.info(
        "projecting the fine features: %d -> %d dims (%.1f %% of the variance)",
        fine,
        dims,
        100 * proj.variance,
    )
    model = with_projection(model, proj)
    if "coarse" in desc:
        desc["coarse"] = {**desc["coarse"], **coarse_layout(model)}
    desc["project"] = proj.to_json()
    return model, proj.apply(train_f, fine), proj.apply(val_f, fine)


def coarse_recipe(features_desc: dict, weight: float) -> dict:
    """The BankRecipe fields of a feature model's coarse stage (config.json `features.coarse`), shared with
    convert; {} without one."""
    layout = features_desc.get("coarse")
    if not layout or weight <= 0:
        return {}
    return {
        "coarse_channels": int(layout["channels"]),
        "coarse_step": int(layout["step"]),
        "coarse_weight": float(weight),
    }


def map_sigma(hw: tuple[int, int], grid: tuple[int, int]) -> float:
    """The anomaly map's blur: one cell of the finest feature grid (8 px for EfficientNet-Lite at 224 px).

    Why one cell: the score is the blurred map's peak; on dsm100 (four coreset selections) sigma 4, 6, 8 and 10
    px gave image AUROC 0.813, 0.816, 0.816, 0.814 and pixel AUROC 0.773, 0.782, 0.792, 0.801 (docs/measurements.md).
    """
    return float(hw[0]) / float(grid[0])


def calibrate_knn(
    bank,
    train_feats: np.ndarray,
    keep: np.ndarray,
    val_scores: np.ndarray,
    hw: tuple[int, int],
    target_fpr: float,
    sigma: float,
    anomalous_scores=None,
    source: np.ndarray | None = None,
) -> dict:
    """The threshold from the val scores plus the held-out training scores (rule in train.calibrate).

    Shared by fit (float features) and convert (the converted model's features), so both choose it alike.
    """
    from train.calibrate import calibrate_threshold
    from train.features import held_out_train_scores

    held_out = held_out_train_scores(bank, train_feats, keep, hw, sigma, source)
    cal = calibrate_threshold(
        np.r_[np.asarray(val_scores, dtype=np.float64), held_out],
        target_fpr=target_fpr,
        anomalous_scores=anomalous_scores,
        split=CALIBRATION_SPLIT,
    )
    return {**cal, "n_val": int(len(val_scores)), "n_train_held_out": int(len(held_out))}


def run_keep(run_dir: str | Path, config: dict, rows: int) -> np.ndarray | None:
    """The run's coreset row indices when they fit `rows` training patches, else None (convert reselects)."""
    meta = config.get("coreset") or {}
    path = Path(run_dir) / str(meta.get("file", CORESET_FILE))
    if not meta or not path.is_file():
        return None
    try:
        keep = np.load(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: not a coreset index file ({exc})") from None
    if meta.get("of") != rows or keep.ndim != 1 or not len(keep) or keep.min() < 0 or keep.max() >= rows:
        log.warning(
            "%s: made for %s training patches, these have %d; selecting again", path, meta.get("of"), rows
        )
        return None
    return keep.astype(np.int64)


def score_features(
    bank, feats: np.ndarray, hw: tuple[int, int], sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) and maps (N, *hw) of feature grids (N, h, w, D) against `bank` (shared by run and convert)."""
    pairs = [bank.score(f, hw, sigma=sigma) for f in feats]
    if not pairs:
        return np.zeros(0), np.zeros((0, *hw), np.float32)
    return np.array([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def is_knn_run(config: dict) -> bool:
    return config.get("kind") == "knn" or (config.get("score") or {}).get("method") in KNN_METHODS


def run_bank(run_dir: str | Path, config: dict):
    """(Bank, sigma) of a knn run folder, hash-checked."""
    from edge.knn import load_bank

    params = config["score"]["params"]
    return load_bank(Path(run_dir), params["bank"]), float(params.get("sigma", 4.0))


def score_images(
    run_dir: str | Path, images: np.ndarray, model=None, config: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Float-model scores and maps of a knn run on float images (N, S, S, 3) — the reference for parity.

    `model`/`config` skip reloading them when the caller already has the run loaded.
    """
    from train.features import extract

    if model is None or config is None:
        from train.model import load_run

        model, config = load_run(run_dir)
    bank, sigma = run_bank(run_dir, config)
    return score_features(bank, extract(model, images), images.shape[1:3], sigma)
