"""The CLI as a background process, and jobs through the CLI that several test modules run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import create_job, job_status


def popen_logist(jobs_root: Path, *args: str, **popen) -> subprocess.Popen:
    """``python -m logist --jobs-dir ROOT ARGS`` started in the background, its stdout and
    stderr piped as text (``popen``: other ``subprocess.Popen`` options, or these overridden)."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), *args], **options
    )


def run_failing_at_step_2(logist, source_repo: Path, code: int) -> tuple[str, dict]:
    """A three-step job whose second step writes two.txt and exits ``code``, run: exit 1, the
    job failed at step 2 and step 3 never ran. Its id and its status."""
    job = create_job(
        logist,
        source_repo,
        "echo one > one.txt",
        f"echo partial > two.txt; exit {code}",
        "echo three > three.txt",
    )
    out = logist("job", "run", job)
    assert out.returncode == 1, out.stderr
    view = job_status(logist, job)
    assert view["state"] == "failed"
    assert [s["state"] for s in view["steps"]] == ["succeeded", "failed", "pending"]
    assert view["steps"][1]["exit_code"] == code
    return job, view
