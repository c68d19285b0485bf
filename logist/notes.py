"""What a user should know before checking a job's branch out (contract v3, "Bounds"): the
branch, compared with the job's base, adds symlinks pointing outside the repository,
``.gitattributes`` naming filters, or submodules. Read from logist's trusted repository of the
job as data (``diff-tree``, ``cat-file``), never from the workspace; bounded."""

from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path

from logist.gitops import _env

MAX_ENTRIES = 100_000  # changed paths looked at
MAX_BLOB = 64 << 10  # bytes of a link target or a .gitattributes read
SHOWN = 3  # paths named per note


def scan(repo: Path, base: str, tip: str) -> list[str]:
    """One line per kind of risky content ``tip`` adds over ``base`` (none: [])."""
    links, filters, submodules = [], [], []
    for mode, oid, path in _changed(repo, base, tip):
        if mode == "160000" or path == ".gitmodules" or path.endswith("/.gitmodules"):
            submodules.append(path)
        elif mode == "120000" and _escapes(path, _blob(repo, oid)):
            links.append(path)
        elif posixpath.basename(path) == ".gitattributes" and _names_filter(_blob(repo, oid)):
            filters.append(path)
    notes = []
    if links:
        notes.append(f"the branch adds symlinks pointing outside the repository: {_few(links)}")
    if filters:
        notes.append(f"the branch adds .gitattributes naming filters: {_few(filters)}")
    if submodules:
        notes.append(f"the branch adds submodules: {_few(submodules)}")
    return notes


def _few(paths: list[str]) -> str:
    shown = ", ".join(repr(p)[1:-1] for p in paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _git(repo: Path, *args: str, input: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", f"--git-dir={repo}", *args],
        input=input,
        capture_output=True,
        env=_env(isolated=True),
        timeout=120,
    )
    return proc.stdout if proc.returncode == 0 else b""


def _changed(repo: Path, base: str, tip: str) -> list[tuple[str, str, str]]:
    """(new mode, new oid, path) of every path ``tip`` adds or changes over ``base``."""
    out = _git(repo, "diff-tree", "-r", "-z", "--no-renames", "--end-of-options", base, tip)
    fields = out.split(b"\0")
    changed = []
    for i in range(0, len(fields) - 1, 2):
        meta, path = fields[i].split(b" "), fields[i + 1]
        if len(meta) < 5 or meta[4].startswith(b"D"):
            continue
        changed.append((meta[1].decode(), meta[3].decode(), path.decode(errors="replace")))
        if len(changed) >= MAX_ENTRIES:
            break
    return changed


def _blob(repo: Path, oid: str) -> bytes:
    size = _git(repo, "cat-file", "-s", oid).strip()
    if not size.isdigit() or int(size) > MAX_BLOB:
        return b"/"  # a link target this long is no path inside the repository
    return _git(repo, "cat-file", "blob", oid)


def _escapes(path: str, target: bytes) -> bool:
    """Whether a link at ``path`` to ``target`` points outside the repository."""
    text = target.decode(errors="replace")
    if text.startswith("/") or not text:
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), text))
    return joined == ".." or joined.startswith("../")


def _names_filter(text: bytes) -> bool:
    for line in text.decode(errors="replace").splitlines():
        words = line.split()[1:] if not line.lstrip().startswith("#") else []
        if any(w.startswith("filter=") or w == "filter" for w in words):
            return True
    return False
