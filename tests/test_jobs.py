"""Jobs: specs and their refusals, the job store (atomic manifests, the lock, liveness), the
state machine, and the CLI edge (create, list, status, logs, errors)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logist.errors import InvalidTransition
from logist.model import Job, Step
from logist.store import Store
from tests.helpers import git, make_repo, run_logist, wait_for
from tests.support_cli import popen_logist

REPO_ROOT = Path(__file__).resolve().parent.parent
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ID_RULE = "^[a-z0-9][a-z0-9_.-]{0,63}$"


# --- helpers -------------------------------------------------------------------------------


def _tree(path: Path) -> set[str]:
    """Every path under ``path`` (relative), to prove a command created nothing."""
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    """The command failed with exit 2 and exactly one line on stderr, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == ""
    err = out.stderr.strip()
    assert err and "\n" not in err, f"not one line: {out.stderr!r}"
    assert "Traceback" not in err
    return err


def _manifest(jobs_root: Path, job_id: str) -> dict:
    return json.loads((jobs_root / job_id / "job.json").read_text())


def _status(logist, job_id: str) -> dict:
    out = logist("job", "status", job_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _spawn(code: str, *args: str) -> subprocess.Popen:
    """A helper python process (logist importable) with a line-buffered stdout pipe."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _store_job(jobs_root: Path, job_id: str, steps: int = 1, **fields) -> Job:
    job = Job(
        id=job_id,
        repo="/nowhere",
        steps=[Step(index=n, run=f"echo step {n}") for n in range(1, steps + 1)],
        **fields,
    )
    Store(jobs_root).create(job)
    return job


# --- job create: refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    ["../x", "a/b", "A", "..", ".", "", "_x", "x y", "a.b/", "a" * 65, "a..b", "x.lock", "x."],
)
def test_create_refuses_invalid_ids_stating_the_rule_and_creates_nothing(
    logist, jobs_root, source_repo, tmp_path, bad_id
):
    before = _tree(tmp_path)
    out = logist("job", "create", bad_id, "--repo", str(source_repo), "--step", "true")
    err = _one_line_error(out)
    assert ID_RULE in err
    assert _tree(tmp_path) == before
    assert list(jobs_root.iterdir()) == []


def test_create_refuses_invalid_ids_from_a_yaml_spec_and_creates_nothing(
    logist, jobs_root, source_repo, tmp_path
):
    for bad_id in ("../x", "a/b", "A", "..", "a" * 65):
        spec = tmp_path / "spec.yaml"
        spec.write_text(json.dumps({"id": bad_id, "repo": str(source_repo), "steps": ["true"]}))
        before = _tree(tmp_path)
        err = _one_line_error(logist("job", "create", "--file", str(spec)))
        assert ID_RULE in err
        assert _tree(tmp_path) == before


@pytest.mark.parametrize("bad_id", ["../x", "..", "a/b"])
def test_other_commands_refuse_invalid_ids_without_touching_the_filesystem(
    logist, jobs_root, tmp_path, bad_id
):
    before = _tree(tmp_path)
    for args in (("status", bad_id, "--json"), ("logs", bad_id), ("cleanup", bad_id)):
        assert ID_RULE in _one_line_error(logist("job", *args))
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "name",
    [
        "logist/a..b",
        "logist/x.lock",
        "logist/x.",
        "logist/.x",
        "logist/a@{b",
        "logist/a b",
        "logist/a//b",
        "logist/a~1",
        "logist/a^",
        "logist/a:b",
        "logist/a?",
        "logist/a*",
        "logist/a[b",
        "logist/a\\b",
        "logist/a/",
        "logist/x.lock.y",
        "logist/a.b",
        "logist/a-b_c.d",
        "logist/@",
        "@",
    ],
)
def test_branch_name_check_agrees_with_git_check_ref_format(name):
    from logist.spec import valid_ref_name

    git_says = subprocess.run(["git", "check-ref-format", name]).returncode == 0
    assert valid_ref_name(name) is git_says


def test_create_accepts_an_id_of_64_characters(logist, jobs_root, source_repo):
    job_id = "a" * 64
    out = logist("job", "create", job_id, "--repo", str(source_repo), "--step", "true")
    assert out.returncode == 0, out.stderr
    assert out.stdout == job_id + "\n"


def test_create_refuses_an_existing_id_and_leaves_that_job_alone(logist, jobs_root, source_repo):
    assert logist("job", "create", "dup", "--repo", str(source_repo), "--step", "a").returncode == 0
    before = (jobs_root / "dup" / "job.json").read_bytes()
    err = _one_line_error(logist("job", "create", "dup", "--repo", str(source_repo), "--step", "b"))
    assert "dup" in err and "exists" in err
    assert (jobs_root / "dup" / "job.json").read_bytes() == before


def test_create_refuses_a_local_path_that_is_not_a_git_repository(logist, jobs_root, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    err = _one_line_error(logist("job", "create", "--repo", str(plain), "--step", "true"))
    assert str(plain) in err and "not a git repository" in err
    err = _one_line_error(logist("job", "create", "--repo", str(tmp_path / "nope"), "--step", "x"))
    assert str(tmp_path / "nope") in err
    assert list(jobs_root.iterdir()) == []


def test_create_refuses_a_file_url_to_nothing(logist, jobs_root, tmp_path):
    url = f"file://{tmp_path}/nothing-here"
    err = _one_line_error(logist("job", "create", "--repo", url, "--step", "true"))
    assert url in err and "not reachable" in err
    assert list(jobs_root.iterdir()) == []


def test_create_accepts_a_file_url_to_a_repository_and_checks_its_ref(
    logist, jobs_root, source_repo
):
    url = f"file://{source_repo}"
    out = logist("job", "create", "remote", "--repo", url, "--ref", "main", "--step", "true")
    assert out.returncode == 0, out.stderr
    assert _manifest(jobs_root, "remote")["repo"] == url
    err = _one_line_error(logist("job", "create", "--repo", url, "--ref", "nope", "--step", "x"))
    assert "unknown ref" in err and "nope" in err


def test_create_refuses_a_job_without_steps(logist, jobs_root, source_repo, tmp_path):
    err = _one_line_error(logist("job", "create", "--repo", str(source_repo)))
    assert "step" in err
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: []\n")
    assert "step" in _one_line_error(logist("job", "create", "--file", str(spec)))
    assert list(jobs_root.iterdir()) == []


def test_create_refuses_an_unknown_ref_naming_it(logist, jobs_root, source_repo):
    args = ("--repo", str(source_repo), "--step", "true")
    err = _one_line_error(logist("job", "create", *args, "--ref", "no-such-branch"))
    assert "unknown ref" in err and "no-such-branch" in err
    assert list(jobs_root.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--network", "wifi"),
        ("--pull", "sometimes"),
        ("--cleanup", "later"),
        ("--user", "bob"),
        ("--memory", "lots"),
        ("--cpus", "-1"),
        ("--cpus", "abc"),
        ("--cpus", "inf"),
        ("--pids", "0"),
        ("--pids", "1.5"),
        ("--timeout", "0"),
        ("--timeout", "soon"),
        ("--timeout", "inf"),
        ("--env", "NOEQUALS"),
        ("--env", "1X=y"),
    ],
)
def test_create_refuses_a_bad_flag_value_naming_the_key_and_value(
    logist, jobs_root, source_repo, flag, value
):
    out = logist("job", "create", "--repo", str(source_repo), "--step", "true", flag, value)
    err = _one_line_error(out)
    key = flag.removeprefix("--")
    assert key in err, err
    if value not in ("1X=y",):  # the env check names the variable, not the whole pair
        assert value.lstrip("-") in err, err
    assert list(jobs_root.iterdir()) == []


@pytest.mark.parametrize(
    ("snippet", "named"),
    [
        ("bogus: 1", "bogus"),
        ("resources: {memory: 1g, disk: 10g}", "disk"),
        ("network: wifi", "network"),
        ("user: bob", "user"),
        ("resources: {memory: lots}", "memory"),
        ("resources: {cpus: -2}", "cpus"),
        ("resources: {pids: 2.5}", "pids"),
        ("timeout: soon", "timeout"),
        ("timeout: 1:30", "timeout"),
        ("timeout: .inf", "timeout"),
        ("env: [FOO]", "env"),
        ("env: {FOO: {a: 1}}", "FOO"),
    ],
)
def test_create_refuses_a_bad_yaml_spec_naming_the_key(
    logist, jobs_root, source_repo, tmp_path, snippet, named
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\n{snippet}\n")
    err = _one_line_error(logist("job", "create", "--file", str(spec)))
    assert named in err, err
    assert list(jobs_root.iterdir()) == []


def test_create_refuses_unknown_keys_of_a_step_map(logist, jobs_root, source_repo, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps:\n  - run: 'true'\n    retries: 3\n")
    assert "retries" in _one_line_error(logist("job", "create", "--file", str(spec)))
    spec.write_text(f"repo: {source_repo}\nsteps:\n  - name: no-command\n")
    assert "run" in _one_line_error(logist("job", "create", "--file", str(spec)))
    spec.write_text(f"repo: {source_repo}\nsteps:\n  - run: 'true'\n    timeout: -1\n")
    assert "timeout" in _one_line_error(logist("job", "create", "--file", str(spec)))


def test_create_refuses_invalid_yaml_and_a_missing_spec_file(logist, jobs_root, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("repo: /x\nsteps: [ 'unclosed\n")
    err = _one_line_error(logist("job", "create", "--file", str(spec)))
    assert "YAML" in err and str(spec) in err
    spec.write_text("- just\n- a list\n")
    assert str(spec) in _one_line_error(logist("job", "create", "--file", str(spec)))
    missing = tmp_path / "missing.yaml"
    assert str(missing) in _one_line_error(logist("job", "create", "--file", str(missing)))
    assert list(jobs_root.iterdir()) == []


def test_yaml_user_written_without_quotes_is_not_read_as_a_base_60_number(
    logist, jobs_root, source_repo, tmp_path
):
    # YAML 1.1 reads 33:33 as the sexagesimal integer 2013; that must not become uid 2013
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nuser: 33:33\nsteps: ['true']\n")
    out = logist("job", "create", "www", "--file", str(spec))
    assert out.returncode == 0, out.stderr
    assert _manifest(jobs_root, "www")["user"] == "33:33"


# --- job create: what it makes ----------------------------------------------------------------


def test_create_prints_the_id_alone_so_command_substitution_works(logist, jobs_root, source_repo):
    script = 'id=$("$@" job create --repo "$SRC" --step true) && "$@" job status "$id" --json'
    cmd = [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root)]
    out = subprocess.run(
        ["sh", "-c", script, "sh", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SRC": str(source_repo)},
    )
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["state"] == "pending"
    assert (jobs_root / view["id"] / "job.json").is_file()


def test_an_omitted_id_is_generated_lowercase_valid_and_unique(logist, jobs_root, source_repo):
    ids = []
    for _ in range(3):
        out = logist("job", "create", "--repo", str(source_repo), "--step", "true")
        assert out.returncode == 0, out.stderr
        assert out.stdout.endswith("\n") and out.stdout.count("\n") == 1
        ids.append(out.stdout.strip())
    assert len(set(ids)) == 3
    for job_id in ids:
        assert ID_RE.fullmatch(job_id) and job_id == job_id.lower()
        assert _manifest(jobs_root, job_id)["id"] == job_id
    assert sorted(p.name for p in jobs_root.iterdir()) == sorted(ids)


def test_create_from_flags_writes_a_pending_manifest_with_defaults(logist, jobs_root, source_repo):
    out = logist(
        "job",
        "create",
        "flags",
        "--repo",
        str(source_repo),
        "--step",
        "echo one",
        "--step",
        "echo two",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--prompt",
        "do it",
    )
    assert out.returncode == 0, out.stderr
    m = _manifest(jobs_root, "flags")
    assert m["state"] == "pending" and m["schema_version"] >= 1
    assert m["repo"] == str(source_repo) and m["ref"] is None
    assert [s["run"] for s in m["steps"]] == ["echo one", "echo two"]
    assert [s["index"] for s in m["steps"]] == [1, 2]
    assert all(s["state"] == "pending" for s in m["steps"])
    assert m["env"] == {"A": "1", "B": "x=y"} and m["prompt"] == "do it"
    assert m["image"] == "logist/step:latest" and m["network"] == "bridge"
    assert m["pull"] == "missing" and m["cleanup"] == "always"
    assert m["user"] == f"{os.getuid()}:{os.getgid()}"
    for stamp in (m["created_at"], m["updated_at"]):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", stamp)
    assert (jobs_root / "flags" / "logs").is_dir()
    assert not (jobs_root / "flags" / "workspace").exists()


def test_create_from_the_contracts_yaml_example_writes_the_right_manifest(
    logist, jobs_root, tmp_path
):
    src = make_repo(tmp_path / "project")
    git(src, "checkout", "-qb", "feature")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
id: fix-readme            # optional
repo: {src}
ref: main
image: logist/step:latest
prompt: "Fix the typo in README"
env: {{FOO: bar, N: 3, ON: true, DEBUG: yes}}
timeout: 600
resources: {{memory: 512m, cpus: 1.5, pids: 256}}
network: bridge
user: "1000:1000"
pull: never
cleanup: on-success
steps:
  - ./scripts/lint.sh
  - run: ./scripts/test.sh
  - name: agent
    run: my-agent --task "$LOGIST_PROMPT"
    image: my/agent:1.2   # optional per-step image
    timeout: 1800         # optional per-step timeout
"""
    )
    out = logist("job", "create", "--file", str(spec))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "fix-readme\n"
    m = _manifest(jobs_root, "fix-readme")
    assert m["repo"] == str(src) and m["ref"] == "main"
    assert m["image"] == "logist/step:latest"
    assert m["prompt"] == "Fix the typo in README"
    # YAML 1.2 scalars: ON is a name and yes a string, not booleans
    assert m["env"] == {"FOO": "bar", "N": "3", "ON": "true", "DEBUG": "yes"}
    assert m["timeout"] == 600
    assert (m["memory"], m["cpus"], m["pids"]) == ("512m", 1.5, 256)
    assert (m["network"], m["user"], m["pull"], m["cleanup"]) == (
        "bridge",
        "1000:1000",
        "never",
        "on-success",
    )
    steps = m["steps"]
    assert [(s["index"], s["name"], s["run"]) for s in steps] == [
        (1, None, "./scripts/lint.sh"),
        (2, None, "./scripts/test.sh"),
        (3, "agent", 'my-agent --task "$LOGIST_PROMPT"'),
    ]
    assert [s["image"] for s in steps] == [None, None, "my/agent:1.2"]
    assert [s["timeout"] for s in steps] == [None, None, 1800]
    assert m["state"] == "pending" and all(s["state"] == "pending" for s in steps)
    view = _status(logist, "fix-readme")
    assert [s["image"] for s in view["steps"]] == ["logist/step:latest"] * 2 + ["my/agent:1.2"]


