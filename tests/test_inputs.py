"""No value of a spec reaches a shell or an option parser on the host (issue 21).

Every attempt here tries to make a file named ``PWNED`` (upper case: never a job id, so never a
job's directory); none may appear. Real git and the real CLI; no engine is needed to create a job.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import logist
from logist import gitops
from logist.errors import LogistError, UsageError
from logist.harvest import ensure_job_repo
from logist.jobrun import JobRun
from logist.jobs import create_job
from logist.store import Store
from tests.helpers import commit_file, git, job_status, make_repo

MARK = "PWNED"
FOREIGN_UID = 4242


def _shell_payloads(marker: Path) -> dict[str, str]:
    """Suffixes of a repository path, each trying to run ``touch marker`` through a shell."""
    return {
        "semicolon": f";touch {marker};#",
        "pipe": f"|touch {marker}",
        "subshell": f"$(touch {marker})",
        "backticks": f"`touch {marker}`",
        "and": f" && touch {marker}",
        "newline": f"\ntouch {marker}",
        "quote": f"'; touch {marker}; '",
    }


def _marks(*dirs: Path) -> list[Path]:
    """Markers under ``dirs``, or at the top of /tmp."""
    found = [p for d in dirs for p in d.rglob(f"{MARK}*")]
    return found + [p for p in Path("/tmp").glob(f"{MARK}*")]


def _cli(jobs: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The real CLI, run in ``cwd`` (where a relative ``touch PWNED`` would land)."""
    return subprocess.run(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs), "job", "create", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def _spec(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump({"steps": [{"run": "true"}], **fields}))
    return path


def _foreign(path: Path) -> Path:
    subprocess.run(["chown", "-R", f"{FOREIGN_UID}:{FOREIGN_UID}", str(path)], check=True)
    return path


# --- repo values with shell syntax -------------------------------------------------------------


@pytest.mark.parametrize("form", ["path", "file-url"])
@pytest.mark.parametrize("payload", sorted(_shell_payloads(Path("M"))))
@pytest.mark.parametrize("via", ["spec", "flag"])
def test_shell_syntax_in_a_repo_value_runs_nothing_and_exits_2(
    jobs_root, source_repo, tmp_path, via, payload, form
):
    marker = tmp_path / MARK
    repo = f"{source_repo}{_shell_payloads(marker)[payload]}"
    repo = f"file://{repo}" if form == "file-url" else repo
    if via == "spec":
        out = _cli(jobs_root, tmp_path, "--file", str(_spec(tmp_path / "s.yaml", repo=repo)))
    else:
        out = _cli(jobs_root, tmp_path, f"--repo={repo}", "--step", "true")
    assert out.returncode == 2, out.stdout + out.stderr
    assert not _marks(tmp_path), "a shell ran part of the repo value"
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_a_source_whose_path_holds_shell_syntax_is_cloned_as_data(
    jobs_root, tmp_path, monkeypatch, form
):
    """The path exists, so logist goes on to clone it: the old ``--upload-pack`` string ran it."""
    source = _foreign(make_repo(tmp_path / f"s;touch {MARK};#$(touch {MARK}2)"))
    repo = f"file://{source}" if form == "file-url" else str(source)
    out = _cli(jobs_root, tmp_path, f"--repo={repo}", "--step", "true")
    assert out.returncode == 0, out.stderr
    store = Store(jobs_root)
    job = store.load(out.stdout.strip())
    monkeypatch.chdir(tmp_path)  # where git runs, and a relative touch would write
    made = ensure_job_repo(JobRun(store, job))
    assert gitops.commit_of(made, job.base_commit) == job.base_commit
    assert not _marks(tmp_path)


# --- values that look like options -------------------------------------------------------------

OPTION_LIKE = ["--upload-pack=touch PWNED", "-c", "--output=PWNED", "-oProxyCommand=touch PWNED:x"]


