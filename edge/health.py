"""systemd Type=notify health: READY, WATCHDOG and STATUS datagrams, without the systemd python package.

Why pings depend on frames and inference: a daemon whose camera is gone or whose interpreter hangs is not healthy
even though its process runs. The main loop calls `Watchdog.tick()` on every iteration; it pings at half of
WATCHDOG_USEC only while the last frame (and the last inference, when one was started) is younger than
health.watchdog_max_stall_s, so systemd restarts a daemon that stopped seeing the pass.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Datagrams to $NOTIFY_SOCKET (a path, or @abstract); a no-op when it is not set."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        if self.addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ok = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if ok else 0.0

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self.addr)
            return True
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """READY once, then WATCHDOG pings while frames flow and inference returns."""

    def __init__(self, notifier: Notifier, max_stall_s: float) -> None:
        self.n, self.max_stall_s = notifier, max_stall_s
        self.ready = False
        self._last_ping = 0.0
        self.inference_started = 0.0  # monotonic time an inference began, 0 when none is running
        self.stalled_reason = ""

    def mark_ready(self, status: str) -> None:
        if not self.ready:
            self.ready = True
            self.n.notify("READY=1", f"STATUS={status}")
            log.info("ready: %s", status)

    def healthy(self, now: float, last_frame_t: float) -> bool:
        if not last_frame_t or now - last_frame_t > self.max_stall_s:
            self.stalled_reason = "no frame"
            return False
        if self.inference_started and now - self.inference_started > self.max_stall_s:
            self.stalled_reason = "inference hangs"
            return False
        self.stalled_reason = ""
        return True

    def tick(self, now: float, last_frame_t: float) -> bool:
        """Ping if due and healthy; True when a ping was sent."""
        if not (self.ready and self.n.watchdog_interval) or now - self._last_ping < self.n.watchdog_interval:
            return False
        if not self.healthy(now, last_frame_t):
            return False
        self._last_ping = now
        return self.n.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.n.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.n.notify("STOPPING=1", "STATUS=stopping")
