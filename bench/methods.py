"""Every score method on one data set, float and int8, side by side: the table issue #7 asks for.

Why one script: the methods come from three kinds of run (the seed's Inception CAE scored by reconstruction error
as `mse`, `ssim` and `local`; `cae-knn`, a memory bank of that same CAE's encoder features; `effnet-knn`, the
default, a bank of pretrained EfficientNet-Lite2 features), and a fair table scores them on the same test split,
with the same code, on the same host in one run. The float numbers are `train evaluate` on each run (Keras); the
int8 numbers are those `convert` stores in each bundle (the evaluate output of that very .tflite, through the
device's scorer); the per-crop time is the device's Scorer.score end to end on one thread, the bundles timed in
alternating rounds so a noisy neighbour slows them alike (medians, and each one's ratio to `effnet-knn`).

A CAE bundle carries one score (its run's primary, `local`), so `mse` and `ssim` have float rows only; their int8
reconstructions are the same as `local`'s, whose parity the bundle reports.

    .venv/bin/python bench/methods.py --data data/dsm100 --cae-run runs/cae-dsm100 --knn-run runs/default \
        [--work runs/methods-dsm100] [--out bench/results/methods-dsm100.json] [--crops 50] [--rounds 3]

`make bench-methods [PRESET=dsm50]` trains what is missing first (the CAE takes tens of minutes on 2 cores).
Runs and bundles already in --work are reused, so a second call only measures again (delete --work after
retraining a run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.learning import timed  # noqa: E402  (median end-to-end ms per crop, the daemon's call)
from bench.machine import machine_record  # noqa: E402
from edge.scorer import Scorer  # noqa: E402
from train.evaluate import SUMMARY_KEYS  # noqa: E402

CAE_SCORES = ("mse", "ssim", "local")


def cli(*args: str | Path) -> None:
    """`python -m ARGS` as a user runs it; a failure ends the bench with its last line of stderr."""
    argv = [sys.executable, "-m", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    print("$", " ".join(argv[2:]), flush=True)
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        sys.exit(f"bench/methods.py: python -m {args[0]} {args[1]} failed: {last}")


def row(metrics: dict) -> dict:
    """The table's fields of an evaluate result, with per-defect image AUROC."""
    out = {k: metrics.get(k) for k in SUMMARY_KEYS}
    out["per_defect"] = {d: v["auroc"] for d, v in (metrics.get("per_defect") or {}).items()}
    out["per_severity"] = {s: v["auroc"] for s, v in (metrics.get("per_severity") or {}).items()}
    return out


