"""Score one dish crop with a verified bundle: shared preprocessing, TFLite reconstruction, shared scoring, regions.

Why everything goes through edge.preprocess and edge.scoring: the bundle's threshold was calibrated on numbers
computed by exactly these functions (convert recalibrates on this very .tflite through this class), so the
device's score is the same number, not a re-implementation of it.

kNN bundles (`effnet-knn`, `cae-knn`): the model outputs a patch-feature grid; edge.knn.Bank (bank.npz, hash
checked at load) turns it into the score and an anomaly map at the model's resolution, used like the residual map.

Heat map: the residual map divided by the threshold (1.0 == threshold level), resized to the crop's size.
Regions: connected components of the residual map above the threshold (only when the verdict is an anomaly),
specks below MIN_REGION_FRACTION of the map dropped, boxes mapped back to the crop's pixels, largest peak first.
Not thread-safe by design of the interpreter; a lock serialises concurrent callers.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from edge.bundle import KNN_METHODS, BundleInfo, TensorInfo, read_bundle
from edge.calibration import ThresholdOverride
from edge.errors import UserError
from edge.events import significant
from edge.interpreter import load_interpreter
from edge.knn import Bank, load_bank
from edge.learning import LearnedRows, lesson
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
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": significant(self.score)}


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


def alert_regions(
    residual: np.ndarray, threshold: float, anomalous: bool, out_hw: tuple[int, int]
) -> tuple[Region, ...]:
    """Regions of an anomalous crop; none for a good one.

    Why a fallback: a score can pass the threshold while no pixel of the smoothed map does (the kNN global
    "not on the menu" term, or a sharp peak blurred down). An alert must still point somewhere, so then the
    map's most salient area (above half its peak) is boxed.
    """
    if not anomalous:
        return ()
    regions = find_regions(residual, threshold, out_hw)
    peak = float(residual.max()) if residual.size else 0.0
    if not regions and peak > 0:
        regions = find_regions(residual, 0.5 * peak, out_hw)
    return regions


class ModelRunner:
    """One TFLite model with its bundle-declared input/output tensors: uint8 image in, dequantized float out.

    Why separate from Scorer: convert must run the converted feature model on the training images to build the
    kNN bank *before* a complete bundle (and so a Scorer) exists; both then share this exact inference code.
    Not thread-safe (the interpreter is not); Scorer serialises callers with its lock.
    """

    def __init__(
        self,
        model_path: str | Path,
        input_tensor: TensorInfo,
        output_tensor: TensorInfo,
        threads: int,
        where: str,
    ) -> None:
        self.interp = load_interpreter(model_path, threads, where=where)
        self.input_details = self.interp.get_input_details()[0]
        self.output_details = self.interp.get_output_details()[0]
        self.input_tensor, self.output_tensor = input_tensor, output_tensor
        t = input_tensor
        # camera bytes go straight in when the input's quantization is exactly the uint8 pixel scale
        self._raw_bytes = t.dtype == "uint8" and t.zero_point == 0 and abs(t.scale * 255.0 - 1.0) < 1e-6

    def _model_input(self, img_u8: np.ndarray, x: np.ndarray) -> np.ndarray:
        t = self.input_tensor
        if not t.quantized:
            return x[None]
        if self._raw_bytes:
            return img_u8[None]
        return _quantize(x, t)[None]

    def run(self, img_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(model input x float32 unit, model output float32 (dequantized), inference ms) of a model-sized image."""
        x = to_model_float(img_u8)
        feed = self._model_input(img_u8, x)
        t0 = time.perf_counter()
        self.interp.set_tensor(self.input_details["index"], feed)
        self.interp.invoke()
        out = self.interp.get_tensor(self.output_details["index"])[0]
        ms = (time.perf_counter() - t0) * 1000.0
        t = self.output_tensor
        out = (out.astype(np.float32) - t.zero_point) * np.float32(t.scale) if t.quantized else out
        return x, out.astype(np.float32, copy=False), ms


