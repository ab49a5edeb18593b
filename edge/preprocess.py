"""Image reading and model-input preprocessing, shared by training, calibration and the device.

Why one place: a model is only as good as the agreement between how its training images and its device crops
were resized, colour-ordered and scaled. train/ and convert/ import these functions; nothing re-implements them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class InputSpec:
    """What the model expects; stored in bundle.json `input`."""

    height: int = 128
    width: int = 128
    channels: int = 3
    colour_order: str = "RGB"  # order of the channels the model sees
    scaling: str = "unit"  # "unit": float in [0, 1]; the int8 model takes the same image as uint8 0..255

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> InputSpec:
        try:
            spec = cls(
                height=int(data["height"]),
                width=int(data["width"]),
                channels=int(data.get("channels", 3)),
                colour_order=str(data.get("colour_order", "RGB")),
                scaling=str(data.get("scaling", "unit")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"input spec: missing or invalid field ({exc})") from None
        if spec.channels not in (1, 3) or spec.colour_order not in ("RGB", "BGR", "GRAY"):
            raise UserError(
                f"input spec: unsupported channels/colour_order {spec.channels}/{spec.colour_order}"
            )
        if spec.scaling != "unit":
            raise UserError(f"input spec: unsupported scaling {spec.scaling!r}")
        return spec


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 (H, W, 3). Raises UserError naming the file when it cannot be decoded."""
    p = Path(path)
    try:
        buf = np.fromfile(str(p), dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if buf.size == 0:
        raise UserError(f"{p}: empty file")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"{p}: not a readable image")
    return to_bgr(img)


def to_bgr(img: np.ndarray) -> np.ndarray:
    """Normalise grey, BGRA and 16-bit images to BGR uint8."""
    if img.dtype == np.uint16:
        img = (img / 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


def resize_to_input(bgr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize a BGR crop and reorder its channels for the model: uint8 (H, W, C)."""
    interp = cv2.INTER_AREA if bgr.shape[0] >= spec.height else cv2.INTER_LINEAR
    img = cv2.resize(bgr, (spec.width, spec.height), interpolation=interp)
    if spec.colour_order == "RGB":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif spec.colour_order == "GRAY":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]
    return img


def to_model_float(img_u8: np.ndarray) -> np.ndarray:
    """uint8 model-ordered image -> float32 in [0, 1] (the `unit` scaling)."""
    return img_u8.astype(np.float32) * (1.0 / 255.0)


def preprocess(bgr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """BGR uint8 crop of any size -> float32 (H, W, C) in [0, 1], as the model was trained on."""
    return to_model_float(resize_to_input(bgr, spec))