def test_flags_override_the_yaml_spec(logist, jobs_root, source_repo, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"id: from-yaml\nrepo: {source_repo}\nnetwork: host\nsteps: ['true']\n")
    out = logist(
        "job", "create", "from-flag", "--file", str(spec), "--network", "none", "--cpus", "2"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "from-flag\n"
    m = _manifest(jobs_root, "from-flag")
    assert m["network"] == "none" and m["cpus"] == 2
    assert not (jobs_root / "from-yaml").exists()


# --- the store: atomic manifests, the lock, liveness ---------------------------------------


WRITER = """
import json, sys
from pathlib import Path
from logist.model import Job
from logist.store import Store, job_lock
root, job_id, a, b = sys.argv[1:5]
store = Store(Path(root))
versions = [Job.from_dict(json.loads(Path(p).read_text())) for p in (a, b)]
n = 0
while True:
    with job_lock(store.job_dir(job_id)):
        store.save(versions[n % 2])
    if n == 1:  # both versions written once
        print("ready", flush=True)
    n += 1
"""


def _without_updated_at(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "updated_at"}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_manifest_is_never_half_written_when_its_writer_is_killed(logist, jobs_root, tmp_path):
    store = Store(jobs_root)
    small = _store_job(jobs_root, "atomic", prompt="small")
    big = Job.from_dict(small.to_dict())
    big.prompt = "b" * 400_000  # a big write: kills land inside it
    big.env = {f"K{i}": "v" * 50 for i in range(500)}
    big.steps[0].state = "running"
    versions = []
    for name, job in (("a", small), ("b", big)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(job.to_dict()))
        versions.append(_without_updated_at(job.to_dict()))
    seed = random.randrange(1 << 30)
    print(f"random seed {seed}")
    rng = random.Random(seed)
    job_dir = jobs_root / "atomic"
    kills = 0
    seen = set()
    for _ in range(50):
        proc = _spawn(
            WRITER, str(jobs_root), "atomic", str(tmp_path / "a.json"), str(tmp_path / "b.json")
        )
        try:
            assert proc.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0, 0.08))  # a few write cycles
        finally:
            _kill(proc)
        kills += 1
        data = json.loads((job_dir / "job.json").read_text())  # parses: never half-written
        assert data["updated_at"].endswith("Z")
        assert _without_updated_at(data) in versions
        seen.add(versions.index(_without_updated_at(data)))
        temps = [p.name for p in job_dir.iterdir() if p.name.startswith(".")]
        assert all(re.fullmatch(r"\.job\.json\..+\.tmp", t) for t in temps), temps
        assert len(temps) <= kills  # at most the one temp file each kill interrupted
    print(f"{kills} kills, versions seen {sorted(seen)}, temp files left {len(temps)}")
    assert seen == {0, 1}
    assert {p.name for p in job_dir.iterdir() if not p.name.startswith(".")} == {
        "job.json",
        "lock",
        "logs",
    }
    # a leftover temp file is never taken for the manifest
    (job_dir / ".job.json.zzzz.tmp").write_text("{ half a manifest")
    assert store.ids() == ["atomic"]
    assert store.load("atomic").id == "atomic"
    listed = json.loads(logist("job", "list", "--json").stdout)
    assert [j["id"] for j in listed] == ["atomic"]
    assert _status(logist, "atomic")["id"] == "atomic"


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from logist.store import job_lock
with job_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.mark.timeout(60)
def test_active_follows_the_lock_and_is_false_right_after_its_holder_is_killed(logist, jobs_root):
    _store_job(jobs_root, "held")
    assert _status(logist, "held")["active"] is False
    proc = _spawn(LOCK_HOLDER, str(jobs_root / "held"))
    try:
        assert proc.stdout.readline() == "locked\n"
        assert _status(logist, "held")["active"] is True
        assert "yes" in logist("job", "list").stdout.splitlines()[1].split()
        listed = json.loads(logist("job", "list", "--json").stdout)
        assert listed[0]["active"] is True
    finally:
        _kill(proc)
    assert _status(logist, "held")["active"] is False
    assert json.loads(logist("job", "list", "--json").stdout)[0]["active"] is False


