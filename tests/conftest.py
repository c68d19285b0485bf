"""Shared fixtures: real git repositories in tmp_path, a jobs root per test, the real engine.

Tests marked ``docker`` *fail* (never skip) when no engine answers. After every docker test,
no container labelled for that test's jobs root may remain.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import commit_file, make_repo, run_logist
from tests.nodes import node_factory, nodes, running_nodes

REPO_ROOT = Path(__file__).resolve().parent.parent
STEP_IMAGE = "logist/step:latest"
BUSYBOX = "logist/busybox:latest"


def _engine_problem() -> str | None:
    try:
        import docker

        docker.from_env(timeout=10).ping()
    except Exception as exc:  # any failure to reach the engine
        return f"Docker engine unreachable ({exc}); run scripts/ensure-docker.sh"
    return None


ASKED_FOR = ("rootless_podman", "beside_docker")  # markers of tests collected only with -m


def pytest_collection_modifyitems(config, items):
    """Tests about rootless Podman, and about rootful Podman beside Docker, run only when
    asked for (``-m rootless_podman``, ``-m beside_docker``, as scripts/test-podman.sh's runs
    do); elsewhere they are deselected, never skipped."""
    asked = config.getoption("-m") or ""
    left_out = [m for m in ASKED_FOR if m not in asked]
    keep = [i for i in items if not any(i.get_closest_marker(m) for m in left_out)]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def docker_client():
    problem = _engine_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    import docker

    cli = docker.from_env(timeout=120)
    for image in (STEP_IMAGE, BUSYBOX, "logist/proxy:latest"):
        try:
            cli.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"{image} missing: run scripts/build-images.sh", pytrace=False)
    return cli


@pytest.fixture(autouse=True)
def _docker_guard(request):
    """Docker tests need the engine (fail otherwise) and must leave no container, volume or
    network behind."""
    if request.node.get_closest_marker("docker") is None:
        yield
        return
    cli = request.getfixturevalue("docker_client")
    yield
    root = request.node.funcargs.get("jobs_root")
    if root is None:
        return
    left = cli.containers.list(all=True, filters={"label": f"logist.jobs-dir={root}"})
    for c in left:
        c.remove(force=True)
    volumes = cli.volumes.list(filters={"label": f"logist.jobs-dir={root}"})
    for v in volumes:
        v.remove(force=True)
    networks = cli.networks.list(filters={"label": f"logist.jobs-dir={root}"})
    for n in networks:
        n.remove()
    assert not left, f"containers left behind: {[c.name for c in left]}"
    assert not volumes, f"volumes left behind: {[v.name for v in volumes]}"
    assert not networks, f"networks left behind: {[n.name for n in networks]}"


def _is_logist(args) -> bool:
    argv = [str(a) for a in args] if isinstance(args, list | tuple) else str(args).split()
    return "logist" in argv or any(a.endswith("/logist") for a in argv)


@pytest.fixture(autouse=True)
def _no_traceback_from_logist(monkeypatch):
    """Every logist process a test runs and reads with ``communicate`` (``subprocess.run``,
    ``run_logist`` included) must print no traceback, unless it ran with LOGIST_DEBUG=1."""
    real_init, real_communicate = subprocess.Popen.__init__, subprocess.Popen.communicate

    def init(self, args, *a, **kw):
        env = kw.get("env") or os.environ
        self._logist_checked = _is_logist(args) and env.get("LOGIST_DEBUG") != "1"
        real_init(self, args, *a, **kw)

    def communicate(self, *a, **kw):
        out, err = real_communicate(self, *a, **kw)
        if getattr(self, "_logist_checked", False) and err:
            text = err.decode(errors="replace") if isinstance(err, bytes) else err
            assert "Traceback" not in text, f"a traceback from {self.args}:\n{text}"
        return out, err

    monkeypatch.setattr(subprocess.Popen, "__init__", init)
    monkeypatch.setattr(subprocess.Popen, "communicate", communicate)


@pytest.fixture
def jobs_root(tmp_path: Path) -> Path:
    root = tmp_path / "jobs"
    root.mkdir()
    return root


@pytest.fixture
def source_repo(tmp_path: Path) -> Path:
    """A local git repository with one commit on ``main``."""
    return make_repo(tmp_path / "src")


@pytest.fixture
def logist(jobs_root: Path):
    """Run the real CLI (a subprocess) against this test's jobs root."""

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return run_logist(jobs_root, *args, **kwargs)

    return run


