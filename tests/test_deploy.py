"""`make deploy` end to end: a real sshd on loopback, a real venv on the "device", the real daemon on a real broker.

The device's file system is a DEPLOY_ROOT prefix under tmp. The only fake is systemd as PID 1: SYSTEMCTL points at
a recorder that logs its arguments and runs the installed unit's own ExecStart= (paths prefixed with the root)
the way systemd would for Type=notify: under the MemoryDenyWriteExecute= seccomp rules, NOTIFY_SOCKET with sender credentials (NotifyAccess=main), `restart`
returns once READY=1 came from the main process or fails when it exits first, LoadCredential= copies the
password into the credentials directory, `stop` sends SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.broker import Broker, free_port
from tests.sshd import Sshd, sshd_available
from tests.test_systemd import WX_FILTER

ROOT = Path(__file__).resolve().parents[1]
UNIT = "dishwatch-edge.service"

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))

FAKE_SYSTEMCTL = r'''#!{python}
"""systemctl stand-in for tests (systemd is not PID 1 here). See tests/test_deploy.py."""
import json, os, re, shutil, signal, socket, struct, subprocess, sys, time
ROOT = {root!r}
STATE = {state!r}
WX_FILTER = {wx!r}
RUN_EDGE = "import runpy, sys\nsys.argv[0] = 'edge'\nrunpy.run_module('edge', run_name='__main__', alter_sys=True)\n"
UNIT_DIR = ROOT + "/etc/systemd/system"


def record(args):
    with open(os.path.join(STATE, "calls.jsonl"), "a") as f:
        f.write(json.dumps(args) + "\n")


def rooted(p):
    return ROOT + p if p.startswith(("/opt/", "/etc/", "/var/", "/run/")) else p


def unit(name):
    u = {{"env": {{}}, "creds": []}}
    for line in open(os.path.join(UNIT_DIR, name)):
        key, _, val = line.strip().partition("=")
        if key == "ExecStart":
            u["exec"] = [rooted(a) for a in val.split()]
        elif key == "WorkingDirectory":
            u["cwd"] = rooted(val)
        elif key == "LoadCredential":
            cid, _, src = val.partition(":")
            u["creds"].append((cid, rooted(src)))
        elif key == "Environment":
            u["env"].update(kv.split("=", 1) for kv in val.split())
        elif key == "MemoryDenyWriteExecute" and val == "yes":
            u["wx"] = True
        elif key == "WatchdogSec":
            u["watchdog_usec"] = str(int(val) * 1000000)
    return u


def pid():
    try:
        return int(open(os.path.join(STATE, "main.pid")).read())
    except (OSError, ValueError):
        return None


def alive(p):
    if not p or os.path.exists(os.path.join(STATE, "exit")):
        return False
    try:
        os.kill(p, 0)
        return True
    except OSError:
        return False


def stop():
    p = pid()
    if alive(p):
        os.kill(p, signal.SIGTERM)
        end = time.monotonic() + 30
        while alive(p) and time.monotonic() < end:
            time.sleep(0.05)
        if alive(p):
            os.kill(p, signal.SIGKILL)
    end = time.monotonic() + 5
    while not os.path.exists(os.path.join(STATE, "exit")) and p and time.monotonic() < end:
        time.sleep(0.05)


def start(name):
    for f in ("exit", "main.pid", "notify.jsonl"):
        if os.path.exists(os.path.join(STATE, f)):
            os.unlink(os.path.join(STATE, f))
    subprocess.Popen([sys.executable, __file__, "__supervise", name], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 120  # TimeoutStartSec
    while time.monotonic() < end:
        try:
            lines = open(os.path.join(STATE, "notify.jsonl")).read().splitlines()
        except OSError:
            lines = []
        if any(json.loads(l)["main"] and "READY=1" in json.loads(l)["msg"].split("\n") for l in lines):
            return 0
        if os.path.exists(os.path.join(STATE, "exit")):
            print(f"Job for {{name}} failed because the control process exited with error code.", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"Job for {{name}} failed because a timeout was exceeded.", file=sys.stderr)
    stop()
    return 1


def supervise(name):
    u = unit(name)
    creds = os.path.join(ROOT, "run/credentials", name)
    shutil.rmtree(creds, ignore_errors=True)
    os.makedirs(creds)
    for cid, src in u["creds"]:
        shutil.copy(src, os.path.join(creds, cid))  # systemd refuses to start without the source, so does this
    sock_path = os.path.join(STATE, "notify.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(0.2)
    env = {{"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "NOTIFY_SOCKET": sock_path,
           "CREDENTIALS_DIRECTORY": creds, **u["env"]}}
    if "watchdog_usec" in u:
        env["WATCHDOG_USEC"] = u["watchdog_usec"]
    cmd = u["exec"]
    if u.get("wx") and cmd[1:3] == ["-m", "edge"]:
        # MemoryDenyWriteExecute=yes: the same seccomp rules systemd installs, then `python -m edge ...`.
        cmd = [cmd[0], "-c", WX_FILTER + RUN_EDGE, *cmd[3:]]
    log = open(os.path.join(STATE, "daemon.log"), "ab")
    child = subprocess.Popen(cmd, cwd=u["cwd"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    with open(os.path.join(STATE, "main.pid.tmp"), "w") as f:
        f.write(str(child.pid))
    os.rename(os.path.join(STATE, "main.pid.tmp"), os.path.join(STATE, "main.pid"))
    notes = open(os.path.join(STATE, "notify.jsonl"), "a")
    while child.poll() is None:
        try:
            msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            continue
        sender = None
        for level, typ, data in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                sender = struct.unpack("iII", data[:12])[0]
        notes.write(json.dumps({{"pid": sender, "main": sender == child.pid, "msg": msg.decode()}}) + "\n")
        notes.flush()
    with open(os.path.join(STATE, "exit"), "w") as f:
        f.write(str(child.returncode))


def main(argv):
    if argv[:1] == ["__supervise"]:
        return supervise(argv[1])
    record(argv)
    args = [a for a in argv if not a.startswith("-")]
    cmd, name = (args + [None, None])[:2]
    if cmd in ("daemon-reload", "enable", "disable"):
        return 0
    if cmd in ("restart", "start"):
        stop()
        return start(name)
    if cmd == "stop":
        stop()
        return 0
    if cmd == "is-active":
        state = "active" if alive(pid()) else ("failed" if os.path.exists(os.path.join(STATE, "exit")) else "inactive")
        if "--quiet" not in argv:
            print(state)
        return 0 if state == "active" else 3
    if cmd == "status":
        print(f"{{name}}: {{'active' if alive(pid()) else 'not running'}}")
        try:
            print("\n".join(open(os.path.join(STATE, "daemon.log"), errors="replace").read().splitlines()[-10:]))
        except OSError:
            pass
        return 0 if alive(pid()) else 3
    print(f"fake systemctl: unsupported {{argv}}", file=sys.stderr)
    return 1


sys.exit(main(sys.argv[1:]))
'''


class Device:
    """The fake device: a root prefix, a systemctl recorder, the sshd that reaches it."""

    def __init__(self, tmp: Path, sshd: Sshd) -> None:
        self.root = tmp / "device"
        self.state = tmp / "systemd-state"
        self.root.mkdir()
        self.state.mkdir()
        self.sshd = sshd
        self.systemctl = tmp / "fake-systemctl"
        self.systemctl.write_text(
            FAKE_SYSTEMCTL.format(
                python=sys.executable, root=str(self.root), state=str(self.state), wx=WX_FILTER
            )
        )
        self.systemctl.chmod(0o755)
        self.opt = self.root / "opt/dishwatch"
        self.etc = self.root / "etc/dishwatch"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "DEVICE": self.sshd.device,
            "SSH_PORT": str(self.sshd.port),
            "DEPLOY_SSH_OPTS": self.sshd.ssh_opts,
            "DEPLOY_ROOT": str(self.root),
            "SYSTEMCTL": str(self.systemctl),
            "HEALTH_TIMEOUT": "30",
            **extra,
        }

    def deploy(self, timeout: float = 400, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "--no-print-directory", "deploy"],
            cwd=ROOT,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def current(self) -> str:
        return os.readlink(self.opt / "current")

    def calls(self) -> list[list[str]]:
        p = self.state / "calls.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def notifications(self) -> list[dict]:
        p = self.state / "notify.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def is_active(self) -> bool:
        return subprocess.run([str(self.systemctl), "is-active", "--quiet", UNIT]).returncode == 0

    def daemon_log(self) -> str:
        p = self.state / "daemon.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self) -> None:
        """Teardown: the daemon this test started, by its pid."""
        try:
            pid = int((self.state / "main.pid").read_text())
        except (OSError, ValueError):
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            end = time.monotonic() + wait
            while time.monotonic() < end:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)


def retained(broker: Broker, topic: str, username: str, password: str, timeout: float = 5.0) -> str | None:
    """The retained payload of a topic (what a dashboard connecting now would see)."""
    import paho.mqtt.client as mqtt

    got: list[str] = []
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.username_pw_set(username, password)
    c.on_connect = lambda cl, *_: cl.subscribe(topic, 1)

    def on_message(_c, _u, msg):
        got.append(msg.payload.decode())
        done.set()

    c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.loop_start()
    done.wait(timeout)
    c.loop_stop()
    c.disconnect()
    return got[0] if got else None


@pytest.fixture
def frames(tmp_path):
    """An image folder the daemon loops over: a real frame source without a camera."""
    import cv2
    import numpy as np

    d = tmp_path / "frames"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = np.full((240, 320, 3), 60, np.uint8)
        img[40:200, 40:200] = rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)
        cv2.imwrite(str(d / f"frame{i}.png"), img)
    return d


@pytest.fixture
def device(tmp_path):
    sshd = Sshd(tmp_path / "sshd").start()
    dev = Device(tmp_path, sshd)
    yield dev
    dev.stop()
    sshd.stop()


def write_config(dev: Device, path: Path, broker: Broker, frames: Path, extra: str = "") -> Path:
    path.write_text(
        textwrap.dedent(f"""\
        [camera]
        id = "pass1"
        source = "{frames}"
        fps = 5
        loop = true

        [[slots]]
        id = "left"
        rect = [40, 40, 160, 160]

        [model]
        bundle = "{dev.root}/opt/dishwatch/current/bundle"
        threads = 1

        [mqtt]
        url = "{broker.url}"
        username = "dishwatch"
        password_file = "{dev.root}/run/credentials/{UNIT}/mqtt-password"
        spool = "{dev.root}/var/lib/dishwatch/spool.sqlite"
        """)
        + extra
    )
    (dev.root / "var/lib/dishwatch").mkdir(parents=True, exist_ok=True)
    return path


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """deploy's failure contract: non-zero, the last stderr line is `deploy: error: ...`, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("deploy: error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


