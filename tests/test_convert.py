"""`python -m convert`: the bundle it writes, that its numbers are the .tflite's own, and parity with Keras.

The run and the int8 bundle are the session fixtures (real synth -> fit -> convert, tests/model_fixtures.py).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from convert.parity import parity_report, spearman
from edge import scoring
from edge.bundle import sha256_file
from edge.errors import UserError
from edge.interpreter import load_interpreter
from edge.preprocess import InputSpec, preprocess, read_image
from edge.scorer import Scorer
from tests.conftest import DESIGN_METRIC_KEYS, assert_one_line_error, run_cli


def _convert(run, data, out, *extra: str):
    """`python -m convert` as a user runs it."""
    return run_cli("convert", "--model", str(run), "--data", str(data), "--out", str(out), *extra)


def _json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def float_model(tiny_run):
    from train.model import load_run

    return load_run(tiny_run)


def _float_decision(float_model, bgr: np.ndarray) -> tuple[float, float]:
    """(score, threshold) of the float Keras model of the run, scored by the shared edge.scoring."""
    model, config = float_model
    x = preprocess(bgr, InputSpec.from_json(config["input"]))
    recon = model.predict(x[None], verbose=0)[0]
    score, _ = scoring.score_reconstruction(x, recon, config["score"]["method"], config["score"]["params"])
    return score, float(config["threshold"])


def _images(dataset, sub: str):
    return sorted(p for p in (dataset / sub).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def test_bundle_json_is_complete_and_describes_this_model(tiny_bundle, tiny_run):
    b = _json(tiny_bundle / "bundle.json")
    assert b["format"] == 2 and isinstance(b["format"], int)
    assert b["name"] == "tiny" and b["created"].endswith("Z")
    assert b["sha256"] == sha256_file(tiny_bundle / "model.tflite")
    config = _json(tiny_run / "config.json")
    assert {k: b["input"][k] for k in config["input"]} == config["input"]
    # uint8 in and out; input scale pinned to 1/255, zero point 0, so camera bytes go straight in
    assert b["input"]["dtype"] == "uint8" and b["output"]["dtype"] == "uint8"
    assert b["input"]["quantization"]["scale"] == pytest.approx(1 / 255, rel=1e-6)
    assert b["input"]["quantization"]["zero_point"] == 0
    assert b["quantization"]["type"] == "int8"
    assert b["parity"]["fallback"] is None  # int8 asked for (tests/model_fixtures.py): no float16 fallback
    assert b["score"] == {
        "method": config["score"]["method"],
        "params": scoring.resolve_params(config["score"]["method"], config["score"]["params"]),
    }
    assert DESIGN_METRIC_KEYS <= set(b["metrics"])
    assert b["metrics"]["threshold"] == b["threshold"]
    assert b["training"]["epochs"] == config["training"]["epochs_run"]
    assert b["training"]["data_fingerprint"] == config["data"]["fingerprint"]
    assert b["training"]["versions"]["convert"]["tensorflow"]
    assert _json(tiny_bundle / "parity.json") == b["parity"]
    assert not list(tiny_bundle.parent.glob(".*partial*"))  # no staging left behind


def test_model_is_full_integer_with_builtin_ops(tiny_bundle):
    interp = load_interpreter(tiny_bundle / "model.tflite", threads=1)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert list(inp["shape"]) == [1, 32, 32, 3] and list(out["shape"]) == [1, 32, 32, 3]
    dtypes = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    assert dtypes <= {"uint8", "int8", "int32"}, dtypes  # no float tensor anywhere: fully quantized
    ops = {op["op_name"] for op in interp._get_ops_details()}
    assert "CONV_2D" in ops and not any(op.startswith("Flex") or op == "CUSTOM" for op in ops), ops


def test_threshold_recalibrated_on_the_converted_models_val_scores(tiny_bundle, tiny_dataset):
    """Recompute the calibration independently: score the held-out good val images with the device scorer."""
    from train.calibrate import calibrate_threshold
    from train.data import load_dataset

    b = _json(tiny_bundle / "bundle.json")
    val_good = [s for s in load_dataset(tiny_dataset).split("val") if not s.anomalous]
    scorer = Scorer(tiny_bundle, threads=1)
    scores = [scorer.score(read_image(s.path)).score for s in val_good]
    cal = calibrate_threshold(scores, target_fpr=b["calibration"]["target_fpr"])
    assert b["calibration"]["n"] == len(val_good)
    assert b["calibration"]["on"] == "converted model"
    assert b["threshold"] == pytest.approx(cal["threshold"], rel=1e-6)
    assert b["calibration"]["rule"] == cal["rule"]


def test_bundle_metrics_are_the_evaluate_output_of_this_tflite(tiny_bundle, tiny_dataset, tmp_path):
    proc = run_cli(
        "train",
        "evaluate",
        "--model",
        str(tiny_bundle),
        "--data",
        str(tiny_dataset),
        "--json",
        str(tmp_path / "m.json"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluated = _json(tmp_path / "m.json")
    stored = _json(tiny_bundle / "bundle.json")["metrics"]
    keys = (
        "image_auroc",
        "pixel_auroc",
        "f1",
        "threshold",
        "n_good",
        "n_anomalous",
        "confusion",
        "operating_points",
    )
    for key in keys:
        assert evaluated[key] == stored[key], key


def test_parity_report_matches_an_independent_float_evaluation(tiny_bundle, tiny_run, tiny_dataset, tmp_path):
    parity = _json(tiny_bundle / "parity.json")
    proc = run_cli(
        "train",
        "evaluate",
        "--model",
        str(tiny_run),
        "--data",
        str(tiny_dataset),
        "--json",
        str(tmp_path / "f.json"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert parity["image_auroc_float"] == pytest.approx(_json(tmp_path / "f.json")["image_auroc"], abs=1e-6)
    assert parity["image_auroc_quant"] == _json(tiny_bundle / "bundle.json")["metrics"]["image_auroc"]
    assert parity["auroc_delta"] == pytest.approx(
        parity["image_auroc_quant"] - parity["image_auroc_float"], abs=1e-5
    )
    assert parity["score_spearman"] > 0.9  # quantization keeps the ranking of dishes
    assert 0 < parity["recon_mean_abs_diff"] < 0.05  # a few int8 steps, not a broken model
    assert parity["attempts"] and parity["attempts"][0]["quantization"]["type"] == "int8"
    assert [a["chosen"] for a in parity["attempts"]].count(True) == 1
    assert all(0 <= a["val_score_rel_diff"] < 0.5 for a in parity["attempts"])


def test_convert_ships_the_attempt_whose_validation_scores_moved_least():
    """Not the one with the smallest test AUROC loss: that would choose the shipped model on test labels."""
    from types import SimpleNamespace

    from convert.bundle_writer import choose_attempt
    from convert.parity import score_rel_diff

    assert score_rel_diff([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert score_rel_diff([1.0, 2.0], [1.1, 1.8]) == pytest.approx((0.1 / 1.0 + 0.2 / 2.0) / 2)
    best_on_test = SimpleNamespace(val_drift=0.02, loss=0.0)
    closest_on_val = SimpleNamespace(val_drift=0.01, loss=0.004)
    assert choose_attempt([best_on_test, closest_on_val]) is closest_on_val
    assert choose_attempt([best_on_test]) is best_on_test


def test_auto_falls_back_to_float16_only_when_every_int8_attempt_misses_parity():
    """The planning and the stop rule of `--quant auto`, with the measurement replaced by a parity verdict."""
    from types import SimpleNamespace

    from convert.__main__ import build_parser
    from convert.bundle_writer import attempts, convert_until_faithful
    from convert.tflite import ConvertOptions

    args = build_parser().parse_args(["--model", "r", "--data", "d", "--out", "o"])
    assert args.quant == "auto"  # the default
    auto = ConvertOptions.requested("auto", representative=50, seed=3, search="numpy").validate()
    assert (auto.quant, auto.fallback) == ("int8", "float16")
    plan = attempts(auto, n_train=400)
    assert [(o.quant, o.representative, o.augment) for o in plan] == [
        ("int8", 50, True),
        ("int8", 200, False),
        ("float16", 200, True),  # float16 ignores the representative images
    ]
    assert (plan[-1].seed, plan[-1].search, plan[-1].fallback) == (3, "numpy", None)
    assert [o.quant for o in attempts(ConvertOptions.requested("int8"), 400)] == ["int8", "int8"]
    assert [o.quant for o in attempts(ConvertOptions.requested("float16"), 400)] == ["float16"]

    def verdicts(*ok):
        made = []

        def measure(opts):
            made.append(opts.quant)
            return SimpleNamespace(
                opts=opts, parity={"within_tolerance": ok[len(made) - 1], "tolerance": 0.005}, loss=0.01
            )

        return made, measure

    made, measure = verdicts(False, False, True)
    assert [c.opts.quant for c in convert_until_faithful(plan, measure)] == ["int8", "int8", "float16"]
    made, measure = verdicts(True, True, True)
    assert [c.opts.quant for c in convert_until_faithful(plan, measure)] == made == ["int8"]
    made, measure = verdicts(
        None, False, True
    )  # parity undefined (one class in test): nothing to fall back on
    assert len(convert_until_faithful(plan, measure)) == 1 and made == ["int8"]
    made, measure = verdicts(False, False)
    assert len(convert_until_faithful(plan[:2], measure)) == 2  # --quant int8: int8 whatever parity says
    with pytest.raises(UserError, match="fallback"):
        ConvertOptions(quant="float16", fallback="float16").validate()


def test_auto_ships_float16_when_int8_misses_parity(tiny_run, tiny_dataset, tmp_path, caplog):
    """The whole fallback through real conversions. Parity is forced to fail with an impossible tolerance (no
    AUROC loss of a tiny model is reliably over 0.005), so every attempt is made and float16, whose scores of the
    good validation images move least from the float model's, ships."""
    from convert.bundle_writer import build_bundle
    from convert.tflite import ConvertOptions

    out = tmp_path / "fallback"
    with caplog.at_level("WARNING", logger="convert.bundle_writer"):
        b = build_bundle(
            str(tiny_run), str(tiny_dataset), str(out), ConvertOptions.requested("auto"), tolerance=-1
        )
    assert b["quantization"]["type"] == "float16" and b["input"]["dtype"] == "float32"
    tried = b["parity"]["attempts"]
    assert [a["quantization"]["type"] for a in tried] == ["int8", "int8", "float16"]
    assert [a["chosen"] for a in tried] == [False, False, True]
    assert tried[2]["val_score_rel_diff"] < min(
        tried[0]["val_score_rel_diff"], tried[1]["val_score_rel_diff"]
    )
    assert b["parity"]["fallback"] == "float16" and _json(out / "parity.json") == b["parity"]
    assert "shipping float16 instead" in caplog.text
    scorer = Scorer(out, threads=1)  # the device loads it, and its threshold is the float16 model's own
    assert scorer.bundle.raw["quantization"]["type"] == "float16"
    assert b["metrics"]["image_auroc"] == tried[2]["image_auroc"]


