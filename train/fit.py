"""`python -m train fit`: train the Inception CAE on good dishes, keep the best checkpoint, set the threshold.

Why the run folder holds everything (config.json): a threshold only means something together with the exact
model, preprocessing, score method and parameters, and data it was calibrated on; convert/ and evaluate read
them from here instead of trusting flags to be repeated identically.

RUN_DIR/model.keras (best validation loss), last.keras, history.csv, tb/ (TensorBoard), config.json.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge import scoring
from edge.errors import UserError
from edge.preprocess import InputSpec
from train.augment import AugmentConfig, make_feeder
from train.calibrate import DEFAULT_TARGET_FPR, calibrate_threshold
from train.model import DEFAULT_CONFIG, PRECISIONS, CaeConfig, as_float32, get_config, precision

log = logging.getLogger(__name__)

LOSSES = ("mse", "ssim", "mse+ssim")
PREDICT_BATCH = 32
BEST_FILE, LAST_FILE = "model.keras", "last.keras"


@dataclass(frozen=True)
class FitConfig:
    data: str
    out: str
    epochs: int = 200
    batch_size: int = 64
    image_size: int = 128
    seed: int = 0
    config: str = DEFAULT_CONFIG
    filters: tuple[int, ...] | None = None
    bn_momentum: float | None = None  # None: the config's
    loss: str = "mse"
    learning_rate: float = 1e-3
    score: str = scoring.DEFAULT_METHOD
    target_fpr: float = DEFAULT_TARGET_FPR
    augment: bool = True
    jit: bool = False
    precision: str = "float32"  # or "mixed_bfloat16" (train.model.precision)

    def validate(self) -> FitConfig:
        if self.epochs < 1:
            raise UserError(f"--epochs {self.epochs}: must be at least 1")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.loss not in LOSSES:
            raise UserError(f"--loss {self.loss!r}: choose from {', '.join(LOSSES)}")
        if self.learning_rate <= 0:
            raise UserError(f"--learning-rate {self.learning_rate}: must be positive")
        if not 0 < self.target_fpr < 1:
            raise UserError(f"--target-fpr {self.target_fpr}: must be in (0, 1)")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision!r}: choose from {', '.join(PRECISIONS)}")
        scoring.resolve_params(self.score)
        return self

    def cae_config(self) -> CaeConfig:
        cfg = get_config(self.config)
        if self.filters:
            cfg = cfg.replace(filters=tuple(self.filters), width=1.0, name=f"{cfg.name}-custom")
        cfg = cfg.replace(input_size=self.image_size)
        if self.bn_momentum is not None:
            cfg = cfg.replace(bn_momentum=self.bn_momentum)
        try:
            return cfg.validate()
        except UserError:
            if self.image_size % (2**cfg.depth):
                raise UserError(
                    f"--image-size {self.image_size}: must be a multiple of 2**depth = {2**cfg.depth}"
                ) from None
            raise


def parse_filters(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--filters {text!r}: expected comma-separated integers, e.g. 8,8,16") from None
    if not vals or min(vals) < 1:
        raise UserError(f"--filters {text!r}: expected positive integers")
    return vals


def make_loss(name: str):
    """Keras loss by name; SSIM uses TensorFlow's 11x11 Gaussian-window SSIM (the same window as edge.scoring)."""
    if name == "mse":
        return "mse"
    import tensorflow as tf

    def ssim_loss(y_true, y_pred):
        return 1.0 - tf.image.ssim(y_true, y_pred, max_val=1.0)

    if name == "ssim":
        return ssim_loss

    def mse_ssim_loss(y_true, y_pred):
        mse = tf.reduce_mean(tf.square(y_true - y_pred), axis=[1, 2, 3])
        return mse + 0.5 * ssim_loss(y_true, y_pred)

    return mse_ssim_loss


def library_versions() -> dict:
    import cv2
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