def crops_of(data: Path, n: int) -> list[np.ndarray]:
    """The first `n` test photos in path order, as BGR arrays like the daemon's crops (a crop's time does not
    depend on what it shows: one feature pass and one search)."""
    from train.data import load_dataset

    samples = load_dataset(data).split("test")[:n]
    return [cv2.imread(str(s.path), cv2.IMREAD_COLOR) for s in samples]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the data set every method is fitted and tested on")
    ap.add_argument("--cae-run", required=True, help="a trained Inception CAE run (train fit) on --data")
    ap.add_argument(
        "--knn-run", required=True, help="an effnet-knn run (train fit --method effnet-knn) on --data"
    )
    ap.add_argument(
        "--work", default="", help="runs and bundles made here (default runs/methods-<data name>)"
    )
    ap.add_argument("--out", default="", help="results JSON (default bench/results/methods-<data name>.json)")
    ap.add_argument("--crops", type=int, default=50, help="test crops timed per bundle and round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    data = Path(args.data)
    for flag, path in (
        ("--data", data),
        ("--cae-run", Path(args.cae_run)),
        ("--knn-run", Path(args.knn_run)),
    ):
        if not path.is_dir():
            sys.exit(f"bench/methods.py: {flag} {path}: no such folder")
    work = Path(args.work or f"runs/methods-{data.name}")
    out = Path(args.out or f"bench/results/methods-{data.name}.json")
    work.mkdir(parents=True, exist_ok=True)

    caeknn = work / "cae-knn"
    if not (caeknn / "config.json").is_file():
        cli("train", "fit", "--method", "cae-knn", "--data", data, "--out", caeknn, "--cae-run", args.cae_run)
    runs = {"cae": Path(args.cae_run), "cae-knn": caeknn, "effnet-knn": Path(args.knn_run)}

    table: dict[str, dict] = {}
    for name, run in runs.items():
        report = work / f"{name}.float.json"
        methods = ("--methods", ",".join(CAE_SCORES)) if name == "cae" else ()
        cli("train", "evaluate", "--model", run, "--data", data, "--json", report, *methods)
        result = json.loads(report.read_text())
        bundle = work / f"{name}.int8"
        if not (bundle / "bundle.json").is_file():
            cli("convert", "--model", run, "--data", data, "--out", bundle, "--quant", "int8", "--name", name)
        meta = json.loads((bundle / "bundle.json").read_text())
        parity = (
            json.loads((bundle / "parity.json").read_text()) if (bundle / "parity.json").is_file() else {}
        )
        int8 = {**row(meta["metrics"]), "parity_auroc_delta": parity.get("auroc_delta")}
        if name != "cae":
            table[name] = {"float": row(result), "int8": int8, "bundle": str(bundle)}
            continue
        for m in CAE_SCORES:  # the bundle carries the run's primary score only
            primary = m == result["score_method"]
            table[f"cae {m}"] = {
                "float": row(result) if primary else result["methods"][m],
                "int8": int8 if primary else None,
                "bundle": str(bundle) if primary else None,
            }

    crops = crops_of(data, args.crops)
    scorers = {name: Scorer(work / f"{name}.int8", threads=args.threads) for name in runs}
    for s in scorers.values():  # warm-up: the interpreter's first calls allocate
        for c in crops[:5]:
            s.score(c)
    ms: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, s in scorers.items():
            ms[name].append(round(timed(s, crops), 2))
    median = {name: float(np.median(v)) for name, v in ms.items()}
    timing = {
        name: {"ms_per_crop": ms[name], "ratio_to_effnet_knn": round(median[name] / median["effnet-knn"], 3)}
        for name in runs
    }

    result = {
        "machine": machine_record(),
        "data": str(data.resolve()),
        "runs": {k: str(v) for k, v in runs.items()},
        "threads": args.threads,
        "crops_timed": len(crops),
        "methods": table,
        "timing": timing,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    def f(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    print(f"\n{data}: test split, float / int8; ms per crop end to end on {args.threads} thread(s)")
    print("| method | image AUROC | pixel AUROC | F1 at the threshold | int8 parity | ms per crop |")
    print("|---|---|---|---|---|---|")
    for name, r in table.items():
        fl, q = r["float"], r.get("int8") or {}
        kind = "cae" if name.startswith("cae ") else name
        t = f"{median[kind]:.1f} ({timing[kind]['ratio_to_effnet_knn']:.2f}x)" if r["int8"] else ""
        print(
            f"| {name} | {f(fl.get('image_auroc'))} / {f(q.get('image_auroc'))} | {f(fl.get('pixel_auroc'))} / "
            f"{f(q.get('pixel_auroc'))} | {f(fl.get('f1'))} / {f(q.get('f1'))} | {f(q.get('parity_auroc_delta'))} "
            f"| {t} |"
        )
    defects = sorted({d for r in table.values() for d in (r.get("int8") or {}).get("per_defect", {})})
    print("\nper defect, int8 image AUROC against the good test plates")
    print("| method | " + " | ".join(defects) + " |")
    print("|---|" + "---|" * len(defects))
    for name, r in table.items():
        if r.get("int8"):
            print(f"| {name} | " + " | ".join(f(r["int8"]["per_defect"].get(d)) for d in defects) + " |")
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
