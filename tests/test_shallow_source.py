"""A shallow source (a CI runner's `git clone --depth 1`): the workspace is a shallow repository
whose history ends where the source's does, and stays one after every harvest. Before, the
workspace's clone dropped the source's shallow roots in silence (git's log in a step failed:
"Failed to traverse parents"), every write-back failed ("the workspace's repository was not
updated (exit 22)"), and a volume workspace's helper could not start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import commit_file, create_job, git

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

LOG = "git log --format=%s | tr '\\n' '|'; echo; test -z \"$(git status --porcelain)\""


def _shallow_clone(source: Path, dest: Path) -> Path:
    commit_file(source, "two.txt", "2\n", "second")
    commit_file(source, "three.txt", "3\n", "third")
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", f"file://{source}", str(dest)], check=True
    )
    assert (dest / ".git" / "shallow").is_file()
    return dest


@pytest.mark.parametrize("workspaces", ["bind", "volume"])
def test_a_shallow_sources_job_sees_its_history_and_keeps_it_through_each_harvest(
    logist, source_repo: Path, tmp_path: Path, workspaces: str
):
    shallow = _shallow_clone(source_repo, tmp_path / "shallow")
    job = create_job(logist, shallow, f"{LOG}; echo one > one.txt", f"{LOG}; echo two > w.txt")
    env = {"LOGIST_WORKSPACES": workspaces}
    out = logist("job", "run", job, env=env)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr, out.stderr
    first, second = out.stdout.splitlines()[:2]
    assert first == "third|"
    assert second == f"logist: {job} step 1|third|"  # written back: HEAD, index, history
    subjects = git(shallow, "log", "--format=%s", f"logist/{job}").split("\n")
    assert subjects[:3] == [f"logist: {job} step 2", f"logist: {job} step 1", "third"]
    assert git(shallow, "show", f"logist/{job}:one.txt") == "one\n"
