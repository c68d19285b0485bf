"""git on TRUSTED repositories only: the user's source, logist's mirrors and its per-job repository.

Never a workspace: whatever a step wrote is read by git inside a helper container
(``logist/sandbox.py``) and crosses back only as a bundle, which ``harvest.accept`` checks
(``intake.index_bundle``: ``index-pack --strict`` into a quarantine, bounded) before it enters
logist's repository. Host git runs with a sanitised environment
(no inherited ``GIT_*``, no system config, hooks off) and never with ``safe.directory=*``: a
source owned by another user is trusted by its exact path only.

No value from a spec reaches a shell or an option parser: no command string is built here (git
is given an argument vector), the trusted path travels in a config file git reads, and every
positional that can come from data follows ``--`` or ``--end-of-options``
(docs/security.md, "Host processes").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from logist.errors import GitError, LogistError, UsageError

_NETWORK_PREFIXES = ("git://", "http://", "https://", "ssh://")
_IDENTITY = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
             "GIT_AUTHOR_NAME": "logist", "GIT_AUTHOR_EMAIL": "logist@localhost",
             "GIT_COMMITTER_NAME": "logist", "GIT_COMMITTER_EMAIL": "logist@localhost",
             "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C",
             "GIT_NO_LAZY_FETCH": "1"}  # no fetch from a partial clone's promisor  # fmt: skip
# objects entering a trusted repository are checked, whatever the user's own config says
FSCK = ("-c", "fetch.fsckObjects=true", "-c", "transfer.fsckObjects=true")
# git run in a local source (the publish's fetch reads its config): none of the commands its
# config may name runs (fsmonitor, alternate refs, submodules, auto gc), and no transport but
# a local path (an insteadOf rewrite to ext:: would run a command)
_GUARDS = (
    "core.fsmonitor=false core.alternateRefsCommand= protocol.allow=never "
    "protocol.file.allow=always fetch.recurseSubmodules=false submodule.recurse=false "
    "gc.auto=0 maintenance.auto=false"
)
IN_SOURCE = tuple(a for kv in _GUARDS.split() for a in ("-c", kv))
_LOCK_MARKERS = ("index.lock", "cannot lock ref", "Unable to create", ".lock': File exists",
                 "unable to write", "packed-refs.lock", "shallow.lock")  # fmt: skip
_HEX = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


def _env(isolated: bool = False) -> dict[str, str]:
    """The caller's environment without any ``GIT_*`` variable, plus logist's identity;
    ``isolated``: without the user's global config either (no filter, no fsmonitor of theirs
    runs over job data)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(_IDENTITY)
    if isolated:
        env["GIT_CONFIG_GLOBAL"] = os.devnull
    return env


def _quoted(value: str) -> str:
    """``value`` as a double-quoted git config value: no quote, backslash or line break of it
    can end the value or start another line of the file."""
    if "\r" in value or "\x00" in value:
        raise UsageError(f"a path git is to trust holds a control character: {value!r}")
    for char, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\t", "\\t")):
        value = value.replace(char, escaped)
    return f'"{value}"'


