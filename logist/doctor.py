"""``logist doctor``: is this machine ready to run jobs?"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import asdict, dataclass

from logist import containers, podman
from logist.errors import LogistError, Rejected
from logist.store import Store, owner_id, private_problem

DEFAULT_IMAGES = ("logist/step:latest", containers.BUSYBOX)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def run_checks(store: Store, engines: list[str]) -> list[Check]:
    """The checks, for each of ``engines``."""
    checks: list[Check] = [_no_lazy_fetch()]
    for n, engine in enumerate(engines):
        checks += _engine_checks(store, engine, first=n == 0)
    return checks


def _engine_checks(store: Store, engine: str, first: bool) -> list[Check]:
    from logist.engines import uses_volumes

    checks = []
    cli = None
    info = None
    where = store.docks.get(engine).url
    try:
        cli = store.docks.get(engine).client()
        with containers.engine_errors("asking the engine its version", cli):
            info = podman.engine_info(cli)
        checks.append(Check("engine", True, f"{info.label} at {where}"))
    except LogistError as exc:
        checks.append(Check("engine", False, str(exc)))
    if first:
        checks.append(_writable(store))
        checks.append(_private(store))
    if cli is None:
        checks.append(Check("jobs-root-visible", False, "no engine to check with"))
        checks.append(Check("images", False, "no engine to check with"))
        return checks
    present, missing = [], []
    for image in DEFAULT_IMAGES:
        try:
            cli.images.get(image)
            present.append(image)
        except Exception:
            missing.append(image)
    if uses_volumes(engine):
        checks.append(
            Check("jobs-root-visible", True, f"not needed: workspaces are volumes on {where}")
        )
    else:
        checks.append(_visible(cli, store, present))
    if info is not None and info.kind == "Podman" and info.rootless:
        checks.extend(_rootless_podman(cli, store, info, present))
    if info is not None and info.kind == "Docker":
        checks.append(_job_bridges(where))
    remote = uses_volumes(engine) and not where.startswith("unix://")
    fix = (
        f"logist image push IMAGE --engine {where}"
        if remote
        else "build them with scripts/build-images.sh"
    )
    checks.append(
        Check(
            "images",
            not missing,
            f"present at {where}: " + ", ".join(present)
            if not missing
            else f"missing at {where}: " + ", ".join(missing) + f" ({fix})",
        )
    )
    return checks


def _no_lazy_fetch() -> Check:
    """Host git honours ``GIT_NO_LAZY_FETCH`` (git 2.39.4 and every release since April 2024):
    a source that is a partial clone never has git ask its promisor remote, which its config
    names (with the commands that run for it). Asked of git itself: a partial clone of its own
    making with an object missing, its remote a path that does not exist."""
    import subprocess
    import tempfile

    from logist import gitops

    with tempfile.TemporaryDirectory(prefix="logist-doctor-") as tmp:
        repo = os.path.join(tmp, "partial.git")
        try:
            gitops.git("init", "--quiet", "--bare", "--", repo, isolated=True)
            for key, value in (("core.repositoryformatversion", "1"),
                               ("extensions.partialClone", "origin"),
                               ("remote.origin.url", os.path.join(tmp, "none"))):  # fmt: skip
                gitops.git(f"--git-dir={repo}", "config", key, value, isolated=True)
            said = subprocess.run(
                ["git", f"--git-dir={repo}", "cat-file", "-e", "1" * 40],
                env=gitops._env(isolated=True), capture_output=True, text=True, timeout=30,
            ).stderr  # fmt: skip
        except (LogistError, OSError, subprocess.SubprocessError) as exc:
            return Check("git", False, f"git could not be asked: {exc}")
    if "lazy fetching disabled" in said:
        return Check("git", True, "host git never fetches a partial clone's missing objects")
    return Check("git", False, "host git ignores GIT_NO_LAZY_FETCH: use git 2.39.4 or later "
                 "(a partial-clone source's promisor remote could be asked)")  # fmt: skip


def _job_bridges(where: str) -> Check:
    """The host's firewall keeps Docker's job networks apart while the engine makes a network
    (scripts/job-bridges.sh; docs/security.md): checkable as root beside a local engine."""
    import shutil
    import subprocess

    name = "job-networks-apart"
    if not where.startswith("unix://") or os.geteuid() != 0 or not shutil.which("iptables"):
        return Check(name, True, "not checked: needs root, iptables and a local engine")
    routed = ["-m", "physdev", "!", "--physdev-is-bridged"]
    for ends in (["-i", "lgj+", "-o", "lgj+"], ["-i", "lgj+", "-o", "br-+"],
                 ["-i", "br-+", "-o", "lgj+"]):  # fmt: skip
        try:
            found = subprocess.run(
                ["iptables", "-w", "5", "-t", "mangle", "-C", "FORWARD", *routed, *ends,
                 "-j", "DROP"], capture_output=True, timeout=30,
            ).returncode == 0  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            found = False
        if not found:
            return Check(name, False, "the host's firewall does not keep Docker's job networks "
                         "apart while it makes a network: run scripts/job-bridges.sh as root "
                         "(docs/security.md)")  # fmt: skip
    return Check(name, True, "the host's firewall keeps Docker's job networks apart")


def _writable(store: Store) -> Check:
    probe = store.root / f".doctor-{secrets.token_hex(4)}"
    try:
        probe.write_text("ok")
        probe.unlink()
        return Check("jobs-root-writable", True, str(store.root))
    except OSError as exc:
        return Check("jobs-root-writable", False, f"{store.root}: {exc.strerror}")


def _private(store: Store) -> Check:
    """The jobs root is private to the user running logist (a step's setuid file stays ours)."""
    try:
        problem = private_problem(store.root)
    except OSError as exc:
        return Check("jobs-root-private", False, f"{store.root}: {exc.strerror}")
    return Check(
        "jobs-root-private",
        problem is None,
        problem or f"{store.root}: only its owner can enter it",
    )


def _visible(cli, store: Store, images: list[str]) -> Check:
    """The engine must see the jobs root at the same path, or bind mounts show empty dirs."""
    if not images:
        return Check("jobs-root-visible", False, "no default image to check with")
    marker = store.root / f".doctor-{secrets.token_hex(4)}"
    root = str(store.root)
    unseen = (
        f"the engine does not see {root} at the same path (mount it at the same path when "
        "logist runs in a container; a DOCKER_HOST on another machine cannot run jobs of this "
        "jobs root): jobs will exit 3 before their first step"
    )
    try:
        marker.write_text("logist")
        code, logs = containers.run_helper(
            cli,
            image=images[-1],
            command=["cat", str(marker)],
            job_id="doctor",
            jobs_root=store.root,
            owner=owner_id(),
            binds={root: (root, True)},
            user=f"{os.getuid()}:{os.getgid()}",
            timeout=60,
        )
        ok = code == 0 and "logist" in logs
        return Check("jobs-root-visible", ok, f"the engine sees {root}" if ok else unseen)
    except Rejected as exc:  # the bind mount refused: no such path over there
        return Check("jobs-root-visible", False, f"{unseen} ({exc})")
    except LogistError as exc:
        return Check("jobs-root-visible", False, str(exc))
    finally:
        marker.unlink(missing_ok=True)


def _rootless_podman(cli, store: Store, info: podman.EngineInfo, images: list[str]) -> list[Check]:
    """What a rootless Podman does differently: whether a step as the invoking user can write
    its workspace (``userns = "keep-id"``), which network steps get, resource limits."""
    checks = [_user_writes(cli, store, images)]
    if podman.bridge_possible(cli):
        checks.append(Check("network", True, "bridge networking works (slirp4netns)"))
    else:
        checks.append(
            Check(
                "network",
                True,
                f"no bridge networking ({podman.TUN} is not usable by this user): steps run "
                f"with --network {podman.FALLBACK_NETWORK} unless --network host is given",
            )
        )
    if info.limits_ignored:
        detail = "cgroup v1: --memory/--cpus/--pids are ignored (not enforced) by rootless Podman"
    else:
        detail = f"cgroup v{info.cgroup_version or '?'}: enforced"
    checks.append(Check("resource-limits", True, detail))
    return checks


def _user_writes(cli, store: Store, images: list[str]) -> Check:
    """A container as our uid:gid writes a directory of ours as ours (rootless Podman maps it
    so only with ``userns = "keep-id"``)."""
    if not images:
        return Check("rootless-user", False, "no default image to check with")
    probe = store.root / f".doctor-{secrets.token_hex(4)}"
    fix = (
        'set userns = "keep-id" under [containers] in ~/.config/containers/containers.conf '
        "and restart the Podman service (scripts/ensure-podman.sh --rootless USER does)"
    )
    try:
        probe.mkdir(mode=0o700)
        code, _logs = containers.run_helper(
            cli,
            image=images[-1],
            command=["touch", "/probe/written"],
            job_id="doctor",
            jobs_root=store.root,
            owner=owner_id(),
            binds={str(probe): ("/probe", False)},
            user=f"{os.getuid()}:{os.getgid()}",
            timeout=60,
        )
        written = probe / "written"
        ok = code == 0 and written.exists() and written.stat().st_uid == os.getuid()
        detail = (
            "a step as the invoking user writes its workspace as that user (keep-id)"
            if ok
            else f"a step as the invoking user cannot write its workspace: {fix}"
        )
        return Check("rootless-user", ok, detail)
    except LogistError as exc:
        return Check("rootless-user", False, str(exc))
    finally:
        with contextlib.suppress(OSError):
            (probe / "written").unlink(missing_ok=True)
            probe.rmdir()


def report(store: Store, engines: list[str]) -> dict:
    checks = run_checks(store, engines)
    return {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
