"""The bank's search as a TFLite model (convert.search -> edge.search) against the numpy search it replaces."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from convert.search import MAX_LEVELS, search_model
from edge.errors import UserError
from edge.knn import SCALE_STEP, Bank, load_bank, nn_distances, save_bank, snap_scales
from edge.search import SEARCH_FILE, TfliteSearch, search_entry
from train.features import held_out_train_scores

# 1 300 rows: levels of several hundred rows are split at CHUNK (512), and the others are partial chunks
ROWS, DIM, QUERIES = 1300, 24, 64


def _rows(rng, n: int) -> np.ndarray:
    return (rng.standard_normal((n, DIM)) + 3.0).astype(np.float32)  # off-centre, as post-ReLU features are


def _scales(rng, n: int) -> np.ndarray:
    return snap_scales(rng.uniform(0.7, 1.4, n))


def test_snap_scales_rounds_to_a_two_percent_grid():
    s = np.array([1.0, 1.009, 1.011, 2.5, 0.31], np.float32)
    got = snap_scales(s)
    assert np.all(np.abs(got / s - 1) <= (SCALE_STEP - 1) / 2 + 1e-6)
    assert got[0] == got[1] == np.float32(1.0) and got[2] == np.float32(SCALE_STEP)
    np.testing.assert_array_equal(snap_scales(got), got)  # a grid point stays put
    assert len(np.unique(_scales(np.random.default_rng(0), 5000))) <= 36  # 2x range: about 35 levels


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    """A Euclidean and a row-scaled bank of the same rows, each with its int8 and float32 search model."""
    rng = np.random.default_rng(0)
    patches, scale = _rows(rng, ROWS), _scales(rng, ROWS)
    out = {}
    folder = tmp_path_factory.mktemp("search")
    for scaled in (False, True):
        for quant in ("int8", "float32"):
            path = folder / f"{quant}_{scaled}.tflite"
            path.write_bytes(search_model(patches, scale if scaled else None, QUERIES, quant))
            out[scaled, quant] = TfliteSearch(path, QUERIES, DIM, 1, "test")
    return patches, scale, out


@pytest.mark.parametrize("scaled", [False, True])
def test_search_model_matches_the_numpy_search(banks, scaled):
    patches, scale, models = banks
    rng = np.random.default_rng(1)
    query = _rows(rng, QUERIES)
    query[:4] = patches[:4]  # exact matches: 0 up to rounding (numpy: the sqrt of |q|^2 x 1e-7, about 0.01)
    ref = nn_distances(query, patches, row_scale=scale if scaled else None)
    np.testing.assert_allclose(models[scaled, "float32"](query), ref, rtol=1e-4, atol=0.02)
    q8 = models[scaled, "int8"](query)
    assert np.all(np.isfinite(q8)) and np.all(q8 >= 0)
    typical = float(np.median(ref))
    # int8 weights, inputs quantized per row on the fly: about 0.2 % of a typical distance on real features
    assert np.median(np.abs(q8 - ref)) < 0.02 * typical, (np.median(np.abs(q8 - ref)), typical)
    assert np.max(np.abs(q8 - ref)) < 0.1 * typical


def test_search_model_refuses_scales_off_the_grid():
    rng = np.random.default_rng(2)
    scales = rng.uniform(0.5, 2.0, MAX_LEVELS + 1)
    with pytest.raises(UserError, match=r"65 distinct row scales, more than 64 .* --search numpy"):
        search_model(_rows(rng, MAX_LEVELS + 1), scales, QUERIES)


def test_held_out_scoring_searches_in_numpy_and_the_device_through_the_model(tmp_path):
    """Calibration scores each training photo without its own rows: a model cannot skip rows, so those scores
    come from the numpy search over the same rows and scales, and every other score from the model."""
    rng = np.random.default_rng(3)
    h = w = 8  # 64 patches a photo = QUERIES
    train = _rows(rng, 5 * h * w).reshape(5, h, w, DIM)
    keep = rng.choice(5 * h * w, 150, replace=False)
    rows, scale = train.reshape(-1, DIM)[keep], _scales(rng, 150)
    bank = Bank(patches=rows, images=train.mean(axis=(1, 2)), global_weight=0.0, patch_spacing=scale,
                scaling="calibrated")  # fmt: skip
    path = tmp_path / SEARCH_FILE
    path.write_bytes(search_model(rows, scale, QUERIES, "float32"))
    searched = replace(bank, search=TfliteSearch(path, QUERIES, DIM, 1, "test"))
    got = held_out_train_scores(searched, train, keep, (32, 32), sigma=2.0)
    np.testing.assert_array_equal(got, held_out_train_scores(bank, train, keep, (32, 32), sigma=2.0))
    assert np.all(np.isfinite(got))

    calls = []
    counting = replace(searched, search=lambda q: calls.append(len(q)) or searched.search(q))
    held_out = counting.without(np.arange(len(rows)) < 10)
    assert held_out.score(train[0], (32, 32), sigma=2.0)[0] > 0 and calls == []
    device = counting.score(train[0], (32, 32), sigma=2.0)[0]
    assert calls == [QUERIES]
    assert device == pytest.approx(bank.score(train[0], (32, 32), sigma=2.0)[0], rel=1e-4)


def _bundle_bank(folder, rng) -> tuple[Bank, dict, bytes]:
    """A calibrated bank written as a bundle writes it: bank.npz, search.tflite and their bundle.json entry."""
    bank = Bank(patches=_rows(rng, ROWS), images=_rows(rng, 3), patch_spacing=_scales(rng, ROWS),
                scaling="calibrated")  # fmt: skip
    meta = save_bank(folder, bank)
    flat = search_model(bank.patches, bank.patch_spacing, QUERIES, "int8")
    (folder / SEARCH_FILE).write_bytes(flat)
    return bank, {**meta, "search": search_entry(flat, "int8", QUERIES)}, flat


def test_bundle_bank_loads_its_search_model_and_refuses_a_tampered_one(tmp_path):
    rng = np.random.default_rng(4)
    _, meta, flat = _bundle_bank(tmp_path, rng)
    loaded = load_bank(tmp_path, json.loads(json.dumps(meta)))
    assert isinstance(loaded.search, TfliteSearch) and loaded.search.queries == QUERIES
    grid = _rows(rng, QUERIES).reshape(8, 8, DIM)
    with_model = loaded.score(grid, (32, 32), sigma=2.0)[0]
    numpy_score = replace(loaded, search=None).score(grid, (32, 32), sigma=2.0)[0]
    assert with_model == pytest.approx(numpy_score, rel=0.02)

    (tmp_path / SEARCH_FILE).write_bytes(flat[:-10] + b"0123456789")
    with pytest.raises(UserError, match=r"search\.tflite: sha256 .* does not match"):
        load_bank(tmp_path, meta)
    (tmp_path / SEARCH_FILE).unlink()
    with pytest.raises(UserError, match="cannot read the search model"):
        load_bank(tmp_path, meta)
    (tmp_path / SEARCH_FILE).write_bytes(flat)
    with pytest.raises(UserError, match="needs a `file` name and whole-number `queries`"):
        load_bank(tmp_path, {**meta, "search": {"file": SEARCH_FILE}})
    # a search model made for another grid (or another feature size) is refused by its shapes, not used
    with pytest.raises(UserError, match=r"not \(49, 24\) patch rows"):
        load_bank(tmp_path, {**meta, "search": search_entry(flat, "int8", 49)})


def test_the_device_leaves_the_fine_rows_on_disk_when_the_search_model_holds_them(tmp_path):
    rng = np.random.default_rng(5)
    bank, meta, _ = _bundle_bank(tmp_path, rng)
    device = load_bank(tmp_path, meta, rows=False)
    assert device.patches.shape == (0, DIM) and device.dim == DIM
    full = load_bank(tmp_path, meta)
    assert full.patches.shape == (ROWS, DIM)
    grid = _rows(rng, QUERIES).reshape(8, 8, DIM)
    assert device.score(grid, (32, 32), sigma=2.0)[0] == full.score(grid, (32, 32), sigma=2.0)[0]
    # held-out scoring needs the rows: a bank loaded without them says so instead of scoring against nothing
    with pytest.raises(ValueError, match="without its fine rows .* a numpy search needs them"):
        device.without(np.arange(ROWS) < 5).score(grid, (32, 32), sigma=2.0)
    # and a bank without a search model keeps its rows whatever the caller asked
    no_model = {k: v for k, v in meta.items() if k != "search"}
    assert load_bank(tmp_path, no_model, rows=False).patches.shape == (ROWS, DIM)
    # the row count behind the scales is still checked against the rows left on disk
    short = replace(bank, patch_spacing=bank.patch_spacing[:-1])
    meta_short = save_bank(tmp_path, short)
    with pytest.raises(UserError, match=rf"one positive number per bank row \({ROWS}\)"):
        load_bank(tmp_path, {**meta_short, "search": meta["search"]}, rows=False)
