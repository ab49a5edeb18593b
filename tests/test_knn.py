"""Feature-distance scoring: kNN against brute force, coreset coverage, bank integrity, and separation."""

import numpy as np
import pytest

from edge.errors import UserError
from edge.knn import Bank, load_bank, nn_distances, save_bank
from train.coreset import covering_radius, greedy_coreset


def test_nn_distances_match_brute_force():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(200, 24)).astype(np.float32)
    b = rng.normal(size=(999, 24)).astype(np.float32)
    brute = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nn_distances(q, b, chunk=128), brute, rtol=1e-4, atol=1e-4)
    # A query that is in the bank is at distance ~0.
    assert nn_distances(b[:3], b)[0] == pytest.approx(0.0, abs=1e-2)  # float32 cancellation


def test_coreset_size_and_coverage_beat_random():
    rng = np.random.default_rng(2)
    # Clustered data: a random subset misses small clusters, the greedy k-center does not.
    centers = rng.normal(scale=10, size=(40, 16))
    sizes = rng.integers(5, 200, size=40)
    x = np.concatenate([c + rng.normal(size=(s, 16)) for c, s in zip(centers, sizes, strict=True)]).astype(
        np.float32
    )
    kept = greedy_coreset(x, 60, seed=0, project_dim=0)
    assert len(kept) == 60 and len(set(kept.tolist())) == 60
    greedy_r = covering_radius(x, kept)
    random_r = min(covering_radius(x, rng.choice(len(x), 60, replace=False)) for _ in range(5))
    assert greedy_r < random_r
    # The k-center guarantee: no point is further from the coreset than the last pick's distance (<= 2x optimum);
    # every cluster has at least one representative.
    nearest_center = np.argmin(((x[kept][:, None] - centers[None]) ** 2).sum(-1), axis=1)
    assert len(set(nearest_center.tolist())) == 40


def test_coreset_with_projection_still_covers():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 300)).astype(np.float32)
    kept = greedy_coreset(x, 100, seed=0, project_dim=64)
    assert len(set(kept.tolist())) == 100
    assert covering_radius(x, kept) < covering_radius(x, rng.choice(len(x), 100, replace=False)) * 1.05


def _bank(rng):
    return Bank(
        patches=rng.normal(size=(50, 8)).astype(np.float32),
        images=rng.normal(size=(5, 8)).astype(np.float32),
        patch_scale=2.0,
        image_scale=3.0,
    )


def test_bank_round_trip_and_hash_refusal(tmp_path):
    bank = _bank(np.random.default_rng(4))
    meta = save_bank(tmp_path, bank)
    back = load_bank(tmp_path, meta)
    np.testing.assert_allclose(back.patches, bank.patches, atol=1e-2)  # stored as float16
    assert back.patch_scale == 2.0 and back.image_scale == 3.0
    with pytest.raises(UserError, match="sha256"):
        load_bank(tmp_path, {**meta, "sha256": "0" * 64})
    (tmp_path / "bank.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="bank.npz"):
        load_bank(tmp_path, meta)


def test_bank_score_flags_an_outlier_patch_and_maps_it():
    rng = np.random.default_rng(5)
    good = rng.normal(size=(400, 8)).astype(np.float32)
    bank = Bank(patches=good, images=good[:0], global_weight=0.0)
    grid = good[:64].reshape(8, 8, 8).copy()
    ok_score, _ = bank.score(grid, (32, 32), sigma=0)
    grid[2, 5] += 25.0
    bad_score, amap = bank.score(grid, (32, 32), sigma=0)
    assert ok_score == pytest.approx(0.0, abs=1e-2)
    assert bad_score > 20
    y, x = np.unravel_index(np.argmax(amap), amap.shape)
    assert 8 <= y < 12 and 20 <= x < 24  # patch (2, 5) of an 8x8 grid on a 32x32 map
