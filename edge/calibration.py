"""The threshold rule, shared by training's calibration and the device's own choice of a false-positive rate.

Why it lives in edge/: a kitchen that finds the bundle's 1 % false alarms too many (or its recall too low) sets
`model.target_fpr` on the device, and the device must then apply exactly the rule that calibrated the bundle, to
the same held-out good scores (bundle.json `calibration.good_scores`), with no TensorFlow and no retraining.
train.calibrate imports this; edge never imports train.

The rule (README, "Training and evaluation"): with n >= ceil(1 / target_fpr) good scores the threshold is the
empirical (1 - target_fpr) quantile, taken as an order statistic so that at most floor(target_fpr * n) scores lie
above it (`quantile`); with fewer, that quantile lies beyond the data, so it is the largest score x (1 + margin)
(`max_margin`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.bundle import BundleInfo
from edge.errors import UserError

DEFAULT_TARGET_FPR = 0.01
DEFAULT_MARGIN = 0.10


@dataclass(frozen=True)
class Rule:
    """One application of the rule: the threshold and how it was reached."""

    threshold: float
    rule: str  # "quantile" or "max_margin"
    n: int
    n_needed_for_quantile: int


def threshold_rule(good_scores, target_fpr: float, margin: float = DEFAULT_MARGIN) -> Rule:
    """The threshold for `score > threshold` => anomaly at `target_fpr` on these held-out good scores."""
    s = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    n = int(s.size)
    if n == 0:
        raise UserError("calibration: no held-out good images (the validation split is empty)")
    if not np.all(np.isfinite(s)):
        raise UserError("calibration: non-finite scores on the validation images (did training diverge?)")
    if not 0 < target_fpr < 1:
        raise UserError(f"calibration: target_fpr must be in (0, 1), got {target_fpr}")
    n_needed = math.ceil(1.0 / target_fpr - 1e-9)
    if n >= n_needed:
        allowed_above = int(math.floor(target_fpr * n + 1e-9))
        return Rule(float(s[n - 1 - allowed_above]), "quantile", n, n_needed)
    return Rule(float(s[-1] * (1.0 + margin)), "max_margin", n, n_needed)


def stored_good_scores(bundle: BundleInfo, key: str) -> list[float]:
    """bundle.json `calibration.good_scores`; a one-line error naming `key` (the setting that needs them)."""
    cal = bundle.calibration if isinstance(bundle.calibration, dict) else {}
    scores = cal.get("good_scores")
    if not isinstance(scores, list) or not scores:
        raise UserError(
            f"{key}: bundle {bundle.path} has no calibration.good_scores (converted before dishwatch stored them;"
            " convert it again, or set an absolute threshold instead)"
        )
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in scores):
        raise UserError(f"bundle {bundle.path}: bundle.json calibration.good_scores must be finite numbers")
    return [float(v) for v in scores]


@dataclass(frozen=True)
class ThresholdOverride:
    """What the device compares scores against instead of the bundle's threshold (0 = not set).

    `keys` name the settings in errors and logs: the daemon's config fields, or the score CLI's flags."""

    threshold: float = 0.0
    target_fpr: float = 0.0
    keys: tuple[str, str] = ("model.threshold", "model.target_fpr")

    def validate(self) -> ThresholdOverride:
        t_key, f_key = self.keys
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise UserError(
                f"{t_key}: must be a positive number (0 = the bundle's threshold), got {self.threshold}"
            )
        if not (math.isfinite(self.target_fpr) and 0 <= self.target_fpr < 1):
            raise UserError(
                f"{f_key}: must be in (0, 1) (0 = the bundle's calibration), got {self.target_fpr}"
            )
        if self.threshold and self.target_fpr:
            raise UserError(f"{t_key} and {f_key}: set one of them, not both")
        return self

    def resolve(self, bundle: BundleInfo) -> tuple[float, str]:
        """(threshold, where it came from, for the log) for this bundle."""
        t_key, f_key = self.keys
        if self.threshold:
            return self.threshold, f"{t_key} (the bundle's {bundle.threshold:.6g})"
        if self.target_fpr:
            scores = stored_good_scores(bundle, f_key)
            margin = (bundle.calibration or {}).get("margin") or DEFAULT_MARGIN
            r = threshold_rule(scores, self.target_fpr, float(margin))
            return r.threshold, (
                f"{f_key} {self.target_fpr:g} on the bundle's {r.n} held-out good scores, rule {r.rule}"
                f" (the bundle's {bundle.threshold:.6g} at {(bundle.calibration or {}).get('target_fpr')})"
            )
        return bundle.threshold, "the bundle's"


def good_scores_for_bundle(scores: Sequence[float]) -> list[float]:
    """The held-out good scores as bundle.json stores them: sorted, at full precision, so the device's rule at the
    bundle's own target_fpr gives back the bundle's threshold exactly."""
    return [float(v) for v in np.sort(np.asarray(scores, dtype=np.float64).ravel())]
