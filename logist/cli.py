"""The command line: each command parses, calls one core function, prints. Errors become one
line on stderr and the contract's exit code (a traceback only with ``LOGIST_DEBUG=1``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from logist import __version__, commands
from logist.errors import UsageError
from logist.options import JobOption, with_job_options

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
session_app = typer.Typer(
    help="A live job container that an agent loop drives one command at a time.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(session_app, name="session")
image_app = typer.Typer(
    help="Images on engines without a registry.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(image_app, name="image")


def _rt(ctx: typer.Context):
    """The command's ``Runtime``, from the global options (made once per command)."""
    root = ctx.find_root()
    if not isinstance(root.obj, dict):
        root.obj = {}
    if "runtime" not in root.obj:
        options = root.obj.get("options", {})
        rt = root.obj["runtime"] = commands.runtime(options.get("jobs_dir"), options.get("engines"))
        root.call_on_close(rt.close)
    return root.obj["runtime"]


def _print_json(data: Any) -> None:
    commands.print_json(data)


def _exit(code: int) -> None:
    """A command's exit code, as Typer wants it."""
    if code:
        raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"logist {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
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
    from logist.engines import parse

    ctx.obj = {"options": {"jobs_dir": jobs_dir, "engines": parse(engine) if engine else None}}


# --- job create / list / status / logs ----------------------------------------------------


# The options of a job spec, one definition each, shared by `job create` and `run`.
IdArg = Annotated[str | None, typer.Argument(help="Job id (generated when omitted).")]
FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="YAML spec (untrusted: extra capabilities, network host and secrets it asks for "
        "need --cap-add, --network host, --secret or the configuration's allow:).",
    ),
]


def _typer_option(option: JobOption) -> Any:
    """A job option (``logist/options.py``) as Typer declares it."""
    kind = list[str] | None if option.many else str | None
    return Annotated[kind, typer.Option(option.flag, help=option.help)]


spec_options = with_job_options(_typer_option)  # the options of a job spec, declared once
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only the steps' output (no progress lines).")
]


@job_app.command("create")
@spec_options
def job_create(
    ctx: typer.Context, job_id: IdArg = None, file: FileOpt = None, **options: Any
) -> None:
    """Create a job; print its id alone on stdout.

    Example: logist job create --repo . --step 'my-agent' --secret ANTHROPIC_API_KEY

    Defaults, grants and bounds for every job: $LOGIST_CONFIG, else /etc/logist/config.yaml.
    """
    commands.job_create(_rt(ctx), job_id, file, **options)


@app.command("run")
@spec_options
def run(
    ctx: typer.Context,
    job_id: IdArg = None,
    file: FileOpt = None,
    quiet: QuietOpt = False,
    **options: Any,
) -> None:
    """Create a job and run it, in one command (as `job create` then `job run`); the job's id
    is printed on stderr first.

    Example: logist run --repo . --image logist/step:latest --step 'make test'
    """
    _exit(commands.run(_rt(ctx), job_id, file, quiet, **options))


