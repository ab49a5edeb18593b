"""Score one dish crop with a verified bundle: shared preprocessing, TFLite reconstruction, shared scoring, regions.

Why everything goes through edge.preprocess and edge.scoring: the bundle's threshold was calibrated on numbers
computed by exactly these functions (convert recalibrates on this very .tflite through this class), so the
device's score is the same number, not a re-implementation of it.

Heat map: the residual map divided by the threshold (1.0 == threshold level), resized to the crop's size.
Regions: connected components of the residual map above the threshold (only when the verdict is an anomaly),
specks below MIN_REGION_FRACTION of the map dropped, boxes mapped back to the crop's pixels, largest peak first.
Not thread-safe by design of the interpreter; a lock serialises concurrent callers.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.bundle import BundleInfo, TensorInfo, read_bundle
from edge.errors import UserError
from edge.interpreter import load_interpreter
from edge.preprocess import resize_to_input, to_model_float
from edge.scoring import score_reconstruction

log = logging.getLogger(__name__)

MIN_REGION_FRACTION = 0.002  # of the map's area; smaller components are specks
MIN_REGION_PIXELS = 2
MAX_REGIONS = 10


@dataclass(frozen=True)
class Region:
    """A suspicious area, in the pixels of the image passed to `Scorer.score`; `score` is its peak residual."""

    x: int
    y: int
    w: int
    h: int
    score: float

    def to_json(self) -> dict:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": round(self.score, 6)}


@dataclass(frozen=True)
class ScoreResult:
    score: float
    threshold: float
    anomalous: bool
    heatmap: np.ndarray = field(
        repr=False, compare=False
    )  # float32 (h, w) of the input image, 1.0 == threshold
    regions: tuple[Region, ...] = ()
    inference_ms: float = 0.0
    # the raw residual map at the model's input resolution (what evaluate compares with ground-truth masks)
    residual_map: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def severity(self) -> float:
        return self.score / self.threshold


def _quantize(x: np.ndarray, t: TensorInfo) -> np.ndarray:
    info = np.iinfo(t.dtype)
    q = np.round(x / t.scale + t.zero_point)
    return np.clip(q, info.min, info.max).astype(t.dtype)


def find_regions(residual: np.ndarray, threshold: float, out_hw: tuple[int, int]) -> tuple[Region, ...]:
    """Boxes of the residual map's components above `threshold`, in an (h, w) image's pixels, peak first."""
    mask = (residual > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return ()
    mh, mw = residual.shape
    sy, sx = out_hw[0] / mh, out_hw[1] / mw
    min_area = max(MIN_REGION_PIXELS, int(round(MIN_REGION_FRACTION * mh * mw)))
    found = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        peak = float(residual[labels == i].max())
        found.append((area >= min_area, peak, x, y, w, h))
    kept = [f for f in found if f[0]] or [max(found, key=lambda f: f[1])]  # never lose the peak of an anomaly
    kept.sort(key=lambda f: -f[1])
    regions = []
    for _, peak, x, y, w, h in kept[:MAX_REGIONS]:
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = min(out_hw[1], int(np.ceil((x + w) * sx))), min(out_hw[0], int(np.ceil((y + h) * sy)))
        regions.append(Region(x0, y0, x1 - x0, y1 - y0, peak))
    return tuple(regions)


class Scorer:
    """A verified bundle loaded into a TFLite interpreter."""

    def __init__(self, bundle_dir: str | Path, threads: int = 2) -> None:
        self.bundle: BundleInfo = read_bundle(bundle_dir)
        where = f"bundle {Path(bundle_dir)}"
        self._interp = load_interpreter(self.bundle.model_path, threads, where=where)
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        spec = self.bundle.input
        want = [1, spec.height, spec.width, spec.channels]
        for role, det, tensor in (
            ("input", self._in, self.bundle.input_tensor),
            ("output", self._out, self.bundle.output_tensor),
        ):
            if list(det["shape"]) != want:
                raise UserError(
                    f"{where}: model {role} shape {list(det['shape'])} differs from bundle.json {want}"
                )
            if np.dtype(det["dtype"]).name != tensor.dtype:
                raise UserError(
                    f"{where}: model {role} dtype {np.dtype(det['dtype']).name} differs from bundle.json {tensor.dtype}"
                )
        # camera bytes go straight in when the input's quantization is exactly the uint8 pixel scale
        t = self.bundle.input_tensor
        self._raw_bytes = t.dtype == "uint8" and t.zero_point == 0 and abs(t.scale * 255.0 - 1.0) < 1e-6
        self._lock = threading.Lock()
        log.info(
            "%s loaded: %s, %s, threshold %.6g, sha256 %s",
            where,
            self.bundle.name,
            self.bundle.quantization,
            self.bundle.threshold,
            self.bundle.sha256[:12],
        )

    def _model_input(self, img_u8: np.ndarray, x: np.ndarray) -> np.ndarray:
        t = self.bundle.input_tensor
        if not t.quantized:
            return x[None]
        if self._raw_bytes:
            return img_u8[None]
        return _quantize(x, t)[None]

    def reconstruct(self, img_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(model input x float32 unit, reconstruction float32 unit, inference ms) of a model-sized uint8 image."""
        x = to_model_float(img_u8)
        feed = self._model_input(img_u8, x)
        with self._lock:
            t0 = time.perf_counter()
            self._interp.set_tensor(self._in["index"], feed)
            self._interp.invoke()
            out = self._interp.get_tensor(self._out["index"])[0]
            ms = (time.perf_counter() - t0) * 1000.0
        t = self.bundle.output_tensor
        recon = (out.astype(np.float32) - t.zero_point) * np.float32(t.scale) if t.quantized else out
        return x, recon.astype(np.float32, copy=False), ms

    def score(self, bgr: np.ndarray) -> ScoreResult:
        """Score a BGR uint8 crop of any size."""
        if not isinstance(bgr, np.ndarray) or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
            raise ValueError(f"expected a BGR image (h, w, 3), got {getattr(bgr, 'shape', type(bgr))}")
        b = self.bundle
        x, recon, ms = self.reconstruct(resize_to_input(bgr, b.input))
        score, residual = score_reconstruction(x, recon, b.score_method, b.score_params)
        anomalous = bool(score > b.threshold)
        h, w = bgr.shape[:2]
        heat = cv2.resize(residual / np.float32(b.threshold), (w, h), interpolation=cv2.INTER_LINEAR)
        regions = find_regions(residual, b.threshold, (h, w)) if anomalous else ()
        return ScoreResult(
            score=float(score),
            threshold=b.threshold,
            anomalous=anomalous,
            heatmap=heat.astype(np.float32, copy=False),
            regions=regions,
            inference_ms=ms,
            residual_map=residual,
        )

    def score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        """Score several crops one by one (the model has a fixed batch of 1)."""
        return [self.score(img) for img in images]
