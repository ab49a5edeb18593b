"""The evaluation report folder: ROC curves, score histograms, best/worst cases with heat maps, index.html.

Why pictures next to the numbers: an AUROC says how well good and bad dishes separate, not *why* a dish was
missed or flagged; the cases grid shows whether the heat map lands on the defect or on a garnish.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.preprocess import InputSpec
from train import metrics

log = logging.getLogger(__name__)

CASES_PER_GROUP = 4


def pyplot():
    """matplotlib without a screen (the device and CI have none), imported only when a report is written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def display_rgb(img: np.ndarray, spec: InputSpec) -> np.ndarray:
    img = np.clip(img, 0, 1)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return img[..., ::-1] if spec.colour_order == "BGR" else img


def plot_roc(path: Path, labels: np.ndarray, by_method: dict, primary: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for m, (scores, _maps, _thr) in by_method.items():
        fpr, tpr, _ = metrics.roc_curve(scores, labels)
        auc = metrics.auroc(scores, labels)
        label = f"{m} (AUROC {auc:.3f})" if auc is not None else m
        ax.plot(fpr, tpr, lw=2.5 if m == primary else 1.2, label=label)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(
        xlabel="false-positive rate (good flagged)", ylabel="true-positive rate (defects caught)", title="ROC"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_histograms(path: Path, samples: Sequence, scores: np.ndarray, threshold: float, method: str) -> None:
    plt = pyplot()
    defects = sorted({s.defect for s in samples if s.anomalous})
    good = np.array([not s.anomalous for s in samples])
    n = max(1, len(defects))
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=100, squeeze=False)
    bins = np.linspace(min(scores.min(), threshold), max(scores.max(), threshold), 30)
    for ax, name in zip(axes.ravel(), defects or ["(no defects)"], strict=False):
        ax.hist(scores[good], bins=bins, alpha=0.6, label=f"good (n={good.sum()})", color="tab:green")
        sel = np.array([s.defect == name for s in samples])
        if sel.any():
            ax.hist(scores[sel], bins=bins, alpha=0.6, label=f"{name} (n={sel.sum()})", color="tab:red")
        ax.axvline(threshold, c="k", ls="--", lw=1, label="threshold")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"{method} score", fontsize=8)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(defects or [0]) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pick_cases(samples: Sequence, scores: np.ndarray, k: int = CASES_PER_GROUP) -> dict[str, list[int]]:
    """Indices: best-caught defects, worst-missed defects, worst good (highest-scored good = false alarms)."""
    anom = [i for i, s in enumerate(samples) if s.anomalous]
    good = [i for i, s in enumerate(samples) if not s.anomalous]
    anom_sorted = sorted(anom, key=lambda i: -scores[i])
    return {
        "defects, highest scores (best caught)": anom_sorted[:k],
        "defects, lowest scores (worst missed)": anom_sorted[::-1][:k],
        "good, highest scores (closest to false alarms)": sorted(good, key=lambda i: -scores[i])[:k],
    }