@job_app.command("list")
def job_list(
    ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """List the jobs of the jobs root."""
    _exit(commands.job_list(_rt(ctx), json_))


@job_app.command("status")
def job_status(
    ctx: typer.Context,
    job_id: str,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one job: its state, steps, workspace, result and containers."""
    _exit(commands.job_status(_rt(ctx), job_id, json_))


@job_app.command("logs")
def job_logs(
    ctx: typer.Context,
    job_id: str,
    step: Annotated[int | None, typer.Option(help="Step number (default: the latest).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream a running step.")] = False,
) -> None:
    """Print a step's stored log."""
    _rt(ctx).follow(job_id, step, sys.stdout.buffer, poll=0.2 if follow else 0)


# --- running ---------------------------------------------------------------------------------


@job_app.command("step")
def job_step(ctx: typer.Context, job_id: str) -> None:
    """Run the next pending step of a job (setting its workspace up if needed)."""
    _exit(commands.job_step(_rt(ctx), job_id))


@job_app.command("run")
def job_run(
    ctx: typer.Context,
    job_ids: Annotated[list[str] | None, typer.Argument(help="Jobs to run.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every pending or interrupted job.")] = False,
    parallel: Annotated[int, typer.Option(min=1, help="Jobs at a time.")] = 1,
    quiet: QuietOpt = False,
) -> None:
    """Run jobs to a terminal state: steps in order, harvest, cleanup."""
    _exit(commands.job_run(_rt(ctx), job_ids, all_, parallel, quiet))


@job_app.command("cancel")
def job_cancel(
    ctx: typer.Context,
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
    _exit(commands.job_cancel(_rt(ctx), job_id, grace, wait))


# --- cleanup -------------------------------------------------------------------------------


@job_app.command("cleanup")
def job_cleanup(
    ctx: typer.Context,
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
    _exit(commands.job_cleanup(_rt(ctx), job_id, stale, older_than, force, dry_run, json_))


# --- sessions --------------------------------------------------------------------------------


@session_app.command("start")
@spec_options
def session_start(
    ctx: typer.Context,
    job_id: IdArg = None,
    file: FileOpt = None,
    idle_timeout: Annotated[
        str,
        typer.Option(
            help="Stopped (harvested, cleaned) by `job cleanup --stale` when idle longer."
        ),
    ] = "1h",
    **options: Any,
) -> None:
    """Start a session: a job whose one container lives between commands; print its id.

    Example: id=$(logist session start --repo . --image logist/step:latest)
    """
    from logist import session
    from logist.options import spec_of
    from logist.spec import parse_duration

    seconds = parse_duration(idle_timeout)
    spec = {"id": job_id, **spec_of(options)}
    print(session.start(_rt(ctx), spec, file, idle_timeout=seconds))


@session_app.command("exec", context_settings={"ignore_unknown_options": True})
def session_exec(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The session.")],
    command: Annotated[list[str], typer.Argument(help="The command and its arguments.")],
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Stop this command after this many seconds.")
    ] = None,
    env: Annotated[list[str] | None, typer.Option(help="K=V for this command (repeat).")] = None,
    workdir: Annotated[str | None, typer.Option(help="Its directory (default /workspace).")] = None,
) -> None:
    """Run one command in a session; its output streamed (and stored as logs/exec-<n>.log);
    exit with its exit code.

    Example: logist session exec $id -- sh -c 'pytest -q'
    """
    from logist import session_exec
    from logist.options import parse_env
    from logist.streams import terminal

    argv = command[1:] if command[:1] == ["--"] else command
    listen = terminal(sys.stdout.buffer, prefixed=False)
    result = session_exec.execute(
        _rt(ctx),
        job_id,
        argv,
        timeout=timeout,
        env=parse_env(env or []),
        workdir=workdir,
        listener=listen(job_id, 0),
    )
    if result.timed_out:
        print(f"logist: {job_id}: the command timed out after {timeout:g}s", file=sys.stderr)
    _exit(result.exit_code if result.exit_code is not None else 1)


@session_app.command("harvest")
def session_harvest(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="The session.")]
) -> None:
    """Checkpoint: commit the session's work on logist/<id> now; print the commit."""
    from logist import session

    print(session.checkpoint(_rt(ctx), job_id))


@session_app.command("stop")
def session_stop(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="The session.")]
) -> None:
    """Harvest, finish (branch, result.bundle) and clean up: like a job's end."""
    from logist import session

    result = session.stop(_rt(ctx), job_id)
    print(f"session {job_id}: {result.job.state}", file=sys.stderr)
    _exit(commands.finish_runs([result]))


# --- image push ----------------------------------------------------------------------------


@image_app.command("push")
def image_push(
    ctx: typer.Context,
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

    given = ctx.find_root().obj["options"]["engines"]
    targets = parse(engine) if engine else given or parse(os.environ.get("LOGIST_ENGINES"))
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
def doctor(
    ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Check the engine, the jobs root and the default images."""
    out = _rt(ctx).doctor()
    if json_:
        _print_json(out)
    else:
        for c in out["checks"]:
            print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    if not out["ok"]:
        raise typer.Exit(3)