def git_commit() -> str | None:
    """The source commit (with `-dirty` when uncommitted changes exist), None outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("-dirty" if dirty else "")) if rev else None


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a reader (convert, evaluate) never sees half a config."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def calibrate_all_methods(
    model, good_x: np.ndarray, anomalous_x: np.ndarray | None, target_fpr: float
) -> dict[str, dict]:
    """Score held-out images with every method and calibrate each, so evaluate can compare methods fairly."""
    recon = model.predict(good_x, batch_size=PREDICT_BATCH, verbose=0)
    recon_a = (
        model.predict(anomalous_x, batch_size=PREDICT_BATCH, verbose=0)
        if anomalous_x is not None and len(anomalous_x)
        else None
    )
    out = {}
    for method in scoring.METHODS:
        params = scoring.resolve_params(method)
        good_scores, _ = scoring.score_batch(good_x, recon, method, params)
        anom_scores = (
            scoring.score_batch(anomalous_x, recon_a, method, params)[0] if recon_a is not None else None
        )
        cal = calibrate_threshold(good_scores, target_fpr=target_fpr, anomalous_scores=anom_scores)
        out[method] = {"params": params, "threshold": cal["threshold"], "calibration": cal}
    return out


def run_config(
    fc: FitConfig,
    cae: CaeConfig,
    spec: InputSpec,
    data: dict,
    history: dict,
    seconds: float,
    interrupted: bool,
    by_method: dict,
) -> dict:
    """config.json: everything needed to reproduce the run and to deploy its threshold consistently."""
    chosen = by_method[fc.score]
    best = best_epoch(history)
    args = asdict(fc)
    args["filters"] = list(fc.filters) if fc.filters else None
    return {
        "format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": args,
        "command": " ".join(["python -m train fit", *sys.argv[2:]]) if sys.argv[1:2] == ["fit"] else None,
        "cae": cae.to_json(),
        "input": spec.to_json(),
        "data": data,
        "seed": fc.seed,
        "loss": fc.loss,
        "augment": asdict(AugmentConfig(enabled=fc.augment)),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "training": {
            "epochs_requested": fc.epochs,
            "epochs_run": len(history.get("loss", [])),
            "best_epoch": best,
            "best_val_loss": float(history["val_loss"][best - 1]) if best is not None else None,
            "final_loss": _json_number(history["loss"][-1]) if history.get("loss") else None,
            "seconds": round(seconds, 1),
            "interrupted": interrupted,
            "diverged": diverged(history),
        },
        "score": {"method": fc.score, "params": chosen["params"]},
        "threshold": chosen["threshold"],
        "calibration": chosen["calibration"],
        "scores_by_method": by_method,
        "checkpoints": {"best": BEST_FILE, "last": LAST_FILE},
    }


def _json_number(x) -> float | None:
    """None for NaN/inf: config.json stays strict JSON that any reader parses."""
    x = float(x)
    return x if np.isfinite(x) else None


def best_epoch(history: dict) -> int | None:
    """1-based epoch of the lowest finite validation loss (the one ModelCheckpoint kept), None if none is finite."""
    val = np.asarray(history.get("val_loss", []), dtype=float)
    finite = np.flatnonzero(np.isfinite(val))
    return int(finite[np.argmin(val[finite])]) + 1 if finite.size else None


def diverged(history: dict) -> bool:
    """True when a training or validation loss went NaN/inf: the weights after that point are garbage."""
    return any(not np.isfinite(v) for k in ("loss", "val_loss") for v in history.get(k, []))


def training_splits(data: str):
    """(dataset, good train, good val, anomalous val) samples; one-line errors when a split a fit needs is empty.

    Shared by every fit (CAE and feature-distance) so they train and calibrate on exactly the same images.
    """
    from train.data import load_dataset

    dataset = load_dataset(data)
    train_good = [s for s in dataset.split("train") if not s.anomalous]
    val = dataset.split("val")
    val_good = [s for s in val if not s.anomalous]
    val_anom = [s for s in val if s.anomalous]
    if not train_good:
        raise UserError(f"--data {data}: no good training images found")
    if not val_good:
        raise UserError(f"--data {data}: no good validation images (need at least one held-out good image)")
    return dataset, train_good, val_good, val_anom


def make_run_dir(out: str) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot create ({exc.strerror or exc})") from None
    return path


def _train(fc: FitConfig, cae: CaeConfig, train_x: np.ndarray, val_x: np.ndarray, out: Path):
    """Fit under the current dtype policy, checkpointing as it goes: (model, history, interrupted, seconds)."""
    import keras

    from train.model import build_cae

    model = build_cae(cae)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=fc.learning_rate),
        loss=make_loss(fc.loss),
        jit_compile=fc.jit,
    )
    best_path, last_path = out / BEST_FILE, out / LAST_FILE
    callbacks = [
        keras.callbacks.ModelCheckpoint(best_path, monitor="val_loss", save_best_only=True),
        keras.callbacks.ModelCheckpoint(last_path),
        keras.callbacks.CSVLogger(str(out / "history.csv")),
        keras.callbacks.TerminateOnNaN(),  # every later epoch would be NaN too; the best checkpoint is kept
        keras.callbacks.TensorBoard(log_dir=str(out / "tb"), write_graph=False, profile_batch=0),
    ]
    feeder = make_feeder(train_x, fc.batch_size, fc.seed, AugmentConfig(enabled=fc.augment))
    started = time.time()
    log.info(
        "fitting %s (%d params) for %d epochs, %s", model.name, model.count_params(), fc.epochs, fc.precision
    )
    stop = _StopOnCtrlC()
    previous = signal.signal(signal.SIGINT, stop.request)
    try:
        h = model.fit(
            feeder,
            validation_data=(val_x, val_x),
            validation_batch_size=fc.batch_size,
            epochs=fc.epochs,
            callbacks=[*callbacks, stop.callback()],
            verbose=1 if sys.stdout.isatty() else 2,
        )
    finally:
        # until the run is written, a further Ctrl-C must not leave a half-written checkpoint or config.json
        signal.signal(signal.SIGINT, signal.SIG_IGN if stop.requested else previous)
    # a stopped epoch still ends through on_epoch_end, so ModelCheckpoint has already written last_path
    return model, h.history, stop.requested, time.time() - started


class _StopOnCtrlC:
    """Ctrl-C ends training at the next batch end, through Keras' own stop_training, instead of a KeyboardInterrupt
    raised wherever Python happens to be: inside a checkpoint write, or inside Keras' data iterator, where the
    interrupt is not guaranteed to reach fit's caller. The epoch then ends normally (validation, checkpoints,
    history), so the run is always left consistent."""

    def __init__(self) -> None:
        self.requested = False

    def request(self, signum, frame) -> None:  # a signal handler
        if not self.requested:
            log.warning("Ctrl-C: stopping at the end of this batch; the run folder is then written")
        self.requested = True

    def callback(self):
        import keras

        owner = self

        class _Stop(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None) -> None:
                if owner.requested:
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None) -> None:  # a Ctrl-C during validation
                if owner.requested:
                    self.model.stop_training = True

        return _Stop()


def fit(fc: FitConfig) -> int:
    """Train, checkpoint, calibrate, write config.json. Returns the exit code (130 when interrupted)."""
    fc.validate()
    cae = fc.cae_config()
    from train.data import load_images

    dataset, train_samples, val_good, val_anom = training_splits(fc.data)
    val_samples = val_good + val_anom
    out = make_run_dir(fc.out)

    spec = InputSpec(height=cae.input_size, width=cae.input_size, channels=cae.channels)
    log.info(
        "loading %d train / %d val images at %d px", len(train_samples), len(val_samples), cae.input_size
    )
    train_x = load_images(train_samples, spec)
    val_x = load_images(val_good, spec)
    val_ax = load_images(val_anom, spec) if val_anom else None

    import keras

    keras.utils.set_random_seed(fc.seed)
    best_path, last_path = out / BEST_FILE, out / LAST_FILE
    with precision(fc.precision):
        model, history, interrupted, elapsed = _train(fc, cae, train_x, val_x, out)
        if diverged(history) and best_epoch(history) is None:  # (Keras saves epoch 1 whatever its loss)
            raise UserError(
                f"--out {out}: training diverged (loss NaN) before any usable checkpoint; "
                "try a lower --learning-rate or --precision float32"
            )
        try:
            best_model = keras.saving.load_model(best_path, compile=False)
        except Exception:
            # missing, or cut mid-write by the interrupt: the current weights are the best we have
            if not interrupted:
                raise
            log.warning(
                "%s missing or incomplete after the interrupt; saving the current weights there", best_path
            )
            best_model = model
    if fc.precision != "float32":
        # the run's checkpoints hold float32 models, so convert, evaluate and the float reference need not know
        last = as_float32(model, cae)
        last.save(last_path)
        best_model = last if best_model is model else as_float32(best_model, cae)
        best_model.save(best_path)
    elif best_model is model:
        model.save(best_path)
    by_method = calibrate_all_methods(best_model, val_x, val_ax, fc.target_fpr)
    data_info = {
        "path": str(Path(fc.data).resolve()),
        "fingerprint": dataset.fingerprint(),
        "layout": getattr(dataset, "layout", None),
        "n_train": len(train_samples),
        "n_val_good": len(val_good),
        "n_val_anomalous": len(val_anom),
    }
    config = run_config(fc, cae, spec, data_info, history, elapsed, interrupted, by_method)
    write_json(out / "config.json", config)
    if interrupted:
        sys.stderr.write(
            f"python -m train fit: interrupted after {config['training']['epochs_run']} epoch(s);"
            f" usable checkpoint in {best_path}\n"
        )
        return 130
    if config["training"]["diverged"]:
        sys.stderr.write(
            f"python -m train fit: training diverged (loss NaN) after {config['training']['epochs_run']} "
            f"epoch(s) and was stopped; {best_path} is the best epoch before that "
            f"({config['training']['best_epoch']}), {last_path} holds the diverged weights\n"
        )
    log.info("done: %s, threshold %.6g (%s)", best_path, config["threshold"], fc.score)
    return 0


DEFAULT_IMAGE_SIZE = {"cae": 128, "effnet-knn": 224, "cae-knn": 224}


def knn_cli_main(args, method: str) -> int:
    """`fit --method effnet-knn|cae-knn`: no weights are trained; the bank is built and the threshold calibrated."""
    from train.knn_fit import KnnFitConfig, fit_knn

    for flag, name in (("--epochs", "epochs"), ("--batch-size", "batch_size")):
        if getattr(args, name, None) not in (None, 200, 64):
            log.warning("%s is ignored by --method %s (nothing is trained)", flag, method)
    fit_knn(
        KnnFitConfig(
            data=args.data,
            out=args.out,
            method=method,
            image_size=args.image_size or DEFAULT_IMAGE_SIZE[method],
            cae_run=getattr(args, "cae_run", None) or "",
            coreset_fraction=getattr(args, "coreset", 0.01),
            coarse_coreset=getattr(args, "coarse_coreset", 0.25),
            global_weight=getattr(args, "global_weight", 0.0),
            distance=getattr(args, "distance", None) or KnnFitConfig.distance,
            bank_augment=getattr(args, "bank_augment", 0),
            coarse_weight=getattr(args, "coarse_weight", None),
            backbone=getattr(args, "backbone", "") or "",
            project=getattr(args, "project", 0) or 0,
            target_fpr=getattr(args, "target_fpr", DEFAULT_TARGET_FPR),
            seed=args.seed,
        )
    )
    return 0


def cli_main(args) -> int:
    method = getattr(args, "method", "cae") or "cae"
    if method != "cae":
        return knn_cli_main(args, method)
    fc = FitConfig(
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size or DEFAULT_IMAGE_SIZE["cae"],
        seed=args.seed,
        config=getattr(args, "config", DEFAULT_CONFIG),
        filters=parse_filters(getattr(args, "filters", None)),
        bn_momentum=getattr(args, "bn_momentum", None),
        loss=getattr(args, "loss", "mse"),
        learning_rate=getattr(args, "learning_rate", 1e-3),
        score=getattr(args, "score", scoring.DEFAULT_METHOD),
        target_fpr=getattr(args, "target_fpr", DEFAULT_TARGET_FPR),
        augment=not getattr(args, "no_augment", False),
        jit=getattr(args, "jit", False),
        precision=getattr(args, "precision", "float32"),
    )
    return fit(fc)