def _user_configs() -> list[str]:
    """The user's global config files, as git finds them when ``GIT_CONFIG_GLOBAL`` is unset."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return [os.path.join(xdg, "git", "config"), os.path.expanduser("~/.gitconfig")]


def _trust_config(trust: Path | str, isolated: bool) -> str:
    """A global config file's text: ``safe.directory`` for exactly ``trust`` and its ``.git``
    (never ``*``) and, unless ``isolated``, an include of the user's own global config.

    A file (``GIT_CONFIG_GLOBAL``), not ``-c`` nor ``GIT_CONFIG_COUNT``: git drops both from
    the environment of the ``upload-pack`` it starts for a local clone or fetch
    (``local_repo_env``), and that process checks the owner of the source too."""
    paths = (str(trust), str(Path(trust) / ".git"))
    lines = ["[safe]", *(f"\tdirectory = {_quoted(p)}" for p in paths)]
    if not isolated:
        lines += ["[include]", *(f"\tpath = {_quoted(p)}" for p in _user_configs())]
    return "\n".join(lines) + "\n"


def git(
    *args: str,
    cwd: Path | str | None = None,
    trust: Path | str | None = None,
    timeout: float | None = 600,
    ok_codes: tuple[int, ...] = (0,),
    usage: bool = False,
    isolated: bool = False,
) -> tuple[int, str]:
    """Run host git on a trusted repository; return (exit code, stdout).

    ``trust`` names the one repository path git may use although another user owns it (the
    user's source); ``isolated`` leaves the user's global config out. Raise ``GitError``
    (exit 2 when ``usage``) for any other exit code, with the command and its stderr."""
    if any("\x00" in arg for arg in args):  # only data can hold one; git would never see it
        raise UsageError(f"refused: an argument for git holds a NUL byte: {args!r:.300}")
    env = _env(isolated)
    with contextlib.ExitStack() as stack:
        if trust is not None:
            config = stack.enter_context(
                tempfile.NamedTemporaryFile("w", prefix="logist-trust-", suffix=".gitconfig")
            )
            config.write(_trust_config(trust, isolated))
            config.flush()
            env["GIT_CONFIG_GLOBAL"] = config.name
        return _run_git(list(args), cwd, env, timeout, ok_codes, usage)


def dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel kill the child when the process (the thread) that
    started it dies (Linux' ``PR_SET_PDEATHSIG``): a runner killed mid-clone leaves no git
    behind, writing on after the sweep; a child whose parent died before that call ends at
    once. None elsewhere. (libc's ``prctl``, looked up once.)"""
    if not sys.platform.startswith("linux"):
        return None
    prctl, kill, parent = _prctl(), int(signal.SIGKILL), os.getpid()

    def child() -> None:
        prctl(1, kill, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died between the fork and here: no signal will come
            os._exit(137)

    return child


@functools.cache
def _prctl() -> Callable[..., int]:
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def _run_git(
    args: list[str],
    cwd: Path | str | None,
    env: dict[str, str],
    timeout: float | None,
    ok_codes: tuple[int, ...],
    usage: bool,
) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            ["git", "-c", "core.hooksPath=/dev/null", *args],
            cwd=str(cwd) if cwd else None,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=dies_with_parent(),  # one libc call in the child
        )
    except FileNotFoundError:
        raise GitError(args, "git is not installed", exit_code=3) from None
    except OSError as exc:
        if exc.errno != errno.E2BIG:
            raise
        raise UsageError(f"refused: an argument for git is too long: {args!r:.300}") from None
    except subprocess.TimeoutExpired:
        why, code = f"timed out after {timeout:g}s", 2 if usage else None
        raise GitError(args, why, exit_code=code) from None
    if proc.returncode not in ok_codes:
        raise GitError(args, proc.stderr or proc.stdout, exit_code=2 if usage else None)
    return proc.returncode, proc.stdout.rstrip("\n")


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, GitError) and any(m in exc.stderr for m in _LOCK_MARKERS)