def plot_cases(
    path: Path,
    samples: Sequence,
    x: np.ndarray,
    scores: np.ndarray,
    maps: np.ndarray,
    threshold: float,
    spec: InputSpec,
) -> dict[str, list[int]]:
    """Grid: per case the image, and the image with the residual heat map (one colour scale for all) on top."""
    plt = pyplot()
    groups = {g: idx for g, idx in pick_cases(samples, scores).items() if idx}
    vmax = float(np.percentile(maps, 99.5)) or 1.0
    rows = max(1, len(groups))
    cols = 2 * CASES_PER_GROUP
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.3 * rows), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (title, idx) in enumerate(groups.items()):
        axes[r, 0].set_title(title, loc="left", fontsize=9, pad=14)
        for c, i in enumerate(idx):
            img = display_rgb(x[i], spec)
            verdict = "ANOM" if scores[i] > threshold else "ok"
            axes[r, 2 * c].imshow(img)
            axes[r, 2 * c].text(0, -2, f"{samples[i].defect[:14]}", fontsize=7)
            axes[r, 2 * c + 1].imshow(img)
            axes[r, 2 * c + 1].imshow(maps[i], cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
            axes[r, 2 * c + 1].text(0, -2, f"{scores[i]:.4g} {verdict}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return groups


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def html_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def write_report(
    out: Path,
    result: dict,
    samples: Sequence,
    x: np.ndarray,
    by_method: dict[str, tuple[np.ndarray, np.ndarray, float]],
    primary: str,
    spec: InputSpec,
) -> Path:
    """Write roc.png, histograms.png, cases.png and index.html into `out`; returns the index path."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--report {out}: cannot create ({exc.strerror or exc})") from None
    labels = np.array([s.anomalous for s in samples], dtype=bool)
    scores, maps, threshold = by_method[primary]
    plot_roc(out / "roc.png", labels, by_method, primary)
    plot_histograms(out / "histograms.png", samples, scores, threshold, primary)
    groups = plot_cases(out / "cases.png", samples, x, scores, maps, threshold, spec)

    summary = html_table(
        ["metric", "value"],
        [
            (k, result.get(k))
            for k in ("image_auroc", "pixel_auroc", "f1", "precision", "recall", "fpr", "threshold")
        ]
        + [("n_good", result["n_good"]), ("n_anomalous", result["n_anomalous"])],
    )

    def versus_good(group: str) -> str:
        rows = result.get(f"per_{group}") or {}
        return html_table(
            [group, "n", "AUROC vs good", "recall at threshold", "mean score"],
            [(k, v["n"], v["auroc"], v["recall"], v["mean_score"]) for k, v in rows.items()],
        )

    per_defect = versus_good("defect")
    per_severity = ""
    if result.get("per_severity"):
        per_severity = "<h2>Per severity (each severity vs the good test images)</h2>" + versus_good(
            "severity"
        )
    points = ""
    if result.get("operating_points"):
        sev = list(result["operating_points"][0].get("recall_per_severity") or {})
        points = (
            "<h2>Operating points (the device's <code>model.target_fpr</code>: its threshold on the held-out good"
            " scores, and what it flags here)</h2>"
            + html_table(
                ["target FPR", "threshold", "recall", "test FPR", *(f"recall {v}" for v in sev)],
                [
                    (
                        p["target_fpr"],
                        p["threshold"],
                        p["recall"],
                        p["fpr"],
                        *((p.get("recall_per_severity") or {}).get(v) for v in sev),
                    )
                    for p in result["operating_points"]
                ],
            )
        )
    methods = ""
    if "methods" in result:
        methods = "<h2>Score methods</h2>" + html_table(
            ["method", "image AUROC", "pixel AUROC", "F1", "threshold"],
            [
                (m, r["image_auroc"], r["pixel_auroc"], r["f1"], r["threshold"])
                for m, r in result["methods"].items()
            ],
        )
    case_lists = "".join(
        f"<li>{html.escape(g)}: "
        + ", ".join(html.escape(f"{Path(samples[i].path).name} ({scores[i]:.4g})") for i in idx)
        + "</li>"
        for g, idx in groups.items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dishwatch evaluation: {html.escape(result["model"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:100%}}</style></head><body>
<h1>dishwatch evaluation</h1>
<p>Model: <b>{html.escape(result["model"])}</b>; score method <b>{html.escape(primary)}</b>;
data {html.escape(str(result.get("data", "")))}. An image is anomalous when score &gt; threshold; the anomalous
class is positive. The threshold was set on validation images, not on this test split.</p>
<h2>Summary</h2>{summary}
<h2>Per defect (each defect vs the good test images)</h2>{per_defect}
{per_severity}
{points}
{methods}
<h2>ROC</h2><img src="roc.png" alt="ROC curve">
<h2>Score histograms</h2><img src="histograms.png" alt="score histograms per defect">
<h2>Best and worst cases</h2><ul>{case_lists}</ul><img src="cases.png" alt="cases with heat maps">
</body></html>
"""
    index = out / "index.html"
    index.write_text(page)
    log.info("report written to %s", index)
    return index
