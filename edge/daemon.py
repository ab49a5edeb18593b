"""`python -m edge run --config FILE`: the always-on daemon that wires camera, gate, scorer and MQTT together.

Why the main loop owns everything but grabbing: gating, scoring and publishing happen in the order frames are
seen, so "one dish, one event" and the watchdog's "frames flow and inference returns" are facts of one thread.
Events are handed to the publisher, which spools them before sending; a crash loses nothing that was scored.

Shutdown: SIGTERM/SIGINT or the end of a non-looping file stop grabbing, then `Publisher.stop()` publishes
`offline` and flushes the spool (bounded); what could not be delivered stays spooled for the next start. Exit 0.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from typing import Any

import cv2

from edge.camera import Grabber
from edge.config import Config, load
from edge.events import make_event
from edge.feedback import CropStore, FeedbackFiler
from edge.gate import SlotGate, crop
from edge.health import Notifier, Watchdog
from edge.learning import Lessons, Teacher, lessons_for
from edge.snapshot import snapshot_jpeg
from edge.stats import Stats

log = logging.getLogger(__name__)

GET_TIMEOUT_S = 0.5
STOP_FLUSH_S = 5.0


class Daemon:
    def __init__(self, cfg: Config, print_events: bool = False, notifier: Notifier | None = None) -> None:
        from edge.mqtt import Publisher
        from edge.scorer import Scorer

        cv2.setNumThreads(1)  # gate work is a few thousand pixels: a thread pool costs more than it saves
        self.cfg = cfg
        self.print_events = print_events
        self.stop_event = threading.Event()
        self.scorer = Scorer(cfg.model.bundle, cfg.model.threads)
        self.scorer.use_threshold(cfg.model.threshold_override)
        b = self.scorer.bundle
        self.model = {"name": b.name, "sha256": b.sha256}
        self.base = f"{cfg.mqtt.base_topic}/{cfg.camera.id}"
        self.publisher = Publisher(cfg.mqtt, cfg.camera.id, [s.id for s in cfg.slots], self.model)
        self.grabber = Grabber(cfg.camera)
        self.gates = [SlotGate(s, cfg.gate) for s in cfg.slots]
        self.published: dict[str, str] = {}
        self.stats = Stats()
        self.watchdog = Watchdog(notifier or Notifier(), cfg.health.watchdog_max_stall_s)
        self.frame_hw: tuple[int, int] | None = None
        self.idle = False  # the pass is quiet (SlotGate.quiet): frames are taken at camera.idle_fps
        self.lessons: Lessons | None = None  # what the bank learned from false alarms (feedback.learn)
        self.crops = self._feedback_hooks(cfg)

    def _feedback_hooks(self, cfg: Config) -> CropStore | None:
        """Keep each event's crop and file the dashboard's feedback on it (edge/feedback.py)."""
        if not cfg.feedback.enabled:
            return None
        crops = CropStore(cfg.feedback.crops_dir, cfg.feedback.max_crops)
        teacher = self._teacher(cfg)
        filer = FeedbackFiler(crops, cfg.feedback.dataset_dir, teacher.on_label if teacher else None)
        self.publisher.subscribe(f"{self.base}/feedback", filer.on_message)
        return crops

    def _teacher(self, cfg: Config) -> Teacher | None:
        """A false alarm teaches the bank at once (edge/learning.py), with what earlier runs learned restored."""
        if not cfg.feedback.learn:
            return None
        if self.scorer.bank is None:
            log.info(
                "feedback.learn: %s scores by reconstruction; only kNN bundles learn", self.model["name"]
            )
            return None
        self.lessons = lessons_for(self.scorer, cfg.feedback.learned_file, cfg.feedback.max_learned_rows)
        log.info("feedback.learn: %s", self.lessons.load())
        self.scorer.set_learned(self.lessons.rows())
        return Teacher(self.scorer, self.lessons)

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        self.publisher.start()
        self.grabber.start()
        wd = self.watchdog.n.watchdog_interval
        wait = min(GET_TIMEOUT_S, wd / 2) if wd else GET_TIMEOUT_S  # pings stay on time between sparse frames
        next_stats = time.monotonic() + self.cfg.mqtt.stats_interval_s
        try:
            while not self.stop_event.is_set():
                frame = self.grabber.get(wait)
                now = time.monotonic()
                if frame is None:
                    if self.grabber.ended:
                        log.info("source ended: %s", self.cfg.camera.source)
                        break
                else:
                    self.stats.frames_in += 1
                    self._process(frame)
                    self._pace(frame.t)
                self.watchdog.tick(now, self.grabber.last_frame_t)
                if now >= next_stats:
                    next_stats = now + self.cfg.mqtt.stats_interval_s
                    self._publish_stats()
        finally:
            self.shutdown()
        return 0

    def _process(self, frame: Any) -> None:
        img = frame.image
        if self.frame_hw is None:
            self.frame_hw = img.shape[:2]
            self._check_slots_fit(img.shape)
            self.watchdog.mark_ready(f"watching {len(self.gates)} slot(s) of {self.cfg.camera.id}")
        for gate in self.gates:
            step = gate.update(img, frame.t)
            if step.score:
                self._score(gate, img, frame)
            self._set_state(gate.slot.id, gate.public_state)

    def _pace(self, t: float) -> None:
        """camera.idle_fps while the pass is quiet (every slot empty or holding a scored dish, nothing moving in
        any for gate.QUIET_SECONDS), camera.fps from the first frame on which something moves.

        Why this is safe for latency: a plate is carried in by an arm that moves in the slot for far longer than
        one idle frame interval, so the rate is full again before the plate can stand still."""
        idle = self.cfg.camera.idle_fps > 0 and all(g.quiet(t) for g in self.gates)
        if idle != self.idle:
            self.idle = idle
            fps = self.cfg.camera.idle_fps if idle else self.cfg.camera.fps
            self.grabber.set_fps(fps)
            log.debug("pass %s: %.3g fps", "quiet" if idle else "active", fps)

    def _score(self, gate: SlotGate, img: Any, frame: Any) -> None:
        slot = gate.slot
        c = crop(img, slot.rect)
        self.watchdog.inference_started = time.monotonic()
        try:
            result = self.scorer.score(c)
        except Exception:
            log.exception("slot %s: scoring failed; the dish is held as ok without an event", slot.id)
            gate.set_verdict(False)
            return
        finally:
            self.watchdog.inference_started = 0.0
        self.stats.inference(result.inference_ms)
        snap_topic = f"{self.base}/{slot.id}/snapshot"
        event = make_event(
            self.cfg.camera.id,
            slot.id,
            result,
            self.model,
            snap_topic,
            (max(0, slot.rect[0]), max(0, slot.rect[1])),
            wall=frame.wall,
            position_s=frame.position_s,
        )
        if self.crops is not None:
            self.crops.save(event["id"], c)  # before the event is out: feedback on it can find the crop
        self.publisher.publish_event(event)
        self.stats.events += 1
        self.stats.anomalies += bool(result.anomalous)
        if self.print_events:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
        log.info(
            "slot %s: %s (score %.4g, threshold %.4g, %.1f ms)",
            slot.id,
            event["verdict"],
            result.score,
            result.threshold,
            result.inference_ms,
        )
        gate.set_verdict(result.anomalous)
        self.publisher.publish_score(slot.id, float(result.score))
        try:
            self.publisher.publish_snapshot(slot.id, snapshot_jpeg(c, result, self.cfg.snapshot))
        except ValueError as exc:
            log.warning("slot %s: no snapshot (%s)", slot.id, exc)

    def _set_state(self, slot: str, state: str) -> None:
        if self.published.get(slot) != state:
            self.published[slot] = state
            self.publisher.publish_state(slot, state)

    def _check_slots_fit(self, shape: tuple[int, ...]) -> None:
        h, w = shape[:2]
        for s in self.cfg.slots:
            x, y, sw, sh = s.rect
            if x + sw > w or y + sh > h:
                log.warning(
                    "slot %s: rect %s reaches outside the %dx%d frame; it is clipped", s.id, s.rect, w, h
                )

    def _publish_stats(self) -> None:
        report = self.stats.report(self.grabber)
        if self.lessons is not None:  # extension: how much the device has learned from false alarms
            report["learned_rows"] = self.lessons.n_rows
            report["learned_events"] = self.lessons.n_events
        self.publisher.publish_stats(report)
        self.watchdog.status(
            f"camera {report['camera']}, {report['input_fps']} fps, {self.stats.events} events"
            + (f", unhealthy: {self.watchdog.stalled_reason}" if self.watchdog.stalled_reason else "")
        )

    def shutdown(self) -> None:
        self.watchdog.stopping()
        self.grabber.stop()
        try:
            self._publish_stats()
        except Exception:  # stats are best effort on the way out
            log.debug("final stats not published", exc_info=True)
        self.publisher.stop(STOP_FLUSH_S)
        log.info("stopped (%d events this run)", self.stats.events)


def cli_main(args: Any) -> int:
    cfg = load(args.config)
    daemon = Daemon(cfg, print_events=getattr(args, "print_events", False))

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        daemon.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return daemon.run()
