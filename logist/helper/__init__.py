"""The helper container's shell scripts, as files: ``prelude.sh`` (a clean git environment and
``write_back``), ``harvest.sh``, ``write-back.sh``, ``trusted-init.sh``, ``visible.sh`` and
``serve.sh`` (and ``gate.sh``, which the first step's own image runs: logist/gate.py). logist
passes their text to ``sh -c`` in the helper; their paths default to the
container's (``LOGIST_ROOT`` unset), so tests run them with ``sh`` on temporary repositories
(tests/test_helper_scripts.py). And the reading of a harvest's answer, as data."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files

from logist.bounds import size_text
from logist.errors import printable

MAX_OUTPUT = 1 << 20  # bytes of a helper's answer read; the rest is ignored
GIT_KEPT = (
    "the workspace's repository could not be replaced: the step's own .git (its config and "
    "hooks) would reach the next step, so none runs"
)


def script(*names: str) -> str:
    """The text of the named scripts, one after the other."""
    return "".join(files(__name__).joinpath(name).read_text() for name in names)


# one line each, split on "\n" alone and on single spaces (git takes no space, no control
# character in a ref's name; a name's bytes are read as UTF-8 or not at all, never guessed)
_LINE = re.compile(rb"(commit|bundle|ref|aside|over) ([^ ]+)(?: ([^ ]+))?")


@dataclass
class HarvestOutput:
    """What a harvest helper said (untrusted: the host checks every item)."""

    commit: str | None = None
    bundle: str | None = None
    refs: dict[str, str] = field(default_factory=dict)
    written_back: bool = False  # nothing left to do for the workspace's repository
    git_kept: bool = False  # the write-back could neither replace nor remove the step's .git
    aside: list[str] = field(default_factory=list)  # earlier nonces whose names stay set aside
    warnings: list[str] = field(default_factory=list)
    cut: bool = False  # the answer was longer than is read: its end (``git-kept``) unseen
    over: int = 0  # the step's refs the helper did not keep (its bounds, clashes; it warned)
    unread: int = 0  # ``ref`` lines not read: a name not UTF-8, or said twice


def parse_output(stdout: bytes, stderr: bytes) -> HarvestOutput:
    """Read a helper's answer as data: only well-formed lines count."""
    out = HarvestOutput(cut=len(stdout) > MAX_OUTPUT)
    for raw in stdout[:MAX_OUTPUT].split(b"\n"):
        line = raw.strip(b" ")
        if line == b"git-kept":
            out.git_kept = True
        kind, a, b = _fields(line)
        if kind is None or (kind == "ref" and (b is None or b in out.refs)):
            out.unread += line.startswith(b"ref ")
        elif kind == "commit":
            out.commit = a
        elif kind == "bundle":
            out.bundle = a
        elif kind == "aside":
            out.aside.append(a)
        elif kind == "over":
            out.over = int(a) if a.isdigit() and len(a) < 10 else 1
        elif kind == "ref":
            out.refs[b] = a
    err = stderr[:MAX_OUTPUT].decode(errors="replace").split("\n")
    for raw in err:
        if raw.startswith("warning: "):
            out.warnings.append(printable(raw[len("warning: ") :])[:300])
    if len(stderr) > MAX_OUTPUT:
        out.warnings.append("more warnings than the 1 MiB read (the rest is not shown)")
    return out


def _fields(line: bytes) -> tuple[str | None, str, str | None]:
    """An answer line's kind and its one or two words, as text; no kind for anything else."""
    m = _LINE.fullmatch(line)
    if m is None:
        return None, "", None
    try:
        kind, a, b = (x.decode() if x is not None else None for x in m.groups())
    except UnicodeDecodeError:
        return None, "", None
    return kind, a or "", b


def too_big(stderr: bytes, most: int) -> str:
    """The refusal of a file over ``max_object_size``, from the harvest's ``too-big`` line."""
    lines = stderr[:MAX_OUTPUT].decode(errors="replace").splitlines()
    line = next((x for x in lines if x.startswith("too-big ")), "")
    size, _, path = line[len("too-big ") :].partition(" ")
    what = f"{printable(path)[:200]} is {size_text(int(size))}" if size.isdigit() else "a file is"
    return f"{what}, over max_object_size {size_text(most)}: refused before git read it"
