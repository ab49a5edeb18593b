"""`python -m train twins`: how far each synthetic defect moves a model, measured against its defect-free twin.

Why: image AUROC says how often defective plates outscore good ones, not why they don't. The generator can render
every test defect again without the defect: the same dish, placement, counter, light and camera noise
(train.synth.render_twin). Scoring both separates the two reasons a defect is missed:
- the model's map hardly moves where the defect lies (`local_rise`): the features do not see it, and no better
  score or threshold over the same features can find it;
- the map does move, but the plate's own peak elsewhere is as high (`beats_twin_peak` below 1): the score's
  background noise hides it, and a score or calibration that quietens good plates would help.
The twins are good plates of exactly the test dishes and placements, so `auroc_vs_twins` is the image AUROC with
the dish-to-dish variation taken out. Synthetic data sets only: meta.json names the generator's recipe. What the
default bundle showed is in docs/measurements.md.
"""

from __future__ import annotations

import html
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import UserError
from edge.preprocess import InputSpec, read_image
from train import metrics
from train.data import META_FILE

log = logging.getLogger(__name__)

REACH = 0.03  # of the map's side: where a defect's response may sit around its mask (the map is blurred by a cell)
COLUMNS = ("n", "auroc_vs_twins", "score_rise", "local_rise", "beats_twin_peak", "flagged", "twins_flagged")


