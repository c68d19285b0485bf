"""A thin layer over git (through GitPython's command runner): clone, commit-all, bundle, publish.

Every command runs with ``safe.directory=*`` (workspaces may be owned by the step's uid, sources
by another user) and a fixed identity for the commits logist makes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from logist.errors import GitError, UsageError

UPLOAD_PACK = "git -c safe.directory=* upload-pack"
_NETWORK_PREFIXES = ("git://", "http://", "https://", "ssh://")
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    "GIT_AUTHOR_NAME": "logist",
    "GIT_AUTHOR_EMAIL": "logist@localhost",
    "GIT_COMMITTER_NAME": "logist",
    "GIT_COMMITTER_EMAIL": "logist@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}
_LOCK_MARKERS = (
    "index.lock",
    "cannot lock ref",
    "Unable to create",
    ".lock': File exists",
    "unable to write",
    "packed-refs.lock",
    "shallow.lock",
)


def git(
    *args: str,
    cwd: Path | str | None = None,
    timeout: float | None = 600,
    ok_codes: tuple[int, ...] = (0,),
    usage: bool = False,
) -> tuple[int, str]:
    """Run ``git -c safe.directory=* ARGS``; return (exit code, stdout). Raise ``GitError``
    (exit 2 when ``usage``) for any other exit code, with the command and its stderr."""
    from git.cmd import Git
    from git.exc import GitCommandError, GitCommandNotFound

    cmd = ["git", "-c", "safe.directory=*", "-c", "core.hooksPath=/dev/null", *args]
    try:
        code, out, err = Git(str(cwd) if cwd else None).execute(
            cmd,
            with_extended_output=True,
            with_exceptions=False,
            kill_after_timeout=timeout,
            env={**os.environ, **_ENV},
            strip_newline_in_stdout=True,
        )
    except GitCommandNotFound:
        raise GitError(list(args), "git is not installed", exit_code=3) from None
    except GitCommandError as exc:  # timeouts are reported this way
        raise GitError(list(args), str(exc.stderr or exc), exit_code=2 if usage else None) from None
    if code not in ok_codes:
        raise GitError(list(args), err or out, exit_code=2 if usage else None)
    return code, out


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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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


# --- sources -----------------------------------------------------------------------------------


def check_local_source(path: Path, ref: str | None) -> None:
    """Refuse (exit 2) a path that is not a git repository or a ref it does not have."""
    if not path.exists():
        raise UsageError(f"repository not found: {path} does not exist")
    code, _ = git("rev-parse", "--git-dir", cwd=path, ok_codes=(0, 128))
    if code != 0:
        raise UsageError(f"repository not found: {path} is not a git repository")
    resolve_ref(path, ref)


def check_remote_source(url: str, ref: str | None) -> None:
    """Refuse (exit 2) a URL that does not answer as a git repository, or lacks ``ref``."""
    try:
        _, out = git("ls-remote", *upload_pack(url), url, timeout=60, usage=True)
    except GitError as exc:
        first = next((line for line in exc.stderr.splitlines() if line.strip()), "no answer")
        raise UsageError(f"repository not reachable: {url}: {first.strip()[:300]}") from None
    if ref and not _looks_like_sha(ref):
        names = {line.split("\t", 1)[1] for line in out.splitlines() if "\t" in line}
        wanted = {ref, f"refs/heads/{ref}", f"refs/tags/{ref}"}
        if not names & wanted:
            raise UsageError(f"unknown ref {ref!r} in {url}")


def upload_pack(source: str) -> list[str]:
    """``--upload-pack`` trusting any owner, for a source whose upload-pack runs here (a path,
    ``file://``). Never for a network URL: there it names the service the server runs, and
    git daemon, smart HTTP and forced ssh commands know only ``git-upload-pack``."""
    return [] if source.startswith(_NETWORK_PREFIXES) else ["--upload-pack", UPLOAD_PACK]


def _looks_like_sha(ref: str) -> bool:
    return 7 <= len(ref) <= 64 and all(c in "0123456789abcdef" for c in ref)


def resolve_ref(repo: Path, ref: str | None) -> str:
    """The commit ``ref`` (default HEAD) names in ``repo``; exit 2 naming the ref if unknown."""
    name = ref or "HEAD"
    code, out = git(
        "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", cwd=repo, ok_codes=(0, 1, 128)
    )
    if code != 0:
        raise UsageError(f"unknown ref {name!r} in {repo}")
    return out.strip()


# --- workspaces --------------------------------------------------------------------------------


def clone(source: str, dest: Path, *, local: bool) -> None:
    """Clone without a checkout; a local source is cloned with hardlinked objects.

    No ``--local`` flag: for a path git already clones locally (hardlinks), and copies when the
    destination is on another filesystem, where an explicit ``--local`` dies instead (EXDEV)."""
    args = ["clone", "--quiet", "--no-checkout", "--upload-pack", UPLOAD_PACK]
    if not local:
        args.append("--no-local")
    git(*args, "--", source, str(dest))


def checkout_branch(ws: Path, branch: str, commit: str) -> None:
    git("checkout", "--quiet", "-B", branch, commit, cwd=ws)


def fetch_branch(ws: Path, source: str, branch: str) -> None:
    """Fetch ``branch`` of ``source`` (a repository or a bundle) into the same branch of ws."""
    git(
        "fetch",
        "--quiet",
        "--no-tags",
        "--upload-pack",
        UPLOAD_PACK,
        source,
        f"+refs/heads/{branch}:refs/heads/{branch}",
        cwd=ws,
    )


def branch_commit(repo: Path, branch: str) -> str | None:
    code, out = git(
        "rev-parse",
        "--verify",
        "--quiet",
        f"refs/heads/{branch}^{{commit}}",
        cwd=repo,
        ok_codes=(0, 1, 128),
    )
    return out.strip() if code == 0 else None


def update_mirror(url: str, mirror: Path) -> None:
    """Create the mirror of ``url`` once, then only fetch what is new (caller holds its lock)."""
    if (mirror / "HEAD").exists():
        git("fetch", "--quiet", "--prune", *upload_pack(url), "origin", cwd=mirror)
        return
    # a temp mirror here is a crashed clone's: we hold the lock, so no other clone makes it
    for leftover in mirror.parent.glob(mirror.name + ".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = mirror.with_name(mirror.name + f".tmp-{os.getpid()}")
    git("clone", "--quiet", "--mirror", *upload_pack(url), "--", url, str(tmp))
    os.replace(tmp, mirror)


# --- harvest -----------------------------------------------------------------------------------


@retry_on_git_locks
def commit_all(ws: Path, message: str) -> str:
    """Commit every change (tracked, and untracked but not ignored); return HEAD's commit."""
    git("add", "-A", cwd=ws)
    code, _ = git("diff", "--cached", "--quiet", cwd=ws, ok_codes=(0, 1))
    if code == 1:
        git("commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message, cwd=ws)
    return git("rev-parse", "HEAD", cwd=ws)[1].strip()


def has_unharvested(ws: Path, commit: str | None) -> bool:
    """Whether ``ws`` holds work that is not in ``commit`` (changes, or commits past it)."""
    _, status = git("status", "--porcelain", "--untracked-files=all", cwd=ws)
    if status.strip():
        return True
    head = git("rev-parse", "HEAD", cwd=ws)[1].strip()
    return commit is not None and head != commit


def write_bundle(ws: Path, branch: str, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    git("bundle", "create", "--quiet", str(tmp), f"refs/heads/{branch}", cwd=ws)
    os.replace(tmp, dest)


@retry_on_git_locks
def publish_branch(source: Path, bundle: Path, branch: str) -> None:
    """Set ``branch`` in the local ``source`` from ``bundle``; HEAD, index, tree untouched.
    The caller holds the per-source lock, and only logist writes ``logist/*`` branches, so a
    lock file on that branch is a leftover of a killed logist and is removed."""
    gitdir = Path(git("rev-parse", "--absolute-git-dir", cwd=source)[1].strip())
    stale = gitdir / "refs" / "heads" / f"{branch}.lock"
    if branch.startswith("logist/") and stale.is_file():
        stale.unlink()
    git(
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        str(bundle),
        f"+refs/heads/{branch}:refs/heads/{branch}",
        cwd=source,
    )
