"""A real Mosquitto broker on a free loopback port, owned by the test that starts it.

Why not the system broker on :1883: CI must not rely on it, and outage tests stop and restart the broker.
`stop()` then `start()` brings it back on the same port so clients can reconnect.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """Terminate a test-owned server, killing it when it does not exit within `grace` seconds."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def find_mosquitto() -> str:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not exe:
        raise RuntimeError("mosquitto not installed: run `make setup` (installs Debian's mosquitto)")
    return exe


class Broker:
    def __init__(self, port: int | None = None, extra_conf: str = "", workdir: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="dw-broker-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Broker:
        conf = self.dir / "mosquitto.conf"
        body = self.extra_conf or f"listener {self.port} {self.host}\nallow_anonymous true\n"
        conf.write_text(f"persistence false\n{body}")
        self.log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
