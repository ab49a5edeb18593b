"""A real OpenSSH server on a free loopback port, with throwaway host and user keys, owned by one test.

Why real: `make deploy` is one ssh call carrying a tarball on stdin and streaming the device's output back; a fake
would not catch quoting, exit codes, stdin handling or a daemon that keeps the session open.
Root login is allowed by key only (`PermitRootLogin prohibit-password`), and only on 127.0.0.1.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.broker import free_port, stop_process

SSHD = "/usr/sbin/sshd"


def sshd_available() -> str | None:
    """None when a test sshd can run here, else why not."""
    if not Path(SSHD).is_file():
        return "openssh-server is not installed (make setup installs it when root)"
    if not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        return "openssh-client is not installed (make setup installs it when root)"
    if os.geteuid() != 0:
        return "sshd needs root here (privilege separation)"
    return None


class Sshd:
    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        self.key = self.dir / "id_ed25519"
        self.proc: subprocess.Popen | None = None

    def _keygen(self, path: Path) -> None:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dishwatch-test", "-f", str(path)],
            check=True,
        )

    def start(self, timeout: float = 10.0) -> Sshd:
        host_key = self.dir / "ssh_host_ed25519_key"
        self._keygen(host_key)
        self._keygen(self.key)
        auth = self.dir / "authorized_keys"
        auth.write_text((self.dir / "id_ed25519.pub").read_text())
        auth.chmod(0o600)
        conf = self.dir / "sshd_config"
        conf.write_text(
            f"ListenAddress 127.0.0.1\n"
            f"Port {self.port}\n"
            f"HostKey {host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {auth}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "X11Forwarding no\n"
            "AllowTcpForwarding no\n"
            "PrintMotd no\n"
            "LogLevel VERBOSE\n"
        )
        # Debian's sshd insists on its privilege-separation directory (normally made by its service unit).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = open(self.dir / "sshd.log", "ab")
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(conf)], stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-800:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on {self.port}")

    @property
    def device(self) -> str:
        return f"{self.user}@127.0.0.1"

    @property
    def ssh_opts(self) -> str:
        """For DEPLOY_SSH_OPTS: the throwaway key, and no host-key bookkeeping for a host made a second ago."""
        return (
            f"-i {self.key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o IdentitiesOnly=yes -o LogLevel=ERROR"
        )

    def ssh(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "ssh",
                "-p",
                str(self.port),
                *self.ssh_opts.split(),
                "-o",
                "BatchMode=yes",
                self.device,
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
