"""The command line: each command parses, calls one core function, prints. Errors become one
line on stderr and the contract's exit code (a traceback only with ``LOGIST_DEBUG=1``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from logist import __version__
from logist.errors import LogistError, UsageError

app = typer.Typer(
    help="logist: run jobs on a git repository, each step in a container, "
    "and leave nothing behind.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
job_app = typer.Typer(
    help="Create, run, inspect, cancel and clean up jobs.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(job_app, name="job")
image_app = typer.Typer(
    help="Images on engines without a registry.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(image_app, name="image")

_state: dict[str, Any] = {"jobs_dir": None}


def _store():
    from logist.store import Store, default_root

    return Store(default_root(_state["jobs_dir"]))


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _version(value: bool) -> None:
    if value:
        print(f"logist {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    jobs_dir: Annotated[
        str | None,
        typer.Option(
            "--jobs-dir", help="Jobs root (default: $LOGIST_JOBS_DIR, else ~/.logist/jobs)."
        ),
    ] = None,
    engine: Annotated[
        list[str] | None,
        typer.Option(
            "--engine",
            metavar="URL",
            help="An engine to run jobs on: unix://, tcp://, ssh:// or default (repeat; "
            "default: $LOGIST_ENGINES, comma-separated, else the one the docker SDK finds).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _state["jobs_dir"] = jobs_dir
    if engine:
        from logist.engines import parse

        os.environ["LOGIST_ENGINES"] = ",".join(parse(engine))


# --- job create / list / status / logs ----------------------------------------------------


# The options of a job spec, one definition each, shared by `job create` and `run`.
IdArg = Annotated[str | None, typer.Argument(help="Job id (generated when omitted).")]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="YAML spec.")]
RepoOpt = Annotated[str | None, typer.Option(help="Local git repository or git URL.")]
ImageOpt = Annotated[str | None, typer.Option(help="Image of the steps.")]
StepOpt = Annotated[list[str] | None, typer.Option(help="A step's command (repeat).")]
RefOpt = Annotated[str | None, typer.Option(help="Start from this ref (default: HEAD).")]
PromptOpt = Annotated[str | None, typer.Option(help="Given to steps as $LOGIST_PROMPT.")]
EnvOpt = Annotated[list[str] | None, typer.Option(help="K=V for the steps (repeat).")]
TimeoutOpt = Annotated[str | None, typer.Option(help="Per-step timeout, seconds.")]
MemoryOpt = Annotated[str | None, typer.Option(help="Memory limit, e.g. 512m.")]
CpusOpt = Annotated[str | None, typer.Option(help="CPU limit, e.g. 1.5.")]
PidsOpt = Annotated[str | None, typer.Option(help="Process limit (default 4096).")]
NetworkOpt = Annotated[str | None, typer.Option(help="bridge, none or host.")]
CapAddOpt = Annotated[
    list[str] | None,
    typer.Option("--cap-add", help="Give the steps this capability, e.g. NET_RAW (repeat)."),
]
RuntimeOpt = Annotated[
    str | None, typer.Option(help="OCI runtime the engine knows, e.g. runsc (gVisor).")
]
SecretOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--secret",
        help="Pass this variable of logist's environment to the steps, read when each step "
        "starts, never stored, masked as *** in their output (repeat).",
    ),
]
UserOpt = Annotated[str | None, typer.Option(help="UID:GID or root (default: yours).")]
PullOpt = Annotated[str | None, typer.Option(help="missing, always or never.")]
CleanupOpt = Annotated[str | None, typer.Option(help="always, on-success or never.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only the steps' output (no progress lines).")
]


def _create(file: Path | None, **options: Any):
    """Create a job from the spec options (``env`` as K=V items) and an optional YAML file."""
    from logist.jobs import create_job
    from logist.spec import parse_env

    env = options.pop("env")
    steps, caps, secrets = options.pop("step"), options.pop("cap_add"), options.pop("secret")
    raw = {**options, "steps": steps or None, "cap_add": caps or None, "secrets": secrets or None}
    if env:
        raw["env"] = parse_env(env)
    return create_job(_store(), raw, file)


@job_app.command("create")
def job_create(
    job_id: IdArg = None,
    file: FileOpt = None,
    repo: RepoOpt = None,
    image: ImageOpt = None,
    step: StepOpt = None,
    ref: RefOpt = None,
    prompt: PromptOpt = None,
    env: EnvOpt = None,
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
    cpus: CpusOpt = None,
    pids: PidsOpt = None,
    network: NetworkOpt = None,
    cap_add: CapAddOpt = None,
    runtime: RuntimeOpt = None,
    secret: SecretOpt = None,
    user: UserOpt = None,
    pull: PullOpt = None,
    cleanup: CleanupOpt = None,
) -> None:
    """Create a job; print its id alone on stdout.

    Example: logist job create --repo . --step 'my-agent' --secret ANTHROPIC_API_KEY
    """
    options = {k: v for k, v in locals().items() if k not in ("job_id", "file")}
    print(_create(file, id=job_id, **options).id)


@app.command("run")
def run(
    job_id: IdArg = None,
    file: FileOpt = None,
    repo: RepoOpt = None,
    image: ImageOpt = None,
    step: StepOpt = None,
    ref: RefOpt = None,
    prompt: PromptOpt = None,
    env: EnvOpt = None,
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
    cpus: CpusOpt = None,
    pids: PidsOpt = None,
    network: NetworkOpt = None,
    cap_add: CapAddOpt = None,
    runtime: RuntimeOpt = None,
    secret: SecretOpt = None,
    user: UserOpt = None,
    pull: PullOpt = None,
    cleanup: CleanupOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Create a job and run it, in one command (as `job create` then `job run`); the job's id
    is printed on stderr first.

    Example: logist run --repo . --image logist/step:latest --step 'make test'
    """
    options = {k: v for k, v in locals().items() if k not in ("job_id", "file", "quiet")}
    job = _create(file, id=job_id, **options)
    print(f"logist: job {job.id}", file=sys.stderr, flush=True)
    _run_ids(_store(), [job.id], 1, quiet)


