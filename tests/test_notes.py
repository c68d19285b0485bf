"""Before a user checks the job branch out, the summary says when it adds symlinks pointing
outside the repository, ``.gitattributes`` naming filters, or submodules (contract v3,
"Bounds"), one line each, on the terminal and in ``status --json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logist.notes import _escapes, _names_filter
from tests.helpers import create_job

IDENTITY = ("--env", "GIT_AUTHOR_NAME=s", "--env", "GIT_AUTHOR_EMAIL=s@x", "--env",
            "GIT_COMMITTER_NAME=s", "--env", "GIT_COMMITTER_EMAIL=s@x")  # fmt: skip


@pytest.mark.parametrize(
    ("path", "target", "out"),
    [
        ("a", "/etc/passwd", True),
        ("a", "../x", True),
        ("d/e/a", "../../../x", True),
        ("d/e/a", "../../x", False),
        ("a", "b/c", False),
        ("a", "", True),
    ],
)
def test_a_link_escapes_when_its_target_leaves_the_repository(path, target, out):
    assert _escapes(path, target.encode()) is out


def test_gitattributes_naming_a_filter_are_told_apart():
    assert _names_filter(b"*.bin filter=lfs diff=lfs\n")
    assert _names_filter(b"  * text filter\n")
    assert not _names_filter(b"*.txt text eol=lf\n# filter=x\n")


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_the_summary_names_links_out_filters_and_submodules(
    logist, source_repo: Path, jobs_root: Path
):
    step = (
        "ln -s /etc/passwd passwd-link && ln -s ../../outside up-link && ln -s README.md ok-link "
        "&& echo '* filter=x' > .gitattributes "
        "&& printf '[submodule \"sub\"]\\n\\tpath = sub\\n\\turl = ../x\\n' > .gitmodules"
    )
    job = create_job(logist, source_repo, step, extra=IDENTITY)
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    lines = [x for x in out.stderr.splitlines() if ": note: " in x]
    assert len(lines) == 3, out.stderr
    assert "symlinks pointing outside the repository: passwd-link, up-link" in lines[0]
    assert "ok-link" not in lines[0]
    assert ".gitattributes naming filters: .gitattributes" in lines[1]
    assert "submodules: .gitmodules" in lines[2]
    view = json.loads(logist("job", "status", job, "--json").stdout)
    assert [f"logist: {job}: note: {n}" for n in view["notes"]] == lines


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_harmless_branch_has_no_notes(logist, source_repo: Path):
    job = create_job(logist, source_repo, "echo x > x.txt && ln -s x.txt inside")
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert ": note: " not in out.stderr
    assert json.loads(logist("job", "status", job, "--json").stdout)["notes"] == []


def test_a_gitlink_is_a_submodule_note(source_repo: Path):
    from logist.notes import scan
    from tests.helpers import git

    base = git(source_repo, "rev-parse", "HEAD").strip()
    git(source_repo, "update-index", "--add", "--cacheinfo", f"160000,{base},vendor/sub")
    git(source_repo, "commit", "-qm", "gitlink")
    tip = git(source_repo, "rev-parse", "HEAD").strip()
    assert scan(source_repo / ".git", base, tip) == ["the branch adds submodules: vendor/sub"]
    assert scan(source_repo / ".git", tip, tip) == []


def test_a_scan_that_runs_out_of_time_says_so_instead_of_raising(source_repo: Path, monkeypatch):
    """A git command of the scan past its deadline raised TimeoutExpired, which nothing
    caught (red team, 12-06). git here waits for ever on an alternates file that is a FIFO."""
    import os

    import logist.notes
    from logist.notes import scan
    from tests.helpers import commit_file, git

    base = git(source_repo, "rev-parse", "HEAD").strip()
    tip = commit_file(source_repo, "x.txt", "x\n")
    os.mkfifo(source_repo / ".git" / "objects" / "info" / "alternates")
    monkeypatch.setattr(logist.notes, "TIMEOUT", 1.0)
    assert scan(source_repo / ".git", base, tip) == [
        "the branch could not be checked for links out, filters and submodules in time"
    ]


def test_the_scan_keeps_only_the_entries_it_looks_at_and_says_when_it_stops(
    source_repo: Path, monkeypatch
):
    """Every changed path was held (raw, split, decoded): 25,000 paths of 60 KB took the
    host's logist to 5.9 GB (red team, 12-06). Now only links, submodules, .gitattributes and
    .gitmodules are kept, within MAX_KEPT bytes; past it the note says the rest is unchecked."""
    import os

    import logist.notes
    from logist.notes import _changed, scan
    from tests.helpers import git

    base = git(source_repo, "rev-parse", "HEAD").strip()
    for i in range(300):
        (source_repo / f"plain-{i:03}-{'x' * 200}.txt").write_text("x\n")
    for i in range(3):
        os.symlink("/etc/passwd", source_repo / f"out-{i}")
    git(source_repo, "add", "-A")
    git(source_repo, "commit", "-qm", "many")
    tip = git(source_repo, "rev-parse", "HEAD").strip()
    changed, complete = _changed(source_repo / ".git", base, tip, None)
    assert complete and sorted(p for _m, _o, p in changed) == ["out-0", "out-1", "out-2"]
    notes = scan(source_repo / ".git", base, tip)
    assert notes == ["the branch adds symlinks pointing outside the repository: "
                     "out-0, out-1, out-2"]  # fmt: skip
    monkeypatch.setattr(logist.notes, "MAX_KEPT", 10)
    assert scan(source_repo / ".git", base, tip)[-1].startswith("the branch adds too many paths")


@pytest.mark.timeout(20)
def test_gitattributes_of_carriage_returns_shared_by_many_paths_are_read_once_and_fast(
    source_repo: Path,
):
    """A 4 MiB .gitattributes of lines of 2,047 "\\r" took 1.4 s a path to read (Python's
    splitlines splits at every "\\r"), once per path sharing it: ~47 minutes at 2,000 paths,
    the job's lock held (red team, 12-06)."""
    from logist.notes import scan
    from tests.helpers import git

    base = git(source_repo, "rev-parse", "HEAD").strip()
    text = (b"\r" * 2047 + b"\n") * 2048
    for i in range(40):
        (source_repo / f"d{i}").mkdir()
        (source_repo / f"d{i}" / ".gitattributes").write_bytes(text)
    (source_repo / "d0" / ".gitattributes").write_bytes(text + b"*.x filter=lfs\n")
    git(source_repo, "add", "-A")
    git(source_repo, "commit", "-qm", "attributes")
    tip = git(source_repo, "rev-parse", "HEAD").strip()
    assert scan(source_repo / ".git", base, tip) == [
        "the branch adds .gitattributes naming filters: d0/.gitattributes"
    ]
