"""`train twins`: each synthetic defect against its twin rendered without it (train/twins.py, synth.render_twin)."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_cli
from train import synth
from train.synth_scene import DEFECTS
from train.twins import Pair, local_peaks, summarize

TWINNED = [d for d in DEFECTS if d != "unknown_meal"]


def _items(preset: str = "tiny"):
    return [it for it in synth.plan(preset, 0) if it.split == "test" and it.defect in TWINNED]


@pytest.mark.parametrize("defect", TWINNED)
def test_a_twin_is_the_photo_without_its_defect(defect):
    """The photo is exactly what synth writes; the twin differs from it only around the defect's mask."""
    size = 128
    menu = synth.make_menu(0, synth.PRESETS["tiny"].dishes)
    venue = synth.Venue.make(0, size)
    for it in [i for i in _items() if i.defect == defect]:
        photo, twin, mask, kind = synth.render_twin(it, menu, 0, size, venue)
        written, written_mask, written_kind = synth.render_item(it, menu, 0, size, venue)
        assert np.array_equal(photo, written) and np.array_equal(mask, written_mask) and kind == written_kind
        diff = np.abs(photo.astype(np.int16) - twin.astype(np.int16)).max(axis=2)
        near = cv2.dilate((mask > 0).astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
        assert diff[~near].mean() < 0.5, (it.path, diff[~near].mean())  # the same counter, light and noise
        assert diff[mask > 0].mean() > 2.0, (it.path, diff[mask > 0].mean())


def test_good_photos_and_dishes_not_on_the_menu_have_no_twin():
    menu = synth.make_menu(0, synth.PRESETS["tiny"].dishes)
    for it in synth.plan("tiny", 0):
        if it.defect in ("good", "unknown_meal"):
            with pytest.raises(ValueError, match="no defect-free twin"):
                synth.render_twin(it, menu, 0, 64)
            return
    pytest.fail("the tiny plan has no good photo")


def _pair(defect: str, severity: str, mask: np.ndarray) -> Pair:
    img = np.zeros((*mask.shape, 3), np.uint8)
    return Pair("x.png", defect, severity, "", img, img, mask)


def test_summary_against_a_hand_computed_case():
    """Two chips and a hair on 8x8 maps; every number below is worked out by hand."""
    m1 = np.zeros((8, 8), bool)
    m1[1, 1] = True
    m2 = np.zeros((8, 8), bool)
    m2[6, 6] = True
    pairs = [_pair("chip", "obvious", m1), _pair("chip", "subtle", m2), _pair("hair", "subtle", m2)]
    twin_maps = np.full((3, 8, 8), 0.5)
    twin_maps[:, 4, 0] = 0.9  # each twin's own peak, away from the defects (reach: 1 cell)
    maps = twin_maps.copy()
    maps[0, 1, 1] = 1.5  # an obvious chip the map sees
    maps[1, 7, 7] = 0.7  # a subtle chip: seen, one cell off its mask, but under the twin's own peak
    # the hair: its map is its twin's
    scores = np.array([1.5, 0.9, 0.9])
    twin_scores = np.array([0.9, 0.9, 0.8])
    assert np.allclose(local_peaks(maps, [p.mask for p in pairs]), [1.5, 0.7, 0.5])
    r = summarize(pairs, (scores, maps), (twin_scores, twin_maps), threshold=1.0)
    assert r["all"]["n"] == 3
    assert r["all"]["score_rise"] == pytest.approx(0.1)  # median of 0.6, 0, 0.1
    assert r["all"]["local_rise"] == pytest.approx(0.2)  # median of 1.0, 0.2, 0
    assert r["all"]["beats_twin_peak"] == pytest.approx(1 / 3, abs=1e-3)  # only 1.5 > 0.9
    assert r["all"]["flagged"] == pytest.approx(1 / 3, abs=1e-3) and r["all"]["twins_flagged"] == 0
    # scores 1.5, 0.9, 0.9 against twins 0.9, 0.9, 0.8: pairs won 1+1+1 + 0.5+0.5+1 + 0.5+0.5+1 = 7 of 9
    assert r["all"]["auroc_vs_twins"] == pytest.approx(7 / 9, abs=1e-4)
    assert list(r["per_severity"]) == ["obvious", "subtle"]
    assert r["per_defect"]["hair"]["local_rise"] == 0 and r["per_defect"]["chip"]["n"] == 2
    assert r["twin_scores"]["median"] == pytest.approx(0.9)
    assert [(p["score"], p["twin_local"]) for p in r["plates"]] == [(1.5, 0.5), (0.9, 0.5), (0.9, 0.5)]


@pytest.mark.parametrize("model", ["tiny_bundle", "tiny_run"])
def test_twins_cli(model, tiny_dataset, tmp_path, request):
    """On the device's scorer (a bundle) and on the Keras run it was converted from."""
    path = request.getfixturevalue(model)
    out, report = tmp_path / "twins.json", tmp_path / "report"
    args = ("--data", str(tiny_dataset), "--json", str(out), "--report", str(report))
    proc = run_cli("train", "twins", "--model", str(path), *args)
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split()[0] for ln in proc.stdout.splitlines()[2:]]
    assert rows[:1] == ["all"] and set(TWINNED) <= set(rows), proc.stdout
    r = json.loads(out.read_text())
    assert r["all"]["n"] == len(_items()) == synth.PRESETS["tiny"].per_defect * len(TWINNED)
    assert len(r["plates"]) == r["all"]["n"] and {p["defect"] for p in r["plates"]} == set(TWINNED)
    assert set(r["per_defect"]) == set(TWINNED) and set(r["per_severity"]) == {
        "obvious",
        "moderate",
        "subtle",
    }
    meta = path / ("bundle.json" if model == "tiny_bundle" else "config.json")
    assert r["threshold"] == pytest.approx(json.loads(meta.read_text())["threshold"])
    for g in (r["all"], *r["per_defect"].values()):
        assert 0 <= g["auroc_vs_twins"] <= 1 and 0 <= g["beats_twin_peak"] <= 1 and g["changed_pixels"] > 0
    page = (report / "index.html").read_text()
    assert "auroc_vs_twins" in page and 'src="twins.png"' in page and "foreign_object" in page
    assert (report / "twins.png").stat().st_size > 10_000
    # the tiny model does see its obvious defects: they raise its map where they lie
    assert r["per_severity"]["obvious"]["local_rise"] > 0


