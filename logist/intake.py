"""Untrusted bundles into a trusted repository, bounded (contract v3, "Bounds").

A harvest's bundle is data a step could have shaped. Its header is parsed here (bounded); its
pack is indexed by ``git index-pack --strict`` into a QUARANTINE (an object directory of its
own, the trusted repository as its alternate, as ``receive-pack`` does) under a memory bound and
a deadline; there every new object's expanded size and every new commit's path count are
checked; only then does the pack move into the trusted repository. A refusal leaves nothing
there: the quarantine goes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from logist.bounds import Bounds, size_text
from logist.errors import GitError
from logist.gitops import _env, is_oid

MAX_BUNDLE_HEADER = 1 << 20
_PRLIMIT = "/usr/bin/prlimit"


def bounded(argv: list[str], bounds: Bounds) -> list[str]:
    """``argv`` under the address-space bound of host git over untrusted data (``prlimit``
    from util-linux: no ``preexec_fn`` in a threaded process)."""
    prlimit = _PRLIMIT if os.access(_PRLIMIT, os.X_OK) else shutil.which("prlimit")
    if prlimit is None:
        return argv
    return [prlimit, f"--as={bounds.git_memory}", "--", *argv]


def _run(argv: list[str], bounds: Bounds, env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    """A bounded host git process; a deadline exceeded is a ``GitError``."""
    try:
        return subprocess.run(
            bounded(argv, bounds), env=env, capture_output=True, timeout=bounds.git_deadline, **kw
        )
    except subprocess.TimeoutExpired:
        raise GitError(argv[1:3], f"over git_deadline {bounds.git_deadline:g}s") from None


def object_types(repo: Path, oids: list[str], bounds: Bounds) -> dict[str, str]:
    """``{oid: type}`` of those of ``oids`` (each a full object name) the trusted ``repo``
    has: one ``git cat-file --batch-check`` for all of them, not a process each (a step can
    hand back thousands of refs)."""
    wanted = {oid for oid in oids if is_oid(oid)}
    if not wanted:
        return {}
    argv = ["git", f"--git-dir={repo}", "cat-file", "--batch-check=%(objectname) %(objecttype)"]
    asked = "".join(f"{oid}\n" for oid in wanted).encode()
    proc = _run(argv, bounds, _env(isolated=True), input=asked)
    if proc.returncode != 0:
        raise GitError(["cat-file"], proc.stderr.decode(errors="replace"))
    types: dict[str, str] = {}
    for line in proc.stdout.decode("ascii", errors="replace").splitlines():
        oid, _, kind = line.partition(" ")
        if kind != "missing" and oid in wanted:  # "OID missing" for one it lacks
            types[oid] = kind
    return types


def read_header(fh) -> tuple[dict[str, str], int]:
    """The refs of a v2/v3 bundle's header (``{name: oid}``) and its length in bytes."""
    first = fh.readline(64)
    if first not in (b"# v2 git bundle\n", b"# v3 git bundle\n"):
        raise GitError(["bundle"], "not a git bundle (v2 or v3)")
    refs: dict[str, str] = {}
    read = len(first)
    while True:
        line = fh.readline(MAX_BUNDLE_HEADER)
        read += len(line)
        if not line.endswith(b"\n") or read > MAX_BUNDLE_HEADER:
            raise GitError(["bundle"], "bundle header too long or cut short")
        text = line[:-1].decode("ascii", errors="replace")
        if text == "":
            return refs, read
        if text.startswith(("@", "-")):  # capabilities, prerequisites (checked by git)
            if text.startswith("@") and text not in ("@object-format=sha1",):
                raise GitError(["bundle"], f"unexpected bundle capability {text[:60]!r}")
            continue
        oid, _, name = text.partition(" ")
        if not is_oid(oid) or not (name == "HEAD" or name.startswith("refs/")):
            raise GitError(["bundle"], "malformed bundle ref line")
        refs[name] = oid


def index_bundle(repo: Path, bundle: Path, bounds: Bounds | None = None) -> dict[str, str]:
    """Take the objects of an UNTRUSTED bundle into the trusted ``repo`` once they pass
    ``git index-pack --strict`` (every object fsck'd, ``.gitmodules`` included, every link
    resolved) and ``bounds`` (bundle size, object size, paths per commit), checked in a
    quarantine. Returns the bundle's refs as ``{name: oid}``; sets no ref.

    Raises:
        GitError: the bundle failed a check (its message names the bound and its value).
    """
    bounds = bounds or Bounds()
    size = os.path.getsize(bundle)
    if size > bounds.max_result_size:
        raise GitError(
            ["bundle"],
            f"the bundle is {size_text(size)}, over max_result_size "
            f"{size_text(bounds.max_result_size)}",
        )
    objects = repo / "objects"
    quarantine = Path(tempfile.mkdtemp(prefix="incoming-", dir=objects))
    try:
        (quarantine / "pack").mkdir()
        env = {
            **_env(isolated=True),
            "GIT_OBJECT_DIRECTORY": str(quarantine),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects),
        }
        with open(bundle, "rb") as fh:
            refs, header = read_header(fh)
            os.lseek(fh.fileno(), header, os.SEEK_SET)  # the fd at the pack (reads were buffered)
            argv = ["git", f"--git-dir={repo}", "-c", "core.hooksPath=/dev/null"]
            argv += ["index-pack", "--strict", "--fix-thin", "--stdin"]
            proc = _run(argv, bounds, env, stdin=fh)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            if proc.returncode < 0 or "out of memory" in err or "Cannot allocate" in err:
                err = f"over git_memory {size_text(bounds.git_memory)} ({err[-200:]})"
            raise GitError(["index-pack", "--strict"], err)
        check(repo, quarantine, bounds)
        for pack in sorted((quarantine / "pack").iterdir(), key=lambda p: p.suffix != ".pack"):
            os.replace(pack, objects / "pack" / pack.name)  # .pack before its .idx
    finally:
        shutil.rmtree(quarantine, ignore_errors=True)
    return refs


