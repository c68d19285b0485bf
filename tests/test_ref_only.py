"""A workspace holds only what the job's ref reaches (contract v3, "Trust boundary"): a step
cannot read objects of the source's other branches, tags or stashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import commit_file, create_job, git

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

# every object of the workspace's repository, contents included
SCAN = (
    "git cat-file --batch-all-objects --batch-check='%(objectname)' "
    "| git cat-file --batch > /tmp/all; "
    "grep -c private-token /tmp/all || true; echo objects=$(git count-objects -v | wc -l)"
)


def _private_source(source: Path) -> None:
    git(source, "checkout", "-q", "-b", "private")
    commit_file(source, "p.txt", "private-token on a branch\n")
    git(source, "checkout", "-q", "main")
    (source / "t.txt").write_text("private-token in a tag\n")
    blob = git(source, "hash-object", "-w", "t.txt").strip()
    git(source, "tag", "secret-tag", blob)
    (source / "t.txt").unlink()
    (source / "README.md").write_text("private-token in a stash\n")
    git(source, "stash", "-q")


@pytest.mark.parametrize("workspaces", ["bind", "volume"])
def test_a_step_cannot_read_the_sources_other_branches_tags_or_stash(
    logist, source_repo: Path, workspaces: str
):
    _private_source(source_repo)
    env = {"LOGIST_WORKSPACES": "volume"} if workspaces == "volume" else {}
    job = create_job(logist, source_repo, SCAN, "echo work > w.txt")
    out = logist("job", "run", job, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].strip() == "0", out.stdout
    assert git(source_repo, "show", f"logist/{job}:w.txt") == "work\n"
