"""Reconstruction -> (anomaly score, residual map): the one definition training, conversion and the device share.

Why here (edge/, numpy + OpenCV only): the threshold is calibrated in training on these numbers and compared on the
device against these numbers, so both sides must run the very same code with the very same parameters. The
method name and its resolved parameters are stored in config.json and bundle.json.

Methods (x and recon are float32 (H, W, C) in [0, 1]):

- ``mse``   the seed's score: mean squared error over the image. Map: squared error averaged over channels.
            Parameters: none.
- ``ssim``  structural dissimilarity (Wang et al. 2004): map = 1 - SSIM computed with a ``window`` x ``window``
            Gaussian window of standard deviation ``sigma`` (defaults 11 and 1.5, as in the paper), C1 = (0.01)^2,
            C2 = (0.03)^2 for unit-range images; on the grey image (``channels="grey"``) or averaged over the
            colour channels (``channels="mean"``, default). Score = mean of the map.
- ``local`` smoothed residual: squared error averaged over channels, Gaussian-blurred with ``sigma`` pixels
            (default 2.0); score = mean of the top ``topk`` fraction of the map (default 0.01, i.e. the top 1 %),
            or its maximum with ``reduce="max"``. A small defect covering 1 % of the plate moves this score by
            the defect's own residual instead of diluting it over the whole image as ``mse`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from edge.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_METHOD = "local"

DEFAULT_PARAMS: dict[str, dict] = {
    "mse": {},
    "ssim": {"window": 11, "sigma": 1.5, "channels": "mean"},
    "local": {"sigma": 2.0, "reduce": "topk", "topk": 0.01},
}

METHODS: tuple[str, ...] = tuple(DEFAULT_PARAMS)

_C1 = 0.01**2
_C2 = 0.03**2


def resolve_params(method: str, params: dict | None = None) -> dict:
    """Defaults merged with `params`, validated: what gets stored so training and device agree exactly."""
    if method not in DEFAULT_PARAMS:
        raise UserError(f"score method {method!r}: unknown (choose from {', '.join(METHODS)})")
    merged = dict(DEFAULT_PARAMS[method])
    for key, value in (params or {}).items():
        if key not in merged:
            raise UserError(f"score params: unknown key {key!r} for method {method!r}")
        merged[key] = value
    try:
        if method == "ssim":
            merged["window"] = int(merged["window"])
            merged["sigma"] = float(merged["sigma"])
            if merged["window"] < 3 or merged["window"] % 2 == 0 or merged["sigma"] <= 0:
                raise ValueError("window must be odd >= 3 and sigma > 0")
            if merged["channels"] not in ("mean", "grey"):
                raise ValueError("channels must be 'mean' or 'grey'")
        elif method == "local":
            merged["sigma"] = float(merged["sigma"])
            merged["topk"] = float(merged["topk"])
            if merged["sigma"] < 0 or not 0 < merged["topk"] <= 1:
                raise ValueError("sigma must be >= 0 and topk in (0, 1]")
            if merged["reduce"] not in ("topk", "max"):
                raise ValueError("reduce must be 'topk' or 'max'")
    except (TypeError, ValueError) as exc:
        raise UserError(f"score params for {method!r}: {exc}") from None
    return merged


def _check(x: np.ndarray, recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    recon = np.asarray(recon, dtype=np.float32)
    if x.ndim == 2:
        x = x[..., None]
    if recon.ndim == 2:
        recon = recon[..., None]
    if x.shape != recon.shape or x.ndim != 3:
        raise ValueError(
            f"image and reconstruction shapes differ or are not (H, W, C): {x.shape} vs {recon.shape}"
        )
    return x, recon


def _squared_error_map(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    return np.mean(np.square(x - recon), axis=2, dtype=np.float32)


def _gaussian(img: np.ndarray, window: int, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (window, window), sigma, borderType=cv2.BORDER_REFLECT)


def ssim_map(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """SSIM map of two single-channel unit-range float32 images (Wang et al. 2004, Gaussian window)."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    mu_a = _gaussian(a, window, sigma)
    mu_b = _gaussian(b, window, sigma)
    var_a = _gaussian(a * a, window, sigma) - mu_a * mu_a
    var_b = _gaussian(b * b, window, sigma) - mu_b * mu_b
    cov = _gaussian(a * b, window, sigma) - mu_a * mu_b
    num = (2 * mu_a * mu_b + _C1) * (2 * cov + _C2)
    den = (mu_a * mu_a + mu_b * mu_b + _C1) * (var_a + var_b + _C2)
    return num / den


def _grey(img: np.ndarray) -> np.ndarray:
    if img.shape[2] == 1:
        return img[..., 0]
    # ITU-R BT.601 luma; channel order does not matter much for a dissimilarity, weights are the usual ones.
    return (0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]).astype(np.float32)


def _score_mse(x: np.ndarray, recon: np.ndarray, p: dict) -> tuple[float, np.ndarray]:
    m = _squared_error_map(x, recon)
    return float(m.mean()), m


def _score_ssim(x: np.ndarray, recon: np.ndarray, p: dict) -> tuple[float, np.ndarray]:
    if p["channels"] == "grey":
        s = ssim_map(_grey(x), _grey(recon), p["window"], p["sigma"])
    else:
        s = np.mean(
            [ssim_map(x[..., c], recon[..., c], p["window"], p["sigma"]) for c in range(x.shape[2])], axis=0
        )
    m = np.clip(1.0 - s, 0.0, 2.0).astype(np.float32)
    return float(m.mean()), m


def _score_local(x: np.ndarray, recon: np.ndarray, p: dict) -> tuple[float, np.ndarray]:
    m = _squared_error_map(x, recon)
    if p["sigma"] > 0:
        m = cv2.GaussianBlur(m, (0, 0), p["sigma"], borderType=cv2.BORDER_REFLECT)
    if p["reduce"] == "max":
        return float(m.max()), m
    k = max(1, int(round(p["topk"] * m.size)))
    top = np.partition(m.ravel(), m.size - k)[m.size - k :]
    return float(top.mean()), m


_FUNCS = {"mse": _score_mse, "ssim": _score_ssim, "local": _score_local}


def score_reconstruction(
    x: np.ndarray, recon: np.ndarray, method: str = DEFAULT_METHOD, params: dict | None = None
) -> tuple[float, np.ndarray]:
    """Score one image against its reconstruction: (score, residual map float32 (H, W)). Higher = more anomalous."""
    p = resolve_params(method, params)
    x, recon = _check(x, recon)
    return _FUNCS[method](x, recon, p)


def score_batch(
    xs: np.ndarray | Sequence[np.ndarray],
    recons: np.ndarray | Sequence[np.ndarray],
    method: str = DEFAULT_METHOD,
    params: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score N images: (scores float64 (N,), maps float32 (N, H, W)). Parameters are resolved once."""
    p = resolve_params(method, params)
    if len(xs) != len(recons):
        raise ValueError(f"{len(xs)} images but {len(recons)} reconstructions")
    scores = np.empty(len(xs), dtype=np.float64)
    maps = []
    for i, (x, r) in enumerate(zip(xs, recons, strict=True)):
        x, r = _check(x, r)
        scores[i], m = _FUNCS[method](x, r, p)
        maps.append(m)
    return scores, (np.stack(maps) if maps else np.zeros((0, 0, 0), np.float32))
