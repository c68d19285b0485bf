"""What a user should know before checking a job's branch out (contract v3, "Bounds"): the
branch, compared with the job's base, adds symlinks pointing outside the repository,
``.gitattributes`` naming filters, or submodules. Read from logist's trusted repository of the
job as data (``diff-tree``, ``cat-file``), never from the workspace; bounded."""

from __future__ import annotations

import posixpath
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from logist.bounds import Bounds
from logist.gitops import _env

MAX_ENTRIES = 1_000_000  # changed paths looked at (max_tree_paths' default)
MAX_READS = 2_000  # blobs read (links, .gitattributes); past that the rest is said unchecked
MAX_BLOB = 64 << 10  # bytes of a link target read
MAX_ATTRIBUTES = 4 << 20  # bytes of a .gitattributes read (larger: counted as naming a filter)
SHOWN = 3  # paths named per note
TIMEOUT = 120  # seconds of one git command of the scan
MAX_KEPT = 64 << 20  # bytes of the paths kept from git's listings (only the ones looked at)
MAX_RECORD = 1 << 20  # bytes of one entry of a listing (a path longer: the rest unchecked)
_LOOKED_AT = (b".gitattributes", b".gitmodules")  # names of changed files the scan reads


class _TimedOut(Exception):
    pass


class _Unchecked(Exception):
    """A listing past its bounds (or one git could not finish): the rest is not looked at."""


def scan(repo: Path, base: str, tip: str, bounds: Bounds | None = None) -> list[str]:
    """One line per kind of risky content ``tip`` adds over ``base`` (none: []). git's
    listings are read as they come, keeping only the entries looked at (bounded), under
    ``bounds.git_memory`` when given."""
    try:
        return _scan(repo, base, tip, bounds)
    except _TimedOut:
        return ["the branch could not be checked for links out, filters and submodules in time"]


def _scan(repo: Path, base: str, tip: str, bounds: Bounds | None) -> list[str]:
    links, filters, submodules = [], [], []
    changed, complete = _changed(repo, base, tip, bounds)
    symlinks, whole = _symlinks(repo, tip, bounds) if changed else (set(), True)
    complete = complete and whole
    reads, deadline = 0, time.monotonic() + TIMEOUT  # the reads below, all of them
    named: dict[str, bool] = {}  # a .gitattributes blob read once, however many paths share it
    for mode, oid, path in changed:
        if time.monotonic() > deadline:
            raise _TimedOut
        attributes = posixpath.basename(path) == ".gitattributes" and mode != "160000"
        if mode == "120000" or (attributes and oid not in named):  # a blob to read
            reads += 1
            if reads > MAX_READS:
                complete = False
                break
        if mode == "160000" or path == ".gitmodules" or path.endswith("/.gitmodules"):
            submodules.append(path)
        elif mode == "120000" and _escapes(path, _blob(repo, oid), symlinks):
            links.append(path)
        elif attributes:
            if oid not in named:
                named[oid] = _names_filter(_blob(repo, oid, MAX_ATTRIBUTES))
            if named[oid]:
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


def _symlinks(repo: Path, tip: str, bounds: Bounds | None) -> tuple[set[str], bool]:
    """The paths of the tip's symlinks, and whether that is all of them."""
    links: set[str] = set()
    kept = 0
    try:
        for item in _records(repo, bounds, "ls-tree", "-r", "-z", "--full-tree",
                             "--end-of-options", tip):  # fmt: skip
            meta, _, path = item.partition(b"\t")
            if meta.startswith(b"120000 "):
                kept += len(path)
                if kept > MAX_KEPT or len(links) >= MAX_ENTRIES:
                    return links, False
                links.add(path.decode(errors="replace"))
    except _Unchecked:
        return links, False
    return links, True


def _few(paths: list[str]) -> str:
    shown = ", ".join(repr(p)[1:-1] for p in paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _git(repo: Path, *args: str) -> bytes:
    """A small output of git (a size, a blob already sized), or nothing when it fails;
    ``_TimedOut`` past ``TIMEOUT``."""
    try:
        proc = subprocess.run(
            _argv(repo, *args),
            capture_output=True,
            env=_env(isolated=True),
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise _TimedOut from None
    return proc.stdout if proc.returncode == 0 else b""


def _argv(repo: Path, *args: str) -> list[str]:
    return ["git", "-c", "core.hooksPath=/dev/null", f"--git-dir={repo}", *args]


def _records(repo: Path, bounds: Bounds | None, *args: str) -> Iterator[bytes]:
    """git's NUL-separated output, one entry at a time as it comes (never all of it held);
    ``_TimedOut`` past ``TIMEOUT``, ``_Unchecked`` for an entry over ``MAX_RECORD`` or a git
    that failed (its memory bound, say)."""
    from logist.intake import bounded

    argv = _argv(repo, *args)
    proc = subprocess.Popen(
        bounded(argv, bounds) if bounds is not None else argv,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(isolated=True),
    )  # fmt: skip
    expired = threading.Event()
    timer = threading.Timer(TIMEOUT, lambda: (expired.set(), proc.kill()))
    timer.start()
    try:
        assert proc.stdout is not None
        rest = b""
        while chunk := proc.stdout.read(1 << 16):
            *done, rest = (rest + chunk).split(b"\0")
            yield from done
            if len(rest) > MAX_RECORD:
                raise _Unchecked
        if proc.wait() != 0:
            raise _TimedOut if expired.is_set() else _Unchecked
        if rest:
            yield rest
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def _changed(
    repo: Path, base: str, tip: str, bounds: Bounds | None
) -> tuple[list[tuple[str, str, str]], bool]:
    """(new mode, new oid, path) of each path ``tip`` adds or changes over ``base`` that the
    scan looks at (links, submodules, ``.gitattributes``, ``.gitmodules``; bounded), and
    whether that is all of them."""
    changed: list[tuple[str, str, str]] = []
    kept = 0
    records = _records(repo, bounds, "diff-tree", "-r", "-z", "--no-renames",
                       "--end-of-options", base, tip)  # fmt: skip
    try:
        for meta_raw in records:
            path = next(records, None)
            meta = meta_raw.split(b" ")
            if path is None or len(meta) < 5 or meta[4].startswith(b"D"):
                continue
            name = posixpath.basename(path)
            if meta[1] not in (b"120000", b"160000") and name not in _LOOKED_AT:
                continue
            kept += len(path)
            if kept > MAX_KEPT or len(changed) >= MAX_ENTRIES:
                return changed, False
            changed.append((meta[1].decode(), meta[3].decode(), path.decode(errors="replace")))
    except _Unchecked:
        return changed, False
    finally:
        records.close()
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
    if b"filter" not in text:
        return False
    for line in text.split(b"\n"):  # lines as git reads them (not at every "\r")
        words = line.split()[1:] if not line.lstrip().startswith(b"#") else []
        if any(w.startswith(b"filter=") or w == b"filter" for w in words):
            return True
    return False