def test_active_comes_from_the_lock_not_from_the_recorded_owner(logist, jobs_root):
    _store_job(jobs_root, "stale")
    # a lock file naming this (live) test process, but no lock held: not active
    (jobs_root / "stale" / "lock").write_text(f"host:{os.getpid()}:0")
    assert _status(logist, "stale")["active"] is False


# --- the state machine -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("succeeded", "running"),
        ("failed", "running"),
        ("canceled", "pending"),
        ("pending", "succeeded"),
        ("interrupted", "succeeded"),
        ("succeeded", "failed"),
    ],
)
def test_illegal_job_transitions_are_refused(start, target):
    job = Job(id="j", repo="/r", steps=[Step(index=1, run="x")], state=start)
    with pytest.raises(InvalidTransition) as err:
        job.move(target)
    assert err.value.exit_code == 2
    assert start in str(err.value) and target in str(err.value)
    assert job.state == start


@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("succeeded", "running"),
        ("failed", "pending"),
        ("timed_out", "running"),
        ("pending", "succeeded"),
        ("canceled", "running"),
    ],
)
def test_illegal_step_transitions_are_refused(start, target):
    step = Step(index=1, run="x", state=start)
    with pytest.raises(InvalidTransition):
        step.move(target)
    assert step.state == start


def test_the_legal_path_of_a_job_is_allowed():
    job = Job(id="j", repo="/r", steps=[Step(index=1, run="x"), Step(index=2, run="y")])
    for state in ("running", "pending", "running", "interrupted", "running", "succeeded"):
        job.move(state)
    assert job.terminal


