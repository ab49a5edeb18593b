"""Feature-distance scoring: kNN against brute force, coreset coverage, bank integrity, and separation."""

from dataclasses import replace

import numpy as np
import pytest

from edge.errors import UserError
from edge.knn import Bank, load_bank, nn_distances, row_spacing, save_bank
from train.coreset import covering_radius, greedy_coreset


def test_nn_distances_match_brute_force():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(200, 24)).astype(np.float32)
    b = rng.normal(size=(999, 24)).astype(np.float32)
    brute = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nn_distances(q, b, chunk=128), brute, rtol=1e-4, atol=1e-4)
    # A query that is in the bank is at distance ~0.
    assert nn_distances(b[:3], b)[0] == pytest.approx(0.0, abs=1e-2)  # float32 cancellation


def test_relative_distance_and_row_spacing_match_brute_force():
    rng = np.random.default_rng(11)
    q = rng.normal(size=(150, 12)).astype(np.float32)
    b = rng.normal(size=(700, 12)).astype(np.float32)
    pair = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    self_pair = np.sqrt(((b[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(self_pair, np.inf)
    spacing = self_pair.min(1)  # random rows: none near the floor
    np.testing.assert_allclose(row_spacing(b), spacing, rtol=1e-4, atol=1e-4)
    expected = (pair / spacing[None, :]).min(1)
    np.testing.assert_allclose(nn_distances(q, b, chunk=128, row_scale=spacing), expected, rtol=1e-4)
    # Duplicated rows (int8 features can round two patches alike) are floored, not a division by zero.
    dup = np.concatenate([b, b[:5]])
    r = row_spacing(dup)
    assert np.all(np.isfinite(r)) and r.min() == pytest.approx(0.25 * np.median(r), rel=1e-5)
    assert row_spacing(b[:1]).tolist() == [1.0]


def test_relative_distance_judges_dense_and_sparse_good_texture_alike():
    """The same absolute step is ordinary beside a sparse kind of good patch and unusual beside a dense one."""
    rng = np.random.default_rng(12)
    dense = rng.normal(scale=0.1, size=(300, 4)).astype(
        np.float32
    )  # a plain rim: many near-identical patches
    sparse = (rng.normal(scale=2.0, size=(300, 4)) + 20).astype(np.float32)  # a garnish: varied texture
    rows = np.concatenate([dense, sparse])
    step = np.array([0.0, 0.0, 0.0, 1.0], np.float32)
    q = np.stack([dense[0] + step, sparse[0] + step])
    plain = nn_distances(q, rows)
    relative = nn_distances(q, rows, row_scale=row_spacing(rows))
    assert plain[0] == pytest.approx(plain[1], rel=0.5)  # Euclidean: about the same step away from good
    assert relative[0] > 3 * relative[1]  # relative: far outside the dense cluster, inside the sparse one


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


def test_relative_bank_round_trip_and_refusals(tmp_path):
    bank = _bank(np.random.default_rng(13))
    relative = replace(bank, patch_spacing=row_spacing(bank.patches))
    meta = save_bank(tmp_path, relative)
    (tmp_path / "plain").mkdir()
    assert meta["distance"] == "relative" and save_bank(tmp_path / "plain", bank)["distance"] == "euclidean"
    back = load_bank(tmp_path, meta)
    np.testing.assert_array_equal(back.patch_spacing, relative.patch_spacing)  # float32 on disk
    q = np.random.default_rng(14).normal(size=(3, 3, 8)).astype(np.float32)
    assert back.score(q, (6, 6))[0] == pytest.approx(relative.score(q, (6, 6))[0], rel=1e-2)
    assert back.score(q, (6, 6))[0] != pytest.approx(
        load_bank(tmp_path, {**meta, "distance": "euclidean"}).score(q, (6, 6))[0], rel=1e-2
    )
    with pytest.raises(UserError, match="`distance` 'cosine'"):
        load_bank(tmp_path, {**meta, "distance": "cosine"})
    plain_meta = save_bank(tmp_path, bank)  # a Euclidean bank.npz has no spacings to divide by
    with pytest.raises(UserError, match="not a memory bank"):
        load_bank(tmp_path, {**plain_meta, "distance": "relative"})
    broken = replace(relative, patch_spacing=np.zeros(len(bank.patches), np.float32))
    with pytest.raises(UserError, match="patch_spacing"):
        load_bank(tmp_path, save_bank(tmp_path, broken))


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


def test_score_is_the_peak_of_the_anomaly_map_and_old_bundles_keep_the_patch_peak(tmp_path):
    """The number compared with the threshold is the top of the heat map; a format-1 bank meta means "patch"."""
    rng = np.random.default_rng(15)
    good = rng.normal(size=(400, 8)).astype(np.float32)
    grid = good[:64].reshape(8, 8, 8).copy()
    grid[3, 3] += 6.0  # one odd patch: blurring spreads it, so the map's peak is below the raw patch's score
    bank = Bank(patches=good[64:], images=good[:0], global_weight=0.0)
    score, amap = bank.score(grid, (64, 64), sigma=8.0)
    assert score == pytest.approx(float(amap.max()))
    raw = nn_distances(grid.reshape(-1, 8), good[64:]).max()
    patch_score, same_map = Bank(patches=good[64:], images=good[:0], global_weight=0.0, peak="patch").score(
        grid, (64, 64), sigma=8.0
    )
    assert patch_score == pytest.approx(raw) and score < raw
    np.testing.assert_array_equal(amap, same_map)
    meta = save_bank(tmp_path, bank)
    assert meta["peak"] == "map" and load_bank(tmp_path, meta).peak == "map"
    old = {k: v for k, v in meta.items() if k not in ("peak", "distance")}  # what format 1 wrote
    assert load_bank(tmp_path, old).peak == "patch"
    with pytest.raises(UserError, match="`peak` 'mean'"):
        load_bank(tmp_path, {**meta, "peak": "mean"})


def test_held_out_train_scores_drop_only_the_image_s_own_rows():
    from train.features import held_out_train_scores

    rng = np.random.default_rng(6)
    # Images 0 and 1 are near-copies (two photos of one dish); image 2 is unlike anything else.
    base = rng.normal(size=(4, 4, 8)).astype(np.float32)
    feats = np.stack([base, base + 0.01, rng.normal(size=(4, 4, 8)).astype(np.float32) + 6.0])
    rows = feats.reshape(-1, 8)
    keep = np.arange(len(rows))  # every patch kept: image i's rows are i*16 .. i*16+15
    # peak="patch": the largest patch distance, so the brute force below is a plain nearest-neighbour search
    bank = Bank(patches=rows[keep], images=feats.reshape(3, -1, 8).mean(1), global_weight=0.0, peak="patch")
    held = held_out_train_scores(bank, feats, keep, (8, 8), sigma=0)
    # Brute force: each image against the rows of the other images only.
    for i in range(3):
        others = np.delete(rows, np.s_[i * 16 : (i + 1) * 16], axis=0)
        expected = nn_distances(feats[i].reshape(-1, 8), others).max()
        assert held[i] == pytest.approx(expected, rel=1e-4)
    assert held[0] < 0.1 and held[1] < 0.1  # its twin stands in for it
    assert held[2] > 5  # nothing else resembles it: a held-out score, not the 0 of scoring it against itself
    assert bank.score(feats[2], (8, 8), sigma=0)[0] == pytest.approx(0.0, abs=1e-2)
    # A relative bank drops the same rows together with their spacings.
    spacing = np.arange(1.0, len(rows) + 1, dtype=np.float32)
    relative = Bank(patches=rows, images=bank.images, global_weight=0.0, patch_spacing=spacing, peak="patch")
    held_rel = held_out_train_scores(relative, feats, keep, (8, 8), sigma=0)
    for i in range(3):
        mine = np.s_[i * 16 : (i + 1) * 16]
        expected = nn_distances(
            feats[i].reshape(-1, 8), np.delete(rows, mine, axis=0), row_scale=np.delete(spacing, mine)
        ).max()
        assert held_rel[i] == pytest.approx(expected, rel=1e-4)


def test_bank_views_are_deterministic_copies_after_the_originals():
    from train.features import BankRecipe, bank_views, coreset_keep

    rng = np.random.default_rng(16)
    images = rng.random((3, 32, 32, 3), dtype=np.float32)
    recipe = BankRecipe(augment=2, seed=5)
    views, source = bank_views(images, recipe)
    assert views.shape == (9, 32, 32, 3) and views.dtype == np.float32
    assert source.tolist() == [0, 1, 2, 0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(views[:3], images)  # view i < n is image i
    assert all(not np.allclose(views[3 + k], images[source[3 + k]]) for k in range(6))  # each copy moved
    assert views.min() >= 0.0 and views.max() <= 1.0  # uint8-safe for the int8 model in convert
    again, _ = bank_views(images, recipe)
    np.testing.assert_array_equal(again, views)  # convert makes the same copies as fit
    assert bank_views(images, BankRecipe())[0] is images
    # The coreset fraction is of the photos' own patches: copies enlarge the pool, not the bank.
    feats = rng.normal(size=(9, 8, 8, 4)).astype(np.float32)
    frac = BankRecipe(coreset_fraction=0.5, min_patches=1, augment=2)
    assert len(coreset_keep(feats, frac)) == round(0.5 * 3 * 64)


def test_held_out_scores_drop_the_rows_of_an_image_s_augmented_copies():
    from train.features import held_out_train_scores

    rng = np.random.default_rng(17)
    feats = rng.normal(size=(2, 4, 4, 8)).astype(np.float32) + np.array([0.0, 9.0])[:, None, None, None]
    views = np.concatenate([feats, feats + 0.01])  # a copy of each image, nearly identical to it
    source = np.array([0, 1, 0, 1])
    rows = views.reshape(-1, 8)
    keep = np.arange(len(rows))
    bank = Bank(patches=rows, images=views.reshape(4, -1, 8).mean(1), global_weight=0.0, peak="patch")
    held = held_out_train_scores(bank, views, keep, (4, 4), sigma=0, source=source)
    assert held.shape == (2,)  # one score per photo, not per view
    for i in range(2):
        others = rows[np.repeat(source, 16) != i]
        assert held[i] == pytest.approx(nn_distances(feats[i].reshape(-1, 8), others).max(), rel=1e-4)
        assert held[i] > 5  # its copy would have stood in for it at ~0.01
    unaware = held_out_train_scores(bank, views, keep, (4, 4), sigma=0)  # without `source`: copies leak
    assert unaware[0] < 0.1


def test_knn_calibration_reaches_the_quantile_rule_with_held_out_training_images():
    from train.knn_fit import CALIBRATION_SPLIT, calibrate_knn

    rng = np.random.default_rng(7)
    feats = rng.normal(size=(120, 2, 2, 4)).astype(np.float32)
    keep = np.arange(120 * 4)
    bank = Bank(patches=feats.reshape(-1, 4), images=feats.reshape(120, -1, 4).mean(1), global_weight=0.0)
    val = rng.uniform(0.5, 1.0, size=20)
    cal = calibrate_knn(bank, feats, keep, val, (4, 4), target_fpr=0.01, sigma=0)
    assert cal["rule"] == "quantile" and cal["n"] == 140
    assert cal["n_val"] == 20 and cal["n_train_held_out"] == 120 and cal["split"] == CALIBRATION_SPLIT
    # Only the val images: too few for a 1 % quantile, the small-set rule.
    few = Bank(patches=feats[:5].reshape(-1, 4), images=bank.images[:5], global_weight=0.0)
    small = calibrate_knn(few, feats[:5], keep[:20], val, (4, 4), target_fpr=0.01, sigma=0)
    assert small["rule"] == "max_margin" and small["n"] == 25


def test_run_keep_reuses_a_fitting_selection_and_refuses_garbage(tmp_path):
    from train.knn_fit import CORESET_FILE, run_keep

    np.save(tmp_path / CORESET_FILE, np.array([3, 0, 7]))
    config = {"coreset": {"file": CORESET_FILE, "kept": 3, "of": 8}}
    np.testing.assert_array_equal(run_keep(tmp_path, config, rows=8), [3, 0, 7])
    assert run_keep(tmp_path, config, rows=9) is None  # other data: convert selects again
    assert run_keep(tmp_path, {}, rows=8) is None  # a run from before coreset.npy existed
    (tmp_path / CORESET_FILE).write_bytes(b"garbage")
    with pytest.raises(UserError, match=CORESET_FILE):
        run_keep(tmp_path, config, rows=8)


def _coarse_bank(rng, weight: float = 0.5) -> Bank:
    from edge.knn import CoarseBank

    fine = rng.normal(size=(60, 6)).astype(np.float32)
    coarse = CoarseBank(
        patches=rng.normal(size=(20, 5)).astype(np.float32), channels=6, step=4, scale=1.5, weight=weight
    )
    return Bank(patches=fine, images=fine[:0], patch_scale=2.0, global_weight=0.0, coarse=coarse)


def _grid_with_coarse(rng, h: int = 8, step: int = 4) -> np.ndarray:
    """An (h, h, 6 + 5) grid whose last 5 channels are nearest-upsampled coarse cells, as the model makes it."""
    cells = rng.normal(size=(h // step, h // step, 5)).astype(np.float32)
    coarse = np.repeat(np.repeat(cells, step, axis=0), step, axis=1)
    return np.concatenate([rng.normal(size=(h, h, 6)).astype(np.float32), coarse], axis=-1)


def test_coarse_stage_map_is_the_weighted_mean_of_two_brute_force_maps():
    import cv2

    rng = np.random.default_rng(21)
    bank = _coarse_bank(rng, weight=0.3)
    grid = _grid_with_coarse(rng)
    score, amap = bank.score(grid, (32, 32), sigma=2.0)

    def brute(q, rows, scale, side, sigma, at=32):
        d = np.sqrt(((q.reshape(-1, q.shape[-1])[:, None] - rows[None]) ** 2).sum(-1)).min(1) / scale
        up = cv2.resize(d.reshape(side, side).astype(np.float32), (at, at), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(cv2.GaussianBlur(up, (0, 0), sigma), (32, 32), interpolation=cv2.INTER_LINEAR)

    fine = brute(grid[..., :6], bank.patches, 2.0, 8, 2.0)
    # blurred by one coarse cell (4 fine cells), at a quarter of the size
    coarse = brute(grid[::4, ::4, 6:], bank.coarse.patches, 1.5, 2, 2.0, at=8)
    np.testing.assert_allclose(amap, 0.7 * fine + 0.3 * coarse, rtol=1e-3, atol=1e-3)
    assert score == pytest.approx(float(amap.max()), rel=1e-6)
    assert bank.dim == 11
    # A coarse cell unlike every good one raises the map over its whole block, though each fine patch is good.
    far = grid.copy()
    far[:4, :4, 6:] += 50.0
    assert bank.score(far, (32, 32), sigma=2.0)[1][:16, :16].mean() > amap[:16, :16].mean() + 5


def test_coarse_bank_round_trip_and_refusals(tmp_path):
    rng = np.random.default_rng(22)
    bank = _coarse_bank(rng)
    meta = save_bank(tmp_path, bank)
    assert meta["dim"] == 6 and meta["coarse"] == {
        "patches": 20, "dim": 5, "channels": 6, "step": 4, "scale": 1.5, "weight": 0.5
    }  # fmt: skip
    back = load_bank(tmp_path, meta)
    np.testing.assert_allclose(back.coarse.patches, bank.coarse.patches, atol=1e-2)  # float16 on disk
    grid = _grid_with_coarse(rng)
    assert back.score(grid, (16, 16))[0] == pytest.approx(bank.score(grid, (16, 16))[0], rel=1e-2)
    for bad, match in (
        ({"channels": 7}, "differs from the fine bank's dim 6"),
        ({"step": 0}, "step >= 1"),
        ({"weight": 1.5}, "weight in"),
        ({"dim": 4}, "do not match its dim 4"),
    ):
        with pytest.raises(UserError, match=match):
            load_bank(tmp_path, {**meta, "coarse": {**meta["coarse"], **bad}})
    with pytest.raises(UserError, match="map-peak"):
        load_bank(tmp_path, {**meta, "peak": "patch"})
    plain = save_bank(tmp_path, replace(bank, coarse=None))  # a bank.npz without coarse rows
    with pytest.raises(UserError, match="not a memory bank"):
        load_bank(tmp_path, {**plain, "coarse": meta["coarse"]})


def test_coreset_and_held_out_scores_cover_the_coarse_stage():
    """One selection indexes fine patches, then coarse cells; a held-out image loses its own rows of both."""
    from train.features import BankRecipe, build_bank, coreset_keep, held_out_train_scores, patch_rows

    rng = np.random.default_rng(23)
    feats = np.stack([_grid_with_coarse(rng) for _ in range(6)])  # 6 images, 8x8 fine, 2x2 coarse
    val = np.stack([_grid_with_coarse(rng) for _ in range(2)])
    recipe = BankRecipe(coreset_fraction=0.5, min_patches=1, coarse_channels=6, coarse_step=4, coarse_weight=0.5,
                        coarse_fraction=0.5, sigma=0.0)  # fmt: skip
    assert patch_rows(feats.shape, recipe) == 6 * 64 + 6 * 4
    keep = coreset_keep(feats, recipe)
    fine_keep, coarse_keep = keep[keep < 6 * 64], keep[keep >= 6 * 64]
    assert len(fine_keep) == 192 and len(coarse_keep) == 12 and coarse_keep.max() < 6 * 64 + 24
    bank = build_bank(feats, val, (8, 8), recipe, keep)
    assert bank.coarse is not None and len(bank.coarse.patches) == 12 and bank.coarse.scale > 0
    # every coarse cell in the bank: a training image scores 0 on the coarse map in the bank, > 0 held out
    everything = replace(recipe, coreset_fraction=1.0, coarse_fraction=1.0)
    full = build_bank(feats, val, (8, 8), everything, coreset_keep(feats, everything))
    fine_only = replace(full, coarse=replace(full.coarse, weight=0.0))
    held = held_out_train_scores(full, feats, coreset_keep(feats, everything), (8, 8), sigma=0.0)
    held_fine = held_out_train_scores(fine_only, feats, coreset_keep(feats, everything), (8, 8), sigma=0.0)
    assert np.all(held > 0.5 * held_fine)  # the coarse half of the map is not zero: own cells were dropped
    in_bank = np.array([full.score(f, (8, 8), sigma=0.0)[0] for f in feats])
    assert np.allclose(in_bank, 0.0, atol=1e-2)


def test_fit_config_refuses_a_coarse_stage_or_backbone_it_cannot_build():
    from train.knn_fit import DEFAULT_COARSE_WEIGHT, KnnFitConfig

    assert KnnFitConfig(data="d", out="o").validate().coarse == DEFAULT_COARSE_WEIGHT
    assert KnnFitConfig(data="d", out="o", method="cae-knn", cae_run="r").validate().coarse == 0.0
    for kw, match in (
        ({"coarse_weight": 1.5}, r"--coarse-weight 1.5: must be in \[0, 1\]"),
        ({"method": "cae-knn", "cae_run": "r", "coarse_weight": 0.5}, "only effnet-knn"),
        ({"image_size": 240}, "multiple of 32"),
        (
            {"backbone": "resnet50"},
            r"--backbone 'resnet50': not one of efficientnet-lite0, efficientnet-lite2",
        ),
        ({"method": "cae-knn", "cae_run": "r", "backbone": "efficientnet-lite0"}, "only effnet-knn has"),
    ):
        with pytest.raises(UserError, match=match):
            KnnFitConfig(data="d", out="o", **kw).validate()
    assert KnnFitConfig(data="d", out="o", image_size=240, coarse_weight=0).validate().coarse == 0.0


def test_feature_model_appends_the_coarse_stage_as_exact_blocks():
    """The device reads every step-th cell of the coarse channels back: each block must repeat one cell."""
    import keras
    from keras import layers

    from train.features import coarse_layout, patch_feature_model

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3))
    fine = layers.Conv2D(4, 3, strides=8, padding="same", name="fine")(inp)  # 8x8
    deep = layers.Conv2D(3, 3, strides=4, padding="same", name="deep")(fine)  # 2x2
    backbone = keras.Model(inp, deep)
    model = patch_feature_model(backbone, ("fine",), pool=1, coarse="deep")
    assert coarse_layout(model) == {"channels": 4, "step": 4, "dim": 3}
    assert coarse_layout(patch_feature_model(backbone, ("fine",))) is None
    out = np.asarray(model(np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)))[0]
    assert out.shape == (8, 8, 7) and tuple(deep.shape[1:]) == (2, 2, 3)
    coarse = out[..., 4:]
    np.testing.assert_array_equal(coarse, np.repeat(np.repeat(coarse[::4, ::4], 4, 0), 4, 1))


def test_projection_keeps_the_leading_components_and_the_model_outputs_what_apply_computes():
    """--project: the fine channels become their leading principal components inside the model (a 1x1
    convolution), the coarse channels pass through, so the bank, the search and the device see a narrower grid."""
    import keras
    from keras import layers

    from train.features import coarse_layout, fit_projection, patch_feature_model, with_projection

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3))
    fine = layers.Conv2D(6, 3, strides=8, padding="same", name="fine")(inp)  # 8x8
    mid = layers.Conv2D(5, 3, strides=2, padding="same", name="mid")(fine)  # 4x4
    deep = layers.Conv2D(3, 3, strides=2, padding="same", name="deep")(mid)  # 2x2
    model = patch_feature_model(keras.Model(inp, deep), ("fine", "mid"), coarse="deep")
    x = np.random.default_rng(1).random((6, 64, 64, 3)).astype(np.float32)
    feats = np.asarray(model(x))
    assert feats.shape == (6, 8, 8, 6 + 5 + 3) and coarse_layout(model)["channels"] == 11

    proj = fit_projection(feats, 11, 4)
    np.testing.assert_allclose(proj.basis.T @ proj.basis, np.eye(4), atol=1e-5)  # orthonormal
    rows = feats[..., :11].reshape(-1, 11)
    np.testing.assert_allclose(proj.mean, rows.mean(0), rtol=1e-5, atol=1e-6)
    centred = rows - rows.mean(0)
    total = (centred**2).sum()
    # the leading components: no other 4-dim orthonormal basis keeps more of the variance (a random one here)
    kept = ((centred @ proj.basis) ** 2).sum()
    assert proj.variance == pytest.approx(kept / total, rel=1e-4)
    other = np.linalg.qr(np.random.default_rng(2).normal(size=(11, 4)))[0]
    assert ((centred @ other) ** 2).sum() < kept
    assert proj.to_json() == {"dims": 4, "of": 11, "variance": round(proj.variance, 4)}

    projected = with_projection(model, proj)
    out = np.asarray(projected(x))
    assert out.shape == (6, 8, 8, 4 + 3)
    np.testing.assert_allclose(out, proj.apply(feats, 11), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out[..., 4:], feats[..., 11:])  # the coarse stage untouched
    assert coarse_layout(projected) == {"channels": 4, "step": 4, "dim": 3}
    with pytest.raises(ValueError, match="projection of 11 channels for a 6-channel"):
        with_projection(patch_feature_model(keras.Model(inp, deep), ("fine",)), proj)
    with pytest.raises(UserError, match="--project -1"):
        from train.knn_fit import KnnFitConfig

        KnnFitConfig(data="d", out="o", project=-1).validate()


def test_held_out_row_scales_match_a_brute_force_reference():
    """Each patch goes to its nearest row from another photo; a row's scale is the shrunk mean of what it got."""
    from train.features import HELD_OUT_SHRINK, held_out_row_scales

    rng = np.random.default_rng(31)
    grids = rng.normal(size=(4, 3, 3, 5)).astype(np.float32)  # 4 photos, 9 patches each
    rows = np.concatenate([grids[p].reshape(-1, 5)[:4] for p in range(4)])  # 4 rows from each photo
    row_image = np.repeat(np.arange(4), 4)
    got = held_out_row_scales(rows, row_image, grids, np.arange(4))
    hits: dict[int, list[float]] = {j: [] for j in range(len(rows))}
    for p in range(4):
        for q in grids[p].reshape(-1, 5):
            d = np.sqrt(((rows - q) ** 2).sum(1))
            d[row_image == p] = np.inf  # never its own photo's rows, though they hold the patch itself
            hits[int(d.argmin())].append(float(d.min()))
    typical = np.median([x for v in hits.values() for x in v])
    expected = [(sum(v) + HELD_OUT_SHRINK * typical) / (len(v) + HELD_OUT_SHRINK) for v in hits.values()]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert any(not v for v in hits.values())  # a row nothing reached keeps the typical distance
    # augmented copies (grid_image) count as their photo: photo 0's copy may not use photo 0's rows either
    with_copy = held_out_row_scales(rows, row_image, np.concatenate([grids, grids[:1] + 0.01]), np.r_[0:4, 0])
    assert with_copy.shape == (16,) and np.all(with_copy > 0)
    assert (
        held_out_row_scales(rows[:4], row_image[:4], grids[:1], [0]).tolist() == [1.0] * 4
    )  # nothing to match


def test_calibrated_bank_flags_a_step_on_a_tight_texture_that_euclidean_misses(tmp_path):
    """Photos of a plain rim (tight) and of food (varied): the same step off a rim patch is unusual, off a food
    patch it is ordinary. Euclidean distance cannot tell the two apart; the held-out calibration can."""
    from train.features import BankRecipe, build_bank, coreset_keep

    rng = np.random.default_rng(32)
    rim = rng.normal(scale=0.1, size=(6, 4, 4, 4))
    food = rng.normal(scale=2.0, size=(6, 4, 4, 4)) + 20
    feats = np.concatenate([rim, food], axis=2).astype(
        np.float32
    )  # each photo: left half rim, right half food
    val = feats[:2] + rng.normal(scale=0.05, size=feats[:2].shape).astype(np.float32)
    recipe = BankRecipe(coreset_fraction=0.5, min_patches=1, sigma=0.0, peak="patch", distance="calibrated")
    bank = build_bank(feats, val, (4, 8), recipe, coreset_keep(feats, recipe))
    assert bank.distance == "calibrated" and bank.patch_spacing.shape == (len(bank.patches),)
    plain = replace(bank, patch_spacing=None)
    step = np.array([0.0, 0.0, 0.0, 1.5], np.float32)
    on_rim, on_food = val[0].copy(), val[0].copy()
    on_rim[0, 0] += step
    on_food[0, 6] += step
    # the stepped cells' values on the map (no blur: the map is the grid)
    plain_rim, plain_food = (
        plain.score(on_rim, (4, 8), 0.0)[1][0, 0],
        plain.score(on_food, (4, 8), 0.0)[1][0, 6],
    )
    rim_cell, food_cell = bank.score(on_rim, (4, 8), 0.0)[1][0, 0], bank.score(on_food, (4, 8), 0.0)[1][0, 6]
    assert plain_rim == pytest.approx(plain_food, rel=0.5)
    assert rim_cell > 3 * food_cell
    back = load_bank(tmp_path, save_bank(tmp_path, bank))  # and the bundle carries it
    assert back.distance == "calibrated"
    assert back.score(on_rim, (4, 8), 0.0)[0] == pytest.approx(bank.score(on_rim, (4, 8), 0.0)[0], rel=1e-2)


def test_calibrated_coarse_stage_carries_its_row_scales_through_the_bundle(tmp_path):
    from train.features import BankRecipe, build_bank, coreset_keep, held_out_train_scores

    rng = np.random.default_rng(33)
    feats = np.stack([_grid_with_coarse(rng) for _ in range(6)])
    val = np.stack([_grid_with_coarse(rng) for _ in range(2)])
    recipe = BankRecipe(coreset_fraction=0.5, min_patches=1, coarse_channels=6, coarse_step=4, coarse_weight=0.5,
                        coarse_fraction=0.5, sigma=0.0, distance="calibrated")  # fmt: skip
    keep = coreset_keep(feats, recipe)
    bank = build_bank(feats, val, (8, 8), recipe, keep)
    assert bank.coarse.row_scale.shape == (len(bank.coarse.patches),) and np.all(bank.coarse.row_scale > 0)
    meta = save_bank(tmp_path, bank)
    back = load_bank(tmp_path, meta)
    np.testing.assert_array_equal(back.coarse.row_scale, bank.coarse.row_scale)
    assert back.score(val[0], (8, 8), 0.0)[0] == pytest.approx(bank.score(val[0], (8, 8), 0.0)[0], rel=1e-2)
    # held-out scoring drops an image's coarse rows together with their scales
    assert held_out_train_scores(bank, feats, keep, (8, 8), sigma=0.0).shape == (6,)
    unscaled = replace(
        bank, coarse=replace(bank.coarse, row_scale=None)
    )  # a calibrated bank needs both scales
    with pytest.raises(UserError, match="not a memory bank.*coarse_row_scale"):
        load_bank(tmp_path, save_bank(tmp_path, unscaled))
    broken = replace(bank, coarse=replace(bank.coarse, row_scale=-bank.coarse.row_scale))
    with pytest.raises(UserError, match="coarse_row_scale must hold one positive number per coarse row"):
        load_bank(tmp_path, save_bank(tmp_path, broken))
