"""`python -m edge score --bundle DIR [--learned FILE] IMAGE...`: one JSON object per image on stdout.

`--learned` searches a device's learned rows too (edge/learning.py), so its verdicts can be reproduced offline.

Exit codes: 0 when every image was scored; 1 when at least one image could not be read (it gets its own line
with an `error` field and a warning on stderr; the others are still scored); 2 when the bundle is refused or a
flag is wrong (one line on stderr, nothing on stdout).
"""

from __future__ import annotations

import json
import sys

from edge.calibration import ThresholdOverride
from edge.errors import UserError
from edge.learning import check_offline_learned, use_learned
from edge.preprocess import read_image
from edge.scorer import Scorer


def score_path(scorer: Scorer, path: str) -> dict:
    """The result line of one image; an unreadable image gives a line with `error` (and a warning on stderr)."""
    try:
        r = scorer.score(read_image(path))
    except UserError as exc:
        sys.stderr.write(f"python -m edge score: warning: {exc}\n")
        return {"path": path, "error": str(exc)}
    return {
        "path": path,
        "score": round(r.score, 8),
        "threshold": r.threshold,
        "anomalous": r.anomalous,
        "severity": round(r.severity, 4),
        "regions": [g.to_json() for g in r.regions],
        "inference_ms": round(r.inference_ms, 3),
        "model": {"name": scorer.bundle.name, "sha256": scorer.bundle.sha256},
    }


def cli_main(args) -> int:
    override = ThresholdOverride(args.threshold, args.target_fpr, ("--threshold", "--target-fpr")).validate()
    if args.learned:  # before the model loads (and logs): a wrong file is then the only line on stderr
        check_offline_learned(args.learned, args.bundle)
    scorer = Scorer(args.bundle, threads=args.threads)
    scorer.use_threshold(override)
    if args.learned:
        use_learned(scorer, args.learned)
    failed = 0
    for path in args.images:  # streamed: each line is written as soon as its image is scored
        row = score_path(scorer, path)
        failed += "error" in row
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    return 1 if failed else 0
