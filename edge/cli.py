"""Command-line plumbing shared by `python -m edge`, `python -m train` and `python -m convert`.

Why: every command must fail with one line that names what is wrong and a non-zero exit, never a traceback.
argparse's default prints a usage block plus the error; `OneLineParser` prints only the error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from edge.errors import UserError

log = logging.getLogger(__name__)


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line: `<prog>: error: <message>`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


# numpy's BLAS reads its thread count from these once, when numpy loads (edge.cli.single_thread_blas)
BLAS_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def single_thread_blas() -> None:
    """Give numpy's BLAS one thread unless the environment already names a count; only before numpy loads.

    Why: the device's numpy matrix products are small (the coarse search: 49 cells x 3 761 rows, 3 ms with its
    map) and run between TFLite invokes, and OpenBLAS's idle workers busy-wait for a while after each product on
    the cores the interpreter's workers need next (and the other way round). On a 2-core host the default bundle took 38 ms a
    crop with the interpreter and OpenBLAS at 2 threads each and 21.6 ms with OpenBLAS at 1; a bundle searched
    in numpy lost nothing by it (35.7 against 36.1 ms; docs/measurements.md, "The second 2026-12-03 machine").
    train and convert keep every core: their coreset selection is one large product after another.
    """
    if "numpy" in sys.modules:  # too late to matter; and the variables would reach this process's children
        log.debug("numpy is already loaded: its BLAS keeps the thread count it started with")
        return
    for var in BLAS_THREAD_ENV:
        os.environ.setdefault(var, "1")


def setup_logging(verbose: bool = False) -> None:
    level = (
        logging.DEBUG if verbose else getattr(logging, os.environ.get("DISHWATCH_LOG", "INFO").upper(), 20)
    )
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def run_main(
    main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, prog: str = ""
) -> int:
    """Run a CLI entry point, turning expected failures into one line on stderr and an exit code."""
    try:
        return main(argv)
    except UserError as exc:
        sys.stderr.write(f"{prog or 'dishwatch'}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog or 'dishwatch'}: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0


def dispatch(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    before: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """Parse, set up logging, run `before(args)`, then import and call the subcommand's `module:function` lazily."""
    import importlib

    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    if before is not None:
        before(args)
    module, func = args.handler.split(":")
    return int(getattr(importlib.import_module(module), func)(args) or 0)
