"""Workspaces as named volumes, on an engine that does not share logist's file system.

Only data crosses: the workspace is cloned on the host (from logist's repository of the job,
before any step has seen it) and sent as a tar archive into the volume; what comes back from the
helper container is a bundle, read out of an archive as one regular file of bounded size.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from logist import containers
from logist.container_spec import ContainerSpec
from logist.errors import HarvestFailed, LogistError
from logist.jobrun import JobRun
from logist.store import owner_id

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

MAX_BUNDLE = 8 << 30  # bytes of one harvest bundle logist reads back from an engine


def new_name(job_id: str) -> str:
    """A volume name for a job's workspace, new each time the job is placed on an engine."""
    return f"logist-{job_id}-{secrets.token_hex(4)}"


def pack_tree(src: Path, dest: BinaryIO, *, uid: int, gid: int, root: str = "workspace") -> None:
    """Write a tar of logist's own fresh clone ``src`` to ``dest`` under ``root/``: links stored
    as links (never followed), every entry owned by ``uid:gid`` (the step's user), ``root``
    itself included (extracted at ``/``, that entry gives the volume's root to the user)."""

    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    with tarfile.open(fileobj=dest, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(str(src), arcname=root, recursive=True, filter=owned)


def put_tree(cli: DockerClient, run: JobRun, src: Path, *, image: str) -> None:
    """Copy the clone at ``src`` into the job's (empty) volume as the job's user, through a
    container that is created but never started."""
    import docker

    job = run.job
    volume = job.volume
    assert volume is not None
    uid, gid = (int(x) for x in job.user.split(":"))
    # named like a setup's temp clone: a killed setup's archive is removed with them
    archive = run.dir.setup_tmp(f"{os.getpid()}.tar")
    try:
        with open(archive, "wb") as fh:
            pack_tree(src, fh, uid=uid, gid=gid)
        box = containers.create(
            cli,
            ContainerSpec(
                image=image,
                command=["true"],
                job_id=job.id,
                step="setup",
                jobs_root=run.store.root,
                owner=owner_id(),
                mounts=[docker.types.Mount("/workspace", volume, type="volume")],
                cap_add=[],
                network_disabled=True,
            ),
        )
        try:
            with (
                containers.engine_errors(f"copying the workspace into volume {volume}", cli),
                open(archive, "rb") as fh,
            ):
                if not box.put_archive("/", fh):
                    raise LogistError(f"the engine did not take the workspace into {volume}")
        finally:
            with contextlib.suppress(Exception):
                box.remove(force=True, v=True)
    finally:
        archive.unlink(missing_ok=True)


def put_file(container: Container, path: str, data_path: Path) -> None:
    """Put the host file ``data_path`` into ``container`` at ``path`` (a directory that
    exists there), as root, mode 0600."""
    archive = data_path.with_name(data_path.name + ".tar")
    try:
        with tarfile.open(archive, "w") as tar:
            info = tar.gettarinfo(str(data_path), arcname=data_path.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o600
            with open(data_path, "rb") as fh:
                tar.addfile(info, fh)
        with (
            containers.engine_errors("copying a file into the harvest helper", container.client),
            open(archive, "rb") as fh,
        ):
            if not container.put_archive(path, fh):
                raise LogistError("the engine did not take a file into the harvest helper")
    finally:
        archive.unlink(missing_ok=True)


def send_repository(container: Container, repo: Path, names: list[str], exchange: Path) -> None:
    """``names`` of the trusted ``repo`` as a bundle into ``container`` (not yet started) at
    ``/tmp/logist-trusted.bundle``, with a shallow source's roots as ``.shallow`` (the bundle
    alone is no repository then); ``exchange`` holds the files on their way."""
    from logist import gitops

    bundle = exchange / "logist-trusted.bundle"
    shallow = exchange / "logist-trusted.shallow"
    try:
        gitops.write_bundle(repo, names, bundle)
        put_file(container, "/tmp", bundle)
        if (repo / "shallow").is_file():
            shutil.copyfile(repo / "shallow", shallow)
            put_file(container, "/tmp", shallow)
    finally:
        bundle.unlink(missing_ok=True)
        shallow.unlink(missing_ok=True)


class _Chunks:
    """A read-only file over an iterator of byte chunks (an archive streamed by the engine)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data


def fetch_file(
    container: Container, path: str, dest_dir: Path, name: str, limit: int = MAX_BUNDLE
) -> Path:
    """Read the file ``path`` out of ``container`` into ``dest_dir/name``: the archive must
    hold it as its one regular file, at most ``limit`` bytes; nothing else is written.

    Raises:
        HarvestFailed: anything else came back.
    """
    with containers.engine_errors("reading the harvest bundle", container.client):
        stream, _stat = container.get_archive(path)
        with tarfile.open(fileobj=_Chunks(stream), mode="r|") as tar:  # type: ignore[arg-type]
            member = tar.next()
            if member is None or not member.isreg() or member.name != os.path.basename(path):
                raise HarvestFailed("harvest refused: the helper's bundle is not a regular file")
            if member.size > limit:
                raise HarvestFailed(
                    f"harvest refused: the helper's bundle is {member.size} bytes, over "
                    f"max_result_size {limit}"
                )
            src = tar.extractfile(member)
            assert src is not None
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            dir_fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
                fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    result = dest_dir / name
    if not stat.S_ISREG(os.lstat(result).st_mode):
        raise HarvestFailed("harvest refused: the helper's bundle is not a regular file")
    return result
