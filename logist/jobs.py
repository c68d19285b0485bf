"""Creating jobs and reading them back for people and scripts."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from logist import gitops
from logist.config import Config, check_spec_file, load_config, merge_layers
from logist.errors import JobNotFound, UsageError
from logist.model import RUNNING, Job
from logist.spec import build_job, generate_id, is_url, load_yaml
from logist.store import Store


def invoking_user() -> str:
    return f"{os.getuid()}:{os.getgid()}"


def create_job(
    store: Store,
    raw: dict[str, Any],
    spec_file: Path | None = None,
    config: Config | None = None,
    *,
    session: dict[str, Any] | None = None,
) -> Job:
    """Validate a spec, check the source, store the job. ``raw`` (the command line) overrides
    the YAML file, which overrides the operator's configuration (read now unless given). The
    file is untrusted: what it asks for beyond the default boundary must be granted by ``raw``
    or the configuration (``logist/config.py: check_spec_file``)."""
    config = load_config() if config is None else config
    spec: dict[str, Any] = load_yaml(spec_file) if spec_file else {}
    check_spec_file(spec, raw, config, spec_file)
    merged = merge_layers(config.defaults, spec, raw)
    job = build_job(merged, default_user=invoking_user(), session=session is not None)
    if session is not None:
        if job.steps:
            raise UsageError("a session takes no steps: its commands come with `session exec`")
        job.session = session
    job.bounds = config.job_bounds()
    if is_url(job.repo):
        gitops.check_remote_source(job.repo, job.ref)
    else:
        path = Path(job.repo).expanduser().absolute()
        gitops.check_local_source(path, job.ref)
        job.repo = str(path)
    generated = merged.get("id") is None
    for _ in range(5):
        try:
            store.create(job)
            return job
        except UsageError:
            if not generated or not store.job_dir(job.id).exists():
                raise
            job.id = generate_id()  # a generated id that collided: draw another
    raise UsageError("could not generate a unique job id")


def load_all(store: Store) -> Iterator[Job]:
    """Every job of the jobs root; a directory whose manifest is refused (unreadable, or
    naming another job: a copy) is left out, as one removed while listing."""
    for job_id in store.ids():
        try:
            yield store.load(job_id)
        except (JobNotFound, UsageError):
            continue


def follow_log(store: Store, job_id: str, step: int | None, out, poll: float = 0.2) -> None:
    """Print a step's stored log; with ``poll`` > 0 keep printing while the step runs."""
    job = store.load(job_id)
    if job.session is not None:  # a session's logs are its commands': exec-<n>.log
        count = int(job.session.get("execs") or 0)
        index = step if step is not None else (count or None)
        kind, have = "exec", count
    else:
        index = step if step is not None else _latest_step(job)
        kind, have = "step", len(job.steps)
    if index is None:
        return
    from logist.errors import UsageError

    if not 1 <= index <= have:
        raise UsageError(f"job {job_id} has no {kind} {index} (it has {have})")
    path = store.dir(job_id).logs / f"{kind}-{index}.log"
    pos = 0
    last_round = poll <= 0
    while True:
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(pos)
                while chunk := fh.read(65536):
                    out.write(chunk)
                pos = fh.tell()
            out.flush()
        if last_round:
            return
        running = store.load(job_id).steps[index - 1].state == RUNNING and store.active(job_id)
        if not running:
            last_round = True  # one more read for what was written before the state changed
            continue
        time.sleep(poll)


def _latest_step(job: Job) -> int | None:
    started = [s for s in job.steps if s.started_at]
    return max(started, key=lambda s: s.started_at).index if started else None
