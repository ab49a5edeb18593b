"""Greedy k-center coreset selection for the patch memory bank (PatchCore, Roth et al. 2022).

Why: a bank of every good training patch is tens of MB and slow to search on a device; a coreset of ~1 % keeps
the covering radius small (every good patch stays close to some kept patch) at a size the device can hold.
Distances for the selection are computed on a random projection (Johnson-Lindenstrauss) to keep it fast; the
kept rows are the original full-dimensional features.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def greedy_coreset(
    features: np.ndarray, n: int, seed: int = 0, project_dim: int = 128, start: int | None = None
) -> np.ndarray:
    """Indices of `n` rows chosen greedily: each pick is the row furthest from everything picked so far."""
    x = np.asarray(features, dtype=np.float32)
    total = x.shape[0]
    n = max(1, min(int(n), total))
    rng = np.random.default_rng(seed)
    if project_dim and x.shape[1] > project_dim:
        proj = rng.normal(size=(x.shape[1], project_dim)).astype(np.float32) / np.sqrt(project_dim)
        x = x @ proj
    x2 = np.einsum("ij,ij->i", x, x)
    first = int(rng.integers(total)) if start is None else int(start)
    chosen = np.empty(n, dtype=np.int64)
    chosen[0] = first
    # Squared distance of every row to its nearest chosen row; updated with one row-vector product per pick.
    mind = np.maximum(x2 - 2.0 * (x @ x[first]) + x2[first], 0.0)
    for i in range(1, n):
        nxt = int(np.argmax(mind))
        chosen[i] = nxt
        d = np.maximum(x2 - 2.0 * (x @ x[nxt]) + x2[nxt], 0.0)
        np.minimum(mind, d, out=mind)
    return chosen


def covering_radius(features: np.ndarray, kept: np.ndarray) -> float:
    """Largest distance from any row to its nearest kept row (what the coreset guarantees to keep small)."""
    from edge.knn import nn_distances

    return float(nn_distances(features, features[kept]).max())
