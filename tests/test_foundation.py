"""The foundation: version, help, doctor against the real engine and a missing one, images."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import run_logist


def test_version_prints_the_package_version(logist):
    from logist import __version__

    out = logist("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"logist {__version__}"


def test_help_lists_the_commands_and_every_command_has_help(logist):
    out = logist("--help")
    assert out.returncode == 0 and "job" in out.stdout and "doctor" in out.stdout
    for cmd in ("create", "list", "status", "logs", "step", "run", "cancel", "cleanup"):
        sub = logist("job", cmd, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "Usage:" in sub.stdout


def test_help_does_not_import_docker_or_git():
    code = (
        "import os, sys, runpy; sys.argv=['logist','--help']\n"
        "def leave(code): raise SystemExit(code)\n"
        "os._exit = leave  # the program leaves without the teardown: see what it loaded\n"
        "try:\n runpy.run_module('logist', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in ('docker','git','requests','yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]")


@pytest.mark.docker
def test_doctor_passes_on_the_running_engine(logist, jobs_root):
    out = logist("doctor", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert report["ok"] is True
    names = {c["name"] for c in report["checks"]}
    assert {"engine", "jobs-root-writable", "jobs-root-visible", "images"} <= names


def test_doctor_exits_3_with_a_one_line_reason_when_the_engine_is_missing(jobs_root, tmp_path):
    out = run_logist(
        jobs_root, "doctor", "--json", env={"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"}
    )
    assert out.returncode == 3
    report = json.loads(out.stdout)
    assert report["ok"] is False
    engine = next(c for c in report["checks"] if c["name"] == "engine")
    assert engine["ok"] is False and "no-such.sock" in engine["detail"]
    assert "\n" not in engine["detail"]
    plain = run_logist(jobs_root, "doctor", env={"DOCKER_HOST": f"unix://{tmp_path}/x.sock"})
    assert plain.returncode == 3 and "FAIL engine" in plain.stdout


@pytest.mark.docker
def test_step_image_has_git_python_and_certificates(docker_client):
    out = docker_client.containers.run(
        "logist/step:latest",
        [
            "sh",
            "-c",
            "git --version && python3 --version && test -e /etc/ssl/certs/ca-certificates.crt",
        ],
        remove=False,
        detach=True,
    )
    try:
        assert out.wait(timeout=60)["StatusCode"] == 0
        assert b"git version" in out.logs()
    finally:
        out.remove(force=True)


@pytest.mark.docker
@pytest.mark.slow
def test_doctor_runs_inside_the_logist_image_against_the_host_engine(docker_client, jobs_root):
    logs = docker_client.containers.run(
        "logist/logist:latest",
        ["--jobs-dir", str(jobs_root), "doctor", "--json"],
        volumes={
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            str(jobs_root): {"bind": str(jobs_root), "mode": "rw"},
        },
        detach=True,
    )
    try:
        status = logs.wait(timeout=120)
        text = logs.logs(stdout=True, stderr=False).decode()
        assert status["StatusCode"] == 0, logs.logs().decode()
        assert json.loads(text)["ok"] is True
    finally:
        logs.remove(force=True)
