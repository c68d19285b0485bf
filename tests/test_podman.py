"""Podman as the engine (docs/podman.md): what logist does differently, proven against whatever
engine ``DOCKER_HOST`` names. scripts/test-podman.sh runs this file (with the core tests of
tests/podman_core.txt) against rootful Podman and, as a non-root user, rootless Podman; the
Docker suite runs it too (the engine-agnostic tests must pass on Docker as well).

Rootless Podman here has no usable /dev/net/tun: steps get ``--network none`` (said once), and
``--network host`` is what gives them a network; the tests below say which they use."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import create_job, git, job_status

pytestmark = pytest.mark.docker


def _engine(docker_client) -> dict:
    """What the engine says it is, asked without logist: kind, rootless, cgroup version."""
    v = docker_client.version()
    podman = next(
        (c for c in v.get("Components") or [] if "podman" in c.get("Name", "").lower()), None
    )
    if podman is None:
        return {"kind": "Docker", "rootless": False, "cgroup": ""}
    api = podman["Details"]["APIVersion"]
    host = docker_client.api.get(f"{docker_client.api.base_url}/v{api}/libpod/info").json()["host"]
    return {
        "kind": "Podman",
        "rootless": bool(host["security"]["rootless"]),
        "cgroup": str(host["cgroupVersion"]).removeprefix("v"),
    }


def _rootless_podman(docker_client) -> dict:
    """These tests are collected only for the rootless run (``-m rootless_podman``, see
    conftest): there the engine must be rootless Podman, or the test fails."""
    engine = _engine(docker_client)
    assert engine["kind"] == "Podman" and engine["rootless"], (
        f"a rootless Podman test, but the engine is {engine['kind']} (not rootless)"
    )
    return engine


@pytest.mark.timeout(120)
def test_doctor_names_the_engine_kind_and_whether_it_is_rootless(logist, docker_client):
    engine = _engine(docker_client)
    out = logist("doctor", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    detail = checks["engine"]["detail"]
    assert detail.startswith(("rootless " if engine["rootless"] else "") + engine["kind"] + " ")
    if engine["kind"] == "Podman" and engine["rootless"]:
        assert checks["rootless-user"]["ok"], checks["rootless-user"]
        assert "network" in checks and "resource-limits" in checks
        ignored = "ignored" in checks["resource-limits"]["detail"]
        assert ignored == (engine["cgroup"] == "1")
    else:
        assert "rootless-user" not in checks


@pytest.mark.timeout(180)
def test_a_step_as_the_invoking_user_writes_its_workspace_as_that_user(
    logist, source_repo, jobs_root
):
    job = create_job(
        logist,
        source_repo,
        "echo mine > made-by-step && mkdir -p d && touch d/f",
        extra=("--cleanup", "never", "--network", "none"),
    )
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    ws = jobs_root / job / "workspace"
    for path in (ws / "made-by-step", ws / "d", ws / "d" / "f"):
        assert path.stat().st_uid == os.getuid(), path
    assert git(source_repo, "show", f"logist/{job}:made-by-step").strip() == "mine"
    assert logist("job", "cleanup", job).returncode == 0
    assert not ws.exists()


@pytest.mark.timeout(240)
def test_files_a_root_step_left_unreadable_are_harvested_and_removed_by_cleanup(
    logist, source_repo, jobs_root
):
    """Root in the step is another uid on the host under rootless Podman (a subordinate id):
    logist removes its files all the same (through a root helper), after harvesting them."""
    job = create_job(
        logist,
        source_repo,
        "mkdir -p locked/deeper && echo secret > locked/deeper/f && echo top > top.txt "
        "&& chmod 000 locked/deeper locked",
        extra=("--user", "root", "--cleanup", "never", "--network", "none"),
    )
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    ws = jobs_root / job / "workspace"
    assert (ws / "locked").exists()
    assert git(source_repo, "show", f"logist/{job}:top.txt").strip() == "top"
    assert git(source_repo, "show", f"logist/{job}:locked/deeper/f").strip() == "secret"
    out = logist("job", "cleanup", job)
    assert out.returncode == 0, out.stderr
    assert not ws.exists()
    assert job_status(logist, job)["workspace"]["state"] == "removed"


@pytest.mark.timeout(180)
@pytest.mark.rootless_podman
def test_rootless_podman_without_a_bridge_runs_steps_on_none_says_so_once_refuses_allow_host(
    logist, source_repo, docker_client
):
    _rootless_podman(docker_client)
    if os.access("/dev/net/tun", os.R_OK | os.W_OK):
        pytest.skip("this user can open /dev/net/tun: bridge networking works here")
    # the default network (bridge) is impossible here: two steps, one notice
    job = create_job(logist, source_repo, "ls /sys/class/net > nets1", "ls /sys/class/net > nets2")
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("steps run with --network none") == 1, out.stderr
    assert git(source_repo, "show", f"logist/{job}:nets1").split() == ["lo"]
    # --network host works (and says nothing)
    job = create_job(logist, source_repo, "ls /sys/class/net > nets", extra=("--network", "host"))
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert "--network none" not in out.stderr
    assert len(git(source_repo, "show", f"logist/{job}:nets").split()) > 1
    # --allow-host needs networks of the job's own: exit 2, naming why
    job = create_job(logist, source_repo, "true", extra=("--allow-host", "example.test"))
    out = logist("job", "run", job)
    assert out.returncode == 2, out.stderr
    assert "--allow-host needs networks of the job's own" in out.stderr
    assert "/dev/net/tun" in out.stderr
    view = json.loads(logist("job", "status", job, "--json").stdout)
    assert view["state"] == "failed"
    assert not docker_client.networks.list(filters={"label": f"logist.job={job}"})


@pytest.mark.timeout(180)
@pytest.mark.rootless_podman
def test_rootless_podman_on_cgroup_v1_warns_once_that_limits_are_ignored(
    logist, source_repo, docker_client
):
    engine = _rootless_podman(docker_client)
    if engine["cgroup"] != "1":
        pytest.skip(f"cgroup v{engine['cgroup']}: rootless Podman enforces limits there")
    job = create_job(
        logist,
        source_repo,
        "true",
        "true",
        extra=("--memory", "256m", "--pids", "64", "--network", "none"),
    )
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("ignores resource limits: --memory/--pids") == 1, out.stderr
    # no limit asked, nothing said
    job = create_job(logist, source_repo, "true", extra=("--network", "none"))
    out = logist("job", "run", job)
    assert out.returncode == 0 and "resource limits" not in out.stderr, out.stderr


FETCH = """
import sys, time, urllib.request
for _ in range(int(sys.argv[2])):
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=3).status)
        break
    except Exception:
        time.sleep(0.25)
