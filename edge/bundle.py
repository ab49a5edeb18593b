"""The bundle format (DESIGN §4): BUNDLE_DIR/model.tflite + BUNDLE_DIR/bundle.json. One place reads, checks and writes it.

Why the device verifies before it trusts: a threshold only means something for the exact model it was calibrated
on. A copied-over model.tflite (hash mismatch), a bundle from a newer dishwatch (unknown `format`) or a truncated
file would silently give meaningless verdicts, so each is refused with one line naming the bundle and the reason.

bundle.json (format 2; format 1 is still read):
  format        2 (2 added the kNN bank's `distance` and `peak`: a format-1 reader would ignore them and compare
                the wrong number with the threshold, so it refuses the bundle instead)
  name          bundle name (default: the output folder's name)
  created       ISO 8601 UTC
  input         InputSpec fields + dtype ("uint8" | "float32") + quantization ({scale, zero_point} | null)
  output        dtype + quantization of the reconstruction (or, for kNN methods, feature-grid) tensor
  quantization  {type: int8|float16|float32, ...how it was made}
  score         {method, params}            (edge.scoring; or a kNN method: params {bank, sigma}, edge.knn)
  threshold     score > threshold => anomaly (recalibrated on this very .tflite's scores)
  calibration   how the threshold was chosen, on how many held-out good images (train.calibrate)
  metrics       the evaluate output of this very .tflite on the test split
  parity        this .tflite vs the float Keras model on the test split
  sha256        of model.tflite
  training      data fingerprint, epochs, library versions, run config
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import UserError
from edge.preprocess import InputSpec
from edge.scoring import resolve_params

log = logging.getLogger(__name__)

FORMAT = 2  # written
READABLE_FORMATS = (1, 2)  # read: format 1 is format 2 with every kNN bank Euclidean, peak "patch"
MODEL_FILE = "model.tflite"
JSON_FILE = "bundle.json"
IO_DTYPES = ("uint8", "int8", "float32")
# feature-distance methods: the model outputs a patch-feature grid, scored against bank.npz (edge.knn)
KNN_METHODS = ("effnet-knn", "cae-knn")
REQUIRED = ("format", "name", "created", "input", "output", "quantization", "score", "threshold", "sha256")


@dataclass(frozen=True)
class TensorInfo:
    """dtype and affine quantization of the model's input or output tensor (scale 0 = not quantized)."""

    dtype: str = "float32"
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.dtype != "float32"

    def to_json(self) -> dict:
        q = {"scale": self.scale, "zero_point": self.zero_point} if self.quantized else None
        return {"dtype": self.dtype, "quantization": q}


