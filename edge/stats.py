"""Runtime statistics for <base>/stats: rates, inference percentiles, drops, camera state, CPU and memory.

Why /proc and `resource` instead of psutil: the device image stays small, and these two are all we need.
CPU % is this process's user+system time over wall time since the previous report (100 = one full core).
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from pathlib import Path

import numpy as np

MEMORY_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def memory_mb(status: str) -> dict[str, float]:
    """The MEMORY_FIELDS of a /proc/<pid>/status text in MB (a kernel without one leaves it out).

    Why RSS is split: it counts the pages of the libraries the process maps (OpenCV, LiteRT, numpy), and how many
    depends on the host's page cache, not on this code. Right after an install the freshly written .so files sit
    in the cache as large folios, and a mapped large folio counts whole: the daemon peaked at 170.8 MB there and
    at 118.6 MB once the cache was dropped (as after a reboot), its anonymous memory 59.0 MB both times
    (docs/measurements.md, the first 2026-11-30 machine). RssAnon is what the daemon itself holds."""
    out = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in MEMORY_FIELDS and value.split():
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def proc_memory(pid: int | str = "self") -> dict[str, float]:
    """memory_mb of a live process; {} once it is gone (or without /proc)."""
    try:
        return memory_mb(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return {}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.frames_in = 0  # frames the main loop took from the grabber and gated
        self.scored = 0
        self.events = 0
        self.anomalies = 0
        self._inference: deque[float] = deque(maxlen=500)
        self._mark = (time.monotonic(), os.times(), 0, 0, 0)

    def inference(self, ms: float) -> None:
        self._inference.append(ms)
        self.scored += 1

    def report(self, grabber: object) -> dict:
        """The stats payload; rates and CPU are averaged since the previous report."""
        now, t = time.monotonic(), os.times()
        t0, times0, grabbed0, frames0, scored0 = self._mark
        dt = max(1e-6, now - t0)
        inf = np.array(self._inference) if self._inference else np.zeros(1)
        mem = proc_memory()
        rate_skipped = getattr(grabber, "rate_skipped", 0)
        grabbed = getattr(grabber, "frames", 0) + rate_skipped  # what the camera delivered
        out = {
            "uptime_s": round(now - self.started, 1),
            "input_fps": round((grabbed - grabbed0) / dt, 2),
            "processed_fps": round((self.frames_in - frames0) / dt, 2),
            "scored_fps": round((self.scored - scored0) / dt, 3),
            "inference_ms_p50": round(float(np.percentile(inf, 50)), 2),
            "inference_ms_p95": round(float(np.percentile(inf, 95)), 2),
            "frames_in": self.frames_in,
            "frames_dropped": getattr(grabber, "dropped", 0),
            "frames_rate_skipped": rate_skipped,
            "frames_bad": dict(getattr(grabber, "skipped", {})),
            "camera": getattr(grabber, "state", "unknown"),
            "camera_reconnects": getattr(grabber, "reconnects", 0),
            "events": self.events,
            "anomalies": self.anomalies,
            "cpu_percent": round(100.0 * ((t.user + t.system) - (times0.user + times0.system)) / dt, 1),
            "rss_mb": round(mem.get("VmRSS") or peak_rss_mb(), 1),  # peak from getrusage without /proc
            "rss_anon_mb": mem.get("RssAnon"),  # without the mapped library pages (memory_mb)
        }
        self._mark = (now, t, grabbed, self.frames_in, self.scored)
        return out
