"""Images on engines without a registry: ``logist image push`` copies an image from one engine
to others as ``docker save`` streamed into ``docker load``, chunk by chunk (the archive is never
held in memory nor written to disk). A target that already has the same image id is skipped.
An engine silent for ``request_timeout()`` (source or target, mid-way too) counts as gone: the
load's progress is asked for, so a target applying a large layer is not silent."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from logist import containers
from logist.dock import Dock, default_engine, dock_of, one_line
from logist.dock import reason as dock_reason
from logist.errors import EngineUnavailable, EnvironmentProblem, LogistError

if TYPE_CHECKING:
    from docker import DockerClient

CHUNK = 1 << 20  # bytes of the saved archive read (and sent on) at a time


@dataclass
class PushReport:
    """What ``push`` did: per target engine, pushed, skipped (same image id there) or failed."""

    image: str
    image_id: str
    source: str
    pushed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, LogistError]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)  # bytes of the archive per target
    seconds: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "pushed": list(self.pushed),
            "skipped": list(self.skipped),
            "failed": [{"engine": url, "error": str(exc)} for url, exc in self.failed],
        }

    def error(self) -> LogistError | None:
        """One error naming every target that failed (the first failure's exit code), or None."""
        if not self.failed:
            return None
        total = len(self.pushed) + len(self.skipped) + len(self.failed)
        detail = "; ".join(str(exc) for _, exc in self.failed)
        return LogistError(
            f"{self.image} not pushed to {len(self.failed)} of {total} engines: {detail}",
            exit_code=self.failed[0][1].exit_code,
        )


class _SourceFailed(Exception):
    """The source engine failed while its archive was being sent (not the target's fault).
    Deliberately not an ``OSError``: the HTTP layer sending the body lets it through as is."""


def _engine(url: str | None) -> DockerClient:
    """A client of its own (the caller closes it) of the engine at ``url`` (None: the one the
    SDK finds)."""
    dock = Dock(url)
    return dock.new_client(dock.timeout)


def image_id(cli: DockerClient, image: str) -> str | None:
    """The id of ``image`` on the engine of ``cli``, None when it is not there.

    Raises:
        EngineUnavailable, EnvironmentProblem: the engine is unreachable or failed.
    """
    import docker

    with containers.engine_errors(f"looking up image {image}", cli):
        try:
            return cli.images.get(image).id
        except docker.errors.ImageNotFound:
            return None


def save_stream(cli: DockerClient, image: str, sent: list[int]) -> Iterator[bytes]:
    """``docker save image`` from ``cli``'s engine, ``CHUNK`` bytes at a time, counting the
    bytes in ``sent[0]``; any failure of that engine is ``_SourceFailed``."""
    try:
        for chunk in cli.api.get_image(image, chunk_size=CHUNK):
            sent[0] += len(chunk)
            yield chunk
    except Exception as exc:  # the source's failure, whatever its type
        broken = any(m in str(exc) for m in ("Connection broken", "IncompleteRead"))
        reason = "the connection was lost mid-way (engine stopped?)" if broken else None
        raise _SourceFailed(reason or dock_reason(exc)) from exc


def copy_image(src: DockerClient, dst: DockerClient, image: str) -> int:
    """Stream ``image`` from ``src``'s engine into ``dst``'s (save | load, one chunk in memory
    at a time); returns the bytes sent. The caller wraps it in ``engine_errors`` of ``dst``.

    Raises:
        _SourceFailed: the source engine failed mid-way.
        EnvironmentProblem: the target refused the archive (its error, in one line).
    """
    sent = [0]
    for message in dst.api.load_image(save_stream(src, image, sent), quiet=False):
        if isinstance(message, dict) and message.get("error"):
            raise EnvironmentProblem(
                f"loading {image} on {dock_of(dst).url}: {one_line(message['error'])}"
            )
    return sent[0]


def push(
    image: str,
    targets: list[str],
    source: str | None = None,
    say: Callable[[str], None] | None = None,
) -> PushReport:
    """Copy ``image`` from ``source`` (default: the engine the SDK finds) to each target engine
    that does not have the same image id, one after the other. A target that cannot be reached
    or refuses the image is recorded in ``failed`` and the others are still served.

    Raises:
        EnvironmentProblem: the image is not on the source engine (exit 3).
        EngineUnavailable: the source engine is unreachable, or failed mid-way (exit 3).
    """
    source_url = (source or default_engine()).rstrip("/")
    src = _engine(source_url)
    try:
        found = image_id(src, image)
        if found is None:
            raise EnvironmentProblem(
                f"image {image!r} is not on the source engine at {source_url}: "
                "build or load it there first"
            )
        report = PushReport(image, found, source_url)
        for url in targets:
            _push_one(report, src, url, say)
    finally:
        src.close()
    return report


def _push_one(
    report: PushReport, src: DockerClient, url: str, say: Callable[[str], None] | None
) -> None:
    image, started = report.image, time.monotonic()
    dst: DockerClient | None = None
    try:
        dst = _engine(url)
        if image_id(dst, image) == report.image_id:
            report.skipped.append(url)
            if say:
                say(f"{url}: already has {image} ({report.image_id[:19]}), skipped")
            return
        if say:
            say(f"{url}: pushing {image} ...")
        with containers.engine_errors(f"pushing {image}", dst):
            sent = copy_image(src, dst, image)
        landed = image_id(dst, image)
        if landed != report.image_id:
            raise EnvironmentProblem(
                f"pushing {image} to {url}: the engine has {landed or 'no such image'} "
                f"after loading {report.image_id}"
            )
        report.pushed.append(url)
        report.sent[url] = sent
        report.seconds[url] = time.monotonic() - started
        if say:
            say(f"{url}: pushed {image} ({sent / 1e6:.0f} MB in {report.seconds[url]:.1f} s)")
    except _SourceFailed as exc:
        raise EngineUnavailable(
            f"reading {image} from the source engine at {report.source}: {exc}"
        ) from None
    except LogistError as exc:
        report.failed.append((url, exc))
        if say:
            say(f"{url}: FAILED: {exc}")
    finally:
        if dst is not None:
            dst.close()
