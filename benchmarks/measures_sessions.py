"""Sessions (issue 23): one ``s.exec(["true"])`` round trip of a running session through the
Python API vs the docker SDK's ``exec_run`` of the same command in the same container,
measured in the same run (``docker exec CONTAINER true``, the CLI, is noted beside them)."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path

from benchmarks.core import BenchError, Context, Result, alternate, timed
from benchmarks.fixtures import make_repo


def exec_round_trip(ctx: Context, scratch: Path, res: Result) -> None:
    import docker

    import logist

    repo = make_repo(scratch / "src", 3)
    rt = logist.Runtime(scratch / "jobs", notify=lambda msg: None)
    reps = ctx.reps(30, 8)
    res.title = f"s.exec(['true']) of a running session, {reps} times"
    with rt.session(repo=str(repo), image=ctx.image, network="none") as s:
        cli = docker.from_env()
        (box,) = cli.containers.list(filters={"label": f"logist.job={s.id}"})

        def api(i: int) -> float:
            seconds = timed(lambda: s.exec(["true"]))
            return seconds

        def sdk(i: int) -> float:
            return timed(lambda: box.exec_run(["true"]))

        res.logist, res.baseline = alternate(reps, api, sdk, ctx.say, "exec_run")
        cli_times = []
        for _ in range(ctx.pick(10, 3)):
            done = subprocess.run(["docker", "exec", box.id, "true"], capture_output=True)
            if done.returncode != 0:
                raise BenchError(f"docker exec failed: {done.stderr[-200:]!r}")
            cli_times.append(timed(lambda: subprocess.run(["docker", "exec", box.id, "true"])))
        res.notes.append(f"docker exec CONTAINER true: median {statistics.median(cli_times):.3f} s")
        cli.close()
