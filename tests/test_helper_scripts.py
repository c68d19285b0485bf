"""The helper's scripts (logist/helper/*.sh), run with ``sh`` on temporary repositories under a
root of the test's own (``LOGIST_ROOT``: the container's /workspace, /trusted, /out and /tmp
there), with real git and no Docker. The same text runs in the helper container."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from logist.channel import SERVE
from logist.helper import MAX_OUTPUT, parse_output, too_big
from logist.sandbox import HARVEST, TOO_BIG, TRUSTED_INIT, VISIBLE, WRITE_BACK
from tests.helpers import commit_file, git, make_repo

BRANCH = "logist/j1"
NONCE = "0123456789abcdef"


class Root:
    """A helper's file system in a temp directory: the step's workspace (a clone), logist's
    repository of the job (/trusted, the job branch at the base commit), /out and /tmp."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "root"
        src = make_repo(tmp_path / "src", {"README.md": "hello\n", "lib/a.txt": "a\n"})
        self.base = git(src, "rev-parse", "HEAD").strip()
        for d in ("tmp", "out"):
            (self.path / d).mkdir(parents=True)
        self.trusted = self.path / "trusted"
        subprocess.run(["git", "clone", "-q", "--bare", str(src), str(self.trusted)], check=True)
        git(self.trusted, "update-ref", f"refs/heads/{BRANCH}", self.base)
        self.ws = self.path / "workspace"
        subprocess.run(["git", "clone", "-q", str(src), str(self.ws)], check=True)
        git(self.ws, "checkout", "-q", "-b", BRANCH)

    def env(self) -> dict[str, str]:
        return {**os.environ, "LOGIST_ROOT": str(self.path)}

    def run(self, script: str, *args: str, name: str = "harvest") -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", "-c", script, name, *args],
            capture_output=True,
            env=self.env(),
            timeout=60,
        )

    def harvest(
        self,
        *,
        write_back: bool = False,
        message: str = "logist: j1 step 1",
        previous: str = "",
        unfinished: str = "",
    ):
        wb = "yes" if write_back else ""
        done = self.run(
            HARVEST,
            BRANCH,
            previous or self.base,
            message,
            NONCE,
            "j1",
            wb,
            str(100 << 20),
            unfinished,
        )
        assert done.returncode == 0, done.stderr.decode()
        return parse_output(done.stdout, done.stderr)

    def fetched(self, out) -> Path:
        """logist's side: the bundle fetched into a copy of /trusted (checked by git)."""
        copy = self.path.parent / "accepted.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(self.trusted), str(copy)], check=True)
        bundle = self.path / "out" / out.bundle
        git(copy, "bundle", "verify", str(bundle))
        git(copy, "fetch", "-q", str(bundle), f"+refs/heads/{BRANCH}:refs/heads/{BRANCH}")
        return copy


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path)


def nested_repo(root: Root, name: str) -> Path:
    """``sub``: a repository in the workspace, its one commit holding ``name``."""
    sub = root.ws / "sub"
    sub.mkdir()
    git(sub, "init", "-q")
    (sub / name).write_text(f"{name}\n")
    git(sub, "add", name)
    git(sub, "commit", "-qm", "nested")
    return sub


def files_of(repo: Path, commit: str) -> dict[str, str]:
    names = git(repo, "ls-tree", "-r", "-z", "--name-only", commit).split("\0")
    return {n: git(repo, "show", f"{commit}:{n}") for n in names if n}


def test_a_changed_tree_becomes_a_commit_on_the_last_harvest_and_a_bundle(root):
    (root.ws / "README.md").write_text("changed\n")
    (root.ws / "new.txt").write_text("new\n")
    (root.ws / "lib" / "a.txt").unlink()
    out = root.harvest()
    assert out.commit and out.bundle == f"{NONCE}.bundle"
    repo = root.fetched(out)
    assert git(repo, "rev-parse", f"refs/heads/{BRANCH}").strip() == out.commit
    assert git(repo, "rev-parse", f"{out.commit}^").strip() == root.base
    assert files_of(repo, out.commit) == {"README.md": "changed\n", "new.txt": "new\n"}
    assert git(repo, "log", "-1", "--format=%s", out.commit).strip() == "logist: j1 step 1"


def test_a_clean_tree_after_the_steps_own_commit_keeps_that_commit(root):
    (root.ws / "made.txt").write_text("by the step\n")
    git(root.ws, "add", "made.txt")
    git(root.ws, "commit", "-q", "-m", "the step's own")
    own = git(root.ws, "rev-parse", "HEAD").strip()
    out = root.harvest()
    assert out.commit == own
    assert files_of(root.fetched(out), own)["made.txt"] == "by the step\n"


def test_nothing_changed_names_the_last_harvest_and_sends_no_bundle(root):
    out = root.harvest()
    assert out.commit == root.base and out.bundle is None


def test_the_write_back_leaves_logists_config_alone_whatever_the_step_planted(root):
    (root.ws / "work.txt").write_text("work\n")
    git_dir = root.ws / ".git"
    (git_dir / "hooks" / "post-checkout").write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    (git_dir / "hooks" / "post-checkout").chmod(0o755)
    git(root.ws, "config", "core.fsmonitor", "touch /tmp/pwned-fsmonitor")
    git(root.ws, "config", "alias.st", "!touch /tmp/pwned-alias")
    out = root.harvest(write_back=True)
    config = (git_dir / "config").read_text()
    assert "fsmonitor" not in config and "alias" not in config
    assert not (git_dir / "hooks" / "post-checkout").exists()
    assert (git_dir / "HEAD").read_text().strip() == f"ref: refs/heads/{BRANCH}"
    assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit
    assert git(root.ws, "status", "--porcelain").strip() == ""  # the index is the commit's


def _objects(repo: Path) -> int:
    counts = dict(
        line.split(": ") for line in git(repo, "count-objects", "-v").splitlines() if ": " in line
    )
    return int(counts["count"]) + int(counts["in-pack"])


