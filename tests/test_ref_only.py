"""A workspace holds only what the job's ref reaches (contract v3, "Trust boundary"): a step
cannot read objects of the source's other branches, tags or stashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import commit_file, create_job, git, job_status

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


@pytest.mark.parametrize("workspaces", ["bind", "volume"])
def test_a_step_naming_another_branchs_commit_gets_none_of_it(
    logist, source_repo: Path, workspaces: str
):
    """The harvest's helper read logist's repository of the job, then a clone of the whole
    source: a ref a step wrote naming a commit of another branch (an id seen in a "cherry
    picked from" line) was kept, written back and bundled (red team, 12-06)."""
    _private_source(source_repo)
    secret = git(source_repo, "rev-parse", "private").strip()
    env = {"LOGIST_WORKSPACES": "volume"} if workspaces == "volume" else {}
    steal = f"echo {secret} > .git/refs/heads/steal; echo {secret} > .git/refs/tags/t; true"
    show = f"git cat-file -p {secret}:p.txt 2>/dev/null || echo none; {SCAN}"
    job = create_job(logist, source_repo, steal, show)
    out = logist("job", "run", job, env=env)
    assert out.returncode == 0, out.stderr
    assert "private-token" not in out.stdout, out.stdout
    assert out.stdout.splitlines()[:2] == ["none", "0"], out.stdout
    bundle = job_status(logist, job)["result"]["bundle"]
    assert secret not in git(source_repo, "bundle", "list-heads", bundle)