@job_app.command("list")
def job_list(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the jobs of the jobs root."""
    from logist.jobs import load_all
    from logist.views import containers_by_job, job_view, table

    store = _store()
    jobs = list(load_all(store))
    engines = _engines_of(jobs)
    by_job, unknown = containers_by_job(store, engines) if json_ and jobs else ({}, None)
    rows = [job_view(store, j, by_job.get(j.id), containers_error=unknown) for j in jobs]
    if json_:
        _print_json(rows)
    else:
        print(table(rows) if rows else "no jobs")


def _engines_of(jobs) -> list[str | None]:
    """The configured engines, and those the jobs were placed on."""
    from logist.engines import configured, normal

    return list(dict.fromkeys([*configured(), *(normal(j.engine) for j in jobs if j.engine)]))


@job_app.command("status")
def job_status(
    job_id: str,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one job: its state, steps, workspace, result and containers."""
    from logist.progress import duration
    from logist.views import containers_by_job, job_view

    store = _store()
    job = store.load(job_id)
    by_job, unknown = containers_by_job(store, [job.engine])
    view = job_view(store, job, by_job.get(job_id), containers_error=unknown)
    if json_:
        _print_json(view)
        return
    print(f"job {view['id']}: {view['state']}{' (active)' if view['active'] else ''}")
    print(f"  repo {view['repo']} ref {view['ref'] or 'HEAD'} -> branch {view['branch']}")
    for s in view["steps"]:
        code = "" if s["exit_code"] is None else f" exit {s['exit_code']}"
        took = "" if s["duration"] is None else f" in {duration(s['duration'])}"
        print(f"  step {s['index']}: {s['state']}{code}{took}  {s['name'] or s['run']}")
    where = view["workspace"]["path"]
    if view["workspace"]["volume"]:
        where = f"volume {view['workspace']['volume']}"
    print(f"  workspace {view['workspace']['state']}: {where}")
    if view["engine"]:
        print(f"  engine {view['engine']}")
    print(
        f"  result bundle {view['result']['bundle'] or '-'}, "
        f"source branch {view['result']['branch'] or '-'}"
    )
    if view["error"]:
        print(f"  error: {view['error']}")


@job_app.command("logs")
def job_logs(
    job_id: str,
    step: Annotated[int | None, typer.Option(help="Step number (default: the latest).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream a running step.")] = False,
) -> None:
    """Print a step's stored log."""
    from logist.jobs import follow_log

    follow_log(_store(), job_id, step, sys.stdout.buffer, poll=0.2 if follow else 0)


# --- running ---------------------------------------------------------------------------------


def _finish_runs(results) -> None:
    from logist.engine import combine
    from logist.model import State

    for r in results:
        if r.error is not None:
            print(f"logist: {r.job.id if r.job else '?'}: {r.error}", file=sys.stderr)
        elif r.job is not None and r.job.state not in (State.SUCCEEDED, State.PENDING):
            step = next(
                (s for s in r.job.steps if s.state not in (State.SUCCEEDED, State.PENDING)), None
            )
            detail = f" at step {step.index} ({step.state}, exit {step.exit_code})" if step else ""
            print(f"logist: job {r.job.id} {r.job.state}{detail}", file=sys.stderr)
    code = combine(results)
    if code:
        raise typer.Exit(code)


@job_app.command("step")
def job_step(job_id: str) -> None:
    """Run the next pending step of a job (setting its workspace up if needed)."""
    from logist.engine import Engine, signals_interrupt

    store = _store()
    store.load(job_id)
    with signals_interrupt():
        result = Engine(store, sys.stdout.buffer).run_job(job_id, max_steps=1)
    _finish_runs([result])


@job_app.command("run")
def job_run(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Jobs to run.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every pending or interrupted job.")] = False,
    parallel: Annotated[int, typer.Option(min=1, help="Jobs at a time.")] = 1,
    quiet: QuietOpt = False,
) -> None:
    """Run jobs to a terminal state: steps in order, harvest, cleanup."""
    from logist.jobs import load_all
    from logist.model import RUNNABLE
    from logist.views import job_view

    store = _store()
    ids = list(job_ids or [])
    for job_id in ids:
        store.load(job_id)
    if all_:
        for j in load_all(store):
            view = job_view(store, j)
            runnable = view["state"] in RUNNABLE and not view["active"]
            if runnable and j.id not in ids:
                ids.append(j.id)
    if not ids:
        if not all_:
            raise UsageError("name jobs to run, or use --all")
        print("no pending or interrupted jobs", file=sys.stderr)
        return
    _run_ids(store, ids, parallel, quiet)


def _run_ids(store, ids: list[str], parallel: int, quiet: bool) -> None:
    """Run jobs with the steps' output on stdout and, for a person at a terminal, progress
    lines on stderr; exit with the contract's code."""
    from logist.engine import Engine, signals_interrupt
    from logist.progress import Progress

    several = len(ids) > 1
    progress = None if quiet or not sys.stderr.isatty() else Progress(sys.stderr, several)
    with signals_interrupt():
        engine = Engine(store, sys.stdout.buffer, prefix=several, progress=progress)
        results = engine.run_many(ids, parallel)
    _finish_runs(results)


@job_app.command("cancel")
def job_cancel(
    job_id: str,
    grace: Annotated[
        int,
        typer.Option(min=0, help="Seconds between SIGTERM and SIGKILL for the job's running step."),
    ] = 5,
    wait: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds to wait for a job's owner to stop (exit 1 if it still runs)."
        ),
    ] = 60.0,
) -> None:
    """Cancel a job (also one running in another terminal)."""
    from logist.engine import cancel

    result = cancel(_store(), job_id, wait=wait, grace=grace)
    print(f"job {job_id}: {result.job.state}", file=sys.stderr)
    if result.error is not None:
        raise result.error
    if result.cleanup is not None and not result.cleanup.ok:
        raise typer.Exit(4)


