"""The job directory's layout, in one place: the contract's files (``job.json``, ``workspace/``,
``logs/step-<n>.log``, ``result.bundle``) and logist's own (the lock, a cancel request,
``repo.git``, the helper's exchange directory, the proxy's gate, temp names a killed setup
may leave)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MANIFEST = "job.json"
LOCK = "lock"
CANCEL = "cancel-requested"
WORKSPACE = "workspace"
LOGS = "logs"
RESULT = "result.bundle"
JOB_REPO = "repo.git"  # logist's own repository of the job: the base commit and every harvest
EXCHANGE = ".exchange"  # where the helper leaves a harvest's bundle
SETUP_TMP = ".workspace.tmp-"  # a workspace being cloned (then renamed into place)
REPO_TMP = f".{JOB_REPO}.tmp-"
INCOMING = ".incoming-"  # a bundle copied out of the exchange, before its checks
SET_ASIDE = ".set-aside"  # nonces of harvests under way: names they hide in the workspace
GATE = ".proxy-gate"  # a FIFO: the first step of an --allow-host run waits on it (gate.py)
DELETABLE = (WORKSPACE, JOB_REPO, EXCHANGE)  # what deletion may remove, besides temp names


@dataclass(frozen=True)
class JobDir:
    """The paths of one job directory (nothing is read or made here)."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def cancel_request(self) -> Path:
        return self.path / CANCEL

    @property
    def workspace(self) -> Path:
        return self.path / WORKSPACE

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    def step_log(self, index: int) -> Path:
        return self.path / LOGS / f"step-{index}.log"

    @property
    def result(self) -> Path:
        return self.path / RESULT

    @property
    def repo(self) -> Path:
        return self.path / JOB_REPO

    @property
    def exchange(self) -> Path:
        return self.path / EXCHANGE

    @property
    def set_aside(self) -> Path:
        return self.path / SET_ASIDE

    @property
    def gate(self) -> Path:
        return self.path / GATE

    def setup_tmp(self, tag: object) -> Path:
        """A setup's temp name (``tag``: its pid)."""
        return self.path / f"{SETUP_TMP}{tag}"

    def repo_tmp(self, pid: int) -> Path:
        return self.path / f"{REPO_TMP}{pid}"

    def incoming(self, name: str) -> Path:
        return self.path / f"{INCOMING}{name}"

    def setup_leftovers(self) -> list[Path]:
        """Temp clones a killed setup left: of the workspace, and of ``repo.git``."""
        return sorted(self.path.glob(SETUP_TMP + "*")) + self.repo_leftovers()

    def repo_leftovers(self) -> list[Path]:
        return sorted(self.path.glob(REPO_TMP + "*"))
