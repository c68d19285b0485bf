"""The hot commands' fast path parses a plain command line exactly as Typer does, and leaves
every other command line (and every usage error) to Typer."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from logist import cli, commands
from logist.fastcli import parse

FUNCS = commands.HOT  # what the fast path calls, with only the options given
TYPER_FUNCS = {
    "job create": cli.job_create,
    "job step": cli.job_step,
    "job run": cli.job_run,
    "job cancel": cli.job_cancel,
    "job cleanup": cli.job_cleanup,
    "run": cli.run,
    "job status": cli.job_status,
    "job list": cli.job_list,
}


def typer_params(argv: list[str]) -> tuple[str, str | None, dict]:
    """What Typer itself makes of ``argv``: the command, --jobs-dir, the command's parameters."""
    group = typer.main.get_command(cli.app)
    ctx = group.make_context("logist", list(argv))
    jobs_dir = ctx.params["jobs_dir"]
    rest = [*ctx._protected_args, *ctx.args]
    words: list[str] = []
    cmd, parent = group, ctx
    while hasattr(cmd, "get_command"):
        name, rest = rest[0], rest[1:]
        words.append(name)
        cmd = cmd.get_command(parent, name)
        parent = cmd.make_context(name, list(rest), parent=parent)
        rest = [*getattr(parent, "_protected_args", []), *parent.args]
    params = {k: _plain(v) for k, v in parent.params.items() if k != "ctx"}
    return " ".join(words), jobs_dir, params


def _plain(value):
    """Typer hands an empty repeatable option over as ``()`` (the commands read it as None)."""
    if isinstance(value, tuple | list):
        return list(value) or None
    return value


def with_defaults(command: str, kwargs: dict) -> dict:
    sig = inspect.signature(FUNCS[command])
    return {n: kwargs.get(n, p.default) for n, p in sig.parameters.items() if n != "rt"}


PLAIN = [
    ["job", "step", "j1"],
    ["job", "status", "j1"],
    ["job", "status", "j1", "--json"],
    ["job", "list"],
    ["--jobs-dir", "/j", "job", "list", "--json"],
    ["--jobs-dir", "/tmp/x", "job", "step", "j1"],
    ["job", "run", "a", "b"],
    ["job", "run", "--all", "--parallel", "8"],
    ["job", "run", "a", "-q"],
    ["job", "run", "--quiet", "a", "--parallel", "1"],
    ["job", "cancel", "j1"],
    ["job", "cancel", "j1", "--grace", "0", "--wait", "2.5"],
    ["job", "cancel", "--grace", "1", "j1"],
    ["job", "cleanup", "j1"],
    ["job", "cleanup", "j1", "--force", "--json"],
    ["job", "cleanup", "--stale", "--older-than", "90s", "--dry-run"],
    ["run", "--repo", "/src", "--image", "img", "--step", "true", "--step", "make test"],
    ["run", "j2", "-f", "spec.yaml", "-q"],
    ["job", "create", "--repo", "/src", "--step", "true", "--step", "make test"],
    ["--jobs-dir", "/j", "job", "create", "j3", "-f", "spec.yaml", "--secret", "TOKEN"],
    [
        "run", "--repo", "/src", "--image", "img", "--step", "", "--env", "A=1", "--env", "B=2",
        "--cap-add", "NET_RAW", "--secret", "TOKEN", "--timeout", "30", "--memory", "512m",
        "--cpus", "1.5", "--pids", "100", "--network", "none", "--runtime", "runc",
        "--user", "root", "--pull", "never", "--cleanup", "never", "--ref", "main",
        "--prompt", "do it",
    ],
]  # fmt: skip


@pytest.mark.parametrize("argv", PLAIN, ids=lambda a: " ".join(a))
def test_a_plain_hot_command_line_gets_the_parameters_typer_gives(argv):
    parsed = parse(argv)
    assert parsed is not None
    command, jobs_dir, kwargs = parsed
    assert (command, jobs_dir, with_defaults(command, kwargs)) == typer_params(argv)


OTHERS = [
    ["--help"],
    ["job", "step", "--help"],
    ["job", "step"],
    ["job", "step", "a", "b"],
    ["job", "run", "--parallel", "0"],
    ["job", "run", "--parallel", "x"],
    ["job", "run", "--parallel=2", "a"],
    ["job", "run", "--all", "--all"],
    ["job", "cancel", "j1", "--grace", "-1"],
    ["job", "cancel", "j1", "--wait", "1e3"],
    ["job", "cancel", "--", "j1"],
    ["job", "status"],
    ["job", "list", "j1"],
    ["job", "logs", "j1"],
    ["job", "create", "--repo", "-x"],
    ["run", "--step", "-x"],
    ["run", "--step"],
    ["run", "a", "b"],
    ["job", "create", "a", "b"],
    ["job", "create", "--quiet"],
    ["run", "--unknown", "v"],
    ["--jobs-dir"],
    ["--jobs-dir=/x", "job", "step", "j1"],
    ["--version"],
    ["doctor"],
]


@pytest.mark.parametrize("argv", OTHERS, ids=lambda a: " ".join(a) or "nothing")
def test_any_other_command_line_is_left_to_typer(argv):
    assert parse(argv) is None


def test_a_fast_path_usage_error_is_still_typers_exit_2(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "logist", "--jobs-dir", str(tmp_path), "job", "run", "--parallel",
         "0", "x"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--parallel" in out.stderr and "see --help" in out.stderr


def test_the_fast_path_runs_the_command_and_keeps_its_exit_code(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "logist", "--jobs-dir", str(tmp_path), "job", "step", "nope"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "no job 'nope'" in out.stderr


@pytest.mark.parametrize("command", sorted(TYPER_FUNCS))
def test_each_hot_command_has_the_parameters_and_defaults_of_its_typer_command(command):
    def plain(func):
        params = inspect.signature(func).parameters.items()
        return [(n, p.default) for n, p in params if n not in ("rt", "ctx")]

    assert plain(FUNCS[command]) == plain(TYPER_FUNCS[command])


def test_a_plain_hot_command_never_imports_typer(tmp_path: Path):
    probe = (
        "import os, sys\n"
        "def leave(code): raise SystemExit(code)\n"
        "os._exit = leave  # the program leaves without the teardown: see what it loaded\n"
        "from logist.entry import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, 'typer' in sys.modules, 'click' in sys.modules, file=sys.stderr)\n"
    )
    argv = ["--jobs-dir", str(tmp_path), "job", "list"]
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True)
    assert out.stderr.split() == ["0", "False", "False"], out.stderr
    assert out.stdout == "no jobs\n"
    # and the same command line through Typer (a form the fast path leaves to it) agrees
    slow = subprocess.run(
        [sys.executable, "-m", "logist", f"--jobs-dir={tmp_path}", "job", "list"],
        capture_output=True,
        text=True,
    )
    assert (slow.returncode, slow.stdout) == (0, "no jobs\n")
