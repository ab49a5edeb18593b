"""Load TensorFlow without its load-time C++ log lines, so a user error after the load is still one line.

Why: TensorFlow's shared libraries log through absl while they load, before its logging is set up, and
TF_CPP_MIN_LOG_LEVEL does not reach those lines. On hosts where oneDNN's custom operations are on (Intel CPUs with
AVX512-VNNI or AMX, the first 2026-11-30 machine) that is five lines on stderr at every `import tensorflow`, so
`train fit --project 168` printed them above its error. The commands that need TensorFlow (fit, convert, evaluate of a
training run) load it through here first; every later `import tensorflow` is then a no-op.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 pointed at /dev/null; a failing import still raises, audibly."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
