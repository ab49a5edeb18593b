"""`python -m edge clip`: a readable video whose timeline tells the truth about plates, hands and still windows."""

from __future__ import annotations

import json

import cv2
import numpy as np

from tests.conftest import assert_one_line_error, run_cli
from tests.daemon_helpers import mini_dataset

ARGS = ("--size", "320x240", "--fps", "10", "--plates", "4", "--rest", "2.0", "--seed", "5")


def _render(tmp_path, data, *extra):
    out, tl = tmp_path / "c.mp4", tmp_path / "c.json"
    proc = run_cli(
        "edge", "clip", "--data", str(data), "--out", str(out), "--timeline", str(tl), *ARGS, *extra
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(tl.read_text())


def test_clip_is_readable_and_its_timeline_is_true(tmp_path):
    data = mini_dataset(tmp_path / "data")
    tl = _render(tmp_path, data, "--shape", "circle")
    cap = cv2.VideoCapture(tl["video"])
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.int16))
    assert len(frames) == tl["frames"] and frames[0].shape == (240, 320)
    assert [p["anomalous"] for p in tl["plates"]] == [False, True, False, True]
    assert {p["defect"] for p in tl["plates"]} == {"good", "stain"}
    rects = {s["id"]: s["rect"] for s in tl["slots"]}

    def motion(k: int, slot: str) -> float:
        x, y, w, h = rects[slot]
        a, b = frames[k][y : y + h, x : x + w], frames[k - 1][y : y + h, x : x + w]
        return float(np.mean(np.abs(a - b) > 25))

    fps = tl["fps"]
    for p in tl["plates"]:
        assert p["t_enter"] < p["t_still_start"] < p["t_still_end"] < p["t_leave"]
        assert p["t_still_end"] - p["t_still_start"] >= 1.9
        still = range(int(np.ceil(p["t_still_start"] * fps)) + 1, int(p["t_still_end"] * fps))
        assert max(motion(k, p["slot"]) for k in still) < 0.01, "nothing moves in a still window"
        moving = range(int(p["t_enter"] * fps) + 1, int(p["t_still_start"] * fps))
        assert max(motion(k, p["slot"]) for k in moving) > 0.05, "the plate and hand move before it"


def test_same_seed_same_timeline(tmp_path):
    data = mini_dataset(tmp_path / "data")
    a = _render(tmp_path / "a", data)
    b = _render(tmp_path / "b", data)
    strip = lambda t: {k: v for k, v in t.items() if k != "video"}  # noqa: E731
    assert strip(a) == strip(b)


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    out = ("--out", str(tmp_path / "c.mp4"), "--timeline", str(tmp_path / "c.json"))
    assert_one_line_error(run_cli("edge", "clip", "--data", str(tmp_path / "empty"), *out), "test split")
    data = mini_dataset(tmp_path / "data")
    assert_one_line_error(run_cli("edge", "clip", "--data", str(data), *out, "--size", "big"), "--size")
    assert_one_line_error(run_cli("edge", "clip", "--data", str(data), *out, "--defect", "nope"), "--defect")
