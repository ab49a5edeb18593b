"""The per-slot gate: one score per still dish, never a moving hand or a resting arm, rescoring only a swapped dish."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from edge.config import GateConfig, SlotConfig, parse
from edge.errors import UserError
from edge.gate import ANOMALY, BUSY, EMPTY, OK, SlotGate
from tests.conftest import assert_one_line_error, run_cli
from tests.daemon_helpers import mini_dataset, write_config

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


def _gate(rect=RECT, **kw) -> SlotGate:
    return SlotGate(SlotConfig("a", rect), GateConfig(**kw))


def _arm(frame: np.ndarray, top: int) -> np.ndarray:
    """A skin-coloured forearm reaching up from the bottom edge of the frame, its hand at row `top`."""
    f = frame.copy()
    cv2.rectangle(f, (48, top), (72, f.shape[0]), (105, 150, 205), -1)
    cv2.ellipse(f, (60, top), (18, 10), 0, 0, 360, (95, 140, 200), -1)
    return f


def _arm_visit(plate: np.ndarray, pause: int) -> list[np.ndarray]:
    """An arm comes in over the plate from below (outside the slot), rests `pause` frames, and goes away."""
    tops = list(range(111, 55, -7))  # 111: the hand still touches the ring below the slot
    return (
        [_arm(plate, y) for y in tops]
        + [_arm(plate, tops[-1])] * pause
        + [_arm(plate, y) for y in tops[::-1]]
    )


def test_one_plate_scored_once_after_still_and_hand_never():
    empty = _scene()
    g = _gate()
    frames = [empty] * 10 + [_hand(empty, k) for k in range(40)]  # 4 s of a hand waving: never still
    scores, states = _run(g, frames)
    assert scores == [] and BUSY in states
    plate = _plate(empty)
    scores, states = _run(g, [plate] * 40, t0=5.0)  # 4 s still
    wait = g.cfg.still_seconds
    assert len(scores) == 1 and 5.0 + wait - 0.01 <= scores[0] <= 5.0 + wait + 0.25
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


def test_the_slot_is_quiet_when_empty_or_holding_a_still_scored_dish():
    """SlotGate.quiet lets the daemon drop to camera.idle_fps: never while a dish arrives, waits or is touched."""
    empty, g = _scene(), _gate()
    _run(g, [empty] * 10)
    assert g.state == EMPTY and g.quiet(1.0)
    plate = _plate(empty)
    _run(g, [_hand(empty, k) for k in range(5)], t0=1.0)
    assert g.state == BUSY and not g.quiet(1.5) and not g.quiet(10.0), "busy is never quiet"
    scores, states = _run(g, [plate] * 30, t0=1.5)  # settles, is scored, then stands still
    assert len(scores) == 1 and states[-1] == OK
    assert g.quiet(4.4), "a scored dish that stood still for QUIET_SECONDS"
    _run(g, [_hand(plate, 0), _hand(plate, 1)], t0=4.5)  # a hand reaches over the held dish
    assert g.state == OK and not g.quiet(4.6) and g.quiet(5.7)


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


# --- the guard ring -------------------------------------------------------------------------------


def test_a_resting_arm_is_not_scored_and_the_plate_is_scored_once_after_it_left():
    empty = _scene()
    plate = _plate(empty)
    g = _gate()
    assert g.cfg.still_seconds < 0.5, "the point of the ring: a short still wait"
    visit = _arm_visit(plate, pause=30)  # rests 3 s: far longer than still_seconds
    scores, states = _run(g, [empty] * 10 + [plate] + visit)
    assert scores == [] and states[-1] == BUSY, "never scored while the arm rests over the plate"
    t_left = (10 + 1 + len(visit)) / FPS  # the first frame without the arm
    scores, states = _run(g, [plate] * 20, t0=t_left)
    assert len(scores) == 1 and t_left < scores[0] <= t_left + g.cfg.still_seconds + 0.25, scores
    assert states[-1] == OK
    # it comes back, rests over the held plate and leaves: the same dish, no second event
    scores, states = _run(g, _arm_visit(plate, pause=30) + [plate] * 20, t0=t_left + 2.0)
    assert scores == [] and set(states) == {OK}


def test_without_the_ring_a_resting_arm_is_scored_as_before():
    """guard_px = 0: only still_seconds protects, exactly the old gate (so it must be long, about 1 s)."""
    empty = _scene()
    plate = _plate(empty)
    visit = _arm_visit(plate, pause=30)
    scores, _ = _run(_gate(guard_px=0), [empty] * 10 + [plate] + visit)
    pause = ((11 + len(visit) - 30 - 8) / FPS, (11 + len(visit) - 8) / FPS)  # the frames the arm rests
    hits = [t for t in scores if pause[0] <= t < pause[1]]
    assert hits, f"a short wait without the ring scores the resting arm ({scores}): the ring is what protects"
    g = _gate(guard_px=0, still_seconds=1.0)
    scores, states = _run(g, [empty] * 10 + [_hand(empty, k) for k in range(40)])
    assert scores == [] and BUSY in states
    scores, states = _run(g, [plate] * 40, t0=5.0)
    assert len(scores) == 1 and 5.0 + 0.99 <= scores[0] <= 5.0 + 1.2 and states[-1] == OK


def test_a_plate_put_down_without_an_arm_is_scored_after_still_seconds():
    empty = _scene()
    spill = _plate(empty)
    spill[100:103, 30:90] = 60  # its shadow spills 3 px over the border: touches only the ring's inner edge
    for plate in (_plate(empty), spill):
        g = _gate()
        scores, states = _run(g, [empty] * 10 + [plate] * 10)
        assert len(scores) == 1, scores
        assert 1.0 + g.cfg.still_seconds - 0.01 <= scores[0] <= 1.0 + g.cfg.still_seconds + 0.25
        assert states[-1] == OK


def test_a_static_change_across_the_ring_blocks_until_it_is_learned():
    """A neighbour's plate overhanging the ring (not the slot) blocks, then is learned after guard_relearn_seconds."""
    empty = _scene()
    neighbour = empty.copy()
    cv2.rectangle(neighbour, (100, 30), (150, 90), (200, 200, 210), -1)  # right of the slot, across its ring
    g = _gate(guard_relearn_seconds=2.0)
    both = _plate(neighbour)
    scores, _ = _run(g, [empty] * 10 + [neighbour] * 10 + [both] * 40)  # plate at 2.0 s
    assert len(scores) == 1, scores
    assert 3.0 <= scores[0] <= 4.5, "blocked until the ring learned the neighbour (there from 1.0 s, + 2.0 s)"
    far = empty.copy()
    cv2.rectangle(far, (103, 30), (150, 90), (200, 200, 210), -1)  # reaches only the ring's outer edge
    g = _gate(guard_relearn_seconds=30.0)
    scores, _ = _run(g, [empty] * 10 + [far] * 10 + [_plate(far)] * 10)
    assert len(scores) == 1 and scores[0] <= 2.0 + g.cfg.still_seconds + 0.25, "not crossing: no block"


