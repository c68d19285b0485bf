"""What a user should know before checking a job's branch out (contract v3, "Bounds"): the
branch, compared with the job's base, adds symlinks pointing outside the repository,
``.gitattributes`` naming filters, or submodules. Read from logist's trusted repository of the
job as data (``diff-tree``, ``cat-file``), never from the workspace; bounded."""

from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path

from logist.gitops import _env

MAX_ENTRIES = 1_000_000  # changed paths looked at (max_tree_paths' default)
MAX_READS = 2_000  # blobs read (links, .gitattributes); past that the rest is said unchecked
MAX_BLOB = 64 << 10  # bytes of a link target read
MAX_ATTRIBUTES = 4 << 20  # bytes of a .gitattributes read (larger: counted as naming a filter)
SHOWN = 3  # paths named per note
TIMEOUT = 120  # seconds of one git command of the scan


class _TimedOut(Exception):
    pass


def scan(repo: Path, base: str, tip: str) -> list[str]:
    """One line per kind of risky content ``tip`` adds over ``base`` (none: [])."""
    try:
        return _scan(repo, base, tip)
    except _TimedOut:
        return ["the branch could not be checked for links out, filters and submodules in time"]


def _scan(repo: Path, base: str, tip: str) -> list[str]:
    links, filters, submodules = [], [], []
    changed, complete = _changed(repo, base, tip)
    symlinks = {p for mode, _o, p in _tree(repo, tip) if mode == "120000"} if changed else set()
    reads = 0
    for mode, oid, path in changed:
        if mode == "120000" or posixpath.basename(path) == ".gitattributes":  # a blob to read
            reads += 1
            if reads > MAX_READS:
                complete = False
                break
        if mode == "160000" or path == ".gitmodules" or path.endswith("/.gitmodules"):
            submodules.append(path)
        elif mode == "120000" and _escapes(path, _blob(repo, oid), symlinks):
            links.append(path)
        elif posixpath.basename(path) == ".gitattributes" and _names_filter(
            _blob(repo, oid, MAX_ATTRIBUTES)
        ):
            filters.append(path)
    notes = []
    if links:
        notes.append(f"the branch adds symlinks pointing outside the repository: {_few(links)}")
    if filters:
        notes.append(f"the branch adds .gitattributes naming filters: {_few(filters)}")
    if submodules:
        notes.append(f"the branch adds submodules: {_few(submodules)}")
    if not complete:
        notes.append(
            "the branch adds too many paths, links or .gitattributes to check them all for "
            "links out, filters and submodules"
        )
    return notes


def _tree(repo: Path, tip: str) -> list[tuple[str, str, str]]:
    """(mode, oid, path) of the tip's tree (at most ``MAX_ENTRIES``)."""
    out = _git(repo, "ls-tree", "-r", "-z", "--full-tree", "--end-of-options", tip)
    entries = []
    for item in out.split(b"\0")[:MAX_ENTRIES]:
        meta, _, path = item.partition(b"\t")
        parts = meta.split(b" ")
        if len(parts) == 3:
            entries.append((parts[0].decode(), parts[2].decode(), path.decode(errors="replace")))
    return entries


def _few(paths: list[str]) -> str:
    shown = ", ".join(repr(p)[1:-1] for p in paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _git(repo: Path, *args: str) -> bytes:
    """git's output, or nothing when it fails; ``_TimedOut`` past ``TIMEOUT``."""
    try:
        proc = subprocess.run(
            ["git", "-c", "core.hooksPath=/dev/null", f"--git-dir={repo}", *args],
            capture_output=True,
            env=_env(isolated=True),
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise _TimedOut from None
    return proc.stdout if proc.returncode == 0 else b""


def _changed(repo: Path, base: str, tip: str) -> tuple[list[tuple[str, str, str]], bool]:
    """(new mode, new oid, path) of every path ``tip`` adds or changes over ``base`` (at most
    ``MAX_ENTRIES``), and whether that is all of them."""
    out = _git(repo, "diff-tree", "-r", "-z", "--no-renames", "--end-of-options", base, tip)
    fields = out.split(b"\0")
    changed = []
    for i in range(0, len(fields) - 1, 2):
        meta, path = fields[i].split(b" "), fields[i + 1]
        if len(meta) < 5 or meta[4].startswith(b"D"):
            continue
        if len(changed) >= MAX_ENTRIES:
            return changed, False
        changed.append((meta[1].decode(), meta[3].decode(), path.decode(errors="replace")))
    return changed, True


def _blob(repo: Path, oid: str, limit: int = MAX_BLOB) -> bytes | None:
    """The blob's bytes, or None when it is over ``limit`` (the caller assumes the worst)."""
    size = _git(repo, "cat-file", "-s", oid).strip()
    if not size.isdigit() or int(size) > limit:
        return None
    return _git(repo, "cat-file", "blob", oid)


def _escapes(path: str, target: bytes | None, symlinks: set[str] = frozenset()) -> bool:
    """Whether a link at ``path`` to ``target`` may point outside the repository: an absolute
    or empty target, one that climbs out, or one that passes through another link of the
    tree (resolved only at checkout: counted as out)."""
    if target is None:
        return True
    text = target.decode(errors="replace")
    if text.startswith("/") or not text:
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), text))
    if joined == ".." or joined.startswith("../"):
        return True
    here = posixpath.dirname(path)
    for part in text.split("/"):
        here = posixpath.normpath(posixpath.join(here, part)) if part else here
        if here in symlinks and here != path:
            return True
    return False


def _names_filter(text: bytes | None) -> bool:
    if text is None:  # too large to read: it may name one
        return True
    for line in text.decode(errors="replace").splitlines():
        words = line.split()[1:] if not line.lstrip().startswith("#") else []
        if any(w.startswith("filter=") or w == "filter" for w in words):
            return True
    return False
