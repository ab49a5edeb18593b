"""The fine bank's nearest-neighbour search run by the TFLite interpreter (a bundle's `search.tflite`).

Why a model and not numpy: with the backbone in int8 the float32 search was most of a crop's time; convert
turns the bank into a small TFLite model with int8 weights (convert.search says what it computes and why), and
this class feeds it. A bundle without one (or one made with `convert --search numpy`) is searched by
edge.knn.nn_distances, which also stays the reference the model is tested against. The model is built for the
bundle's bank and its feature grid; both are checked when it loads.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from edge.bundle import read_checked
from edge.errors import UserError
from edge.interpreter import load_interpreter

log = logging.getLogger(__name__)

SEARCH_FILE = "search.tflite"


class TfliteSearch:
    """Distances of a crop's patch rows to their nearest bank row, as edge.knn.nn_distances returns them.

    Every row counts: held-out scoring, which skips rows, searches in numpy (edge.knn.Bank.fine_distances).
    Not thread-safe (the interpreter is not); the Scorer's lock serialises callers.
    """

    def __init__(self, path: Path, queries: int, dim: int, threads: int, where: str) -> None:
        self.interp = load_interpreter(path, threads, where=f"{where}: {path.name}")
        inputs = [[int(v) for v in d["shape"]] for d in self.interp.get_input_details()]
        out = self.interp.get_output_details()
        if inputs != [[queries, dim]] or len(out) != 1 or [int(v) for v in out[0]["shape"]] != [queries]:
            raise UserError(
                f"{where}: {path.name} takes {inputs} and gives {[list(d['shape']) for d in out]}, not "
                f"({queries}, {dim}) patch rows of the bank to ({queries},) distances"
            )
        self._in = self.interp.get_input_details()[0]["index"]
        self._out = out[0]["index"]
        self.queries = queries

    def __call__(self, query: np.ndarray) -> np.ndarray:
        """(N, D) patch rows -> (N,) distances."""
        self.interp.set_tensor(self._in, np.ascontiguousarray(query, dtype=np.float32))
        self.interp.invoke()
        return self.interp.get_tensor(self._out).copy()


def search_entry(flat: bytes, quant: str, queries: int) -> dict:
    """bundle.json's `bank.search` for a search model written as SEARCH_FILE (what load_search checks)."""
    return {
        "file": SEARCH_FILE,
        "sha256": hashlib.sha256(flat).hexdigest(),
        "quantization": quant,
        "queries": int(queries),
        "bytes": len(flat),
    }


def load_search(bundle_dir: str | Path, meta: dict, dim: int, threads: int) -> TfliteSearch:
    """The bank's search model from bundle.json `bank.search`, hash-checked like the model; one-line errors."""
    where = f"bundle {bundle_dir}"
    entry = meta if isinstance(meta, dict) else {}
    if not isinstance(entry.get("file"), str) or not isinstance(entry.get("queries"), int):
        raise UserError(f"{where}: bundle.json bank `search` needs a `file` name and whole-number `queries`")
    queries = entry["queries"]
    path = Path(bundle_dir) / entry["file"]
    read_checked(path, entry.get("sha256"), "the search model")  # the interpreter then maps the file itself
    search = TfliteSearch(path, queries, dim, threads, where)
    log.info("%s: %s search model, %d patches a crop", where, entry.get("quantization", "?"), queries)
    return search
