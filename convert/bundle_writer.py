"""`python -m convert`: a training run -> a verified bundle (model.tflite + bundle.json + parity.json).

Why recalibrate on the converted model: quantization moves the scores a little, and a threshold chosen on float
scores would give the device a different false-positive rate than promised. The threshold is set again with
train.calibrate on the converted model's own scores of the held-out good validation images, and the bundle's
metrics are the evaluate output of this very .tflite, scored through edge.scorer.Scorer — the device's code.

kNN runs (`effnet-knn`, `cae-knn`): the model is the patch-feature network, converted to int8 with uint8 input
and a float32 (dequantized) feature output. The memory bank is built again from the *converted* model's features
of the good training images: the same patches the run's coreset kept (coreset.npy; selected again with the
run's recipe only when that file does not fit the data), with scales from the converted val features. It ships
as bank.npz with its sha256 in `score.params.bank`, so the distances the device compares are computed by the
model the device runs, and the threshold is calibrated on those distances (val plus held-out training images,
train.knn_fit.calibrate_knn). Parity then reports the mean absolute feature difference instead of a
reconstruction one.

Why a staging folder: the bundle appears at --out only when complete and verified; a failed conversion never
leaves a half-written bundle a device could pick up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from convert.parity import AUROC_TOLERANCE, format_report, parity_report, score_rel_diff
from convert.search import search_model
from convert.tflite import ConvertOptions, convert_model, representative_images
from edge import scoring
from edge.bundle import (
    JSON_FILE,
    KNN_METHODS,
    MODEL_FILE,
    TensorInfo,
    resolve_score_params,
    sha256_file,
    write_bundle_json,
)
from edge.errors import UserError
from edge.knn import DISTANCES, Bank, load_bank, save_bank
from edge.preprocess import InputSpec
from edge.scorer import ModelRunner, Scorer
from edge.search import SEARCH_FILE, search_entry

log = logging.getLogger(__name__)

PREDICT_BATCH = 32
PARITY_FILE = "parity.json"


@dataclass(frozen=True)
class Split:
    """Images of one split as the model sees them: float (N, H, W, C) unit range and the same as uint8."""

    samples: list
    x: np.ndarray

    @property
    def u8(self) -> np.ndarray:
        return np.round(self.x * 255.0).astype(np.uint8)


def _load(samples: list, spec: InputSpec) -> Split:
    from train.data import load_images

    if not samples:
        return Split([], np.zeros((0, spec.height, spec.width, spec.channels), np.float32))
    return Split(list(samples), np.asarray(load_images(samples, spec), dtype=np.float32))


def _tensor_info(details: dict) -> TensorInfo:
    dtype = np.dtype(details["dtype"]).name
    if dtype == "float32":
        return TensorInfo()
    scale, zp = details["quantization"]
    return TensorInfo(dtype, float(scale), int(zp))


def _tflite_outputs(run, split: Split) -> np.ndarray:
    """The converted model's outputs (reconstructions or feature grids) of a split, via Scorer or ModelRunner."""
    if not len(split.x):
        return split.x
    step = run.reconstruct if isinstance(run, Scorer) else run.run
    return np.stack([step(img)[1] for img in split.u8])


@dataclass(frozen=True)
class KnnSource:
    """What a kNN bank is built from: the good train and val images, the run's recipe and coreset rows.

    `keep` is the run's coreset selection (None: select again on the converted features). `build` returns a
    copy with `bank` and the converted model's training features set, so the final staging of the chosen
    conversion does not rebuild it and calibration can score the training images held out.
    """

    train: Split
    val_good: Split
    recipe: object  # train.features.BankRecipe
    keep: np.ndarray | None = None
    bank: Bank | None = None
    train_feats: np.ndarray | None = None  # of the bank's views: the training images, then their copies
    source: np.ndarray | None = None  # the training image behind each view (train.features.bank_views)

    def build(self, runner: ModelRunner) -> KnnSource:
        from train.features import bank_views, build_bank, coreset_keep

        if self.bank is not None:
            return self
        log.info(
            "building the bank from the converted model's features of %d train images", len(self.train.x)
        )
        views, source = bank_views(self.train.x, self.recipe)  # the same copies the run's fit made
        train_feats = _tflite_outputs(runner, Split([], views))
        keep = self.keep if self.keep is not None else coreset_keep(train_feats, self.recipe)
        val_feats = _tflite_outputs(runner, self.val_good)
        bank = build_bank(train_feats, val_feats, self.train.x.shape[1:3], self.recipe, keep, source)
        return replace(self, keep=keep, bank=bank, train_feats=train_feats, source=source)


