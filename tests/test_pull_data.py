"""`make pull-data` against a real OpenSSH server on loopback (tests/sshd.py): the device's feedback dataset arrives
in the MVTec layout the training loader reads, a second pull merges, the device's learned rows arrive beside it
(replaced by the next pull), and bad input or a missing folder on the device is one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.broker import free_port
from tests.sshd import Sshd, sshd_available

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))


@pytest.fixture
def sshd(tmp_path):
    s = Sshd(tmp_path / "sshd").start()
    yield s
    s.stop()


def pull(env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "pull-data"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)


def one_line_error(proc, *needles: str) -> None:
    assert proc.returncode != 0, proc
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("make")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_pull_copies_the_dataset_and_merges(sshd, tmp_path):
    device = tmp_path / "device" / "var" / "lib" / "dishwatch" / "feedback"
    png(device / "train" / "good" / "e1.png", 1)
    png(device / "test" / "spill" / "e2.png", 2)
    (device / "test" / "spill" / ".e3.png.tmp").write_bytes(
        b"half a file"
    )  # a copy in progress is not pulled
    out = tmp_path / "pulled"
    learned = device.parent / "learned.npz"
    env = {
        "DEVICE": sshd.device,
        "SSH_PORT": str(sshd.port),
        "DEPLOY_SSH_OPTS": sshd.ssh_opts,
        "DATASET_DIR": str(device),
        "LEARNED_FILE": str(learned),
        "OUT": str(out),
    }
    proc = pull(env)
    assert proc.returncode == 0, proc.stderr
    assert "1 false alarm(s) in train/good, 1 confirmed defect(s) in test/" in proc.stdout
    assert f"no {learned} on" in proc.stdout and not (out / "learned.npz").exists(), "nothing learned yet"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["test/spill/e2.png", "train/good/e1.png"]
    assert (out / "train/good/e1.png").read_bytes() == (device / "train/good/e1.png").read_bytes()

    from train.data import load_dataset

    assert load_dataset(out).layout == "mvtec"

    png(device / "test" / "chip" / "e4.png", 4)  # new feedback on the device since, and rows learned from it
    from edge.learning import LearnedRows, Lessons

    lessons = Lessons(learned, "model:bank", (3, 2), 100)
    lessons.add("e1", LearnedRows(np.ones((2, 3), np.float32), np.ones(2, np.float32),
                                  np.ones((1, 2), np.float32), np.ones(1, np.float32)))  # fmt: skip
    lessons.save()
    proc = pull(env)
    assert proc.returncode == 0, proc.stderr
    assert (out / "test/chip/e4.png").is_file() and (out / "train/good/e1.png").is_file()
    assert (out / "learned.npz").read_bytes() == learned.read_bytes() and "--learned" in proc.stdout
    assert load_dataset(out).layout == "mvtec", "the loader ignores the learned file beside the dataset"

    lessons.remove("e1")  # relabelled on the device: the next pull replaces the copy, it does not merge
    lessons.save()
    assert pull(env).returncode == 0
    assert (out / "learned.npz").read_bytes() == learned.read_bytes()

    learned.write_bytes(b"not an archive")  # a wrong LEARNED_FILE leaves the local copy alone
    before = (out / "learned.npz").read_bytes()
    one_line_error(pull(env), str(learned), "not a learned file")
    assert (out / "learned.npz").read_bytes() == before
    skip = pull({**env, "LEARNED_FILE": ""})
    assert skip.returncode == 0 and "learned" not in skip.stdout.split("check it")[1], skip.stdout


def test_missing_dataset_on_the_device_is_one_line(sshd, tmp_path):
    proc = pull(
        {
            "DEVICE": sshd.device,
            "SSH_PORT": str(sshd.port),
            "DEPLOY_SSH_OPTS": sshd.ssh_opts,
            "DATASET_DIR": str(tmp_path / "nothing-here"),
            "OUT": str(tmp_path / "pulled"),
        }
    )
    one_line_error(proc, "has no", "nothing-here", "DATASET_DIR")
    assert not (tmp_path / "pulled").exists()


@pytest.mark.parametrize(
    "env, needle",
    [
        ({}, "DEVICE is not set"),
        ({"DEVICE": "root@host; rm -rf /"}, "DEVICE: expected user@host"),
        ({"DEVICE": "root@127.0.0.1", "SSH_PORT": "x"}, "SSH_PORT: expected a port number"),
        ({"DEVICE": "root@127.0.0.1", "DATASET_DIR": "rel/path"}, "DATASET_DIR: expected an absolute path"),
        ({"DEVICE": "root@127.0.0.1", "DATASET_DIR": "/a'b"}, "DATASET_DIR: expected an absolute path"),
        (
            {"DEVICE": "root@127.0.0.1", "LEARNED_FILE": "learned.npz"},
            "LEARNED_FILE: expected an absolute path",
        ),
    ],
)
def test_bad_input_is_one_line(env, needle):
    one_line_error(pull({"DEVICE": "", **env}), needle)


def test_unreachable_device_is_one_line(tmp_path):
    proc = pull(
        {
            "DEVICE": "root@127.0.0.1",
            "SSH_PORT": str(free_port()),
            "DEPLOY_SSH_OPTS": "-o ConnectTimeout=5 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "OUT": str(tmp_path / "pulled"),
        }
    )
    one_line_error(proc, "ssh to root@127.0.0.1", "failed")
