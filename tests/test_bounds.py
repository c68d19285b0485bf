"""Bounds on what a step hands back (contract v3, "Bounds"): an object too large expanded, a
tree bomb, a bundle too large are refused in a quarantine (exit 4, the workspace kept, nothing
in logist's repository, the result or the source); host git over a step's pack runs under a
memory bound and a deadline; only the job branch is published into a local source."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from logist.bounds import Bounds
from logist.errors import GitError
from logist.intake import PathCounter, _Objects, index_bundle, tree_paths
from tests.helpers import GIT_ENV, create_job, git, make_repo

IDENTITY = tuple(x for k, v in GIT_ENV.items() for x in ("--env", f"{k}={v}"))


def _bare(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def _bundle(repo: Path, dest: Path, *revs: str) -> Path:
    git(repo, "bundle", "create", "-q", str(dest), *revs)
    return dest


def _objects(repo: Path) -> set[str]:
    out = git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    return set(out.split())


def _mktree(repo: Path, entries: list[tuple[str, str, str]]) -> str:
    text = "".join(f"{mode} {kind} {oid}\t{name}\n" for mode, kind, oid, name in entries)
    return subprocess.run(
        ["git", "-C", str(repo), "mktree"], input=text, capture_output=True, text=True, check=True
    ).stdout.strip()


def _tree_bomb(repo: Path, levels: int) -> str:
    """A tree of 4**(levels+1) paths made of ``levels + 1`` distinct trees."""
    blob = subprocess.run(
        ["git", "-C", str(repo), "hash-object", "-w", "--stdin"],
        input="x\n", capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    tree = _mktree(repo, [("100644", "blob", blob, n) for n in "abcd"])
    for _ in range(levels):
        tree = _mktree(repo, [("040000", "tree", tree, n) for n in "abcd"])
    return tree


def _commit(repo: Path, tree: str, *parents: str, message: str = "c") -> str:
    args = ["commit-tree", tree, "-m", message]
    for p in parents:
        args += ["-p", p]
    return git(repo, *args).strip()


def test_an_object_over_max_object_size_is_refused_and_nothing_enters(tmp_path: Path):
    src = make_repo(tmp_path / "src", {"big.bin": "0123456789abcdef" * 131072})  # 2 MiB
    bundle = _bundle(src, tmp_path / "b.bundle", "main")
    repo = _bare(tmp_path / "repo.git")
    with pytest.raises(GitError, match=r"over max_object_size 1\.0 MiB"):
        index_bundle(repo, bundle, Bounds(max_object_size=1 << 20))
    assert _objects(repo) == set()
    assert not any(p.name.startswith("incoming-") for p in (repo / "objects").iterdir())
    assert index_bundle(repo, bundle) == {"refs/heads/main": git(src, "rev-parse", "main").strip()}
    assert len(_objects(repo)) == 3


def test_a_tree_bomb_parent_of_a_normal_tip_is_refused_at_once(tmp_path: Path):
    src = make_repo(tmp_path / "src")
    bomb = _commit(src, _tree_bomb(src, 10), git(src, "rev-parse", "main").strip())  # 4**11
    tip = _commit(src, git(src, "rev-parse", "main^{tree}").strip(), bomb, message="normal")
    git(src, "update-ref", "refs/heads/work", tip)
    bundle = _bundle(src, tmp_path / "b.bundle", "work", "^main")
    assert bundle.stat().st_size < 8192
    repo = _bare(tmp_path / "repo.git")
    git(repo, "fetch", "-q", str(src), "main:refs/heads/main")
    before = _objects(repo)
    with pytest.raises(GitError, match=rf"commit {bomb} has over 1,000,000 paths"):
        index_bundle(repo, bundle)
    assert _objects(repo) == before


def test_the_path_counter_counts_repeated_trees_every_time_reading_each_once(tmp_path: Path):
    repo = make_repo(tmp_path / "r")
    tree = _tree_bomb(repo, 3)  # 4**4 = 256 paths
    listed = git(repo, "ls-tree", "-r", "--name-only", tree).splitlines()
    env = {**GIT_ENV, "PATH": "/usr/bin:/bin"}
    with _Objects(repo / ".git", env, Bounds()) as objects:
        reads: list[str] = []

        def entries(oid: str):
            reads.append(oid)
            return objects.tree_entries(oid)

        counter = PathCounter(entries, 1_000_000)
        assert counter.count(tree) == len(listed) == 256
        assert len(reads) == 4  # one read per distinct tree
        assert PathCounter(objects.tree_entries, 100).count(tree) == 101  # cut short


def test_a_bundle_over_max_result_size_is_refused_before_it_is_read(tmp_path: Path):
    src = make_repo(tmp_path / "src", {"a.txt": "a" * 5000})
    bundle = _bundle(src, tmp_path / "b.bundle", "main")
    repo = _bare(tmp_path / "repo.git")
    with pytest.raises(GitError, match="over max_result_size"):
        index_bundle(repo, bundle, Bounds(max_result_size=100))
    assert _objects(repo) == set()


def test_index_pack_runs_under_the_memory_bound(tmp_path: Path):
    src = make_repo(tmp_path / "src", {"z.bin": "\0" * (64 << 20)})  # 64 MiB, tiny packed
    bundle = _bundle(src, tmp_path / "b.bundle", "main")
    repo = _bare(tmp_path / "repo.git")
    with pytest.raises(GitError):
        index_bundle(repo, bundle, Bounds(git_memory=32 << 20))
    assert _objects(repo) == set()


@pytest.mark.parametrize("entry", [b"100644 a", b"100644 a\0short", b"no-space\0" + bytes(20)])
def test_a_malformed_tree_is_a_git_error_not_a_traceback(tmp_path, entry):
    """A source's tree that is not a tree's format raised ValueError (exit 1, the job
    interrupted: red team, 12-06)."""
    repo = make_repo(tmp_path / "src")
    tree = subprocess.run(
        ["git", "-C", str(repo), "hash-object", "-t", "tree", "-w", "--stdin", "--literally"],
        input=entry, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    commit = git(repo, "commit-tree", tree, "-m", "bad").strip()
    with pytest.raises(GitError, match="is malformed"):
        tree_paths(repo / ".git", commit, Bounds())


# --- through a job ---------------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return {"LOGIST_CONFIG": str(path)}


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_a_step_committing_an_object_over_the_bound_fails_exit_4_keeping_its_workspace(
    logist, source_repo: Path, jobs_root: Path, tmp_path: Path
):
    env = _config(tmp_path, "max_object_size: 1m\n")
    out = logist(
        "job", "create", "--repo", str(source_repo), *IDENTITY,
        "--step", "head -c 3000000 /dev/urandom > big && git hash-object big > oid "
        "&& git add big && git commit -qm big",
        env=env,
    )  # fmt: skip
    job = out.stdout.strip()
    run = logist("job", "run", job, env=env)
    assert run.returncode == 4, run.stderr
    assert "max_object_size" in run.stderr
    ws = jobs_root / job / "workspace"
    # said once, with where the work is (it was said twice, the second time without it)
    assert run.stderr.count("max_object_size") == 1, run.stderr
    assert f"workspace kept: {ws}" in run.stderr
    oid = (ws / "oid").read_text().strip()
    assert (ws / "big").stat().st_size == 3000000  # the workspace kept
    probe = subprocess.run(["git", "-C", str(source_repo), "cat-file", "-e", oid])
    assert probe.returncode != 0  # nothing of it in the source
    cleanup = logist("job", "cleanup", job, "--force", env=env)
    assert cleanup.returncode == 4  # the work cannot be harvested: kept, said


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sparse_file_counts_at_its_size(logist, source_repo: Path, tmp_path: Path):
    env = _config(tmp_path, "max_object_size: 10m\n")
    out = logist(
        "job", "create", "--repo", str(source_repo), *IDENTITY, "--step",
        "truncate -s 100M sparse", env=env,  # holes only: ten times the bound, no block
    )  # fmt: skip
    job = out.stdout.strip()
    run = logist("job", "run", job, env=env)
    assert run.returncode == 4, run.stderr
    assert "max_object_size 10.0 MiB" in run.stderr
    assert f"logist/{job}" not in git(source_repo, "branch", "--list")


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_only_the_job_branch_is_published_into_the_source(
    logist, source_repo: Path, jobs_root: Path, tmp_path: Path
):
    job = create_job(
        logist,
        source_repo,
        "git checkout -q -b other && echo kept-only-token-4711 > k.txt && git add k.txt "
        "&& git commit -qm other && git checkout -q - "
        "&& echo work > w.txt",
        extra=IDENTITY,
    )
    run = logist("job", "run", job)
    assert run.returncode == 0, run.stderr
    assert git(source_repo, "show", f"logist/{job}:w.txt") == "work\n"
    unpacked = _bare(tmp_path / "result.git")
    git(unpacked, "fetch", "-q", str(jobs_root / job / "result.bundle"), "+refs/*:refs/*")
    kept = git(unpacked, "rev-parse", f"refs/logist/{job}/heads/other:k.txt").strip()
    assert subprocess.run(["git", "-C", str(source_repo), "cat-file", "-e", kept]).returncode
