"""Session-scoped fixtures, built once per session: a tiny synthetic dataset, a tiny trained CAE run and its int8
bundle, a tiny effnet-knn run and its int8 bundle, and a short clip of the CAE's clearest good and anomalous plates.

Why through the real CLIs: the daemon's and the converter's tests must exercise what a user runs
(`train synth` -> `train fit` -> `convert`), not a hand-made model. Tiny means 32 px, three levels of 8-8-16
filters and a few epochs: well under a minute on two cores, and still a model that separates an obvious defect.
Registered in tests/conftest.py with `pytest_plugins`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

TINY_DATA_SIZE = 64  # px of the synthetic images (the model resizes them to TINY_SIZE)
TINY_SIZE = 32
TINY_FIT_ARGS = ("--epochs", "12", "--batch-size", "8", "--image-size", str(TINY_SIZE), "--filters", "8,8,16")


def _check(proc, what: str) -> None:
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """`train synth --preset tiny` (MVTec layout with masks) at 64 px."""
    out = tmp_path_factory.mktemp("tiny_data") / "tiny"
    _check(
        run_cli(
            "train",
            "synth",
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--size",
            str(TINY_DATA_SIZE),
            "--seed",
            "0",
        ),
        "train synth --preset tiny",
    )
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> Path:
    """`train fit` of a tiny CAE on `tiny_dataset`: RUN_DIR with model.keras and config.json."""
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    _check(
        run_cli(
            "train", "fit", "--data", str(tiny_dataset), "--out", str(out), *TINY_FIT_ARGS, "--seed", "1"
        ),
        "train fit (tiny)",
    )
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tiny_dataset, tmp_path_factory) -> Path:
    """`python -m convert` (int8, uint8 I/O) of `tiny_run`: BUNDLE_DIR with model.tflite + bundle.json.

    Treat it as read-only; copy it (shutil.copytree) before changing anything in it.
    """
    out = tmp_path_factory.mktemp("tiny_bundle") / "tiny"
    # int8 asked for explicitly: the tests check int8 properties, and `--quant auto` would ship float16 on a host
    # where the tiny model's int8 misses parity (one rank swap of its 28 test images moves AUROC by 0.01)
    args = ("--model", str(tiny_run), "--data", str(tiny_dataset), "--out", str(out), "--quant", "int8")
    _check(run_cli("convert", *args), "convert (tiny, int8)")
    return out


KNN_SIZE = 64  # px: EfficientNet-Lite2 (the default backbone) on an 8x8 patch grid, well under a minute


@pytest.fixture(scope="session")
def knn_run(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("knn_run") / "run"
    # the default distance (calibrated: its row scales must skip a photo's own augmented copies, in fit and in
    # convert) with augmented copies; cae-knn's test runs the relative distance and no copies
    args = ("--data", str(tiny_dataset), "--out", str(out), "--image-size", str(KNN_SIZE),
            "--bank-augment", "2")  # fmt: skip
    _check(run_cli("train", "fit", "--method", "effnet-knn", *args), "fit effnet-knn")
    return out


@pytest.fixture(scope="session")
def knn_bundle(knn_run, tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("knn_bundle") / "knn"
    args = ("--model", str(knn_run), "--data", str(tiny_dataset), "--out", str(out), "--representative", "20")
    _check(
        run_cli("convert", *args, "--quant", "int8"), "convert effnet-knn"
    )  # int8 whatever its parity here
    return out


@pytest.fixture(scope="session")
def clear_data(tiny_dataset, tiny_bundle, tmp_path_factory) -> Path:
    """The clearest good and anomalous test images for the tiny model: the clip's verdicts are then known."""
    from edge.preprocess import IMAGE_SUFFIXES, read_image
    from edge.scorer import Scorer

    s = Scorer(tiny_bundle, threads=1)
    scored = []
    for p in sorted((tiny_dataset / "test").rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            defect = p.relative_to(tiny_dataset / "test").parts[0]
            scored.append((s.score(read_image(p)).score / s.bundle.threshold, defect, p))
    good = min((x for x in scored if x[1] == "good"), key=lambda x: x[0])
    bad = max((x for x in scored if x[1] != "good"), key=lambda x: x[0])
    assert good[0] < 0.9 and bad[0] > 1.2, f"the tiny model has no clear case: good {good}, anomalous {bad}"
    out = tmp_path_factory.mktemp("clear") / "data"
    for _sev, defect, p in (good, bad):
        (out / "test" / defect).mkdir(parents=True)
        shutil.copy(p, out / "test" / defect / p.name)
    return out


@pytest.fixture(scope="session")
def clip(clear_data, tmp_path_factory) -> dict:
    """A 320x240, 10 fps clip: 6 plates over 2 slots, good and anomalous alternating (about 26 s)."""
    d = tmp_path_factory.mktemp("clip")
    args = ("--size", "320x240", "--fps", "10", "--plates", "6", "--rest", "2.5", "--seed", "1")
    proc = run_cli(
        "edge",
        "clip",
        "--data",
        str(clear_data),
        "--out",
        str(d / "c.mp4"),
        "--timeline",
        str(d / "c.json"),
        *args,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((d / "c.json").read_text())
