"""`python -m train evaluate`: score the test split with a run (Keras) or a bundle (TFLite) and report metrics.

Why the core works from scores and maps (`evaluate_scores`): the Keras run and the deployed .tflite must be judged
by the same code, and the bundle's numbers come from the device's own scorer; only where scores come from differs.
The threshold is never tuned here: it comes from the run/bundle (calibrated on validation images in training).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge import scoring
from edge.calibration import threshold_rule
from edge.errors import UserError
from edge.preprocess import InputSpec, preprocess, read_image
from train import metrics
from train.calibrate import DEFAULT_TARGET_FPR

log = logging.getLogger(__name__)

PREDICT_BATCH = 32


# the headline fields: the `methods` table, the line the CLI prints, the benches' tables
SUMMARY_KEYS = ("image_auroc", "pixel_auroc", "f1", "precision", "recall", "threshold")

SEVERITY_ORDER = {"obvious": 0, "moderate": 1, "subtle": 2}  # the synthetic generator's; others sort by name


def _round(v):
    return None if v is None else round(float(v), 6)


def load_masks(samples: Sequence, shape: tuple[int, int]) -> np.ndarray | None:
    """Bool (N, H, W) ground truth at the maps' resolution; None when no anomalous test image has a mask."""
    if not any(s.anomalous and s.mask is not None for s in samples):
        return None
    from train.data import read_mask

    return np.stack([read_mask(s, shape) for s in samples]).astype(bool)


# false-positive rates a kitchen might set on the device (model.target_fpr); `operating_points` says what each
# would catch on the test split
OPERATING_FPRS = (0.01, 0.02, 0.05, 0.10, 0.20)


def operating_points(samples: Sequence, scores, good_scores) -> list[dict]:
    """At each of OPERATING_FPRS: the threshold the device would compare against (edge.calibration's rule on the
    held-out good scores, exactly as `model.target_fpr` sets it) and what it flags on these test samples.

    Why: the bundle's threshold is one point of the trade between false alarms and caught defects; this is the
    table a kitchen picks its own point from, measured on images the threshold never saw."""
    s = np.asarray(scores, dtype=np.float64)
    labels = np.array([smp.anomalous for smp in samples], dtype=bool)
    severities = sorted(
        {smp.severity for smp in samples if smp.anomalous and getattr(smp, "severity", None)},
        key=lambda k: (SEVERITY_ORDER.get(k, len(SEVERITY_ORDER)), k),
    )
    of_severity = {v: np.array([smp.anomalous and smp.severity == v for smp in samples]) for v in severities}
    rows = []
    for fpr in OPERATING_FPRS:
        rule = threshold_rule(good_scores, fpr)
        flagged = s > rule.threshold
        row = {
            "target_fpr": fpr,
            "threshold": rule.threshold,
            "rule": rule.rule,
            "recall": _round(flagged[labels].mean()) if labels.any() else None,
            "fpr": _round(flagged[~labels].mean()) if (~labels).any() else None,
        }
        if of_severity:
            row["recall_per_severity"] = {v: _round(flagged[sel].mean()) for v, sel in of_severity.items()}
        rows.append(row)
    return rows


