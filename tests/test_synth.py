"""The synthetic dish generator: layout, determinism, masks that mark exactly what changed, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, assert_one_line_error, run_cli
from train import synth
from train.synth_render import COUNTER_KINDS, render_counter
from train.synth_scene import DEFECTS, SEVERITIES, apply_defect, make_menu, place


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    synth.generate("tiny", out, seed=0, size=64)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    again = tmp_path / "again"
    synth.generate("tiny", again, seed=0, size=64)
    a, b = _files(tiny), _files(again)
    assert a == b
    other = tmp_path / "other"
    synth.generate("tiny", other, seed=1, size=64)
    c = _files(other)
    pngs = [k for k in a if k.startswith("train/good/")]
    assert len(pngs) == 24
    same = [k for k in a if k in c and a[k] == c[k]]
    assert not [k for k in same if k.endswith(".png")], same


def _border_means(root: Path) -> np.ndarray:
    """Mean colour of each good training photo's 6-px frame: the counter, never the dish."""
    out = []
    for p in sorted((root / "train" / "good").rglob("*.png")):
        img = cv2.imread(str(p)).astype(np.float32)
        frame = np.concatenate([img[:6].reshape(-1, 3), img[-6:].reshape(-1, 3)])
        out.append(frame.mean(axis=0))
    return np.array(out)


def test_fixed_scene_keeps_one_counter_varied_draws_many(tiny, tmp_path):
    """A real pass has one counter under one camera: with scene "fixed" (the default) the background of every
    photo is the same surface, give or take light drift; "varied" draws a new counter each time."""
    assert json.loads((tiny / "meta.json").read_text())["scene"] == "fixed"
    varied = tmp_path / "varied"
    synth.generate("tiny", varied, seed=0, size=64, scene="varied")
    fixed_spread = _border_means(tiny).std(axis=0).mean()
    varied_spread = _border_means(varied).std(axis=0).mean()
    assert fixed_spread < 0.4 * varied_spread, (fixed_spread, varied_spread)


