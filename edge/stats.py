"""Runtime statistics for <base>/stats: rates, inference percentiles, drops, camera state, CPU and memory.

Why /proc and `resource` instead of psutil: the device image stays small, and these two are all we need.
CPU % is this process's user+system time over wall time since the previous report (100 = one full core).
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque

import numpy as np


def rss_mb() -> float:
    """Current resident set size (MB), from /proc; falls back to the peak from getrusage."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


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
            "rss_mb": round(rss_mb(), 1),
        }
        self._mark = (now, t, grabbed, self.frames_in, self.scored)
        return out