@pytest.mark.parametrize("value", OPTION_LIKE)
@pytest.mark.parametrize("field", ["repo", "ref"])
@pytest.mark.parametrize("via", ["spec", "flag"])
def test_a_repo_or_ref_that_looks_like_an_option_is_refused(
    jobs_root, source_repo, tmp_path, via, field, value
):
    fields = {"repo": str(source_repo), field: value}
    if via == "spec":
        out = _cli(jobs_root, tmp_path, "--file", str(_spec(tmp_path / "s.yaml", **fields)))
    else:
        flags = [f"--{k}={v}" for k, v in fields.items()]
        out = _cli(jobs_root, tmp_path, *flags, "--step", "true")
    assert out.returncode == 2, out.stdout + out.stderr
    assert not _marks(tmp_path)
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("exists", [False, True])
def test_a_transport_helper_address_as_repo_runs_nothing(jobs_root, tmp_path, monkeypatch, exists):
    """``ext::CMD`` would have git run CMD; a directory of that name is a path (made absolute)."""
    name = f"ext::sh -c touch% {MARK}"
    if exists:
        make_repo(tmp_path / name)
    out = _cli(jobs_root, tmp_path, f"--repo={name}", "--step", "true")
    assert out.returncode == (0 if exists else 2), out.stdout + out.stderr
    if exists:
        store = Store(jobs_root)
        job = store.load(out.stdout.strip())
        assert job.repo == str(tmp_path / name)
        monkeypatch.chdir(tmp_path)
        ensure_job_repo(JobRun(store, job))
    assert not _marks(tmp_path)


def test_ls_remote_takes_an_option_shaped_url_as_a_repository(source_repo, tmp_path, monkeypatch):
    """In a clone with an ``origin``, ``git ls-remote --upload-pack=CMD`` would run CMD."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--", str(source_repo), str(clone)], check=True)
    monkeypatch.chdir(clone)
    marker = tmp_path / MARK
    with pytest.raises(UsageError):
        gitops.check_remote_source(f"--upload-pack=touch {marker}", None)
    assert not _marks(tmp_path)


@pytest.mark.parametrize(
    "ref", ["--output=PWNED", "--git-dir=/", "--since=2020-01-01", "-c", "--all", "HEAD\nmain"]
)
def test_resolve_ref_refuses_an_option_shaped_ref_naming_it(
    source_repo, tmp_path, monkeypatch, ref
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="unknown ref"):
        gitops.resolve_ref(source_repo, ref)
    assert not _marks(tmp_path)


def test_a_ref_naming_both_a_branch_and_a_tag_takes_the_branch(source_repo):
    """git's rev-parse takes the tag: a tag "main" pushed to a source stood in for its main
    branch (red team, 12-06). A tag alone, a full ref name and a commit still resolve."""
    tagged = git(source_repo, "rev-parse", "HEAD").strip()
    git(source_repo, "tag", "main")
    branch = commit_file(source_repo, "later.txt", "later\n")
    assert gitops.resolve_ref(source_repo, "main") == branch
    assert gitops.resolve_ref(source_repo, "refs/tags/main") == tagged
    git(source_repo, "tag", "only-a-tag", tagged)
    assert gitops.resolve_ref(source_repo, "only-a-tag") == tagged
    assert gitops.resolve_ref(source_repo, tagged[:12]) == tagged
    assert gitops.resolve_ref(source_repo, None) == branch


def _promisor_source(path: Path, marker: Path) -> Path:
    """A source whose HEAD commit is missing, with a promisor remote whose upload-pack (a
    command of its config, run through a shell) would make ``marker``."""
    make_repo(path)
    commit_file(path, "b.txt", "b\n")
    head = git(path, "rev-parse", "HEAD").strip()
    (path / ".git" / "objects" / head[:2] / head[2:]).unlink()
    for key, value in (
        ("core.repositoryformatversion", "1"),
        ("extensions.partialClone", "origin"),
        ("remote.origin.promisor", "true"),
        ("remote.origin.url", str(path.parent / "elsewhere")),
        ("remote.origin.uploadpack", f"touch {marker}; git-upload-pack"),
    ):
        git(path, "config", key, value)
    return path


def test_a_partial_clone_sources_promisor_command_never_runs_on_the_host(tmp_path):
    """Host git fetched the missing commit from the source's promisor remote, running the
    upload-pack command of its config (red team, 12-06): a partial clone is refused, and
    host git never fetches lazily."""
    marker = tmp_path / MARK
    source = _promisor_source(tmp_path / "src", marker)
    with pytest.raises(UsageError, match="partial clone"):
        gitops.check_local_source(source, None)
    with pytest.raises(UsageError, match="unknown ref"):
        gitops.resolve_ref(source, None)  # past the check: still nothing fetched
    assert not _marks(tmp_path)


def test_a_filtered_clone_is_refused_as_a_partial_clone(tmp_path, source_repo):
    git(source_repo, "config", "uploadpack.allowFilter", "true")
    clone = tmp_path / "filtered"
    subprocess.run(["git", "clone", "-q", "--filter=blob:none", "--no-checkout",
                    f"file://{source_repo}", str(clone)], check=True)  # fmt: skip
    with pytest.raises(UsageError, match="partial clone"):
        gitops.check_local_source(clone, None)
    git(clone, "config", "remote.origin.promisor", "false")
    gitops.check_local_source(clone, None)


def test_a_sha256_source_is_refused_at_creation_naming_its_format(tmp_path):
    """It failed at setup: exit 1, the job interrupted, "ValueError raised while it ran"
    (red team, 12-06)."""
    source = tmp_path / "sha"
    subprocess.run(["git", "init", "-q", "--object-format=sha256", str(source)], check=True)
    commit_file(source, "x.txt", "x\n")
    with pytest.raises(UsageError, match="only SHA-1 repositories are supported, not sha256"):
        gitops.check_local_source(source, None)


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_file_or_a_fifo_as_the_repository_is_a_one_line_exit_2_never_opened(
    jobs_root, tmp_path, kind
):
    """``--repo /etc/passwd`` (or a FIFO) was "internal error: NotADirectoryError" (exit 1),
    and ``Runtime.create`` raised it bare (red team, 12-06). A FIFO is never opened: no
    writer ever comes, so an open would hang the command (``_cli``'s timeout)."""
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("not a repository\n")
    out = _cli(jobs_root, tmp_path, "--repo", str(path), "--image", "x", "--step", "true")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"logist: error: repository not found: {path} "
                                               "is not a directory"]  # fmt: skip
    with pytest.raises(UsageError, match="is not a directory"):
        logist.Runtime(jobs_root).create(repo=str(path), image="x", steps=["true"])
    assert [p for p in jobs_root.iterdir() if not p.name.startswith(".")] == []  # no job


