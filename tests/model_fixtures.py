"""Session-scoped fixtures: a tiny synthetic dataset, a tiny trained run and its int8 bundle, built once per session.

Why through the real CLIs: the daemon's and the converter's tests must exercise what a user runs
(`train synth` -> `train fit` -> `convert`), not a hand-made model. Tiny means 32 px, three levels of 8-8-16
filters and a few epochs: well under a minute on two cores, and still a model that separates an obvious defect.
Registered in tests/conftest.py with `pytest_plugins`.
"""

from __future__ import annotations

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
