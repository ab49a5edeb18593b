"""The command-line plumbing every command shares: --help works, bad usage is one line and exit 2."""

import pytest

from tests.conftest import assert_one_line_error, run_cli


@pytest.mark.parametrize("module", ["train", "edge"])
def test_help(module):
    proc = run_cli(module, "--help")
    assert proc.returncode == 0
    assert "usage" in proc.stdout


@pytest.mark.parametrize("module", ["train", "edge"])
def test_unknown_subcommand_is_one_line(module):
    proc = run_cli(module, "no-such-command")
    assert_one_line_error(proc, "invalid choice")


# what a handler of `python -m edge` finds: how many threads the process has once numpy is loaded, and the setting
BLAS_PROBE = """
import os, sys
import edge.__main__ as m

def dispatch(parser, argv, before=None):
    if before is not None and "{hook}" == "on":
        before(None)
    import numpy  # noqa: F401  (OpenBLAS starts its workers as it loads)
    print(len(os.listdir("/proc/self/task")), os.environ.get("OPENBLAS_NUM_THREADS"))
    return 0

m.dispatch = dispatch
sys.exit(m.main([]))
"""


def _blas_probe(hook: str, **env: str) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    from edge.cli import BLAS_THREAD_ENV
    from tests.conftest import ROOT

    clean = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", BLAS_PROBE.format(hook=hook)],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    threads, setting = proc.stdout.split()
    return int(threads), setting


def test_edge_commands_give_numpy_blas_one_thread():
    """OpenBLAS's spinning workers slowed a crop 1.8x beside TFLite's (edge.cli.single_thread_blas)."""
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: OpenBLAS starts no workers either way")
    assert _blas_probe("off")[0] >= 2  # the control: unpinned, OpenBLAS starts a worker per extra core
    assert _blas_probe("on") == (1, "1")
    assert _blas_probe("on", OPENBLAS_NUM_THREADS="2") == (2, "2")  # an explicit setting wins


def test_single_thread_blas_leaves_a_loaded_numpy_alone(monkeypatch):
    import numpy  # noqa: F401

    from edge.cli import BLAS_THREAD_ENV, single_thread_blas

    for var in BLAS_THREAD_ENV:
        monkeypatch.delenv(var, raising=False)
    single_thread_blas()
    import os

    assert not any(var in os.environ for var in BLAS_THREAD_ENV)  # children of a test run keep every core