@pytest.mark.parametrize("state", ["succeeded", "failed", "canceled"])
def test_stepping_or_running_a_finished_job_is_refused_saying_why(logist, jobs_root, state):
    _store_job(jobs_root, "done", state=state)
    before = (jobs_root / "done" / "job.json").read_bytes()
    for cmd in ("step", "run"):
        out = logist("job", cmd, "done")
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert f"done is {state}" in out.stderr and "only pending or interrupted" in out.stderr
        assert "Traceback" not in out.stderr
    assert (jobs_root / "done" / "job.json").read_bytes() == before


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_job_that_ran_to_success_cannot_be_stepped_again(logist, jobs_root, source_repo):
    create = logist(
        "job",
        "create",
        "ran",
        "--repo",
        str(source_repo),
        "--step",
        "echo hello from the step; echo to stderr >&2",
    )
    assert create.returncode == 0, create.stderr
    run = logist("job", "run", "ran")
    assert run.returncode == 0, run.stderr
    view = _status(logist, "ran")
    assert view["state"] == "succeeded" and view["steps"][0]["state"] == "succeeded"
    assert view["steps"][0]["exit_code"] == 0
    step = logist("job", "step", "ran")
    assert step.returncode == 2
    assert "ran is succeeded" in step.stderr and "only pending or interrupted" in step.stderr
    cancel = logist("job", "cancel", "ran")
    assert cancel.returncode == 2 and "nothing to cancel" in cancel.stderr
    assert _status(logist, "ran")["state"] == "succeeded"
    # its stored log
    logs = logist("job", "logs", "ran")
    assert logs.returncode == 0, logs.stderr
    assert "hello from the step" in logs.stdout and "to stderr" in logs.stdout
    assert logist("job", "logs", "ran", "--step", "1").stdout == logs.stdout
    follow = logist("job", "logs", "ran", "--follow", timeout=30)
    assert follow.returncode == 0 and follow.stdout == logs.stdout


