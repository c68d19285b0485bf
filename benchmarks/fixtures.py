"""What the measures run on: repositories of N files, kept workspaces, many job directories."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.core import GIT_IDENTITY, BenchError, run


def git(repo: Path, *args: str) -> str:
    return run(["git", "-c", "safe.directory=*", *GIT_IDENTITY, "-C", str(repo), *args]).stdout


def make_repo(path: Path, files: int, per_dir: int = 200) -> Path:
    """A git repository at ``path`` whose one commit on ``main`` holds ``files`` small files
    (``per_dir`` to a directory), in a pack as a real repository has them. Made with
    ``git fast-import``, so 50,000 files take a second; its working tree is not checked out
    (only the repository is cloned)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    chunks = [b"commit refs/heads/main\ncommitter bench <bench@localhost> 1700000000 +0000\n"]
    chunks.append(b"data 5\ninit\n")
    for i in range(files):
        name = f"d{i // per_dir:04d}/f{i:06d}.txt" if files > per_dir else f"f{i:06d}.txt"
        body = f"file {i} of the benchmark repository\n".encode()
        chunks.append(b"M 100644 inline %s\ndata %d\n%s\n" % (name.encode(), len(body), body))
    chunks.append(b"\n")
    proc = subprocess.run(
        ["git", "fast-import", "--quiet"], input=b"".join(chunks), cwd=path, capture_output=True
    )
    if proc.returncode != 0:
        raise BenchError(f"git fast-import failed: {proc.stderr.decode(errors='replace')[:300]}")
    return path


def clone(repo: Path, dest: Path) -> None:
    """The baseline's workspace: ``git clone --local`` with its checkout."""
    run(["git", "clone", "-q", "--local", str(repo), str(dest)])


def kept_job(store, repo: Path, image: str, job_id: str) -> Path:
    """A job that ran one ``true`` step with ``cleanup: never``: its workspace is kept, its
    work harvested, bundled and landed in the source, as a user finds it before
    ``logist job cleanup``. Made in-process with logist's own engine. Returns the workspace."""
    from logist import Runtime

    rt = Runtime(store.root, notify=lambda msg: None)
    rt.create(job_id, repo=str(repo), image=image, steps=["true"], cleanup="never", network="none")
    [result] = rt.run_jobs([job_id])
    if result.exit_code != 0 or result.job.state != "succeeded":
        raise BenchError(f"setting up kept job {job_id} failed: {result.error or result.job.state}")
    ws = store.workspace(job_id)
    if not (ws / ".git").is_dir():
        raise BenchError(f"kept job {job_id} has no workspace")
    return ws


def make_job_dirs(root: Path, count: int, repo: str, image: str) -> None:
    """``count`` finished jobs (no workspace: nothing for a sweep to remove). The first is made
    with ``Store.create``; the others are written the same way without its fsync per manifest
    (10,000 fsyncs would take half a minute of set-up). Each has a lock file, as a job
    that ran has."""
    from logist.model import SUCCEEDED, WS_REMOVED, Job, Step, now
    from logist.store import LOCK, MANIFEST, Store, owner_id

    root.mkdir(parents=True, exist_ok=True)
    store = Store(root)
    old = (datetime.now(UTC) - timedelta(days=2)).isoformat(timespec="milliseconds")
    old = old.replace("+00:00", "Z")
    owner = owner_id().encode()
    for i in range(count):
        job = Job(
            id=f"bench-{i:05d}",
            repo=repo,
            image=image,
            steps=[Step(index=1, run="true", state=SUCCEEDED, exit_code=0, started_at=old)],
            state=SUCCEEDED,
            created_at=old,
            updated_at=old,
            workspace_state=WS_REMOVED,
        )
        if i == 0:
            store.create(job)
            continue
        job_dir = store.job_dir(job.id)
        job_dir.mkdir()
        (job_dir / "logs").mkdir()
        job.updated_at = now()
        data = json.dumps(job.to_dict(), indent=2, sort_keys=True).encode() + b"\n"
        (job_dir / MANIFEST).write_bytes(data)
        (job_dir / LOCK).write_bytes(owner)
    if len(store.ids()) != count:
        raise BenchError(f"made {len(store.ids())} job directories, not {count}")


def chown_tree(path: Path, uid: int, gid: int, skip: Path | None = None) -> None:
    """``chown -R`` without following symlinks, leaving ``skip`` (and what is in it) alone."""
    os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)
