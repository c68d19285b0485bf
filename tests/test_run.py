"""`logist run`: create + run in one command; progress lines for people on a terminal only."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import git
from tests.helpers import job_status as status

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


def job_id_from(stderr: str) -> str:
    """The id ``logist run`` announces on stderr, first thing."""
    first = stderr.splitlines()[0]
    assert first.startswith("logist: job "), stderr
    return first.removeprefix("logist: job ").strip()


def test_run_creates_and_runs_a_job_in_one_command(logist, source_repo, jobs_root):
    out = logist(
        "run", "--repo", str(source_repo), "--step", "echo one > one.txt", "--step", "cat one.txt"
    )
    assert out.returncode == 0, out.stderr
    job = job_id_from(out.stderr)
    assert out.stdout == "one\n"  # only the steps' output: no progress off a terminal
    st = status(logist, job)
    assert st["state"] == "succeeded"
    assert git(source_repo, "show", f"logist/{job}:one.txt") == "one\n"
    assert st["workspace"]["state"] == "removed"


def test_run_with_an_id_and_a_failing_step_exits_1(logist, source_repo):
    out = logist("run", "my-run", "--repo", str(source_repo), "--step", "exit 5", "--step", "true")
    assert out.returncode == 1, out.stderr
    assert job_id_from(out.stderr) == "my-run"
    st = status(logist, "my-run")
    assert st["state"] == "failed"
    assert [s["state"] for s in st["steps"]] == ["failed", "pending"]
    assert st["steps"][0]["exit_code"] == 5


@pytest.mark.parametrize(
    "args",
    [
        ("run", "BAD", "--step", "true"),  # bad id
        ("run", "--step", "true"),  # no repository
        ("run", "--repo", "/nonexistent/repo", "--step", "true"),
        ("run", "--repo", "{src}"),  # no steps
        ("run", "--repo", "{src}", "--step", "true", "--network", "wifi"),
        ("run", "--repo", "{src}", "--step", "true", "--ref", "no-such-ref"),
    ],
)
def test_run_refuses_bad_input_with_exit_2_and_creates_nothing(
    logist, source_repo, jobs_root, args
):
    out = logist(*(a.replace("{src}", str(source_repo)) for a in args))
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert [p.name for p in jobs_root.iterdir() if not p.name.startswith(".")] == []


def read_pty(cmd: list[str], timeout: float = 90) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal; its exit code and output."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def test_progress_lines_on_a_terminal_and_none_with_quiet(source_repo, jobs_root: Path):
    base = [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "run"]
    spec = ["--repo", str(source_repo), "--step", "echo hello", "--step", "exit 3"]
    code, text = read_pty([*base, *spec])
    assert code == 1, text
    lines = text.splitlines()
    assert "[1/2] echo hello" in lines
    assert any(line.startswith("[1/2] succeeded, exit 0 in ") for line in lines), text
    assert any(line.startswith("[2/2] failed, exit 3 in ") for line in lines), text
    summary = [line for line in lines if line.startswith("job ") and " failed in " in line]
    assert summary and "branch logist/" in summary[0] and "cleaned up" in summary[0], text
    code, quiet = read_pty([*base, "--quiet", *spec])
    assert code == 1
    assert "hello" in quiet and "[1/2]" not in quiet and " failed in " not in quiet


def test_status_and_list_show_durations(logist, source_repo):
    out = logist("run", "timed", "--repo", str(source_repo), "--step", "sleep 1")
    assert out.returncode == 0, out.stderr
    st = status(logist, "timed")
    assert st["steps"][0]["duration"] >= 1.0
    assert "DURATION" in logist("job", "list").stdout
    # The step's own line says how long it took: at least the second it slept (a loaded machine
    # may add more, so no upper bound here).
    text = logist("job", "status", "timed").stdout
    taken = re.findall(r" in (\d+\.\d)s", text)
    assert taken and float(taken[0]) >= 1.0, text
