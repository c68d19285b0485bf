"""A step's repository config and hooks never survive a harvest, whatever the step did: it
committed everything itself (a clean tree), or made more refs than a harvest keeps. The next
step (another image, perhaps other secrets) starts with logist's config alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import create_job, git, job_status

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

IDENTITY = ("--env", "GIT_AUTHOR_NAME=s", "--env", "GIT_AUTHOR_EMAIL=s@x", "--env",
            "GIT_COMMITTER_NAME=s", "--env", "GIT_COMMITTER_EMAIL=s@x")  # fmt: skip

# step 1: an fsmonitor and hooks that would run in step 2, then its own commit (a clean tree)
PLANT = (
    "printf '#!/bin/sh\\ntouch /tmp/pwned-fsmonitor\\n' > /tmp/m.sh && "
    'git config core.fsmonitor "$(pwd)/.git/m.sh" && cp /tmp/m.sh .git/m.sh && '
    "chmod +x .git/m.sh && mkdir -p .git/hooks && "
    "printf '#!/bin/sh\\ntouch /tmp/pwned-hook\\n' > .git/hooks/pre-commit && "
    "cp .git/hooks/pre-commit .git/hooks/post-commit && chmod +x .git/hooks/* && "
    "git config alias.st '!touch /tmp/pwned-alias' && "
    "echo one > one.txt && git add -A && git commit -q --no-verify -m mine"
)
# step 2: what an agent does in its repository; says what ran
PROBE = (
    "git status >/dev/null 2>&1; git commit -q --allow-empty -m two >/dev/null 2>&1; "
    "git st >/dev/null 2>&1; "
    "for f in fsmonitor hook alias; do [ -e /tmp/pwned-$f ] && echo PWNED-$f; done; "
    "git config --get core.fsmonitor && echo PWNED-config; "
    "ls .git/hooks 2>/dev/null | grep . && echo PWNED-hooks; echo probed"
)


def _run(logist, repo: Path, first: str, second: str, code: int = 0) -> tuple[str, str]:
    job = create_job(logist, repo, first, second, extra=IDENTITY)
    out = logist("job", "run", job)
    assert out.returncode == code, out.stderr
    return job, out.stdout


def test_config_and_hooks_of_a_step_that_committed_its_own_work_do_not_reach_the_next(
    logist, source_repo
):
    job, stdout = _run(logist, source_repo, PLANT, PROBE)
    assert "probed" in stdout
    assert "PWNED" not in stdout, stdout
    assert git(source_repo, "show", f"logist/{job}:one.txt") == "one\n"
    subjects = git(source_repo, "log", "--format=%s", f"logist/{job}").splitlines()
    assert "mine" in subjects  # the step's own commit is kept


@pytest.mark.slow
def test_config_and_hooks_do_not_survive_a_step_that_made_more_refs_than_are_kept(
    logist, source_repo
):
    many = (
        'i=0; while [ $i -lt 5100 ]; do i=$((i+1)); echo "create refs/tags/t$i HEAD"; done '
        "| git update-ref --stdin"
    )
    # exit 4: the workspace, which has the 100 tags the result lacks, is kept
    _job, stdout = _run(logist, source_repo, f"{PLANT} && {many}", f"git tag | wc -l; {PROBE}", 4)
    assert "PWNED" not in stdout, stdout
    assert "5100" in stdout  # the step's refs stay in its workspace


@pytest.mark.parametrize(
    "name",
    ["x\n/workspace/victim\ny", "x\n./victim\ny", "tab\there", "cr\rhere", "-n", "sp ace"],
)
def test_names_with_newlines_steer_nothing_when_nested_repositories_are_harvested(
    logist, source_repo, name
):
    """A nested repository's ``.git`` is set aside while its files are added: its name is data
    (NUL-separated), so a name holding a newline and a path renames nothing else."""
    step = 'echo victim > victim && mkdir -p "./$N" && git init -q "./$N" && echo n > "./$N/f.txt"'
    job = create_job(logist, source_repo, step, extra=(*IDENTITY, "--env", f"N={name}"))
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(source_repo, "show", f"logist/{job}:victim") == "victim\n"
    listed = subprocess.run(
        ["git", "-C", str(source_repo), "ls-tree", "-r", "-z", "--name-only", f"logist/{job}"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    assert f"{name}/f.txt".encode() in listed
    assert not any(b"logist-hidden" in p for p in listed)


def test_the_write_back_follows_no_link_the_step_left_in_its_objects(logist, source_repo):
    """``.git/objects/info`` made a link to a directory elsewhere: the write-back removes the
    step's links before it removes anything by name, so nothing there is deleted."""
    plant = (
        "mkdir victim && echo keep > victim/alternates && echo keep > victim/commit-graph && "
        "rm -rf .git/objects/info && ln -s /workspace/victim .git/objects/info"
    )
    job = create_job(logist, source_repo, plant, "cat victim/alternates victim/commit-graph")
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("keep") == 2
    assert git(source_repo, "show", f"logist/{job}:victim/alternates") == "keep\n"


