"""A second, disposable Docker engine for tests that stop and restart an engine, so the
engine every other test uses is never disturbed. It gets a bridge of its own: ``--bridge=none``
would make dockerd delete the host's default ``docker0`` bridge, breaking the main engine."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class Engine2:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "docker.sock"
        self.pidfile = base / "docker.pid"
        self.host = f"unix://{self.sock}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def answers(self) -> bool:
        return (
            subprocess.run(
                ["docker", "info"], env=self.env(), capture_output=True, timeout=30
            ).returncode
            == 0
        )

    bridge = "logist-br2"

    def start(self, timeout: float = 60) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.answers():
            return
        if subprocess.run(["ip", "link", "show", self.bridge], capture_output=True).returncode:
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        self.pidfile.unlink(missing_ok=True)  # a killed daemon's: it does not answer
        log = open(self.base / "dockerd.log", "ab")  # noqa: SIM115 (the daemon keeps it)
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "--data-root",
                str(self.base / "data"),
                "--exec-root",
                str(self.base / "exec"),
                "--pidfile",
                str(self.pidfile),
                "-H",
                self.host,
                f"--bridge={self.bridge}",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"second engine did not start: see {self.base}/dockerd.log")
            time.sleep(0.3)

    proc: subprocess.Popen | None = None

    def stop(self, timeout: float = 60) -> None:
        if self.proc is not None:  # our child: wait() reaps it (a zombie still answers kill 0)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
            return
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def load(self, image: str) -> None:
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "load", "-q"],
            stdin=save.stdout,
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=300,
        )
        save.wait(timeout=60)
