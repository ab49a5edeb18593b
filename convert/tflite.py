"""Keras -> TFLite: SavedModel export with a fixed batch of 1, then full-integer (or float) conversion.

Why this route (DESIGN §7, measured here): `model.export(format="tf_saved_model")` with a fixed [1, H, W, C]
input signature and `TFLiteConverter.from_saved_model` is the one path that converts nearest UpSampling2D, keeps
the weights and yields builtin ops only. `tf.saved_model.save` / concrete functions silently dropped the weights;
`format="litert"` embedded Flex ops no interpreter here runs.

Why uint8 input and output for int8: the camera's bytes go straight into the model (the input scale is pinned
to 1/255, zero point 0, see `representative_images`), and the dequantize ops of a float interface disappear.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.search import SEARCHES
from edge.errors import UserError

log = logging.getLogger(__name__)

QUANTS = ("int8", "float16", "float32")
# `--quant auto` (the default): int8, and this instead when int8 stays over the parity tolerance (bundle_writer)
AUTO = "auto"
FALLBACK = "float16"
IO_TYPES = ("uint8", "float32")
DEFAULT_REPRESENTATIVE = 200


@dataclass(frozen=True)
class ConvertOptions:
    """How one conversion was made; stored in bundle.json `quantization` so a bundle says what it is."""

    quant: str = "int8"
    io: str = "uint8"  # int8 only: the model's input/output tensor type ("float32" keeps float I/O)
    representative: int = DEFAULT_REPRESENTATIVE  # int8 only: calibration images
    augment: bool = True  # int8 only: light shift/turn/light changes of the calibration images
    seed: int = 0
    # int8 only: float32 output tensor, dequantized inside the model (kNN feature grids; see bundle_writer)
    float_output: bool = False
    # kNN bundles: the fine bank's search as search.tflite ("int8", "float32") or in numpy on the device
    # ("numpy"); convert.search says why
    search: str = "int8"
    # int8 only: what to ship instead when every int8 attempt stays over the parity tolerance (None: int8 anyway)
    fallback: str | None = None

    @classmethod
    def requested(cls, quant: str, **kw) -> ConvertOptions:
        """The options of `--quant QUANT`; `auto` is int8 with the float16 fallback."""
        if quant == AUTO:
            return cls(quant="int8", fallback=FALLBACK, **kw)
        return cls(quant=quant, **kw)

    def validate(self) -> ConvertOptions:
        if self.quant not in QUANTS:
            raise UserError(f"--quant {self.quant!r}: choose from {', '.join((AUTO, *QUANTS))}")
        if self.fallback not in (None, FALLBACK) or (self.fallback and self.quant != "int8"):
            raise UserError(f"fallback {self.fallback!r}: only int8 falls back, to {FALLBACK}")
        if self.io not in IO_TYPES:
            raise UserError(f"--io {self.io!r}: choose from {', '.join(IO_TYPES)}")
        if self.search not in SEARCHES:
            raise UserError(f"--search {self.search!r}: choose from {', '.join(SEARCHES)}")
        if self.representative < 1:
            raise UserError(f"--representative {self.representative}: must be at least 1")
        return self

    def to_json(self) -> dict:
        out = {"type": self.quant}
        if self.quant == "int8":
            out.update(
                scheme="full-integer, per-channel weights, builtin int8 ops",
                io=self.io,
                representative_images=self.representative,
                representative_augment=self.augment,
                seed=self.seed,
            )
            if self.float_output:
                out["output"] = "float32"
        elif self.quant == "float16":
            out["scheme"] = "float16 weights, float32 compute"
        return out


def representative_images(train_x: np.ndarray, n: int, seed: int = 0, augment: bool = True) -> np.ndarray:
    """Up to `n` calibration images (float32 unit range) drawn from the training images, lightly augmented.

    Why augmented: activation ranges must cover the shifted and re-lit plates the device will see, not just the
    training set's exact pixels. Why one pixel is pinned to 0 and one to 1: the input tensor's quantization is
    the observed min/max, and pinning it to [0, 1] makes scale = 1/255, zero point 0 — camera bytes go in as-is.
    """
    if len(train_x) == 0:
        raise UserError("conversion: no training images for the representative dataset")
    from train.augment import AugmentConfig, augment_image

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(train_x))
    if n > len(train_x):
        idx = np.concatenate([idx, rng.integers(0, len(train_x), n - len(train_x))])
    idx = idx[:n]
    cfg = AugmentConfig()
    out = []
    for k, i in enumerate(idx):
        img = train_x[i].astype(np.float32)
        # the first pass over the set is unchanged; repeats (and all when augment) are perturbed
        if augment and (k >= len(train_x) or k % 2 == 1):
            img = augment_image(img, rng, cfg)
        out.append(img)
    rep = np.stack(out).astype(np.float32)
    rep[0, 0, 0, :] = 0.0
    rep[0, 0, 1, :] = 1.0
    return rep


def export_saved_model(model, out_dir: Path) -> Path:
    """SavedModel with a fixed batch-1 float32 input signature (the only route that converts correctly here)."""
    import tensorflow as tf

    shape = [1, *(int(d) for d in model.input_shape[1:])]
    model.export(
        str(out_dir),
        format="tf_saved_model",
        input_signature=[tf.TensorSpec(shape, tf.float32)],
        verbose=False,
    )
    return out_dir


def _rep_gen(rep: np.ndarray) -> Iterator[list[np.ndarray]]:
    for img in rep:
        yield [img[None].astype(np.float32)]


def convert_model(model, opts: ConvertOptions, representative: np.ndarray | None = None) -> bytes:
    """The .tflite flatbuffer of `model` converted as `opts` says."""
    import tensorflow as tf

    opts.validate()
    with tempfile.TemporaryDirectory(prefix="dishwatch-export-") as tmp:
        saved = export_saved_model(model, Path(tmp) / "saved")
        conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if opts.quant == "float16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        elif opts.quant == "int8":
            if representative is None or not len(representative):
                raise UserError("conversion: int8 needs representative images")
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: _rep_gen(representative)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = tf.uint8 if opts.io == "uint8" else tf.float32
            conv.inference_input_type = io_type
            conv.inference_output_type = tf.float32 if opts.float_output else io_type
        try:
            flat = conv.convert()
        except Exception as exc:  # the converter raises ConverterError/ValueError/RuntimeError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"conversion to {opts.quant} failed: {first}") from None
    log.info("converted %s: %.1f kB", opts.quant, len(flat) / 1024)
    return flat