def _dead_running_job(jobs_root: Path, job_id: str) -> None:
    """A job recorded running (step 1 running) whose owner is gone: no process holds its lock."""
    job = _store_job(jobs_root, job_id, steps=2)
    job.state = "running"
    job.steps[0].state = "running"
    job.steps[0].started_at = job.created_at
    (jobs_root / job_id / "lock").write_text("somehost:4242:1")
    Store(jobs_root).save(job)


def test_a_running_job_with_a_dead_owner_is_reported_interrupted_at_once(logist, jobs_root):
    _dead_running_job(jobs_root, "orphan")
    before = (jobs_root / "orphan" / "job.json").read_bytes()
    view = _status(logist, "orphan")
    assert view["state"] == "interrupted" and view["active"] is False
    assert [s["state"] for s in view["steps"]] == ["pending", "pending"]
    listed = json.loads(logist("job", "list", "--json").stdout)
    assert listed[0]["state"] == "interrupted"
    assert "interrupted" in logist("job", "list").stdout
    assert "orphan: interrupted" in logist("job", "status", "orphan").stdout
    # reporting writes nothing
    assert (jobs_root / "orphan" / "job.json").read_bytes() == before


@pytest.mark.timeout(60)
def test_a_running_job_whose_owner_holds_the_lock_is_reported_running(logist, jobs_root):
    _dead_running_job(jobs_root, "alive")
    proc = _spawn(LOCK_HOLDER, str(jobs_root / "alive"))
    try:
        assert proc.stdout.readline() == "locked\n"
        view = _status(logist, "alive")
        assert view["state"] == "running" and view["active"] is True
        assert view["steps"][0]["state"] == "running"
    finally:
        _kill(proc)
    assert _status(logist, "alive")["state"] == "interrupted"