def evaluate_scores(
    samples: Sequence,
    scores,
    maps: np.ndarray | None,
    threshold: float,
    score_method: str,
    model_name: str,
    masks: np.ndarray | None = None,
    good_scores=None,
) -> dict:
    """Metrics of one score method on the test samples (DESIGN §3 keys plus confusion counts and per-defect recall).

    `per_severity` (extension) is added when the samples carry severities (the synthetic sets' meta.json);
    `operating_points` (extension) when the held-out good scores the threshold was calibrated on are given.

    `masks` defaults to the samples' ground-truth masks read at the maps' resolution.
    """
    s = np.asarray(scores, dtype=np.float64)
    if len(samples) != s.size:
        raise ValueError(f"{len(samples)} samples but {s.size} scores")
    labels = np.array([smp.anomalous for smp in samples], dtype=bool)
    if masks is None and maps is not None and len(maps):
        masks = load_masks(samples, maps.shape[1:3])
    at = metrics.precision_recall_f1(s, labels, threshold)
    good = ~labels

    def versus_good(group: str) -> dict:
        """One row per group of anomalous images (by defect, by severity), each against all good test images."""
        rows = {}
        keys = [getattr(smp, group) if smp.anomalous else "" for smp in samples]
        for name in sorted(
            {k for k in keys if k}, key=lambda k: (SEVERITY_ORDER.get(k, len(SEVERITY_ORDER)), k)
        ):
            sel = np.array([k == name for k in keys])
            sub = sel | good
            rows[name] = {
                "auroc": _round(metrics.auroc(s[sub], labels[sub])),
                "n": int(sel.sum()),
                "recall": _round(np.mean(s[sel] > threshold)),
                "mean_score": _round(s[sel].mean()),
            }
        return rows

    per_severity = versus_good("severity")
    return {
        "image_auroc": _round(metrics.auroc(s, labels)),
        "pixel_auroc": _round(metrics.pixel_auroc(maps, masks)) if masks is not None else None,
        "f1": _round(at["f1"]),
        "precision": _round(at["precision"]),
        "recall": _round(at["recall"]),
        "fpr": _round(at["fpr"]),
        "threshold": float(threshold),
        "n_good": int(good.sum()),
        "n_anomalous": int(labels.sum()),
        "confusion": {k: at[k] for k in ("tp", "fp", "fn", "tn")},
        "per_defect": versus_good("defect"),
        **({"per_severity": per_severity} if per_severity else {}),
        **({"operating_points": operating_points(samples, s, good_scores)} if good_scores else {}),
        "score_method": score_method,
        "model": model_name,
    }


def _method_list(text: str | None, primary: str) -> list[str]:
    methods = [primary]
    for m in (text or "").split(","):
        m = m.strip()
        if not m:
            continue
        scoring.resolve_params(m)  # one-line error for an unknown method
        if m not in methods:
            methods.append(m)
    return methods


@dataclass(frozen=True)
class Scored:
    """What a run or a bundle made of a set of photos: the model's own input and each method's output."""

    x: np.ndarray  # the photos as the model saw them (N, H, W, C) float in [0, 1]
    results: dict  # method -> (scores (N,), maps (N, H, W), threshold, params)
    name: str
    spec: InputSpec
    primary: str
    # the device's learned rows searched beside a bundle's bank: {file, rows, events}; None without
    learned: dict | None = None


