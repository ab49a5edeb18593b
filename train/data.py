"""Dataset loader: finds the images of an MVTec- or DSM-layout folder, splits them, and checks they decode.

Why here and why numpy/OpenCV only: fit, evaluate, convert's calibration, `train inspect` and the clip maker all
need the same list of samples in the same splits, and `inspect` must stay light (no TensorFlow). Splits come from
a sha1 of each file's path relative to the dataset root, so every machine and every run agrees on them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from edge.errors import UserError
from edge.preprocess import IMAGE_SUFFIXES, InputSpec, preprocess, read_image

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"  # written by the synthetic generator (train/synth.py): per-image defect details
DSM_TEST_FRACTION = 0.2  # share of the DSM layout's good images held out for test (val_fraction goes to val)
DSM_ANOMALIES = {"uncorrect-meals": "uncorrect_meal", "unknown-meals": "unknown_meal"}
EXPECTED = (
    "expected the MVTec layout (train/good/, test/<defect>/, optional ground_truth/) "
    "or the DSM layout (images/<dish>/, ANO-DSM/uncorrect-meals/images/, ANO-DSM/unknown-meals/images/)"
)


@dataclass(frozen=True)
class Sample:
    path: Path
    split: str  # "train" | "val" | "test"
    dish: str  # dish type (first subfolder name, "" when none)
    defect: str  # "good" or a defect name
    mask: Path | None  # ground-truth mask (white = defective pixel) or None
    severity: str = ""  # "obvious" | "moderate" | "subtle" where the folder's meta.json says (synthetic sets)

    @property
    def anomalous(self) -> bool:
        return self.defect != "good"


@dataclass
class Dataset:
    root: Path
    layout: str  # "mvtec" | "dsm"
    samples: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r} (one of {', '.join(SPLITS)})")
        return [s for s in self.samples if s.split == name]

    def fingerprint(self) -> str:
        """sha256 over relative paths and sizes of images and masks: a run record says which data it saw."""
        h = hashlib.sha256()
        files = sorted({p for s in self.samples for p in (s.path, s.mask) if p is not None})
        for p in files:
            h.update(f"{_rel(p, self.root)}\t{p.stat().st_size}\n".encode())
        return h.hexdigest()


def load_dataset(root: str | Path, val_fraction: float = 0.1) -> Dataset:
    """Detect the layout, list and check every image, and assign splits. Raises UserError (one line)."""
    root = Path(root)
    if not 0.0 <= val_fraction < 1.0 - DSM_TEST_FRACTION:
        raise UserError(f"val_fraction {val_fraction}: must be in [0, {1.0 - DSM_TEST_FRACTION:g})")
    layout = detect_layout(root)
    skipped: list[tuple[Path, str]] = []
    if layout == "mvtec":
        samples = _mvtec_samples(root, val_fraction, skipped)
    else:
        samples = _dsm_samples(root, val_fraction, skipped)
    if not samples:
        what = (
            f"{len(skipped)} file(s) skipped, e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else EXPECTED
        )
        raise UserError(f"--data {root}: no readable images ({what})")
    samples.sort(key=lambda s: _rel(s.path, root))
    samples = _with_severities(root, samples)
    log.info("%s: %s layout, %d images, %d skipped", root, layout, len(samples), len(skipped))
    return Dataset(root=root, layout=layout, samples=samples, skipped=skipped)


def _with_severities(root: Path, samples: list[Sample]) -> list[Sample]:
    """Each anomalous image's severity from the synthetic generator's meta.json, when the folder has one.

    Why: a single AUROC hides whether a detector misses only the subtle defects or the obvious ones too; evaluate
    breaks the results down by severity when it is known. Real photo sets have no meta.json and are unaffected.
    """
    path = root / META_FILE
    if not path.is_file():
        return samples
    try:
        images = json.loads(path.read_text()).get("images") or {}
        severity = {rel: str(info.get("severity") or "") for rel, info in images.items()}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s: unreadable (%s); results will not be broken down by severity", path, exc)
        return samples
    return [replace(s, severity=severity.get(_rel(s.path, root), "")) if s.anomalous else s for s in samples]


def detect_layout(root: Path) -> str:
    """'mvtec' or 'dsm'; a missing, empty or unrecognised folder is a UserError naming it."""
    if not root.exists():
        raise UserError(f"--data {root}: no such folder ({EXPECTED})")
    if not root.is_dir():
        raise UserError(f"--data {root}: not a folder ({EXPECTED})")
    try:
        entries = [e for e in os.listdir(root) if not e.startswith(".")]
    except OSError as exc:
        raise UserError(f"--data {root}: cannot list ({exc.strerror or exc})") from None
    if not entries:
        raise UserError(f"--data {root}: folder is empty ({EXPECTED})")
    if (root / "train").is_dir() or (root / "test").is_dir():
        return "mvtec"
    if (root / "images").is_dir() or (root / "ANO-DSM").is_dir():
        return "dsm"
    nested = sorted(e for e in entries if (root / e / "train").is_dir() or (root / e / "images").is_dir())
    hint = f"; its subfolders {', '.join(nested[:3])} look like datasets, pass one of them" if nested else ""
    raise UserError(f"--data {root}: unrecognised folder ({EXPECTED}){hint}")


def read_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """Ground truth as bool (H, W), resized nearest to `shape`; all False without a (readable) mask."""
    h, w = int(shape[0]), int(shape[1])
    if sample.mask is None:
        return np.zeros((h, w), bool)
    img = _decode(sample.mask, cv2.IMREAD_GRAYSCALE)
    if isinstance(img, str):
        log.warning("mask %s: %s; treating %s as having no mask", sample.mask, img, sample.path)
        return np.zeros((h, w), bool)
    if img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST) >= 128


def load_images(samples: list[Sample], spec: InputSpec) -> np.ndarray:
    """float32 (N, H, W, C) in [0, 1] through the device's own read_image + preprocess.

    A file that stopped decoding since load_dataset is a UserError naming it, never silently dropped, so the
    arrays always line up with `samples`.
    """
    out = np.empty((len(samples), spec.height, spec.width, spec.channels), np.float32)
    for i, s in enumerate(samples):
        out[i] = preprocess(read_image(s.path), spec).reshape(out.shape[1:])
    return out


# --- layouts -----------------------------------------------------------------------------------------------


def _mvtec_samples(root: Path, val_fraction: float, skipped: list[tuple[Path, str]]) -> list[Sample]:
    masks = _mask_index(root / "ground_truth")
    samples: list[Sample] = []
    good_train: list[Path] = []
    for path in _images(root / "train", skipped):
        parts = path.relative_to(root / "train").parts
        if parts[0] != "good" or len(parts) < 2:
            _skip(skipped, path, "outside train/good/ (training images must be good)")
        elif _readable(path, skipped):
            good_train.append(path)
    val = _pick(root, good_train, [val_fraction])[0]
    for path in good_train:
        split = "val" if path in val else "train"
        samples.append(Sample(path, split, _dish(path, root / "train" / "good"), "good", None))
    for path in _images(root / "test", skipped):
        parts = path.relative_to(root / "test").parts
        if len(parts) < 2:
            _skip(skipped, path, "directly in test/ (expected test/good/ or test/<defect>/)")
            continue
        if not _readable(path, skipped):
            continue
        defect = parts[0]
        mask = None if defect == "good" else _find_mask(masks, parts, skipped)
        samples.append(Sample(path, "test", _dish(path, root / "test" / defect), defect, mask))
    return samples


def _dsm_samples(root: Path, val_fraction: float, skipped: list[tuple[Path, str]]) -> list[Sample]:
    good = [p for p in _images(root / "images", skipped) if _readable(p, skipped)]
    val, test = _pick(root, good, [val_fraction, DSM_TEST_FRACTION])
    samples = [
        Sample(
            p,
            "val" if p in val else "test" if p in test else "train",
            _dish(p, root / "images"),
            "good",
            None,
        )
        for p in good
    ]
    for folder, defect in DSM_ANOMALIES.items():
        base = root / "ANO-DSM" / folder / "images"
        for p in _images(base, skipped):
            if _readable(p, skipped):
                samples.append(Sample(p, "test", _dish(p, base), defect, None))
    return samples


def _pick(root: Path, paths: list[Path], fractions: list[float]) -> list[set[Path]]:
    """Carve consecutive hash ranges [0, f1), [f1, f1+f2), ... out of `paths`; the rest stays in train.

    Each non-zero share gets at least one image while one is left for train, so a small dataset still has a
    validation image to calibrate on.
    """
    keyed = sorted((_unit_hash(_rel(p, root)), p) for p in paths)
    groups: list[set[Path]] = []
    lo = 0.0
    for f in fractions:
        groups.append({p for u, p in keyed if lo <= u < lo + f})
        lo += f
    rest = [p for u, p in keyed if u >= lo]
    for f, g in zip(fractions, groups, strict=True):
        if f > 0 and not g and len(rest) > 1:
            g.add(rest.pop(0))
    return groups


def _unit_hash(rel: str) -> float:
    """sha1 of the relative path mapped to [0, 1): the same on every machine (unlike Python's hash())."""
    return int.from_bytes(hashlib.sha1(rel.encode("utf-8")).digest()[:8], "big") / 2.0**64


# --- files -------------------------------------------------------------------------------------------------


def _images(base: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Image files under `base` (any depth, suffix in any case), hidden files and folders left out."""
    if not base.is_dir():
        return []
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
            else:
                log.debug("ignoring %s: not an image suffix", Path(dirpath) / name)
    return found


def _decode(path: Path, flags: int) -> np.ndarray | str:
    """Decoded image, or the reason it cannot be (a string), without raising."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if buf.size == 0:
        return "empty file (0 bytes)"
    img = cv2.imdecode(buf, flags)
    if img is None or img.size == 0:
        return "not a readable image"
    return img


def _readable(path: Path, skipped: list[tuple[Path, str]]) -> bool:
    """Cheap check: a reduced (1/8) greyscale decode; the full decode happens later in load_images."""
    res = _decode(path, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if isinstance(res, str):
        _skip(skipped, path, res)
        return False
    return True


def _skip(skipped: list[tuple[Path, str]], path: Path, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)
    skipped.append((path, reason))


def _mask_index(gt: Path) -> dict[str, Path]:
    """ground_truth files keyed by their relative path without suffix, lower case: one walk, then lookups."""
    index: dict[str, Path] = {}
    for p in _images(gt, []):
        index[p.relative_to(gt).with_suffix("").as_posix().lower()] = p
    return index


def _find_mask(
    index: dict[str, Path], parts: tuple[str, ...], skipped: list[tuple[Path, str]]
) -> Path | None:
    """The mask at the mirrored path (defect/dish/n_mask), else flat (defect/n_mask); unreadable counts as none."""
    stem = Path(parts[-1]).stem
    mirrored = "/".join([*parts[:-1], f"{stem}_mask"]).lower()
    flat = f"{parts[0]}/{stem}_mask".lower()
    mask = index.get(mirrored) or index.get(flat)
    if mask is None:
        return None
    res = _decode(mask, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if isinstance(res, str):
        _skip(skipped, mask, f"mask {res}; its image is kept without a mask")
        return None
    return mask


def _dish(path: Path, base: Path) -> str:
    parts = path.relative_to(base).parts
    return parts[0] if len(parts) > 1 else ""


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# --- train inspect -----------------------------------------------------------------------------------------


def summarize(dataset: Dataset) -> dict:
    """Counts per split, dish and defect, and the skipped files: what `train inspect` prints."""

    def per_split(key) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = {}
        for s in dataset.samples:
            table.setdefault(key(s), Counter())[s.split] += 1
        return {k: {sp: table[k][sp] for sp in SPLITS} for k in sorted(table)}

    splits = {}
    for sp in SPLITS:
        part = dataset.split(sp)
        bad = sum(s.anomalous for s in part)
        splits[sp] = {"good": len(part) - bad, "anomalous": bad, "total": len(part)}
    return {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "images": len(dataset.samples),
        "masks": sum(s.mask is not None for s in dataset.samples),
        "fingerprint": dataset.fingerprint(),
        "splits": splits,
        "dishes": per_split(lambda s: s.dish),
        "defects": per_split(lambda s: s.defect),
        "skipped": [{"path": str(p), "reason": r} for p, r in dataset.skipped],
    }


def format_summary(summary: dict) -> str:
    """Readable tables for a terminal."""
    lines = [
        f"dataset     {summary['root']}",
        f"layout      {summary['layout']}",
        f"images      {summary['images']} ({summary['masks']} with a mask), {len(summary['skipped'])} skipped",
        f"fingerprint {summary['fingerprint']}",
        "",
        _table("split", ["good", "anomalous", "total"], summary["splits"]),
        "",
        _table("defect", list(SPLITS), summary["defects"]),
        "",
        _table("dish", list(SPLITS), {k or "(none)": v for k, v in summary["dishes"].items()}),
    ]
    if summary["skipped"]:
        lines += ["", "skipped:"] + [f"  {s['path']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines)


def _table(title: str, cols: list[str], rows: dict[str, dict[str, int]]) -> str:
    width = max([len(title), *(len(k) for k in rows)])
    out = [f"{title:<{width}}  " + "  ".join(f"{c:>9}" for c in cols)]
    out += [f"{k:<{width}}  " + "  ".join(f"{v[c]:>9}" for c in cols) for k, v in rows.items()]
    return "\n".join(out)


def cli_inspect(args) -> int:
    """`python -m train inspect --data DIR [--json]`."""
    summary = summarize(load_dataset(args.data))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
