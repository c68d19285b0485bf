"""The command line's contract (shared/cli-contract.md) in one module: the commands and their
help, exit codes, what goes to stdout and stderr, and the JSON a script reads. The behaviour
behind each command is tested in-process through ``logist.Runtime`` elsewhere; these run the
real program, since the program is what they check."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import commit_file

STEP_IMAGE = "logist/step:latest"
COMMANDS = [
    [],
    ["run"],
    ["job"],
    ["job", "create"],
    ["job", "step"],
    ["job", "run"],
    ["job", "list"],
    ["job", "status"],
    ["job", "logs"],
    ["job", "cancel"],
    ["job", "cleanup"],
    ["image"],
    ["image", "push"],
    ["doctor"],
]


@pytest.fixture(autouse=True)
def _the_real_program(monkeypatch):
    """Every command here is a process of its own: the program is what these check."""
    monkeypatch.setenv("LOGIST_TEST_SUBPROCESS", "1")


STATUS_KEYS = {
    "id", "state", "repo", "ref", "branch", "image", "created_at", "updated_at", "active",
    "steps", "workspace", "result", "containers",
}  # fmt: skip
STEP_KEYS = {"index", "name", "run", "state", "exit_code", "started_at", "finished_at", "log"}


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "logist")
def test_every_command_has_help_and_exits_0(logist, words):
    out = logist(*words, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage: logist" in out.stdout and "--help" in out.stdout


def test_version_and_a_bad_option_are_one_line_each(logist):
    out = logist("--version")
    assert out.returncode == 0 and re.fullmatch(r"logist \S+\n", out.stdout)
    bad = logist("job", "list", "--no-such-option")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "logist: error:" in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("job", "status", "../x"),
        ("job", "status", "nope"),
        ("job", "step", "A"),
        ("job", "cancel", "x.lock"),
        ("job", "create", "a..b", "--repo", ".", "--step", "true"),
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_ids_and_unknown_jobs_are_exit_2_in_one_line(logist, args):
    out = logist(*args)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_create_prints_the_id_alone_and_list_json_is_a_list_of_status_objects(logist, source_repo):
    out = logist("job", "create", "--repo", str(source_repo), "--step", "true")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", job_id) and out.stdout == job_id + "\n"
    listed = json.loads(logist("job", "list", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert set(listed[0]) >= STATUS_KEYS
    view = json.loads(logist("job", "status", job_id, "--json").stdout)
    assert view["state"] == "pending" and view["branch"] == f"logist/{job_id}"
    assert set(view["steps"][0]) >= STEP_KEYS and view["steps"][0]["index"] == 1
    assert {"path", "state"} <= set(view["workspace"]) and {"bundle", "branch"} <= set(
        view["result"]
    )
    plain = logist("job", "status", job_id)
    assert plain.returncode == 0 and f"job {job_id}: pending" in plain.stdout


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_run_says_the_id_on_stderr_exits_with_the_jobs_code_and_leaves_json_for_scripts(
    logist, source_repo, jobs_root
):
    commit_file(source_repo, "a.txt", "a\n")
    ok = logist(
        "run", "--repo", str(source_repo), "--image", STEP_IMAGE, "--network", "none",
        "--step", "echo out; echo two > two.txt", "-q",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    job_id = re.search(r"logist: job (\S+)", ok.stderr).group(1)
    assert ok.stdout == "out\n"
    logs = logist("job", "logs", job_id)
    assert logs.returncode == 0 and logs.stdout == "out\n"
    view = json.loads(logist("job", "status", job_id, "--json").stdout)
    assert view["state"] == "succeeded" and view["result"]["branch"] == f"logist/{job_id}"
    assert view["workspace"]["state"] == "removed" and view["containers"] == []
    failed = logist(
        "run", "--repo", str(source_repo), "--image", STEP_IMAGE, "--network", "none",
        "--step", "exit 3", "--step", "true", "-q",
    )  # fmt: skip
    assert failed.returncode == 1
    assert re.search(r"job \S+ failed at step 1 \(failed, exit 3\)", failed.stderr)
    cleaned = logist("job", "cleanup", "--stale", "--older-than", "0s", "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    report = json.loads(cleaned.stdout)
    assert set(report) == {"cleaned", "skipped", "failed", "orphans_removed"}
    assert (jobs_root / job_id / "result.bundle").is_file()
    assert (jobs_root / job_id / "logs" / "step-1.log").read_text() == "out\n"


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_doctor_json_and_a_missing_image_is_exit_3(logist, source_repo):
    out = logist("doctor", "--json")
    report = json.loads(out.stdout)
    assert set(report) == {"ok", "checks"} and out.returncode == (0 if report["ok"] else 3)
    assert all({"name", "ok", "detail"} <= set(c) for c in report["checks"])
    git_check = next(c for c in report["checks"] if c["name"] == "git")
    assert git_check["ok"], git_check  # the host's git honours GIT_NO_LAZY_FETCH
    missing = logist(
        "run", "--repo", str(source_repo), "--image", "logist/absent:nope", "--pull", "never",
        "--step", "true",
    )  # fmt: skip
    assert missing.returncode == 3
    assert "logist/absent:nope" in missing.stderr.strip().splitlines()[-1]
