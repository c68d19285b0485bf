"""More than one engine: two "nodes" (containers running their own dockerd, each with its own
file system, reached over tcp://) as the engines of real jobs run from this host."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import create_job, git, wait_for
from tests.helpers import job_status as status

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(300)]

IMAGE = "logist/busybox:latest"


@pytest.fixture
def nodes(running_nodes):
    """The session's two nodes, restarted if a test stopped one (tests/nodes.py)."""
    return running_nodes


@pytest.fixture
def on_nodes(logist, nodes):
    """The CLI with both nodes as its engines."""

    def run(*args: str, engines=None, **kwargs):
        urls = [n.url for n in (engines or nodes)]
        flags = [a for url in urls for a in ("--engine", url)]
        return logist(*flags, *args, **kwargs)

    return run


def assert_nothing_left(nodes, jobs_root):
    for node in nodes:
        left = node.leftovers(jobs_root)
        assert not left, f"left on {node.url}: {left}"


def test_jobs_spread_over_two_engines_and_land_in_the_local_source(
    on_nodes, nodes, source_repo, jobs_root
):
    ids = [
        create_job(on_nodes, source_repo, f"echo {i} > f{i}.txt", "sleep 1; cat f*.txt",
                   extra=("--image", IMAGE))
        for i in range(6)
    ]  # fmt: skip
    out = on_nodes("job", "run", "--all", "--parallel", "2", timeout=240)
    assert out.returncode == 0, out.stderr
    placed = {status(on_nodes, i)["engine"] for i in ids}
    assert placed == {n.url for n in nodes}  # both used
    for n, job in enumerate(ids):
        st = status(on_nodes, job)
        assert st["state"] == "succeeded", st
        assert st["workspace"]["volume"] and st["workspace"]["state"] == "removed"
        assert git(source_repo, "show", f"logist/{job}:f{n}.txt") == f"{n}\n"
    assert not (jobs_root / ids[0] / "workspace").exists()
    assert_nothing_left(nodes, jobs_root)


def test_an_image_missing_on_a_node_is_exit_3_naming_image_and_engine(
    on_nodes, nodes, source_repo, jobs_root
):
    node = nodes[0]
    out = on_nodes(
        "run", "noimg", "--repo", str(source_repo), "--image", "logist/absent:1",
        "--pull", "never", "--step", "true", engines=[node],
    )  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert "logist/absent:1" in out.stderr and node.url in out.stderr
    assert "logist image push" in out.stderr
    assert status(on_nodes, "noimg")["state"] == "pending"  # nothing ran: try again later
    assert on_nodes("job", "cleanup", "noimg").returncode == 0
    assert_nothing_left(nodes, jobs_root)


def test_a_lost_node_interrupts_its_job_which_resumes_on_the_other_from_its_last_harvest(
    on_nodes, nodes, source_repo, jobs_root
):
    first, second = nodes
    job = create_job(
        on_nodes, source_repo, "echo one > one.txt",
        "echo partial > partial.txt; sleep 10",
        "cat one.txt; ls > listing.txt", extra=("--image", IMAGE),
    )  # fmt: skip
    runner = subprocess.Popen(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root),
         "--engine", first.url, "job", "run", job],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LOGIST_DOCKER_TIMEOUT": "5"},  # how long a silent engine may be
    )  # fmt: skip
    try:
        wait_for(lambda: status(on_nodes, job)["steps"][1]["state"] == "running", 60, "step 2")
        first.kill()  # the host is lost: its packets vanish, nothing answers
        _out, err = runner.communicate(timeout=120)
    finally:
        runner.kill()
    assert runner.returncode == 3, err
    assert first.url in err
    st = status(on_nodes, job)
    assert st["state"] == "interrupted" and st["engine"] == first.url
    assert [s["state"] for s in st["steps"]] == ["succeeded", "pending", "pending"]
    # resumed with both engines configured: the lost one does not answer, the other takes it
    out = on_nodes("job", "run", job, timeout=240)
    first.start()
    assert out.returncode == 0, out.stderr
    assert "resuming on" in out.stderr
    st = status(on_nodes, job)
    assert st["state"] == "succeeded" and st["engine"] == second.url
    listing = git(source_repo, "show", f"logist/{job}:listing.txt").split()
    assert "one.txt" in listing and "partial.txt" in listing  # step 1's work, step 2 again
    assert_nothing_left([second], jobs_root)
    # the lost node is back with the old step's container and volume: the sweep reaps them
    assert any(first.leftovers(jobs_root))
    out = on_nodes("job", "cleanup", "--stale", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["orphans_removed"] >= 2
    assert_nothing_left(nodes, jobs_root)


def test_doctor_checks_every_engine(on_nodes, nodes):
    out = on_nodes("doctor", "--json")
    assert out.returncode == 0, out.stdout
    checks = json.loads(out.stdout)["checks"]
    engines = [c["detail"] for c in checks if c["name"] == "engine"]
    assert [n.url in d for n, d in zip(nodes, engines, strict=True)] == [True, True]
    visible = [c["detail"] for c in checks if c["name"] == "jobs-root-visible"]
    assert all("workspaces are volumes" in d for d in visible)
    bad = on_nodes("doctor", "--json", engines=[nodes[0]], env={"LOGIST_ENGINES": ""})
    assert bad.returncode == 0
    out = on_nodes("--engine", "tcp://127.0.0.1:1", "doctor", "--json", engines=[nodes[0]])
    assert out.returncode == 3
    failed = [c for c in json.loads(out.stdout)["checks"] if not c["ok"]]
    assert failed and "tcp://127.0.0.1:1" in failed[0]["detail"]