def test_the_learned_static_change_can_leave_and_come_back():
    empty = _scene()
    neighbour = empty.copy()
    cv2.rectangle(neighbour, (100, 30), (150, 90), (200, 200, 210), -1)
    g = _gate(guard_relearn_seconds=1.0)
    _run(g, [empty] * 10 + [neighbour] * 30)  # learned as static
    # the neighbour gone (the empty reference matches), then back (the learned static one matches)
    for k, scene in enumerate((empty, neighbour)):
        t0 = 5.0 + 5 * k
        scores, _ = _run(g, [scene] * 10 + [_plate(scene)] * 10 + [scene] * 20, t0=t0)
        assert len(scores) == 1 and scores[0] <= t0 + 1.0 + g.cfg.still_seconds + 0.25, (k, scores)


def test_a_slot_at_the_frame_edge_has_no_ring_there_and_says_so(caplog):
    empty = _scene()
    plate = empty.copy()
    cv2.circle(plate, (40, 60), 35, (230, 230, 230), -1)
    with caplog.at_level(logging.WARNING, logger="edge.gate"):
        g = _gate(rect=(0, 20, 80, 80))
        scores, _ = _run(g, [empty] * 10 + [plate] * 10)
    assert len(scores) == 1
    assert "no guard ring on the left side" in caplog.text


@pytest.mark.parametrize(
    ("gate", "needle"),
    [
        ({"guard_px": -2}, "gate.guard_px: must be >= 0"),
        ({"guard_px": 4.5}, "gate.guard_px: expected an integer"),
        ({"guard_px": "auto"}, "gate.guard_px: expected an integer"),
        ({"guard_relearn_seconds": 0}, "gate.guard_relearn_seconds: must be > 0"),
        ({"guard_relearn_seconds": "5"}, "gate.guard_relearn_seconds: expected a number"),
        ({"still_seconds": -0.1}, "gate.still_seconds: must be > 0"),
    ],
)
def test_guard_config_errors_name_the_key(standin_bundle, gate, needle):
    data = {
        "slots": [{"id": "a", "rect": [0, 0, 32, 32]}],
        "model": {"bundle": str(standin_bundle)},
        "gate": gate,
    }
    with pytest.raises(UserError, match=needle):
        parse(data)


def test_guard_config_defaults_and_one_line_error(tmp_path, standin_bundle):
    slots = [{"id": "a", "rect": [0, 0, 32, 32]}]
    ok = parse({"slots": slots, "model": {"bundle": str(standin_bundle)}, "gate": {"guard_px": 0}})
    assert ok.gate.guard_px == 0 and GateConfig().guard_px == -1 and GateConfig().still_seconds <= 0.2
    cfg = write_config(
        tmp_path / "bad.toml",
        "c.mp4",
        slots,
        standin_bundle,
        "mqtt://127.0.0.1:1883",
        tmp_path / "s.sqlite",
        gate={"guard_px": -5},
    )
    assert_one_line_error(run_cli("edge", "check-config", str(cfg), timeout=60), "gate.guard_px")