def test_a_subdirectory_of_a_repository_is_refused_at_creation_but_its_top_is_taken(
    jobs_root, tmp_path
):
    """``--repo src/sub`` was taken (git looked upwards) and the run then failed with "source
    has vanished" (red team, 12-06). The top of a work tree, a bare repository, a ``.git``, a
    link to one and a ``file://`` URL are taken; a directory inside any of them is not."""
    source = make_repo(tmp_path / "src", {"README.md": "hi\n", "sub/deeper/x.txt": "x\n"})
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)
    (tmp_path / "link").symlink_to(source)
    for inside in (source / "sub", source / "sub" / "deeper", tmp_path / "link" / "sub",
                   source / ".git" / "refs", bare / "refs"):  # fmt: skip
        with pytest.raises(UsageError, match="inside a git repository: give the top"):
            gitops.check_local_source(inside, None)
        out = _cli(jobs_root, tmp_path, "--repo", str(inside), "--image", "x", "--step", "true")
        assert out.returncode == 2 and "give the top of the repository" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    for top in (source, bare, source / ".git", tmp_path / "link"):
        gitops.check_local_source(top, "main")
    out = _cli(jobs_root, tmp_path, f"--repo=file://{source}", "--image", "x", "--step", "true")
    assert out.returncode == 0, out.stderr


