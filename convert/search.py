"""The fine bank's nearest-neighbour search as a TFLite model (`search.tflite`), so the device runs it in int8.

Why: after the backbone went int8, the numpy search over the fine bank was most of a crop's time (a float32
matrix product of 784 patches x 4 814 rows x 168 dims). As a TFLite model with int8 weights and inputs quantized
on the fly ("dynamic range": each query row gets its own scale) the same product runs on the int8 kernels the
backbone uses (README, "Speed and memory").

What it computes, for query rows q (N, D) and bank rows b_j with row scales s_j (1 for a Euclidean bank):

    d_j(q)^2 = |q - b_j|^2 / s_j^2

Rows that share one scale s form a level; within it, min_j d_j^2 = (|q|^2 + min_j (q . c_j + e_j)) / s^2 with
c_j = -2 b_j and e_j = |b_j|^2, so a level is one fully connected layer (int8 weights c_j, float bias e_j) and a
row minimum, and only (N,) vectors are combined across levels. Why levels and not a per-row division: the
division (or any per-row term) is an elementwise pass over the (N x M) product, and the interpreter keeps each
such pass's output alive: 14 MB more memory for the default bank, where the scorer has about none to spare. So
build_bank stores row scales on a 2 % grid (edge.knn.snap_scales: 18 levels for the default bank; image AUROC
0.881 either way, scores within 0.1 %). Both q and b are centred on the bank's mean first: the same distances,
with smaller numbers for the int8 product to carry.

Held-out scoring (calibration scores each training photo without its own rows) cannot drop rows from a model, so
it uses the numpy search over the same rows and scales (edge.knn.Bank.fine_distances): the same numbers but for
the int8 product's rounding (distances 0.15 % apart at the median, 1.8 % at most, on dsm100).
"""

from __future__ import annotations

import logging

import numpy as np

from edge.errors import UserError

log = logging.getLogger(__name__)

# rows per fully connected layer at most: its (N x CHUNK) output is the model's largest tensor. 256 rather than 512:
# 0.7 MB less memory at the same speed (4.96 vs 4.88 ms; 128: 6.2 ms), one thread, the default bank
CHUNK = 256
MAX_LEVELS = 64  # distinct row scales one model takes (edge.knn.snap_scales makes about 20)
# convert --search; "numpy": no search.tflite, the device searches in numpy
SEARCHES = ("int8", "float32", "numpy")


def search_model(
    patches: np.ndarray, row_scale: np.ndarray | None, queries: int, quant: str = "int8"
) -> bytes:
    """The .tflite flatbuffer of the search over `patches` (M, D) for `queries` rows at a time: input `query`
    (queries, D) float32, output (queries,) distances as edge.knn.nn_distances computes them."""
    import tensorflow as tf

    if quant not in ("int8", "float32"):
        raise UserError(f"--search {quant!r}: a search model is int8 or float32")
    b = np.asarray(patches, np.float32)
    rows, dim = b.shape
    scale = np.ones(rows, np.float32) if row_scale is None else np.asarray(row_scale, np.float32)
    levels = np.unique(scale)
    if len(levels) > MAX_LEVELS:
        raise UserError(
            f"search model: the bank has {len(levels)} distinct row scales, more than {MAX_LEVELS} "
            "(build_bank snaps them to a 2 % grid); convert with --search numpy"
        )
    mean = b.mean(axis=0)
    b = b - mean
    layers = []  # (1 / s^2, weights (D, n), bias (n,)) per chunk of one level's rows
    for s in levels:
        rows_s = b[scale == s]
        for start in range(0, len(rows_s), CHUNK):
            part = rows_s[start : start + CHUNK]
            bias = np.einsum("ij,ij->i", part, part)
            layers.append((float(1.0 / s**2), tf.constant(-2.0 * part.T), tf.constant(bias)))
    centre = tf.constant(mean[None])

    @tf.function(input_signature=[tf.TensorSpec((queries, dim), tf.float32, name="query")])
    def search(query):
        q = query - centre
        q2 = tf.reduce_sum(q * q, axis=1)
        best = None
        for w, c, e in layers:
            d2 = (q2 + tf.reduce_min(tf.matmul(q, c) + e, axis=1)) * w
            best = d2 if best is None else tf.minimum(best, d2)
        return tf.sqrt(tf.maximum(best, 0.0))

    conv = tf.lite.TFLiteConverter.from_concrete_functions([search.get_concrete_function()], search)
    if quant == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative set: int8 weights, dynamic inputs
    try:
        flat = conv.convert()
    except Exception as exc:  # the converter raises ConverterError/ValueError/RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"search model ({quant}) conversion failed: {first}") from None
    log.info(
        "search model: %s, %d rows x %d dims in %d levels, %.1f kB",
        quant,
        rows,
        dim,
        len(levels),
        len(flat) / 1024,
    )
    return flat