def test_twins_refuse_data_they_cannot_twin(tiny_bundle, tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    victim = data / _items()[0].path
    img = cv2.imread(str(victim))
    img[0, 0] = 255 - img[0, 0]
    cv2.imwrite(str(victim), img)
    proc = run_cli("train", "twins", "--model", str(tiny_bundle), "--data", str(data))
    assert_one_line_error(proc, str(victim), "was changed")

    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    proc = run_cli("train", "twins", "--model", str(tiny_bundle), "--data", str(data))
    assert_one_line_error(proc, "meta.json", "generator version 1")

    (data / "meta.json").write_text(json.dumps({**meta, "preset": "dsm1000"}))
    proc = run_cli("train", "twins", "--model", str(tiny_bundle), "--data", str(data))
    assert_one_line_error(proc, "meta.json", "unknown preset 'dsm1000'")

    (data / "meta.json").unlink()
    proc = run_cli("train", "twins", "--model", str(tiny_bundle), "--data", str(data))
    assert_one_line_error(proc, "no meta.json")

    proc = run_cli("train", "twins", "--model", str(tmp_path), "--data", str(tiny_dataset))
    assert_one_line_error(proc, str(tmp_path), "neither a run folder")

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad_json = str(blocker / "twins.json")
    proc = run_cli(
        "train", "twins", "--model", str(tiny_bundle), "--data", str(tiny_dataset), "--json", bad_json
    )
    assert_one_line_error(proc, f"--json {bad_json}", "is not a folder")  # before any scoring
