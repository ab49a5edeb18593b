"""Feedback filing without a broker or a browser: crops kept and pruned, feedback filed in the MVTec layout that
the training loader reads, relabelling, every bad message one log line (never an exception), and the [feedback]
config table with errors naming the key."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from edge.config import parse
from edge.errors import UserError
from edge.feedback import CropStore, FeedbackFiler, validate_feedback
from tests.conftest import ROOT, run_cli

TOPIC = "dishwatch/pass1/feedback"


def crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


@pytest.fixture
def filer(tmp_path) -> FeedbackFiler:
    return FeedbackFiler(CropStore(tmp_path / "crops", max_crops=5), tmp_path / "dataset")


def msg(eid: str, label: str, defect: str | None = None) -> bytes:
    return json.dumps(
        {"id": eid, "label": label, "defect": defect, "ts": "2026-11-29T10:00:00.000Z"}
    ).encode()


def test_crop_is_kept_as_lossless_png_and_pruned_oldest_first(tmp_path):
    import cv2

    store = CropStore(tmp_path / "crops", max_crops=3)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for i, eid in enumerate(ids):
        p = store.save(eid, crop(i))
        os.utime(p, ns=(i * 10**9, i * 10**9))  # distinct ages, whatever the file system's clock resolution
        store.prune()
    kept = sorted(p.stem for p in (tmp_path / "crops").iterdir())
    assert kept == sorted(ids[2:]), "the newest max_crops stay"
    assert store.path(ids[0]) is None and store.path(ids[4]) is not None
    assert np.array_equal(cv2.imread(str(store.path(ids[4]))), crop(4)), "unannotated and lossless"
    assert not list((tmp_path / "crops").glob(".*")), "no temporary files left"


def test_false_alarm_goes_to_train_good_and_confirmed_to_test_defect(filer, tmp_path):
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    for i, eid in enumerate((a, b, c)):
        filer.store.save(eid, crop(i))
    filer.on_message(TOPIC, msg(a, "false_alarm"))
    filer.on_message(TOPIC, msg(b, "confirmed", "spill"))
    filer.on_message(TOPIC, msg(c, "confirmed"))
    ds = tmp_path / "dataset"
    assert (ds / "train/good" / f"{a}.png").read_bytes() == filer.store.path(a).read_bytes()
    assert (ds / "test/spill" / f"{b}.png").is_file()
    assert (ds / "test/unspecified" / f"{c}.png").is_file()

    from train.data import load_dataset

    loaded = load_dataset(ds)
    assert loaded.layout == "mvtec"
    assert sorted(s.defect for s in loaded.samples) == ["good", "spill", "unspecified"]


def test_relabelling_keeps_only_the_latest_verdict(filer, tmp_path):
    eid = str(uuid.uuid4())
    filer.store.save(eid, crop())
    filer.on_message(TOPIC, msg(eid, "false_alarm"))
    filer.on_message(TOPIC, msg(eid, "confirmed", "chip"))
    files = sorted(str(p.relative_to(tmp_path / "dataset")) for p in (tmp_path / "dataset").rglob("*.png"))
    assert files == [f"test/chip/{eid}.png"]


@pytest.mark.parametrize(
    "payload, needle",
    [
        (b"{nope", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (json.dumps({"label": "false_alarm"}).encode(), "id: expected an event id"),
        (json.dumps({"id": "../../etc/passwd", "label": "false_alarm"}).encode(), "id: expected an event id"),
        (
            json.dumps({"id": "abc", "label": "maybe"}).encode(),
            "label: expected one of false_alarm, confirmed",
        ),
        (
            json.dumps({"id": "abc", "label": "confirmed", "defect": "<b>x"}).encode(),
            "defect: expected a name",
        ),
        (msg(str(uuid.uuid4()), "false_alarm"), "no crop kept for that id (unknown, or expired"),
    ],
)
def test_bad_feedback_is_one_warning_never_an_exception(filer, caplog, payload, needle):
    with caplog.at_level(logging.WARNING, logger="edge.feedback"):
        filer.on_message(TOPIC, payload)
    assert len(caplog.records) == 1 and needle in caplog.records[0].getMessage(), caplog.text
    assert not (filer.dataset).exists() or not list(filer.dataset.rglob("*.png"))


def test_expired_crop_is_reported_with_its_id(tmp_path, caplog):
    store = CropStore(tmp_path / "crops", max_crops=1)
    filer = FeedbackFiler(store, tmp_path / "dataset")
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    store.save(old, crop(0))
    os.utime(store.path(old), ns=(0, 0))
    store.save(new, crop(1))
    with caplog.at_level(logging.WARNING, logger="edge.feedback"):
        filer.on_message(TOPIC, msg(old, "false_alarm"))
    assert f"event {old} ignored" in caplog.text and "keeps the last 1" in caplog.text


def test_an_unwritable_dataset_is_logged_not_raised(tmp_path, caplog):
    store = CropStore(tmp_path / "crops", max_crops=5)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    filer = FeedbackFiler(store, tmp_path / "blocker")
    eid = str(uuid.uuid4())
    store.save(eid, crop())
    with caplog.at_level(logging.WARNING, logger="edge.feedback"):
        filer.on_message(TOPIC, msg(eid, "false_alarm"))
    assert f"event {eid} not filed" in caplog.text


def test_validate_feedback_shared_rules():
    fb = validate_feedback({"id": "e1", "label": "confirmed", "defect": "chip"})
    assert (fb.id, fb.label, fb.defect) == ("e1", "confirmed", "chip") and fb.ts.endswith("Z")
    doc = json.loads(fb.payload("pass1"))
    assert doc == {"id": "e1", "camera": "pass1", "label": "confirmed", "defect": "chip", "ts": fb.ts}
    with pytest.raises(ValueError, match="only a confirmed defect has a name"):
        validate_feedback({"id": "e1", "label": "false_alarm", "defect": "chip"})


# --- the [feedback] config table ---------------------------------------------------------------------------
def _doc(tmp_path: Path, **feedback) -> dict:
    doc = {
        "camera": {"id": "pass1", "source": "clip.mp4"},
        "slots": [{"id": "left", "rect": [0, 0, 64, 64]}],
        "model": {"bundle": str(ROOT / "models" / "default")},
        "mqtt": {"spool": str(tmp_path / "state" / "spool.sqlite")},
    }
    if feedback:
        doc["feedback"] = feedback
    return doc


def test_feedback_defaults_sit_next_to_the_spool(tmp_path):
    fb = parse(_doc(tmp_path), tmp_path / "c.toml").feedback
    assert fb.enabled and fb.max_crops == 500
    assert fb.crops_dir == str(tmp_path / "state" / "crops")
    assert fb.dataset_dir == str(tmp_path / "state" / "feedback")
    assert fb.learn and fb.max_learned_rows == 1000
    assert fb.learned_file == str(tmp_path / "state" / "learned.npz")
    fb = parse(_doc(tmp_path, dataset_dir="ds", enabled=False), tmp_path / "c.toml").feedback
    assert fb.dataset_dir == str(tmp_path / "ds") and not fb.enabled, "relative to the config's folder"


@pytest.mark.parametrize(
    "table, needle",
    [
        ({"max_crops": 0}, "feedback.max_crops: must be >= 1"),
        ({"max_crops": "many"}, "feedback.max_crops: expected an integer"),
        ({"enabled": "yes"}, "feedback.enabled: expected true or false"),
        ({"crops": "x"}, "feedback.crops: unknown key"),
        ({"crops_dir": "same", "dataset_dir": "same"}, "feedback.dataset_dir: must differ"),
        ({"dataset_dir": "afile"}, "feedback.dataset_dir:"),
        ({"max_learned_rows": 0}, "feedback.max_learned_rows: must be >= 1"),
        ({"learn": 1}, "feedback.learn: expected true or false"),
        ({"learned_file": "."}, "feedback.learned_file: .* is a folder"),
    ],
)
def test_feedback_config_errors_name_the_key(tmp_path, table, needle):
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        parse(_doc(tmp_path, **table), tmp_path / "c.toml")


def test_the_shipped_configs_validate():
    for path in ("examples/pass.toml",):
        proc = run_cli("edge", "check-config", path)
        assert proc.returncode == 0, proc.stderr
        fb = json.loads(proc.stdout)["feedback"]
        assert fb["dataset_dir"].endswith("data/feedback") and fb["crops_dir"].endswith("data/crops")