else:
    print("unreachable")
"""


@pytest.mark.beside_docker
@pytest.mark.timeout(300)
def test_jobs_on_docker_and_on_podman_beside_it_cannot_reach_each_other(tmp_path, source_repo):
    """Both engines on one host (the rootful run: DOCKER_HOST is Podman, Docker at its socket):
    a job's step on one engine does not reach a job's server on the other, either way (each
    engine keeps only its own bridges apart; scripts/ensure-podman.sh's firewall, "Networks" in
    docs/podman.md)."""
    import subprocess
    import sys
    from functools import partial

    import docker

    from tests.conftest import STEP_IMAGE
    from tests.helpers import commit_file, run_logist, wait_for

    podman_url, docker_url = os.environ["DOCKER_HOST"], "unix:///var/run/docker.sock"
    commit_file(source_repo, "fetch.py", FETCH)
    for n, (serve_on, fetch_on) in enumerate(((docker_url, podman_url), (podman_url, docker_url))):
        root = tmp_path / f"jobs-{n}"
        env = {**os.environ, "DOCKER_HOST": serve_on}
        cmd = [sys.executable, "-m", "logist", "--jobs-dir", str(root), "run", "serves"]
        cmd += ["--repo", str(source_repo), "--step", "exec python3 -m http.server 8080"]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        serving = docker.DockerClient(base_url=serve_on, timeout=30)
        try:
            label = {"label": [f"logist.jobs-dir={root}", "logist.step=1"]}
            [box] = wait_for(partial(serving.containers.list, filters=label), 60, "the server")
            [(own, settings)] = box.attrs["NetworkSettings"]["Networks"].items()
            url = f"http://{settings['IPAddress']}:8080/"
            # a container on the serving job's network reaches it: the server is up
            seen = serving.containers.run(
                STEP_IMAGE, ["python3", "-c", FETCH, url, "40"], network=own, remove=True
            )
            assert seen.strip() == b"200", seen
            out = run_logist(
                root,
                "run",
                "fetches",
                "--repo",
                str(source_repo),
                "--step",
                f"python3 fetch.py {url} 2",
                env={"DOCKER_HOST": fetch_on},
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "unreachable", f"{fetch_on} reached {serve_on}'s job"
        finally:
            run_logist(root, "job", "cancel", "serves", env={"DOCKER_HOST": serve_on}, timeout=60)
            server.communicate(timeout=60)
            serving.close()