# --- input errors: one line, nothing touched ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"DEVICE": ""}, "DEVICE is not set"),
        ({"DEVICE": "root@bad host"}, "DEVICE: expected user@host"),
        ({"BUNDLE": "/nonexistent/bundle"}, "BUNDLE: /nonexistent/bundle is not a folder"),
        ({"SSH_PORT": "22x"}, "SSH_PORT"),
        ({"FORCE_CONFIG": "yes"}, "FORCE_CONFIG"),
        ({"CONFIG": "/nonexistent.toml"}, "CONFIG: /nonexistent.toml does not exist"),
        ({"MQTT_PASSWORD_FILE": "/nonexistent-pw"}, "MQTT_PASSWORD_FILE"),
    ],
)
def test_bad_input_is_one_line(tmp_path, standin_bundle, env, needle):
    proc = subprocess.run(
        ["make", "--no-print-directory", "deploy"],
        cwd=ROOT,
        env={**os.environ, "DEVICE": "root@127.0.0.1", "BUNDLE": str(standin_bundle), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line_error(proc, needle)


def test_unreachable_device_is_one_line(tmp_path, standin_bundle):
    proc = subprocess.run(
        ["bash", "scripts/deploy.sh"],
        cwd=ROOT,
        env={
            **os.environ,
            "DEVICE": "root@127.0.0.1",
            "SSH_PORT": str(free_port()),  # nothing listens there
            "BUNDLE": str(standin_bundle),
            "DEPLOY_SSH_OPTS": "-o ConnectTimeout=5 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line_error(proc, "ssh to root@127.0.0.1", "failed")


def test_missing_config_on_device_is_one_line(device, standin_bundle):
    proc = device.deploy(BUNDLE=str(standin_bundle))
    one_line_error(proc, "no config on the device", "CONFIG=")
    assert not (device.opt / "current").exists()
    assert device.calls() == []


# --- the real thing ---------------------------------------------------------------------------------------------


def test_deploy_idempotent_and_rollback(device, tiny_bundle, frames, tmp_path):
    # A broker that wants a password: the password must travel as a file and reach the daemon as a credential.
    secret = "s3cret-not-in-logs"
    port = free_port()
    (tmp_path / "broker").mkdir()
    pwfile = tmp_path / "broker/passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "dishwatch", secret], check=True)
    pwfile.chmod(0o644)
    broker = Broker(
        port=port,
        workdir=tmp_path / "broker",
        # `user root`: mosquitto otherwise drops to its own user, which cannot enter pytest's 0700 tmp dirs.
        extra_conf=f"user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}\n",
    ).start()
    try:
        mqtt_password = tmp_path / "mqtt-password"
        mqtt_password.write_text(secret + "\n")
        config = write_config(device, tmp_path / "dishwatch.toml", broker, frames)

        # 1. First deploy: release, venv, config, unit, service online.
        first = device.deploy(
            BUNDLE=str(tiny_bundle), CONFIG=str(config), MQTT_PASSWORD_FILE=str(mqtt_password)
        )
        out = first.stdout + first.stderr
        assert first.returncode == 0, out + device.daemon_log()
        assert secret not in out
        for word in (
            "packing the release",
            "building venv",
            "installing the config",
            "switching current",
            "healthy",
            "is live",
        ):
            assert word in out, word
        release = device.opt / device.current()
        v1 = device.current()
        assert v1.startswith("releases/r-")
        assert (release / "edge/__main__.py").is_file()
        assert not (release / "train").exists() and not (release / "convert").exists()
        assert (release / "bundle/model.tflite").read_bytes() == (tiny_bundle / "model.tflite").read_bytes()
        # The service's dynamic user must read everything in the release and write nothing.
        for p in release.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert p.stat().st_mode & stat.S_IROTH and not p.stat().st_mode & stat.S_IWOTH, p
        # The venv holds the edge set and nothing of TensorFlow.
        py = str(release / "venv/bin/python")
        assert (
            subprocess.run([py, "-c", "import cv2, paho.mqtt.client, ai_edge_litert, numpy"]).returncode == 0
        )
        assert subprocess.run([py, "-c", "import tensorflow"], capture_output=True).returncode != 0
        # Config and secret in /etc/dishwatch: the password root-only.
        assert (device.etc / "dishwatch.toml").read_text() == config.read_text()
        pw = device.etc / "mqtt-password"
        assert stat.S_IMODE(pw.stat().st_mode) == 0o600 and pw.read_text().strip() == secret
        # The installed unit is the repo's, and systemd accepts it with its ExecStart in this root.
        unit = device.root / "etc/systemd/system" / UNIT
        assert unit.read_text() == (ROOT / "systemd" / UNIT).read_text()
        verify_copy = tmp_path / UNIT
        verify_copy.write_text(unit.read_text().replace("/opt/dishwatch/", f"{device.opt}/"))
        v = subprocess.run(["systemd-analyze", "verify", str(verify_copy)], capture_output=True, text=True)
        assert v.returncode == 0 and v.stdout + v.stderr == "", v.stdout + v.stderr
        calls = device.calls()
        assert (
            ["daemon-reload"] in calls and ["enable", "--quiet", UNIT] in calls and ["restart", UNIT] in calls
        )
        # Type=notify: READY=1 came from the main process itself (NotifyAccess=main).
        notes = device.notifications()
        assert any(n["main"] and "READY=1" in n["msg"].split("\n") for n in notes), notes
        assert "wx-refused" in device.daemon_log()  # it ran under the W^X rules
        # ...and pings the watchdog while frames flow (first ping right after READY, then every WatchdogSec/2).
        end = time.monotonic() + 15
        while not any(n["main"] and "WATCHDOG=1" in n["msg"].split("\n") for n in device.notifications()):
            assert time.monotonic() < end, device.notifications()
            time.sleep(0.2)
        assert device.is_active()
        assert retained(broker, "dishwatch/pass1/availability", "dishwatch", secret) == "online"

        # 2. Same content again, with a changed CONFIG and no FORCE_CONFIG: same version, nothing rebuilt, the
        #    device's config kept.
        changed = tmp_path / "changed.toml"
        changed.write_text(config.read_text() + "# edited locally\n")
        second = device.deploy(BUNDLE=str(tiny_bundle), CONFIG=str(changed))
        assert second.returncode == 0, second.stdout + second.stderr + device.daemon_log()
        assert "already on the device: reusing it" in second.stdout
        assert "building venv" not in second.stdout
        assert "keeping the device's config" in second.stdout
        assert device.current() == v1
        assert (device.etc / "dishwatch.toml").read_text() == config.read_text()
        assert pw.read_text().strip() == secret  # no MQTT_PASSWORD_FILE this time: the device's one stays
        assert len(list((device.opt / "releases").iterdir())) == 1
        assert device.is_active()

        # 3. A broken bundle (its sha256 does not match model.tflite): the daemon refuses it, the health check
        #    fails, and the deploy rolls back to the release that worked, which is online again.
        broken = tmp_path / "broken-bundle"
        shutil.copytree(tiny_bundle, broken)
        meta = json.loads((broken / "bundle.json").read_text())
        meta["sha256"] = "0" * 64
        (broken / "bundle.json").write_text(json.dumps(meta))
        third = device.deploy(BUNDLE=str(broken))
        line = one_line_error(third, "failed its health check", f"rolled back to {v1}")
        assert "NOT healthy" not in line
        assert "hash mismatch" in device.daemon_log()  # failed for the reason we broke it
        assert "rolling back" in third.stdout and "building venv" not in third.stdout  # same requirements
        assert device.current() == v1
        assert len(list((device.opt / "releases").iterdir())) == 2
        assert device.is_active()
        assert retained(broker, "dishwatch/pass1/availability", "dishwatch", secret) == "online"
        assert secret not in third.stdout + third.stderr
    finally:
        broker.stop()


def test_first_release_failing_is_stopped(device, tiny_bundle, frames, broker, tmp_path):
    """Nothing to roll back to: the failed release is stopped, and the deploy says so in one line."""
    broken = tmp_path / "broken-bundle"
    shutil.copytree(tiny_bundle, broken)
    meta = json.loads((broken / "bundle.json").read_text())
    meta["sha256"] = "f" * 64
    (broken / "bundle.json").write_text(json.dumps(meta))
    config = write_config(device, tmp_path / "dishwatch.toml", broker, frames)
    anonymous = config.read_text().replace('username = "dishwatch"', 'username = ""')
    config.write_text("\n".join(ln for ln in anonymous.splitlines() if not ln.startswith("password_file")))
    proc = device.deploy(BUNDLE=str(broken), CONFIG=str(config))
    one_line_error(proc, "failed its health check", "no previous release, service stopped")
    assert "hash mismatch" in device.daemon_log()
    assert ["stop", UNIT] in device.calls()
    assert not device.is_active()


# --- the health check on its own: only a fresh `online` counts ------------------------------------------------------


def health_config(tmp_path: Path, broker: Broker, camera: str = "pass1") -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "bundle.json").write_text("{}")  # the config only checks the files are there
    (bundle / "model.tflite").write_bytes(b"")
    cfg = tmp_path / "health.toml"
    cfg.write_text(
        f'[camera]\nid = "{camera}"\n[[slots]]\nid = "a"\nrect = [0, 0, 8, 8]\n'
        f'[model]\nbundle = "{bundle}"\n[mqtt]\nurl = "{broker.url}"\n'
    )
    return cfg


def publish(broker: Broker, *payloads: str, gap: float = 0.0) -> None:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    for p in payloads:
        c.publish("dishwatch/pass1/availability", p, qos=1, retain=True).wait_for_publish(5)
        time.sleep(gap)
    c.loop_stop()
    c.disconnect()


def healthcheck(cfg: Path, tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/deploy/healthcheck.py"), "--config", str(cfg), *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_file(path: Path, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_healthcheck_ignores_a_stale_retained_online(broker, tmp_path):
    cfg = health_config(tmp_path, broker)
    publish(broker, "online")  # left by a process that is gone
    proc = healthcheck(cfg, tmp_path, "--timeout", "2")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "no 'online' on dishwatch/pass1/availability within 2s" in out, out


def test_healthcheck_accepts_a_fresh_online(broker, tmp_path):
    cfg = health_config(tmp_path, broker)
    ready = tmp_path / "ready"
    proc = healthcheck(cfg, tmp_path, "--timeout", "20", "--settle", "1", "--ready-file", str(ready))
    wait_file(ready)
    publish(broker, "offline", "online")  # the old process stops, the new one comes up
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "online" in out, out


def test_healthcheck_rejects_online_that_does_not_hold(broker, tmp_path):
    cfg = health_config(tmp_path, broker)
    ready = tmp_path / "ready"
    proc = healthcheck(cfg, tmp_path, "--timeout", "20", "--settle", "5", "--ready-file", str(ready))
    wait_file(ready)
    publish(broker, "online", "offline", gap=0.3)  # came up, then died
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "went 'offline'" in out, out


def test_healthcheck_bad_config_names_the_key(broker, tmp_path):
    cfg = health_config(tmp_path, broker, camera="Bad Id")
    proc = healthcheck(cfg, tmp_path, "--check-only")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "camera.id" in out, out
