"""Hostile steps, found by a red team, against the contract's "Trust boundary", "Bounds
(v3)" and "Harvest".

Each test fails on the code it was written against when the hole is real."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import create_job
from tests.support_cli import popen_logist
from tests.support_containers import built_image


def _notes(logist, job: str) -> list[str]:
    return json.loads(logist("job", "status", job, "--json").stdout)["notes"]


def _branch_has(repo: Path, job: str, path: str) -> bool:
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", f"logist/{job}", "--", path],
        capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.startswith("120000 ")


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_link_escaping_through_a_link_inside_is_noted(logist, source_repo: Path):
    """``a/b -> ..`` points at the repository's root (inside); ``x -> a/b/../../etc/passwd``
    reads lexically as ``etc/passwd`` (inside) but resolves, through a/b, to the directory
    above the checkout's parent. notes._escapes normalises the target text without looking
    at the links it passes through, so the summary says nothing."""
    step = "mkdir a && ln -s .. a/b && ln -s a/b/../../etc/passwd x && ln -s . c && ln -s c/.. up"
    job = create_job(logist, source_repo, step)
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert _branch_has(source_repo, job, "x") and _branch_has(source_repo, job, "up")
    notes = _notes(logist, job)
    assert any("symlinks pointing outside" in n for n in notes), (notes, out.stderr)


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_link_out_after_100000_paths_is_noted(logist, source_repo: Path):
    """notes.MAX_ENTRIES stops looking after 100,000 changed paths (sorted by name): a step
    that adds 100,000 empty files under ``a/`` and then ``zz -> /etc/passwd`` gets no note,
    although the branch (well under max_tree_paths) is published with the link in it."""
    step = "mkdir a && cd a && seq 100000 | xargs touch && cd .. && ln -s /etc/passwd zz"
    job = create_job(logist, source_repo, step)
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert _branch_has(source_repo, job, "zz")
    notes = _notes(logist, job)
    assert any("symlinks pointing outside" in n for n in notes), (notes, out.stderr)


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_large_gitattributes_naming_a_filter_is_noted(logist, source_repo: Path):
    """notes._blob reads at most 64 KiB of a .gitattributes and returns "/" past that, which
    names no filter: 20,000 comment lines then ``* filter=evil`` (git reads attribute files up
    to 100 MB, and every one of these lines is short) is published with no note."""
    step = "yes '# pad' | head -n 20000 > .gitattributes && echo '* filter=evil' >> .gitattributes"
    job = create_job(logist, source_repo, step)
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    shown = subprocess.run(
        ["git", "-C", str(source_repo), "show", f"logist/{job}:.gitattributes"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert shown.stdout.endswith("* filter=evil\n")
    view = source_repo.parent / "attr-view"
    subprocess.run(["git", "init", "-q", str(view)], check=True)
    (view / ".gitattributes").write_text(shown.stdout)
    check = subprocess.run(
        ["git", "-C", str(view), "check-attr", "filter", "--", "x"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "filter: evil" in check.stdout, check  # git itself sees the filter
    notes = _notes(logist, job)
    assert any(".gitattributes naming filters" in n for n in notes), (notes, out.stderr)


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_tag_to_a_tree_over_max_tree_paths_is_refused(
    logist, source_repo: Path, jobs_root: Path, tmp_path: Path
):
    """intake.check counts paths only for commits: a step that tags a TREE of 4,096 paths
    (``git tag bomb <tree>``, a repeated subtree 12 levels deep) with max_tree_paths 100
    passes, and the tree lands in result.bundle under refs/logist/<id>/tags/bomb (exit 0).
    At 2^40 paths (a few hundred bytes of objects) anyone who reads that ref recursively
    (ls-tree -r, checkout, archive) is exhausted. Contract: over a bound, exit 4 and nothing
    of it in the result."""
    config = tmp_path / "logist.yaml"
    config.write_text("max_tree_paths: 100\n")
    step = (
        "b=$(echo x | git hash-object -w --stdin);"
        " t=$(printf '100644 blob %s\\tf\\n' $b | git mktree);"
        " for i in $(seq 12); do t=$(printf '040000 tree %s\\ta\\n040000 tree %s\\tb\\n' $t $t"
        " | git mktree); done; git tag bomb $t"
    )
    env = {"LOGIST_CONFIG": str(config)}
    create_job_env = logist("job", "create", "--repo", str(source_repo), "--step", step, env=env)
    assert create_job_env.returncode == 0, create_job_env.stderr
    job = create_job_env.stdout.strip()
    out = logist("job", "run", job, env=env)
    bundle = jobs_root / job / "result.bundle"
    heads = ""
    if bundle.exists():
        heads = subprocess.run(
            ["git", "bundle", "list-heads", str(bundle)], capture_output=True, text=True
        ).stdout
    assert "tags/bomb" not in heads, heads
    assert out.returncode == 4, (out.returncode, out.stderr)


def _literal_tree_bomb(src: Path, levels: int) -> None:
    """A commit on ``main`` whose tree repeats a subtree ``levels`` deep, written with the
    zero-padded mode ``040000`` (git checks it out as a directory; only fsck warns)."""
    subprocess.run(["git", "init", "-q", str(src)], check=True)

    def put(kind: str, data: bytes) -> str:
        args = ["git", "hash-object", "-t", kind, "--literally", "-w", "--stdin"]
        return (
            subprocess.run(args, cwd=src, input=data, capture_output=True, check=True)
            .stdout.strip()
            .decode()
        )

    blob = put("blob", b"x\n")
    tree = put("tree", b"100644 f\0" + bytes.fromhex(blob))
    for _ in range(levels):
        sub = bytes.fromhex(tree)
        tree = put("tree", b"040000 a\0" + sub + b"040000 b\0" + sub)
    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@a",
           "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@a"}  # fmt: skip
    commit = subprocess.run(["git", "commit-tree", "-m", "b", tree], cwd=src, env=env,
                            capture_output=True, check=True).stdout.strip().decode()  # fmt: skip
    subprocess.run(["git", "update-ref", "refs/heads/main", commit], cwd=src, check=True)
    subprocess.run(["git", "symbolic-ref", "HEAD", "refs/heads/main"], cwd=src, check=True)


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_source_tree_in_zero_padded_modes_is_counted_all_the_same(
    logist, jobs_root: Path, tmp_path: Path
):
    """``040000`` entries were counted as one file each: a source of them passed the bound
    unread (red team, 12-06)."""
    config = tmp_path / "logist.yaml"
    config.write_text("max_tree_paths: 1000\n")
    src = tmp_path / "padded"
    _literal_tree_bomb(src, 12)  # 4,096 paths
    out = logist("run", "padded", "--repo", str(src), "--step", "true",
                 env={"LOGIST_CONFIG": str(config)})  # fmt: skip
    assert out.returncode == 2 and "max_tree_paths" in out.stderr, out.stderr
    assert not (jobs_root / "padded" / "workspace").exists()


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_source_commit_over_max_tree_paths_is_refused_before_its_checkout(
    logist, jobs_root: Path, tmp_path: Path
):
    """The source's content is untrusted too: a commit of a few objects whose tree repeats
    its subtrees (2^12 paths here, 2^21 in the red team's: 9.4 GB and minutes of checkout on
    the host) is refused with max_tree_paths 100, exit 2, before anything is checked out."""
    config = tmp_path / "logist.yaml"
    config.write_text("max_tree_paths: 100\n")
    src = tmp_path / "bomb"
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    script = (
        "b=$(echo x | git hash-object -w --stdin);"
        " t=$(printf '100644 blob %s\\tf\\n' $b | git mktree);"
        " for i in $(seq 12); do t=$(printf '040000 tree %s\\ta\\n040000 tree %s\\tb\\n' $t $t"
        " | git mktree); done;"
        " c=$(git -c user.name=a -c user.email=a@a commit-tree -m b $t);"
        " git update-ref refs/heads/main $c"
        " && git symbolic-ref HEAD refs/heads/main"
    )
    subprocess.run(["sh", "-c", script], cwd=src, check=True)
    env = {"LOGIST_CONFIG": str(config)}
    out = logist("run", "bomb", "--repo", str(src), "--step", "true", env=env)
    assert out.returncode == 2, out.stderr
    assert "max_tree_paths" in out.stderr and "Traceback" not in out.stderr
    assert not (jobs_root / "bomb" / "workspace").exists()
    # a source within the bound runs as before
    config.write_text("max_tree_paths: 5000\n")
    ok = logist("run", "fine", "--repo", str(src), "--image", "logist/busybox:latest",
                "--step", "true", env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr


@pytest.mark.docker
def test_a_file_git_cannot_convert_keeps_every_other_change_of_the_step(logist, source_repo: Path):
    """A source whose ``*.rc`` files are UTF-16 in the working tree: a step that writes one
    git cannot convert (an odd number of bytes) lost every uncommitted change, and the job
    succeeded (red team, 12-06)."""
    from tests.helpers import commit_file, git

    commit_file(source_repo, ".gitattributes", "*.rc working-tree-encoding=UTF-16LE-BOM\n")
    step = "echo more >> README.md; echo new > feature.c; echo STRINGTABLE2 > extra.rc"
    job = create_job(logist, source_repo, step)
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert "taken as they are" in out.stderr and "extra.rc" in out.stderr
    assert git(source_repo, "show", f"logist/{job}:feature.c") == "new\n"
    assert git(source_repo, "show", f"logist/{job}:README.md").endswith("more\n")
    assert git(source_repo, "cat-file", "-p", f"logist/{job}:extra.rc") == "STRINGTABLE2\n"


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_branches_with_names_git_takes_are_kept_however_odd(
    logist, source_repo, jobs_root, tmp_path
):
    """``fix#12``, ``feature/ünï``, ``wip(1)``, ``a!b``: branches an agent may well make were
    dropped from the result in silence, and lost with the workspace (red team)."""
    names = ["fix#12", "feature/ünï", "wip(1)", "a!b"]
    made = " && ".join(
        f"git switch -q -c '{n}' && echo '{n}' > 'w{i}.txt' && git add -A && git commit -qm '{n}'"
        f" && git switch -q -"
        for i, n in enumerate(names)
    )
    ident = "git config user.email s@x && git config user.name s && "
    job = create_job(logist, source_repo, ident + made)
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert "are not kept" not in out.stderr
    bundle = jobs_root / job / "result.bundle"
    clone = tmp_path / "check"
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    subprocess.run(
        ["git", "-C", str(clone), "fetch", "-q", str(bundle), "+refs/*:refs/*"], check=True
    )
    for i, n in enumerate(names):
        shown = subprocess.run(
            ["git", "-C", str(clone), "show", f"refs/logist/{job}/heads/{n}:w{i}.txt"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert shown.stdout == f"{n}\n", (n, shown.stderr)


def test_kept_ref_names_are_what_git_takes_and_nothing_unprintable():
    from logist.harvest import _kept_ref_ok

    p = "refs/logist/j1/"
    for ok in ["heads/fix#12", "heads/feature/ünï", "heads/wip(1)", "tags/v1.0", "stash"]:
        assert _kept_ref_ok(p + ok, p), ok
    bad = [
        "heads/a..b", "heads/x.lock", "heads/.hidden", "heads/a b", "heads/a~1", "heads/@",
        "heads/a@{1}", "heads/\x1b[31m", "heads/a\u202eb", "heads/", "heads//x", "heads/x.",
        "notes/x", "heads", "refs/other/x", "heads/a:b", "heads/a\\b", "heads/a?", "heads/a*",
    ]  # fmt: skip
    for name in bad:
        assert not _kept_ref_ok(p + name, p), name
    assert not _kept_ref_ok("refs/logist/j2/heads/x", p)


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_an_images_anonymous_volumes_go_with_its_step(
    logist, source_repo, jobs_root, docker_client
):
    """An image's ``VOLUME`` gave each step an anonymous volume the engine kept after the
    step's container was removed, with no label for a sweep to find: a spec naming such an
    image (and 1,000 steps) filled the engine's disk (red team)."""
    tag = f"logist-test/volume:{os.getpid()}"
    built_image(docker_client, tag, "FROM logist/busybox:latest\nVOLUME /data\n")
    try:
        steps = ("echo x > /data/x; sleep 3", "echo y > /data/y")
        job = create_job(logist, source_repo, *steps, extra=("--image", tag))
        runner = popen_logist(jobs_root, "job", "run", job)
        seen: set[str] = set()
        while runner.poll() is None:
            for box in docker_client.containers.list(filters={"label": f"logist.job={job}"}):
                mounts = box.attrs.get("Mounts") or []
                seen |= {m["Name"] for m in mounts if m.get("Type") == "volume"}
            time.sleep(0.2)
        assert runner.returncode == 0, runner.stderr.read()
        assert seen, "the step's anonymous volume was not seen"
        left = [v.name for v in docker_client.volumes.list() if v.name in seen]
        assert left == []
    finally:
        docker_client.images.remove(tag, force=True)


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_refs_the_result_cannot_hold_keep_the_workspace_until_a_forced_cleanup(
    logist, source_repo, jobs_root
):
    """Branches whose names are not UTF-8 or not printable were lost with the workspace,
    after a warning that said the workspace kept them (red team): the workspace now stays."""
    names = ["bad$(printf '\\376')", "nb$(printf '\\302\\240')sp", "p$(printf '\\342\\200\\251')q"]
    made = " && ".join(
        f'git switch -q -c "{n}" && echo {i} > w{i}.txt && git add -A && git commit -qm {i}'
        " && git switch -q -"
        for i, n in enumerate(names)
    )
    ident = "git config user.email s@x && git config user.name s && "
    job = create_job(logist, source_repo, ident + made)
    out = logist("job", "run", job)
    assert out.returncode == 4, out.stderr  # the contract's "cleanup incomplete"
    assert (
        "names logist does not take as a ref's: 'heads/nb\\xa0sp', 'heads/p\\u2029q', 1 more"
        in out.stderr
    )
    assert "3 refs the step made are not in the job's result" in out.stderr
    assert (jobs_root / job / "workspace").is_dir()
    kept = logist("job", "cleanup", job)
    assert kept.returncode == 4, kept.stderr
    assert (jobs_root / job / "workspace").is_dir()
    gone = logist("job", "cleanup", job, "--force")
    assert gone.returncode == 0, gone.stderr
    assert not (jobs_root / job / "workspace").exists()


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_branch_a_shallow_fetch_made_keeps_the_workspace(logist, source_repo, jobs_root):
    """Its parents are not there, so logist cannot take it: it was skipped as "missing" and
    lost with the workspace, exit 0 (red team). It now counts as not kept: exit 4, the
    workspace (and the branch in its repository) kept."""
    step = (
        "git config --global user.email a@b && git config --global user.name a && "
        "git init -q /tmp/o && cd /tmp/o && echo 1 > a && git add a && git commit -qm 1 && "
        "echo 2 > a && git commit -qam 2 && cd - > /dev/null && "
        "git fetch -q --depth 1 file:///tmp/o HEAD:refs/heads/other"
    )
    job = create_job(logist, source_repo, step)
    out = logist("job", "run", job)
    assert out.returncode == 4, out.stderr
    assert "skipped refs/heads/other: its objects are missing" in out.stderr
    assert "1 refs the step made are not in the job's result" in out.stderr
    ws = jobs_root / job / "workspace"
    packed = (ws / ".git" / "packed-refs").read_text()
    assert "refs/heads/other" in packed
