"""Shared fixtures: a real Mosquitto broker per test, and a clean subprocess environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.broker import Broker

# session fixtures tiny_dataset / tiny_run / tiny_bundle (real synth -> fit -> convert)
pytest_plugins = ["tests.model_fixtures"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def broker(tmp_path):
    b = Broker(workdir=tmp_path / "broker")
    (tmp_path / "broker").mkdir(exist_ok=True)
    b.start()
    yield b
    b.stop()


# The keys `train evaluate --json` and bundle.json `metrics` must carry (DESIGN section 3).
DESIGN_METRIC_KEYS = frozenset(
    {
        "image_auroc",
        "pixel_auroc",
        "f1",
        "precision",
        "recall",
        "threshold",
        "n_good",
        "n_anomalous",
        "per_defect",
        "score_method",
        "model",
    }
)


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m <module> args...` as a user would; returns CompletedProcess with text output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def assert_one_line_error(proc, *needles: str) -> None:
    """A user error: non-zero exit, exactly one line on stderr, no traceback, naming what is wrong."""
    assert proc.returncode != 0, proc
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def standin_bundle(tmp_path: Path) -> Path:
    """A folder that passes the "files exist" checks (deploy's, the config's); for tests that never load a model."""
    b = tmp_path / "standin-bundle"
    b.mkdir()
    (b / "bundle.json").write_text("{}")
    (b / "model.tflite").write_bytes(b"")
    return b