@pytest.mark.docker
@pytest.mark.parametrize("form", ["path", "file-url"])
def test_a_source_whose_commit_git_cannot_copy_fails_the_job_exit_2_naming_it(
    logist, tmp_path, form
):
    """A tree entry of a directory's mode naming a blob: exit 1 and git's own line before."""
    source = make_repo(tmp_path / "bad")
    blob = git(source, "hash-object", "-w", "README.md").strip()
    tree = subprocess.run(
        ["git", "-C", str(source), "hash-object", "-t", "tree", "-w", "--stdin", "--literally"],
        input=b"40000 d\0" + bytes.fromhex(blob), capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    commit = git(source, "commit-tree", tree, "-m", "bad").strip()
    git(source, "update-ref", "refs/heads/main", commit)
    repo = f"file://{source}" if form == "file-url" else str(source)
    out = logist("run", "--repo", repo, "--network", "none", "--step", "true")
    assert out.returncode == 2, out.stderr
    said = "git cannot mirror it" if form == "file-url" else f"git cannot copy commit {commit}"
    assert f"source {repo}: {said}" in out.stderr
    job = out.stderr.split("logist: job ", 1)[1].split()[0]
    assert job_status(logist, job)["state"] == "failed"


def test_a_nul_byte_in_a_git_argument_is_refused_as_a_usage_error(source_repo):
    with pytest.raises(UsageError, match="NUL"):
        gitops.resolve_ref(source_repo, "main\x00--output=PWNED")


@pytest.mark.parametrize("host", ["-oProxyCommand=touch {m}", "-oProxyCommand=touch%20{m}"])
def test_an_ssh_url_whose_host_is_an_option_never_reaches_ssh(jobs_root, tmp_path, host):
    url = f"ssh://{host.format(m=tmp_path / MARK)}/x"
    out = _cli(jobs_root, tmp_path, f"--repo={url}", "--step", "true")
    assert out.returncode == 2, out.stdout + out.stderr
    assert not _marks(tmp_path)
    with pytest.raises(UsageError):
        gitops.check_remote_source(url, None)
    assert not _marks(tmp_path)


# --- a source owned by another user: trusted by its exact path only ----------------------------


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_a_source_owned_by_another_uid_is_cloned_by_its_exact_path(jobs_root, tmp_path, form):
    source = _foreign(make_repo(tmp_path / "src"))
    plain = subprocess.run(["git", "-C", str(source), "rev-parse"], capture_output=True)
    assert plain.returncode != 0, "git trusts a foreign repository without being told"
    repo = f"file://{source}" if form == "file-url" else str(source)
    out = _cli(jobs_root, tmp_path, f"--repo={repo}", "--step", "true", "--ref", "main")
    assert out.returncode == 0, out.stderr
    store = Store(jobs_root)
    job = store.load(out.stdout.strip())
    made = ensure_job_repo(JobRun(store, job))
    assert job.base_commit == git(source, "rev-parse", "main").strip()
    assert gitops.commit_of(made, job.base_commit) == job.base_commit


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_on_a_source_owned_by_another_uid_publishes_its_branch_there(
    logist, jobs_root, tmp_path
):
    source = _foreign(make_repo(tmp_path / "src"))
    out = _cli(jobs_root, tmp_path, f"--repo={source}", "--step", "echo w > w.txt")
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    ran = logist("job", "run", job)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert git(source, "show", f"logist/{job}:w.txt") == "w\n"


def test_trusting_one_foreign_repository_trusts_no_other(tmp_path):
    trusted = _foreign(make_repo(tmp_path / "a"))
    other = _foreign(make_repo(tmp_path / "a2"))
    code, _ = gitops.git("rev-parse", "--git-dir", cwd=trusted, trust=trusted, ok_codes=(0, 128))
    assert code == 0
    code, _ = gitops.git("rev-parse", "--git-dir", cwd=other, trust=trusted, ok_codes=(0, 128))
    assert code == 128


@pytest.mark.parametrize(
    "path",
    ['/x/a"b', "/x/back\\slash", "/x/tab\there", '/x/n\n[core]\n\tfsmonitor = "touch PWNED"'],
)
def test_a_trusted_path_is_one_config_value_whatever_it_holds(tmp_path, path):
    config = tmp_path / "trust.gitconfig"
    config.write_text(gitops._trust_config(path, isolated=False))
    listed = subprocess.run(
        ["git", "config", "--file", str(config), "--list", "-z"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    entries = [e.split("\n", 1) for e in listed.split("\0") if e]
    assert [k for k, _ in entries] == ["safe.directory"] * 2 + ["include.path"] * 2
    assert [v for _, v in entries[:2]] == [path, f"{path}/.git"]


# --- property: random hostile values in every spec field ---------------------------------------

FIELDS = [
    "id", "repo", "ref", "image", "prompt", "env-key", "env-value", "timeout", "memory", "cpus",
    "pids", "network", "cap_add", "runtime", "secrets", "user", "pull", "cleanup",
    "step.run", "step.name", "step.image", "step.timeout",
]  # fmt: skip


def _fragments(base: Path) -> list[str]:
    frags = []
    for m in (MARK, str(base / MARK)):
        frags += [
            f";touch {m};#",
            f"$(touch {m})",
            f"`touch {m}`",
            f"--upload-pack=touch {m}",
            f"-oProxyCommand=touch {m}",
            f"--output={m}",
            f"| touch {m}",
            f"&& touch {m}",
        ]
    return [*frags, "\n", "\x00", "%", "%s%n", "é", "\u202e", "😀", "\ufeff", "-", "--", " ", "x"]


def _nasty(rng: random.Random, frags: list[str]) -> str:
    if rng.random() < 0.05:
        return rng.choice(frags) * rng.randint(500, 5000)  # very long
    return "".join(rng.choice(frags) for _ in range(rng.randint(1, 4)))


def _repo_value(rng: random.Random, text: str, source: Path) -> str:
    """A repo value that never names a host but loopback (or one git refuses)."""
    return rng.choice(
        [
            text,
            f"{source}{text}",
            f"file://{source}{text}",
            f"ssh://-oProxyCommand=touch {MARK}{text}/x",
            f"ssh://127.0.0.1:1/{text}",
            f"-{text}",
        ]
    )


def _hostile_spec(rng: random.Random, frags: list[str], source: Path) -> dict:
    spec: dict = {"repo": str(source), "steps": [{"run": "true"}]}
    # half the cases: only repo or ref, the values that reach host git, so nothing else refuses
    # the spec before they get there; the other half: one to three fields of any kind
    alone = rng.random() < 0.5
    fields = [rng.choice(["repo", "ref"])] if alone else rng.sample(FIELDS, rng.randint(1, 3))
    for field in fields:
        value = _nasty(rng, frags)
        if field == "repo":
            spec["repo"] = _repo_value(rng, value, source)
        elif field == "env-key":
            spec["env"] = {value: "v"}
        elif field == "env-value":
            spec["env"] = {"K": value}
        elif field.startswith("step."):
            spec["steps"][0][field[5:]] = value
        elif field in ("cap_add", "secrets") and rng.random() < 0.5:
            spec[field] = [value]
        else:
            spec[field] = value
    return spec


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_random_hostile_values_in_every_spec_field_run_nothing(
    jobs_root, source_repo, tmp_path, monkeypatch
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rng = random.Random(21)
    frags = _fragments(tmp_path)
    store = Store(jobs_root)
    outcomes = {"created": 0, "refused": 0}
    for case in range(150):
        spec = _hostile_spec(rng, frags, source_repo)
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        try:
            create_job(store, {}, path)
            outcomes["created"] += 1
        except LogistError:
            outcomes["refused"] += 1
        except Exception as exc:  # anything else is a crash on hostile input
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc!r:.300} for {spec!r:.600}")
        marks = _marks(tmp_path)
        assert not marks, f"case {case} made {marks} from {spec!r:.600}"
    assert outcomes["created"] and outcomes["refused"], outcomes


def test_publishing_moves_a_jobs_branch_forward_and_never_over_another(tmp_path):
    """publish_branch is a fast-forward: each publish of a job's branch descends from the last
    (its harvests do); a branch that does not is not moved (someone else's: red team, 12-06)."""
    from logist.errors import GitError

    src = make_repo(tmp_path / "src", {"a.txt": "a\n"})
    job_repo = tmp_path / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(job_repo)], check=True)
    base = git(src, "rev-parse", "HEAD").strip()

    def commit_on(parent: str, text: str) -> str:
        tree = git(job_repo, "rev-parse", f"{parent}^{{tree}}").strip()
        return git(job_repo, "commit-tree", "-p", parent, "-m", text, tree).strip()

    first = commit_on(base, "one")
    gitops.set_ref(job_repo, "refs/heads/logist/j", first)
    gitops.publish_branch(src, job_repo, "logist/j", first)
    second = commit_on(first, "two")
    gitops.set_ref(job_repo, "refs/heads/logist/j", second)
    gitops.publish_branch(src, job_repo, "logist/j", second)
    assert git(src, "rev-parse", "logist/j").strip() == second
    other = commit_on(base, "elsewhere")
    gitops.set_ref(job_repo, "refs/heads/logist/j", other)
    with pytest.raises(GitError, match="is not this job's"):
        gitops.publish_branch(src, job_repo, "logist/j", other)
    assert git(src, "rev-parse", "logist/j").strip() == second