@pytest.mark.docker
@pytest.mark.timeout(60)
def test_the_next_command_taking_the_lock_records_the_interruption(logist, jobs_root):
    _dead_running_job(jobs_root, "orphan")
    out = logist("job", "cleanup", "orphan")
    assert out.returncode == 0, out.stderr
    m = _manifest(jobs_root, "orphan")
    assert m["state"] == "interrupted"
    assert [s["state"] for s in m["steps"]] == ["pending", "pending"]
    assert m["error"]
    assert _status(logist, "orphan")["state"] == "interrupted"


# --- list, status, logs --------------------------------------------------------------------


def test_status_json_has_every_field_of_the_contract(logist, jobs_root, source_repo):
    assert (
        logist(
            "job", "create", "st", "--repo", str(source_repo), "--ref", "main", "--step", "echo hi"
        ).returncode
        == 0
    )
    view = _status(logist, "st")
    for key in (
        "id",
        "state",
        "repo",
        "ref",
        "branch",
        "image",
        "created_at",
        "updated_at",
        "active",
        "steps",
        "workspace",
        "result",
        "containers",
        "engine",
    ):
        assert key in view, key
    assert view["id"] == "st" and view["state"] == "pending" and view["ref"] == "main"
    assert view["repo"] == str(source_repo) and view["branch"] == "logist/st"
    assert view["image"] == "logist/step:latest" and view["active"] is False
    assert view["created_at"].endswith("Z") and view["updated_at"] >= view["created_at"]
    (step,) = view["steps"]
    for key in ("index", "name", "run", "state", "exit_code", "started_at", "finished_at", "log"):
        assert key in step, key
    assert (step["index"], step["run"], step["state"]) == (1, "echo hi", "pending")
    assert view["workspace"] == {
        "path": str(jobs_root / "st" / "workspace"),
        "state": "absent",
        "volume": None,  # a bind mount (the local engine)
    }
    assert view["engine"] is None  # placed when it first runs
    assert view["result"] == {"bundle": None, "branch": None}
    assert view["containers"] == []
    human = logist("job", "status", "st")
    assert human.returncode == 0 and "st: pending" in human.stdout