# --- cleanup -------------------------------------------------------------------------------


@job_app.command("cleanup")
def job_cleanup(
    job_id: Annotated[str | None, typer.Argument(help="The job whose workspace goes.")] = None,
    stale: Annotated[bool, typer.Option("--stale", help="Sweep every stale job (cron).")] = False,
    older_than: Annotated[
        str, typer.Option(help="With --stale: idle for longer than this (90s, 30m, 24h, 7d).")
    ] = "24h",
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Even an active job: stop its containers and processes first."
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, change nothing.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Remove a job's workspace and containers, or (--stale) sweep what crashed jobs left."""
    from logist import cleanup as service
    from logist.spec import parse_duration

    store = _store()
    if stale == (job_id is not None):
        raise UsageError("name one job, or use --stale (not both)")
    out = (
        service.sweep(store, parse_duration(older_than), dry_run=dry_run)
        if stale
        else service.cleanup_one(store, job_id, force=force, dry_run=dry_run)
    )
    if json_:
        _print_json(out)
    else:
        for c in out["cleaned"]:
            verb = "would remove" if dry_run else "removed"
            print(
                f"{c['job']}: {verb} workspace ({c['bytes_freed']} bytes), "
                f"{c['containers_removed']} containers, {c['seconds']:.2f}s"
            )
        for s in out["skipped"]:
            print(f"{s['job']}: skipped ({s['reason']})")
        for f in out["failed"]:
            print(f"{f['job']}: FAILED: {f['error']}", file=sys.stderr)
        if out["orphans_removed"]:
            print(f"orphan containers removed: {out['orphans_removed']}")
        if not (out["cleaned"] or out["skipped"] or out["failed"] or out["orphans_removed"]):
            print("nothing to clean")
    if out["failed"]:
        raise typer.Exit(4)


# --- image push ----------------------------------------------------------------------------


@image_app.command("push")
def image_push(
    image: Annotated[str, typer.Argument(help="The image to copy (name:tag or id).")],
    engine: Annotated[
        list[str] | None,
        typer.Option(
            "--engine",
            help="A target engine: tcp://, ssh:// or unix:// (repeat; default: $LOGIST_ENGINES).",
        ),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="The source engine (default: the one the docker SDK finds)."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Copy an image to other engines, for fleets without a registry: docker save on the
    source streamed into docker load on each target; a target that already has the same
    image id is skipped. Exit 3 when the image or an engine is missing.

    Example: logist image push my/agent:1.2 --engine tcp://node1:2376 --engine ssh://ci@node2
    """
    from logist.engines import parse
    from logist.images import push

    targets = parse(engine) if engine else parse(os.environ.get("LOGIST_ENGINES"))
    if not targets:
        raise UsageError("name the engines to push to: --engine URL (repeat) or LOGIST_ENGINES")
    if from_ is not None:
        parse([from_])  # the same URL check as a target's
    say = None if json_ else (lambda line: print(f"logist: {line}", file=sys.stderr, flush=True))
    report = push(image, targets, source=from_, say=say)
    if json_:
        _print_json(report.as_json())
    error = report.error()
    if error is not None:
        raise error


# --- doctor --------------------------------------------------------------------------------


@app.command("doctor")
def doctor(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check the engine, the jobs root and the default images."""
    from logist.doctor import report

    out = report(_store())
    if json_:
        _print_json(out)
    else:
        for c in out["checks"]:
            print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    if not out["ok"]:
        raise typer.Exit(3)


def _interrupt(signum, frame) -> None:
    from logist.errors import Interrupted

    raise Interrupted("interrupted")  # not a LogistError: nothing in the core swallows it


def _fast_path(argv: list[str]) -> int | None:
    """A hot command in its plain form, run without Typer's parsing (see ``logist.fastcli``);
    None when the command line is not one of those."""
    from logist.fastcli import parse

    parsed = parse(argv)
    if parsed is None:
        return None
    command, jobs_dir, kwargs = parsed
    func = {
        "job step": job_step,
        "job run": job_run,
        "job cancel": job_cancel,
        "job cleanup": job_cleanup,
        "run": run,
        "job status": job_status,
        "job list": job_list,
    }[command]
    _state["jobs_dir"] = jobs_dir
    try:
        func(**kwargs)
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:  # as Typer does
        return 130
    except BrokenPipeError:
        return 1
    return 0


def main() -> None:
    """Entry point: run the app; every ``LogistError`` and every usage error of the parser
    becomes one line on stderr with the contract's exit code (2 for usage)."""
    import signal

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    from logist.errors import Interrupted

    debug = os.environ.get("LOGIST_DEBUG") == "1"
    try:
        code = _fast_path(sys.argv[1:])
        if code is None:
            code = app(prog_name="logist", standalone_mode=False)
    except (LogistError, Interrupted) as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"logist: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("logist: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # the parser's own errors (unknown option, missing argument, bad choice): one line
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group without a command: its help
            print(exc.format_message(), file=sys.stderr)
            sys.exit(2)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            hint = " (see --help)" if getattr(exc, "exit_code", 1) == 2 else ""
            print(f"logist: error: {exc.format_message()}{hint}", file=sys.stderr)
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
