"""The two kinds of workspace behind one interface, chosen once per job by its placement
(``workspace_of``): ``$JOB_DIR/workspace`` bind-mounted where the engine shares logist's file
system, or a named volume on an engine that does not. The runner, the helper, cancel and
cleanup ask the interface; none of them asks which kind it is."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

from logist import containers
from logist.hostprocs import processes_using, terminate
from logist.jobrun import JobRun
from logist.safefs import delete_tree, is_real_dir, tree_size
from logist.store import owner_id
from logist.workspace import make_writable_for, prepare_workspace

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from logist.results import Report


class Workspace(Protocol):
    """Where a job's steps work."""

    run: JobRun

    def where(self) -> str:
        """Where it is, for people: a path, or a volume and its engine."""

    def mount(self) -> Any:
        """The mount of it at ``/workspace`` (the engine refuses a bind of a missing path)."""

    def prepare(self) -> None:
        """Set it up (once per job) and hand it to the step's user."""

    def present(self) -> bool:
        """Whether it is there (a volume: asked of the engine)."""

    def exists(self, cli: DockerClient) -> bool:
        """Whether anything is there to remove (a link or a file in its place counts)."""

    def users(self, cli: DockerClient) -> list[Container]:
        """Every container (labelled or not) that has it mounted."""

    def check_removable(self, report: Report, *, force: bool, dry_run: bool) -> bool:
        """Before the harvest: whether removal goes on (False: the report says why, or the
        removal is already done)."""

    def size(self) -> int:
        """Bytes it holds, as far as logist can tell here."""

    def delete(self, cli: DockerClient, report: Report) -> None:
        """Remove it (the work is harvested); into ``report``."""


def workspace_of(run: JobRun) -> Workspace:
    """The job's workspace: a volume when its placement named one, else a bind mount."""
    return VolumeWorkspace(run) if run.job.volume is not None else BindWorkspace(run)


class BindWorkspace:
    """``$JOB_DIR/workspace`` on this host, bind-mounted into the containers."""

    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.path = run.dir.workspace

    def where(self) -> str:
        return str(self.path)

    def mount(self) -> Any:
        import docker

        return docker.types.Mount("/workspace", str(self.path), type="bind")

    def prepare(self) -> None:
        make_writable_for(self.run, prepare_workspace(self.run))

    def present(self) -> bool:
        return is_real_dir(self.path)

    def exists(self, cli: DockerClient) -> bool:
        return os.path.lexists(self.path)

    def users(self, cli: DockerClient) -> list[Container]:
        return containers.mounting(cli, self.path)

    def check_removable(self, report: Report, *, force: bool, dry_run: bool) -> bool:
        if not is_real_dir(self.path):  # a symlink (or file) there: never followed, it goes
            if not dry_run:
                delete_tree(self.path, self.run.dir.path)
            report.workspace_removed = True
            return False
        procs = processes_using(self.path)  # host processes inside the workspace
        report.processes = [f"{pid} {cmd}" for pid, cmd in procs]
        if procs and not dry_run:
            if not force:
                report.error = "processes use the workspace (--force terminates them): " + (
                    ", ".join(report.processes)
                )
                return False
            terminate([pid for pid, _ in procs])
        return True

    def size(self) -> int:
        return tree_size(self.path)

    def delete(self, cli: DockerClient, report: Report) -> None:
        job_dir = self.run.dir.path
        result = delete_tree(self.path, job_dir)
        report.bytes_freed = result.bytes_freed
        if result.foreign:  # another uid's files: removed from a short-lived root container
            report.bytes_freed += self._delete_as_root(cli)
            result = delete_tree(self.path, job_dir)
            report.bytes_freed += result.bytes_freed
        report.left_behind += result.foreign + result.stuck
        report.workspace_removed = not os.path.lexists(self.path)
        if not report.workspace_removed and not report.left_behind:
            report.left_behind.append(str(self.path))

    def _delete_as_root(self, cli: DockerClient) -> int:
        """Empty the workspace as root in a short-lived container that mounts it alone (not
        the job directory: its manifest and logist's repository are no container's). GNU
        find (the helper's image) walks any depth; busybox's stops at PATH_MAX; the job's
        own image comes last, its entrypoint not run. The host removes what is left."""
        from logist.container_spec import helper_image

        run = self.run
        before = tree_size(self.path)
        containers.run_as_root(
            cli,
            images=(helper_image(), containers.BUSYBOX, run.job.image),
            command=["find", "/workspace", "-mindepth", "1", "-delete"],
            job_id=run.job.id,
            jobs_root=run.store.root,
            owner=owner_id(),
            host_path=self.path,
            mount_at="/workspace",
        )
        return max(before - tree_size(self.path), 0)


class VolumeWorkspace:
    """The named volume ``job.volume`` on the job's engine (set up and harvested by helper
    containers there; nothing of it on this host)."""

    def __init__(self, run: JobRun) -> None:
        assert run.job.volume is not None
        self.run = run
        self.name: str = run.job.volume

    def where(self) -> str:
        return f"volume {self.name} on {self.run.dock.url}"

    def mount(self) -> Any:
        import docker

        return docker.types.Mount("/workspace", self.name, type="volume")

    def prepare(self) -> None:
        prepare_workspace(self.run)  # its files are written as the step's user

    def present(self) -> bool:
        return containers.volume_exists(self.run.dock.client(), self.name)

    def exists(self, cli: DockerClient) -> bool:
        return containers.volume_exists(cli, self.name)

    def users(self, cli: DockerClient) -> list[Container]:
        return containers.using_volume(cli, self.name)

    def check_removable(self, report: Report, *, force: bool, dry_run: bool) -> bool:
        return True

    def size(self) -> int:
        return 0  # on the engine: not measured from here

    def delete(self, cli: DockerClient, report: Report) -> None:
        # a container of the job started meanwhile (never by logist: the lock is ours) goes too
        containers.stop_and_remove(self.users(cli), grace=0)
        report.workspace_removed = containers.remove_volume(cli, self.name)
        if not report.workspace_removed:
            report.left_behind.append(self.where())
