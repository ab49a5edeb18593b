"""The kitchen's own threshold on the device: `model.threshold` / `model.target_fpr` (edge.calibration).

The bundle is the session's real tiny int8 bundle (tests/model_fixtures.py); its calibration stores the held-out
good scores the device applies the training side's rule to.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from edge.calibration import ThresholdOverride, threshold_rule
from edge.errors import UserError
from edge.preprocess import read_image
from edge.scorer import Scorer
from tests.conftest import assert_one_line_error, run_cli


def _good_image(dataset):
    return next(p for p in sorted((dataset / "test" / "good").rglob("*.png")))


def _without_scores(bundle, tmp_path):
    """A copy of `bundle` as converted before bundles stored their calibration scores."""
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    meta = json.loads((old / "bundle.json").read_text())
    del meta["calibration"]["good_scores"]
    (old / "bundle.json").write_text(json.dumps(meta))
    return old


def test_the_bundle_stores_its_good_scores_and_the_rule_gives_its_threshold_back(tiny_bundle):
    s = Scorer(tiny_bundle, threads=1)
    cal = s.bundle.calibration
    scores = cal["good_scores"]
    assert len(scores) == cal["n"] and scores == sorted(scores)
    assert min(scores) == cal["val_score_min"] and max(scores) == cal["val_score_max"]
    bundle_threshold = s.bundle.threshold
    source = s.use_threshold(ThresholdOverride(target_fpr=cal["target_fpr"]))
    assert s.bundle.threshold == bundle_threshold, (
        "the device's rule at the bundle's own rate is the bundle's"
    )
    assert "model.target_fpr" in source and cal["rule"] in source


@pytest.mark.parametrize("fpr", [0.2, 0.5])
def test_target_fpr_takes_the_order_statistic_of_the_good_scores(tiny_bundle, fpr):
    s = Scorer(tiny_bundle, threads=1)
    scores = np.array(s.bundle.calibration["good_scores"])
    s.use_threshold(ThresholdOverride(target_fpr=fpr))
    t = s.bundle.threshold
    if len(scores) >= math.ceil(1 / fpr):
        assert t in scores and np.sum(scores > t) == math.floor(
            fpr * len(scores)
        )  # at most fpr of them above
    else:
        assert t == pytest.approx(scores.max() * 1.10)
    assert t == threshold_rule(scores, fpr).threshold


def test_an_absolute_threshold_decides_the_verdict_and_scales_the_heat_map(tiny_bundle, tiny_dataset):
    img = read_image(_good_image(tiny_dataset))
    s = Scorer(tiny_bundle, threads=1)
    base = s.score(img)
    for factor, anomalous in ((0.5, True), (2.0, False)):
        s.use_threshold(ThresholdOverride(threshold=base.score * factor))
        r = s.score(img)
        assert r.threshold == pytest.approx(base.score * factor) and r.anomalous is anomalous
        assert r.score == pytest.approx(base.score, rel=1e-6)
        assert r.heatmap.max() == pytest.approx(base.heatmap.max() * base.threshold / r.threshold, rel=1e-4)
        assert bool(r.regions) is anomalous
    assert s.use_threshold(ThresholdOverride()) == "the bundle's" and s.bundle.threshold == base.threshold


def test_a_bundle_without_stored_scores_refuses_a_rate_but_takes_a_threshold(tiny_bundle, tmp_path):
    old = _without_scores(tiny_bundle, tmp_path)
    s = Scorer(old, threads=1)
    with pytest.raises(UserError, match=r"^model\.target_fpr: bundle .* has no calibration\.good_scores"):
        s.use_threshold(ThresholdOverride(target_fpr=0.05))
    s.use_threshold(ThresholdOverride(threshold=0.123))
    assert s.bundle.threshold == 0.123


def test_check_config_refuses_a_rate_for_a_bundle_without_scores(tiny_bundle, tmp_path):
    from tests.daemon_helpers import write_config

    old = _without_scores(tiny_bundle, tmp_path)
    args = (str(tmp_path / "c.mp4"), [{"id": "left", "rect": [0, 0, 32, 32]}])
    rest = ("mqtt://127.0.0.1:1883", tmp_path / "spool.sqlite")
    cfg = write_config(tmp_path / "old.toml", *args, old, *rest, model={"target_fpr": 0.05})
    assert_one_line_error(
        run_cli("edge", "check-config", str(cfg)), "model.target_fpr", "no calibration.good_scores"
    )
    ok = write_config(tmp_path / "ok.toml", *args, tiny_bundle, *rest, model={"target_fpr": 0.05})
    assert run_cli("edge", "check-config", str(ok)).returncode == 0


@pytest.mark.parametrize(
    "override, needle",
    [
        (ThresholdOverride(threshold=-1.0), "model.threshold: must be a positive number"),
        (ThresholdOverride(threshold=float("nan")), "model.threshold"),
        (ThresholdOverride(target_fpr=1.0), "model.target_fpr: must be in (0, 1)"),
        (ThresholdOverride(threshold=1.0, target_fpr=0.1), "model.threshold and model.target_fpr: set one"),
    ],
)
def test_override_errors_name_the_setting(override, needle):
    with pytest.raises(UserError) as err:
        override.validate()
    assert str(err.value).startswith(needle)


def test_score_cli_takes_a_rate_or_a_threshold(tiny_bundle, tiny_dataset):
    img = str(_good_image(tiny_dataset))
    scores = json.loads((tiny_bundle / "bundle.json").read_text())["calibration"]["good_scores"]
    proc = run_cli("edge", "score", "--bundle", str(tiny_bundle), "--target-fpr", "0.5", img)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["threshold"] == threshold_rule(scores, 0.5).threshold
    proc = run_cli("edge", "score", "--bundle", str(tiny_bundle), "--threshold", "1e-9", img)
    row = json.loads(proc.stdout)
    assert row["threshold"] == 1e-9 and row["anomalous"] is True
    assert_one_line_error(
        run_cli(
            "edge", "score", "--bundle", str(tiny_bundle), "--threshold", "1", "--target-fpr", "0.1", img
        ),
        "--threshold and --target-fpr",
    )


def test_payload_numbers_keep_significant_digits():
    """A fixed number of decimals would publish a small threshold (or an MSE score) as 0."""
    from edge.events import significant

    assert significant(1e-9) == 1e-9 and significant(0.000512345678) == 0.0005123457
    assert significant(1.23456789) == 1.234568 and significant(1234.56789) == 1234.568
