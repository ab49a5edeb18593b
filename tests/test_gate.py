"""The per-slot gate: one score per still dish, never a moving hand, rescoring only a swapped dish."""

from __future__ import annotations

import json

import cv2
import numpy as np

from edge.config import GateConfig, SlotConfig
from edge.gate import ANOMALY, BUSY, EMPTY, OK, SlotGate
from tests.conftest import run_cli
from tests.daemon_helpers import mini_dataset

FPS = 10.0
RECT = (20, 20, 80, 80)


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(140, 8, (120, 160)).astype(np.float32)
    return np.repeat(cv2.blur(base, (9, 1))[..., None], 3, axis=2).astype(np.uint8)


def _plate(frame: np.ndarray, colour=(230, 230, 230), dx: int = 0) -> np.ndarray:
    f = frame.copy()
    cv2.circle(f, (60 + dx, 60), 35, colour, -1)
    cv2.circle(f, (60 + dx, 60), 15, (40, 120, 200), -1)
    return f


def _hand(frame: np.ndarray, k: int) -> np.ndarray:
    f = frame.copy()
    y = 10 + (k * 7) % 90
    cv2.ellipse(f, (60, y), (22, 14), 0, 0, 360, (105, 150, 205), -1)
    return f


def _run(gate: SlotGate, frames, t0: float = 0.0):
    """Feed frames at FPS; returns (scores as times, states seen)."""
    scores, states = [], []
    for k, f in enumerate(frames):
        t = t0 + k / FPS
        step = gate.update(f, t)
        if step.score:
            scores.append(t)
            gate.set_verdict(False)
        states.append(gate.state)
    return scores, states


def _gate(**kw) -> SlotGate:
    return SlotGate(SlotConfig("a", RECT), GateConfig(**kw))


def test_one_plate_scored_once_after_still_and_hand_never():
    empty = _scene()
    g = _gate()
    frames = [empty] * 10 + [_hand(empty, k) for k in range(40)]  # 4 s of a hand waving: never still
    scores, states = _run(g, frames)
    assert scores == [] and BUSY in states
    plate = _plate(empty)
    scores, states = _run(g, [plate] * 40, t0=5.0)  # 4 s still
    assert len(scores) == 1 and 5.0 + 0.99 <= scores[0] <= 5.0 + 1.2
    assert states[-1] == OK


def test_hand_over_held_plate_does_not_rescore_but_swap_does():
    empty = _scene()
    g = _gate()
    plate = _plate(empty)
    scores, _ = _run(g, [empty] * 10 + [plate] * 30)
    assert len(scores) == 1
    reach = [_hand(plate, k) for k in range(15)] + [plate] * 30  # a hand reaches over, leaves: same dish
    scores, states = _run(g, reach, t0=10.0)
    assert scores == [] and set(states) == {OK}
    swapped = [_hand(plate, k) for k in range(5)] + [_plate(empty, (60, 60, 200))] * 30
    scores, _ = _run(g, swapped, t0=20.0)
    assert len(scores) == 1, "a different dish that settles is scored again"
    nudged = [_plate(empty, (60, 60, 200), dx=2)] * 30  # a small nudge keeps the verdict
    scores, _ = _run(g, nudged, t0=30.0)
    assert scores == []


def test_removed_and_put_back_is_a_new_event_and_empty_follows_light():
    empty = _scene()
    g = _gate(empty_seconds=1.0)
    plate = _plate(empty)
    s1, _ = _run(g, [empty] * 10 + [plate] * 30)
    s2, states = _run(g, [empty] * 20, t0=10.0)
    assert states[-1] == EMPTY and s2 == []
    s3, _ = _run(g, [plate] * 30, t0=20.0)
    assert len(s1) == 1 and len(s3) == 1
    g2 = _gate()
    ramp = [np.clip(empty.astype(int) + k // 4, 0, 255).astype(np.uint8) for k in range(120)]  # slow dusk
    scores, states = _run(g2, ramp)
    assert scores == [] and set(states) - {"learning"} == {EMPTY}


def test_anomaly_state_is_held():
    empty = _scene()
    g = _gate()
    for k, f in enumerate([empty] * 10 + [_plate(empty)] * 20):
        if g.update(f, k / FPS).score:
            assert g.set_verdict(True) == ANOMALY
    assert g.state == ANOMALY


def test_gate_on_a_rendered_clip_scores_each_plate_once_inside_its_still_window(tmp_path):
    data = mini_dataset(tmp_path / "data")
    out, tl_path = tmp_path / "c.mp4", tmp_path / "c.json"
    args = ("--size", "320x240", "--fps", "10", "--plates", "4", "--rest", "2.5", "--seed", "3")
    proc = run_cli("edge", "clip", "--data", str(data), "--out", str(out), "--timeline", str(tl_path), *args)
    assert proc.returncode == 0, proc.stderr
    tl = json.loads(tl_path.read_text())
    gates = {s["id"]: SlotGate(SlotConfig(s["id"], tuple(s["rect"])), GateConfig()) for s in tl["slots"]}
    cap = cv2.VideoCapture(tl["video"])
    scored: list[tuple[str, float]] = []
    k = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        for sid, g in gates.items():
            if g.update(frame, k / tl["fps"]).score:
                scored.append((sid, k / tl["fps"]))
                g.set_verdict(False)
        k += 1
    assert k == tl["frames"]
    assert len(scored) == len(tl["plates"])
    for p in tl["plates"]:
        hits = [t for sid, t in scored if sid == p["slot"] and p["t_still_start"] <= t <= p["t_still_end"]]
        assert len(hits) == 1, (p, scored)
