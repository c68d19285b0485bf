"""Helpers for tests: real git repositories and the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A git repository at ``path`` with one commit on ``main``."""
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for name, text in (files or {"README.md": "hello\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "initial")
    return path


def commit_file(repo: Path, name: str, text: str, message: str = "change") -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


def run_logist(
    jobs_root: Path,
    *args: str,
    timeout: float = 120,
    env: dict | None = None,
    input: str | None = None,
    **popen,
) -> subprocess.CompletedProcess:
    """``logist --jobs-dir ROOT ARGS``, its output captured as text: in this process (the
    program's own ``entry.run``: the same parsing, exit codes and output, without an
    interpreter's start), or as ``python -m logist`` when a process of its own is what the test
    needs (``input``, ``popen``: more of ``subprocess.run``'s options, e.g. ``preexec_fn``) or
    when ``LOGIST_TEST_SUBPROCESS=1``."""
    # a cancel is a process of its own: in this one it reaches a runner faster than a user's
    # would, and races seen there (CI, Podman) are not yet understood
    canceling = "cancel" in args[:3]
    subprocess_wanted = os.environ.get("LOGIST_TEST_SUBPROCESS") == "1" or canceling
    if not popen and input is None and not subprocess_wanted:
        return _in_process(["--jobs-dir", str(jobs_root), *args], env or {})
    return subprocess.run(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env={**os.environ, **(env or {})},
        **popen,
    )


def _in_process(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    """``entry.run(argv)`` with ``env`` over this process's environment and its stdout and
    stderr captured (bytes, as the program writes them)."""
    import io

    from logist import entry

    streams = [io.BytesIO(), io.BytesIO()]
    out, err = (io.TextIOWrapper(b, encoding="utf-8", write_through=True) for b in streams)
    saved_env, saved_streams = dict(os.environ), (sys.stdout, sys.stderr)
    os.environ.update({k: str(v) for k, v in env.items()})
    sys.stdout, sys.stderr = out, err
    try:
        code = entry.run(argv)
    finally:
        sys.stdout, sys.stderr = saved_streams
        os.environ.clear()
        os.environ.update(saved_env)
    text = [b.getvalue().decode(errors="replace") for b in streams]
    return subprocess.CompletedProcess(["logist", *argv], code, text[0], text[1])


def create_job(logist, repo: Path, *steps: str, extra: tuple[str, ...] = ()) -> str:
    """``logist job create --repo REPO --step S...`` through ``logist``; the new id."""
    args = ["job", "create", "--repo", str(repo)]
    for step in steps:
        args += ["--step", step]
    out = logist(*args, *extra)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def job_status(logist, job_id: str) -> dict:
    """``logist job status ID --json``, parsed."""
    import json

    out = logist("job", "status", job_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(predicate, timeout: float = 30, what: str = "a condition"):
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
