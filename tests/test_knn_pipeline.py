"""Feature-distance (kNN) methods through the real pipeline: fit -> evaluate -> convert -> bundle -> edge Scorer.

Why through the CLIs and a TF-free subprocess: the device runs `edge` with LiteRT only, and the bundle's bank must
have been rebuilt from the converted model's own features; only the real path proves both. EfficientNet-Lite2 (the
default backbone) at 64 px (an 8x8 patch grid) keeps the whole module well under a minute on two cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DESIGN_METRIC_KEYS, ROOT, assert_one_line_error, run_cli
from tests.model_fixtures import KNN_SIZE


def _ok(proc, what: str):
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
    return proc


def _images(dataset: Path, sub: str) -> list[Path]:
    return sorted(p for p in (dataset / sub).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def test_fit_writes_a_knn_run_and_evaluate_reports_it(knn_run, tiny_dataset, tmp_path):
    config = json.loads((knn_run / "config.json").read_text())
    assert config["kind"] == "knn" and config["score"]["method"] == "effnet-knn"
    assert config["input"]["height"] == KNN_SIZE and config["features"]["grid"] == [8, 8]
    # the default backbone, recorded so the run can be made again; Lite2's stride-8 (48), stride-16 (120) and
    # coarse stride-32 (208) channels
    assert config["args"]["backbone"] == config["features"]["backbone"] == "efficientnet-lite2"
    assert config["features"]["dim"] == 48 + 120 + 208
    assert config["args"]["project"] == 0 and "project" not in config["features"]
    assert (knn_run / "bank.npz").is_file() and (knn_run / "model.keras").is_file()
    out = tmp_path / "eval.json"
    _ok(
        run_cli(
            "train", "evaluate", "--model", str(knn_run), "--data", str(tiny_dataset), "--json", str(out)
        ),
        "eval",
    )
    result = json.loads(out.read_text())
    assert DESIGN_METRIC_KEYS <= set(result), DESIGN_METRIC_KEYS - set(result)
    assert result["score_method"] == "effnet-knn"
    assert result["threshold"] == pytest.approx(config["threshold"])


def test_bundle_ships_a_bank_rebuilt_from_the_converted_model(knn_bundle, knn_run):
    b = json.loads((knn_bundle / "bundle.json").read_text())
    assert b["score"]["method"] == "effnet-knn"
    assert b["output"]["dtype"] == "float32" and b["input"]["dtype"] == "uint8"
    assert b["quantization"]["type"] == "int8" and b["quantization"]["output"] == "float32"
    meta = b["score"]["params"]["bank"]
    import hashlib

    assert hashlib.sha256((knn_bundle / "bank.npz").read_bytes()).hexdigest() == meta["sha256"]
    run_meta = json.loads((knn_run / "config.json").read_text())["score"]["params"]["bank"]
    assert meta["sha256"] != run_meta["sha256"]  # the int8 model's features, not the float run's
    assert meta["distance"] == run_meta["distance"] == "calibrated"  # carried from run to bundle
    # the fine search ships as an int8 model over the bank's rows, one query per cell of the 8x8 grid
    search = meta["search"]
    assert search["file"] == "search.tflite" and search["quantization"] == "int8" and search["queries"] == 64
    assert hashlib.sha256((knn_bundle / "search.tflite").read_bytes()).hexdigest() == search["sha256"]
    assert b["format"] == 2
    assert b["calibration"]["on"] == "converted model"
    assert b["calibration"]["split"] == "val+train-held-out"
    assert b["calibration"]["n"] == b["calibration"]["n_val"] + b["calibration"]["n_train_held_out"]
    p = b["parity"]
    assert "feature_mean_abs_diff" in p and "recon_mean_abs_diff" not in p
    assert p["image_auroc_float"] is not None and p["image_auroc_quant"] is not None
    assert p["score_spearman"] > 0.8
    assert b["metrics"]["score_method"] == "effnet-knn"


def test_bundle_bank_keeps_the_run_s_coreset_rows(knn_bundle, knn_run):
    """The int8 bank holds the same patches as the float run's, row for row, so parity measures quantization."""
    import io

    config = json.loads((knn_run / "config.json").read_text())
    keep = np.load(knn_run / config["coreset"]["file"])
    assert len(keep) == config["coreset"]["kept"] and keep.max() < config["coreset"]["of"]
    # the fixture's bank offers the coreset 2 augmented copies of each photo (convert must make the same ones);
    # the selection indexes the fine patches first, then the coarse stage's cells (default on for effnet-knn)
    n_train, (h, w) = config["data"]["n_train"], config["features"]["grid"]
    coarse = config["features"]["coarse"]
    g = h // coarse["step"]
    assert (coarse["step"], coarse["channels"] + coarse["dim"]) == (4, config["features"]["dim"])
    fine_rows = n_train * 3 * h * w
    assert config["args"]["bank_augment"] == 2 and config["coreset"]["of"] == fine_rows + n_train * 3 * g * g
    fine_keep = keep[keep < fine_rows]
    assert fine_keep.max() >= n_train * h * w  # some kept rows come from the copies
    assert 0 < len(keep) - len(fine_keep) < n_train * 3 * g * g  # and some (not all) coarse cells are kept
    for key, dim in (("patches", coarse["channels"]), ("coarse", coarse["dim"])):
        with np.load(knn_run / "bank.npz") as z:
            run_rows = z[key].astype(np.float32)
        with np.load(io.BytesIO((knn_bundle / "bank.npz").read_bytes())) as z:
            bundle_rows = z[key].astype(np.float32)
        kept = len(fine_keep) if key == "patches" else len(keep) - len(fine_keep)
        assert bundle_rows.shape == run_rows.shape == (kept, dim)
        same_row = np.linalg.norm(bundle_rows - run_rows, axis=1)
        assert np.median(same_row) < 0.2 * np.median(np.linalg.norm(run_rows, axis=1)), key
        if (
            key == "patches"
        ):  # (at 64 px the 2x2 coarse cells of a photo pool to the same vector: no roll test)
            other_row = np.linalg.norm(bundle_rows - np.roll(run_rows, 1, axis=0), axis=1)
            assert np.median(same_row) < 0.5 * np.median(other_row)


