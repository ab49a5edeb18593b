"""Detection metrics with the anomalous class as the positive class (numpy only).

Why not sklearn: one less heavy dependency, and ties must be handled explicitly (int8 models produce many
identical scores): AUROC here is the Mann-Whitney statistic with average ranks, so a tie counts one half.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

PIXEL_AUROC_MAX = 4_000_000  # pixels; above this a deterministic random subsample is used


def _as_arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    return s, y


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the mean of the ranks they span."""
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # start index of each group of equal values
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], v.size]
    group_rank = (starts + ends + 1) / 2.0  # mean of (start+1 .. end)
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def auroc(scores, labels) -> float | None:
    """Area under the ROC curve; None when one class is absent (undefined, not 0.5)."""
    s, y = _as_arrays(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    r = average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0) with threshold +inf; a point per distinct score.

    The point for threshold t counts `score >= t` as anomalous.
    """
    s, y = _as_arrays(scores, labels)
    n_pos = max(int(y.sum()), 1)
    n_neg = max(int((~y).sum()), 1)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = np.cumsum(y_sorted)[last_of_group]
    fp = np.cumsum(~y_sorted)[last_of_group]
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    thr = np.r_[np.inf, s_sorted[last_of_group]]
    return fpr, tpr, thr


def pixel_auroc(maps: np.ndarray, masks: np.ndarray, max_pixels: int = PIXEL_AUROC_MAX) -> float | None:
    """AUROC over all pixels of all images (defective pixel = positive); deterministic subsample when huge."""
    m = np.asarray(maps, dtype=np.float32).ravel()
    g = np.asarray(masks).astype(bool).ravel()
    if m.shape != g.shape:
        raise ValueError(f"maps have {m.size} pixels but masks {g.size}")
    if m.size > max_pixels:
        idx = np.random.default_rng(0).choice(m.size, size=max_pixels, replace=False)
        m, g = m[idx], g[idx]
    return auroc(m, g)


def precision_recall_f1(scores, labels, threshold: float) -> dict:
    """Counts and rates at a threshold; an image is called anomalous when score > threshold."""
    s, y = _as_arrays(scores, labels)
    pred = s > threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
    }


def best_f1_threshold(scores, labels) -> tuple[float, float]:
    """(threshold, F1) maximising F1 with `score > threshold`; thresholds are midpoints between distinct scores."""
    s, y = _as_arrays(scores, labels)
    u = np.unique(s)
    candidates = np.r_[u[0] - 1.0, (u[1:] + u[:-1]) / 2.0] if u.size else np.array([0.0])
    best = (float(candidates[0]), -1.0)
    for t in candidates:
        f1 = precision_recall_f1(s, y, float(t))["f1"]
        if f1 > best[1]:
            best = (float(t), f1)
    return best
