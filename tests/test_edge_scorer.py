"""The device side of a bundle: verification and refusals, TF-free scoring, heat map and regions, `edge score`.

Every test uses the real int8 bundle converted from a really trained tiny run (tests/model_fixtures.py) and the
real LiteRT interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.bundle import read_bundle, sha256_file
from edge.errors import UserError
from edge.preprocess import read_image
from edge.scorer import Region, Scorer, alert_regions, find_regions
from tests.conftest import ROOT, assert_one_line_error, run_cli


def _images(dataset: Path, sub: str) -> list[Path]:
    return sorted(p for p in (dataset / sub).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _edit_json(bundle: Path, **changes) -> None:
    data = json.loads((bundle / "bundle.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    (bundle / "bundle.json").write_text(json.dumps(data))


def _refused(bundle: Path, *needles: str) -> None:
    with pytest.raises(UserError) as exc:
        Scorer(bundle)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(bundle) in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_valid_bundle_loads_and_scores(tiny_bundle, tiny_dataset):
    scorer = Scorer(tiny_bundle, threads=1)
    info = scorer.bundle
    assert info.sha256 == sha256_file(tiny_bundle / "model.tflite")
    assert info.input_tensor.dtype == "uint8" and info.quantization == "int8"
    img = read_image(_images(tiny_dataset, "test/good")[0])
    a, b = scorer.score(img), scorer.score(img)
    assert a.score == b.score  # deterministic
    assert a.threshold == info.threshold and a.anomalous == (a.score > a.threshold)
    assert a.inference_ms > 0


def test_refuses_model_hash_mismatch(bundle_copy):
    model = bundle_copy / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    _refused(bundle_copy, "hash mismatch")


def test_refuses_unknown_format(bundle_copy):
    _edit_json(bundle_copy, format=3)
    _refused(bundle_copy, "unknown bundle format version 3")


def test_reads_format_1(bundle_copy):
    """Format 2 only added the kNN bank's `distance`; a format-1 bundle (every bank Euclidean) still loads."""
    _edit_json(bundle_copy, format=1)
    assert Scorer(bundle_copy).bundle.path == bundle_copy


def test_refuses_non_integer_format(bundle_copy):
    _edit_json(bundle_copy, format="1")
    _refused(bundle_copy, "`format` must be an integer")


def test_refuses_truncated_model_even_with_matching_hash(bundle_copy):
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes()[:2000])
    _edit_json(bundle_copy, sha256=sha256_file(model))  # only the interpreter can tell
    _refused(bundle_copy, "not a loadable TFLite model")


def test_refuses_a_file_that_is_not_a_model(bundle_copy):
    model = bundle_copy / "model.tflite"
    model.write_text("hello, I am not a flatbuffer\n" * 50)
    _edit_json(bundle_copy, sha256=sha256_file(model))
    _refused(bundle_copy, "not a loadable TFLite model")


def test_refuses_input_shape_mismatch(bundle_copy):
    data = json.loads((bundle_copy / "bundle.json").read_text())
    _edit_json(bundle_copy, input={"height": data["input"]["height"] * 2})
    _refused(bundle_copy, "input shape", "differs from bundle.json")


@pytest.mark.parametrize("name", ["model.tflite", "bundle.json"])
def test_refuses_missing_files(bundle_copy, name):
    (bundle_copy / name).unlink()
    _refused(bundle_copy, f"missing {name}")


def test_refuses_unreadable_json_and_missing_folder(bundle_copy, tmp_path):
    (bundle_copy / "bundle.json").write_text("{not json")
    _refused(bundle_copy, "bundle.json is unreadable")
    _refused(tmp_path / "nowhere", "folder not found")


def test_refusal_on_the_command_line_is_one_line(bundle_copy, tiny_dataset):
    _edit_json(bundle_copy, format=99)
    proc = run_cli("edge", "score", "--bundle", str(bundle_copy), str(_images(tiny_dataset, "test/good")[0]))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc, str(bundle_copy), "unknown bundle format version 99")


