"""Measures that run jobs: a whole job, one step, cancel, many jobs in parallel."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.core import (
    BENCH_LABEL,
    GIT_IDENTITY,
    BenchError,
    Context,
    Result,
    alternate,
    docker_client,
    run,
    timed,
    timed_run,
)
from benchmarks.fixtures import make_repo

HELPER = "logist/step:latest"  # the careful script's git image (the helper's)


def job_state(root: Path, job_id: str) -> str:
    return json.loads((root / job_id / "job.json").read_text())["state"]


def expect_done(root: Path, job_id: str, state: str = "succeeded") -> None:
    """The job is ``state`` and its workspace is gone (cleanup policy ``always``)."""
    got = job_state(root, job_id)
    if got != state:
        raise BenchError(f"job {job_id} is {got}, not {state}")
    if (root / job_id / "workspace").exists():
        raise BenchError(f"job {job_id} left its workspace")


def job_containers(root: Path, job_id: str, running_only: bool = False) -> list:
    filters = {"label": [f"logist.jobs-dir={root}", f"logist.job={job_id}"]}
    if running_only:
        filters["status"] = "running"
    return docker_client().containers.list(all=not running_only, filters=filters)


# --- a whole job -------------------------------------------------------------------------------

BASELINE_JOB = """set -e
ws=$1 src=$2 image=$3 label=$4 step=$5
git clone -q --local "$src" "$ws"
for n in 1 2 3; do
  docker run --rm --init --label "$label" -v "$ws:/workspace" -w /workspace "$image" sh -c "$step"
done
git -C "$ws" add -A
git -C "$ws" {identity} commit -q --allow-empty -m "steps done"
rm -rf "$ws"
"""

# What a careful user writes for untrusted steps: the harvest's git runs in a container of a git
# image (no network, only DAC_OVERRIDE), never on the host over the step's files; a bundle
# comes out and is fetched into a repository of the user's after every step.
CAREFUL_JOB = """set -e
ws=$1 src=$2 image=$3 label=$4 step=$5 gitimage=$6 out=$7
git clone -q --local "$src" "$ws"
git clone -q --bare --local "$src" "$out/trusted.git"
for n in 1 2 3; do
  docker run --rm --init --label "$label" -v "$ws:/workspace" -w /workspace "$image" sh -c "$step"
  docker run --rm --label "$label" --network none --cap-drop ALL --cap-add DAC_OVERRIDE \
    -v "$ws:/workspace" -v "$out:/out" -w /workspace "$gitimage" sh -c \
    'git add -A && git {identity} commit -q --allow-empty -m "step $1" &&
     git bundle create -q /out/step.bundle main' harvest "$n"
  git -C "$out/trusted.git" fetch -q "$out/step.bundle" "main:refs/heads/result"
done
rm -rf "$ws" "$out"
"""

TRUE = "true"
# A step that changes the tree: one file edited, ten written
WRITES = (
    'echo "$RANDOM" >> f000001.txt; mkdir -p gen; '
    'for i in 1 2 3 4 5 6 7 8 9 10; do echo "$i $RANDOM" > gen/f$i; done'
)


def _whole(ctx: Context, scratch: Path, res: Result, files: int, step: str, careful: bool) -> None:
    repo = make_repo(scratch / "src", files)
    root = scratch / "jobs"
    steps = [arg for _ in range(3) for arg in ("--step", step)]
    script = (CAREFUL_JOB if careful else BASELINE_JOB).format(identity=" ".join(GIT_IDENTITY))
    label = f"{BENCH_LABEL}={ctx.run_id}"

    def logist(i: int) -> float:
        job_id = f"whole-{i}"
        one = ctx.lg(root, "run", job_id, "--repo", str(repo), "--image", ctx.image)
        seconds = timed_run([*one, *steps])
        expect_done(root, job_id)
        return seconds

    def baseline(i: int) -> float:
        ws, out = scratch / f"baseline-{i}", scratch / f"out-{i}"
        args = [ws, repo, ctx.image, label, step]
        if careful:
            out.mkdir()
            args += [HELPER, out]
        seconds = timed_run(["bash", "-c", script, "bench", *args])
        if ws.exists() or out.exists():
            raise BenchError("the baseline script left its workspace")
        return seconds

    res.logist, res.baseline = alternate(ctx.reps(5, 2), logist, baseline, ctx.say)


def whole_job(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist run`` (one command: create + run) of 3 x ``true`` on a small repository, vs the
    shell script a user would write for the same."""
    _whole(ctx, scratch, res, 20, TRUE, careful=False)