@dataclass(frozen=True)
class Recipe:
    """What `train synth` was asked for, read back from a data set's meta.json."""

    root: Path
    preset: str
    seed: int
    size: int
    scene: str
    train_per_dish: int | None

    @classmethod
    def read(cls, root: str | Path) -> Recipe:
        from train import synth

        root = Path(root)
        path = root / META_FILE
        try:
            meta = json.loads(path.read_text())
        except OSError:
            raise UserError(
                f"--data {root}: no {META_FILE}; twins need a data set written by `train synth`"
            ) from None
        except ValueError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("generator") != synth.GENERATOR:
            raise UserError(f"{path}: not written by `train synth`; twins need a synthetic data set")
        if meta.get("version") != synth.GENERATOR_VERSION:
            raise UserError(
                f"{path}: generator version {meta.get('version')}, this checkout renders version "
                f"{synth.GENERATOR_VERSION}; write the data set again with `train synth`"
            )
        if not meta.get("complete"):
            raise UserError(
                f"{path}: the data set was not written to the end; write it again with `train synth`"
            )
        try:
            recipe = cls(
                root,
                str(meta["preset"]),
                int(meta["seed"]),
                int(meta["size"]),
                str(meta.get("scene", "fixed")),
                None if meta.get("train_per_dish") is None else int(meta["train_per_dish"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: missing or invalid recipe field ({exc})") from None
        if recipe.preset not in synth.PRESETS or recipe.scene not in synth.SCENES:
            raise UserError(f"{path}: unknown preset {recipe.preset!r} or scene {recipe.scene!r}")
        return recipe


@dataclass(frozen=True)
class Pair:
    path: str  # the photo's path in the data set
    defect: str
    severity: str
    kind: str
    photo: np.ndarray  # BGR uint8, as stored
    twin: np.ndarray  # the same photo without its defect
    mask: np.ndarray  # bool, the photo's size


def twin_pairs(recipe: Recipe) -> list[Pair]:
    """Every test defect that has a twin (all but dishes not on the menu), rendered again with its twin.

    The photo rendered here must equal the stored one byte for byte: otherwise the folder was edited or written
    by another generator, and its twins would not be twins (a one-line error naming the file).
    """
    from train import synth

    menu = synth.make_menu(recipe.seed, synth.PRESETS[recipe.preset].dishes)
    venue = synth.Venue.make(recipe.seed, recipe.size) if recipe.scene == "fixed" else None
    pairs = []
    for item in synth.plan(recipe.preset, recipe.seed, recipe.train_per_dish):
        if item.split != "test" or item.defect in ("good", "unknown_meal"):
            continue
        photo, twin, mask, kind = synth.render_twin(item, menu, recipe.seed, recipe.size, venue)
        stored = read_image(recipe.root / item.path)
        if stored.shape != photo.shape or not np.array_equal(stored, photo):
            raise UserError(
                f"{recipe.root / item.path}: differs from what `train synth` renders for this recipe "
                f"({recipe.preset}, seed {recipe.seed}, {recipe.size} px); the folder was changed"
            )
        pairs.append(Pair(item.path, item.defect, item.severity, kind, photo, twin, mask > 0))
    if not pairs:
        raise UserError(f"--data {recipe.root}: no test defects with a twin")
    return pairs


def local_peaks(maps: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """Each map's highest value on its defect's mask, widened by REACH of the map's side."""
    out = np.empty(len(maps))
    for i, (m, mask) in enumerate(zip(maps, masks, strict=True)):
        h, w = m.shape
        small = cv2.resize(mask.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA) > 0
        r = max(1, round(REACH * max(h, w)))
        near = cv2.dilate(small.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
        out[i] = float(m[near].max()) if near.any() else float(m.max())
    return out


def summarize(
    pairs: list[Pair],
    photo: tuple[np.ndarray, np.ndarray],
    twin: tuple[np.ndarray, np.ndarray],
    threshold: float,
) -> dict:
    """Per defect and per severity (and all together): how far the defects move the score and the map."""
    (sx, mx), (st, mt) = photo, twin
    masks = [p.mask for p in pairs]
    lx, lt = local_peaks(mx, masks), local_peaks(mt, masks)
    changed = np.array([np.any(p.photo != p.twin, axis=2).mean() for p in pairs])

    def group(sel: np.ndarray) -> dict:
        n = int(sel.sum())
        auroc = metrics.auroc(np.r_[sx[sel], st[sel]], np.r_[np.ones(n), np.zeros(n)])
        return {
            "n": n,
            "auroc_vs_twins": None if auroc is None else round(auroc, 4),
            "score_rise": round(float(np.median(sx[sel] - st[sel])), 4),
            "local_rise": round(float(np.median(lx[sel] - lt[sel])), 4),
            "beats_twin_peak": round(float(np.mean(lx[sel] > st[sel])), 3),
            "flagged": round(float(np.mean(sx[sel] > threshold)), 3),
            "twins_flagged": round(float(np.mean(st[sel] > threshold)), 3),
            "changed_pixels": round(float(np.median(changed[sel])), 5),
        }

    defects = np.array([p.defect for p in pairs])
    severities = np.array([p.severity for p in pairs])
    plates = [
        {
            "path": p.path,
            "defect": p.defect,
            "kind": p.kind,
            "severity": p.severity,
            "score": round(float(sx[i]), 5),
            "twin_score": round(float(st[i]), 5),
            "local": round(float(lx[i]), 5),
            "twin_local": round(float(lt[i]), 5),
        }
        for i, p in enumerate(pairs)
    ]
    return {
        "threshold": threshold,
        "twin_scores": {
            "median": round(float(np.median(st)), 4),
            "p5": round(float(np.percentile(st, 5)), 4),
            "p95": round(float(np.percentile(st, 95)), 4),
        },
        "all": group(np.ones(len(pairs), bool)),
        "per_severity": {s: group(severities == s) for s in _ordered(severities)},
        "per_defect": {d: group(defects == d) for d in sorted(set(defects))},
        "plates": plates,  # each pair, for digging into one defect kind (a hair against an insect, say)
    }


def _ordered(severities: np.ndarray) -> list[str]:
    from train.evaluate import SEVERITY_ORDER

    return sorted(set(severities), key=lambda s: (SEVERITY_ORDER.get(s, 9), s))


def format_table(result: dict) -> str:
    head = f"{'':24s}" + "".join(f"{c:>16s}" for c in COLUMNS)
    lines = [
        f"{result['model']}: threshold {result['threshold']:.4g}; twins score {result['twin_scores']['median']:.4g} "
        f"(p5 {result['twin_scores']['p5']:.4g}, p95 {result['twin_scores']['p95']:.4g})",
        head,
    ]

    def row(name: str, g: dict) -> str:
        cells = "".join(f"{'-' if g[c] is None else g[c]:>16}" for c in COLUMNS)
        return f"{name:24s}{cells}"

    lines.append(row("all", result["all"]))
    lines += [row(f"severity {k}", v) for k, v in result["per_severity"].items()]
    lines += [row(k, v) for k, v in result["per_defect"].items()]
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, result: dict, pairs: list[Pair], x: np.ndarray, maps: np.ndarray, spec: InputSpec
) -> Path:
    """index.html with the table and twins.png: per defect, the pair whose local rise is the median of its defect
    (a typical case, not the best or the worst), the photo with its mask outlined, then the photo's and the
    twin's heat maps on one colour scale. Returns the index path."""
    from train.report import display_rgb, html_table, pyplot

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--report {out}: cannot create ({exc.strerror or exc})") from None
    n = len(pairs)
    rise = [p["local"] - p["twin_local"] for p in result["plates"]]
    picks = {}
    for d in result["per_defect"]:
        mine = sorted((i for i, p in enumerate(pairs) if p.defect == d), key=lambda i: rise[i])
        picks[d] = mine[len(mine) // 2]
    plt = pyplot()
    # the maps' own range, not 0 to their top: a kNN map sits near 1 everywhere
    vmin, vmax = (float(v) for v in np.percentile(maps, [1, 99.5]))
    fig, axes = plt.subplots(len(picks), 3, figsize=(6.6, 2.3 * len(picks)), dpi=90, squeeze=False)
    for r, (d, i) in enumerate(picks.items()):
        h, w = maps[i].shape
        outline = cv2.resize(pairs[i].mask.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA) > 0
        photo, twin = display_rgb(x[i], spec), display_rgb(x[n + i], spec)
        axes[r, 0].imshow(photo)
        axes[r, 0].contour(outline, levels=[0.5], colors="cyan", linewidths=0.7)
        axes[r, 0].set_title(f"{d}\n{pairs[i].kind}, {pairs[i].severity}", fontsize=7, loc="left")
        for c, (img, j, label) in enumerate(((photo, i, "photo"), (twin, n + i, "twin")), start=1):
            axes[r, c].imshow(img)
            axes[r, c].imshow(maps[j], cmap="jet", alpha=0.5, vmin=vmin, vmax=max(vmax, vmin + 1e-6))
            score = result["plates"][i]["score" if label == "photo" else "twin_score"]
            axes[r, c].set_title(f"{label} {score:.4g}", fontsize=7, loc="left")
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "twins.png")
    plt.close(fig)
    groups = [("all", result["all"])]
    groups += [(f"severity {k}", v) for k, v in result["per_severity"].items()]
    groups += list(result["per_defect"].items())
    table = html_table(["", *COLUMNS], [(name, *(g[c] for c in COLUMNS)) for name, g in groups])
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dishwatch twins: {html.escape(result["model"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:100%}}</style></head><body>
<h1>dishwatch twins</h1>
<p>Model <b>{html.escape(result["model"])}</b> (threshold {result["threshold"]:.4g}); data
{html.escape(result["data"])}. Each test defect beside its twin: the same plate rendered without the defect.
<code>local_rise</code> is how far the defect lifts the heat map where it lies (near 0: the model does not see it);
<code>beats_twin_peak</code> how often that spot outscores the twin's own peak (low: the plate's background hides
it); <code>auroc_vs_twins</code> the image AUROC against the twins. Twins score {result["twin_scores"]["median"]:.4g}
at the median (5th-95th percentile {result["twin_scores"]["p5"]:.4g}-{result["twin_scores"]["p95"]:.4g}).</p>
{table}
<h2>A typical pair per defect (median local rise): photo with its mask, photo's and twin's heat maps</h2>
<img src="twins.png" alt="defects beside their twins with heat maps">
</body></html>
"""
    index = out / "index.html"
    index.write_text(page)
    log.info("twins report written to %s", index)
    return index


def twins(
    model_dir: str,
    data: str,
    json_out: str | None = None,
    report_dir: str | None = None,
    learned: str | None = None,
) -> dict:
    """`learned`: a device's learned file, searched beside the bundle's bank (as `train evaluate --learned`), to
    see which defects what the kitchen taught has made harder to see."""
    from train.evaluate import check_learned, check_output, model_kind, score_images, write_result

    path = Path(model_dir)
    model_kind(path)  # one-line errors before anything is rendered
    check_output(json_out)
    check_learned(path, learned)
    pairs = twin_pairs(Recipe.read(data))
    log.info("twins: %d test defects rendered again without their defect", len(pairs))
    photos = [p.photo for p in pairs] + [p.twin for p in pairs]
    scored = score_images(path, photos, learned=learned)  # one model load
    scores, maps, threshold, _ = scored.results[scored.primary]
    scores, n = np.asarray(scores, dtype=np.float64), len(pairs)
    result = {
        "model": scored.name,
        "score_method": scored.primary,
        "data": str(Path(data).resolve()),
        "learned": scored.learned,
    }
    result.update(summarize(pairs, (scores[:n], maps[:n]), (scores[n:], maps[n:]), float(threshold)))
    if json_out:
        write_result(json_out, result)
    if report_dir:
        write_report(Path(report_dir), result, pairs, scored.x, maps, scored.spec)
    return result


def cli_main(args) -> int:
    result = twins(args.model, args.data, args.json_out, args.report, args.learned or None)
    sys.stdout.write(format_table(result))
    return 0
