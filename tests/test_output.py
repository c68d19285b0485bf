"""A step's output is bounded (contract v3, "Bounds"): the engine keeps none of it (no log
driver: logist attaches), logist keeps up with a flood, and the stored log keeps its head and
tail within ``log_limit`` with a line saying how much was dropped; secrets stay masked."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from logist.channel import frames
from logist.output import CappedLog
from tests.helpers import create_job, wait_for

DROP = b"bytes of output dropped]"


def _config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return {"LOGIST_CONFIG": str(path)}


def _log(jobs_root: Path, job: str, step: int = 1) -> bytes:
    return (jobs_root / job / "logs" / f"step-{step}.log").read_bytes()


def test_the_capped_log_keeps_head_and_tail_and_says_how_much_it_dropped():
    fh = io.BytesIO()
    log = CappedLog(fh, 100)
    for i in range(1000):
        log.write(f"{i:04d}\n".encode())
    log.flush()
    data = fh.getvalue()
    assert data.startswith(b"0000\n0001\n")
    assert data.endswith(b"0998\n0999\n")
    kept = data.replace(b"\n[logist: 4900 bytes of output dropped]\n", b"")
    assert len(kept) == 100


def test_the_capped_log_below_its_limit_is_the_output_itself():
    fh = io.BytesIO()
    log = CappedLog(fh, 1 << 20)
    log.write(b"a" * 700_000)
    log.write(memoryview(b"b" * 300_000))
    log.flush()
    assert fh.getvalue() == b"a" * 700_000 + b"b" * 300_000


def test_docker_frames_split_anywhere_are_joined_in_order():
    stream = b"".join(
        bytes([kind, 0, 0, 0]) + len(p).to_bytes(4, "big") + p
        for kind, p in ((1, b"out1 "), (2, b"err "), (1, b"out2"))
    )
    for cut in range(len(stream) + 1):
        buf = bytearray(stream[:cut])
        got = frames(buf)
        buf += stream[cut:]
        got += frames(buf)
        assert got == b"out1 err out2" and not buf


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_flood_of_newlines_is_stored_fast_and_the_engine_keeps_none_of_it(
    jobs_root: Path, source_repo: Path, docker_client, logist
):
    job = create_job(
        logist, source_repo, 'head -c 20971520 /dev/zero | tr "\\0" "\\n"; echo end; sleep 3'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "job", "run", job],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        mine = {"label": [f"logist.job={job}", "logist.step=1"]}
        found = wait_for(lambda: docker_client.containers.list(filters=mine), timeout=60)
        log_config = found[0].attrs["HostConfig"]["LogConfig"]
        assert log_config["Type"] == "none"
        assert not found[0].attrs.get("LogPath")
    finally:
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    data = _log(jobs_root, job)
    assert len(data) == 20971520 + 4 and data.endswith(b"\nend\n")


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_the_stored_log_is_capped_with_head_tail_and_a_masked_secret(
    jobs_root: Path, source_repo: Path, tmp_path: Path, logist
):
    env = {**_config(tmp_path, "log_limit: 64k\n"), "TOKEN": "hunter2-secret-value"}
    step = (
        'echo "FIRST $TOKEN"; sleep 0.3; echo "ERR $TOKEN" >&2; sleep 0.3; i=0; '
        "while [ $i -lt 10000 ]; do i=$((i+1)); "
        'echo "line $i $TOKEN"; done; sleep 0.3; printf "LAST %s" "$TOKEN"'
    )
    out = logist(
        "job", "create", "--repo", str(source_repo), "--step", step, "--secret", "TOKEN", env=env
    )
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    run = logist("job", "run", job, env=env)
    assert run.returncode == 0, run.stderr
    data = _log(jobs_root, job)
    assert b"hunter2" not in data
    assert data.startswith(b"FIRST ***\nERR ***\n")  # stderr too
    assert data.endswith(b"LAST ***")  # no trailing newline, the tail kept
    assert DROP in data
    assert len(data) < 64 * 1024 + 100
    logs = logist("job", "logs", job)
    assert "hunter2" not in logs.stdout and "bytes of output dropped" in logs.stdout


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_binary_output_and_both_streams_are_stored_as_they_came(
    jobs_root: Path, source_repo: Path, logist
):
    job = create_job(
        logist, source_repo, "printf 'a\\000b\\377'; sleep 0.2; printf err >&2; sleep 0.2; printf o"
    )
    run = subprocess.run(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "job", "run", job],
        capture_output=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr
    assert _log(jobs_root, job) == b"a\x00b\xfferro"
    assert run.stdout == b"a\x00b\xfferro"  # shown as it came


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_line_reaches_logs_follow_within_a_second_while_the_step_runs(
    jobs_root: Path, source_repo: Path, logist
):
    job = create_job(logist, source_repo, "echo ready-now; sleep 5; echo later")
    runner = subprocess.Popen(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "job", "run", job],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        log = jobs_root / job / "logs" / "step-1.log"
        wait_for(lambda: log.exists() and b"ready-now" in log.read_bytes(), timeout=60)
        status = logist("job", "status", job, "--json")  # streamed: the step still runs
        assert '"state": "running"' in status.stdout
    finally:
        runner.communicate(timeout=60)
    assert runner.returncode == 0
