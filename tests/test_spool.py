"""The on-disk spool: WAL mode, order, the bound (oldest dropped, counted across restarts), and events that a
kill -9 left behind being delivered by the next start."""

from __future__ import annotations

import json
import sqlite3

import pytest

from edge.errors import UserError
from edge.mqtt import Publisher
from edge.spool import Spool
from tests.broker import Broker
from tests.daemon_helpers import Subscriber, wait_for
from tests.mqtt_helpers import MODEL, kill9, mqtt_cfg, read_lines, spawn_child


def test_wal_mode_order_and_reopen(tmp_path):
    path = tmp_path / "spool.sqlite"
    s = Spool(path, 100)
    seqs = [s.append(f"id{i}", "t", f"p{i}".encode()) for i in range(4)]
    s.delete(seqs[1])
    s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s = Spool(path, 100)
    assert s.depth == 3
    assert [r[1] for r in s.after(0, 10)] == ["id0", "id2", "id3"]
    assert [r[1] for r in s.after(seqs[2], 10)] == ["id3"]
    s.close()


def test_bound_drops_the_oldest_and_counts_across_restarts(tmp_path, caplog):
    path = tmp_path / "spool.sqlite"
    s = Spool(path, 5)
    for i in range(8):
        s.append(f"id{i}", "t", b"x")
    assert (s.depth, s.dropped) == (5, 3)
    assert [r[1] for r in s.after(0, 10)] == [f"id{i}" for i in range(3, 8)]
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "spool full" in r.getMessage()]
    assert len(warnings) == 1  # once per period of being full, not per event
    s.close()
    s = Spool(path, 5)
    assert (s.depth, s.dropped) == (5, 3)
    s.close()


def test_dropped_count_is_reported_in_stats(broker, tmp_path):
    cfg = mqtt_cfg(broker.url, tmp_path / "spool.sqlite", spool_max_events=5)
    spool = Spool(cfg.spool, 5)
    for i in range(7):
        spool.append(f"old{i}", "dishwatch/pass1/events", json.dumps({"id": f"old{i}"}).encode())
    spool.close()
    sub = Subscriber(broker.host, broker.port, "dishwatch/#")
    pub = Publisher(cfg, "pass1", ["left"], MODEL)
    pub.start()
    assert pub.flush(20)
    pub.publish_stats({"uptime": 1})
    wait_for(lambda: sub.last("dishwatch/pass1/stats") is not None, timeout=10, what="stats")
    stats = json.loads(sub.last("dishwatch/pass1/stats"))
    assert (stats["spool_dropped"], stats["spool_depth"], stats["mqtt_connected"]) == (2, 0, True)
    assert list(sub.arrivals()) == [f"old{i}" for i in range(2, 7)]
    pub.stop()
    sub.close()


def test_kill9_then_next_start_delivers_the_spool(tmp_path):
    b = Broker(workdir=tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    spool = tmp_path / "spool.sqlite"
    child = spawn_child(b.url, spool, events=6)  # no broker yet: every event stays spooled
    try:
        ids = read_lines(child, 6)
    finally:
        kill9(child)
    b.start()
    try:
        sub = Subscriber(b.host, b.port, "dishwatch/#")
        pub = Publisher(mqtt_cfg(b.url, spool), "pass1", ["left"], MODEL)
        assert pub.spool_depth == 6
        pub.start()
        assert pub.flush(20)
        wait_for(lambda: len(sub.arrivals()) == 6, timeout=10, what="spooled events")
        assert list(sub.arrivals()) == ids  # in order, ids unchanged
        pub.stop()
        sub.close()
    finally:
        b.stop()


def test_unusable_spool_is_a_one_line_error(tmp_path):
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match=r"mqtt.spool: .*not-a-db.sqlite"):
        Spool(bad, 10)