# a corrupt loose object named like a blob of the step's own files (over git's unpackLimit of
# new objects): the write-back's fetch dies on it
CORRUPT = (
    "for i in $(seq 200); do echo x$i > n$i; done; B=$(git hash-object n1); "
    "D=.git/objects/$(echo $B | cut -c1-2); mkdir -p $D; F=$D/$(echo $B | cut -c3-); "
    "rm -f $F; echo garbage > $F; "
)


@pytest.mark.parametrize("user", ["root", "1000:1000"])
def test_a_write_back_the_step_made_fail_leaves_none_of_its_config_or_hooks(
    logist, source_repo, user
):
    """The step's repository was put back when the write-back failed, its hooks ran in the next
    step (red team, 12-06): as root (one run with the harvest) and as another user (the
    write-back on its own)."""
    first = CORRUPT + PLANT.replace("git add -A", "git add one.txt")  # n1...: the harvest's
    job = create_job(logist, source_repo, first, PROBE, extra=(*IDENTITY, "--user", user))
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert "probed" in out.stdout and "PWNED" not in out.stdout, out.stdout
    assert "made again from the harvest alone" in out.stderr, out.stderr
    assert git(source_repo, "show", f"logist/{job}:n199") == "x199\n"


# a root step gives its .git and the workspace to another uid, sticky: the helper's root
# (DAC_OVERRIDE alone) could neither move nor remove what is in them
STICKY = (
    "chown -R 4242:4242 .git && find .git -type d -exec chmod 1777 {} + && "
    "chown 4242:4242 /workspace && chmod 1777 /workspace"
)


def test_a_root_steps_git_given_to_another_uid_in_sticky_directories_is_still_replaced(
    logist, source_repo
):
    """Red team, 12-06: its fsmonitor and hooks ran in the next step, the job exit 0."""
    first = PLANT.replace("git add -A", "git add one.txt") + " && " + STICKY
    job = create_job(logist, source_repo, first, PROBE, extra=(*IDENTITY, "--user", "root"))
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert "probed" in out.stdout and "PWNED" not in out.stdout, out.stdout


def test_a_git_the_write_back_cannot_replace_stops_the_job_with_its_work_in(
    logist, source_repo, jobs_root
):
    """An immutable .git (a root step granted LINUX_IMMUTABLE): neither replaced nor removed,
    so the next step would meet the step's config and hooks. The job fails (exit 4, the
    workspace kept), the step's work in its branch, and no later step runs."""
    first = PLANT.replace("git add -A", "git add one.txt") + " && echo w > w.txt && chattr +i .git"
    grant = (*IDENTITY, "--user", "root", "--cap-add", "LINUX_IMMUTABLE")
    job = create_job(logist, source_repo, first, "echo SECOND-RAN", extra=grant)
    try:
        out = logist("job", "run", job)
    finally:
        subprocess.run(["chattr", "-i", str(jobs_root / job / "workspace" / ".git")], check=False)
    assert out.returncode == 4, out.stderr
    assert "SECOND-RAN" not in out.stdout
    assert "the step's own .git (its config and hooks) would reach the next step" in out.stderr
    assert git(source_repo, "show", f"logist/{job}:w.txt") == "w\n"
    status = job_status(logist, job)
    assert status["state"] == "failed" and status["workspace"]["state"] == "ready"


# step 1: a repository of its own under a committed gitlink, with an fsmonitor
NESTED = (
    "git init -q sub && cd sub && echo s > s && git add s && git commit -qm s && "
    "printf '#!/bin/sh\\ntouch /tmp/pwned-fsmonitor\\nexit 1\\n' > .git/fsm.sh && "
    "chmod +x .git/fsm.sh && git config core.fsmonitor /workspace/sub/.git/fsm.sh && "
    "cd .. && git add sub && git commit -qm gitlink"
)


@pytest.mark.parametrize("user", ["root", "1000:1000"])
def test_a_nested_repository_under_a_gitlink_runs_nothing_in_the_next_steps_git(
    logist, source_repo, user
):
    """Red team, 12-06: the next step's top-level git status ran the nested fsmonitor."""
    job = create_job(logist, source_repo, NESTED, PROBE, extra=(*IDENTITY, "--user", user))
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert "probed" in out.stdout and "PWNED" not in out.stdout, out.stdout
