"""The systemd unit: systemd accepts it, rates its exposure <= 2.0, keeps the contracts the daemon and the deploy
rely on, and its MemoryDenyWriteExecute=yes does not break numpy, OpenCV or LiteRT/XNNPACK.

systemd is not PID 1 here, so `systemd-analyze` checks the file offline. Its `verify` insists that ExecStart's
binary exists on this machine (`--root=` does not change that in systemd 252), so the verified copy points
ExecStart at this test's Python; everything else is the unit as shipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "dishwatch-edge.service"
EXAMPLE = ROOT / "systemd" / "dishwatch.toml.example"
EXEC = "/opt/dishwatch/current/venv/bin/python"

needs_analyze = pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="systemd-analyze not installed"
)


def directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values in order (keys may repeat, as SystemCallFilter= does)."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )


def exposure(path: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


@needs_analyze
def test_verify_is_clean(tmp_path):
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(EXEC, sys.executable))
    proc = verify(copy)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
    # The same check notices a broken unit (it only warns, so "clean" means: no output at all).
    broken = tmp_path / "broken" / UNIT.name
    broken.parent.mkdir()
    broken.write_text(copy.read_text().replace("Type=notify", "Type=notfy"))
    assert "notfy" in verify(broken).stderr


@needs_analyze
def test_security_exposure_at_most_2(tmp_path):
    assert exposure(UNIT) <= 2.0
    # The parser reads the number systemd computed: a unit without hardening rates far worse.
    plain = tmp_path / "plain.service"
    plain.write_text(f"[Service]\nExecStart={sys.executable} -m edge run\n")
    assert exposure(plain) > 8.0


def test_unit_contract():
    d = directives(UNIT.read_text())

    def one(section: str, key: str) -> str:
        values = d.get((section, key))
        assert values, f"[{section}] {key}= missing"
        return values[-1]

    assert one("Service", "Type") == "notify"
    assert one("Service", "NotifyAccess") == "main"
    assert int(one("Service", "WatchdogSec")) > 0
    assert one("Service", "ExecStart") == f"{EXEC} -m edge run --config /etc/dishwatch/dishwatch.toml"
    assert one("Service", "WorkingDirectory") == "/opt/dishwatch/current"
    assert one("Service", "Restart") == "on-failure"
    assert int(one("Service", "RestartSec")) >= 1
    assert int(one("Unit", "StartLimitBurst")) >= 2 and int(one("Unit", "StartLimitIntervalSec")) > 0
    # SIGTERM stop: the daemon publishes offline and flushes the spool before exiting.
    assert one("Service", "KillSignal") == "SIGTERM" and int(one("Service", "TimeoutStopSec")) >= 15
    assert one("Service", "StateDirectory") == "dishwatch"  # /var/lib/dishwatch/spool.sqlite
    assert one("Service", "ConfigurationDirectory") == "dishwatch"
    assert one("Service", "LoadCredential") == "mqtt-password:/etc/dishwatch/mqtt-password"
    assert one("Service", "DevicePolicy") == "closed"
    assert one("Service", "DeviceAllow") == "char-video4linux rw"
    assert one("Service", "SupplementaryGroups") == "video"
    assert one("Service", "CapabilityBoundingSet") == ""
    assert one("Service", "ProtectSystem") == "strict"
    assert one("Service", "UMask") == "0077"
    assert d[("Service", "SystemCallFilter")] == ["@system-service", "~@privileged @resources"]
    assert one("Install", "WantedBy") == "multi-user.target"


def test_example_config_is_valid(tmp_path):
    """The example parses with the daemon's own validator (the bundle path pointed at a stand-in folder)."""
    from edge import config

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    (bundle / "model.tflite").write_bytes(b"")
    data = tomllib.loads(EXAMPLE.read_text())
    assert data["model"]["bundle"] == "/opt/dishwatch/current/bundle"
    assert data["mqtt"]["spool"] == "/var/lib/dishwatch/spool.sqlite"
    data["model"]["bundle"] = str(bundle)
    cfg = config.parse(data, tmp_path / "dishwatch.toml")
    assert cfg.camera.source == "/dev/video0"
    # The commented password_file names the credential the unit loads.
    assert '# password_file = "/run/credentials/dishwatch-edge.service/mqtt-password"' in EXAMPLE.read_text()


# The filter systemd installs for MemoryDenyWriteExecute=yes (src/shared/seccomp-util.c): refuse mmap with
# PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC, shmat with SHM_EXEC.  Same rules, same errno.
WX_FILTER = textwrap.dedent("""\
    import ctypes, mmap, platform, struct
    ARCH = {
        "x86_64": (0xC000003E, {"mmap": 9, "mprotect": 10, "pkey_mprotect": 329, "shmat": 30}),
        "aarch64": (0xC00000B7, {"mmap": 222, "mprotect": 226, "pkey_mprotect": 288, "shmat": 196}),
    }
    audit, nr = ARCH[platform.machine()]
    LD, JEQ, AND, RET = 0x20, 0x15, 0x54, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_ALU|AND|K, BPF_RET|K
    ALLOW, EPERM = 0x7FFF0000, 0x00050001
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, audit), (RET, 0, 0, ALLOW)]
    for name, mask in (("mmap", 6), ("mprotect", 4), ("pkey_mprotect", 4), ("shmat", 0o100000)):
        # nr == name and (args[2] & mask) == mask -> EPERM
        prog += [(LD, 0, 0, 0), (JEQ, 0, 4, nr[name]), (LD, 0, 0, 32), (AND, 0, 0, mask), (JEQ, 0, 1, mask),
                 (RET, 0, 0, EPERM)]
    prog.append((RET, 0, 0, ALLOW))
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Prog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        raise SystemExit("W^X filter not effective")
    except PermissionError:
        print("wx-refused")
    """)

WORKLOAD = textwrap.dedent("""\
    import sys, numpy as np, cv2
    from ai_edge_litert.interpreter import Interpreter
    bundle, video = sys.argv[1], sys.argv[2]
    # OpenCV: encode and decode a video through its bundled FFmpeg, resize, JPEG (the snapshot path).
    w = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(5):
        w.write(np.full((120, 160, 3), 40 * i, np.uint8))
    w.release()
    cap = cv2.VideoCapture(video)
    ok, frame = cap.read()
    assert ok, "video decode failed"
    assert cv2.imencode(".jpg", cv2.resize(frame, (64, 64)))[0]
    # LiteRT with its default XNNPACK delegate, several threads, as the scorer runs it.
    it = Interpreter(model_path=bundle + "/model.tflite", num_threads=2)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    out = it.get_tensor(it.get_output_details()[0]["index"])
    import paho.mqtt.client  # noqa: F401
    print("workload-ok", out.shape)
    """)


@pytest.mark.skipif(sys.platform != "linux", reason="seccomp is Linux only")
def test_memory_deny_write_execute_keeps_the_stack_working(tmp_path, tiny_bundle):
    import platform

    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip(f"no syscall table for {platform.machine()} in this test")
    script = tmp_path / "wx.py"
    script.write_text(WX_FILTER + WORKLOAD)
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_bundle), str(tmp_path / "clip.avi")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wx-refused" in proc.stdout and "workload-ok" in proc.stdout