retry_on_git_locks = retry(
    retry=retry_if_exception(_is_lock_error),
    stop=stop_after_attempt(8),
    wait=wait_random_exponential(multiplier=0.05, max=2),
    reraise=True,
)


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = 300) -> Iterator[None]:
    """An exclusive flock on ``path`` (threads and processes alike), waiting up to ``timeout``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UsageError(f"timed out waiting for lock {path}") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


def source_key(repo: str) -> str:
    return hashlib.sha256(repo.encode()).hexdigest()[:24]


def is_oid(text: str) -> bool:
    return bool(_HEX.fullmatch(text))


# --- sources -----------------------------------------------------------------------------------


def check_local_source(path: Path, ref: str | None) -> None:
    """Refuse (exit 2) a path that is not a git repository's top (a work tree's, a bare one's,
    a ``.git``; never a directory in one) or lacks ``ref``. A stat first: no FIFO is opened."""
    try:
        why = "" if path.is_dir() else "is not a directory" if path.exists() else "does not exist"
        code, out = git("rev-parse", "--show-object-format", "--is-inside-work-tree",
                        "--show-prefix", "--absolute-git-dir", cwd=path, trust=path,
                        ok_codes=(0, 128)) if not why else (-1, "")  # fmt: skip
    except OSError as exc:  # a name too long, a loop of links, a file in its place since
        raise UsageError(f"repository not found: {str(path)[:300]}: {exc.strerror}") from None
    if code != 0:
        raise UsageError(f"repository not found: {path} {why or 'is not a git repository'}")
    fmt, inside, rest = [*out.split("\n", 2), "", ""][:3]  # rest: the prefix's line, git dir
    if not rest.startswith("\n") or (inside != "true" and rest[1:] != os.path.realpath(path)):
        raise UsageError(f"{path} is inside a git repository: give the top of the repository")
    if fmt != "sha1":
        raise UsageError(f"{path}: only SHA-1 repositories are supported, not {fmt}")
    _, out = git("config", "--get-regexp", r"^(extensions\.partialclone|remote\..*\.promisor)$",
                 cwd=path, trust=path, ok_codes=(0, 1))  # fmt: skip
    values = [line.split(" ", 1)[-1].lower() for line in out.splitlines()]
    if any(v not in ("false", "no", "off", "0") for v in values):  # a promisor never asked
        raise UsageError(f"{path} is a partial clone (objects missing): give a full clone")
    resolve_ref(path, ref)


def check_remote_source(url: str, ref: str | None) -> None:
    """Refuse (exit 2) a URL that does not answer as a git repository, or lacks ``ref``."""
    try:
        _, out = git("ls-remote", "--", url, trust=_local_path(url), timeout=60, usage=True)
    except GitError as exc:
        first = next((line for line in exc.stderr.splitlines() if line.strip()), "no answer")
        raise UsageError(f"repository not reachable: {url}: {first.strip()[:300]}") from None
    if ref and not _looks_like_sha(ref):
        names = {line.split("\t", 1)[1] for line in out.splitlines() if "\t" in line}
        wanted = {ref, f"refs/heads/{ref}", f"refs/tags/{ref}"}
        if not names & wanted:
            raise UsageError(f"unknown ref {ref!r} in {url}")


def source_answers(source: str, *, url: bool) -> bool:
    """Whether a job's source still answers as a git repository (asked after a failed clone or
    fetch): a URL (``url``) to ``ls-remote``; a path by its ``.git``, or its ``HEAD`` and
    ``objects``."""
    if url:
        try:
            check_remote_source(source, None)
        except UsageError:
            return False
        return True
    path = Path(source)
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def _local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return url[len("file://") :]
    return None if url.startswith(_NETWORK_PREFIXES) else url


def _looks_like_sha(ref: str) -> bool:
    return 7 <= len(ref) <= 64 and all(c in "0123456789abcdef" for c in ref)


def resolve_ref(repo: Path, ref: str | None) -> str:
    """The commit ``ref`` (default HEAD) names in ``repo``; exit 2 naming the ref if unknown.
    A branch before a tag of the same name (as ``git checkout`` and ``clone --branch`` take
    it; git's rev-parse takes the tag): a source's tag cannot stand in for the branch asked."""
    name = ref or "HEAD"
    branch = [f"refs/heads/{name}"] if ref and not ref.startswith("refs/") else []
    for candidate in (*branch, name):
        code, out = git("rev-parse", "--verify", "--quiet", "--end-of-options",
                        f"{candidate}^{{commit}}", cwd=repo, trust=repo,
                        ok_codes=(0, 1, 128))  # fmt: skip
        if code == 0:
            return out.strip()
    raise UsageError(f"unknown ref {name!r} in {repo}")


def update_mirror(url: str, mirror: Path) -> None:
    """Create the mirror of ``url`` once, then only fetch what is new (caller holds its lock)."""
    trust = _local_path(url)  # a file:// source, maybe another user's; None for the network
    if (mirror / "HEAD").exists():
        git("fetch", "--quiet", "--prune", "--", "origin", cwd=mirror, trust=trust)
        return
    # a temp mirror here is a crashed clone's: we hold the lock, so no other clone makes it
    for leftover in mirror.parent.glob(mirror.name + ".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = mirror.with_name(mirror.name + f".tmp-{os.getpid()}")
    git("clone", "--quiet", "--mirror", "--", url, str(tmp), trust=trust)
    os.replace(tmp, mirror)


# --- logist's own repositories -------------------------------------------------------------------


def make_job_repo(origin: Path, dest: Path, commit: str, branch: str) -> None:
    """``dest``: logist's bare repository of one job, ``branch`` at ``commit`` of the trusted
    ``origin`` (the source or a mirror) with only what it reaches, fetched: none of the
    origin's other branches, tags or stash (the harvest's helper reads this repository, so a
    step naming their ids must find nothing), no alternates, no file shared with the origin."""
    git("init", "--quiet", "--bare", "--", str(dest), isolated=True)
    fetch_one(dest, origin, f"+{commit}:refs/heads/{branch}", update_shallow=True, trust=origin)


def clone_workspace(job_repo: Path, dest: Path, branch: str, commit: str, origin: str) -> None:
    """A fresh workspace at ``dest``: a new repository holding only what ``commit`` reaches
    (fetched from the job's repository: no hardlink, no alternates, no other branch, tag or
    stash of the source), with ``branch`` checked out at it. Runs before any step has seen
    ``dest``; ``origin`` becomes its ``origin`` remote (as data: nothing is fetched)."""
    git("init", "--quiet", "--", str(dest), isolated=True)
    # a shallow source's roots come along (without them git takes the branch for broken)
    fetch_one(dest, job_repo, f"+{commit}:refs/heads/{branch}", update_shallow=True, isolated=True)
    git("remote", "add", "--", "origin", origin, cwd=dest, isolated=True)
    git(
        "checkout",
        "--quiet",
        "--no-recurse-submodules",
        "-B",
        branch,
        commit,
        cwd=dest,
        isolated=True,
    )


def restore_branch(
    repo: Path, branch: str, kept: str, bundle: Path, source: Path | None
) -> str | None:
    """Bring ``branch`` back into logist's remade ``repo``: with the kept refs under ``kept``
    from logist's own ``bundle`` (fsck'd again) when that is a regular file, else the branch
    alone from the local ``source`` (None: a URL's, not asked). The commit the branch then
    names, or None."""
    specs = [f"+refs/heads/{branch}:refs/heads/{branch}"]
    if bundle.is_file() and not bundle.is_symlink():
        specs.append(f"+{kept}*:{kept}*")
        fetch_bundle_into(repo, bundle, specs)
    elif source is not None:
        git(
            f"--git-dir={repo}",
            *FSCK,
            "fetch",
            "--quiet",
            "--no-tags",
            "--",
            str(source),
            *specs,
            trust=source,
        )
    return commit_of(repo, f"refs/heads/{branch}")


def disk_full(exc: GitError) -> LogistError | None:
    """A git failure for want of disk space, as an environment error (exit 3); else None."""
    text = exc.stderr.lower()
    if "no space left" in text or "disk quota" in text:
        return LogistError(f"disk full while setting up the workspace: {exc}", exit_code=3)
    return None


def fetch_one(
    dest: Path, origin: Path, refspec: str, *options: str, update_shallow: bool = False, **kw
) -> None:
    """Fetch ``refspec`` (no tags) from the trusted repository ``origin`` into the one at
    ``dest``; only what it reaches travels. ``options`` go before ``fetch`` (e.g. ``FSCK``);
    ``update_shallow`` takes a shallow origin's roots (else git drops the ref in silence)."""
    shallow = ("--update-shallow",) if update_shallow else ()
    args = ("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", *shallow)
    git(*options, *args, "--", str(origin), refspec, cwd=dest, **kw)


def commit_of(repo: Path, name: str) -> str | None:
    """The commit ``name`` resolves to in the trusted ``repo``, or None."""
    code, out = git(
        f"--git-dir={repo}",
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        f"{name}^{{commit}}",
        ok_codes=(0, 1, 128),
        isolated=True,
    )
    return out.strip() if code == 0 else None


def set_ref(repo: Path, ref: str, commit: str) -> None:
    git(f"--git-dir={repo}", "update-ref", "--", ref, commit, isolated=True)


def fetch_bundle_into(repo: Path, bundle: Path, refspecs: list[str]) -> None:
    """Fetch ``refspecs`` of one of logist's own bundles into the trusted ``repo``."""
    git(
        f"--git-dir={repo}",
        *FSCK,
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        "--atomic",
        "--",
        str(bundle),
        *refspecs,
        isolated=True,
    )


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    code, _ = git(
        f"--git-dir={repo}",
        "merge-base",
        "--is-ancestor",
        "--end-of-options",
        older,
        newer,
        ok_codes=(0, 1, 128),
        isolated=True,
    )
    return code == 0


def refs(repo: Path, prefix: str) -> dict[str, str]:
    """``{refname: oid}`` of the trusted ``repo`` under ``prefix``."""
    fmt = "--format=%(refname) %(objectname)"
    _, out = git(f"--git-dir={repo}", "for-each-ref", fmt, prefix, isolated=True)
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def update_refs(repo: Path, updates: dict[str, str | None]) -> None:
    """Set (oid) or delete (None) refs of the trusted ``repo`` in one transaction."""
    if not updates:
        return
    lines = "".join(
        f"update {ref} {oid}\n" if oid else f"delete {ref}\n" for ref, oid in updates.items()
    )
    proc = subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", f"--git-dir={repo}", "update-ref", "--stdin"],
        input=lines,
        capture_output=True,
        text=True,
        env=_env(isolated=True),
    )
    if proc.returncode != 0:
        raise GitError(["update-ref", "--stdin"], proc.stderr)


