"""The workspace is untrusted: nothing a step writes runs on the host, reaches the source, or
is lost (contract: "Trust boundary" and "Harvest"). Every test runs a hostile step against the
real engine and checks the host afterwards."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import create_job, git, make_repo, wait_for
from tests.helpers import job_status as status

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

IDENTITY = (
    "--env",
    "GIT_AUTHOR_NAME=agent",
    "--env",
    "GIT_AUTHOR_EMAIL=agent@example.com",
    "--env",
    "GIT_COMMITTER_NAME=agent",
    "--env",
    "GIT_COMMITTER_EMAIL=agent@example.com",
)
HOOKS = (
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "post-checkout",
    "post-index-change",
    "reference-transaction",
    "post-rewrite",
    "pre-auto-gc",
    "fsmonitor-watchman",
    "post-merge",
)


def arm(marker: Path) -> str:
    """A step that arms every way git could be made to run a command over its repository: each
    would create ``<marker>-<how>`` if git ran on the host with the workspace as repository."""
    m = str(marker)
    hooks = " ".join(HOOKS)
    return f"""
set -e
git config core.fsmonitor "touch {m}-fsmonitor"
git config filter.evil.clean "touch {m}-clean; cat"
git config filter.evil.smudge "touch {m}-smudge; cat"
git config filter.evil.process "touch {m}-process"
git config diff.evil.textconv "touch {m}-textconv; cat"
git config core.sshCommand "touch {m}-ssh"
git config core.pager "touch {m}-pager"
git config core.editor "touch {m}-editor"
git config core.askPass "touch {m}-askpass"
git config gc.auto 1
git config uploadpack.packObjectsHook "touch {m}-packhook"
printf '[core]\\n\\tfsmonitor = touch {m}-include\\n' > evil.cfg
git config include.path /workspace/evil.cfg
printf '* filter=evil diff=evil\\n' > .gitattributes
mkdir -p .git/hooks myhooks
for h in {hooks}; do
  printf '#!/bin/sh\\ntouch {m}-hook-%s\\n' "$h" > .git/hooks/$h
  cp .git/hooks/$h myhooks/$h