def test_the_write_back_sends_only_what_the_steps_objects_lack_not_the_history(root):
    for i in range(150):
        (root.ws / f"many-{i}.txt").write_text(f"{i}\n")
    first = root.harvest(write_back=True)
    bundle = str(root.path / "out" / first.bundle)  # accepted, as the host would
    git(root.trusted, "fetch", "-q", bundle, f"+{BRANCH}:{BRANCH}")
    before = _objects(root.ws)
    (root.ws / "many-7.txt").write_text("changed\n")
    out = root.harvest(previous=first.commit, write_back=True)
    assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit
    assert _objects(root.ws) - before <= 3  # the blob, the tree, the commit: not 150 files again
    assert git(root.ws, "status", "--porcelain").strip() == ""
    git(root.ws, "fsck", "--strict", "--no-dangling")


def test_a_step_that_deleted_its_repositorys_objects_still_gets_a_whole_one_back(root):
    (root.ws / "work.txt").write_text("work\n")
    for pack in (root.ws / ".git" / "objects").rglob("*"):
        if pack.is_file():
            pack.unlink()
    out = root.harvest(write_back=True)
    assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit
    assert git(root.ws, "show", "HEAD:README.md") == "hello\n"
    git(root.ws, "fsck", "--strict", "--no-dangling")


def test_the_write_back_alone_replaces_the_repository_as_the_steps_user_would(root):
    (root.ws / "work.txt").write_text("work\n")
    out = root.harvest()
    git(root.ws, "config", "core.fsmonitor", "touch /tmp/pwned-fsmonitor")
    done = root.run(WRITE_BACK, BRANCH, out.commit, "j1", name="write-back")
    assert done.returncode == 0, done.stderr.decode()
    assert "fsmonitor" not in (root.ws / ".git" / "config").read_text()
    assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit


def test_a_linked_objects_info_is_not_followed_by_the_write_back(root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "alternates").write_text("keep me\n")
    (outside / "commit-graph").write_text("keep me too\n")
    info = root.ws / ".git" / "objects" / "info"
    for f in info.iterdir():
        f.unlink()
    info.rmdir()
    info.symlink_to(outside)
    (root.ws / "work.txt").write_text("work\n")
    root.harvest(write_back=True)
    assert (outside / "alternates").read_text() == "keep me\n"
    assert (outside / "commit-graph").read_text() == "keep me too\n"


@pytest.mark.parametrize("name", ["nested", "-n", "new\nline"], ids=["plain", "dash", "newline"])
def test_a_nested_repository_is_harvested_as_files_and_its_git_dir_put_back(root, name):
    nested = make_repo(root.ws / name, {"inner.txt": "inner\n"})
    out = root.harvest()
    files = files_of(root.fetched(out), out.commit)
    assert files[f"{name}/inner.txt"] == "inner\n"
    assert not any("/.git" in f or f.startswith(".git") for f in files)
    assert (nested / ".git" / "HEAD").is_file()  # set aside while adding, then put back
    assert not list(root.ws.glob("**/*.logist-hidden-*"))


def test_other_branches_and_tags_are_kept_under_the_jobs_namespace(root):
    git(root.ws, "branch", "side")
    git(root.ws, "tag", "v1")
    out = root.harvest()
    assert out.refs["refs/logist/j1/heads/side"] == root.base
    assert out.refs["refs/logist/j1/tags/v1"] == root.base
    assert all(name.startswith("refs/logist/j1/") for name in out.refs)


def test_trusted_init_makes_the_helpers_repository_from_a_bundle(root):
    bundle = root.path / "tmp" / "logist-trusted.bundle"
    git(root.trusted, "bundle", "create", str(bundle), f"refs/heads/{BRANCH}")
    for child in root.trusted.iterdir():  # the helper's /trusted is made anew
        subprocess.run(["rm", "-rf", str(child)], check=True)
    done = root.run(TRUSTED_INIT, name="trusted-init")
    assert done.returncode == 0, done.stderr.decode()
    assert git(root.trusted, "rev-parse", f"refs/heads/{BRANCH}").strip() == root.base
    assert not bundle.exists()
    assert oct((root.path / "out").stat().st_mode & 0o777) == "0o700"


