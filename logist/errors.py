"""One exception tree; every error carries the contract's exit code."""

from __future__ import annotations


class LogistError(Exception):
    """Root of every error logist reports. ``exit_code`` is the contract's code."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(LogistError):
    """Invalid input: bad id, bad spec, unknown job, repository not found (exit 2)."""

    exit_code = 2


class JobNotFound(UsageError):
    """The named job does not exist in the jobs root."""


class JobActive(UsageError):
    """The job is owned by a live logist process."""


class InvalidTransition(UsageError):
    """The job or step is in a state that does not allow the requested action."""


class Rejected(UsageError):
    """A step could not start because of the user's input: a setting the engine refused (a 4xx
    answer: an unknown runtime or capability, a memory limit too small) or a secret missing from
    logist's environment. The job is ``failed``, not ``interrupted`` (exit 2)."""


class EngineRejected(Rejected):
    """The engine refused a request as invalid (an HTTP 4xx): a setting it does not accept,
    e.g. ``--memory 1b``. Permanent: the job is ``failed``, not ``interrupted`` (exit 2)."""


class EnvironmentProblem(LogistError):
    """Docker engine unreachable, image missing and not pullable (exit 3)."""

    exit_code = 3


class EngineUnavailable(EnvironmentProblem):
    """The Docker engine cannot be reached (or went away)."""


class WorkspaceUnseen(EnvironmentProblem):
    """The engine does not see the job's directory at logist's path (logist in a container
    without the jobs root mounted at the same path, a remote engine): nothing ran."""


class ImageMissing(EnvironmentProblem):
    """An image is not present and cannot be pulled."""

    def __init__(self, image: str, detail: str = "", engine: str | None = None) -> None:
        where = f" on the engine at {engine}" if engine else ""
        msg = f"image {image!r} is not present{where} and cannot be pulled"
        if engine and not engine.startswith("unix://"):  # a remote node: copy it there
            msg += f" (on a registry-less fleet: logist image push {image} --engine {engine})"
        super().__init__(f"{msg}: {detail}" if detail else msg)
        self.image = image
        self.engine = engine


class StepFailed(LogistError):
    """A step or job failed (exit 1)."""

    exit_code = 1


class CancelPending(LogistError):
    """``job cancel`` asked the owner to stop, but it still runs after the wait (exit 1)."""

    exit_code = 1


class HarvestFailed(LogistError):
    """A harvest could not be made or was refused (its bundle failed the checks); the
    workspace is kept (exit 4)."""

    exit_code = 4


class CleanupIncomplete(LogistError):
    """Something was left behind (exit 4); the message names it, ``report`` (when a cleanup
    or sweep raised it) is its report."""

    exit_code = 4

    def __init__(self, message: str, *, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report


class GitError(LogistError):
    """A git command failed; carries the command and its stderr."""

    exit_code = 1

    def __init__(self, command: list[str], stderr: str, *, exit_code: int | None = None) -> None:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"git {' '.join(command)}: {tail}", exit_code=exit_code)
        self.command = command
        self.stderr = stderr


class Interrupted(BaseException):
    """Interrupted by SIGINT/SIGTERM (exit 130). Deliberately not a ``LogistError`` (nor an
    ``Exception``): no ``except LogistError`` / ``except Exception`` of the core swallows it, so
    it ends the command at the CLI edge once ``finally`` blocks have made the state consistent."""

    exit_code = 130


MAX_ERROR = 1000  # characters of an error line (a value of the user's may be long)


def printable(text: object) -> str:
    """``text`` for a terminal: every character that is not printable (C0 and C1 controls,
    bidirectional overrides: what a spec file or a step could drive a terminal with) as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def one_line(text: str) -> str:
    """``text`` as one ``printable`` line: line breaks as spaces, at most ``MAX_ERROR``
    characters."""
    text = printable(text.replace("\r\n", " ").replace("\n", " "))
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 3] + "..."