class Scorer:
    """A verified bundle loaded into a TFLite interpreter (and, for a kNN method, its verified memory bank)."""

    def __init__(self, bundle_dir: str | Path, threads: int = 2, bank_rows: bool = False) -> None:
        """`bank_rows`: keep the fine bank rows in memory even when its search model holds them (convert's
        held-out calibration searches them in numpy; the device never does, edge.knn.load_bank)."""
        self.bundle: BundleInfo = read_bundle(bundle_dir)
        self.bundle_threshold = (
            self.bundle.threshold
        )  # as calibrated; use_threshold may replace bundle.threshold
        where = f"bundle {Path(bundle_dir)}"
        b = self.bundle
        # the bank is verified like the model, before anything is loaded into an interpreter
        knn = b.score_method in KNN_METHODS
        self.bank = load_bank(b.path, b.score_params["bank"], threads, rows=bank_rows) if knn else None
        self._runner = ModelRunner(b.model_path, b.input_tensor, b.output_tensor, threads, where)
        self._interp = self._runner.interp
        self._in, self._out = self._runner.input_details, self._runner.output_details
        spec = b.input
        want = [1, spec.height, spec.width, spec.channels]
        self._check_tensor(where, "input", self._in, b.input_tensor, want)
        self._check_tensor(where, "output", self._out, b.output_tensor, self._output_shape(want))
        search = None if self.bank is None else self.bank.search
        cells = int(np.prod(self._out["shape"][1:3]))
        if search is not None and cells != search.queries:
            raise UserError(
                f"{where}: search.tflite takes {search.queries} patches, the model's grid has {cells}"
            )
        self._lock = threading.Lock()
        self._loaded_bank = self.bank  # what set_learned extends
        log.info(
            "%s loaded: %s, %s, %s, threshold %.6g, sha256 %s",
            where,
            b.name,
            b.quantization,
            b.score_method,
            b.threshold,
            b.sha256[:12],
        )

    def loaded_bank(self) -> Bank:
        """The bank as the bundle holds it, without learned rows (a ValueError for a reconstruction bundle)."""
        if self._loaded_bank is None:
            raise ValueError(
                f"bundle {self.bundle.name} scores by reconstruction: it has no bank to learn into"
            )
        return self._loaded_bank

    def set_learned(self, rows: LearnedRows) -> None:
        """Search `rows` (learned on the device from false alarms, edge.learning) beside the bundle's bank."""
        bank = self.loaded_bank().with_learned(rows)
        with self._lock:
            self.bank = bank

    def lesson(self, bgr: np.ndarray) -> LearnedRows:
        """The rows a crop staff marked as good would teach the bank (edge.learning.lesson)."""
        self.loaded_bank()
        with self._lock:
            features = self._runner.run(resize_to_input(bgr, self.bundle.input))[1]
            return lesson(self.bank, features)

    def use_threshold(self, override: ThresholdOverride) -> str:
        """Compare scores against the kitchen's own threshold or false-positive rate instead of the bundle's
        (edge.calibration); logs and returns where the threshold now comes from."""
        as_shipped = replace(self.bundle, threshold=self.bundle_threshold)  # a second call starts from it too
        threshold, source = override.validate().resolve(as_shipped)
        self.bundle = replace(self.bundle, threshold=threshold)
        log.info("threshold %.6g: %s", threshold, source)
        return source

    def _output_shape(self, input_shape: list[int]) -> list[int]:
        """A reconstruction has the input's shape; a feature grid is (1, h, w, D) with D the bank's (Bank.dim)."""
        if self.bank is None:
            return input_shape
        got = [int(v) for v in self._out["shape"]]
        grid = got[1:3] if len(got) == 4 else [-1, -1]
        return [1, *grid, self.bank.dim]

    @staticmethod
    def _check_tensor(where: str, role: str, det: dict, tensor: TensorInfo, want: list[int]) -> None:
        got = [int(v) for v in det["shape"]]  # plain ints: numpy 2 prints np.int32(1) in a list
        if got != want:
            raise UserError(f"{where}: model {role} shape {got} differs from bundle.json {want}")
        if np.dtype(det["dtype"]).name != tensor.dtype:
            raise UserError(
                f"{where}: model {role} dtype {np.dtype(det['dtype']).name} differs from bundle.json {tensor.dtype}"
            )

    def reconstruct(self, img_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(model input x float32 unit, model output float32 unit, inference ms) of a model-sized uint8 image.

        For a kNN bundle the output is the (h, w, D) patch-feature grid rather than a reconstruction.
        """
        with self._lock:
            return self._runner.run(img_u8)

    def score_input(self, img_u8: np.ndarray) -> tuple[float, np.ndarray, float]:
        """(score, anomaly map at the model's resolution, inference ms) of a model-sized uint8 image."""
        b = self.bundle
        if self.bank is None:
            x, out, ms = self.reconstruct(img_u8)
            score, amap = score_reconstruction(x, out, b.score_method, b.score_params)
        else:
            hw = (b.input.height, b.input.width)
            with self._lock:  # the bank's search model is an interpreter too
                out, ms = self._runner.run(img_u8)[1:]
                score, amap = self.bank.score(out, hw, sigma=float(b.score_params.get("sigma", 4.0)))
        return float(score), amap, ms

    def score(self, bgr: np.ndarray) -> ScoreResult:
        """Score a BGR uint8 crop of any size."""
        if not isinstance(bgr, np.ndarray) or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
            raise ValueError(f"expected a BGR image (h, w, 3), got {getattr(bgr, 'shape', type(bgr))}")
        b = self.bundle
        score, residual, ms = self.score_input(resize_to_input(bgr, b.input))
        anomalous = bool(score > b.threshold)
        h, w = bgr.shape[:2]
        heat = cv2.resize(residual / np.float32(b.threshold), (w, h), interpolation=cv2.INTER_LINEAR)
        regions = alert_regions(residual, b.threshold, anomalous, (h, w))
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
