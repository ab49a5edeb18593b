"""The dataset loader and `train inspect`: layouts, splits, masks, bad files, CLI errors, no TensorFlow."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import UserError
from edge.preprocess import InputSpec
from tests.conftest import ROOT, assert_one_line_error, run_cli
from train.data import Sample, load_dataset, load_images, read_mask


def _img(path: Path, value: int = 128, shape=(32, 32, 3), dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full(shape, value, dtype)
    img[4:8, 4:8] = 0  # not flat, so every format keeps some structure
    assert cv2.imwrite(str(path), img), path
    return path


def _mask(path: Path, box=(8, 16, 8, 16)) -> Path:
    """A 32x32 mask, white in rows box[0]:box[1], columns box[2]:box[3]."""
    m = np.zeros((32, 32), np.uint8)
    m[box[0] : box[1], box[2] : box[3]] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), m), path
    return path


@pytest.fixture
def mvtec(tmp_path) -> Path:
    """Synth-style MVTec: dish subfolders, masks at the mirrored path, meta/contact sheet at the top."""
    root = tmp_path / "mvtec"
    for dish in ("d0_soup", "d1_steak"):
        for n in range(10):
            _img(root / "train" / "good" / dish / f"{n}.png", 100 + n)
        _img(root / "test" / "good" / dish / "0.png")
    _img(root / "test" / "spill" / "d0_soup" / "0.png")
    _mask(root / "ground_truth" / "spill" / "d0_soup" / "0_mask.png")
    _img(root / "test" / "missing_component" / "d1_steak" / "3.png")  # no mask for this one
    _img(root / "contact_sheet.png")
    (root / "meta.json").write_text("{}")
    return root


@pytest.fixture
def flat(tmp_path) -> Path:
    """Real MVTec: no dish subfolders, masks flat under ground_truth/<defect>/."""
    root = tmp_path / "flat"
    for n in range(8):
        _img(root / "train" / "good" / f"{n:03d}.png")
    _img(root / "test" / "good" / "000.png")
    _img(root / "test" / "crack" / "000.png")
    _img(root / "test" / "crack" / "001.png")
    _mask(root / "ground_truth" / "crack" / "000_mask.png", box=(0, 16, 0, 32))
    return root


@pytest.fixture
def dsm(tmp_path) -> Path:
    root = tmp_path / "dsm"
    for n in range(30):
        _img(root / "images" / "pasta" / f"{n}.png", n)
    for n in range(10):
        _img(root / "images" / "curry" / "plate_a" / f"{n}.jpg", 50 + n)
    _img(root / "ANO-DSM" / "uncorrect-meals" / "images" / "pasta" / "bad0.png")
    _img(root / "ANO-DSM" / "uncorrect-meals" / "images" / "curry" / "bad1.png")
    _img(root / "ANO-DSM" / "unknown-meals" / "images" / "sushi" / "x.png")
    return root


def _by_split(ds) -> dict[str, set[Path]]:
    return {sp: {s.path for s in ds.split(sp)} for sp in ("train", "val", "test")}


def test_mvtec_with_dishes_layout_counts_and_masks(mvtec):
    ds = load_dataset(mvtec)
    assert ds.layout == "mvtec" and ds.skipped == []
    assert len(ds.samples) == 20 + 2 + 2  # contact sheet and meta.json are not samples
    assert len(ds.split("train")) + len(ds.split("val")) == 20
    assert 1 <= len(ds.split("val")) <= 5
    assert all(not s.anomalous for s in ds.split("train") + ds.split("val"))
    test = {(s.defect, s.dish): s for s in ds.split("test")}
    assert set(test) == {
        ("good", "d0_soup"),
        ("good", "d1_steak"),
        ("spill", "d0_soup"),
        ("missing_component", "d1_steak"),
    }
    spill = test[("spill", "d0_soup")]
    assert spill.anomalous and spill.mask == mvtec / "ground_truth" / "spill" / "d0_soup" / "0_mask.png"
    assert test[("missing_component", "d1_steak")].mask is None
    m = read_mask(spill, (64, 64))  # resized nearest: the white box doubles
    assert m.dtype == bool and m.shape == (64, 64)
    assert m[16:32, 16:32].all() and m.sum() == 16 * 16
    assert not read_mask(test[("missing_component", "d1_steak")], (10, 12)).any()
    assert read_mask(test[("missing_component", "d1_steak")], (10, 12)).shape == (10, 12)


def test_severities_come_from_meta_json_and_a_broken_one_is_ignored(mvtec, caplog):
    meta = {"images": {"test/spill/d0_soup/0.png": {"severity": "subtle", "defect": "spill"}}}
    (mvtec / "meta.json").write_text(json.dumps(meta))
    test = {s.defect: s for s in load_dataset(mvtec).split("test")}
    assert test["spill"].severity == "subtle"
    assert (
        test["missing_component"].severity == "" and test["good"].severity == ""
    )  # not listed / not a defect
    (mvtec / "meta.json").write_text("{not json")
    with caplog.at_level("WARNING"):
        assert {s.severity for s in load_dataset(mvtec).samples} == {""}
    assert "meta.json" in caplog.text and "severity" in caplog.text


def test_flat_mvtec_masks_found_flat(flat):
    ds = load_dataset(flat)
    assert ds.layout == "mvtec"
    assert {s.dish for s in ds.samples} == {""}
    crack = {s.path.name: s for s in ds.split("test") if s.defect == "crack"}
    assert crack["000.png"].mask == flat / "ground_truth" / "crack" / "000_mask.png"
    assert crack["001.png"].mask is None
    m = read_mask(crack["000.png"], (8, 4))
    assert m[:4].all() and not m[4:].any()


def test_mask_falls_back_to_flat_when_not_mirrored(flat):
    _img(flat / "test" / "crack" / "zone_b" / "042.png")  # in a subfolder, its mask flat
    flat_mask = _mask(flat / "ground_truth" / "crack" / "042_mask.png")
    ds = load_dataset(flat)
    s = [s for s in ds.samples if s.path.name == "042.png"][0]
    assert (s.dish, s.defect, s.mask) == ("zone_b", "crack", flat_mask)
    mirrored = _mask(flat / "ground_truth" / "crack" / "zone_b" / "042_mask.png", box=(0, 1, 0, 1))
    assert [s.mask for s in load_dataset(flat).samples if s.path.name == "042.png"] == [mirrored]


def test_dsm_layout_splits_and_defects(dsm):
    ds = load_dataset(dsm)
    assert ds.layout == "dsm" and ds.skipped == []
    by = _by_split(ds)
    good = [s for s in ds.samples if not s.anomalous]
    assert len(good) == 40 and all(s.mask is None for s in ds.samples)
    n_train, n_val, n_test_good = (sum(s.split == sp for s in good) for sp in ("train", "val", "test"))
    assert n_val >= 1 and n_test_good >= 1 and n_train >= 20  # about 70 / 10 / 20
    assert not (by["train"] & by["val"]) and not (by["train"] & by["test"]) and not (by["val"] & by["test"])
    anomalies = [s for s in ds.samples if s.anomalous]
    assert all(s.split == "test" for s in anomalies)
    assert sorted((s.defect, s.dish) for s in anomalies) == [
        ("uncorrect_meal", "curry"),
        ("uncorrect_meal", "pasta"),
        ("unknown_meal", "sushi"),
    ]
    assert {s.dish for s in good} == {"pasta", "curry"}  # curry/plate_a/*: dish is the first subfolder


def test_splits_are_deterministic_and_depend_only_on_relative_paths(dsm, mvtec, tmp_path):
    for root in (dsm, mvtec):
        a, b = load_dataset(root), load_dataset(root)
        assert a.samples == b.samples and a.fingerprint() == b.fingerprint()
        moved = shutil.copytree(root, tmp_path / f"elsewhere_{root.name}")
        c = load_dataset(moved)
        rel = lambda ds: [(s.path.relative_to(ds.root), s.split) for s in ds.samples]  # noqa: E731
        assert rel(a) == rel(c)
        assert a.fingerprint() == c.fingerprint()


def test_about_ten_percent_val_and_test_never_in_train(tmp_path):
    root = tmp_path / "big"
    for n in range(300):
        _img(root / "train" / "good" / f"{n}.png", shape=(8, 8, 3))
    for n in range(5):
        _img(root / "test" / "good" / f"{n}.png", shape=(8, 8, 3))
    ds = load_dataset(root)
    by = _by_split(ds)
    assert 15 <= len(by["val"]) <= 45, len(by["val"])  # 10 % of 300, give or take hashing noise
    assert len(by["train"]) + len(by["val"]) == 300 and not by["train"] & by["val"]
    assert all(p.parts[-3] == "test" for p in by["test"]) and len(by["test"]) == 5
    assert len(load_dataset(root, val_fraction=0.3).split("val")) > len(by["val"])
    assert load_dataset(root, val_fraction=0.0).split("val") == []


def test_fingerprint_follows_the_files(mvtec):
    before = load_dataset(mvtec).fingerprint()
    _img(mvtec / "train" / "good" / "d0_soup" / "0.png", shape=(40, 40, 3))  # same name, other size
    assert load_dataset(mvtec).fingerprint() != before


def test_grey_16bit_webp_and_upper_case_suffixes_are_accepted(tmp_path):
    root = tmp_path / "kinds"
    good = root / "train" / "good"
    _img(good / "grey.png", shape=(32, 32))
    _img(good / "deep.png", 40000, shape=(32, 32, 3), dtype=np.uint16)
    _img(good / "deep_grey.png", 40000, shape=(20, 30), dtype=np.uint16)
    _img(good / "photo.webp")
    _img(good / "SHOUT.JPG")
    _img(good / "old.bmp")
    _img(good / "x.jpeg")
    (good / "notes.txt").write_text("not an image and not a sample")
    ds = load_dataset(root)
    assert ds.skipped == []
    assert sorted(s.path.name for s in ds.samples) == sorted(
        ["grey.png", "deep.png", "deep_grey.png", "photo.webp", "SHOUT.JPG", "old.bmp", "x.jpeg"]
    )
    x = load_images(ds.samples, InputSpec(height=16, width=24))
    assert x.shape == (7, 16, 24, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    deep = [i for i, s in enumerate(ds.samples) if s.path.name == "deep.png"][0]
    assert abs(float(x[deep, 12, 12, 0]) - 40000 / 65535) < 0.01  # 16-bit scaled, not clipped to 1


def test_load_images_uses_the_device_preprocessing(tmp_path):
    root = tmp_path / "colour"
    blue = np.zeros((32, 32, 3), np.uint8)
    blue[..., 0] = 255  # BGR blue
    (root / "train" / "good").mkdir(parents=True)
    cv2.imwrite(str(root / "train" / "good" / "blue.png"), blue)
    ds = load_dataset(root)
    rgb = load_images(ds.samples, InputSpec(height=8, width=8))
    assert rgb[0, ..., 2].min() == 1.0 and rgb[0, ..., 0].max() == 0.0  # RGB order, as the model sees it
    grey = load_images(ds.samples, InputSpec(height=8, width=8, channels=1, colour_order="GRAY"))
    assert grey.shape == (1, 8, 8, 1)
    assert load_images([], InputSpec(height=8, width=8)).shape == (0, 8, 8, 3)
    (root / "train" / "good" / "blue.png").write_bytes(b"")  # broke after loading: named, not dropped
    with pytest.raises(UserError, match="blue.png"):
        load_images(ds.samples, InputSpec(height=8, width=8))


def test_bad_files_are_skipped_with_a_warning(mvtec, caplog):
    empty = mvtec / "train" / "good" / "d0_soup" / "empty.png"
    empty.write_bytes(b"")
    text = mvtec / "test" / "spill" / "d0_soup" / "readme.png"
    text.write_text("this is not a png\n")
    bad_mask = mvtec / "ground_truth" / "spill" / "d0_soup" / "7_mask.png"
    _img(mvtec / "test" / "spill" / "d0_soup" / "7.png")
    bad_mask.write_bytes(b"\x89PNG garbage")
    with caplog.at_level(logging.WARNING, logger="train.data"):
        ds = load_dataset(mvtec)
    skipped = {p: r for p, r in ds.skipped}
    assert set(skipped) == {empty, text, bad_mask}
    assert "empty" in skipped[empty] and "not a readable image" in skipped[text]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for p in (empty, text, bad_mask):
        assert str(p) in warned
    assert empty not in {s.path for s in ds.samples} and text not in {s.path for s in ds.samples}
    seven = [s for s in ds.samples if s.path.name == "7.png"][0]
    assert seven.mask is None  # an unreadable mask counts as no mask
    assert len(ds.samples) == 25


def test_read_mask_that_broke_is_a_warning_and_empty(tmp_path, caplog):
    gone = Sample(tmp_path / "a.png", "test", "", "spill", tmp_path / "missing_mask.png")
    with caplog.at_level(logging.WARNING, logger="train.data"):
        m = read_mask(gone, (5, 6))
    assert m.shape == (5, 6) and not m.any()
    assert "missing_mask.png" in caplog.text


def test_no_readable_image_is_an_error(tmp_path):
    root = tmp_path / "broken"
    (root / "train" / "good").mkdir(parents=True)
    (root / "train" / "good" / "a.png").write_bytes(b"")
    with pytest.raises(UserError, match="no readable images"):
        load_dataset(root)


@pytest.mark.parametrize("case", ["missing", "empty", "unrecognised", "a_file"])
def test_cli_folder_errors_are_one_line(tmp_path, case):
    folder = tmp_path / case
    if case == "empty":
        folder.mkdir()
    elif case == "unrecognised":
        _img(folder / "holiday" / "beach.png")
    elif case == "a_file":
        folder.write_text("x")
    proc = run_cli("train", "inspect", "--data", str(folder), timeout=60)
    assert_one_line_error(proc, str(folder), "expected")
    assert proc.returncode == 2


def test_cli_points_at_nested_datasets(tmp_path, flat):
    parent = flat.parent
    with pytest.raises(UserError, match="flat"):
        load_dataset(parent)


def test_cli_inspect_json_and_table(mvtec):
    (mvtec / "train" / "good" / "d0_soup" / "zero.png").write_bytes(b"")
    proc = run_cli("train", "inspect", "--data", str(mvtec), "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ds = load_dataset(mvtec)
    assert out["layout"] == "mvtec" and out["images"] == 24 and out["masks"] == 1
    assert out["fingerprint"] == ds.fingerprint()
    assert out["splits"]["test"] == {"good": 2, "anomalous": 2, "total": 4}
    assert out["splits"]["train"]["total"] + out["splits"]["val"]["total"] == 20
    assert out["defects"]["spill"] == {"train": 0, "val": 0, "test": 1}
    counts = Counter(s.dish for s in ds.samples)
    assert {d: sum(v.values()) for d, v in out["dishes"].items()} == dict(counts)
    assert out["skipped"] == [
        {"path": str(mvtec / "train/good/d0_soup/zero.png"), "reason": "empty file (0 bytes)"}
    ]
    assert "zero.png" in proc.stderr  # the warning too

    table = run_cli("train", "inspect", "--data", str(mvtec), timeout=60)
    assert table.returncode == 0, table.stderr
    assert "mvtec" in table.stdout and "missing_component" in table.stdout and "d1_steak" in table.stdout
    assert "zero.png: empty file" in table.stdout


def test_train_data_imports_no_tensorflow():
    code = "import sys, train.data; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
