"""A service simulated: what teaching the device from false alarms (edge/learning.py) buys, and what it costs.

Why a simulation: the question is what a kitchen sees over the weeks after installation, and the synthetic
generator can render more good photos of the same dishes than the bundle was trained on (`train synth
--train-per-dish 16`: the preset's photos stay the same, the rest are new plates of the same menu). Those new
photos are served in a random order: the first half is the service during which every false alarm (a good plate
scored over the alert threshold) is marked on the dashboard and taught to the bank, exactly as the daemon does
(Scorer.lesson, Lessons, Scorer.set_learned); the second half is the future, scored before and after. The test
split's defects show what the learning costs in recall.

Reported, before and after: the share of future good plates flagged at the bundle's threshold and at the
kitchen's alert levels of 5 and 10 % false positives (bundle.json operating points), the test defects' recall at
the same thresholds, the image AUROC of the test defects against the future good plates, and the recall at
matched false-alarm rates on the future plates. Then the cost: rows learned, and the end-to-end time per crop
with and without them, measured side by side in alternating rounds (medians).

    .venv/bin/python bench/learning.py [--bundle models/default] [--data data/d16] [--seen data/dsm100]
        [--alert 0.01] [--seed 0] [--rounds 3] [--out bench/results/learning.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine_record  # noqa: E402
from edge.learning import LEARN_FLOOR, LearnedRows, lessons_for  # noqa: E402
from edge.scorer import Scorer  # noqa: E402
from train.data import load_dataset  # noqa: E402
from train.metrics import auroc  # noqa: E402

IMAGE_EXT = (".png", ".jpg", ".jpeg")
LEVELS = (0.01, 0.05, 0.1)


def new_photos(data: Path, seen: Path) -> dict[str, list[Path]]:
    """Good training photos of `data` that `seen` (the bundle's training set) does not hold, by dish."""
    out: dict[str, list[Path]] = {}
    for p in sorted((data / "train" / "good").rglob("*")):
        if p.suffix.lower() in IMAGE_EXT and not (seen / p.relative_to(data)).exists():
            out.setdefault(p.parent.name, []).append(p)
    return out


def thresholds(bundle: Path) -> dict[float, float]:
    """The bundle's threshold at each LEVELS false-positive rate (bundle.json operating points)."""
    meta = json.loads((bundle / "bundle.json").read_text())
    points = {round(o["target_fpr"], 4): o["threshold"] for o in meta["metrics"].get("operating_points", [])}
    return {lv: float(points.get(lv, meta["threshold"])) for lv in LEVELS}


def summary(future: np.ndarray, defects: np.ndarray, thr: dict[float, float]) -> dict:
    labels = np.r_[np.ones(len(defects)), np.zeros(len(future))]
    return {
        "future_flagged": {str(lv): round(float(np.mean(future > t)), 4) for lv, t in thr.items()},
        "test_recall": {str(lv): round(float(np.mean(defects > t)), 4) for lv, t in thr.items()},
        "auroc_defects_vs_future": round(float(auroc(np.r_[defects, future], labels)), 4),
        "recall_at_future_fpr": {
            str(q): round(float(np.mean(defects > np.quantile(future, 1 - q))), 4)
            for q in (0.01, 0.02, 0.05, 0.1)
        },
    }


def timed(scorer: Scorer, crops: list[np.ndarray]) -> float:
    """Median end-to-end ms per crop (Scorer.score, the daemon's call)."""
    ms = []
    for c in crops:
        t0 = time.perf_counter()
        scorer.score(c)
        ms.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(ms))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="models/default")
    ap.add_argument(
        "--data", default="data/d16", help="train synth --train-per-dish 16 of the bundle's preset"
    )
    ap.add_argument("--seen", default="data/dsm100", help="the data set the bundle was trained on")
    ap.add_argument("--alert", type=float, default=0.01, choices=LEVELS, help="the kitchen's alert level")
    ap.add_argument("--seed", type=int, default=0, help="order in which the new plates are served")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/learning.json")
    args = ap.parse_args()
    bundle, data, seen = Path(args.bundle), Path(args.data), Path(args.seen)
    photos = new_photos(data, seen)
    if not photos:
        sys.exit(f"--data {data}: no good training photos beyond those of --seen {seen}")
    service, future = [], []
    for paths in photos.values():  # half of each dish's new plates is served now, half later
        paths.sort(key=lambda p: (len(p.stem), p.stem))  # the generator numbers them: 336 before 1008
        half = len(paths) // 2
        service += paths[:half]
        future += paths[half:]
    order = np.random.default_rng(args.seed).permutation(len(service))
    service = [service[i] for i in order]
    test = load_dataset(str(seen)).split("test")
    defects = [s for s in test if s.anomalous]

    scorer = Scorer(bundle, threads=args.threads)
    thr = thresholds(bundle)
    alert = thr[args.alert]
    read = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in future]
    read_defects = [cv2.imread(str(s.path), cv2.IMREAD_COLOR) for s in defects]

    def score_all(images):
        return np.array([scorer.score(im).score for im in images])

    before = summary(score_all(read), score_all(read_defects), thr)
    b = scorer.bundle
    bank = scorer.bank
    lessons = lessons_for(scorer, "/dev/null", max_rows=10**9)  # in memory only: never saved
    dims = lessons.dims
    presses = 0
    t0 = time.perf_counter()
    for i, p in enumerate(service):
        crop = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if scorer.score(crop).score > alert:
            presses += 1
            lessons.add(f"plate{i}", scorer.lesson(crop))
            scorer.set_learned(lessons.rows())
    learn_s = time.perf_counter() - t0
    after = summary(score_all(read), score_all(read_defects), thr)
    learned = lessons.rows()

    timing = {"shipped": [], "learned": []}
    sample = read[:100]
    for _ in range(args.rounds):  # alternating, so a noisy neighbour hits both alike
        scorer.set_learned(LearnedRows.nothing(dims))
        timing["shipped"].append(round(timed(scorer, sample), 2))
        scorer.set_learned(learned)
        timing["learned"].append(round(timed(scorer, sample), 2))
    ratio = float(np.median(timing["learned"]) / np.median(timing["shipped"]))

    result = {
        "machine": machine_record(),
        "bundle": str(bundle),
        "data": str(data),
        "alert_fpr": args.alert,
        "learn_floor": LEARN_FLOOR,
        "service_plates": len(service),
        "future_plates": len(future),
        "test_defects": len(defects),
        "false_alarms_marked": presses,
        "rows_learned": {"fine": int(len(learned.fine)), "coarse": int(len(learned.coarse))},
        "bank_rows": {
            "fine": int(b.score_params["bank"].get("patches", 0)),
            "coarse": int(len(bank.coarse.patches)) if bank.coarse is not None else 0,
        },
        "service_seconds": round(learn_s, 1),
        "before": before,
        "after": after,
        "ms_per_crop": timing,
        "ms_ratio_learned_vs_shipped": round(ratio, 3),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lv = str(args.alert)
    print(
        f"{len(service)} plates served, {presses} false alarms marked at the {args.alert:.0%} alert level, "
        f"{len(learned.fine)} fine + {len(learned.coarse)} coarse rows learned"
    )
    for name, s in (("before", before), ("after", after)):
        flagged = " / ".join(f"{v:.1%}" for v in s["future_flagged"].values())
        recall = " / ".join(f"{v:.1%}" for v in s["test_recall"].values())
        matched = " / ".join(f"{v:.1%}" for v in s["recall_at_future_fpr"].values())
        print(
            f"{name:6s}: future good plates flagged at 1/5/10 % thresholds {flagged}; test recall {recall}; "
            f"AUROC vs future {s['auroc_defects_vs_future']:.3f}; recall at future FPR 1/2/5/10 % {matched}"
        )
    print(
        f"ms per crop (median of 100, {args.rounds} alternating rounds): shipped {timing['shipped']}, "
        f"learned {timing['learned']}: {ratio:.2f}x; flagged at the alert level {before['future_flagged'][lv]:.1%}"
        f" -> {after['future_flagged'][lv]:.1%}; results in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
