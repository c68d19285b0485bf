"""The non-root user of the root-owned cleanup measure: ``logist-bench``, in group ``docker``,
with its own venv (made from ``/usr/bin/python3``: ``/root`` is mode 700, so the pyenv python
of the main venv cannot be run by other users) and logist installed from a copy of this repo.

The user and its venv stay between runs; logist is reinstalled when its sources changed."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import tempfile
from pathlib import Path

from benchmarks.core import REPO, BenchError, run

USER = "logist-bench"
SYSTEM_PYTHON = "/usr/bin/python3"


def _source_hash() -> str:
    h = hashlib.sha256()
    files = [REPO / "pyproject.toml", *sorted((REPO / "logist").rglob("*.py"))]
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def ensure_user() -> pwd.struct_passwd:
    """Create ``logist-bench`` (group ``docker``) unless it exists."""
    try:
        grp.getgrnam("docker")
    except KeyError:
        raise BenchError("no group docker: the non-root user could not reach the engine") from None
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        run(["useradd", "--create-home", "--user-group", "--groups", "docker", USER])
        pw = pwd.getpwnam(USER)
    if USER not in grp.getgrnam("docker").gr_mem:
        run(["usermod", "--append", "--groups", "docker", USER])
    return pw


def ensure_venv(say) -> tuple[pwd.struct_passwd, Path]:
    """The user and the ``logist`` command of its venv, (re)installed when needed."""
    if os.geteuid() != 0:
        raise BenchError("the non-root measure needs root (to create the user and own files)")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise BenchError(f"{SYSTEM_PYTHON} is missing: no python the benchmark user can run")
    pw = ensure_user()
    home = Path(pw.pw_dir)
    venv = home / "venv"
    stamp = venv / ".logist-source"
    want = _source_hash()
    if (venv / "bin" / "logist").exists() and stamp.is_file() and stamp.read_text() == want:
        return pw, venv / "bin" / "logist"
    if not (venv / "bin" / "python").exists():
        say(f"making {venv} for user {USER} from {SYSTEM_PYTHON}")
        run([SYSTEM_PYTHON, "-m", "venv", str(venv)], user=USER, env=_env(pw))
    copy = Path(tempfile.mkdtemp(prefix="logist-bench-src."))
    try:
        shutil.copy2(REPO / "pyproject.toml", copy)
        if (REPO / "README.md").exists():
            shutil.copy2(REPO / "README.md", copy)
        shutil.copytree(
            REPO / "logist", copy / "logist", ignore=shutil.ignore_patterns("__pycache__")
        )
        for dirpath, dirnames, filenames in os.walk(copy):  # the build writes its egg-info
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)
        os.chown(copy, pw.pw_uid, pw.pw_gid)
        first = not (venv / "bin" / "logist").exists()
        say(f"installing logist for {USER} ({'with' if first else 'without'} dependencies)")
        extra = [] if first else ["--no-deps", "--force-reinstall"]
        run(
            [
                str(venv / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-cache-dir",
                *extra,
                str(copy),
            ],
            user=USER,
            env=_env(pw),
            timeout=900,
        )
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    stamp.write_text(want)
    os.chown(stamp, pw.pw_uid, pw.pw_gid)
    return pw, venv / "bin" / "logist"


def _env(pw: pwd.struct_passwd) -> dict[str, str]:
    """A clean environment for the user (no root's HOME, no venv of root's on PATH)."""
    env = {
        "HOME": pw.pw_dir,
        "USER": pw.pw_name,
        "LOGNAME": pw.pw_name,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    passed = ("DOCKER_HOST", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
    for key, value in os.environ.items():
        if key in passed or key.lower() == "no_proxy" or key.startswith("PIP_"):
            env[key] = value
    return env


user_env = _env