def check(repo: Path, quarantine: Path, bounds: Bounds) -> None:
    """Every object in ``quarantine``: at most ``max_object_size`` expanded; every commit's
    tree there, and every tree there (a ref's or a tag's target), at most ``max_tree_paths``
    paths. Raises ``GitError`` naming the bound."""
    own = {**_env(isolated=True), "GIT_OBJECT_DIRECTORY": str(quarantine)}
    fmt = "--batch-check=%(objectname) %(objecttype) %(objectsize)"
    argv = ["git", f"--git-dir={repo}", "cat-file", "--batch-all-objects", fmt]
    proc = _run(argv, bounds, own)
    commits: list[str] = []
    trees: list[str] = []
    for line in proc.stdout.decode("ascii", errors="replace").splitlines():
        oid, kind, size = line.split(" ")
        if int(size) > bounds.max_object_size:
            raise GitError(
                ["bundle"],
                f"object {oid} is {size_text(int(size))} expanded, over max_object_size "
                f"{size_text(bounds.max_object_size)}",
            )
        if kind == "commit":
            commits.append(oid)
        elif kind == "tree":  # a tree may be a ref's or a tag's target too, not a commit's
            trees.append(oid)
    if proc.returncode != 0:
        raise GitError(["cat-file"], proc.stderr.decode(errors="replace"))
    if not (commits or trees):
        return
    env = {**own, "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(repo / "objects")}
    with _Objects(repo, env, bounds) as objects:
        counter = PathCounter(objects.tree_entries, bounds.max_tree_paths)
        roots = [(f"commit {c}", objects.commit_tree(c)) for c in commits]
        for what, tree in [*roots, *((f"tree {t}", t) for t in trees)]:
            if counter.count(tree) > bounds.max_tree_paths:
                raise GitError(
                    ["bundle"],
                    f"{what} has over {bounds.max_tree_paths:,} paths in its tree (max_tree_paths)",
                )


def tree_paths(repo: Path, commit: str, bounds: Bounds) -> int:
    """Paths in ``commit``'s tree in the trusted ``repo`` (a repeated subtree counted every
    time, read once), counted up to just past ``max_tree_paths``."""
    with _Objects(repo, _env(isolated=True), bounds) as objects:
        counter = PathCounter(objects.tree_entries, bounds.max_tree_paths)
        return counter.count(objects.commit_tree(commit))


class PathCounter:
    """Paths in a tree, a repeated subtree counted every time it appears but read once (a
    memo per tree id), and the count cut short once it passes ``limit``."""

    def __init__(self, entries, limit: int) -> None:
        self.entries = entries  # tree oid -> [(mode, oid)]
        self.limit = limit
        self.memo: dict[str, int] = {}

    def count(self, tree: str) -> int:
        pending: dict[str, tuple[int, list[str]]] = {}  # read, waiting for its subtrees
        stack = [tree]
        while stack:
            oid = stack[-1]
            if oid in self.memo:
                stack.pop()
            elif oid in pending:
                stack.pop()
                files, subtrees = pending.pop(oid)
                total = files + sum(self.memo[o] for o in subtrees)
                self.memo[oid] = min(total, self.limit + 1)  # past the limit is all we need
            else:
                children = self.entries(oid)
                subtrees = [o for mode, o in children if _is_tree(mode)]
                pending[oid] = (len(children) - len(subtrees), subtrees)
                stack.extend(o for o in subtrees if o not in self.memo and o not in pending)
        return self.memo[tree]


def _is_tree(mode: bytes) -> bool:
    """A tree entry's mode that git checks out as a directory: ``40000``, and the
    zero-padded ``040000`` git also reads so (a source is cloned without fsck)."""
    try:
        return int(mode, 8) & 0o170000 == 0o040000
    except ValueError:
        return False


class _Objects:
    """Trees and commits read from one ``git cat-file --batch`` (bounded) of the trusted
    repository with the quarantine in front."""

    def __init__(self, repo: Path, env: dict[str, str], bounds: Bounds) -> None:
        argv = ["git", f"--git-dir={repo}", "cat-file", "--batch"]
        self.proc = subprocess.Popen(
            bounded(argv, bounds), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.bounds = bounds

    def __enter__(self) -> _Objects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()

    def _read(self, oid: str, want: str) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(oid.encode() + b"\n")
        self.proc.stdin.flush()
        head = self.proc.stdout.readline().split()
        if len(head) != 3 or head[1] != want.encode():
            raise GitError(["cat-file"], f"{oid} is not a {want} logist has")
        size = int(head[2])
        if size > self.bounds.max_object_size:
            raise GitError(["bundle"], f"{want} {oid} is over max_object_size")
        data = self.proc.stdout.read(size + 1)
        return data[:-1]

    def commit_tree(self, commit: str) -> str:
        first = self._read(commit, "commit").split(b"\n", 1)[0]
        if not first.startswith(b"tree "):
            raise GitError(["cat-file"], f"commit {commit} names no tree")
        return first[5:].decode("ascii")

    def tree_entries(self, tree: str) -> list[tuple[bytes, str]]:
        data, out, i = self._read(tree, "tree"), [], 0
        while i < len(data):
            space, nul = data.find(b" ", i), data.find(b"\0", i)
            if not 0 <= space < nul or nul + 21 > len(data):
                raise GitError(["cat-file"], f"tree {tree} is malformed")
            out.append((data[i:space], data[nul + 1 : nul + 21].hex()))
            i = nul + 21
        return out
