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
