"""Proof that the engine sees a job's directory at the same path, before any step runs.

logist writes a marker named by a random token into the job's exchange directory, which the
helper mounts at ``/out``. The engine must find that exact file through the mount:

- first, on the created (not yet started) helper, by a ``HEAD`` of the engine's archive
  endpoint (``docker cp``'s stat, ~7 ms on Docker): the engine resolves the bind mount on its
  own host without starting anything, so the helper's start can overlap the first step;
- where the engine does not answer that request, from the helper's first line once started
  (``logist/helper/visible.sh`` and ``serve.sh`` print what they read from the marker).

A remote engine without the path refuses the bind mount at create; one with another directory
at the same path has no such file. Either way: ``WorkspaceUnseen`` (exit 3), nothing ran.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from logist import containers
from logist.errors import EnvironmentProblem, WorkspaceUnseen

if TYPE_CHECKING:
    from docker.models.containers import Container

    from logist.dock import Dock

FIRST_LINE_MAX = 4096  # bytes of the helper's output read for its first line


def marker_name(token: str) -> str:
    """The marker's file name in the exchange directory (``/out`` in the helper)."""
    return f"visible-{token}"


def stat_says(container: Container, token: str) -> bool | None:
    """Whether the engine finds the marker of ``token`` through the created ``container``'s
    ``/out`` mount: True or False, or None when the engine does not answer such a request (an
    engine or socket proxy without the route answers 404 to ``/out`` itself too; or the
    container went meanwhile): the helper's first line decides then."""
    name = marker_name(token)
    res = _stat(container, f"/out/{name}")
    if res.status_code == 404:  # no such file, no such route, or no such container
        return None if _stat(container, "/out").status_code != 200 else False
    if res.status_code != 200:
        return None
    try:
        stat = json.loads(base64.b64decode(res.headers.get("X-Docker-Container-Path-Stat", "")))
    except ValueError:
        return None
    if not isinstance(stat, dict):
        return None
    return stat.get("name") == name and stat.get("size") == len(token)


def _stat(container: Container, path: str) -> Any:
    """The engine's answer to ``HEAD /containers/ID/archive?path=PATH`` (not raised)."""
    api = container.client.api
    url = api._url("/containers/{0}/archive", container.id)
    with containers.engine_errors("asking the engine for the job's marker", container.client):
        return api.head(url, params={"path": path}, timeout=api.timeout)


def first_line_says(container: Container, token: str, image: str) -> bool:
    """Whether the started helper's first line names ``token`` (what it read from the marker).
    One following ``logs`` request, read up to that line (no polling)."""
    data = b""
    with containers.engine_errors("reading the harvest helper's first line", container.client):
        stream = container.logs(stream=True, follow=True, stdout=True, stderr=False)
        try:
            for chunk in stream:
                data += chunk
                if b"\n" in data or len(data) > FIRST_LINE_MAX:
                    break
        finally:
            stream.close()
    if b"\n" not in data:  # the helper ended without a word (no sh, cat or sleep there)
        raise EnvironmentProblem(
            f"the harvest helper ({image}) did not say what it sees (it needs sh, cat and sleep)"
        )
    return data.split(b"\n", 1)[0].decode(errors="replace") == f"visible {token}"


def unseen(dock: Dock, job_dir: object, detail: str) -> WorkspaceUnseen:
    """The error of an engine that does not see ``job_dir``."""
    return WorkspaceUnseen(
        f"the engine at {dock.url} does not see {job_dir} "
        f"at the same path ({detail.splitlines()[0][:200] if detail else 'no detail'}); "
        "nothing ran: see `logist doctor`"
    )


NOT_VISIBLE = "a file written there is not visible inside containers"