def test_status_of_an_unknown_job_is_exit_2(logist, jobs_root):
    err = _one_line_error(logist("job", "status", "nosuch", "--json"))
    assert "nosuch" in err


@pytest.mark.timeout(120)
def test_list_shows_a_thousand_jobs_as_a_table_and_as_json(logist, jobs_root):
    store = Store(jobs_root)
    start = time.monotonic()
    for i in range(1000):
        store.create(Job(id=f"job-{i:04d}", repo="/src", steps=[Step(index=1, run="true")]))
    print(f"created 1000 jobs through the Store in {time.monotonic() - start:.2f}s")
    start = time.monotonic()
    table = logist("job", "list")
    took_table = time.monotonic() - start
    start = time.monotonic()
    as_json = logist("job", "list", "--json")
    took_json = time.monotonic() - start
    print(
        f"job list: {took_table:.3f}s (table), {took_json:.3f}s (--json), "
        "including interpreter start-up"
    )
    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATE", "ACTIVE"]
    assert len(lines) == 1001
    assert [line.split()[0] for line in lines[1:]] == [f"job-{i:04d}" for i in range(1000)]
    assert all(line.split()[1] == "pending" for line in lines[1:])
    rows = json.loads(as_json.stdout)
    assert isinstance(rows, list) and len(rows) == 1000
    assert {r["id"] for r in rows} == {f"job-{i:04d}" for i in range(1000)}
    assert rows[0].keys() == _status(logist, "job-0000").keys()


def test_list_of_an_empty_jobs_root(logist, jobs_root):
    assert logist("job", "list", "--json").stdout.strip() == "[]"
    out = logist("job", "list")
    assert out.returncode == 0 and out.stdout.strip() == "no jobs"


def _finished_steps_with_logs(jobs_root: Path, job_id: str) -> None:
    store = Store(jobs_root)
    job = _store_job(jobs_root, job_id, steps=3)
    logs = jobs_root / job_id / "logs"
    for n, stamp in ((1, "2030-01-01T00:00:01.000Z"), (2, "2030-01-01T00:00:02.000Z")):
        (logs / f"step-{n}.log").write_bytes(f"output of step {n}\n".encode())
        step = job.steps[n - 1]
        step.state, step.exit_code = "succeeded", 0
        step.started_at = step.finished_at = stamp
        step.log = str(logs / f"step-{n}.log")
    store.save(job)


