"""The Inception convolutional autoencoder (after the MVTec-Anomaly-Detection reference's inception CAE).

Why these choices: every layer is a TFLite builtin (Conv2D, MaxPool2D, BatchNorm folded into the conv,
LeakyReLU, nearest UpSampling2D, Concatenate, sigmoid), so the int8 conversion needs no Flex ops. Width, depth and
input size are a frozen `CaeConfig` so a run's config.json rebuilds exactly the same network, and cheaper variants
can be compared with the seed on the same data (`CONFIGS`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edge.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaeConfig:
    """Architecture. `filters[i]` is the per-branch width of encoder level i (the block outputs 4x that)."""

    name: str = "seed"
    filters: tuple[int, ...] = (32, 32, 64, 64, 128, 128)
    width: float = 1.0  # multiplier applied to every entry of `filters`
    input_size: int = 128
    channels: int = 3
    l2: float = 1e-6
    leaky_alpha: float = 0.1
    bn_momentum: float = 0.99  # Keras' default, as in the seed; lower it when an epoch is only a few steps

    @property
    def depth(self) -> int:
        return len(self.filters)

    @property
    def level_filters(self) -> tuple[int, ...]:
        return tuple(max(1, int(round(f * self.width))) for f in self.filters)

    def validate(self) -> CaeConfig:
        if self.depth < 1:
            raise UserError("model config: filters must list at least one level")
        if any(f < 1 for f in self.filters) or self.width <= 0:
            raise UserError("model config: filters and width must be positive")
        if self.input_size < 1 or self.input_size % (2**self.depth):
            raise UserError(
                f"--image-size {self.input_size}: must be a positive multiple of 2**depth = {2**self.depth}"
                f" (config {self.name!r} has depth {self.depth})"
            )
        if not 0 <= self.bn_momentum < 1:
            raise UserError(f"--bn-momentum {self.bn_momentum}: must be in [0, 1)")
        if self.channels not in (1, 3):
            raise UserError(f"model config: channels must be 1 or 3, got {self.channels}")
        return self

    def replace(self, **changes) -> CaeConfig:
        return CaeConfig(**{**asdict(self), **changes})

    def to_json(self) -> dict:
        d = asdict(self)
        d["filters"] = list(self.filters)
        d["depth"] = self.depth
        return d

    @classmethod
    def from_json(cls, data: dict) -> CaeConfig:
        known = {f.name for f in fields(cls)}
        try:
            kw = {k: v for k, v in data.items() if k in known}
            kw["filters"] = tuple(int(f) for f in kw.get("filters", cls.filters))
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise UserError(f"model config: invalid ({exc})") from None


CONFIGS: dict[str, CaeConfig] = {
    # The reference configuration: six levels, 32-32-64-64-128-128 filters per branch.
    "seed": CaeConfig(),
    # Same topology at half the width: about a quarter of the multiply-adds.
    "half": CaeConfig(name="half", width=0.5),
    # Quarter width: about a sixteenth of the seed's multiply-adds, for small devices.
    "quarter": CaeConfig(name="quarter", width=0.25),
}
DEFAULT_CONFIG = "seed"  # until measured otherwise (make train evaluate with --config)


def get_config(name: str, input_size: int | None = None, channels: int | None = None) -> CaeConfig:
    if name not in CONFIGS:
        raise UserError(f"--config {name!r}: unknown (choose from {', '.join(CONFIGS)})")
    cfg = CONFIGS[name]
    changes = {}
    if input_size is not None:
        changes["input_size"] = input_size
    if channels is not None:
        changes["channels"] = channels
    return cfg.replace(**changes).validate()


def _inception_block(x, f: int, cfg: CaeConfig, name: str):
    import keras
    from keras import layers

    reg = keras.regularizers.L2(cfg.l2)

    def conv_bn(t, k: int, suffix: str):
        t = layers.Conv2D(f, k, padding="same", kernel_regularizer=reg, name=f"{name}_{suffix}_conv")(t)
        t = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"{name}_{suffix}_bn")(t)
        return layers.LeakyReLU(negative_slope=cfg.leaky_alpha, name=f"{name}_{suffix}_act")(t)

    b1 = conv_bn(x, 1, "1x1")
    b3 = conv_bn(x, 3, "3x3")
    b5 = conv_bn(x, 5, "5x5")
    bp = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    bp = conv_bn(bp, 1, "pool1x1")
    return layers.Concatenate(name=f"{name}_concat")([b1, b3, b5, bp])


PRECISIONS = ("float32", "mixed_bfloat16")


@contextlib.contextmanager
def precision(name: str):
    """Build and train under Keras's `name` dtype policy, then restore float32.

    Why mixed bfloat16: on CPUs with AVX512-BF16 or AMX, oneDNN runs bfloat16 convolutions faster than float32
    (README: training images/s measured side by side); the weights stay float32 (Keras keeps float32 variables
    under a mixed policy), so a run saved with `as_float32` converts and scores like any other. The name is
    checked where the run's configuration is (train.fit.FitConfig).
    """
    import keras

    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def as_float32(model, cfg: CaeConfig):
    """The same weights in a float32 copy of the CAE, so the saved run converts to TFLite and calibrates in the
    precision the device's float reference uses whatever precision trained it."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    with precision("float32"):
        twin = build_cae(cfg)
    twin.set_weights(model.get_weights())
    return twin