def _stage(
    staging: Path, flat: bytes, base: dict, knn: KnnSource | None = None, search: str = "numpy"
) -> tuple[Scorer, KnnSource | None]:
    """Write the model (and a kNN bank, and its `search` model unless "numpy") and a provisional bundle.json
    into staging; load it as the device would.

    Returns the Scorer and, for kNN, the source with its bank built.
    """
    from edge.interpreter import load_interpreter

    path = staging / MODEL_FILE
    path.write_bytes(flat)
    interp = load_interpreter(path, threads=2)
    in_t = _tensor_info(interp.get_input_details()[0])
    out_t = _tensor_info(interp.get_output_details()[0])
    grid = interp.get_output_details()[0]["shape"][1:3]  # the feature grid's (h, w): one search query a cell
    score = base["score"]
    (staging / SEARCH_FILE).unlink(missing_ok=True)
    if knn is not None:
        knn = knn.build(ModelRunner(path, in_t, out_t, 2, "converted model"))
        bank_meta = save_bank(staging, knn.bank)
        if search != "numpy":
            # built from the rows as the device reads them (bank.npz keeps them in float16)
            rows = load_bank(staging, bank_meta)
            queries = int(np.prod(grid))
            model = search_model(rows.patches, rows.patch_spacing, queries, search)
            (staging / SEARCH_FILE).write_bytes(model)
            bank_meta["search"] = search_entry(model, search, queries)
        score = {**score, "params": {**score["params"], "bank": bank_meta}}
    data = {
        **base,
        "input": {**base["input"], **in_t.to_json()},
        "output": out_t.to_json(),
        "score": score,
        "sha256": sha256_file(path),
    }
    write_bundle_json(staging, data)
    return Scorer(staging, threads=2, bank_rows=True), knn  # the held-out calibration searches the rows


def choose_attempt(tried: list) -> Conversion:
    """The conversion whose scores of the good validation images moved least from the float model's.

    Why not the smallest test AUROC loss: that would pick the shipped model on the test split's labels, and the
    bundle's test metrics would then be the best of two draws. Whether to try again at all is decided by the test
    parity (the report convert prints); which attempt ships is decided without it."""
    return min(tried, key=lambda c: c.val_drift)


def attempts(opts: ConvertOptions, n_train: int) -> list[ConvertOptions]:
    """What to try, in order, until the model is within tolerance: int8 as asked, int8 from more and unaugmented
    images, then (`--quant auto`) the fallback, float16, whose weights-only rounding keeps the float scores."""
    if opts.quant != "int8":
        return [opts]
    more = replace(
        opts, representative=max(opts.representative, min(4 * opts.representative, n_train)), augment=False
    )
    tries = [opts] if more == opts else [opts, more]
    if opts.fallback:
        tries.append(ConvertOptions(quant=opts.fallback, seed=opts.seed, search=opts.search))
    return tries


def convert_until_faithful(
    tries: list[ConvertOptions], measure: Callable[[ConvertOptions], Conversion]
) -> list[Conversion]:
    """Each of `tries` converted and measured by `measure(opts) -> Conversion`, until one holds parity (or parity
    is undefined: a test split of one class); every conversion made, in order, for `choose_attempt`."""
    done: list[Conversion] = []
    for opts in tries:
        done.append(measure(opts))
        if done[-1].parity["within_tolerance"] is not False:
            break
        if opts is not tries[-1]:
            log.info(
                "%s AUROC loss %.4f over tolerance %.4f; trying %s",
                opts.quant,
                done[-1].loss,
                done[-1].parity["tolerance"],
                json.dumps(tries[len(done)].to_json()),
            )
    return done


def _versions() -> dict:
    import cv2
    import keras
    import tensorflow as tf

    from edge.interpreter import runtime_name

    v = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    try:
        from importlib.metadata import version

        v["ai_edge_litert"] = version("ai-edge-litert")
    except Exception:  # not installed: the fallback runtime is named below
        pass
    v["scored_with"] = runtime_name()
    return v


