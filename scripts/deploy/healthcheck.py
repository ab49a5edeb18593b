"""Deploy health check, run ON the device with the release's own venv: is the daemon online on its broker?

Why here and not from the developer's machine: the broker is often reachable only from the device's network, and
this way the check uses exactly the config, credentials and paho the service uses.

`--check-only`: validate the config with edge.config (the release's own copy) and exit.
Otherwise: subscribe to `<base_topic>/<camera>/availability`, touch `--ready-file` once subscribed (the deploy
restarts the service only then), and wait for a live (not retained) `online`, then hold it for `--settle`
seconds. A retained `online` left by the previous process proves nothing, so it is ignored. Exit 0 healthy,
1 unhealthy, 2 bad config; the reason is one line on stdout. Never prints the password.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
import tomllib
from pathlib import Path

RELEASE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(RELEASE))

from edge import config as edge_config  # noqa: E402  (the release's edge, not whatever is on sys.path)
from edge.errors import UserError  # noqa: E402

UNIT_NAME = "dishwatch-edge.service"


def credentials(unit_file: Path, root: str) -> dict[str, Path]:
    """LoadCredential=ID:PATH lines of the installed unit: the files systemd copies into the credentials dir."""
    creds: dict[str, Path] = {}
    if unit_file.is_file():
        for line in unit_file.read_text().splitlines():
            m = re.match(r"^\s*LoadCredential=([^:\s]+):(\S+)\s*$", line)
            if m:
                creds[m.group(1)] = Path(root + m.group(2))
    return creds


def load_config(path: Path, unit_file: Path, root: str) -> edge_config.Config:
    """Load the config as the service sees it.

    Outside the service /run/credentials/<unit>/ does not exist, so a password_file there is read from the
    credential's source file (LoadCredential= in the unit), which is what systemd would hand the daemon.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: cannot read config ({exc})") from None
    pw = (data.get("mqtt") or {}).get("password_file", "")
    cred_dir = f"{root}/run/credentials/{UNIT_NAME}/"
    if isinstance(pw, str) and pw.startswith(cred_dir):
        source = credentials(unit_file, root).get(pw[len(cred_dir) :])
        if source is None:
            raise UserError(f"mqtt.password_file: {pw} is no LoadCredential= of {unit_file}")
        data["mqtt"]["password_file"] = str(source)
    return edge_config.parse(data, path)


def wait_online(cfg: edge_config.Config, timeout: float, settle: float, ready_file: str) -> str | None:
    """None when healthy, else the reason."""
    import paho.mqtt.client as mqtt

    topic = f"{cfg.mqtt.base_topic}/{cfg.camera.id}/availability"
    lock = threading.Condition()
    state: dict[str, object] = {"online_at": None, "offline_after": False, "error": None, "subscribed": False}

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"dishwatch-deploy-check-{cfg.camera.id}-{time.time_ns()}"
    )
    if cfg.mqtt.username:
        client.username_pw_set(cfg.mqtt.username, cfg.mqtt.password or None)
    if cfg.mqtt.tls:
        client.tls_set(ca_certs=cfg.mqtt.ca_file or None)

    def on_connect(c, _userdata, _flags, reason, _props):
        if reason.is_failure:
            with lock:
                state["error"] = f"broker {cfg.mqtt.host}:{cfg.mqtt.port} refused the connection ({reason})"
                lock.notify_all()
            return
        c.subscribe(topic, qos=1)

    def on_subscribe(_c, _userdata, _mid, _reasons, _props):
        with lock:
            state["subscribed"] = True
            lock.notify_all()
        if ready_file:
            Path(ready_file).touch()

    def on_message(_c, _userdata, msg):
        if msg.retain:  # left over from before the restart
            return
        payload = msg.payload.decode(errors="replace")
        with lock:
            if payload == "online" and state["online_at"] is None:
                state["online_at"] = time.monotonic()
            elif payload == "offline" and state["online_at"] is not None:
                state["offline_after"] = True
            lock.notify_all()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect_async(cfg.mqtt.host, cfg.mqtt.port, keepalive=30)
    except (OSError, ValueError) as exc:
        return f"cannot reach broker {cfg.mqtt.host}:{cfg.mqtt.port} ({exc})"
    client.loop_start()
    deadline = time.monotonic() + timeout
    try:
        with lock:
            while state["online_at"] is None and state["error"] is None and time.monotonic() < deadline:
                lock.wait(0.2)
            if state["error"]:
                return str(state["error"])
            if not state["subscribed"]:
                return f"could not subscribe on broker {cfg.mqtt.host}:{cfg.mqtt.port} within {timeout:.0f}s"
            if state["online_at"] is None:
                return f"no 'online' on {topic} within {timeout:.0f}s"
            settle_end = time.monotonic() + settle
            while not state["offline_after"] and time.monotonic() < settle_end:
                lock.wait(0.2)
            if state["offline_after"]:
                return f"went 'offline' on {topic} right after 'online'"
        return None
    finally:
        client.loop_stop()
        client.disconnect()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--unit", default=f"/etc/systemd/system/{UNIT_NAME}", type=Path)
    p.add_argument("--root", default="", help="file-system prefix (tests)")
    p.add_argument("--check-only", action="store_true")
    p.add_argument("--timeout", type=float, default=90.0)
    p.add_argument("--settle", type=float, default=3.0, help="seconds `online` must hold")
    p.add_argument("--ready-file", default="")
    args = p.parse_args()
    try:
        cfg = load_config(args.config, args.unit, args.root)
    except UserError as exc:
        print(f"config {args.config}: {exc}")
        return 2
    if args.check_only:
        print(f"config ok: camera {cfg.camera.id}, broker {cfg.mqtt.host}:{cfg.mqtt.port}")
        return 0
    reason = wait_online(cfg, args.timeout, args.settle, args.ready_file)
    if reason:
        print(reason)
        return 1
    print(f"online: {cfg.mqtt.base_topic}/{cfg.camera.id}/availability")
    return 0


if __name__ == "__main__":
    sys.exit(main())
