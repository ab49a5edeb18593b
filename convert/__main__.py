"""`python -m convert --model RUN_DIR --data DIR --out BUNDLE_DIR [--quant auto|int8|float16|float32]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from edge.cli import OneLineParser, run_main, setup_logging


def build_parser() -> OneLineParser:
    from convert.search import SEARCHES
    from convert.tflite import AUTO, DEFAULT_REPRESENTATIVE, FALLBACK, IO_TYPES, QUANTS

    p = OneLineParser(
        prog="python -m convert",
        description="convert a training run to a quantized TFLite bundle (model.tflite + bundle.json)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--model", required=True, help="training run folder (model.keras + config.json)")
    p.add_argument(
        "--data", required=True, help="dataset folder (representative, calibration and test images)"
    )
    p.add_argument(
        "--out", required=True, help="bundle folder to write (replaced atomically when it is a bundle)"
    )
    p.add_argument(
        "--quant",
        default=AUTO,
        choices=(AUTO, *QUANTS),
        help=f"{AUTO} (default: int8, or {FALLBACK} when int8 misses the parity tolerance), int8, float16, float32",
    )
    p.add_argument("--io", default="uint8", choices=IO_TYPES, help="int8 only: input/output tensor type")
    p.add_argument(
        "--representative",
        type=int,
        default=DEFAULT_REPRESENTATIVE,
        help=f"int8 only: calibration images drawn from train (default {DEFAULT_REPRESENTATIVE})",
    )
    p.add_argument(
        "--search",
        default="int8",
        choices=SEARCHES,
        help="kNN bundles: the bank search as an int8 (default) or float32 search.tflite, or numpy on the device",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the representative draw and augmentation")
    p.add_argument("--name", help="bundle name (default: the --out folder's name)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from train.quiet_tf import import_tensorflow_quietly

    import_tensorflow_quietly()
    from convert.bundle_writer import build_bundle
    from convert.tflite import ConvertOptions

    opts = ConvertOptions.requested(
        args.quant, io=args.io, representative=args.representative, seed=args.seed, search=args.search
    )
    build_bundle(args.model, args.data, args.out, opts.validate(), name=args.name)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python -m convert"))
