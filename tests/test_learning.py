"""The device learns from false alarms (edge/learning.py): the selection, the store, the scorer and the daemon.

What is proven: a taught crop scores at most LEARN_FLOOR afterwards and no other crop scores higher than before
(learned rows only ever add good examples); forgetting restores the bundle's scores exactly; what is learned
survives a restart and is set aside, not used, when it does not fit the bundle; and through the real daemon, a
"false alarm" press on the real broker teaches the bank, shows in stats, and a "confirmed" relabel undoes it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge.learning import LEARN_FLOOR, LearnedRows, Lessons, pick_rows
from edge.preprocess import IMAGE_SUFFIXES, read_image
from tests.conftest import assert_one_line_error, run_cli
from tests.daemon_helpers import Daemon, Subscriber, wait_for, write_config

BASE = "dishwatch/pass1"


def _rows(n_fine: int, n_coarse: int, seed: int = 0, dims=(4, 3)) -> LearnedRows:
    rng = np.random.default_rng(seed)
    return LearnedRows(
        rng.normal(size=(n_fine, dims[0])).astype(np.float32),
        rng.uniform(0.5, 2, n_fine).astype(np.float32),
        rng.normal(size=(n_coarse, dims[1])).astype(np.float32),
        rng.uniform(0.5, 2, n_coarse).astype(np.float32),
    )


# --- the selection ------------------------------------------------------------------------------------
def test_pick_rows_covers_every_far_row_farthest_first():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(300, 8)).astype(np.float32)
    dist = rng.uniform(0, 3, 300).astype(np.float32)
    scale, unit, floor = 2.0, 1.5, 1.0
    picks = pick_rows(rows, dist, scale, unit, floor)
    assert len(picks) and set(picks) <= set(np.nonzero(dist > floor)[0])
    # brute force: every row ends within the floor of the bank or of a pick
    to_picks = np.linalg.norm(rows[:, None] - rows[picks][None], axis=2).min(1) / (scale * unit)
    assert np.all(np.minimum(dist, to_picks) <= floor + 1e-6)
    # greedy: each pick was, when picked, the farthest row left and not covered by the picks before it
    for k, i in enumerate(picks):
        before = (
            np.linalg.norm(rows[:, None] - rows[picks[:k]][None], axis=2).min(1) / (scale * unit) if k else 0
        )
        left = np.minimum(dist, before) if k else dist
        assert left[i] > floor and np.isclose(left[i], left.max())
    assert len(pick_rows(rows, np.full(300, 0.5), scale, unit, floor)) == 0, "nothing far: nothing learned"


# --- the store ----------------------------------------------------------------------------------------
def test_lessons_round_trip_in_teaching_order(tmp_path):
    path = tmp_path / "learned.npz"
    a = Lessons(path, "model:bank", (4, 3), max_rows=1000)
    a.add("e1", _rows(5, 2, 1))
    a.add("e2", _rows(0, 4, 2))
    a.add("e3", _rows(3, 0, 3))
    a.save()
    b = Lessons(path, "model:bank", (4, 3), max_rows=1000)
    assert b.load() == f"14 learned rows from 3 false alarms ({path})"
    assert list(b.events) == ["e1", "e2", "e3"]
    for eid in a.events:
        for k in ("fine", "fine_scale", "coarse", "coarse_scale"):
            np.testing.assert_array_equal(getattr(a.events[eid], k), getattr(b.events[eid], k))
    joined = b.rows()
    assert joined.fine.shape == (8, 4) and joined.coarse.shape == (6, 3) and len(joined.fine_scale) == 8
    assert b.remove("e2") and not b.remove("e2") and b.n_rows == 10


def test_lessons_drop_the_oldest_past_the_cap_and_a_relabel_replaces(tmp_path):
    s = Lessons(tmp_path / "l.npz", "k", (4, 3), max_rows=10)
    assert s.add("e1", _rows(4, 2)) == []
    assert s.add("e2", _rows(3, 0)) == []
    assert s.add("e1", _rows(1, 1)) == [] and list(s.events) == ["e2", "e1"], "taught again: newest"
    assert s.add("e3", _rows(5, 1)) == ["e2"] and s.n_rows == 8
    assert s.add("big", _rows(9, 5)) == ["e1", "e3"]
    assert s.n_rows == 10 and len(s.events["big"].fine) == 9 and len(s.events["big"].coarse) == 1


@pytest.mark.parametrize(
    "spoil, needle",
    [
        (lambda p: p.write_bytes(b"not a zip"), "unreadable"),
        (lambda p: Lessons(p, "other:bank", (4, 3), 100).save(), "learned with another bundle"),
        (lambda p: _saved(p, (5, 3)), "do not fit this bundle's bank (dim 4)"),
    ],
)
def test_a_file_that_does_not_fit_is_set_aside_not_used(tmp_path, spoil, needle):
    path = tmp_path / "learned.npz"
    spoil(path)
    s = Lessons(path, "model:bank", (4, 3), max_rows=100)
    msg = s.load()
    assert needle in msg and "moved to learned.npz.old" in msg, msg
    assert s.n_rows == 0 and not path.exists() and (tmp_path / "learned.npz.old").exists()


def _saved(path: Path, dims: tuple[int, int]) -> None:
    s = Lessons(path, "model:bank", dims, 100)
    s.add("e", _rows(2, 1, dims=dims))
    s.save()


# --- the scorer, on a real int8 kNN bundle --------------------------------------------------------------
def _test_crops(dataset: Path) -> list[np.ndarray]:
    paths = sorted(p for p in (dataset / "test").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [read_image(p) for p in paths]


def test_a_taught_crop_scores_under_the_floor_and_nothing_scores_higher(knn_bundle, tiny_dataset):
    from edge.scorer import Scorer

    scorer = Scorer(knn_bundle, threads=1)
    crops = _test_crops(tiny_dataset)
    before = np.array([scorer.score(c).score for c in crops])
    worst = int(np.argmax(before))
    assert before[worst] > LEARN_FLOOR * 1.05, "the tiny bundle needs one crop above the floor"
    base_coarse = len(scorer.bank.coarse.patches)
    rows = scorer.lesson(crops[worst])
    assert 0 < len(rows.fine) < 64 and np.all(rows.fine_scale > 0), "a few rows of an 8x8 grid"
    scorer.set_learned(rows)
    assert len(scorer.bank.coarse.patches) == base_coarse + len(rows.coarse)
    after = np.array([scorer.score(c).score for c in crops])
    assert after[worst] <= LEARN_FLOOR + 1e-3 and not scorer.score(crops[worst]).anomalous
    assert np.all(after <= before + 1e-5), "learned rows can only bring crops nearer to good"
    assert scorer.lesson(crops[worst]).fine.shape[0] == 0, "taught once, nothing left to learn"
    scorer.set_learned(LearnedRows.nothing((rows.fine.shape[1], rows.coarse.shape[1])))
    np.testing.assert_array_equal([scorer.score(c).score for c in crops], before)


def test_the_teacher_teaches_forgets_and_survives_an_unwritable_file(
    knn_bundle, tiny_dataset, tmp_path, caplog
):
    import cv2

    from edge.learning import Teacher
    from edge.scorer import Scorer

    scorer = Scorer(knn_bundle, threads=1)
    crops = _test_crops(tiny_dataset)
    worst = max(crops, key=lambda c: scorer.score(c).score)
    crop_path = tmp_path / "e1.png"
    cv2.imwrite(str(crop_path), worst)
    (tmp_path / "afile").write_text("")
    bank = scorer.bank
    dims = (bank.patches.shape[1], bank.coarse.patches.shape[1])
    lessons = Lessons(tmp_path / "afile" / "learned.npz", "k", dims, max_rows=1000)  # its folder is a file
    teacher = Teacher(scorer, lessons)
    teacher.on_label("e1", "false_alarm", crop_path)
    assert lessons.n_events == 1 and scorer.score(worst).score <= LEARN_FLOOR + 1e-3, (
        "learned though not saved"
    )
    assert "learned rows not saved to" in caplog.text and "they hold until a restart" in caplog.text
    teacher.on_label("e1", "false_alarm", crop_path)  # taught again: the same rows, not twice as many
    assert lessons.n_events == 1 and len(lessons.rows().fine) == len(lessons.events["e1"].fine)
    teacher.on_label("e2", "false_alarm", None)  # the crop expired: nothing to learn, no error
    teacher.on_label("e3", "confirmed", None)  # never taught: nothing to forget
    assert lessons.n_events == 1
    teacher.on_label("e1", "confirmed", crop_path)
    assert lessons.n_events == 0 and scorer.score(worst).score > LEARN_FLOOR * 1.05, "forgotten"


def test_edge_score_reproduces_a_device_s_learned_verdicts(knn_bundle, tiny_dataset, tmp_path, tiny_bundle):
    import cv2

    from edge.learning import Teacher, lessons_for
    from edge.scorer import Scorer

    scorer = Scorer(knn_bundle, threads=1)
    crops = _test_crops(tiny_dataset)
    worst = max(crops, key=lambda c: scorer.score(c).score)
    image = tmp_path / "e1.png"
    cv2.imwrite(str(image), worst)
    learned = tmp_path / "learned.npz"
    Teacher(scorer, lessons_for(scorer, learned, 1000)).on_label("e1", "false_alarm", image)
    plain = run_cli("edge", "score", "--bundle", str(knn_bundle), str(image))
    taught = run_cli("edge", "score", "--bundle", str(knn_bundle), "--learned", str(learned), str(image))
    assert plain.returncode == 0 and taught.returncode == 0, taught.stderr
    before, after = json.loads(plain.stdout)["score"], json.loads(taught.stdout)["score"]
    assert before > LEARN_FLOOR * 1.05 and after <= LEARN_FLOOR + 1e-3, (before, after)
    # refusals leave the device's file alone
    other = tmp_path / "other.npz"
    Lessons(other, "another:bundle", (1, 1), 10).save()
    proc = run_cli("edge", "score", "--bundle", str(knn_bundle), "--learned", str(other), str(image))
    assert_one_line_error(proc, str(other), "learned with another bundle")
    assert other.exists() and not (tmp_path / "other.npz.old").exists()
    missing = run_cli(
        "edge", "score", "--bundle", str(knn_bundle), "--learned", str(tmp_path / "no.npz"), str(image)
    )
    assert_one_line_error(missing, "no.npz: no such learned file")
    cae = run_cli("edge", "score", "--bundle", str(tiny_bundle), "--learned", str(learned), str(image))
    assert_one_line_error(cae, "--learned", "scores by reconstruction")


# --- the daemon, end to end ---------------------------------------------------------------------------
def test_train_evaluate_judges_the_bundle_as_a_device_runs_it(
    knn_bundle, knn_run, tiny_dataset, tmp_path, tiny_bundle
):
    """`train evaluate --learned`: the test split scored with a device's learned rows beside the bank."""
    import cv2

    from edge.learning import Teacher, lessons_for, use_learned
    from edge.scorer import Scorer

    scorer = Scorer(knn_bundle, threads=1)
    assert scorer.bundle.threshold > LEARN_FLOOR, "a taught crop must land under the threshold"
    good = sorted(
        p for p in (tiny_dataset / "test" / "good").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )
    learned = tmp_path / "learned.npz"
    teacher = Teacher(scorer, lessons_for(scorer, learned, 1000))
    for i, path in enumerate(good):  # every good test plate marked "False alarm", as a kitchen might
        crop = tmp_path / f"g{i}.png"
        cv2.imwrite(str(crop), read_image(path))
        teacher.on_label(f"g{i}", "false_alarm", crop)
    taught = teacher.lessons
    assert taught.n_events >= 1 and learned.is_file()
    stored = learned.read_bytes()

    def evaluate(*extra: str) -> dict:
        out = tmp_path / f"eval{len(extra)}.json"
        proc = run_cli(
            "train",
            "evaluate",
            "--model",
            str(knn_bundle),
            "--data",
            str(tiny_dataset),
            "--json",
            str(out),
            *extra,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(out.read_text())

    before, after = evaluate(), evaluate("--learned", str(learned))
    assert before["learned"] is None
    assert after["learned"] == {
        "file": str(learned.resolve()),
        "rows": taught.n_rows,
        "events": taught.n_events,
    }
    assert f"{taught.n_rows} rows learned from {taught.n_events} false alarms" in after["model"]
    assert after["confusion"]["fp"] == 0, "every good test plate was taught: none is flagged"
    assert after["threshold"] == before["threshold"], "the bundle's own threshold, as on the device"
    # the same numbers as the device's own scorer with those rows, which differ from the bundle's alone
    from train.data import load_dataset

    test = [t for t in load_dataset(tiny_dataset).split("test") if t.anomalous]
    device = Scorer(knn_bundle, threads=1)
    use_learned(device, learned)
    moved = 0
    for name, row in after["per_defect"].items():
        scores = [device.score(read_image(t.path)).score for t in test if t.defect == name]
        assert row["mean_score"] == pytest.approx(np.mean(scores), abs=2e-6), name
        assert row["mean_score"] <= before["per_defect"][name]["mean_score"] + 1e-6, name
        moved += row["mean_score"] < before["per_defect"][name]["mean_score"]
    assert moved, "the learned rows changed no score: the test proves nothing"
    assert after["image_auroc"] >= before["image_auroc"]
    assert learned.read_bytes() == stored and not (tmp_path / "learned.npz.old").exists(), "read, never moved"
    # `train twins --learned`: the defect/twin pairs scored as that device scores them
    pairs = []
    for extra in ((), ("--learned", str(learned))):
        out = tmp_path / f"twins{len(extra)}.json"
        cmd = ("train", "twins", "--model", str(knn_bundle), "--data", str(tiny_dataset), "--json", str(out))
        proc = run_cli(*cmd, *extra)
        assert proc.returncode == 0, proc.stderr
        pairs.append(json.loads(out.read_text()))
    assert pairs[0]["learned"] is None and pairs[1]["learned"] == after["learned"]
    assert "false alarms" in pairs[1]["model"] and pairs[1]["model"] in proc.stdout
    plain = {p["path"]: p for p in pairs[0]["plates"]}
    taught_plates = [(plain[p["path"]], p) for p in pairs[1]["plates"]]
    assert all(t["score"] <= b["score"] + 1e-5 for b, t in taught_plates)  # rows added: no distance grows
    assert any(t["score"] < b["score"] for b, t in taught_plates), "the learned rows changed no pair"
    # refused in one line before scoring
    args = ("train", "evaluate", "--data", str(tiny_dataset))
    run = run_cli(*args, "--model", str(knn_run), "--learned", str(learned))
    assert_one_line_error(run, "--learned", "bundle folder, not a training run")
    cae = run_cli(*args, "--model", str(tiny_bundle), "--learned", str(learned))
    assert_one_line_error(cae, "--learned", "scores by reconstruction")
    other = tmp_path / "other.npz"
    Lessons(other, "another:bundle", (1, 1), 10).save()
    wrong = run_cli(*args, "--model", str(knn_bundle), "--learned", str(other))
    assert_one_line_error(wrong, str(other), "learned with another bundle")
    missing = run_cli(*args, "--model", str(knn_bundle), "--learned", str(tmp_path / "no.npz"))
    assert_one_line_error(missing, "no.npz: no such learned file")
    twins_cae = run_cli(
        "train", "twins", "--model", str(tiny_bundle), "--data", str(tiny_dataset), "--learned", str(learned)
    )
    assert_one_line_error(twins_cae, "--learned", "scores by reconstruction")


def _publish(broker, doc: dict) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(f"{BASE}/feedback", json.dumps(doc), qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def test_the_daemon_learns_a_false_alarm_keeps_it_and_forgets_it_on_a_relabel(
    tmp_path, clip, knn_bundle, broker
):
    learned = tmp_path / "state" / "learned.npz"
    cfg = write_config(
        tmp_path / "pass.toml",
        clip["video"],
        clip["slots"],
        knn_bundle,
        broker.url,
        tmp_path / "state" / "spool.sqlite",
        camera={"loop": True},
    )
    d = Daemon(cfg)
    try:
        wait_for(
            lambda: any(e["score"] > LEARN_FLOOR * 1.05 for e in d.events), timeout=90, what="a high score"
        )
        event = next(e for e in d.events if e["score"] > LEARN_FLOOR * 1.05)
        _publish(broker, {"id": event["id"], "label": "false_alarm"})
        wait_for(learned.exists, timeout=20, what="learned.npz")
        with np.load(learned) as z:
            assert list(z["events"]) == [event["id"]] and len(z["fine"]) > 0
        sub = Subscriber(broker.host, broker.port, f"{BASE}/stats")
        wait_for(
            lambda: json.loads(sub.last(f"{BASE}/stats") or b"{}").get("learned_events") == 1,
            timeout=20,
            what="learned_events in stats",
        )
        assert json.loads(sub.last(f"{BASE}/stats"))["learned_rows"] > 0
        sub.close()
        assert (tmp_path / "state" / "feedback" / "train" / "good" / f"{event['id']}.png").exists()
    finally:
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait() == 0, d.stderr()[-3000:]
    assert f"false alarm {event['id']} learned:" in d.stderr()

    again = Daemon(cfg)  # a restart restores what was learned; a relabel undoes it
    try:
        wait_for(lambda: "learned rows from 1 false alarms" in again.stderr(), timeout=60, what="restored")
        wait_for(lambda: len(again.events) >= 1, timeout=60, what="an event after the restart")
        _publish(broker, {"id": event["id"], "label": "confirmed", "defect": "stain"})
        wait_for(lambda: "relabelled confirmed: what it taught is forgotten" in again.stderr(), timeout=20)
        with np.load(learned) as z:
            assert len(z["events"]) == 0 and len(z["fine"]) == 0
    finally:
        again.proc.send_signal(signal.SIGTERM)
        assert again.wait() == 0, again.stderr()[-3000:]
    assert "Traceback" not in again.stderr()