def test_layout_and_meta(tiny):
    meta = json.loads((tiny / "meta.json").read_text())
    assert meta["generator"] == synth.GENERATOR and meta["complete"] is True
    assert (meta["preset"], meta["seed"], meta["size"], meta["version"]) == (
        "tiny",
        0,
        64,
        synth.GENERATOR_VERSION,
    )
    counts = Counter(
        p.parts[-4] + "/" + p.parts[-3] for p in tiny.rglob("*.png") if p.parts[-4] in ("train", "test")
    )
    assert counts["train/good"] == 24 and counts["test/good"] == 4
    for d in DEFECTS:
        assert counts[f"test/{d}"] == 3, d
    assert len(meta["dishes"]) == 4 == len({p.parent.name for p in (tiny / "train/good").rglob("*.png")})
    assert len(meta["images"]) == 4 + 3 * len(DEFECTS)
    for rel, rec in meta["images"].items():
        assert (tiny / rel).is_file()
        assert rec["dish"] == Path(rel).parent.name
        if rec["defect"] != "good":
            assert rec["severity"] in SEVERITIES and rec["kind"], rel
    kinds = {r["kind"] for r in meta["images"].values() if r["defect"] == "foreign_object"}
    assert kinds <= {"hair", "shard", "insect"}
    sheet = cv2.imread(str(tiny / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 100 and sheet.shape[1] > 400


def test_every_defect_has_a_mask_no_good_image_has_one(tiny):
    for img_path in (tiny / "test").rglob("*.png"):
        defect, dish = img_path.parts[-3], img_path.parts[-2]
        mask_path = tiny / "ground_truth" / defect / dish / f"{img_path.stem}_mask.png"
        img = cv2.imread(str(img_path), cv2.IMREAD_UNCHANGED)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        if defect == "good":
            assert not mask_path.exists()
            continue
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        assert mask is not None, mask_path
        assert mask.shape == img.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert np.count_nonzero(mask) > 0, mask_path
    assert not (tiny / "ground_truth" / "good").exists()
    assert {p.name for p in (tiny / "ground_truth").iterdir()} == set(DEFECTS)


@pytest.mark.parametrize("defect", [d for d in DEFECTS if d != "unknown_meal"])
def test_mask_covers_exactly_what_the_defect_changed(defect):
    """Render one scene with and without the defect under the same light and camera: the pixels that differ
    lie in (a small margin around) the mask, and the mask's pixels do differ."""
    size = 128
    menu = make_menu(0, 6)
    for k, severity in enumerate(SEVERITIES):
        dish = menu[k % len(menu)]
        scene = place(dish, np.random.default_rng([k, 1]), size)
        good_layers = list(scene.layers)
        apply_defect(defect, scene, dish, np.random.default_rng([k, 2]), severity, size / 256)
        good, _ = synth.render_layers(good_layers, np.random.default_rng([k, 3]), size)
        bad, acc = synth.render_layers(scene.layers, np.random.default_rng([k, 3]), size)
        mask = acc > 0.3
        assert mask.any(), (defect, severity)
        diff = np.abs(good.astype(np.int16) - bad.astype(np.int16)).max(axis=2)
        near = cv2.dilate(mask.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
        assert diff[~near].mean() < 0.5, (defect, severity, diff[~near].mean())
        assert diff[mask].mean() > 2.0, (defect, severity, diff[mask].mean())


def test_severity_spans_obvious_to_subtle():
    """Subtle defects are much smaller than obvious ones: the later evaluation needs both."""
    items = synth.plan("dsm50", 0)
    menu = make_menu(0, synth.PRESETS["dsm50"].dishes)
    frac: dict[str, list[float]] = {s: [] for s in SEVERITIES}
    for it in items:
        if it.defect in ("foreign_object", "spill", "chipped_plate") and it.number < 9:
            _, mask, _ = synth.render_item(it, menu, 0, 128)
            frac[it.severity].append(np.count_nonzero(mask) / mask.size)
    assert np.median(frac["subtle"]) * 3 < np.median(frac["obvious"]), frac
    assert max(frac["subtle"]) < 0.01, frac


def test_preset_plans_match_the_dsm_sets():
    for preset, dishes, train_good in (("dsm50", 45, 155), ("dsm100", 84, 335)):
        items = synth.plan(preset, 0)
        counts = Counter(f"{it.split}/{it.defect}" for it in items)
        assert counts["train/good"] == train_good
        assert 30 <= counts["test/good"] <= 40
        for d in DEFECTS:
            assert counts[f"test/{d}"] >= 20, (preset, d)
        assert len({it.dish for it in items if it.split == "train"}) == dishes
        assert len({it.path for it in items}) == len(items)
        unknown = {it.dish for it in items if it.defect == "unknown_meal"}
        assert unknown.isdisjoint({it.dish for it in items if it.defect != "unknown_meal"})


def test_more_photos_per_dish_keeps_the_preset_and_its_test_split(tmp_path):
    """--train-per-dish only adds training photos, so a run with more of them is comparable on the same test set."""
    base, more = synth.plan("tiny", 0), synth.plan("tiny", 0, train_per_dish=9)
    train = [it for it in more if it.split == "train"]
    assert len(train) == 9 * synth.PRESETS["tiny"].dishes
    assert Counter(it.dish for it in train) == Counter({d: 9 for d in {it.dish for it in train}})
    assert train[: synth.PRESETS["tiny"].train_good] == [it for it in base if it.split == "train"]
    assert [it for it in more if it.split == "test"] == [it for it in base if it.split == "test"]
    synth.generate("tiny", tmp_path / "a", seed=0, size=32)
    synth.generate("tiny", tmp_path / "b", seed=0, size=32, train_per_dish=9)
    for f in (tmp_path / "a").rglob("*.png"):
        if f.name != "contact_sheet.png":
            assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f
    assert len(list((tmp_path / "b" / "train").rglob("*.png"))) == len(train)


def test_rerun_overwrites_a_previous_output_cleanly(tmp_path):
    out = tmp_path / "data"
    synth.generate("tiny", out, seed=0, size=32)
    stale = out / "train" / "good" / "d999_old_dish" / "000.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    keep = out / "notes.txt"
    keep.write_text("mine")
    synth.generate("tiny", out, seed=0, size=32)
    assert not stale.exists() and keep.read_text() == "mine"


def test_render_counter_kinds_are_textured():
    for kind in COUNTER_KINDS:
        img = render_counter(np.random.default_rng(0), 48, 80, kind)
        assert img.shape == (48, 80, 3) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert img.std() > 0.01, kind
    a = render_counter(np.random.default_rng(1), 32, 32)
    b = render_counter(np.random.default_rng(1), 32, 32)
    assert np.array_equal(a, b)


def test_cli_writes_and_summarises(tmp_path):
    out = tmp_path / "cli"
    proc = run_cli("train", "synth", "--preset", "tiny", "--out", str(out), "--size", "32", "--seed", "2")
    assert proc.returncode == 0, proc.stderr
    assert "52 images of 4 dishes" in proc.stdout and str(out) in proc.stdout
    assert len(list(out.rglob("*_mask.png"))) == 3 * len(DEFECTS)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--preset", "tiny", "--size", "16"], "--size"),
        (["--preset", "tiny", "--size", "2048"], "--size"),
        (["--preset", "huge"], "--preset"),
        (["--preset", "tiny", "--seed", "-1"], "--seed"),
        (["--preset", "tiny", "--scene", "beach"], "--scene"),
        (["--preset", "tiny", "--train-per-dish", "0"], "--train-per-dish"),
    ],
)
def test_cli_bad_arguments_are_one_line(tmp_path, args, needle):
    proc = run_cli("train", "synth", "--out", str(tmp_path / "x"), *args)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "x").exists()


def test_cli_refuses_a_folder_that_is_not_synth_output(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "dinner.jpg").write_bytes(b"not mine")
    proc = run_cli("train", "synth", "--preset", "tiny", "--out", str(tmp_path / "photos"), "--size", "32")
    assert_one_line_error(proc, "--out", "photos")
    assert (tmp_path / "photos" / "dinner.jpg").read_bytes() == b"not mine"


def test_synth_never_imports_tensorflow():
    code = "import sys, train.synth; sys.exit('tensorflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