def build_cae(cfg: CaeConfig):
    """The autoencoder: (N, S, S, C) float in [0, 1] -> same shape in [0, 1]."""
    import keras
    from keras import layers

    cfg.validate()
    inp = keras.Input((cfg.input_size, cfg.input_size, cfg.channels), name="image")
    x = inp
    for i, f in enumerate(cfg.level_filters):
        x = _inception_block(x, f, cfg, f"enc{i}")
        x = layers.MaxPooling2D(2, name=f"enc{i}_down")(x)
    for i, f in enumerate(reversed(cfg.level_filters)):
        x = _inception_block(x, f, cfg, f"dec{i}")
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{i}_up")(x)
    x = layers.Conv2D(
        cfg.channels, 3, padding="same", kernel_regularizer=keras.regularizers.L2(cfg.l2), name="out_conv"
    )(x)
    x = layers.BatchNormalization(momentum=cfg.bn_momentum, name="out_bn")(x)
    out = layers.Activation("sigmoid", name="reconstruction", dtype="float32")(x)
    return keras.Model(inp, out, name=f"inception_cae_{cfg.name}")


def count_macs(model_or_cfg) -> int:
    """Multiply-adds per image of the convolution (incl. depthwise) and dense layers, from their output shapes.

    Pooling, BatchNorm (folded at conversion), activations and upsampling are not counted: they are a few
    percent of the work and no multiply-add bound applies to them.
    """
    model = build_cae(model_or_cfg) if isinstance(model_or_cfg, CaeConfig) else model_or_cfg
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            total += int(h) * int(w) * kh * kw * (int(c_in) // layer.groups) * int(c_out)
        elif isinstance(layer, layers.DepthwiseConv2D):  # not a Conv2D subclass in Keras 3
            _, h, w, c_out = layer.output.shape  # c_in * depth_multiplier; one kh x kw filter per channel
            kh, kw = layer.kernel_size
            total += int(h) * int(w) * kh * kw * int(c_out)
        elif isinstance(layer, layers.Dense):
            total += int(layer.input.shape[-1]) * int(layer.units)
    return total


def load_run(run_dir: str | Path):
    """(best Keras model, config.json dict) of a training run; one-line UserError when missing or unreadable."""
    config, model_path = read_run_config(run_dir)
    return load_model(model_path), config


def load_model(model_path: Path):
    """The Keras model of a run (read_run_config gives the path); one-line UserError when it does not load."""
    import keras

    try:
        return keras.saving.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a corrupt zip / wrong file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{model_path}: cannot load the model ({msg})") from None


def read_run_config(run_dir: str | Path) -> tuple[dict, Path]:
    """(config.json dict, model path) of a run folder, checked without Keras, so a bad run folder is refused
    before TensorFlow loads (and prints its start-up noise next to the one-line error)."""
    run = Path(run_dir)
    cfg_path = run / "config.json"
    model_path = run / "model.keras"
    if not run.is_dir():
        raise UserError(f"{run}: run folder not found")
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: missing (not a training run folder?)")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{cfg_path}: unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"{cfg_path}: not a JSON object")
    if not model_path.is_file():
        raise UserError(f"{model_path}: missing (training did not save a checkpoint)")
    return config, model_path