def _check_out(out: Path) -> None:
    """Refuse before any work (and before TensorFlow loads) to overwrite something that is not a bundle."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / JSON_FILE).is_file():
        raise UserError(f"--out {out}: folder is not empty and not a bundle; refusing to overwrite it")


def _prepare_out(out: Path) -> Path:
    _check_out(out)
    staging = out.parent / f".{out.name}.partial"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create ({exc.strerror or exc})") from None
    return staging


def _publish(staging: Path, out: Path) -> None:
    """Swap the finished staging folder into place (the old bundle, if any, is removed only afterwards)."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class Conversion:
    """One converted model with its recalibrated threshold, test scores and parity."""

    opts: ConvertOptions
    flat: bytes
    calibration: dict
    scores: np.ndarray
    maps: np.ndarray
    parity: dict
    knn: KnnSource | None = None  # kNN: the bank built from this conversion's features
    # how far its scores of the good validation images moved from the float model's (score_rel_diff): what the
    # better of two attempts is chosen by, so no choice is made on test labels
    val_drift: float = 0.0

    @property
    def loss(self) -> float:
        return self.parity["auroc_loss"] or 0.0


def _score_split(scorer: Scorer, split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, maps, model outputs) of a split through the converted model.

    Reconstruction methods score the float images against the reconstructions (as training did); kNN methods
    score the feature grids against the bundle's bank exactly as the Scorer does on the device.
    """
    b = scorer.bundle
    outs = _tflite_outputs(scorer, split)
    if scorer.bank is None:
        return (*scoring.score_batch(split.x, outs, b.score_method, b.score_params), outs)
    from train.knn_fit import score_features

    hw = (b.input.height, b.input.width)
    return (*score_features(scorer.bank, outs, hw, float(b.score_params["sigma"])), outs)


@dataclass(frozen=True)
class Measure:
    """What every conversion attempt is measured against: `measure(opts)` converts once, loads the model as the
    device would, recalibrates on the good validation images, scores the test split and compares with float."""

    model: object  # the Keras model
    staging: Path
    base: dict  # bundle.json fields every attempt shares
    train: Split
    val_good: Split
    val_anom: Split
    test: Split
    float_ref: tuple  # (labels, float scores, float outputs) of the test split (_float_reference)
    float_val: np.ndarray  # the float model's scores of the good validation images
    target_fpr: float
    knn: KnnSource | None
    tolerance: float

    def __call__(self, opts: ConvertOptions) -> Conversion:
        return _convert_and_measure(self, opts)


def _convert_and_measure(m: Measure, opts: ConvertOptions) -> Conversion:
    """One attempt (Measure says why); `knn` is built from this conversion's own features."""
    from train.calibrate import calibrate_threshold
    from train.knn_fit import calibrate_knn

    rep = (
        representative_images(m.train.x, opts.representative, opts.seed, opts.augment)
        if opts.quant == "int8"
        else None
    )
    flat = convert_model(m.model, opts, rep)
    scorer, knn = _stage(m.staging, flat, {**m.base, "quantization": opts.to_json()}, m.knn, opts.search)
    val_scores = _score_split(scorer, m.val_good)[0]
    anom_scores = _score_split(scorer, m.val_anom)[0] if len(m.val_anom.x) else None
    if knn is None:
        cal = calibrate_threshold(val_scores, target_fpr=m.target_fpr, anomalous_scores=anom_scores)
    else:
        b = scorer.bundle
        cal = calibrate_knn(
            scorer.bank,  # the bank as the device loads it, searched as the device searches it
            knn.train_feats,
            knn.keep,
            val_scores,
            (b.input.height, b.input.width),
            m.target_fpr,
            float(b.score_params["sigma"]),
            anom_scores,
            knn.source,
        )
    q_scores, q_maps, q_out = _score_split(scorer, m.test)
    labels, float_scores, float_out = m.float_ref
    kind = "feature" if knn is not None else "recon"
    parity = parity_report(labels, float_scores, q_scores, float_out, q_out, m.tolerance, kind=kind)
    return Conversion(opts, flat, cal, q_scores, q_maps, parity, knn, score_rel_diff(m.float_val, val_scores))


def _float_reference(model_dir, model, config, test: Split, method: str, params: dict):
    """(labels, float scores, float outputs) of the run on the test split: the parity reference."""
    labels = np.array([s.anomalous for s in test.samples], dtype=bool)
    if method in KNN_METHODS:
        from train.features import extract
        from train.knn_fit import run_bank, score_features

        bank, sigma = run_bank(model_dir, config)
        feats = extract(model, test.x)
        return labels, score_features(bank, feats, test.x.shape[1:3], sigma)[0], feats
    recon = model.predict(test.x, batch_size=PREDICT_BATCH, verbose=0)
    return labels, scoring.score_batch(test.x, recon, method, params)[0], recon


