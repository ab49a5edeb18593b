"""Helpers for the MQTT, spool and discovery tests: configs, a child publisher process, TLS material.

`python -m tests.mqtt_helpers --url URL --spool FILE [--events N] [--keepalive S]` runs a Publisher in its own
process, publishes N events, prints each id and `connected` when the broker accepted it, then waits to be killed:
what a kill -9 of the daemon looks like to the broker and to the spool.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from edge.config import MqttConfig

ROOT = Path(__file__).resolve().parents[1]


def mqtt_cfg(url: str, spool: Path, **kw) -> MqttConfig:
    return MqttConfig(
        url=url, spool=str(spool), client_id=kw.pop("client_id", f"dw-{uuid.uuid4().hex[:8]}"), **kw
    )


def event(i: int, slot: str = "left") -> dict:
    return {"id": str(uuid.uuid4()), "camera": "pass1", "slot": slot, "verdict": "ok", "score": 0.1, "n": i}


MODEL = {"name": "test", "sha256": "0" * 64}


def spawn_child(url: str, spool: Path, events: int = 0, keepalive: int = 2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--url", url, "--spool", str(spool), "--events", str(events), "--keepalive", str(keepalive)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.mqtt_helpers", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_lines(proc: subprocess.Popen, n: int, timeout: float = 20.0) -> list[str]:
    """The child's first n stdout lines (fails if it exits first)."""
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"child printed only {out}"
        line = proc.stdout.readline()
        assert line, f"child exited: {proc.stderr.read()[-2000:]}"
        out.append(line.strip())
    return out


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def make_tls(d: Path, cn: str = "dishwatch-test-ca") -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 (subjectAltName IP), made with openssl."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = d / "ca.key", d / "ca.crt"
    key, csr, crt, ext = d / "server.key", d / "server.csr", d / "server.crt", d / "san.ext"

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(*"req -x509 -newkey rsa:2048 -nodes -days 2".split(), "-keyout", str(ca_key), "-out", str(ca_crt),
        "-subj", f"/CN={cn}")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return {"ca": ca_crt, "cert": crt, "key": key}


def _child(argv: list[str] | None = None) -> None:
    from edge.mqtt import Publisher

    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--spool", required=True)
    p.add_argument("--events", type=int, default=0)
    p.add_argument("--keepalive", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    pub = Publisher(mqtt_cfg(a.url, Path(a.spool), keepalive=a.keepalive), "pass1", ["left"], MODEL)
    pub.start()
    for i in range(a.events):
        e = event(i)
        pub.publish_event(e)
        print(e["id"], flush=True)
    deadline = time.monotonic() + 10
    while not pub.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    if pub.connected:
        print("connected", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    _child()
