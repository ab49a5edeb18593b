"""How far the converted model is from the float Keras model on the test split (bundle.json `parity`).

Why these numbers: image AUROC of both says whether detection got worse; the Spearman correlation of the scores
says whether the ranking of dishes survived quantization even where AUROC is saturated; the mean absolute
difference of the reconstructions says how much the pixels moved (a unit-range number, 1/256 is one int8 step).
For kNN bundles the model outputs patch features, so the mean absolute feature difference is reported instead
(`feature_mean_abs_diff`, in the features' own units).
"""

from __future__ import annotations

import logging

import numpy as np

from train import metrics

log = logging.getLogger(__name__)

AUROC_TOLERANCE = 0.005  # the goal: int8 image AUROC within this of the float model's


def spearman(a, b) -> float | None:
    """Rank correlation with average ranks for ties; None when either side is constant or too short."""
    ra = metrics.average_ranks(np.asarray(a, dtype=np.float64))
    rb = metrics.average_ranks(np.asarray(b, dtype=np.float64))
    if ra.size < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


def parity_report(
    labels,
    float_scores,
    quant_scores,
    float_recon: np.ndarray,
    quant_recon: np.ndarray,
    tolerance: float = AUROC_TOLERANCE,
    kind: str = "recon",
) -> dict:
    """Float vs converted on the same images; `within_tolerance` is None when AUROC is undefined (one class).

    `kind` names the compared model outputs: "recon" (reconstructions) or "feature" (kNN feature grids).
    """
    y = np.asarray(labels, dtype=bool)
    fs = np.asarray(float_scores, dtype=np.float64)
    qs = np.asarray(quant_scores, dtype=np.float64)
    a_float = metrics.auroc(fs, y)
    a_quant = metrics.auroc(qs, y)
    delta = None if a_float is None or a_quant is None else a_quant - a_float
    diff = np.abs(np.asarray(float_recon, np.float32) - np.asarray(quant_recon, np.float32))
    return {
        "split": "test",
        "n": int(y.size),
        "n_anomalous": int(y.sum()),
        "image_auroc_float": _r(a_float),
        "image_auroc_quant": _r(a_quant),
        "auroc_delta": _r(delta),
        "auroc_loss": _r(None if delta is None else max(0.0, -delta)),
        "tolerance": tolerance,
        "within_tolerance": None if delta is None else bool(-delta <= tolerance),
        "score_spearman": _r(spearman(fs, qs)),
        "score_mean_rel_diff": _r(score_rel_diff(fs, qs)) if fs.size else None,
        f"{kind}_mean_abs_diff": _r(diff.mean()) if diff.size else None,
        f"{kind}_max_abs_diff": _r(diff.max()) if diff.size else None,
    }


def score_rel_diff(float_scores, quant_scores) -> float:
    """Mean relative difference of two models' scores of the same images: label-free, so convert can choose
    between its int8 attempts on the held-out good images instead of on the test split's labels."""
    fs = np.asarray(float_scores, dtype=np.float64)
    qs = np.asarray(quant_scores, dtype=np.float64)
    return float(np.mean(np.abs(qs - fs) / np.maximum(np.abs(fs), 1e-12))) if fs.size else 0.0


def format_report(p: dict) -> str:
    """A few readable lines for the terminal."""

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    ok = {True: "ok", False: "OVER TOLERANCE", None: "undefined"}[p.get("within_tolerance")]
    kind, label = ("feature", "feature") if "feature_mean_abs_diff" in p else ("recon", "reconstruction")
    return (
        f"parity on {p['n']} test images ({p['n_anomalous']} anomalous):\n"
        f"  image AUROC   float {f(p['image_auroc_float'])}  converted {f(p['image_auroc_quant'])}"
        f"  delta {f(p['auroc_delta'])}  (tolerance {p['tolerance']}: {ok})\n"
        f"  score Spearman {f(p['score_spearman'])}   {label} mean |diff| {f(p[f'{kind}_mean_abs_diff'])}"
        f"  max {f(p[f'{kind}_max_abs_diff'])}"
    )