def _knn_recipe(model_dir, config: dict):
    """The run's bank recipe from config.json: `args` (coreset fraction, global weight, seed, distance, copies)
    and `score.params` (the map blur, the bank's peak rule), so a run made by an older dishwatch converts alike."""
    from train.features import BankRecipe
    from train.knn_fit import MAX_BANK_AUGMENT, coarse_recipe

    where = Path(model_dir) / "config.json"
    args = config.get("args") or {}
    params = config["score"].get("params") or {}
    if args.get("distance", "euclidean") not in DISTANCES:
        raise UserError(f"{where}: args.distance {args['distance']!r} is not one of {', '.join(DISTANCES)}")
    augment = args.get("bank_augment", 0)  # runs made before the option banked the photos only
    if not isinstance(augment, int) or isinstance(augment, bool) or not 0 <= augment <= MAX_BANK_AUGMENT:
        raise UserError(
            f"{where}: args.bank_augment {augment!r} is not a whole number 0 to {MAX_BANK_AUGMENT}"
        )
    peak = (params.get("bank") or {}).get("peak", "patch")  # runs made before `peak` took the raw patch max
    try:
        # runs made before the coarse stage have no `coarse_weight` and no `features.coarse`
        coarse = coarse_recipe(config.get("features") or {}, float(args.get("coarse_weight") or 0.0))
        return BankRecipe(
            coreset_fraction=float(args.get("coreset_fraction", 0.01)),
            coarse_fraction=float(args.get("coarse_coreset", 0.25)),  # runs made before the option kept 25 %
            global_weight=float(args.get("global_weight", 1.0)),
            seed=int(args.get("seed", 0)),
            distance=str(args.get("distance", "euclidean")),  # runs made before the option were Euclidean
            sigma=float(params.get("sigma", 4.0)),  # the map blur the run's scores used
            augment=augment,
            peak=str(peak),
            **coarse,
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{where}: the bank recipe in `args` / `score.params` is not valid ({exc})") from None


def _training_record(config: dict, model_dir: str, run_fp: str | None, fingerprint: str) -> dict:
    training = config.get("training") or {}
    return {
        "data_fingerprint": run_fp,
        "convert_data_fingerprint": fingerprint,
        "data": config.get("data"),
        "epochs": training.get("epochs_run"),
        "training": training,
        "versions": {"train": config.get("versions"), "convert": _versions()},
        "run": {
            "path": str(Path(model_dir).resolve()),
            "created": config.get("created"),
            "git_commit": config.get("git_commit"),
            "cae": config.get("cae"),
            "args": config.get("args"),
            "float_threshold": config.get("threshold"),
        },
    }


def build_bundle(
    model_dir: str,
    data: str,
    out_dir: str,
    opts: ConvertOptions,
    name: str | None = None,
    tolerance: float = AUROC_TOLERANCE,
) -> dict:
    """Convert, recalibrate, evaluate and check parity; write the bundle; return bundle.json's content.

    `tolerance`: the image AUROC a conversion may lose against the float model before the next attempt (and,
    with `opts.fallback`, float16) is tried."""
    from train.calibrate import DEFAULT_TARGET_FPR
    from train.data import load_dataset
    from train.evaluate import evaluate_scores
    from train.features import patch_rows
    from train.knn_fit import run_keep
    from train.model import load_model, read_run_config

    opts.validate()
    out = Path(out_dir)
    _check_out(out)
    # the run folder is checked before Keras (and its log noise) loads
    config, model_path = read_run_config(model_dir)
    try:
        spec = InputSpec.from_json(config["input"])
        method = config["score"]["method"]
        params = resolve_score_params(method, config["score"].get("params") or {})
    except (KeyError, TypeError):
        raise UserError(
            f"{Path(model_dir) / 'config.json'}: missing `input` or `score` (not written by train fit?)"
        ) from None
    recipe = _knn_recipe(model_dir, config) if method in KNN_METHODS else None
    model = load_model(model_path)
    target_fpr = float((config.get("calibration") or {}).get("target_fpr") or DEFAULT_TARGET_FPR)
    dataset = load_dataset(data)
    train = _load([s for s in dataset.split("train") if not s.anomalous], spec)
    val = dataset.split("val")
    val_good = _load([s for s in val if not s.anomalous], spec)
    val_anom = _load([s for s in val if s.anomalous], spec)
    test = _load(dataset.split("test"), spec)
    if not len(train.x):
        raise UserError(f"--data {data}: no good training images for the representative dataset")
    if not len(val_good.x):
        raise UserError(f"--data {data}: no good validation images to calibrate the threshold on")
    if not len(test.x):
        raise UserError(f"--data {data}: no test images")
    fingerprint = dataset.fingerprint()
    run_fp = (config.get("data") or {}).get("fingerprint")
    if run_fp and run_fp != fingerprint:
        log.warning(
            "--data %s is not the data the run was trained on (fingerprint %s vs %s)",
            data,
            fingerprint,
            run_fp,
        )

    float_ref = _float_reference(model_dir, model, config, test, method, params)
    float_val = _float_reference(model_dir, model, config, val_good, method, params)[1]
    knn = None
    if method in KNN_METHODS:
        grid = float_ref[2].shape[1:3]  # the float features' (h, w) grid, the same as the converted model's
        views = len(train.x) * (1 + recipe.augment)
        keep = run_keep(model_dir, config, patch_rows((views, *grid), recipe))
        knn = KnnSource(train, val_good, recipe, keep=keep)
        opts = replace(opts, float_output=opts.quant == "int8")  # features leave the model dequantized

    bundle_name = name or out.resolve().name
    staging = _prepare_out(out)
    base = {
        "name": bundle_name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": spec.to_json(),
        "score": {"method": method, "params": params},
        "threshold": float(config.get("threshold") or 1.0),  # provisional: recalibrated below
    }
    try:
        measure = Measure(
            model,
            staging,
            base,
            train,
            val_good,
            val_anom,
            test,
            float_ref,
            float_val,
            target_fpr,
            knn,
            tolerance,
        )
        tried = convert_until_faithful(attempts(opts, len(train.x)), measure)
        best = choose_attempt(tried)
        parity = {
            **best.parity,
            "attempts": [
                {
                    "quantization": c.opts.to_json(),
                    "image_auroc": c.parity["image_auroc_quant"],
                    "auroc_delta": c.parity["auroc_delta"],
                    "val_score_rel_diff": round(c.val_drift, 6),
                    "chosen": c is best,
                }
                for c in tried
            ],
            "fallback": opts.fallback,
        }
        if best.opts.quant != opts.quant:
            log.warning(
                "%s stayed over the AUROC tolerance %.4f (%s); shipping %s instead: AUROC %.4f against the float "
                "model's %.4f (--quant %s ships %s anyway)",
                opts.quant,
                tolerance,
                ", ".join(
                    f"{a['auroc_delta']:+.4f}"
                    for a in parity["attempts"]
                    if a["quantization"]["type"] == opts.quant
                ),
                best.opts.quant,
                parity["image_auroc_quant"],
                parity["image_auroc_float"],
                opts.quant,
                opts.quant,
            )
        if parity["within_tolerance"] is False:
            log.warning(
                "%s AUROC %.4f is %.4f below the float model's %.4f (tolerance %.4f) after trying %s%s",
                best.opts.quant,
                parity["image_auroc_quant"],
                best.loss,
                parity["image_auroc_float"],
                tolerance,
                "; ".join(json.dumps(a["quantization"]) for a in parity["attempts"]),
                "; consider --quant auto or float16"
                if best.opts.quant == "int8" and not opts.fallback
                else "",
            )
        cal = best.calibration
        scorer = _stage(
            staging, best.flat, {**base, "quantization": best.opts.to_json()}, best.knn, best.opts.search
        )[0]
        model_name = f"{bundle_name} ({best.opts.quant}, tflite)"
        data_json = {
            **scorer.bundle.raw,
            "threshold": cal["threshold"],
            "calibration": {**cal, "on": "converted model", "float_threshold": config.get("threshold")},
            "metrics": evaluate_scores(
                test.samples,
                best.scores,
                best.maps,
                cal["threshold"],
                method,
                model_name,
                good_scores=cal["good_scores"],
            ),
            "parity": parity,
            "training": _training_record(config, model_dir, run_fp, fingerprint),
        }
        data_json.pop("format", None)
        write_bundle_json(staging, data_json)
        (staging / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n")
        Scorer(staging, threads=1)  # the finished bundle verifies exactly as the device will verify it
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sys.stdout.write(format_report(parity) + "\n")
    log.info(
        "bundle %s: %s, %.1f kB, threshold %.6g (%s on %d held-out good images), test AUROC %s",
        out,
        best.opts.quant,
        len(best.flat) / 1024,
        cal["threshold"],
        cal["rule"],
        cal["n"],
        data_json["metrics"]["image_auroc"],
    )
    return data_json