@pytest.mark.timeout(60)
def test_logs_prints_the_stored_log_of_the_latest_or_a_chosen_step(logist, jobs_root):
    _finished_steps_with_logs(jobs_root, "lg")
    latest = logist("job", "logs", "lg")
    assert latest.returncode == 0 and latest.stdout == "output of step 2\n"
    first = logist("job", "logs", "lg", "--step", "1")
    assert first.returncode == 0 and first.stdout == "output of step 1\n"
    follow = logist("job", "logs", "lg", "--step", "1", "--follow", timeout=30)
    assert follow.returncode == 0 and follow.stdout == "output of step 1\n"
    never_ran = logist("job", "logs", "lg", "--step", "3", "--follow", timeout=30)
    assert never_ran.returncode == 0 and never_ran.stdout == ""
    for bad in ("0", "4", "-1"):
        assert "step" in _one_line_error(logist("job", "logs", "lg", "--step", bad))
    assert "nosuch" in _one_line_error(logist("job", "logs", "nosuch"))


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_logs_follow_streams_a_running_step_until_it_finishes(logist, jobs_root, source_repo):
    job = logist(
        "job", "create", "live", "--repo", str(source_repo),
        "--step", "echo first line; while [ ! -e .release ]; do sleep 0.1; done; echo second line",
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    runner = popen_logist(jobs_root, "job", "run", "live")
    follower = None
    try:
        ws = jobs_root / "live" / "workspace"
        log = jobs_root / "live" / "logs" / "step-1.log"
        wait_for(
            lambda: log.exists() and log.read_bytes() == b"first line\n",
            timeout=60,
            what="the first line",
        )
        follower = popen_logist(jobs_root, "job", "logs", "live", "--follow")
        assert follower.stdout.readline() == "first line\n"
        (ws / ".release").touch()  # only now can the step print its second line
        rest, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert rest == "second line\n"  # --follow kept reading the running step, then ended
        assert runner.wait(timeout=60) == 0
    finally:
        _kill(runner)
        if follower is not None:
            _kill(follower)


# --- errors --------------------------------------------------------------------------------


def test_errors_are_one_line_without_a_traceback_unless_debugging(jobs_root):
    plain = run_logist(jobs_root, "job", "status", "nosuch", env={"LOGIST_DEBUG": ""})
    err = _one_line_error(plain)
    assert err.startswith("logist: error:") and "nosuch" in err
    debug = run_logist(jobs_root, "job", "status", "nosuch", env={"LOGIST_DEBUG": "1"})
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == err


@pytest.mark.parametrize(
    "args",
    [("job", "create", "--bogus"), ("job", "status"), ("job", "run", "--parallel", "0"), ("nope",)],
)
def test_parser_usage_errors_are_one_line_with_exit_2(logist, args):
    out = logist(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("logist: error:"), out.stderr


def test_the_next_save_removes_temp_files_of_killed_writers(jobs_root, source_repo):
    from logist.jobs import create_job
    from logist.store import Store, job_lock

    store = Store(jobs_root)
    job = create_job(store, {"repo": str(source_repo), "steps": ["true"]})
    planted = jobs_root / job.id / ".job.json.dead.tmp"
    planted.write_text('{"half": ')
    with job_lock(store.job_dir(job.id)):
        store.save(job)
    assert not planted.exists()
    assert store.load(job.id).id == job.id


def test_create_never_leaves_a_job_directory_without_a_manifest(
    jobs_root, source_repo, monkeypatch
):
    import logist.store
    from logist.jobs import create_job
    from logist.store import Store

    store = Store(jobs_root)
    real = logist.store.write_atomic

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    def killed_before_rename(path, data):  # the manifest is written, the rename never happens
        real(path, data)
        raise KeyboardInterrupt

    for fault, error in ((disk_full, OSError), (killed_before_rename, KeyboardInterrupt)):
        monkeypatch.setattr(logist.store, "write_atomic", fault)
        with pytest.raises(error):
            create_job(store, {"id": "once", "repo": str(source_repo), "steps": ["true"]})
        assert list(jobs_root.iterdir()) == []  # no job directory, no temp directory
    monkeypatch.setattr(logist.store, "write_atomic", real)
    create_job(store, {"id": "once", "repo": str(source_repo), "steps": ["true"]})
    assert (jobs_root / "once" / "job.json").is_file() and (jobs_root / "once" / "logs").is_dir()


def test_a_copied_job_directory_or_one_named_like_no_job_leaves_the_list_whole(
    logist, jobs_root, source_repo
):
    """One refused directory (a copy whose manifest names another job; a name that is no job
    id) made `job list` fail whole (red team, 12-06): the others are listed, the copy not."""
    import shutil

    made = logist("job", "create", "--repo", str(source_repo), "--step", "true")
    job = made.stdout.strip()
    shutil.copytree(jobs_root / job, jobs_root / "copy-of-it")
    shutil.copytree(jobs_root / job, jobs_root / "J1")  # upper case: no job id
    listed = logist("job", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)] == [job]
    assert logist("job", "list").returncode == 0


def test_the_job_lock_keeps_no_entry_once_no_thread_holds_or_waits_for_it(tmp_path):
    """A process that runs many jobs (an agent framework's) kept one entry per job directory
    ever locked (red team, 12-06). Re-entry, a refusal and a waiting thread still work."""
    import threading

    from logist import store
    from logist.errors import JobActive

    dirs = [tmp_path / f"job-{i}" for i in range(50)]
    for d in dirs:
        d.mkdir()
        with store.job_lock(d), store.job_lock(d):
            assert store.held_here(d)
        assert not store.held_here(d)
    assert not any(str(d) in store._held for d in dirs)
    seen: list[str] = []

    def refused() -> None:
        try:
            with store.job_lock(dirs[0], timeout=0):
                seen.append("taken")
        except JobActive:
            seen.append("refused")

    def waits() -> None:
        with store.job_lock(dirs[0], timeout=30):
            seen.append("waited")

    with store.job_lock(dirs[0]):
        first = threading.Thread(target=refused)
        first.start()
        first.join(timeout=10)
        second = threading.Thread(target=waits)
        second.start()
        time.sleep(0.2)
        assert seen == ["refused"] and str(dirs[0]) in store._held
    second.join(timeout=30)
    assert seen == ["refused", "waited"]
    assert str(dirs[0]) not in store._held
