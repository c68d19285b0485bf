"""The ``logist`` program: a hot command in its plain form runs without importing Typer (see
``logist.fastcli`` and ``logist.commands``); anything else goes to the Typer app in
``logist.cli``. Every ``LogistError`` and every usage error of the parser becomes one line on
stderr with the contract's exit code (2 for usage); a traceback only with ``LOGIST_DEBUG=1``."""

from __future__ import annotations

import os
import signal
import sys


def _interrupt(signum, frame) -> None:
    from logist.errors import Interrupted

    raise Interrupted("interrupted")  # not a LogistError: nothing in the core swallows it


def _fast_path(argv: list[str]) -> int | None:
    """A hot command in its plain form, run without Typer; None when the command line is not
    one of those."""
    from logist.fastcli import parse

    parsed = parse(argv)
    if parsed is None:
        return None
    from logist import commands

    command, jobs_dir, kwargs = parsed
    try:
        with commands.runtime(jobs_dir) as rt:
            return commands.HOT[command](rt, **kwargs)
    except KeyboardInterrupt:  # as Typer does
        return 130
    except BrokenPipeError:
        return 1


def main() -> None:
    """Run the command line; exit with the contract's code."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    _leave(run(sys.argv[1:]))


def run(argv: list[str]) -> int:
    """The program on ``argv`` (no signal handlers of its own, no exit): its exit code. Every
    ``LogistError`` and every usage error of the parser is one line on stderr."""
    from logist.errors import Interrupted, LogistError, one_line

    debug = os.environ.get("LOGIST_DEBUG") == "1"
    try:
        code = _fast_path(argv)
        if code is None:
            from logist.cli import app

            code = app(args=argv, prog_name="logist", standalone_mode=False)
    except (LogistError, Interrupted) as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"logist: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if type(exc).__name__ == "Abort":  # click's, on Ctrl-C at a prompt
            print("logist: interrupted", file=sys.stderr)
            return 130
        # the parser's own errors (unknown option, missing argument, bad choice): one line
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group without a command: its help
            print(exc.format_message(), file=sys.stderr)
            return 2
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            hint = " (see --help)" if getattr(exc, "exit_code", 1) == 2 else ""
            print(f"logist: error: {one_line(exc.format_message())}{hint}", file=sys.stderr)
            return exc.exit_code
        if debug:
            raise
        print(
            f"logist: internal error: {one_line(f'{type(exc).__name__}: {exc}')}", file=sys.stderr
        )
        return 1
    return code if isinstance(code, int) else 0


def _leave(code: int) -> None:
    """Exit with ``code``. When nothing else runs (one thread), without the interpreter's
    teardown of every module (~25 ms, after a command whose work is done and flushed: a
    canceller that returns sooner, a `job step` that ends sooner)."""
    import threading

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    if threading.active_count() == 1:
        os._exit(code)
    sys.exit(code)