done
chmod +x .git/hooks/* myhooks/*
git config core.hooksPath myhooks
echo armed > armed.txt
"""


def markers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("pwned"))


def objects_digest(repo: Path) -> dict[str, str]:
    """sha256 of every file under the repository's ``objects`` directory."""
    objects = repo / ".git" / "objects"
    return {
        str(p.relative_to(objects)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(objects.rglob("*"))
        if p.is_file()
    }


def repo_state(repo: Path) -> tuple[str, str, bytes]:
    """Refs, HEAD and index of a repository, as bytes to compare."""
    gitdir = repo / ".git"
    index = gitdir / "index"
    return (
        git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        (gitdir / "HEAD").read_text(),
        index.read_bytes() if index.exists() else b"",
    )


def all_object_bytes(repo_or_bundle: Path, tmp_path: Path) -> bytes:
    """The content of every object of a repository (or of a bundle, unpacked)."""
    if repo_or_bundle.is_file():
        unpacked = tmp_path / f"unbundled-{repo_or_bundle.stat().st_ino}"
        subprocess.run(["git", "init", "-q", "--bare", str(unpacked)], check=True)
        git(unpacked, "fetch", "-q", str(repo_or_bundle), "+refs/*:refs/*")
        repo_or_bundle = unpacked
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "cat-file", "--batch-all-objects", "--batch"],
        cwd=repo_or_bundle,
        capture_output=True,
        check=True,
    ).stdout


def run_job(logist, repo: Path, *steps: str, extra: tuple[str, ...] = ()):
    job = create_job(logist, repo, *steps, extra=(*IDENTITY, *extra))
    return job, logist("job", "run", job)


def show(repo: Path, job: str, path: str) -> str:
    return git(repo, "show", f"logist/{job}:{path}")


# --- nothing runs on the host ----------------------------------------------------------------


def test_hostile_git_config_hooks_and_attributes_never_run_on_the_host_through_run_and_step(
    logist, source_repo, tmp_path
):
    marker = tmp_path / "pwned"
    job, out = run_job(logist, source_repo, arm(marker), "echo more > more.txt")
    assert out.returncode == 0, out.stderr
    assert markers(tmp_path) == []
    assert show(source_repo, job, "armed.txt") == "armed\n"
    assert show(source_repo, job, "more.txt") == "more\n"
    # one step at a time, then a cleanup of the kept workspace
    job2 = create_job(
        logist, source_repo, arm(marker), "echo x", extra=(*IDENTITY, "--cleanup", "never")
    )
    assert logist("job", "step", job2).returncode == 0
    assert logist("job", "step", job2).returncode == 0
    assert logist("job", "cleanup", job2).returncode == 0
    assert markers(tmp_path) == []


def test_hostile_repository_never_runs_on_the_host_through_cancel_sweep_and_resume(
    logist, source_repo, tmp_path, jobs_root, docker_client
):
    from tests.support_cli import popen_logist
    from tests.test_steps import running_step

    marker = tmp_path / "pwned"
    # cancel from another process while a later step runs
    job = create_job(logist, source_repo, arm(marker), "sleep 300", extra=IDENTITY)
    with running_step(jobs_root, docker_client, job, 2) as runner:
        assert logist("job", "cancel", job, "--grace", "0").returncode == 0
        runner.wait(timeout=60)
    assert status(logist, job)["state"] == "canceled"
    assert show(source_repo, job, "armed.txt") == "armed\n"
    # a runner SIGKILLed mid-step: resumed in its (hostile) workspace, then swept
    job2 = create_job(logist, source_repo, arm(marker), "sleep 300", extra=IDENTITY)
    with running_step(jobs_root, docker_client, job2, 2) as runner:
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
    resumed = popen_logist(jobs_root, "job", "run", job2)
    wait_for(
        lambda: any(
            c.labels.get("logist.step") == "2"
            for c in docker_client.containers.list(
                filters={"label": [f"logist.jobs-dir={jobs_root}", f"logist.job={job2}"]}
            )
        ),
        what="the resumed step",
    )
    resumed.send_signal(signal.SIGKILL)
    resumed.wait(timeout=30)
    sweep = logist("job", "cleanup", "--stale", "--json")
    assert sweep.returncode == 0, sweep.stderr
    assert status(logist, job2)["state"] == "interrupted"
    assert show(source_repo, job2, "armed.txt") == "armed\n"
    assert markers(tmp_path) == []


# --- the source cannot be changed ------------------------------------------------------------


def test_overwriting_every_object_file_leaves_the_source_intact_and_usable(
    logist, source_repo, tmp_path
):
    before = objects_digest(source_repo)
    job, out = run_job(
        logist,
        source_repo,
        "chmod -R u+w .git/objects && "
        "find .git/objects -type f -exec sh -c 'printf garbage > \"$1\"' _ {} \\; && "
        "echo still > still.txt",
    )
    assert out.returncode == 0, out.stderr
    after = objects_digest(source_repo)
    assert {k: after.get(k) for k in before} == before  # new files only: the job's branch
    subprocess.run(
        ["git", "-C", str(source_repo), "fsck", "--full", "--strict"],
        check=True,
        capture_output=True,
    )
    assert show(source_repo, job, "still.txt") == "still\n"
    job2, out2 = run_job(logist, source_repo, "cat README.md > copy.txt")
    assert out2.returncode == 0, out2.stderr
    assert show(source_repo, job2, "copy.txt") == "hello\n"


@pytest.mark.parametrize("how", ["symlink", "gitdir-file", "gitdir-file-to-source"])
def test_a_redirected_dot_git_never_touches_the_repository_it_points_at(
    logist, source_repo, tmp_path, how
):
    other = make_repo(tmp_path / "other", {"o.txt": "other\n"})
    target = source_repo if how == "gitdir-file-to-source" else other
    before = {r: repo_state(r) for r in (source_repo, other)}
    redirect = (
        f"rm -rf .git && ln -s {target}/.git .git"
        if how == "symlink"
        else f"rm -rf .git && echo 'gitdir: {target}/.git' > .git"
    )
    job, out = run_job(logist, source_repo, f"{redirect} && echo mine > mine.txt")
    assert out.returncode == 0, out.stderr
    assert repo_state(other) == before[other]
    src_refs, src_head, src_index = repo_state(source_repo)
    assert (src_head, src_index) == before[source_repo][1:]
    branch = f"refs/heads/logist/{job} {git(source_repo, 'rev-parse', f'logist/{job}').strip()}\n"
    assert src_refs.replace(branch, "") == before[source_repo][0]
    assert show(source_repo, job, "mine.txt") == "mine\n"


def test_alternates_and_worktree_pointing_at_host_paths_leak_nothing(logist, source_repo, tmp_path):
    token = "SECRET-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    secret_repo = make_repo(tmp_path / "secret", {"s.txt": f"{token}\n"})
    secret_dir = tmp_path / "secret-dir"
    secret_dir.mkdir()
    (secret_dir / "t.txt").write_text(f"{token}\n")
    job, out = run_job(
        logist,
        source_repo,
        f"echo {secret_repo}/.git/objects > .git/objects/info/alternates && "
        f"git update-ref refs/heads/stolen $(git -C {secret_repo} rev-parse HEAD 2>/dev/null "
        f"|| echo {git(secret_repo, 'rev-parse', 'HEAD').strip()}) || true; "
        f"git config core.worktree {secret_dir}; echo w > w.txt",
        extra=("--cleanup", "never"),
    )
    assert out.returncode == 0, out.stderr
    bundle = Path(status(logist, job)["result"]["bundle"])
    assert token.encode() not in all_object_bytes(bundle, tmp_path)
    assert token.encode() not in all_object_bytes(source_repo, tmp_path)
    assert show(source_repo, job, "w.txt") == "w\n"


def test_a_gitmodules_that_fsck_rejects_never_enters_the_source(logist, source_repo, tmp_path):
    evil = "--upload-pack=touch-pwned"
    job, out = run_job(
        logist,
        source_repo,
        f"printf '[submodule \"x\"]\\n\\tpath = x\\n\\turl = {evil}\\n' > .gitmodules",
    )
    assert out.returncode == 4, out.stderr
    assert "refused" in out.stderr
    assert "Traceback" not in out.stderr
    st = status(logist, job)
    assert st["state"] == "failed"
    assert st["workspace"]["state"] == "ready"  # kept for a person to look at
    assert evil.encode() not in all_object_bytes(source_repo, tmp_path)
    assert logist("job", "cleanup", job, "--force").returncode in (0, 4)


# --- no work is lost ---------------------------------------------------------------------------


def test_work_committed_on_another_branch_lands_on_the_job_branch(logist, source_repo):
    job, out = run_job(
        logist,
        source_repo,
        "git switch -q -c fix && echo fix > fix.txt && git add fix.txt && git commit -qm fix "
        "&& echo loose > loose.txt",
    )
    assert out.returncode == 0, out.stderr
    assert show(source_repo, job, "fix.txt") == "fix\n"
    assert show(source_repo, job, "loose.txt") == "loose\n"
    subjects = git(source_repo, "log", "--format=%s", f"logist/{job}").splitlines()
    assert "fix" in subjects


def test_work_on_a_detached_head_lands_on_the_job_branch(logist, source_repo):
    job, out = run_job(
        logist,
        source_repo,
        "git checkout -q --detach && echo d > d.txt && git add d.txt && git commit -qm detached",
    )
    assert out.returncode == 0, out.stderr
    assert show(source_repo, job, "d.txt") == "d\n"
    assert "detached" in git(source_repo, "log", "--format=%s", f"logist/{job}")


def test_other_branches_tags_and_the_stash_are_kept_in_the_result_bundle(
    logist, source_repo, jobs_root, tmp_path
):
    job, out = run_job(
        logist,
        source_repo,
        "git switch -q -c other && echo o > o.txt && git add o.txt && git commit -qm other && "
        "git tag v1 && git switch -q - && echo s > s.txt && git add s.txt && git stash -q",
    )
    assert out.returncode == 0, out.stderr
    heads = git(tmp_path, "bundle", "list-heads", str(jobs_root / job / "result.bundle"))
    names = {line.split()[1]: line.split()[0] for line in heads.splitlines()}
    assert f"refs/logist/{job}/heads/other" in names
    assert f"refs/logist/{job}/tags/v1" in names
    assert f"refs/logist/{job}/stash" in names
    clone = tmp_path / "check"
    git(tmp_path, "init", "-q", str(clone))
    git(clone, "fetch", "-q", str(jobs_root / job / "result.bundle"), "+refs/*:refs/*")
    assert git(clone, "show", f"refs/logist/{job}/heads/other:o.txt") == "o\n"
    assert git(clone, "show", f"refs/logist/{job}/stash:s.txt") == "s\n"


@pytest.mark.timeout(300)
def test_a_step_that_makes_thousands_of_refs_cannot_fail_or_stall_the_harvest(
    logist, source_repo, jobs_root, tmp_path
):
    """6,000 tags: the harvest stays linear and bounded (the first 5,000 refs are kept, with a
    warning), the job's work lands, and the workspace's repository keeps every tag."""
    job, out = run_job(
        logist,
        source_repo,
        "git commit -q --allow-empty -m many && echo w > w.txt && "
        'i=0; while [ $i -lt 6000 ]; do i=$((i+1)); echo "create refs/tags/t$i HEAD"; done '
        "| git update-ref --stdin",
        "echo two > two.txt && git tag | wc -l > tags.txt",
    )
    assert out.returncode == 4, out.stderr  # the workspace is kept: it has the other 1,001
    assert (jobs_root / job / "workspace").is_dir()
    assert "only 5000 branches, tags and stashes are kept (at most 5000, and 640 KiB" in out.stderr
    assert "; 1001 more are not" in out.stderr
    assert show(source_repo, job, "w.txt") == "w\n"
    assert show(source_repo, job, "tags.txt").strip() == "6000"
    heads = git(tmp_path, "bundle", "list-heads", str(jobs_root / job / "result.bundle"))
    tags = [line for line in heads.splitlines() if f"refs/logist/{job}/tags/" in line]
    assert len(tags) == 4999  # the 5,000th kept ref is the job's own branch


def test_a_removed_dot_git_still_commits_the_files_on_the_last_harvest(logist, source_repo):
    job, out = run_job(
        logist,
        source_repo,
        "echo one > one.txt",
        "rm -rf .git && echo two > two.txt",
        "git log --format=%s -1 && echo three > three.txt",
    )
    assert out.returncode == 0, out.stderr
    assert f"logist: {job} step 2" in out.stdout  # step 3 saw the harvest in its repository
    for name in ("one", "two", "three"):
        assert show(source_repo, job, f"{name}.txt") == f"{name}\n"
    subjects = git(source_repo, "log", "--format=%s", f"logist/{job}").splitlines()
    assert subjects[:3] == [f"logist: {job} step {n}" for n in (3, 2, 1)]


@pytest.mark.parametrize(
    "rewrite",
    [
        "git reset -q --hard HEAD~1",
        "git commit -q --amend -m amended",
        "git checkout -q --orphan fresh && git rm -rqf --cached . && "
        "git commit -q --allow-empty -m x",
    ],
)
def test_rewritten_history_keeps_every_earlier_harvest_reachable(logist, source_repo, rewrite):
    job, out = run_job(
        logist, source_repo, "echo one > one.txt", f"{rewrite} && echo two > two.txt"
    )
    assert out.returncode == 0, out.stderr
    first = git(source_repo, "log", "--format=%H %s", f"logist/{job}")
    step1 = next(line.split()[0] for line in first.splitlines() if line.endswith("step 1"))
    subprocess.run(
        ["git", "-C", str(source_repo), "merge-base", "--is-ancestor", step1, f"logist/{job}"],
        check=True,
    )
    assert show(source_repo, job, "two.txt") == "two\n"


def test_dangling_refs_and_broken_alternates_are_skipped_with_a_warning(logist, source_repo):
    job, out = run_job(
        logist,
        source_repo,
        "echo 0123456789abcdef0123456789abcdef01234567 > .git/refs/heads/dangling && "
        "echo /nowhere/objects > .git/objects/info/alternates && echo kept > kept.txt",
    )
    assert out.returncode == 0, out.stderr
    assert "warning" in out.stderr
    assert status(logist, job)["state"] == "succeeded"
    assert show(source_repo, job, "kept.txt") == "kept\n"


def test_workspace_shares_no_file_with_the_source(logist, source_repo, jobs_root):
    job = create_job(logist, source_repo, "true", extra=("--cleanup", "never"))
    assert logist("job", "run", job).returncode == 0
    ws = jobs_root / job / "workspace"
    source_inodes = {
        (p.stat().st_dev, p.stat().st_ino) for p in (source_repo / ".git").rglob("*") if p.is_file()
    }
    for p in ws.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert (p.stat().st_dev, p.stat().st_ino) not in source_inodes, p
    assert not (ws / ".git" / "objects" / "info" / "alternates").exists()


def test_fifos_unreadable_files_a_bare_flag_and_a_broken_index_lose_nothing(logist, source_repo):
    job, out = run_job(
        logist,
        source_repo,
        "mkfifo pipe && echo secret > locked.txt && chmod 000 locked.txt && "
        "mkdir closed && echo in > closed/in.txt && chmod 000 closed && "
        "git config core.bare true && echo garbage > .git/index && touch .git/index.lock",
        "chmod 755 closed && chmod 644 locked.txt && git status --porcelain && "
        'test -z "$(git status --porcelain)" && echo clean',
        extra=("--user", "1234:1234"),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("clean")
    assert show(source_repo, job, "locked.txt") == "secret\n"
    assert show(source_repo, job, "closed/in.txt") == "in\n"


def test_the_harvest_helper_is_locked_down_and_never_the_steps_image(
    logist, source_repo, jobs_root, docker_client
):
    from tests.test_steps import running_step

    job = create_job(logist, source_repo, "sleep 300", extra=("--image", "logist/busybox:latest"))
    with running_step(jobs_root, docker_client, job, 1) as runner:
        helpers = docker_client.containers.list(
            filters={"label": [f"logist.jobs-dir={jobs_root}", f"logist.job={job}"]}
        )
        helper = next(c for c in helpers if c.labels.get("logist.step") == "helper")
        hc = helper.attrs["HostConfig"]
        assert helper.attrs["Config"]["Image"] == "logist/step:latest"
        assert hc["NetworkMode"] == "none"
        assert hc["CapDrop"] == ["ALL"] and sorted(hc["CapAdd"]) == ["DAC_OVERRIDE", "FOWNER"]
        assert "no-new-privileges" in hc["SecurityOpt"]
        assert not hc["Privileged"]
        mounts = {m["Destination"]: m for m in helper.attrs["Mounts"]}
        assert set(mounts) == {"/workspace", "/trusted", "/out"}
        assert mounts["/trusted"]["RW"] is False
        assert all(m["Type"] == "bind" for m in mounts.values())
        assert logist("job", "cancel", job, "--grace", "0").returncode == 0
        runner.wait(timeout=60)


def test_index_flags_that_hide_changes_do_not_hide_them_from_the_harvest(logist, source_repo):
    job, out = run_job(
        logist,
        source_repo,
        "echo v1 > a.txt && git add a.txt && git commit -qm a && "
        "git update-index --assume-unchanged a.txt && echo v2 > a.txt && "
        "git update-index --skip-worktree README.md && echo changed > README.md && "
        "git config core.untrackedCache true && git update-index --untracked-cache && "
        "mkdir new && echo n > new/n.txt",
    )
    assert out.returncode == 0, out.stderr
    assert show(source_repo, job, "a.txt") == "v2\n"
    assert show(source_repo, job, "README.md") == "changed\n"
    assert show(source_repo, job, "new/n.txt") == "n\n"


def test_the_steps_git_config_never_runs_in_the_harvest_helper(logist, source_repo, jobs_root):
    """Transports, alternate-refs commands and hooks of the step's repository: the helper never
    runs git with that repository as its own, so nothing of it runs there either."""
    job, out = run_job(
        logist,
        source_repo,
        "git config protocol.ext.allow always && "
        "git config url.'ext::sh -c touch% /workspace/PWN-ext'.insteadOf /tmp/logist-scratch && "
        "git config core.alternateRefsCommand 'touch /workspace/PWN-alt; true' && "
        "echo /tmp/logist-scratch/objects > .git/objects/info/alternates && "
        "mkdir -p .git/hooks && printf '#!/bin/sh\\ntouch /workspace/PWN-hook\\n' "
        "> .git/hooks/reference-transaction && chmod +x .git/hooks/reference-transaction && "
        "echo x > x.txt",
        "ls",
        extra=("--cleanup", "never"),
    )
    assert out.returncode == 0, out.stderr
    ws = jobs_root / job / "workspace"
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith("PWN")) == []
    assert "PWN" not in out.stdout
    assert show(source_repo, job, "x.txt") == "x\n"


def test_files_of_repositories_nested_in_the_workspace_are_harvested(logist, source_repo):
    job, out = run_job(
        logist,
        source_repo,
        "mkdir a b && (cd a && git init -q && echo A > work.txt) && "
        "(cd b && git init -q && echo B > work.txt && git add . && git commit -qm b) && "
        "echo top > top.txt",
        "test -d a/.git && test -d b/.git",  # the nested repositories are still there
    )
    assert out.returncode == 0, out.stderr
    assert show(source_repo, job, "a/work.txt") == "A\n"
    assert show(source_repo, job, "b/work.txt") == "B\n"
    assert show(source_repo, job, "top.txt") == "top\n"


def test_kept_branches_that_clash_by_name_do_not_fail_the_job(logist, source_repo, tmp_path):
    job, out = run_job(
        logist,
        source_repo,
        "git branch a/b && echo 1 > one.txt",
        "git branch -D a/b && git branch a && echo 2 > two.txt",
        "echo 3 > three.txt",
    )
    assert out.returncode == 0, out.stderr
    assert show(source_repo, job, "two.txt") == "2\n"
    heads = git(
        tmp_path, "bundle", "list-heads", str(Path(status(logist, job)["result"]["bundle"]))
    )
    assert f"refs/logist/{job}/heads/a\n" in heads and "heads/a/b" not in heads


def test_special_files_in_the_steps_repository_do_not_stall_the_harvest(logist, source_repo):
    job, out = run_job(
        logist,
        source_repo,
        "rm -f .git/packed-refs && mkfifo .git/packed-refs && mkfifo .git/refs/heads/fifo && "
        "echo f > f.txt",
        extra=("--cleanup", "never"),
    )
    assert out.returncode == 0, out.stderr
    assert show(source_repo, job, "f.txt") == "f\n"


# --- a source whose config names commands (red team, 12-06) ---------------------------------------


def _hostile_source(tmp_path: Path, marker: Path) -> list[Path]:
    """Three sources whose own config runs ``touch MARKER-<n>`` from any git that reads it
    in the source: fsmonitor; an alternate refs command (with an alternate); a rewrite of
    the job's repository to an ``ext::`` command."""
    plain = make_repo(tmp_path / "plain", {"README.md": "x\n"})
    out = []
    for n in range(3):
        src = tmp_path / f"src{n}"
        subprocess.run(["git", "clone", "-q", str(plain), str(src)], check=True)
        if n == 0:
            git(src, "config", "core.fsmonitor", f"touch {marker}-0 #")
        elif n == 1:
            (src / ".git/objects/info/alternates").write_text(f"{plain}/.git/objects\n")
            git(src, "config", "core.alternateRefsCommand", f"touch {marker}-1 #")
        else:
            git(src, "config", "protocol.allow", "always")
            git(src, "config", f"url.ext::sh -c touch% {marker}-2% #.insteadOf", "/")
        out.append(src)
    return out


def test_a_sources_config_runs_nothing_when_the_job_branch_is_published(
    logist, tmp_path, jobs_root
):
    marker = tmp_path / "PWNED"
    for n, src in enumerate(_hostile_source(tmp_path, marker)):
        out = logist(
            "run", f"pub{n}", "--repo", str(src), "--image", "logist/busybox:latest",
            "--step", "echo work > work.txt",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert not list(tmp_path.glob("PWNED*")), f"source {n} ran its command"
        if n < 2:  # published, the plain way
            assert git(src, "show", f"logist/pub{n}:work.txt") == "work\n"
        else:  # no transport but a local path: not published, said, and kept in the bundle
            assert "warning: could not set logist/pub2" in out.stderr
            assert (jobs_root / "pub2" / "result.bundle").is_file()


def test_a_branch_of_the_jobs_name_that_is_not_its_own_is_kept_in_the_source(
    logist, source_repo, jobs_root
):
    """A `logist/<id>` of someone else's in the source (not an ancestor of the job's work)
    was overwritten, its commits left to the reflog (red team, 12-06). Publishing is a
    fast-forward only: it is kept, the run says so, the work is in result.bundle."""
    git(source_repo, "checkout", "-q", "-b", "logist/mine")
    (source_repo / "mine.txt").write_text("user work\n")
    git(source_repo, "add", "mine.txt")
    git(source_repo, "commit", "-q", "-m", "user work")
    theirs = git(source_repo, "rev-parse", "HEAD").strip()
    git(source_repo, "checkout", "-q", "-")
    base = git(source_repo, "rev-parse", "HEAD").strip()
    assert base != theirs
    out = logist(
        "run", "mine", "--repo", str(source_repo), "--ref", base,
        "--image", "logist/busybox:latest", "--step", "echo work > work.txt",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "warning: could not set logist/mine" in out.stderr
    assert "is not this job's" in out.stderr  # why, not git's command line
    assert git(source_repo, "rev-parse", "logist/mine").strip() == theirs
    heads = subprocess.run(
        ["git", "bundle", "list-heads", str(jobs_root / "mine" / "result.bundle")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "refs/heads/logist/mine" in heads
