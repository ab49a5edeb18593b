"""edge.scoring: the residual-map scores the device and training share."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from edge import scoring
from edge.errors import UserError
from tests.conftest import ROOT


def _smooth(rng, size=32, channels=3):
    img = rng.random((size // 4, size // 4, channels)).astype(np.float32)
    return (
        cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1).reshape(size, size, channels)
    )


def test_identical_images_score_zero_for_every_method():
    x = _smooth(np.random.default_rng(0))
    for method in scoring.METHODS:
        score, m = scoring.score_reconstruction(x, x.copy(), method)
        assert score == pytest.approx(0.0, abs=1e-5), method
        assert m.shape == (32, 32) and m.dtype == np.float32
        assert np.abs(m).max() < 1e-4, method


def test_shapes_grey_and_batch_match_single():
    rng = np.random.default_rng(1)
    xs = np.stack([_smooth(rng, 24, 1) for _ in range(3)])
    rs = np.clip(xs + rng.normal(0, 0.05, xs.shape).astype(np.float32), 0, 1)
    for method in scoring.METHODS:
        scores, maps = scoring.score_batch(xs, rs, method)
        assert scores.shape == (3,) and maps.shape == (3, 24, 24)
        s1, m1 = scoring.score_reconstruction(xs[1], rs[1], method)
        assert scores[1] == pytest.approx(s1)
        np.testing.assert_allclose(maps[1], m1)
    # a 2-D grey image is accepted as (H, W, 1)
    s2d, _ = scoring.score_reconstruction(xs[0, ..., 0], rs[0, ..., 0], "ssim")
    assert s2d == pytest.approx(scoring.score_reconstruction(xs[0], rs[0], "ssim")[0])


def test_mse_is_mean_squared_error():
    x = np.zeros((8, 8, 3), np.float32)
    r = np.zeros((8, 8, 3), np.float32)
    r[0, 0, 0] = 0.6  # one channel of one pixel
    score, m = scoring.score_reconstruction(x, r, "mse")
    assert score == pytest.approx(0.36 / (8 * 8 * 3))
    assert m[0, 0] == pytest.approx(0.36 / 3) and m.sum() == pytest.approx(0.12)


def test_ssim_matches_tensorflow_reference():
    """Same Gaussian 11x11, sigma 1.5 window as tf.image.ssim; TF averages over the valid region only."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(2)
    x = _smooth(rng, 48)
    r = np.clip(x + rng.normal(0, 0.08, x.shape).astype(np.float32), 0, 1)
    _, m = scoring.score_reconstruction(x, r, "ssim", {"channels": "mean"})
    ours = 1.0 - float(m[5:-5, 5:-5].mean())
    ref = float(tf.image.ssim(x[None], r[None], max_val=1.0)[0])
    assert ours == pytest.approx(ref, abs=2e-3)


def test_local_defect_stands_out_more_with_local_than_mse():
    """A 4x4 defect on a 64x64 image: `local` separates it from the good spread far better than `mse`."""
    rng = np.random.default_rng(3)

    def pair(defect: bool):
        x = _smooth(rng, 64)
        recon = np.clip(x + rng.normal(0, 0.03, x.shape).astype(np.float32), 0, 1)
        if defect:
            x = x.copy()
            x[30:34, 30:34] = 1.0  # bright square the autoencoder did not reconstruct
        return x, recon

    def z(method):
        good = np.array([scoring.score_reconstruction(*pair(False), method)[0] for _ in range(30)])
        bad = np.array([scoring.score_reconstruction(*pair(True), method)[0] for _ in range(10)])
        return (bad.min() - good.mean()) / good.std()

    z_local, z_mse = z("local"), z("mse")
    assert z_local > 3 * z_mse and z_local > 5, (z_local, z_mse)


def test_local_reduce_max_and_params_resolution():
    x = np.zeros((16, 16, 3), np.float32)
    r = x.copy()
    r[8, 8] = 1.0
    s_max, m = scoring.score_reconstruction(x, r, "local", {"reduce": "max", "sigma": 0})
    assert s_max == pytest.approx(1.0) and m.max() == pytest.approx(1.0)
    s_top, _ = scoring.score_reconstruction(x, r, "local", {"sigma": 0, "topk": 2 / 256})
    assert s_top == pytest.approx(0.5)  # mean of the top 2 pixels: 1 and 0
    p = scoring.resolve_params("local", {"topk": "0.05"})
    assert p == {"sigma": 2.0, "reduce": "topk", "topk": 0.05}


@pytest.mark.parametrize(
    ("method", "params", "needle"),
    [
        ("nope", None, "unknown"),
        ("local", {"bogus": 1}, "bogus"),
        ("local", {"topk": 0}, "topk"),
        ("ssim", {"window": 10}, "window"),
        ("ssim", {"channels": "rgb"}, "channels"),
    ],
)
def test_bad_method_or_params_are_user_errors(method, params, needle):
    with pytest.raises(UserError, match=needle):
        scoring.score_reconstruction(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), method, params)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="shapes differ"):
        scoring.score_reconstruction(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)), "mse")


def test_edge_scoring_never_imports_tensorflow():
    code = "import sys, edge.scoring; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