@pytest.fixture(scope="session")
def nonroot_user(tmp_path_factory) -> dict:
    """A non-root user in the docker group, with logist installed in a venv made from
    /usr/bin/python3 (the pyenv Python under /root is not readable by other users)."""
    if os.geteuid() != 0:
        pytest.fail("the non-root tests need to start as root to create their user")
    name = "logist-test"
    with _machine_lock("nonroot-user"):
        if subprocess.run(["id", name], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--create-home", "--groups", "docker", name], check=True)
        else:
            subprocess.run(["usermod", "-aG", "docker", name], check=True)
    # one venv per checkout, so two checkouts testing at once never rebuild each other's
    tag = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:8]
    venv = Path(f"/tmp/logist-nonroot-venv-{tag}")
    with _machine_lock(f"nonroot-venv-{tag}"):  # parallel workers make it once
        _nonroot_venv(venv)
    uid = int(subprocess.check_output(["id", "-u", name]).strip())
    gid = int(subprocess.check_output(["id", "-g", name]).strip())
    return {"name": name, "uid": uid, "gid": gid, "logist": str(venv / "bin/logist")}


@contextlib.contextmanager
def _machine_lock(name: str):
    """An exclusive lock of this machine's, shared by parallel test workers."""
    import fcntl

    fd = os.open(f"/tmp/logist-test-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _nonroot_venv(venv: Path) -> None:
    """A venv of /usr/bin/python3 (a CPython 3.11 like this one) with logist's dependencies
    copied from this venv (the files their metadata lists: no pip, no build, no index) and
    this checkout's ``logist`` package, run by a ``logist`` script of its own."""
    stamp = venv / ".stamp"
    src_stamp = max(p.stat().st_mtime for p in (REPO_ROOT / "logist").rglob("*.py"))
    if stamp.exists() and stamp.stat().st_mtime >= src_stamp:
        return
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.check_output(
            [
                str(venv / "bin/python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            text=True,
        ).strip()
    )
    for dist in _runtime_dists("logist"):
        base = Path(dist.locate_file(""))
        for rel in dist.files or []:
            src = base / rel
            if src.is_file() and ".." not in rel.parts and "__pycache__" not in rel.parts:
                dest = site / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
    shutil.copytree(
        REPO_ROOT / "logist", site / "logist", ignore=shutil.ignore_patterns("__pycache__")
    )
    # bytecode, as pip would have written it (PYTHONDONTWRITEBYTECODE: else every process of
    # the user compiles logist and its dependencies from source)
    subprocess.run(
        [str(venv / "bin/python"), "-m", "compileall", "-q", str(site)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    script = venv / "bin/logist"
    script.write_text(
        f"#!{venv}/bin/python\nimport sys\nfrom logist.entry import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
    stamp.touch()


def _runtime_dists(name: str) -> list:
    """The installed distributions ``name`` needs to run (its requirements, recursively,
    extras and markers that do not apply left out)."""
    import re
    from importlib import metadata

    seen: dict[str, metadata.Distribution] = {}
    todo = list(metadata.requires(name) or [])
    while todo:
        req = todo.pop()
        if ";" in req and "extra ==" in req.split(";", 1)[1]:
            continue
        dep = re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0]
        key = dep.lower().replace("_", "-")
        if not dep or key in seen:
            continue
        try:
            dist = metadata.distribution(dep)
        except metadata.PackageNotFoundError:  # a marker for another platform or Python
            continue
        seen[key] = dist
        todo.extend(dist.requires or [])
    return list(seen.values())


__all__ = ["commit_file", "node_factory", "nodes", "running_nodes", "sys"]