def _first_line(root: Root, script: str, *args: str) -> bytes:
    proc = subprocess.Popen(
        ["sh", "-c", script, "helper", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=root.env(),
    )
    try:
        assert proc.stdout is not None
        return proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_visible_says_what_it_reads_from_the_marker(root):
    (root.path / "out" / "visible-t1").write_text("t0ken")
    assert _first_line(root, VISIBLE, "visible-t1") == b"visible t0ken\n"
    assert _first_line(root, VISIBLE, "visible-none") == b"visible \n"


def test_serve_answers_each_request_with_tagged_lines_and_the_nonce(root):
    script = 'printf "%s|%s\\n" "$1" "$2"; echo oops >&2; exit 3'
    proc = subprocess.Popen(
        ["sh", "-c", SERVE, "serve", "", script, "10"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=root.env(),
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"n1\n2\na b\n-c\n")
        proc.stdin.flush()
        lines = []
        while not (line := proc.stdout.readline()).startswith(b"end "):
            lines.append(line)
        assert line == b"end n1 3\n"
        assert lines == [b"o a b|-c\n", b"e oops\n", b"\n"]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_write_back_that_fails_leaves_the_steps_repository_whole_and_nothing_in_the_tree(root):
    """Over 5,000 refs (the write-back then keeps the step's own) and a loose ref with a name
    git refuses: the write-back's fetch failed after it had moved the objects away, so the next
    step found no repository and the next harvest committed logist's half-made one (red team,
    12-06). Now the refs git refuses are left out, and a failure puts everything back."""
    head = git(root.ws, "rev-parse", "HEAD").strip()
    packed = "".join(f"{head} refs/heads/b{i}\n" for i in range(6000))
    (root.ws / ".git" / "packed-refs").write_text(packed)
    (root.ws / ".git" / "refs" / "heads" / "evil..name").write_text(head + "\n")
    (root.ws / "w.txt").write_text("w\n")
    done = root.run(HARVEST, BRANCH, root.base, "m", NONCE, "j1", "yes")
    assert done.returncode == 0, done.stderr.decode()
    out = parse_output(done.stdout, done.stderr)
    assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit
    assert git(root.ws, "rev-parse", "refs/heads/b5999").strip() == head  # the step's own
    assert [p.name for p in root.ws.iterdir() if p.name.startswith(".git.")] == []
    again = root.harvest()
    assert not any(".git." in name for name in files_of(root.fetched(again), again.commit))


def test_the_steps_own_files_named_like_logists_scratch_are_kept(root):
    for name in (".git.logist-old", ".git.logist-new", ".git.logist-wb"):
        (root.ws / name).mkdir()
        (root.ws / name / "data").write_text("important\n")
    out = root.harvest(write_back=True)
    for name in (".git.logist-old", ".git.logist-new", ".git.logist-wb"):
        assert (root.ws / name / "data").read_text() == "important\n"
        assert files_of(root.fetched(out), out.commit)[f"{name}/data"] == "important\n"
        (root.path.parent / "accepted.git").rename(root.path.parent / f"seen{name}")


def test_a_killed_write_backs_scratch_is_neither_harvested_nor_left(root):
    scratch = root.ws / ".git.logist-wb-Ab3dE6gH"
    (scratch / "objects").mkdir(parents=True)
    (scratch / "HEAD").write_text("ref: refs/heads/x\n")
    (root.ws / "w.txt").write_text("w\n")
    out = root.harvest(write_back=True)
    names = files_of(root.fetched(out), out.commit)
    assert "w.txt" in names and not any(".git.logist-wb" in n for n in names)
    assert not scratch.exists()


def test_paths_git_cannot_read_are_named_in_a_warning(root):
    """Git skips a path over PATH_MAX without a word: a file 2,100 directories deep was lost
    from the harvest with no warning (red team, 12-06)."""
    fd = os.open(root.ws, os.O_RDONLY)
    try:
        for _ in range(2100):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"deep\n")
        os.close(leaf)
    finally:
        os.close(fd)
    (root.ws / "shallow.txt").write_text("here\n")
    try:
        out = root.harvest()
        assert "shallow.txt" in files_of(root.fetched(out), out.commit)
        assert any("paths of 4096 bytes or more are not taken" in w for w in out.warnings)
    finally:  # pytest's own clean-up of old temp dirs recurses: too deep for it
        subprocess.run(["rm", "-rf", str(root.ws / "d")], check=True)


NOBODY = 65534


@pytest.mark.parametrize("locked", [".git", ".git/objects", ".", ".git/objects/pack"])
def test_a_repository_the_step_made_read_only_is_still_replaced_as_its_user(tmp_path, locked):
    """A step (not root) that made its .git read-only kept its config, and its fsmonitor ran in
    the next step: the write-back, as the step's user, could not move the objects out, and put
    the step's repository back (red team, 12-06). The owner may open the modes again."""
    base = Path(tempfile.mkdtemp(prefix="logist-wb-", dir="/tmp"))  # others may walk it
    try:
        base.chmod(0o755)
        root = Root(base)
        (root.ws / "w.txt").write_text("w\n")
        out = root.harvest()
        git(root.ws, "config", "core.fsmonitor", "echo planted")
        for path in (root.ws, root.path / "tmp"):
            subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(path)], check=True)
        (root.ws / locked).chmod(0o555 if locked != ".git/objects/pack" else 0)
        as_step = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        done = subprocess.run(
            [*as_step, "sh", "-c", WRITE_BACK, "write-back", BRANCH, out.commit, "j1"],
            capture_output=True,
            env=root.env(),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert "fsmonitor" not in (root.ws / ".git" / "config").read_text()
        assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_a_file_over_max_object_size_is_refused_before_git_reads_it(root):
    """A sparse 100 GB file took the whole harvest deadline (300 s) before the helper was
    killed (red team, 12-06): the walk now finds it and the harvest stops at once. A file git
    ignores is no object, whatever its size, and a tracked one that did not change is not read
    again (a source may hold one over the bound)."""
    most = str(1 << 20)
    (root.ws / ".gitignore").write_text("ignored.bin\n")
    with open(root.ws / "ignored.bin", "wb") as fh:
        fh.truncate(200 << 30)
    (root.ws / "w.txt").write_text("w\n")
    (root.ws / "tracked.bin").write_bytes(b"x" * (2 << 20))
    git(root.ws, "add", "tracked.bin")
    git(root.ws, "-c", "user.name=s", "-c", "user.email=s@s", "commit", "-q", "-m", "big")
    first = root.run(HARVEST, BRANCH, root.base, "m", NONCE, "j1", "", most)
    assert first.returncode == 0, first.stderr.decode()  # tracked, unchanged: not read again
    out = parse_output(first.stdout, first.stderr)
    assert "w.txt" in files_of(root.fetched(out), out.commit)
    with open(root.ws / "huge.bin", "wb") as fh:
        fh.truncate(100 << 30)
    done = root.run(HARVEST, BRANCH, out.commit, "m", NONCE, "j1", "", most)
    assert done.returncode == TOO_BIG, done.stderr.decode()
    said = too_big(done.stderr, 1 << 20)
    assert said == "huge.bin is 100.0 GiB, over max_object_size 1.0 MiB: refused before git read it"


def test_a_fifo_named_like_the_bundle_is_refused_without_waiting(tmp_path):
    """The helper's answer is untrusted: a FIFO where its bundle should be is refused at once
    (opening it to read would wait for a writer that never comes)."""
    import threading

    from logist.errors import HarvestFailed
    from logist.harvest import _copy_out
    from logist.layout import JobDir

    job_dir = JobDir(tmp_path / "job")
    job_dir.exchange.mkdir(parents=True)
    os.mkfifo(job_dir.exchange / f"{NONCE}.bundle")
    box: dict = {}

    def copy() -> None:
        try:
            _copy_out(job_dir, f"{NONCE}.bundle")
        except HarvestFailed as exc:
            box["error"] = exc

    worker = threading.Thread(target=copy, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the host waits on the FIFO"
    assert "not a regular file" in str(box.get("error"))


def _shallow(root: Root) -> None:
    """``root`` made a shallow source's: /trusted and the workspace end at a new commit."""
    src = root.path.parent / "src"
    commit_file(src, "later.txt", "later\n", "later")
    for path in (root.trusted, root.ws):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    subprocess.run(["git", "clone", "-q", "--depth", "1", "--bare", f"file://{src}",
                    str(root.trusted)], check=True)  # fmt: skip
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{src}", str(root.ws)],
                   check=True)  # fmt: skip
    root.base = git(src, "rev-parse", "HEAD").strip()
    git(root.trusted, "update-ref", f"refs/heads/{BRANCH}", root.base)
    git(root.ws, "checkout", "-q", "-b", BRANCH)


def test_a_shallow_workspace_is_harvested_and_written_back_still_shallow(root):
    """A shallow source's workspace: the write-back failed on every harvest (exit 22), since
    the helper's repository did not know where the history ends (red team, 12-06)."""
    _shallow(root)
    (root.ws / "new.txt").write_text("new\n")
    out = root.harvest(write_back=True)
    assert out.warnings == [], out.warnings
    assert git(root.ws, "log", "--format=%P", "-n", "1").strip() == root.base
    assert git(root.ws, "rev-list", "--count", "HEAD").strip() == "2"
    assert set((root.ws / ".git" / "shallow").read_text().split()) == {root.base}
    assert git(root.ws, "status", "--porcelain") == ""


def test_trusted_init_keeps_a_shallow_sources_roots(root):
    _shallow(root)
    bundle = root.path / "tmp" / "logist-trusted.bundle"
    git(root.trusted, "bundle", "create", str(bundle), f"refs/heads/{BRANCH}")
    (root.path / "tmp" / "logist-trusted.shallow").write_bytes(
        (root.trusted / "shallow").read_bytes()
    )
    subprocess.run(["rm", "-rf", str(root.trusted)], check=True)
    done = root.run(TRUSTED_INIT, name="trusted-init")
    assert done.returncode == 0, done.stderr.decode()
    assert git(root.trusted, "rev-parse", f"refs/heads/{BRANCH}").strip() == root.base
    assert (root.trusted / "shallow").read_text().strip() == root.base


def _plant_corrupt_blob(root: Root) -> None:
    """More new files than git's unpackLimit (the write-back's fetch then runs index-pack),
    and garbage under the name of one of their blobs: index-pack dies on it."""
    for i in range(200):
        (root.ws / f"n{i}").write_text(f"x{i}\n")
    blob = git(root.ws, "hash-object", "n1").strip()
    loose = root.ws / ".git" / "objects" / blob[:2] / blob[2:]
    loose.parent.mkdir(exist_ok=True)
    loose.unlink(missing_ok=True)
    loose.write_bytes(b"garbage\n")
    git(root.ws, "config", "core.evil", "planted")
    hook = root.ws / ".git" / "hooks" / "pre-commit"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("#!/bin/sh\necho HOOK-RAN\n")
    hook.chmod(0o755)


def test_a_write_back_the_step_made_fail_still_leaves_none_of_its_config_or_hooks(root):
    """A corrupt loose object named like a blob of the step's own files made the write-back's
    fetch fail, and the step's repository was put back: its config and hooks reached the next
    step (red team, 12-06). The repository is made again from the harvest alone."""
    _plant_corrupt_blob(root)
    out = root.harvest(write_back=True)
    assert any("made again from the harvest alone" in w for w in out.warnings), out.warnings
    assert "evil" not in (root.ws / ".git" / "config").read_text()
    assert not (root.ws / ".git" / "hooks" / "pre-commit").exists()
    assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit
    assert git(root.ws, "symbolic-ref", "HEAD").strip() == f"refs/heads/{BRANCH}"
    assert git(root.ws, "status", "--porcelain") == ""
    assert "n199" in files_of(root.fetched(out), out.commit)


def test_the_write_back_alone_never_leaves_the_steps_repository_either(root):
    """The same, in the write-back run on its own (as the step's user)."""
    _plant_corrupt_blob(root)
    out = root.harvest()
    done = root.run(WRITE_BACK, BRANCH, out.commit, "j1", name="write-back")
    assert done.returncode == 0, done.stderr.decode()
    assert "made again from the harvest alone" in done.stderr.decode()
    assert "evil" not in (root.ws / ".git" / "config").read_text()
    assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit


def test_a_write_back_that_cannot_be_made_at_all_removes_the_steps_repository(root):
    """Neither with the step's objects nor from the harvest alone (the helper's repository
    gone here): the step's repository is removed, never kept."""
    _plant_corrupt_blob(root)
    out = root.harvest()
    subprocess.run(["rm", "-rf", str(root.path / "tmp" / "logist-scratch")], check=True)
    done = root.run(WRITE_BACK, BRANCH, out.commit, "j1", name="write-back")
    assert done.returncode == 0, done.stderr.decode()
    assert "removed, the next step finds none" in done.stderr.decode()
    assert not (root.ws / ".git").exists()
    assert (root.ws / "n1").read_text() == "x1\n"  # the files stay


def test_a_shallow_workspace_with_over_5000_refs_stays_shallow_after_the_write_back(root):
    """The step's own refs (over 5,000) went in before the fetch, which then said no shallow
    roots: the next step's git log failed (red team, 12-06)."""
    _shallow(root)
    head = git(root.ws, "rev-parse", "HEAD").strip()
    packed = "".join(f"{head} refs/heads/b{i}\n" for i in range(6000))
    (root.ws / ".git" / "packed-refs").write_text(packed)
    (root.ws / "w.txt").write_text("w\n")
    root.harvest(write_back=True)
    assert set((root.ws / ".git" / "shallow").read_text().split()) == {root.base}
    assert git(root.ws, "rev-list", "--count", "HEAD").strip() == "2"


def test_refs_skipped_for_missing_objects_are_named_ten_times_then_counted(root):
    """50,000 refs naming missing objects made ~1,100 warning lines a harvest (red team)."""
    gone = "0123456789abcdef0123456789abcdef01234567"
    packed = "".join(f"{gone} refs/heads/gone{i:03}\n" for i in range(25))
    (root.ws / ".git" / "packed-refs").write_text(packed)
    out = root.harvest()
    skipped = [w for w in out.warnings if w.startswith("skipped ")]
    assert len(skipped) == 11, out.warnings
    assert skipped[-1] == "skipped 15 more refs: their objects are missing"


def test_a_steps_git_that_can_be_neither_replaced_nor_removed_is_said_to_the_host(root):
    """Both write-backs failed and the step's .git stayed (a root step's sticky directories of
    another uid: red team, 12-06); the harvest only warned and the next step met its hooks.
    Now the answer says so (``git-kept``), whatever kept it (here an immutable .git)."""
    (root.ws / "w.txt").write_text("w\n")
    subprocess.run(["chattr", "+i", str(root.ws / ".git")], check=True)
    try:
        out = root.harvest(write_back=True)
        alone = root.run(WRITE_BACK, BRANCH, out.commit, "j1", name="write-back")
    finally:
        subprocess.run(["chattr", "-i", str(root.ws / ".git")], check=True)
    assert out.git_kept and out.commit
    assert alone.returncode != 0
    assert "w.txt" in files_of(root.fetched(out), out.commit)


def test_a_harvest_that_replaced_the_git_does_not_say_it_was_kept(root):
    out = root.harvest(write_back=True)
    assert not out.git_kept


def test_a_nested_repository_under_a_committed_gitlink_runs_nothing_of_its_own_at_the_top(root):
    """Step 1 commits a gitlink to a repository it made in the workspace, with an fsmonitor:
    the next step's top-level git status ran it (red team, 12-06). The written-back config
    has git look at such a repository's HEAD only."""
    marker = root.path.parent / "FSMONITOR-RAN"
    sub = nested_repo(root, "s.txt")
    monitor = sub / ".git" / "fsm.sh"
    monitor.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    monitor.chmod(0o755)
    git(sub, "config", "core.fsmonitor", str(monitor))
    git(root.ws, "add", "sub")
    git(root.ws, "commit", "-qm", "gitlink")
    out = root.harvest(write_back=True)
    assert out.warnings == [], out.warnings
    for args in (["status"], ["diff"], ["commit", "-qam", "x", "--allow-empty"], ["stash"]):
        git(root.ws, *args)
    assert not marker.exists()
    assert (sub / ".git" / "fsm.sh").exists()  # the nested repository itself is kept


def test_a_gitignore_or_gitattributes_that_is_a_fifo_does_not_hold_the_harvest(root):
    """git add opened a FIFO named .gitattributes and waited until the harvest's deadline
    (300 s), the step's work refused (red team, 12-06). Set aside and put back, like a nested
    repository's .git."""
    (root.ws / "lib" / "w.txt").write_text("w\n")
    os.mkfifo(root.ws / ".gitattributes")
    os.mkfifo(root.ws / "lib" / ".gitignore")
    out = root.harvest(write_back=True)
    assert "lib/w.txt" in files_of(root.fetched(out), out.commit)
    assert stat.S_ISFIFO(os.lstat(root.ws / ".gitattributes").st_mode)
    assert stat.S_ISFIFO(os.lstat(root.ws / "lib" / ".gitignore").st_mode)
    assert not [p for p in root.ws.rglob("*logist-hidden*")]


KILLED = "00000000deadbeef"  # a harvest's nonce that never answered


def _nested_set_aside(root) -> Path:
    """A nested repository whose .git a killed harvest set aside under its nonce."""
    sub = nested_repo(root, "code.txt")
    (sub / ".git").rename(sub / f".git.logist-hidden-{KILLED}")
    return sub


def test_a_nested_repository_a_killed_harvest_set_aside_is_put_back_by_the_next(root):
    sub = _nested_set_aside(root)
    out = root.harvest(write_back=True, unfinished=f"0123456789abcdef {KILLED}")
    assert (sub / ".git").is_dir() and not (sub / f".git.logist-hidden-{KILLED}").exists()
    assert out.aside == []
    assert git(sub, "log", "--format=%s").strip() == "nested"
    names = git(root.ws, "ls-tree", "-r", "--name-only", out.commit).split()
    assert "sub/code.txt" in names and not [n for n in names if "logist-hidden" in n], names


def test_what_a_killed_harvest_set_aside_stays_out_of_the_harvest_when_its_name_is_taken(root):
    sub = _nested_set_aside(root)
    git(sub, "init", "-q")  # a new .git where the old one was
    out = root.harvest(unfinished=KILLED)
    assert (sub / f".git.logist-hidden-{KILLED}").is_dir()
    assert out.aside == [KILLED]  # the host keeps its nonce for the next harvest
    names = git(root.path / "tmp" / "logist-scratch", "ls-tree", "-r", "--name-only", out.commit)
    names = names.split()
    assert not [n for n in names if "logist-hidden" in n], names


def test_names_of_a_nonce_not_given_are_the_steps_own_files(root):
    (root.ws / "notes.logist-hidden-ffffffffffffffff").write_text("mine\n")
    out = root.harvest(unfinished=KILLED)
    names = git(root.path / "tmp" / "logist-scratch", "ls-tree", "-r", "--name-only", out.commit)
    assert "notes.logist-hidden-ffffffffffffffff" in names.split()


def test_a_blob_the_step_deleted_from_its_repository_is_whole_again_after_the_write_back(root):
    """The write-back's fetch sends only what the step's objects lack from what they claim to
    hold (red team): a blob the step deleted under them was never sent again."""
    (root.ws / "work.txt").write_text("work\n")
    blob = git(root.ws, "rev-parse", "HEAD:README.md").strip()
    (root.ws / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
    out = root.harvest(write_back=True)
    assert any("made again from the harvest alone" in w for w in out.warnings), out.warnings
    assert git(root.ws, "show", "HEAD:README.md") == "hello\n"
    git(root.ws, "fsck", "--strict", "--no-dangling")


def test_packs_the_step_deleted_are_whole_again_after_the_write_back(root):
    first = root.harvest(write_back=True)
    git(root.ws, "repack", "-a", "-d", "-q")
    (root.ws / "more.txt").write_text("more\n")
    for pack in (root.ws / ".git" / "objects" / "pack").iterdir():
        pack.unlink()
    out = root.harvest(write_back=True, previous=first.commit)
    assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit
    assert git(root.ws, "show", "HEAD:lib/a.txt") == "a\n"
    git(root.ws, "fsck", "--strict", "--no-dangling")


def test_an_annotated_tag_keeps_the_steps_other_branches_and_tags(root):
    """ls-remote also lists the tag peeled ("refs/tags/v2^{}"): the harvest took that line for
    a ref, every kept ref then clashed, and the write-back dropped the step's branches and
    tags (red team)."""
    git(root.ws, "branch", "side")
    git(root.ws, "tag", "-a", "-m", "release", "v2")
    git(root.ws, "tag", "light")
    out = root.harvest(write_back=True)
    assert not [w for w in out.warnings if "clash" in w], out.warnings
    assert {"refs/logist/j1/heads/side", "refs/logist/j1/tags/v2"} <= set(out.refs)
    assert "refs/logist/j1/tags/light" in out.refs
    assert git(root.ws, "tag").split() == ["light", "v2"]
    assert "side" in git(root.ws, "branch", "--format=%(refname:short)").split()
    assert git(root.ws, "cat-file", "-t", "v2").strip() == "tag"


def test_an_alternates_chain_of_the_steps_to_a_fifo_does_not_hold_the_harvest(root):
    """git follows a repository's objects/info/alternates, and theirs: a chain from the step's
    objects to a FIFO held the harvest until its deadline (red team)."""
    evil = root.ws / "evil" / "objects"
    (evil / "info").mkdir(parents=True)
    os.mkfifo(evil / "info" / "alternates")
    (root.ws / ".git" / "objects" / "info" / "alternates").write_text(f"{evil}\n")
    (root.ws / "work.txt").write_text("work\n")
    started = time.monotonic()
    out = root.harvest(write_back=True)
    assert time.monotonic() - started < 20
    assert "work.txt" in git(root.ws, "ls-tree", "--name-only", out.commit).split()
    assert not (root.ws / ".git" / "objects" / "info" / "alternates").exists()


def test_a_step_branch_named_like_gits_default_head_is_written_back(root):
    """The write-back's new repository starts with git's own HEAD (refs/heads/master): its fetch
    refused to update that branch, and the step's .git was removed (red team)."""
    git(root.ws, "branch", "master")
    (root.ws / "a.txt").write_text("a\n")
    out = root.harvest(write_back=True)
    assert not out.warnings, out.warnings
    assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit
    assert "master" in git(root.ws, "branch", "--format=%(refname:short)").split()


def test_commits_on_the_job_branch_stay_when_the_steps_head_went_elsewhere(root):
    """The step committed on the job branch, then checked out another branch (or left a rebase
    mid-way): its commit was kept only as a kept ref, which the next harvest overwrote (red
    team). It is now a parent of the harvest."""
    (root.ws / "work.txt").write_text("important\n")
    git(root.ws, "add", "work.txt")
    git(root.ws, "commit", "-qm", "agent work")
    work = git(root.ws, "rev-parse", "HEAD").strip()
    git(root.ws, "checkout", "-q", "-b", "scratch", "HEAD~1")
    out = root.harvest(write_back=True)
    git(root.ws, "merge-base", "--is-ancestor", work, out.commit)
    assert git(root.ws, "rev-parse", "HEAD").strip() == out.commit


def test_a_step_branch_the_job_branch_is_under_is_skipped_alone(root):
    """A branch named "logist" (the job branch is logist/<id>) clashed with it, and every kept
    ref, tag and the stash were dropped (red team)."""
    git(root.ws, "checkout", "-q", "-b", "tmp")
    git(root.ws, "branch", "-D", BRANCH)
    git(root.ws, "branch", "logist")
    git(root.ws, "tag", "-a", "-m", "t", "keeptag")
    out = root.harvest(write_back=True)
    assert "refs/logist/j1/heads/tmp" in out.refs and "refs/logist/j1/tags/keeptag" in out.refs
    assert [w for w in out.warnings if "clashes" in w] == [
        f"skipped refs/heads/logist: it clashes with the job branch {BRANCH}"
    ]
    assert "keeptag" in git(root.ws, "tag").split()


def test_a_submodules_repository_and_its_commits_survive_the_write_back(root, tmp_path):
    """The submodule's repository lives in .git/modules: the write-back replaced .git and its
    commits were gone for the next step (red team)."""
    lib = make_repo(tmp_path / "lib", {"s.txt": "s\n"})
    git(root.ws, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "mysub")
    git(root.ws, "commit", "-qm", "add the submodule")
    (root.ws / "mysub" / "w.txt").write_text("agent work\n")
    git(root.ws / "mysub", "add", "w.txt")
    git(root.ws / "mysub", "commit", "-qm", "work in the submodule")
    root.harvest(write_back=True)
    assert git(root.ws / "mysub", "log", "-1", "--format=%s").strip() == "work in the submodule"
    assert (root.ws / ".git" / "modules" / "mysub").is_dir()


def test_the_stash_is_still_a_list_after_the_write_back(root):
    """The written-back refs/stash had no reflog: git stash list was empty and pop failed."""
    (root.ws / "README.md").write_text("stashed\n")
    git(root.ws, "stash", "-q")
    root.harvest(write_back=True)
    assert len(git(root.ws, "stash", "list").splitlines()) == 1
    git(root.ws, "stash", "pop", "-q")
    assert (root.ws / "README.md").read_text() == "stashed\n"


def test_a_set_aside_git_under_a_directory_named_like_logists_is_put_back(root):
    """The walk that puts names back stopped at any name like logist's (a step's directory
    "x.logist-hidden-aaaa"), so a .git set aside below it stayed, and went into the branch
    as files once its nonce was forgotten (red team)."""
    (root.ws / "x.logist-hidden-aaaa").mkdir()
    sub = root.ws / "x.logist-hidden-aaaa" / "sub"
    sub.mkdir()
    git(sub, "init", "-q")
    (sub / ".git").rename(sub / f".git.logist-hidden-{KILLED}")
    out = root.harvest(write_back=True, unfinished=KILLED)
    assert (sub / ".git").is_dir() and out.aside == []


def test_a_file_git_cannot_convert_to_its_encoding_loses_no_other_change(root):
    """``git add`` dies (its index unwritten) on a file whose working-tree-encoding it cannot
    apply: every uncommitted change was lost and the job still succeeded (red team, 12-06).
    Each other change is taken, the file as it is, named in a warning."""
    (root.ws / ".gitattributes").write_text("*.rc working-tree-encoding=UTF-16LE-BOM\n")
    (root.ws / "app.rc").write_bytes("hi\n".encode("utf-16"))  # converts: taken as UTF-8
    (root.ws / "extra.rc").write_bytes(b"STRINGTABLE2\n")  # odd bytes: git dies on them
    (root.ws / "README.md").write_text("changed\n")
    (root.ws / "feature.c").write_text("new\n")
    (root.ws / "lib" / "a.txt").unlink()
    out = root.harvest(write_back=True)
    files = files_of(root.fetched(out), out.commit)
    assert files["README.md"] == "changed\n" and files["feature.c"] == "new\n"
    assert "lib/a.txt" not in files
    assert files["app.rc"] == "hi\n"
    assert files["extra.rc"] == "STRINGTABLE2\n"  # its bytes, as they are
    assert any("taken as they are" in w and "extra.rc" in w for w in out.warnings), out.warnings
    flags = git(root.ws, "ls-files", "-v").split()
    assert "h" not in flags  # no assume-unchanged entry in what the step gets back


def test_a_second_death_of_git_refuses_the_harvest_rather_than_lose_the_changes(root):
    """Should git die again after the encoded files were taken one by one, nothing is
    committed as if unchanged: the harvest fails (the host keeps the workspace, exit 4)."""
    (root.ws / "README.md").write_text("changed\n")
    wrapper = root.path.parent / "bin"
    wrapper.mkdir()
    real = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True)
    (wrapper / "git").write_text(
        "#!/bin/sh\n"
        'for a; do [ "$a" = add ] && { echo "fatal: simulated" >&2; exit 128; }; done\n'
        f'exec {real.stdout.strip()} "$@"\n'
    )
    (wrapper / "git").chmod(0o755)
    env = {**root.env(), "PATH": f"{wrapper}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["sh", "-c", HARVEST, "harvest", BRANCH, root.base, "m", NONCE, "j1", "", "", ""],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 13, done.stderr.decode()
    assert b"git cannot add the files: fatal: simulated" in done.stderr
    assert b"commit " not in done.stdout


def _staged_but_ignored(root: Root, text: str) -> None:
    """The step's own commit ignores dist/; then it stages dist/app.js with -f, uncommitted."""
    (root.ws / ".gitignore").write_text("dist/\n")
    git(root.ws, "add", ".gitignore")
    git(root.ws, "commit", "-qm", "ignore dist")
    (root.ws / "dist").mkdir()
    (root.ws / "dist" / "app.js").write_text(text)
    git(root.ws, "add", "-f", "dist/app.js")


def test_a_file_the_step_staged_though_ignored_is_taken(root):
    """``git add -f`` of an ignored file, not committed: the harvest's index starts from the
    last harvest's tree, so add -A took it for an ignored untracked file and dropped it
    (red team, 12-06)."""
    _staged_but_ignored(root, "bundle\n")
    out = root.harvest(write_back=True)
    files = files_of(root.fetched(out), out.commit)
    assert files["dist/app.js"] == "bundle\n" and files[".gitignore"] == "dist/\n"
    assert git(root.ws, "ls-files", "--", "dist/app.js").strip() == "dist/app.js"


def test_a_file_the_step_staged_though_ignored_over_the_size_limit_is_refused(root):
    _staged_but_ignored(root, "x" * 64)
    done = root.run(HARVEST, BRANCH, root.base, "m", NONCE, "j1", "", "32", "")
    assert done.returncode == TOO_BIG, done.stderr.decode()
    assert b"too-big 64 dist/app.js" in done.stderr


UTF16 = "working-tree-encoding=UTF-16"


def test_a_file_git_refuses_is_never_read_through_a_link_to_outside_the_workspace(root):
    """The as-is fallback hashed ``l/f`` through ``l -> /elsewhere`` (git refuses a path beyond
    a link; the fallback read it anyway): a file outside the workspace in the job branch
    (red team, 12-06)."""
    outside = root.path.parent / "elsewhere"
    outside.mkdir()
    (outside / "f").write_text("secret\n")
    (root.ws / "l").mkdir()
    (root.ws / "l" / "f").write_text("mine\n")
    git(root.ws, "add", "l")
    git(root.ws, "commit", "-qm", "l")
    subprocess.run(["rm", "-rf", str(root.ws / "l")], check=True)
    (root.ws / "l").symlink_to(outside)
    (root.ws / ".gitattributes").write_text(f"l/** {UTF16}\nbad.txt {UTF16}\n")
    (root.ws / ".gitignore").write_text("l\n")
    (root.ws / "bad.txt").write_bytes(b"abc")  # git dies on it
    out = root.harvest()
    repo = root.fetched(out)
    blobs = git(repo, "ls-tree", "-r", out.commit)
    assert "secret" not in "".join(files_of(repo, out.commit).values()), blobs
    assert files_of(repo, out.commit)["bad.txt"] == "abc"


def test_no_file_taken_as_it_is_stays_flagged_for_the_next_harvest(root):
    """A file taken as it is, then replaced by a link's path, kept every such file
    assume-unchanged in the helper's index and the step's: a later change to one was lost
    (red team, 12-06)."""
    (root.ws / "a").mkdir()
    (root.ws / "a" / "x").write_text("p\n")
    git(root.ws, "add", "a")
    git(root.ws, "commit", "-qm", "a")
    subprocess.run(["rm", "-rf", str(root.ws / "a")], check=True)
    (root.ws / "a").symlink_to("lib")
    (root.ws / "lib" / "x").write_text("x\n")  # a/x, through the link
    (root.ws / ".gitattributes").write_text(f"a/x {UTF16}\nbad.txt {UTF16}\n")
    (root.ws / "bad.txt").write_bytes(b"abc")
    first = root.harvest(write_back=True)
    assert "h" not in git(root.ws, "ls-files", "-v").split()
    bundle = str(root.path / "out" / first.bundle)  # accepted, as the host would
    git(root.trusted, "fetch", "-q", bundle, f"+{BRANCH}:{BRANCH}")
    (root.ws / ".gitattributes").unlink()
    (root.ws / "bad.txt").write_text("step 2's change\n")
    second = root.harvest(previous=first.commit)
    assert files_of(root.fetched(second), second.commit)["bad.txt"] == "step 2's change\n"


def test_one_file_the_step_staged_though_ignored_that_git_refuses_loses_no_other(root):
    (root.ws / ".gitignore").write_text("dist\n")
    (root.ws / ".gitattributes").write_text(f"dist/z.txt {UTF16}\n")
    git(root.ws, "add", ".gitignore", ".gitattributes")
    git(root.ws, "commit", "-qm", "ignore dist")
    (root.ws / "dist").mkdir()
    (root.ws / "dist" / "app.js").write_text("bundle\n")
    (root.ws / "dist" / "z.txt").write_bytes("z\n".encode("utf-16"))
    git(root.ws, "add", "-f", "dist/app.js", "dist/z.txt")
    (root.ws / "dist" / "z.txt").write_bytes(b"abc")  # no BOM now: git dies on it
    out = root.harvest()
    files = files_of(root.fetched(out), out.commit)
    assert files["dist/app.js"] == "bundle\n" and files["dist/z.txt"] == "abc"


def test_a_file_over_the_size_limit_at_a_path_git_can_still_read_is_refused(root):
    """A path of 4,000 to 4,095 bytes went to the "too long" list before its size was looked
    at: git read it all the same, whatever its size (red team, 12-06)."""
    fd = os.open(root.ws, os.O_RDONLY)
    try:
        for _ in range(19):  # 19 x 201 bytes, then a 200-byte name: a 4,019-byte path
            os.mkdir("a" * 200, dir_fd=fd)
            inner = os.open("a" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        leaf = os.open("f" * 200, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"x" * 64)
        os.close(leaf)
    finally:
        os.close(fd)
    done = root.run(HARVEST, BRANCH, root.base, "m", NONCE, "j1", "", "32", "")
    assert done.returncode == TOO_BIG, done.stderr.decode()
    assert b"too-big 64 " in done.stderr


def test_long_ref_names_keep_the_answer_within_what_the_host_reads(root):
    """1,100 refs of ~1 KB names once pushed the answer past the 1 MiB the host reads, and the
    refs after the cut (and the answer's end) were lost in silence (red team): the refs kept
    are bounded in bytes too, with a warning for the rest."""
    head = git(root.ws, "rev-parse", "HEAD").strip()
    seg = "a" * 240
    lines = [f"{head} refs/heads/{seg}/{seg}/{seg}/{seg}/b{i}\n" for i in range(1000, 2100)]
    with open(root.ws / ".git" / "packed-refs", "a") as fh:
        fh.writelines(lines)
    done = root.run(HARVEST, BRANCH, root.base, "m", NONCE, "j1", "", str(100 << 20), "")
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout) <= MAX_OUTPUT
    out = parse_output(done.stdout, done.stderr)
    assert not out.cut and out.commit
    kept = len(out.refs)
    assert 500 < kept < 1100
    assert any(f"only {kept} branches, tags and stashes are kept" in w for w in out.warnings)
    # the 1,100, the job branch and the clone's own default branch
    assert any(f"; {1102 - kept} more are not" in w for w in out.warnings), out.warnings
    assert out.over == 1102 - kept  # the host keeps the workspace for them


def test_refs_that_clash_with_the_job_branch_are_named_ten_times_then_counted(root):
    """20,000 such refs once flooded the warnings past what the host reads, and the warning
    of the bound after them went unseen (red team)."""
    head = git(root.ws, "rev-parse", "HEAD").strip()
    lines = [f"{head} refs/heads/{BRANCH}/c{i}\n" for i in range(30)]
    with open(root.ws / ".git" / "packed-refs", "a") as fh:
        fh.writelines(lines)
    out = root.harvest()
    clashes = [w for w in out.warnings if "clashes with the job branch" in w]
    assert len(clashes) == 10
    assert "skipped 20 more refs that clash with the job branch" in out.warnings
    assert out.over == 30


def test_ref_names_are_read_as_utf_8_or_counted_never_guessed():
    """A name not UTF-8 was read with U+FFFD (two such names became one), and one holding
    U+2028 or a no-break space was cut or skipped in silence (red team)."""
    answer = (
        b"commit " + b"a" * 40 + b"\n"
        b"ref 1111 refs/logist/j1/heads/ok\n"
        b"ref 2222 refs/logist/j1/heads/bad\xfe\n"
        b"ref 3333 refs/logist/j1/heads/bad\xff\n"
        b"ref 4444 refs/logist/j1/heads/p\xe2\x80\xa9q\n"
        b"ref 5555 refs/logist/j1/heads/nb\xc2\xa0sp\n"
        b"ref 6666 refs/logist/j1/heads/ok\n"
    )
    out = parse_output(answer, b"")
    assert out.unread == 3  # two not UTF-8, one said twice
    assert out.refs == {
        "refs/logist/j1/heads/ok": "1111",
        "refs/logist/j1/heads/p\u2029q": "4444",
        "refs/logist/j1/heads/nb\xa0sp": "5555",
    }


def test_an_answer_longer_than_the_host_reads_is_said_to_be_cut():
    line = b"ref " + b"0" * 40 + b" refs/logist/j1/heads/x\n"
    assert not parse_output(line * 10, b"").cut
    assert parse_output(line * (MAX_OUTPUT // len(line) + 1), b"").cut


def test_kept_refs_that_clash_are_all_counted_with_the_others_left_out(root):
    """A forged packed-refs with ``a`` and ``a/b``: git cannot keep both, so none of the refs
    is kept this time; the count of those not kept adds them to the ones the awk left out
    (a branch ``logist``, which the job branch clashes with), not in their place."""
    head = git(root.ws, "rev-parse", "HEAD").strip()
    names = ["refs/heads/a", "refs/heads/a/b", "refs/heads/logist"]
    with open(root.ws / ".git" / "packed-refs", "a") as fh:
        fh.writelines(f"{head} {name}\n" for name in names)
    out = root.harvest()
    assert "some kept refs clash (a/b and a): only the job branch is kept this time" in (
        out.warnings
    )
    assert out.refs == {}
    # master, the job branch, a and a/b were to be kept; logist was left out before
    assert out.over == 5
