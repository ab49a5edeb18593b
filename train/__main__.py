"""`python -m train {synth,inspect,fit,evaluate,twins}`.

Arguments are declared here, handlers are imported lazily, so `synth` and `inspect` never load TensorFlow.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from edge.cli import OneLineParser, dispatch, run_main
from edge.knn import DISTANCES


def _add_learned(parser: OneLineParser, what: str) -> None:
    """`--learned FILE` of the commands that score a bundle (train.evaluate.check_learned refuses the rest)."""
    parser.add_argument(
        "--learned", default="", help=f"a device's learned file (feedback.learned_file): {what}"
    )


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m train", description="dishwatch training, evaluation and data tools")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    s = sub.add_parser("synth", help="write a synthetic DSM-like dataset (MVTec layout, with masks)")
    s.add_argument("--preset", required=True, choices=["dsm50", "dsm100", "tiny"], help="dataset size preset")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="random seed (the output is deterministic for a seed)")
    s.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    s.add_argument(
        "--scene",
        default="fixed",
        help="fixed: one pass (counter, light, camera) for every photo, as a real installation (default); "
        "varied: a new counter and light per photo",
    )
    s.add_argument(
        "--train-per-dish",
        type=int,
        default=None,
        help="good training photos per dish instead of the preset's (dsm100 has about 4); the preset's photos and "
        "the whole test split stay the same",
    )
    s.set_defaults(handler="train.synth:cli_main")

    i = sub.add_parser("inspect", help="show the layout found and counts per split, dish and defect")
    i.add_argument("--data", required=True, help="dataset folder (MVTec or DSM layout)")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(handler="train.data:cli_inspect")

    f = sub.add_parser(
        "fit", help="train the Inception CAE, or build a feature-distance (kNN) bank, on the good images"
    )
    f.add_argument("--data", required=True, help="dataset folder")
    f.add_argument("--out", required=True, help="run folder (checkpoints, history, config)")
    f.add_argument(
        "--method",
        default="cae",
        choices=["cae", "effnet-knn", "cae-knn"],
        help="cae: train the Inception CAE (default); effnet-knn / cae-knn: memory bank of patch features",
    )
    f.add_argument("--cae-run", help="cae-knn: the trained CAE run folder whose encoder gives the features")
    f.add_argument(
        "--coreset", type=float, default=0.01, help="knn: fraction of training patches kept in the bank"
    )
    f.add_argument(
        "--coarse-coreset",
        type=float,
        default=0.25,
        help="effnet-knn: fraction of the coarse stage's cells kept (default 0.25); with more photos of each dish, "
        "lower it with --coreset to keep the device's search the same size (README)",
    )
    f.add_argument(
        "--global-weight",
        type=float,
        default=0.0,
        help="knn: weight of the whole-image (not-on-the-menu) distance beside the patch distance; 0 = off "
        "(default: on the synthetic presets it lowered image AUROC, see docs/measurements.md)",
    )
    f.add_argument(
        "--distance",
        default="calibrated",
        choices=DISTANCES,
        help="knn: calibrated (default): the distance to each bank patch divided by how far held-out good patches "
        "that matched it usually are (+0.017 image AUROC on the presets); euclidean: the plain distance; "
        "relative: divided by the patch's distance to its nearest other bank patch (within noise); "
        "measurements in docs/measurements.md",
    )
    f.add_argument(
        "--bank-augment",
        type=int,
        default=0,
        help="knn: shifted/turned/re-lit copies of each training image whose patches the coreset may pick; "
        "the bank keeps its size (default 0: on dsm100, 3 copies were within the coreset's seed noise, "
        "docs/measurements.md)",
    )
    f.add_argument(
        "--coarse-weight",
        type=float,
        default=None,
        help="effnet-knn: weight of the coarse (stride-32, context) map averaged into the anomaly map; 0 = no "
        "coarse stage (default 0.5: on dsm100 pixel AUROC 0.80 -> 0.88, image AUROC within noise, "
        "docs/measurements.md)",
    )
    f.add_argument(
        "--backbone",
        default="",
        help="effnet-knn: efficientnet-lite2 (default: +0.03 image AUROC on both presets, "
        "docs/measurements.md) or efficientnet-lite0 (smaller and faster)",
    )
    f.add_argument(
        "--project",
        type=int,
        default=0,
        help="knn: keep this many leading principal components of the fine features (a 1x1 convolution in the "
        "model): the search's cost falls in proportion, for hosts without int8 dot-product instructions "
        "(64 of 168: a crop 0.77x as long, image AUROC alike, recall 3.5 points lower); 0 = every channel "
        "(default; docs/measurements.md)",
    )
    f.add_argument("--epochs", type=int, default=200, help="cae only")
    f.add_argument("--batch-size", type=int, default=64, help="cae only")
    f.add_argument(
        "--image-size",
        type=int,
        help="input side in px (default 128 for cae, 224 for effnet-knn; cae-knn uses the CAE run's)",
    )
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--config", default="seed", help="architecture: seed (default), half, quarter")
    f.add_argument("--filters", help="override the per-level filters, e.g. 8,8,16 (depth = count)")
    f.add_argument("--bn-momentum", type=float, help="BatchNorm moving-average momentum (default 0.99)")
    f.add_argument("--loss", default="mse", choices=["mse", "ssim", "mse+ssim"])
    f.add_argument("--learning-rate", type=float, default=1e-3)
    f.add_argument(
        "--score", default="local", choices=["local", "mse", "ssim"], help="score method (default local)"
    )
    f.add_argument(
        "--target-fpr", type=float, default=0.01, help="threshold's false-positive rate on val good"
    )
    f.add_argument("--no-augment", action="store_true", help="train without shift/turn/light augmentation")
    f.add_argument("--jit", action="store_true", help="compile the train step with XLA (jit_compile=True)")
    f.add_argument(
        "--precision",
        default="float32",
        help="float32 (default) or mixed_bfloat16: bfloat16 compute, float32 weights; faster on CPUs with "
        "AVX512-BF16/AMX (README), expected slower where bfloat16 is emulated; the run is saved as float32",
    )
    f.set_defaults(handler="train.fit:cli_main")

    e = sub.add_parser("evaluate", help="score the test split; write metrics JSON and an HTML report")
    e.add_argument("--model", required=True, help="RUN_DIR (Keras) or BUNDLE_DIR (TFLite)")
    e.add_argument("--data", required=True, help="dataset folder")
    e.add_argument("--json", dest="json_out", help="write the metrics JSON here")
    e.add_argument("--report", help="write the report folder here (index.html, plots)")
    e.add_argument(
        "--methods", help="also evaluate these score methods, e.g. mse,ssim,local (a `methods` table)"
    )
    _add_learned(e, "evaluate the bundle as that device runs it, with the rows it learned from false alarms")
    e.set_defaults(handler="train.evaluate:cli_main")

    t = sub.add_parser(
        "twins",
        help="score each synthetic test defect beside its twin rendered without the defect: does the model see it?",
    )
    t.add_argument("--model", required=True, help="RUN_DIR (Keras) or BUNDLE_DIR (TFLite)")
    t.add_argument("--data", required=True, help="a data set written by `train synth` (its meta.json)")
    t.add_argument("--json", dest="json_out", help="write the per-defect table as JSON here")
    t.add_argument("--report", help="write index.html and twins.png (a typical pair per defect) here")
    _add_learned(t, "the pairs scored as that device scores them")
    t.set_defaults(handler="train.twins:cli_main")
    return p


def _load_tensorflow(args) -> None:
    """fit always needs TensorFlow, evaluate and twins of a training run too; of a bundle, and synth, never."""
    keras_run = args.command in ("evaluate", "twins") and not (Path(args.model) / "bundle.json").is_file()
    if args.command == "fit" or keras_run:
        from train.quiet_tf import import_tensorflow_quietly

        import_tensorflow_quietly()


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser(), argv, before=_load_tensorflow)


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python -m train"))
