"""The TFLite interpreter the device uses: LiteRT first, then tflite-runtime, then TensorFlow's as a last resort.

Why this order (DESIGN §7, measured here): LiteRT runs full-int8 models about 3.7x faster than float and works
with numpy 2; tflite-runtime is frozen since 2023 (numpy<2, no faster for int8) but is the only wheel on some
32-bit Arm boards; `tensorflow.lite` costs about 500 MB of RSS just to import, so it is only a fallback for
developer machines. The chosen runtime is logged once per process.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path

from edge.errors import UserError

log = logging.getLogger(__name__)

CANDIDATES: tuple[tuple[str, str], ...] = (
    ("ai_edge_litert.interpreter", "litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite.python.interpreter", "tensorflow"),
)

_chosen: tuple[Callable, str] | None = None


def interpreter_class() -> tuple[Callable, str]:
    """(Interpreter class, runtime name) of the first runtime that imports; cached and logged once."""
    global _chosen
    if _chosen is None:
        for module, name in CANDIDATES:
            try:
                cls = importlib.import_module(module).Interpreter
            except (ImportError, AttributeError):
                continue
            _chosen = (cls, name)
            log.info("TFLite runtime: %s (%s)", name, module)
            break
        else:
            raise UserError(
                "no TFLite runtime: install ai-edge-litert (pip install ai-edge-litert) or tflite-runtime"
            )
    return _chosen


def load_interpreter(model_path: str | Path, threads: int = 2, where: str = ""):
    """A ready (tensors allocated) interpreter; a truncated or non-model file is a one-line UserError."""
    cls, _ = interpreter_class()
    if threads < 1:
        raise UserError(f"threads {threads}: must be at least 1")
    try:
        interp = cls(model_path=str(model_path), num_threads=int(threads))
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{where or model_path}: model.tflite is not a loadable TFLite model ({first})"
        ) from None
    return interp


def runtime_name() -> str:
    return interpreter_class()[1]
