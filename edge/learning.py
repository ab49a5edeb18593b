"""The device learns from false alarms: a good plate the staff marked "False alarm" joins the memory bank.

Why on the device, between retrainings: the lever that quietens good plates is more good photos of each dish
(README "How many photos of each dish"), and the false alarms are the most useful of them, because they are the
good plates the bank covers worst. Measured on a simulated service of the dsm100 menu (`make bench-learning`,
README "The device learns from false alarms"): a dozen or two presses halve the false alarms on the plates that
follow, without a retraining, for a few percent more bank rows and a little recall at the same threshold.

What is learned: only the parts of the marked crop the bank did not already cover. Each fine patch (and coarse
cell) whose distance to the bank and to what was learned before is above LEARN_FLOOR (in the score's units, where
the bundle's threshold sits a little above 1) is a candidate; the farthest is added, the others it now covers drop
out, and so on (a greedy coreset of one crop). So the marked crop itself scores at most LEARN_FLOOR afterwards, and
a plate like it will too. A new row is divided by the median of the bank's row scales, since there are no held-out
photos to calibrate it on.

What it costs: every learned fine row is searched in numpy beside the bundle's search model, and learned coarse
rows join the coarse search. `feedback.max_learned_rows` bounds both; past it the oldest lessons are dropped.

Undo: relabelling an event "Confirm defect" removes what it taught. A new bundle starts from nothing: learned
rows are features of the model that made them (the file records the bundle's model and bank hashes).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge.errors import UserError
from edge.knn import nn_distances

if TYPE_CHECKING:
    from edge.bundle import BundleInfo
    from edge.knn import Bank
    from edge.scorer import Scorer

log = logging.getLogger(__name__)

LEARN_FLOOR = 1.0  # score units: a typical good crop's peak; the bundle's threshold sits above it
FORMAT = 1


@dataclass(frozen=True)
class LearnedRows:
    """What the bank searches besides its own rows: learned fine rows and coarse cells with their row scales
    (1 where the bank's distances are plain; Bank.new_row_scales)."""

    fine: np.ndarray  # (N, Df) float32
    fine_scale: np.ndarray  # (N,) float32
    coarse: np.ndarray  # (M, Dc) float32; (0, 0) without a coarse stage
    coarse_scale: np.ndarray  # (M,) float32

    def __len__(self) -> int:
        return len(self.fine) + len(self.coarse)

    @classmethod
    def nothing(cls, dims: tuple[int, int]) -> LearnedRows:
        """No learned rows for a bank of (fine, coarse) feature dims (coarse 0 without a coarse stage)."""
        z = np.zeros(0, np.float32)
        return cls(np.zeros((0, dims[0]), np.float32), z, np.zeros((0, dims[1]), np.float32), z)


def lesson(bank: Bank, features: np.ndarray, floor: float = LEARN_FLOOR) -> LearnedRows:
    """The rows a marked crop's (h, w, D) feature grid teaches `bank` (which holds what was learned so far)."""
    fine_dim = bank.patches.shape[1]
    fine = np.ascontiguousarray(features[..., :fine_dim].reshape(-1, fine_dim), np.float32)
    fine_scale, coarse_scale = bank.new_row_scales()
    unit = bank.patch_scale
    pick = pick_rows(fine, bank.fine_distances(fine) / unit, fine_scale, unit, floor)
    out_fine = fine[pick]
    c = bank.coarse
    if c is None:
        out_coarse = np.zeros((0, 0), np.float32)
    else:
        cells = np.ascontiguousarray(c.cells(features).reshape(-1, c.patches.shape[1]), np.float32)
        d = nn_distances(cells, c.patches, row_scale=c.row_scale) / c.scale
        out_coarse = cells[pick_rows(cells, d, coarse_scale, c.scale, floor)]
    return LearnedRows(
        out_fine,
        np.full(len(out_fine), fine_scale, np.float32),
        out_coarse,
        np.full(len(out_coarse), coarse_scale, np.float32),
    )


def pick_rows(rows: np.ndarray, distance: np.ndarray, scale: float, unit: float, floor: float) -> np.ndarray:
    """Indices of `rows` to add so that every row ends within `floor` of the bank or an added row.

    `distance` (N,) is each row's present distance in score units (already divided by its nearest row's scale
    and by `unit`, the bank's patch_scale); a new row divides by `scale`. Greedy, farthest first: the rows a
    pick covers are not picked again, so a crop adds a few dozen rows, not hundreds.
    """
    d = np.asarray(distance, np.float32).copy()
    q = np.asarray(rows, np.float32)
    cand = np.nonzero(d > floor)[0]
    picked = []
    while cand.size:
        i = int(cand[np.argmax(d[cand])])
        picked.append(i)
        diff = q[cand] - q[i]
        near = np.sqrt(np.einsum("ij,ij->i", diff, diff)) / np.float32(scale * unit)
        d[cand] = np.minimum(d[cand], near)
        cand = cand[d[cand] > floor]
    return np.array(picked, dtype=np.int64)


PARTS = ("fine", "fine_scale", "coarse", "coarse_scale")  # LearnedRows' fields, as stored


def _join(parts: list[LearnedRows], dims: tuple[int, int]) -> LearnedRows:
    if not parts:
        return LearnedRows.nothing(dims)
    return LearnedRows(*(np.concatenate([getattr(p, k) for p in parts]) for k in PARTS))


class Lessons:
    """The rows each marked event taught, in the order they were taught, kept on disk across restarts."""

    def __init__(self, path: str | Path, bundle_key: str, dims: tuple[int, int], max_rows: int) -> None:
        self.path = Path(path)
        # the bundle's model and bank hashes: rows belong to the features that made them
        self.key = bundle_key
        self.dims = dims  # (fine, coarse) feature dims; coarse 0 without a coarse stage
        self.max_rows = max_rows
        self.events: dict[str, LearnedRows] = {}  # oldest first (dicts keep insertion order)
        # the MQTT thread teaches while the main loop reads the counts for stats
        self._lock = threading.RLock()

    def rows(self) -> LearnedRows:
        """Everything learned, as the bank searches it."""
        with self._lock:
            return _join(list(self.events.values()), self.dims)

    @property
    def n_rows(self) -> int:
        with self._lock:
            return sum(len(r) for r in self.events.values())

    @property
    def n_events(self) -> int:
        with self._lock:
            return len(self.events)

    def add(self, event_id: str, rows: LearnedRows) -> list[str]:
        """Record what `event_id` taught (replacing its earlier lesson); drop the oldest lessons beyond
        max_rows. Returns the ids dropped."""
        with self._lock:
            return self._add(event_id, rows)

    def _add(self, event_id: str, rows: LearnedRows) -> list[str]:
        self.events.pop(event_id, None)
        self.events[event_id] = rows
        dropped = []
        while self.n_rows > self.max_rows and len(self.events) > 1:
            oldest = next(iter(self.events))
            del self.events[oldest]
            dropped.append(oldest)
        if self.n_rows > self.max_rows:  # one crop alone over the cap: keep its farthest-first picks
            nf = min(len(rows.fine), self.max_rows)
            nc = min(len(rows.coarse), self.max_rows - nf)
            self.events[event_id] = LearnedRows(
                rows.fine[:nf], rows.fine_scale[:nf], rows.coarse[:nc], rows.coarse_scale[:nc]
            )
        return dropped

    def remove(self, event_id: str) -> bool:
        with self._lock:
            return self.events.pop(event_id, None) is not None

    def save(self) -> None:
        """Write atomically (a crash leaves the previous file); OSError is the caller's to log."""
        with self._lock:
            ids = list(self.events)
            parts = [self.events[e] for e in ids]
        joined = _join(parts, self.dims)
        arrays = {
            "format": np.array(FORMAT),
            "bundle": np.array(self.key),
            "events": np.array(ids, dtype=str),
        }
        for name in PARTS:
            arrays[name] = getattr(joined, name)
        arrays["fine_count"] = np.array([len(p.fine) for p in parts], dtype=np.int64)
        arrays["coarse_count"] = np.array([len(p.coarse) for p in parts], dtype=np.int64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.parent / f".{self.path.name}.tmp"
        try:
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def load(self, set_aside: bool = True) -> str:
        """Read what earlier runs learned; returns a one-line account for the log. The daemon's call never
        raises: a file that does not fit this bundle is moved aside (`.old`), since the crops themselves stay
        filed in the feedback folder for the next training. `set_aside=False` (edge score --learned) leaves the
        file alone and raises a one-line UserError instead."""
        if not self.path.is_file():
            if not set_aside:
                raise UserError(f"{self.path}: no such learned file")
            return f"nothing learned yet ({self.path})"
        try:
            with np.load(self.path, allow_pickle=False) as z:
                problem = _header_problem(z, self.key)
                if problem:
                    return self._refuse(problem, set_aside)
                ids = [str(e) for e in z["events"]]
                stored = {k: np.asarray(z[k], np.float32) for k in PARTS}
                counts = {k: np.asarray(z[f"{k}_count"], np.int64) for k in ("fine", "coarse")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return self._refuse(f"unreadable ({exc})", set_aside)
        problem = self._check(stored, counts, len(ids))
        if problem:
            return self._refuse(problem, set_aside)
        cut = {k: np.cumsum(counts[k])[:-1] for k in counts}
        split = {k: np.split(stored[k], cut[k.split("_")[0]]) for k in PARTS}
        self.events = {eid: LearnedRows(*(split[k][i] for k in PARTS)) for i, eid in enumerate(ids)}
        return f"{self.n_rows} learned rows from {len(ids)} false alarms ({self.path})"

    def _check(self, stored: dict, counts: dict, n_events: int) -> str:
        for k, dim in zip(("fine", "coarse"), self.dims, strict=True):
            rows, scale, c = stored[k], stored[f"{k}_scale"], counts[k]
            if rows.ndim != 2 or rows.shape[1] != dim:
                return f"{k} rows of shape {rows.shape} do not fit this bundle's bank (dim {dim})"
            if len(c) != n_events or c.sum() != len(rows) or (c < 0).any() or scale.shape != (len(rows),):
                return f"{k} rows and their counts or scales disagree"
            if not (np.isfinite(rows).all() and np.isfinite(scale).all() and (scale > 0).all()):
                return f"{k} rows or scales are not finite and positive"
        return ""

    def _refuse(self, why: str, set_aside: bool) -> str:
        if not set_aside:
            raise UserError(f"{self.path}: {why}")
        aside = self.path.with_name(self.path.name + ".old")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            return f"{self.path}: {why}; not used, and could not be moved aside ({exc})"
        return f"{self.path}: {why}; not used (moved to {aside.name}), learning starts again"


def _header_problem(z, key: str) -> str:
    """Why an opened learned file cannot serve the bundle with `key` ("" when it can)."""
    fmt = int(z["format"])
    if fmt != FORMAT:
        return f"format {fmt}, this version reads {FORMAT}"
    return "" if str(z["bundle"]) == key else "learned with another bundle"


def bundle_key(b: BundleInfo) -> str:
    """What learned rows belong to: the bundle's model and bank hashes (rows are features of that model)."""
    return f"{b.sha256}:{(b.score_params.get('bank') or {}).get('sha256', '')}"


def lessons_for(scorer: Scorer, path: str | Path, max_rows: int) -> Lessons:
    """The store of what `scorer`'s bundle learned."""
    bank = scorer.loaded_bank()
    dims = (bank.patches.shape[1], 0 if bank.coarse is None else bank.coarse.patches.shape[1])
    return Lessons(path, bundle_key(scorer.bundle), dims, max_rows)


def check_learned_file(path: str | Path, bundle: BundleInfo) -> None:
    """A one-line UserError unless `path` is a learned file of `bundle`: `edge score --learned` asks before it
    loads the model, so a wrong file is its only line on stderr."""
    try:
        with np.load(path, allow_pickle=False) as z:
            problem = _header_problem(z, bundle_key(bundle))
    except FileNotFoundError:
        raise UserError(f"{path}: no such learned file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a learned file ({exc})") from None
    if problem:
        raise UserError(f"{path}: {problem} (bundle {bundle.path})")


def check_offline_learned(path: str | Path, bundle_dir: str | Path) -> None:
    """The one-line refusals of scoring offline with a device's learned file (`edge score`, `train evaluate`),
    before any model loads: a reconstruction bundle (it has no bank), or a file of another bundle or none."""
    from edge.bundle import KNN_METHODS, read_bundle

    bundle = read_bundle(bundle_dir)
    if bundle.score_method not in KNN_METHODS:
        raise UserError(f"--learned {path}: bundle {bundle_dir} scores by reconstruction, it has no bank")
    check_learned_file(path, bundle)


def use_learned(scorer: Scorer, path: str | Path) -> Lessons:
    """Search a device's learned rows beside `scorer`'s bank, offline: the file is read, never moved or
    written (a file that does not fit is a one-line UserError). Returns the store, for its counts."""
    lessons = lessons_for(scorer, path, max_rows=sys.maxsize)
    log.info("learned rows: %s", lessons.load(set_aside=False))
    scorer.set_learned(lessons.rows())
    return lessons


class Teacher:
    """Feedback's hook into the scorer: a false alarm is taught, a confirmed defect untaught.

    Runs on the MQTT thread (edge.feedback); the scorer's lock keeps its model and bank consistent with the
    main loop's scoring. Every failure is one log line, never an exception into the client.
    """

    def __init__(self, scorer: Scorer, lessons: Lessons) -> None:
        self.scorer = scorer
        self.lessons = lessons

    def on_label(self, event_id: str, label: str, crop_path: Path | None) -> None:
        try:
            changed = self._apply(event_id, label, crop_path)
        except Exception:  # a hook on paho's thread must not raise
            log.exception("learning from event %s failed; the bank is unchanged", event_id)
            return
        if changed:
            try:
                self.lessons.save()
            except OSError as exc:
                log.warning(
                    "learned rows not saved to %s (%s); they hold until a restart", self.lessons.path, exc
                )

    def _apply(self, event_id: str, label: str, crop_path: Path | None) -> bool:
        if label != "false_alarm":
            if not self.lessons.remove(event_id):
                return False
            self.scorer.set_learned(self.lessons.rows())
            log.info("event %s relabelled %s: what it taught is forgotten", event_id, label)
            return True
        crop = None if crop_path is None else cv2.imread(str(crop_path), cv2.IMREAD_COLOR)
        if crop is None:  # the filer has already said why (expired or unknown id)
            return False
        # taught again: measure against the bank without this event's earlier rows
        if self.lessons.remove(event_id):
            self.scorer.set_learned(self.lessons.rows())
        rows = self.scorer.lesson(crop)
        dropped = self.lessons.add(event_id, rows)
        self.scorer.set_learned(self.lessons.rows())
        log.info(
            "false alarm %s learned: %d fine and %d coarse rows (%d rows from %d false alarms)%s",
            event_id,
            len(rows.fine),
            len(rows.coarse),
            self.lessons.n_rows,
            self.lessons.n_events,
            f"; the {len(dropped)} oldest dropped (feedback.max_learned_rows)" if dropped else "",
        )
        return True