def write_bundle(repo: Path, refnames: list[str], dest: Path) -> None:
    """``dest``: a complete bundle (no prerequisites) of ``refnames`` of the trusted ``repo``."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    git(f"--git-dir={repo}", "bundle", "create", "--quiet", str(tmp), *refnames, isolated=True)
    os.replace(tmp, dest)


@retry_on_git_locks
def publish_branch(source: Path, job_repo: Path, branch: str, commit: str) -> None:
    """Set ``branch`` in the local ``source`` to ``commit`` from logist's own repository of the
    job, objects fsck'd; only what it reaches travels; HEAD, index and working tree untouched.
    A fast-forward only: a job's harvests descend from each other, so a branch there that
    ``commit`` does not contain is someone else's, kept (``GitError`` saying so). Under the
    per-source lock, a lock file on a ``logist/*`` branch is a killed logist's: removed."""
    ref = f"refs/heads/{branch}"
    _, out = git(*IN_SOURCE, "rev-parse", "--absolute-git-dir", "--verify", "--quiet", ref,
                 cwd=source, trust=source, ok_codes=(0, 1))  # fmt: skip
    gitdir, *there = out.splitlines()
    if there and there[0] != commit and not is_ancestor(job_repo, there[0], commit):
        raise GitError(["fetch"], "the source's branch is not this job's (its work does not "
                       "contain it): left as it is")  # fmt: skip
    stale = Path(gitdir) / "refs" / "heads" / f"{branch}.lock"
    if branch.startswith("logist/") and stale.is_file() and not stale.is_symlink():
        stale.unlink()
    fetch_one(source, job_repo, f"{ref}:{ref}", *IN_SOURCE, *FSCK, trust=source)