class Photos(Sequence):
    """Photos read from disk when used, so a large real data set is never held in memory whole."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return read_image(self.paths[i])


def model_kind(path: Path) -> str:
    """Whether `path` holds a bundle or a training run; a one-line error before anything heavy is loaded."""
    if (path / "bundle.json").is_file():
        return "bundle"
    if (path / "config.json").is_file() or (path / "model.keras").is_file():
        return "run"
    raise UserError(f"--model {path}: neither a run folder (config.json) nor a bundle (bundle.json)")


def score_images(
    path: Path,
    images: Sequence[np.ndarray],
    methods_arg: str | None = None,
    val_images: Callable[[InputSpec], np.ndarray] | None = None,
    learned: str | None = None,
) -> Scored:
    """Score BGR photos (as read from disk) with a run (Keras) or a bundle (the device's own scorer).

    Why one entry for both: evaluate and the twin probe (train.twins) must judge a run and its bundle by the same
    code. `val_images` gives the good validation photos for a run from before per-method calibration. `learned`:
    a bundle's scorer also searches the rows a device learned from false alarms (check_learned first).
    """
    if model_kind(path) == "bundle":
        return _bundle_scores(path, images, methods_arg, learned)
    if learned:
        raise ValueError("learned rows belong to a bundle, not to a training run (check_learned)")
    return _run_scores(path, images, methods_arg, val_images)


def check_learned(path: Path, learned: str | None) -> None:
    """`--learned FILE` refused in one line before anything is scored: learned rows are features of the device's
    converted model, so they go with a kNN bundle of that model only (edge.learning.check_offline_learned)."""
    if not learned:
        return
    if model_kind(path) != "bundle":
        raise UserError(
            f"--learned {learned}: needs --model to be the device's bundle folder, not a training run"
            " (learned rows are features of the bundle's own model)"
        )
    from edge.learning import check_offline_learned

    check_offline_learned(learned, path)


def _run_scores(
    run_dir: Path,
    images: Sequence[np.ndarray],
    methods_arg: str | None,
    val_images: Callable[[InputSpec], np.ndarray] | None,
) -> Scored:
    from train.model import load_run

    model, config = load_run(run_dir)
    try:
        spec = InputSpec.from_json(config["input"])
        primary = config["score"]["method"]
    except (KeyError, TypeError):
        raise UserError(
            f"{run_dir / 'config.json'}: missing `input` or `score` (not written by train fit?)"
        ) from None
    x = _model_input(images, spec)
    from train.knn_fit import is_knn_run

    if is_knn_run(config):
        return Scored(x, *_knn_run_results(run_dir, model, config, x, methods_arg), spec, primary)
    methods = _method_list(methods_arg, primary)
    recon = model.predict(x, batch_size=PREDICT_BATCH, verbose=0)
    known = config.get("scores_by_method", {})
    recalibrated = None
    results = {}
    for m in methods:
        if m == primary:
            params, threshold = config["score"]["params"], float(config["threshold"])
        elif m in known:
            params, threshold = known[m]["params"], float(known[m]["threshold"])
        else:  # a run from before per-method calibration: calibrate now, on validation images only
            if val_images is None:
                raise UserError(
                    f"{run_dir}: has no calibrated threshold for {m!r}; evaluate it on its data set"
                )
            if recalibrated is None:
                from train.fit import calibrate_all_methods

                target = float(config.get("calibration", {}).get("target_fpr", DEFAULT_TARGET_FPR))
                recalibrated = calibrate_all_methods(model, val_images(spec), None, target)
            params, threshold = recalibrated[m]["params"], recalibrated[m]["threshold"]
        scores, maps = scoring.score_batch(x, recon, m, params)
        results[m] = (scores, maps, threshold, params)
    name = f"{Path(run_dir).resolve().name} ({config.get('cae', {}).get('name', '?')}, keras)"
    return Scored(x, results, name, spec, primary)


def _model_input(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    out = np.empty((len(images), spec.height, spec.width, spec.channels), np.float32)
    for i, im in enumerate(images):
        out[i] = preprocess(im, spec).reshape(out.shape[1:])
    return out


def _knn_run_results(run_dir: Path, model, config: dict, x: np.ndarray, methods_arg: str | None):
    """A knn run is scored with its own method against its bank (the float reference convert compares with)."""
    from train.knn_fit import score_images as knn_scores

    primary = config["score"]["method"]
    if methods_arg:
        log.warning("a %s run is scored with its own method only; ignoring --methods", primary)
    scores, maps = knn_scores(run_dir, x, model=model, config=config)
    params = config["score"]["params"]
    name = f"{Path(run_dir).resolve().name} ({config.get('features', {}).get('backbone', primary)}, keras)"
    return {primary: (scores, maps, float(config["threshold"]), params)}, name


def _bundle_scores(
    bundle_dir: Path, images: Sequence[np.ndarray], methods_arg: str | None, learned: str | None = None
) -> Scored:
    """TFLite path: the device's own scorer (edge.scorer) supplies scores and residual maps."""
    from edge.scorer import Scorer

    scorer = Scorer(bundle_dir, threads=2)
    b = scorer.bundle
    name, learned_info = f"{b.name} ({b.quantization}, tflite)", None
    if learned:
        from edge.learning import use_learned

        lessons = use_learned(scorer, learned)
        name += f" + {lessons.n_rows} rows learned from {lessons.n_events} false alarms"
        learned_info = {
            "file": str(Path(learned).resolve()),
            "rows": lessons.n_rows,
            "events": lessons.n_events,
        }
    primary = b.score_method
    if _method_list(methods_arg, primary) != [primary]:
        log.warning("a bundle is scored with its own method (%s) only; ignoring --methods", primary)
    out, x = [], []
    for im in images:  # one pass: each photo is read from disk once (evaluate's Photos)
        out.append(scorer.score(im))
        x.append(preprocess(im, b.input).reshape(b.input.height, b.input.width, b.input.channels))
    scores = np.array([r.score for r in out], dtype=np.float64)
    maps = np.stack([np.asarray(r.residual_map, dtype=np.float32) for r in out])
    results = {primary: (scores, maps, float(b.threshold), b.score_params)}
    return Scored(np.stack(x), results, name, b.input, primary, learned_info)


def _calibration_scores(path: Path) -> list | None:
    """The held-out good scores the primary threshold was calibrated on (bundle.json or the run's config.json
    `calibration.good_scores`); None for a bundle or run from before they were stored."""
    meta = path / ("bundle.json" if (path / "bundle.json").is_file() else "config.json")
    try:
        scores = (json.loads(meta.read_text()).get("calibration") or {}).get("good_scores")
    except (OSError, ValueError):
        return None
    return scores if isinstance(scores, list) and scores else None


def evaluate(
    model_dir: str,
    data: str,
    json_out: str | None,
    report_dir: str | None,
    methods_arg: str | None,
    learned: str | None = None,
) -> dict:
    """Score the test split and return the metrics dict; write the JSON and the report folder when asked.

    `learned`: a device's learned file (feedback.learned_file), searched beside the bundle's bank, so the numbers
    are those of the device as it runs after its staff's false-alarm presses (edge.learning)."""
    from train.data import load_dataset, load_images

    path = Path(model_dir)
    _method_list(methods_arg, scoring.DEFAULT_METHOD)  # fail on a bad --methods before loading anything heavy
    model_kind(path)
    check_learned(path, learned)
    check_output(json_out)
    dataset = load_dataset(data)
    samples = dataset.split("test")
    if not samples:
        raise UserError(f"--data {data}: no test images")
    scored = score_images(
        path,
        Photos([s.path for s in samples]),
        methods_arg,
        val_images=lambda spec: load_images([v for v in dataset.split("val") if not v.anomalous], spec),
        learned=learned,
    )
    x, results, spec, primary = scored.x, scored.results, scored.spec, scored.primary
    name = scored.name
    methods = list(results)
    table = {}
    for m in methods:
        scores, maps, threshold, params = results[m]
        good = _calibration_scores(path) if m == primary else None
        table[m] = evaluate_scores(samples, scores, maps, threshold, m, name, good_scores=good)
        table[m]["score_params"] = params
    result = dict(table[primary])
    if len(methods) > 1:
        result["methods"] = {m: {k: table[m][k] for k in SUMMARY_KEYS} for m in methods}
    result["input"] = spec.to_json()
    result["data"] = str(Path(data).resolve())
    result["learned"] = scored.learned
    if json_out:
        write_result(json_out, result)
    if report_dir:
        from train.report import write_report

        write_report(
            Path(report_dir), result, samples, x, {m: results[m][:3] for m in methods}, primary, spec
        )
    return result


def check_output(json_out: str | None) -> None:
    """Refuse an unwritable `--json` before the scoring, not after it (evaluate, twins)."""
    if not json_out:
        return
    target = Path(json_out)
    folder = next((p for p in (target.parent, *target.parent.parents) if p.exists()), Path("."))
    if target.is_dir():
        raise UserError(f"--json {json_out}: cannot write (a folder)")
    if not folder.is_dir():
        raise UserError(f"--json {json_out}: cannot write ({folder} is not a folder)")
    if not os.access(folder, os.W_OK):
        raise UserError(f"--json {json_out}: cannot write ({folder} is not writable)")


def write_result(json_out: str, result: dict) -> None:
    """The JSON asked for with `--json` (evaluate, twins); a one-line error naming it when it cannot be written."""
    try:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"--json {json_out}: cannot write ({exc.strerror or exc})") from None


def cli_main(args) -> int:
    result = evaluate(
        args.model,
        args.data,
        args.json_out,
        args.report,
        getattr(args, "methods", None),
        getattr(args, "learned", None) or None,
    )
    summary = {k: result[k] for k in SUMMARY_KEYS}
    sys.stdout.write(
        json.dumps({"model": result["model"], "score_method": result["score_method"], **summary}) + "\n"
    )
    for m, row in result.get("methods", {}).items():
        sys.stdout.write(json.dumps({"method": m, **row}) + "\n")
    return 0