@dataclass(frozen=True)
class BundleInfo:
    """What a verified bundle says; `raw` is the whole bundle.json for tools that want more."""

    path: Path
    name: str
    created: str
    sha256: str
    threshold: float
    input: InputSpec
    input_tensor: TensorInfo
    output_tensor: TensorInfo
    quantization: str
    score_method: str
    score_params: dict
    metrics: dict | None = None
    calibration: dict | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checked(path: Path, sha256: object, what: str) -> bytes:
    """The bytes of a file bundle.json names by hash (bank.npz, search.tflite); an unreadable file or another
    file's bytes is a one-line UserError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise UserError(f"{path}: sha256 {digest[:12]}… does not match bundle.json ({str(sha256)[:12]}…)")
    return data


def _tensor(data: object, where: str) -> TensorInfo:
    if not isinstance(data, dict) or data.get("dtype") not in IO_DTYPES:
        raise UserError(f"{where}: `dtype` must be one of {', '.join(IO_DTYPES)}")
    dtype = str(data["dtype"])
    if dtype == "float32":
        return TensorInfo()
    q = data.get("quantization")
    try:
        scale, zp = float(q["scale"]), int(q["zero_point"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: a {dtype} tensor needs `quantization` {{scale, zero_point}}") from None
    if not scale > 0:
        raise UserError(f"{where}: quantization scale must be positive, got {scale}")
    return TensorInfo(dtype, scale, zp)


def resolve_score_params(method: str, params: dict | None) -> dict:
    """Validated params of any bundle score method; a kNN bundle must name its bank and the hash to check."""
    if method not in KNN_METHODS:
        return resolve_params(method, params)
    p = dict(params or {})
    bank = p.get("bank")
    if not isinstance(bank, dict) or not isinstance(bank.get("sha256"), str) or "file" not in bank:
        raise UserError(f"score params for {method!r}: `bank` needs `file` and `sha256` (edge.knn.save_bank)")
    try:
        p["sigma"] = float(p.get("sigma", 4.0))
    except (TypeError, ValueError):
        raise UserError(f"score params for {method!r}: `sigma` must be a number") from None
    return p


def parse_bundle_json(data: object, bundle_dir: str | Path) -> BundleInfo:
    """Validate a bundle.json object (without touching model.tflite); every error names the bundle and field."""
    where = f"bundle {bundle_dir}"
    if not isinstance(data, dict):
        raise UserError(f"{where}: bundle.json is not a JSON object")
    fmt = data.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise UserError(f"{where}: bundle.json `format` must be an integer, got {fmt!r}")
    if fmt not in READABLE_FORMATS:
        raise UserError(
            f"{where}: unknown bundle format version {fmt} "
            f"(this dishwatch reads formats {', '.join(map(str, READABLE_FORMATS))})"
        )
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(f"{where}: bundle.json is missing {', '.join(missing)}")
    try:
        spec = InputSpec.from_json(data["input"])
    except UserError as exc:
        raise UserError(f"{where}: bundle.json {exc}") from None
    score = data["score"]
    if not isinstance(score, dict) or "method" not in score:
        raise UserError(f"{where}: bundle.json `score` needs a `method`")
    try:
        params = resolve_score_params(str(score["method"]), score.get("params") or {})
    except UserError as exc:
        raise UserError(f"{where}: bundle.json {exc}") from None
    threshold = data["threshold"]
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not threshold > 0:
        raise UserError(f"{where}: bundle.json `threshold` must be a positive number, got {threshold!r}")
    sha = data["sha256"]
    if not isinstance(sha, str) or len(sha) != 64:
        raise UserError(f"{where}: bundle.json `sha256` must be 64 hex digits")
    quant = data["quantization"]
    qtype = quant.get("type") if isinstance(quant, dict) else quant
    return BundleInfo(
        path=Path(bundle_dir),
        name=str(data["name"]),
        created=str(data["created"]),
        sha256=sha.lower(),
        threshold=float(threshold),
        input=spec,
        input_tensor=_tensor(data["input"], f"{where}: bundle.json `input`"),
        output_tensor=_tensor(data["output"], f"{where}: bundle.json `output`"),
        quantization=str(qtype),
        score_method=str(score["method"]),
        score_params=params,
        metrics=data.get("metrics"),
        calibration=data.get("calibration"),
        raw=data,
    )


def read_bundle(bundle_dir: str | Path, verify_hash: bool = True) -> BundleInfo:
    """Read and verify a bundle folder: files present, bundle.json valid and known, model.tflite's hash matches."""
    d = Path(bundle_dir)
    where = f"bundle {d}"
    if not d.is_dir():
        raise UserError(f"{where}: folder not found")
    for name in (JSON_FILE, MODEL_FILE):
        if not (d / name).is_file():
            raise UserError(f"{where}: missing {name}")
    try:
        data = json.loads((d / JSON_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{where}: bundle.json is unreadable ({exc})") from None
    info = parse_bundle_json(data, d)
    if verify_hash:
        actual = sha256_file(d / MODEL_FILE)
        if actual != info.sha256:
            raise UserError(
                f"{where}: model.tflite hash mismatch (sha256 {actual[:12]}..., bundle.json says"
                f" {info.sha256[:12]}...); the model was changed or replaced after conversion"
            )
    log.debug("bundle %s verified (sha256 %s)", d, info.sha256[:12])
    return info


def write_bundle_json(bundle_dir: str | Path, data: dict) -> BundleInfo:
    """Validate then atomically write bundle.json, so a reader never sees half a file or an invalid one."""
    d = Path(bundle_dir)
    data = {"format": FORMAT, **data}
    info = parse_bundle_json(data, d)
    tmp = d / (JSON_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, d / JSON_FILE)
    return info
