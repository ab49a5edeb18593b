"""The alert threshold, chosen on held-out good images only (never on test images).

Rule (edge.calibration applies it, so the device can too; also in the README, "Training and evaluation"):

- Target: a false-positive rate `target_fpr` on good dishes (default 1 %).
- Large validation set, n >= ceil(1 / target_fpr) (n >= 100 for 1 %): the threshold is the empirical
  (1 - target_fpr) quantile of the validation scores, taken as an order statistic so that at most
  floor(target_fpr * n) validation scores lie above it (rule ``quantile``).
- Small validation set (n < ceil(1 / target_fpr)): that quantile lies beyond the largest observation and cannot be
  estimated, so the threshold is max(validation scores) * (1 + margin), margin = 0.10 by default (rule
  ``max_margin``). Why this and not a Gaussian fit: reconstruction scores are right-skewed and a normal tail
  under-estimates them; the largest good score is the one number a small set does measure, and the margin covers
  the next, unseen good dish. Every score here is non-negative, so a relative margin is well defined.
- Feature-distance methods add held-out scores of the good training images (each scored against the bank
  without its own patches, train.features.held_out_train_scores) to the validation scores, so a DSM-sized set
  reaches the quantile rule (``split`` is then ``val+train-held-out``). Reconstruction methods cannot: the CAE
  was fitted to its training images.
- When labelled anomalies exist outside the test split, the F1-optimal threshold on them is reported as well
  (``f1_optimal``), for information; the alert threshold stays the FPR rule.
"""

from __future__ import annotations

import logging

import numpy as np

from edge.calibration import DEFAULT_MARGIN, DEFAULT_TARGET_FPR, good_scores_for_bundle, threshold_rule
from train.metrics import best_f1_threshold

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MARGIN", "DEFAULT_TARGET_FPR", "calibrate_threshold"]


def calibrate_threshold(
    good_scores,
    target_fpr: float = DEFAULT_TARGET_FPR,
    margin: float = DEFAULT_MARGIN,
    anomalous_scores=None,
    split: str = "val",
) -> dict:
    """Threshold for `score > threshold` => anomaly, plus how it was chosen (stored in config.json / bundle.json).

    `good_scores` are stored too: the device applies the same rule to them when a kitchen sets its own
    false-positive rate (edge.calibration)."""
    r = threshold_rule(good_scores, target_fpr, margin)
    s = np.asarray(good_scores_for_bundle(good_scores))
    n, rule, threshold = r.n, r.rule, r.threshold
    info = {
        "threshold": threshold,
        "rule": rule,
        "n": n,
        "n_needed_for_quantile": r.n_needed_for_quantile,
        "target_fpr": target_fpr,
        "margin": margin if rule == "max_margin" else None,
        "val_fpr": float(np.mean(s > threshold)),
        "val_score_min": float(s[0]),
        "val_score_median": float(np.median(s)),
        "val_score_max": float(s[-1]),
        "split": split,
        "good_scores": s.tolist(),
    }
    if anomalous_scores is not None and len(anomalous_scores):
        a = np.asarray(anomalous_scores, dtype=np.float64).ravel()
        t, f1 = best_f1_threshold(np.r_[s, a], np.r_[np.zeros(n, bool), np.ones(a.size, bool)])
        info["f1_optimal"] = {"threshold": t, "f1": f1, "n_anomalous": int(a.size)}
    log.info("threshold %.6g (%s, n=%d, target fpr %.3g)", threshold, rule, n, target_fpr)
    return info