def test_same_decision_as_the_float_model_on_clear_cases(tiny_bundle, float_model, tiny_dataset):
    scorer = Scorer(tiny_bundle, threads=1)
    goods = [read_image(p) for p in _images(tiny_dataset, "test/good")]
    float_scores = [_float_decision(float_model, g) for g in goods]
    good = goods[int(np.argmin([s for s, _ in float_scores]))]  # the clearest good dish
    defect = good.copy()
    h, w = defect.shape[:2]
    cv2.rectangle(defect, (w // 4, h // 4), (w // 2, h // 2), (255, 0, 255), -1)  # a large magenta object
    for img, expected in ((good, False), (defect, True)):
        f_score, f_threshold = _float_decision(float_model, img)
        assert (f_score > f_threshold) == expected, (
            "precondition: the float model itself gets this clear case right"
        )
        r = scorer.score(img)
        assert r.anomalous == expected, (r.score, r.threshold, f_score, f_threshold)


def test_float32_conversion_reproduces_keras_scores(tiny_run, float_model, tiny_dataset, tmp_path):
    """The SavedModel export route keeps the weights: a float32 .tflite scores like Keras to float precision."""
    out = tmp_path / "f32"
    proc = _convert(tiny_run, tiny_dataset, out, "--quant", "float32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    b = _json(out / "bundle.json")
    assert b["quantization"]["type"] == "float32" and b["input"]["dtype"] == "float32"
    assert b["parity"]["recon_mean_abs_diff"] < 1e-4
    assert b["parity"]["score_spearman"] > 0.999
    scorer = Scorer(out, threads=1)
    img = read_image(_images(tiny_dataset, "test/good")[0])
    assert scorer.score(img).score == pytest.approx(_float_decision(float_model, img)[0], rel=1e-3)
    # converting again over an existing bundle replaces it atomically
    proc = _convert(tiny_run, tiny_dataset, out, "--quant", "float16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _json(out / "bundle.json")["quantization"]["type"] == "float16"
    Scorer(out)


def test_convert_errors_are_one_line(tiny_run, tiny_dataset, tmp_path):
    assert_one_line_error(
        _convert(tmp_path / "none", tiny_dataset, tmp_path / "b"),
        "run folder not found",
    )
    assert_one_line_error(
        _convert(tiny_run, tiny_dataset, tmp_path / "b", "--quant", "int4"),
        "--quant",
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    proc = run_cli("convert", "--model", str(tiny_run), "--data", str(tiny_dataset), "--out", str(busy))
    assert_one_line_error(proc, str(busy), "refusing to overwrite")
    assert (busy / "notes.txt").read_text() == "mine"


def test_parity_numbers():
    y = np.array([0, 0, 0, 1, 1, 1], bool)
    f = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    recon = np.zeros((6, 4, 4, 3), np.float32)
    same = parity_report(y, f, f, recon, recon)
    assert (
        same["auroc_delta"] == 0 and same["within_tolerance"] and same["score_spearman"] == pytest.approx(1.0)
    )
    swapped = f.copy()
    swapped[[2, 3]] = swapped[[3, 2]]  # one good and one anomalous trade places
    worse = parity_report(y, f, swapped, recon, recon + 0.25)
    assert worse["image_auroc_quant"] == pytest.approx(8 / 9)
    assert worse["auroc_loss"] == pytest.approx(1 / 9, abs=1e-6) and worse["within_tolerance"] is False
    assert worse["recon_mean_abs_diff"] == pytest.approx(0.25)
    assert spearman(f, -f) == pytest.approx(-1.0)
    assert spearman(f, np.ones(6)) is None