def whole_job_writes(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist run`` of 3 steps that write files, 200-file repository, vs the plain script."""
    _whole(ctx, scratch, res, 200, WRITES, careful=False)


def whole_job_careful(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist run`` of 3 steps that write files, 200-file repository, vs the careful script
    (each harvest's git in a container, a bundle fetched after every step)."""
    _whole(ctx, scratch, res, 200, WRITES, careful=True)


# --- one step on a ready workspace ---------------------------------------------------------------


def one_step(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist job step`` of a ``true`` step whose workspace is ready, vs ``docker run --rm
    --init -v WS:/workspace IMAGE true`` on that same workspace."""
    repo = make_repo(scratch / "src", 20)
    root = scratch / "jobs"
    reps = ctx.reps(7, 3)
    steps = [arg for _ in range(reps + 2) for arg in ("--step", "true")]
    job_id = run(
        [*ctx.lg(root, "job", "create", "--repo", str(repo), "--image", ctx.image), *steps]
    ).stdout.strip()
    run(ctx.lg(root, "job", "step", job_id))  # sets the workspace up: not timed
    ws = root / job_id / "workspace"
    if not (ws / ".git").is_dir():
        raise BenchError("the workspace is not ready after the first step")
    label = f"{BENCH_LABEL}={ctx.run_id}"

    def logist(i: int) -> float:
        seconds = timed_run(ctx.lg(root, "job", "step", job_id))
        if job_state(root, job_id) != "pending" or not ws.is_dir():
            raise BenchError("job step did not leave the job pending with its workspace")
        return seconds

    def baseline(i: int) -> float:
        docker_run = ["docker", "run", "--rm", "--init", "--label", label]
        return timed_run([*docker_run, "-v", f"{ws}:/workspace", ctx.image, "true"])

    try:
        res.logist, res.baseline = alternate(reps, logist, baseline, ctx.say)
    finally:
        run(ctx.lg(root, "job", "cleanup", job_id))
    if ws.exists():
        raise BenchError("job cleanup left the workspace")


# --- the cost of each step inside one run ------------------------------------------------------


def step_in_run(ctx: Context, scratch: Path, res: Result) -> None:
    """The extra cost of each step inside one ``job run``: (a 10-step job - a 1-step job) / 9,
    vs one ``docker run --rm --init -v WS:/workspace IMAGE true``."""
    repo = make_repo(scratch / "src", 20)
    root = scratch / "jobs"
    label = f"{BENCH_LABEL}={ctx.run_id}"
    ws = scratch / "ws"
    run(["git", "clone", "-q", str(repo), str(ws)])

    def job_of(n: int) -> float:
        create = ctx.lg(root, "job", "create", "--repo", str(repo), "--image", ctx.image)
        job_id = run([*create, *[a for _ in range(n) for a in ("--step", "true")]]).stdout.strip()
        seconds = timed_run(ctx.lg(root, "job", "run", job_id))
        expect_done(root, job_id)
        return seconds

    def logist(i: int) -> float:
        return (job_of(10) - job_of(1)) / 9

    def baseline(i: int) -> float:
        docker_run = ["docker", "run", "--rm", "--init", "--label", label]
        return timed_run([*docker_run, "-v", f"{ws}:/workspace", ctx.image, "true"])

    res.logist, res.baseline = alternate(ctx.reps(5, 2), logist, baseline, ctx.say)


def first_step(ctx: Context, scratch: Path, res: Result) -> None:
    """From the job's creation (``created_at``, in ``logist run``) to its first step's command
    running (the host's uptime read by the step: ``/proc/uptime`` is not namespaced),
    200-file repository."""
    repo = make_repo(scratch / "src", 200)
    root = scratch / "jobs"

    def logist(i: int) -> float:
        job_id = f"first-{i}"
        one = ctx.lg(root, "run", job_id, "--repo", str(repo), "--image", ctx.image)
        run([*one, "--step", "cat /proc/uptime"])
        with open("/proc/uptime") as fh:
            booted = time.time() - float(fh.read().split()[0])
        manifest = json.loads((root / job_id / "job.json").read_text())
        created = parse_iso(manifest["created_at"])
        log = run(ctx.lg(root, "job", "logs", job_id)).stdout.split()
        return booted + float(log[0]) - created

    def reference(i: int) -> float:
        label = f"{BENCH_LABEL}={ctx.run_id}"
        with open("/proc/uptime") as fh:
            before = float(fh.read().split()[0])
        docker_run = ["docker", "run", "--rm", "--init", "--label", label, ctx.image]
        return float(run([*docker_run, "cat", "/proc/uptime"]).stdout.split()[0]) - before

    res.logist, docker_alone = alternate(ctx.reps(5, 2), logist, reference, ctx.say, "docker")
    res.notes.append(
        "reference, not a baseline: `docker run --rm --init IMAGE cat /proc/uptime` from its "
        f"start to the command running: median {statistics.median(docker_alone):.3f} s"
    )


def parse_iso(value: str) -> float:
    """Seconds since the epoch of logist's ISO-8601 UTC time (``...Z``)."""
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- cancel --------------------------------------------------------------------------------------

STUBBORN = "trap '' TERM; while true; do sleep 1; done"


def _wait(what: str, cond, limit: float, poll: float = 0.02) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {limit:g} s waiting for {what}")
        time.sleep(poll)


HONOURS = "sleep 300"  # under the container's init, SIGTERM ends it at once


def cancel(ctx: Context, scratch: Path, res: Result, grace: int = 5, step: str = STUBBORN) -> None:
    """From ``logist job cancel`` until no container of the job is left and the job is
    ``canceled``, for a step that ignores SIGTERM (``job run`` runs it in the background).
    ``grace`` is ``job cancel --grace`` (the contract's default is 5 s)."""
    repo = make_repo(scratch / "src", 20)
    root = scratch / "jobs"
    command_times: list[float] = []

    def logist(i: int) -> float:
        create = ctx.lg(root, "job", "create", "--repo", str(repo), "--image", ctx.image)
        job_id = run([*create, "--step", step]).stdout.strip()
        runner = subprocess.Popen(
            ctx.lg(root, "job", "run", job_id),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait("the step's container", lambda: job_containers(root, job_id, True), 60, 0.1)
            time.sleep(0.5)  # the shell has set its trap
            start = time.perf_counter()
            run(ctx.lg(root, "job", "cancel", job_id, "--grace", str(grace)))
            command_times.append(time.perf_counter() - start)

            def gone() -> bool:
                return job_state(root, job_id) == "canceled" and not job_containers(root, job_id)

            _wait("the job to be canceled with no container left", gone, 120)
            seconds = time.perf_counter() - start
            code = runner.wait(timeout=60)
            if code not in (1, 130):
                raise BenchError(f"job run exited {code} after cancel: {runner.stderr.read()}")
        finally:
            if runner.poll() is None:
                runner.terminate()
                runner.wait(timeout=30)
            runner.stderr.close()
        if (root / job_id / "workspace").exists():
            raise BenchError("the canceled job left its workspace")
        return seconds

    def reference(i: int) -> float:
        """The same step alone, stopped by ``docker stop -t GRACE`` + ``rm``."""
        label = f"{BENCH_LABEL}={ctx.run_id}"
        cid = run(
            ["docker", "run", "-d", "--init", "--label", label, ctx.image, "sh", "-c", step]
        ).stdout.strip()
        try:
            time.sleep(0.5)
            return timed(lambda: run(["docker", "stop", "-t", str(grace), cid]))
        finally:
            run(["docker", "rm", "-f", cid], check=False)

    res.logist, ref = alternate(ctx.reps(3, 1), logist, reference, ctx.say, "reference")
    res.notes.append(
        "the `job cancel` command itself returned after "
        + ", ".join(f"{t:.2f}" for t in command_times)
        + " s"
    )
    res.notes.append(
        f"reference, not the target's baseline: `docker stop -t {grace}` of the same step alone "
        f"took {statistics.median(ref):.2f} s (median of {len(ref)})"
    )
    return ref


# --- timeout and interruption (the bounds the tests leave to benchmarks) -------------------------


def step_timeout(ctx: Context, scratch: Path, res: Result) -> None:
    """``job run`` of one ``sleep 600`` step with ``--timeout 2``: from start to exit 1, the job
    ``failed`` and its step ``timed_out`` (setup, stop, harvest and cleanup included)."""
    repo = make_repo(scratch / "src", 20)
    root = scratch / "jobs"

    def logist(i: int) -> float:
        create = ctx.lg(root, "job", "create", "--repo", str(repo), "--image", ctx.image)
        job_id = run([*create, "--timeout", "2", "--step", "sleep 600"]).stdout.strip()
        seconds = timed_run(ctx.lg(root, "job", "run", job_id), check=False)
        expect_done(root, job_id, "failed")
        return seconds

    res.logist = [logist(i) for i in range(ctx.reps(3, 1))]
    res.notes.append("the step's own timeout is 2 s of this")


def interrupt(ctx: Context, scratch: Path, res: Result) -> None:
    """SIGTERM to ``job run`` of a step ignoring SIGTERM: from the signal until the runner
    exits 130 with the job ``interrupted`` and no container left (the 5 s grace included)."""
    import signal

    repo = make_repo(scratch / "src", 20)
    root = scratch / "jobs"

    def logist(i: int) -> float:
        create = ctx.lg(root, "job", "create", "--repo", str(repo), "--image", ctx.image)
        job_id = run([*create, "--step", STUBBORN]).stdout.strip()
        runner = subprocess.Popen(
            ctx.lg(root, "job", "run", job_id),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait("the step's container", lambda: job_containers(root, job_id, True), 60, 0.1)
            time.sleep(0.5)  # the shell has set its trap
            start = time.perf_counter()
            runner.send_signal(signal.SIGTERM)
            code = runner.wait(timeout=60)
            seconds = time.perf_counter() - start
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait(timeout=30)
            runner.stderr.close()
        if code != 130 or job_state(root, job_id) != "interrupted":
            raise BenchError(f"job run exited {code}, job {job_state(root, job_id)}")
        if job_containers(root, job_id):
            raise BenchError("the interrupted job left a container")
        return seconds

    res.logist = [logist(i) for i in range(ctx.reps(3, 1))]
    res.notes.append("the stop grace (5 s) is most of this")


# --- many jobs in parallel -----------------------------------------------------------------------


def sleeping_jobs(root: Path, repo: Path, image: str, jobs: int, steps: int) -> list[str]:
    """``jobs`` pending jobs of ``steps`` x ``sleep 1`` in a new jobs root; their ids."""
    from logist.jobs import create_job
    from logist.store import Store

    store = Store(root)
    root.mkdir()
    raw = {"repo": str(repo), "image": image, "steps": ["sleep 1"] * steps}
    return [create_job(store, {**raw, "id": f"job-{n:02d}"}).id for n in range(jobs)]


def parallel(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist job run --all --parallel P`` of N jobs of 2 x ``sleep 1``, vs docker alone
    (``xargs -P P`` of the same ``docker run``s), measured in the same run."""

    jobs, par, steps = ctx.pick(16, 8), 8, 2
    res.title = f"{jobs} jobs x {steps} x sleep 1, --parallel {par}"
    ideal = math.ceil(jobs / par) * steps * 1.0
    repo = make_repo(scratch / "src", 20)

    def logist(i: int) -> float:
        root = scratch / f"jobs-{i}"
        ids = sleeping_jobs(root, repo, ctx.image, jobs, steps)
        seconds = timed_run(ctx.lg(root, "job", "run", "--all", "--parallel", str(par)))
        for job_id in ids:
            expect_done(root, job_id)
        return seconds

    def reference(i: int) -> float:
        """Docker alone: the same containers, ``xargs -P`` running the jobs' two steps."""
        label = f"{BENCH_LABEL}={ctx.run_id}"
        one = f"docker run --rm --init --label {label} {ctx.image} sleep 1"
        script = f"seq {jobs} | xargs -P {par} -I{{}} sh -c '{one} && {one}'"
        return timed_run(["bash", "-c", script])

    res.logist, res.baseline = alternate(ctx.reps(2, 1), logist, reference, ctx.say)
    res.notes.append(
        f"the ideal ({jobs} / {par} rounds of {steps} x 1 s) is {ideal:.0f} s: logist "
        f"{statistics.median(res.logist) / ideal:.2f}x, docker alone "
        f"{statistics.median(res.baseline) / ideal:.2f}x"
    )


def cancel_grace1(ctx: Context, scratch: Path, res: Result) -> None:
    """``cancel`` with ``job cancel --grace 1``: the same path with a one-second grace."""
    cancel(ctx, scratch, res, grace=1)


def cancel_term(ctx: Context, scratch: Path, res: Result) -> None:
    """``cancel`` of a step that honours SIGTERM, vs ``docker stop`` of the same step alone."""
    res.baseline = cancel(ctx, scratch, res, step=HONOURS)
    res.notes.pop()  # the reference is this measure's baseline