def test_bundle_refuses_a_tampered_bank(knn_bundle, tiny_dataset, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(knn_bundle, copy)
    data = bytearray((copy / "bank.npz").read_bytes())
    data[-100] ^= 0xFF
    (copy / "bank.npz").write_bytes(bytes(data))
    img = _images(tiny_dataset, "test/good")[0]
    assert_one_line_error(run_cli("edge", "score", "--bundle", str(copy), str(img)), "bank.npz", "sha256")
    (copy / "bank.npz").unlink()
    assert_one_line_error(run_cli("edge", "score", "--bundle", str(copy), str(img)), "bank.npz")
    shutil.copy(knn_bundle / "bank.npz", copy / "bank.npz")
    data = bytearray((copy / "search.tflite").read_bytes())
    data[-100] ^= 0xFF
    (copy / "search.tflite").write_bytes(bytes(data))
    assert_one_line_error(
        run_cli("edge", "score", "--bundle", str(copy), str(img)), "search.tflite", "sha256"
    )


def test_bundle_search_model_scores_as_the_numpy_search_does(knn_bundle, tiny_dataset):
    """The device's int8 search and the numpy search it replaced give the same scores and decisions."""
    from edge.preprocess import read_image
    from edge.scorer import Scorer

    scorer = Scorer(knn_bundle, threads=1, bank_rows=True)  # the rows, for the numpy search below
    assert scorer.bank.search is not None
    images = [read_image(p) for p in _images(tiny_dataset, "test")]  # good and defective
    with_model = np.array([r.score for r in scorer.score_batch(images)])
    scorer.bank = replace(scorer.bank, search=None)
    in_numpy = np.array([r.score for r in scorer.score_batch(images)])
    np.testing.assert_allclose(with_model, in_numpy, rtol=0.01)


SCORE_TF_FREE = textwrap.dedent(
    """
    import json, sys
    sys.modules["tensorflow"] = None  # any import of TensorFlow now fails loudly
    sys.modules["torch"] = None
    import cv2
    from edge.preprocess import read_image
    from edge.scorer import Scorer

    scorer = Scorer(sys.argv[1], threads=1)
    out = []
    for path in sys.argv[2:]:
        bgr = read_image(path)
        r = scorer.score(bgr)
        assert r.heatmap.shape == bgr.shape[:2] and r.residual_map.shape == (scorer.bundle.input.height,) * 2
        out.append({"path": path, "score": r.score, "anomalous": r.anomalous, "regions": len(r.regions)})
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "torch", "keras")
                   and sys.modules[m] is not None)
    print(json.dumps({"results": out, "threshold": scorer.bundle.threshold, "heavy": heavy}))
    """
)


def _magenta(src: Path, dst: Path) -> Path:
    import cv2

    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    img[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = (255, 0, 255)
    cv2.imwrite(str(dst), img)
    return dst


def test_edge_scorer_is_tf_free_and_flags_an_obvious_defect(knn_bundle, knn_run, tiny_dataset, tmp_path):
    goods = _images(tiny_dataset, "test/good") + _images(tiny_dataset, "train/good")[:4]
    bad = [_magenta(g, tmp_path / f"magenta_{i}.png") for i, g in enumerate(goods)]
    proc = subprocess.run(
        [sys.executable, "-c", SCORE_TF_FREE, str(knn_bundle), *map(str, goods + bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    _ok(proc, "TF-free scoring")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    res = out["results"]
    good_q, bad_q = res[: len(goods)], res[len(goods) :]
    # the clearest good image (lowest int8 score) and the same image with a magenta patch
    i = int(np.argmin([r["score"] for r in good_q]))
    assert not good_q[i]["anomalous"], good_q[i]
    assert bad_q[i]["anomalous"] and bad_q[i]["regions"] >= 1, bad_q[i]
    assert all(r["anomalous"] for r in bad_q), bad_q
    assert np.mean([b["score"] for b in bad_q]) > 2 * np.mean([g["score"] for g in good_q])

    # the float run decides the same on these clear cases
    from edge.preprocess import InputSpec, preprocess, read_image
    from train.knn_fit import score_images

    config = json.loads((knn_run / "config.json").read_text())
    spec = InputSpec.from_json(config["input"])
    # (each model has its own threshold, calibrated on its own scores: take the float model's clearest good)
    x = np.stack([preprocess(read_image(p), spec) for p in goods + bad])
    f_scores, f_maps = score_images(knn_run, x)
    assert f_maps.shape == (len(x), KNN_SIZE, KNN_SIZE)
    f_good, f_bad = f_scores[: len(goods)], f_scores[len(goods) :]
    j = int(np.argmin(f_good))
    assert f_good[j] <= config["threshold"] < f_bad[j], (f_good, f_bad, config["threshold"])
    assert (f_bad > config["threshold"]).all(), (f_bad, config["threshold"])


def test_cae_knn_fits_on_a_trained_cae_and_scores(tiny_run, tiny_dataset, tmp_path):
    out = tmp_path / "cae_knn"
    args = ("--data", str(tiny_dataset), "--out", str(out), "--cae-run", str(tiny_run), "--coreset", "0.05",
            "--global-weight", "0.5", "--distance", "relative")  # fmt: skip
    _ok(run_cli("train", "fit", "--method", "cae-knn", *args), "fit cae-knn")
    config = json.loads((out / "config.json").read_text())
    cae_input = json.loads((tiny_run / "config.json").read_text())["input"]
    assert config["score"]["method"] == "cae-knn" and config["input"] == cae_input
    assert config["args"]["coreset_fraction"] == 0.05 and config["threshold"] > 0
    assert config["score"]["params"]["bank"]["distance"] == "relative"
    h, w = config["features"]["grid"]
    assert config["args"]["bank_augment"] == 0
    assert config["coreset"]["of"] == config["data"]["n_train"] * h * w
    assert config["score"]["params"]["bank"]["global_weight"] == 0.5

    from edge.preprocess import InputSpec
    from train.knn_fit import score_images

    spec = InputSpec.from_json(config["input"])
    x = np.random.default_rng(0).random((3, spec.height, spec.width, 3), dtype=np.float32)
    scores, maps = score_images(out, x)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    assert maps.shape == (3, spec.height, spec.width)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [("distance", "cosine", "args.distance 'cosine'"), ("bank_augment", -1, "args.bank_augment -1")],
)
def test_convert_refuses_a_run_with_a_garbled_bank_recipe(
    knn_run, tiny_dataset, tmp_path, field, value, needle
):
    run = tmp_path / "run"
    shutil.copytree(knn_run, run)
    config = json.loads((run / "config.json").read_text())
    config["args"][field] = value
    (run / "config.json").write_text(json.dumps(config))
    proc = run_cli("convert", "--model", str(run), "--data", str(tiny_dataset), "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "config.json", needle)


def test_fit_knn_flag_errors_are_one_line(tiny_dataset, tmp_path):
    base = ("train", "fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"))
    assert_one_line_error(run_cli(*base, "--method", "cae-knn"), "--cae-run")
    assert_one_line_error(run_cli(*base, "--method", "effnet-knn", "--image-size", "60"), "--image-size")
    assert_one_line_error(run_cli(*base, "--method", "effnet-knn", "--coreset", "2"), "--coreset")
    assert_one_line_error(
        run_cli(*base, "--method", "effnet-knn", "--global-weight", "-1"), "--global-weight"
    )
    assert_one_line_error(run_cli(*base, "--method", "effnet-knn", "--bank-augment", "99"), "--bank-augment")
    assert_one_line_error(
        run_cli(*base, "--method", "effnet-knn", "--coarse-coreset", "0"), "--coarse-coreset"
    )


def test_convert_reads_the_coarse_coreset_fraction_the_run_was_made_with(knn_run):
    """`--coarse-coreset` is recorded in the run's args; convert's recipe takes it, and 25 % for older runs."""
    from convert.bundle_writer import _knn_recipe

    config = json.loads((knn_run / "config.json").read_text())
    assert config["args"]["coarse_coreset"] == 0.25
    assert _knn_recipe(knn_run, config).coarse_fraction == 0.25
    config["args"]["coarse_coreset"] = 0.0625
    assert _knn_recipe(knn_run, config).coarse_fraction == 0.0625
    del config["args"]["coarse_coreset"]
    assert _knn_recipe(knn_run, config).coarse_fraction == 0.25


def test_projected_run_converts_to_a_narrower_grid_that_the_edge_scores(tiny_dataset, tmp_path):
    """--project: the model outputs the projected fine channels (its 1x1 convolution converts with it), so the
    int8 model, the bank, the search model and the device all work on the narrower grid, and an obvious defect
    still stands out."""
    from edge.interpreter import load_interpreter
    from edge.preprocess import read_image
    from edge.scorer import Scorer

    run, bundle = tmp_path / "run", tmp_path / "bundle"
    args = ("--data", str(tiny_dataset), "--out", str(run), "--image-size", str(KNN_SIZE), "--project", "16")
    _ok(run_cli("train", "fit", "--method", "effnet-knn", *args), "fit --project")
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["project"] == 16 and config["features"]["project"]["dims"] == 16
    assert (
        config["features"]["project"]["of"] == 48 + 120 and 0 < config["features"]["project"]["variance"] < 1
    )
    assert config["features"]["coarse"]["channels"] == 16 and config["features"]["dim"] == 16 + 208
    args = ("--model", str(run), "--data", str(tiny_dataset), "--out", str(bundle), "--representative", "20")
    _ok(run_cli("convert", *args, "--quant", "int8"), "convert a projected run")
    meta = json.loads((bundle / "bundle.json").read_text())["score"]["params"]["bank"]
    assert meta["dim"] == 16 and meta["coarse"]["channels"] == 16 and meta["search"]["queries"] == 64
    interp = load_interpreter(bundle / "model.tflite", threads=1)
    assert interp.get_output_details()[0]["shape"].tolist() == [1, 8, 8, 16 + 208]

    scorer = Scorer(bundle, threads=1)
    goods = _images(tiny_dataset, "test/good")
    bad = [_magenta(g, tmp_path / f"magenta_{i}.png") for i, g in enumerate(goods)]
    good_s = [scorer.score(read_image(p)).score for p in goods]
    bad_s = [scorer.score(read_image(p)).score for p in bad]
    assert min(bad_s) > scorer.bundle.threshold >= min(good_s), (good_s, bad_s, scorer.bundle.threshold)

    over = ("--data", str(tiny_dataset), "--out", str(tmp_path / "r2"), "--image-size", str(KNN_SIZE))
    assert_one_line_error(
        run_cli("train", "fit", "--method", "effnet-knn", *over, "--project", "168"), "--project 168"
    )
