"""Frame sources through the real grabber: files, folders and a local HTTP MJPEG camera that drops and returns."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera import ENDED, RECONNECTING, STREAMING, Grabber, frame_problem
from edge.config import CameraConfig
from tests.daemon_helpers import MjpegServer


def _frames(n: int, w: int = 160, h: int = 120) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        f = rng.integers(40, 200, (h, w, 3), dtype=np.uint8)
        cv2.putText(f, str(k), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
        out.append(f)
    return out


def _video(path: Path, n: int, fps: float) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (160, 120))
    for f in _frames(n):
        w.write(f)
    w.release()
    return path


def _drain(g: Grabber, until, timeout: float = 20.0) -> list:
    """Take frames until `until(g, frames)` holds; fails the test at the deadline."""
    got: list = []
    deadline = time.monotonic() + timeout
    while not until(g, got):
        assert time.monotonic() < deadline, (g.state, g.frames, dict(g.skipped), g.reconnects)
        f = g.get(0.1)
        if f is not None:
            got.append(f)
    return got


@pytest.fixture
def grabbers():
    made: list[Grabber] = []

    def make(**kw) -> Grabber:
        g = Grabber(CameraConfig(**{"fps": 20.0, "stall_timeout_s": 3.0, "reconnect_max_s": 1.0, **kw}))
        g.start()
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


def test_file_plays_in_order_then_ends(tmp_path, grabbers):
    g = grabbers(source=str(_video(tmp_path / "c.mp4", 20, 20.0)), loop=False)
    got = _drain(g, lambda g, got: g.ended and g.get(0) is None)
    assert g.state == ENDED
    assert g.frames == 20 and len(got) + g.dropped >= 20 - 1
    pos = [f.position_s for f in got]
    assert pos == sorted(pos) and pos[0] == 0.0 and abs(pos[-1] - 19 / 20) < 1e-6


def test_looping_file_starts_again(tmp_path, grabbers):
    g = grabbers(source=str(_video(tmp_path / "c.mp4", 10, 20.0)), loop=True)
    _drain(g, lambda g, got: len(got) > 2 and got[-1].position_s < got[-2].position_s)
    assert g.state == STREAMING and g.frames > 10


def test_frames_over_the_rate_are_grabbed_but_not_handed_out_until_the_rate_rises(tmp_path, grabbers):
    g = grabbers(source=str(_video(tmp_path / "c.mp4", 60, 20.0)), loop=False, fps=4.0)
    slow = _drain(g, lambda g, got: len(got) >= 3)
    g.set_fps(20.0)
    fast = _drain(g, lambda g, got: g.ended and g.get(0) is None)
    assert g.frames + g.rate_skipped + g.dropped == 60, "every frame of the file is accounted for"
    gaps = np.diff([f.position_s for f in slow])
    assert gaps.min() >= 0.15, f"at 4 fps the frames handed out are about 0.25 s apart: {gaps}"
    assert len(fast) >= 20 and g.rate_skipped >= 6, (len(fast), g.rate_skipped, g.dropped)


def test_bad_frames_in_a_folder_are_counted_and_skipped(tmp_path, grabbers):
    d = tmp_path / "imgs"
    d.mkdir()
    for k, f in enumerate(_frames(6)):
        cv2.imwrite(str(d / f"{k:02d}_good.png"), f)
    (d / "02_garbage.png").write_bytes(b"\x89PNG not really an image" * 10)
    cv2.imwrite(str(d / "03_small.png"), _frames(1, 80, 60)[0])
    cv2.imwrite(str(d / "04_grey.png"), np.full((120, 160, 3), 128, np.uint8))
    g = grabbers(source=str(d), loop=False, fps=50.0)
    _drain(g, lambda g, got: g.ended)
    assert g.frames == 6
    assert g.skipped["garbage"] == 1 and g.skipped["wrong_size"] == 1 and g.skipped["grey"] == 1


def test_frame_problems():
    good = _frames(1)[0]
    assert frame_problem(good, None) is None
    assert frame_problem(None, None) == "empty"
    assert frame_problem(good.astype(np.float32), None) == "garbage"
    assert frame_problem(good[..., 0], None) == "garbage"
    assert frame_problem(good, (240, 320)) == "wrong_size"
    assert frame_problem(np.zeros_like(good), None) == "grey"


def test_folder_that_vanishes_and_returns_is_reopened(tmp_path, grabbers):
    d = tmp_path / "imgs"
    d.mkdir()
    for k, f in enumerate(_frames(4)):
        cv2.imwrite(str(d / f"{k}.png"), f)
    g = grabbers(source=str(d), loop=True)
    _drain(g, lambda g, got: len(got) >= 3)
    d.rename(tmp_path / "away")
    _drain(g, lambda g, got: g.state == RECONNECTING)
    (tmp_path / "away").rename(d)
    n = g.frames
    _drain(g, lambda g, got: g.state == STREAMING and g.frames > n + 3)
    assert g.reconnects >= 1


def test_http_camera_that_drops_and_returns_is_reopened(grabbers):
    cam = MjpegServer(_frames(5), period_s=0.05).start()
    try:
        g = grabbers(source=cam.url)
        _drain(g, lambda g, got: len(got) >= 5)
        assert g.state == STREAMING and all(f.position_s is None for f in [g.get(1.0)] if f)
        cam.stop()
        _drain(g, lambda g, got: g.state == RECONNECTING)
        cam.start()
        n = g.frames
        _drain(g, lambda g, got: g.state == STREAMING and g.frames > n + 5)
        assert g.reconnects >= 1
    finally:
        cam.stop()


def test_sparse_stream_is_not_restarted_but_a_stall_is(grabbers):
    cam = MjpegServer(_frames(3), period_s=1.0).start()  # a frame a second, well inside the stall timeout
    try:
        g = grabbers(source=cam.url, stall_timeout_s=3.0)
        _drain(g, lambda g, got: len(got) >= 4)
        assert g.reconnects == 0 and g.state == STREAMING
        cam.period_s = 60.0  # the stream stays open but stops sending: a stall
        _drain(g, lambda g, got: g.state == RECONNECTING, timeout=30)
    finally:
        cam.stop()