def test_scoring_needs_no_tensorflow(tiny_bundle, tiny_dataset):
    """edge/ must run on a device without TensorFlow: any attempt to import it fails in this process."""
    img = _images(tiny_dataset, "test/good")[0]
    code = textwrap.dedent(
        f"""
        import sys, json
        sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError
        from edge.scorer import Scorer
        from edge.preprocess import read_image
        from edge.interpreter import runtime_name
        r = Scorer({str(tiny_bundle)!r}, threads=1).score(read_image({str(img)!r}))
        loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print(json.dumps({{"score": r.score, "runtime": runtime_name(), "loaded": loaded}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["runtime"] == "litert"
    assert out["score"] == Scorer(tiny_bundle, threads=1).score(read_image(img)).score


def test_heatmap_and_regions_are_in_input_pixels(tiny_bundle, tiny_dataset):
    """An odd-sized crop with a large saturated patch: heat map of the crop's size, a region covering the patch."""
    scorer = Scorer(tiny_bundle, threads=1)
    good = read_image(_images(tiny_dataset, "test/good")[0])
    crop = cv2.resize(good, (131, 97), interpolation=cv2.INTER_LINEAR)
    patch = (50, 30, 40, 35)  # x, y, w, h
    x, y, w, h = patch
    crop[y : y + h, x : x + w] = (255, 0, 255)
    r = scorer.score(crop)
    assert r.heatmap.shape == (97, 131) and r.heatmap.dtype == np.float32
    assert r.anomalous, f"an obvious magenta patch must be flagged (score {r.score}, threshold {r.threshold})"
    assert r.regions, "an anomaly must come with at least one region"
    assert r.heatmap.max() > 1.0  # 1.0 == threshold level
    for g in r.regions:
        assert 0 <= g.x and 0 <= g.y and g.x + g.w <= 131 and g.y + g.h <= 97 and g.w > 0 and g.h > 0
    top = r.regions[0]
    assert top.score == max(g.score for g in r.regions)
    # the strongest region overlaps the patch
    ix = max(0, min(top.x + top.w, x + w) - max(top.x, x))
    iy = max(0, min(top.y + top.h, y + h) - max(top.y, y))
    assert ix * iy > 0, (top, patch)
    # the heat map is hottest inside the patch
    hot_y, hot_x = np.unravel_index(np.argmax(r.heatmap), r.heatmap.shape)
    assert x - 8 <= hot_x <= x + w + 8 and y - 8 <= hot_y <= y + h + 8


def test_find_regions_maps_boxes_and_drops_specks():
    residual = np.zeros((32, 32), np.float32)
    residual[4:10, 20:28] = 2.0  # 8 x 6 blob, peak 2.0
    residual[20:26, 2:6] = 3.0  # 4 x 6 blob, peak 3.0
    residual[30, 30] = 5.0  # a one-pixel speck: dropped (below the minimum area) although it is the peak
    regions = find_regions(residual, 1.0, (64, 128))  # output image twice as high, four times as wide
    assert regions == (Region(8, 40, 16, 12, 3.0), Region(80, 8, 32, 12, 2.0))
    assert find_regions(residual, 10.0, (64, 128)) == ()
    only_speck = np.zeros((32, 32), np.float32)
    only_speck[5, 5] = 2.0
    assert find_regions(only_speck, 1.0, (32, 32)) == (
        Region(5, 5, 1, 1, 2.0),
    )  # never lose an anomaly's peak


def test_score_cli_streams_json_and_reports_bad_files(tiny_bundle, tiny_dataset, tmp_path):
    goods = _images(tiny_dataset, "test/good")[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG this is not an image")
    proc = run_cli("edge", "score", "--bundle", str(tiny_bundle), str(goods[0]), str(bad), str(goods[1]))
    assert proc.returncode == 1, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(goods[0]), str(bad), str(goods[1])]
    assert "error" in rows[1] and str(bad) in rows[1]["error"]
    assert "warning" in proc.stderr and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    scorer = Scorer(tiny_bundle)
    for row, path in ((rows[0], goods[0]), (rows[2], goods[1])):
        assert set(row) >= {"path", "score", "threshold", "anomalous", "regions"}
        expected = scorer.score(read_image(path))
        assert row["score"] == pytest.approx(expected.score, rel=1e-6)
        assert row["threshold"] == scorer.bundle.threshold
        assert row["anomalous"] == expected.anomalous
        assert row["model"]["sha256"] == read_bundle(tiny_bundle).sha256

    ok = run_cli("edge", "score", "--bundle", str(tiny_bundle), *map(str, goods))
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 2


def test_score_cli_flag_errors(tmp_path):
    assert_one_line_error(run_cli("edge", "score", "--bundle", str(tmp_path)), "required")
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    assert_one_line_error(
        run_cli("edge", "score", "--bundle", str(tmp_path / "nope"), str(img)), "folder not found"
    )


def test_interpreter_falls_back_to_tensorflow_lite_when_litert_is_missing(tiny_bundle, tiny_dataset):
    """Where neither LiteRT nor tflite-runtime imports (a developer machine), tensorflow.lite scores the same."""
    img = _images(tiny_dataset, "test/good")[0]
    code = textwrap.dedent(
        f"""
        import sys, json
        sys.modules["ai_edge_litert"] = None
        sys.modules["tflite_runtime"] = None
        from edge.scorer import Scorer
        from edge.preprocess import read_image
        from edge.interpreter import runtime_name
        r = Scorer({str(tiny_bundle)!r}, threads=1).score(read_image({str(img)!r}))
        print(json.dumps({{"score": r.score, "runtime": runtime_name()}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["runtime"] == "tensorflow"
    assert out["score"] == pytest.approx(
        Scorer(tiny_bundle, threads=1).score(read_image(img)).score, rel=1e-4
    )


def test_alert_regions_point_somewhere_even_below_the_map_threshold():
    residual = np.zeros((16, 16), np.float32)
    residual[4:7, 9:12] = (
        0.6  # peak below the threshold of 1.0: a score-level alert, no pixel above threshold
    )
    assert alert_regions(residual, 1.0, anomalous=False, out_hw=(32, 32)) == ()
    (region,) = alert_regions(residual, 1.0, anomalous=True, out_hw=(32, 32))
    assert (region.x, region.y, region.w, region.h) == (18, 8, 6, 6)
    assert region.score == pytest.approx(0.6)
    assert alert_regions(np.zeros((8, 8), np.float32), 1.0, anomalous=True, out_hw=(8, 8)) == ()
