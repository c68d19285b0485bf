"""Sessions (contract v3, "Sessions"): one live container an agent loop drives, harvested like a
job, and nothing left behind; through the command line and through ``Runtime.session``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import logist
from tests.helpers import git, run_logist, wait_for

STEP_IMAGE = "logist/step:latest"
pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]


@pytest.fixture
def rt(jobs_root) -> logist.Runtime:
    return logist.Runtime(jobs_root, notify=lambda msg: None)


# how many processes of the session's container run `sleep 60` (no ps in the image)
SLEEPERS = (
    # stderr first: a process gone between the glob and the open is no message (the shell
    # opens the redirections in order)
    "for p in /proc/[0-9]*; do tr '\\0' ' ' 2>/dev/null < $p/cmdline; echo; done"
    " | grep -c '^sleep 60 $' || true"
)


def left(docker_client, jobs_root) -> list[str]:
    found = docker_client.containers.list(
        all=True, filters={"label": f"logist.jobs-dir={jobs_root}"}
    )
    return [c.name for c in found]


def start(logist_, source_repo, *extra: str) -> str:
    out = logist_(
        "session", "start", "--repo", str(source_repo), "--image", STEP_IMAGE,
        "--network", "none", *extra,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_session_runs_commands_in_one_container_and_stop_lands_its_work(
    logist, source_repo, jobs_root, docker_client
):
    sid = start(logist, source_repo)
    one = logist(
        "session", "exec", sid, "--", "sh", "-c", "echo hi > a.txt; echo $$ > pid; cat a.txt"
    )
    assert (one.returncode, one.stdout) == (0, "hi\n"), one.stderr
    two = logist("session", "exec", sid, "--", "sh", "-c", "echo oops >&2; exit 7")
    assert two.returncode == 7 and "oops" in two.stdout  # its exit code is the command's
    assert (jobs_root / sid / "logs" / "exec-1.log").read_text() == "hi\n"
    commit = logist("session", "harvest", sid).stdout.strip()
    assert git(jobs_root / sid / "repo.git", "show", f"{commit}:a.txt") == "hi\n"
    view = json.loads(logist("job", "status", sid, "--json").stdout)
    assert view["state"] == "running" and len(view["containers"]) == 1
    assert view["session"]["execs"] == 2
    three = logist("session", "exec", sid, "--", "sh", "-c", "echo more > b.txt")
    assert three.returncode == 0
    stopped = logist("session", "stop", sid)
    assert stopped.returncode == 0, stopped.stderr
    view = json.loads(logist("job", "status", sid, "--json").stdout)
    assert view["state"] == "succeeded" and view["result"]["branch"] == f"logist/{sid}"
    assert git(source_repo, "show", f"logist/{sid}:b.txt") == "more\n"
    assert (jobs_root / sid / "result.bundle").is_file()
    assert not (jobs_root / sid / "workspace").exists()
    assert left(docker_client, jobs_root) == []
    again = logist("session", "exec", sid, "--", "true")
    assert again.returncode == 2 and "succeeded" in again.stderr


def test_the_python_session_execs_masks_reads_writes_and_stops_on_leaving(
    rt, source_repo, jobs_root, docker_client, monkeypatch
):
    monkeypatch.setenv("SESSION_TOKEN", "t0k3n-value")
    seen: list[bytes] = []
    with rt.session(
        repo=str(source_repo), image=STEP_IMAGE, network="none", secrets=["SESSION_TOKEN"],
        on_output=lambda i, chunk: seen.append(chunk),
    ) as s:  # fmt: skip
        r = s.exec(["sh", "-c", "echo token=$SESSION_TOKEN; exit 4"])
        assert (r.exit_code, r.output) == (4, "token=***\n")
        assert b"".join(seen) == b"token=***\n"
        assert r.log.endswith("exec-1.log")
        monkeypatch.delenv("SESSION_TOKEN")  # refused, and no exec number used up
        with pytest.raises(logist.LogistError, match="SESSION_TOKEN"):
            s.exec(["true"])
        monkeypatch.setenv("SESSION_TOKEN", "t0k3n-value")
        assert s.exec(["true"]).log.endswith("exec-2.log")
        s.write_file("notes/todo.md", b"# todo\n")
        assert s.exec(["cat", "notes/todo.md"]).output == "# todo\n"
        assert s.read_file("notes/todo.md") == b"# todo\n"
        with pytest.raises(logist.UsageError):
            s.read_file("../../etc/passwd")
        commit = s.harvest()
        assert git(jobs_root / s.id / "repo.git", "show", f"{commit}:notes/todo.md") == "# todo\n"
        sid = s.id
    assert rt.status(sid)["state"] == "succeeded"
    assert git(source_repo, "show", f"logist/{sid}:notes/todo.md") == "# todo\n"
    assert left(docker_client, jobs_root) == []


def test_an_exception_in_the_block_still_harvests_and_stops(rt, source_repo, docker_client):
    s = rt.session(repo=str(source_repo), image=STEP_IMAGE, network="none")
    with pytest.raises(RuntimeError, match="agent crashed"), s:
        s.exec(["sh", "-c", "echo work > w.txt"])
        raise RuntimeError("agent crashed")
    assert rt.status(s.id)["state"] == "succeeded"
    assert git(source_repo, "show", f"logist/{s.id}:w.txt") == "work\n"
    assert left(docker_client, rt.jobs_dir) == []


def test_a_timeout_stops_that_command_not_the_session(rt, source_repo):
    with rt.session(repo=str(source_repo), image=STEP_IMAGE, network="none") as s:
        started = time.monotonic()
        # 5 s: on a loaded machine the exec alone may take more than a second to print
        r = s.exec(["sh", "-c", "echo begun; sleep 60"], timeout=5)
        assert r.timed_out and r.exit_code != 0 and r.output == "begun\n"
        assert time.monotonic() - started < 20
        assert s.exec(["sh", "-c", SLEEPERS]).output == "0\n"
        assert s.exec(["true"]).exit_code == 0


def test_a_command_that_rewrites_its_pid_file_still_times_out_and_stops_nothing_else(
    rt, source_repo
):
    """The stop read the command's pid from a file the command could write: 99999 there made
    a timeout stop nothing (the exec ran its 25 s, exit 0); 1 there, in a session of a user
    not root, had the stop (as root) signal every process and end the session (red team,
    12-06). The stop now takes the engine's pid of the command and runs as the session's user."""
    spec = {"repo": str(source_repo), "image": STEP_IMAGE, "network": "none"}
    rewrite = "for f in /tmp/.logist-exec-*.pid; do echo {} > $f; done; sleep 25; touch survived"
    with rt.session(user="1000:1000", **spec) as s:
        for pid in ("99999", "1"):
            started = time.monotonic()
            r = s.exec(["sh", "-c", rewrite.format(pid)], timeout=3)
            assert r.timed_out and r.exit_code is None, (pid, r)
            assert time.monotonic() - started < 15, pid
        assert s.exec(["sh", "-c", "ls survived 2>/dev/null; echo alive"]).output == "alive\n"


def test_an_idle_session_whose_harvest_is_refused_is_still_stopped_by_the_sweep(
    rt, source_repo, docker_client, tmp_path, monkeypatch
):
    """A file over max_object_size made every cron sweep fail (exit 4) and left the session's
    container running for ever (red team, 12-06): the sweep now removes the container, keeps
    the workspace with the work, and says why."""
    config = tmp_path / "config.yaml"
    config.write_text("max_object_size: 1m\n")
    monkeypatch.setenv("LOGIST_CONFIG", str(config))
    spec = {"repo": str(source_repo), "image": STEP_IMAGE, "network": "none"}
    s = rt.session(idle_timeout="1s", **spec)
    s.exec(["sh", "-c", "head -c 2000000 /dev/urandom > big.bin; echo kept > w.txt"])
    time.sleep(1.5)
    with pytest.raises(logist.CleanupIncomplete) as swept:
        rt.sweep(older_than="0s")
    assert [f["job"] for f in swept.value.report["failed"]] == [s.id]
    assert "max_object_size" in swept.value.report["failed"][0]["error"]
    assert left(docker_client, rt.jobs_dir) == []
    view = rt.status(s.id)
    assert view["state"] == "failed" and "refused" in view["error"]
    assert (rt.jobs_dir / s.id / "workspace" / "w.txt").read_text() == "kept\n"


def test_the_engines_archive_meets_no_link_of_the_steps_and_bad_input_is_exit_2(
    rt, source_repo, jobs_root
):
    """write_file and read_file go through the engine's archive, as root: a link the step
    planted (notes -> /etc) had them write /etc/x and read /etc/shadow in the container of a
    session whose user cannot (red team, 12-06). A NUL in a command, a relative --workdir and
    an idle timeout of 0 were taken (the command's failure, or a session stale at once)."""
    spec = {"repo": str(source_repo), "image": STEP_IMAGE, "network": "none"}
    with rt.session(user="1000:1000", **spec) as s:
        s.exec(["sh", "-c", "ln -s /etc notes; ln -s /etc/hostname host"])
        for call in (
            lambda: s.write_file("notes/x", b"planted\n"),
            lambda: s.read_file("notes/shadow"),
            lambda: s.read_file("host"),
        ):
            with pytest.raises(logist.UsageError):
                call()
        assert s.exec(["sh", "-c", "ls /etc/x 2>/dev/null; echo done"]).output == "done\n"
        s.write_file("sub/ok.txt", "fine\n")
        assert s.read_file("sub/ok.txt") == b"fine\n"
        for bad in (lambda: s.exec(["echo", "a\0b"]), lambda: s.exec(["true"], workdir="rel")):
            with pytest.raises(logist.UsageError):
                bad()
    zero = run_logist(
        jobs_root, "session", "start", "--repo", str(source_repo), "--idle-timeout", "0s"
    )
    assert zero.returncode == 2, zero.stderr


def test_ctrl_c_during_session_exec_stops_that_command_only(logist, source_repo, jobs_root):
    sid = start(logist, source_repo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "session", "exec", sid,
         "--", "sh", "-c", "echo go; exec sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert proc.returncode == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    still = logist("session", "exec", sid, "--", "sh", "-c", SLEEPERS)
    assert (still.returncode, still.stdout) == (0, "0\n")
    assert logist("session", "stop", sid).returncode == 0


def test_bad_input_is_exit_2_and_a_vanished_container_exit_3_naming_it(
    logist, source_repo, jobs_root, docker_client
):
    assert logist("session", "exec", "nope", "--", "true").returncode == 2
    job = logist("job", "create", "--repo", str(source_repo), "--step", "true").stdout.strip()
    not_one = logist("session", "exec", job, "--", "true")
    assert not_one.returncode == 2 and "not a session" in not_one.stderr
    sid = start(logist, source_repo)
    (box,) = docker_client.containers.list(filters={"label": f"logist.job={sid}"})
    box.remove(force=True)
    gone = logist("session", "exec", sid, "--", "true")
    assert gone.returncode == 3 and box.id[:12] in gone.stderr
    assert json.loads(logist("job", "status", sid, "--json").stdout)["state"] == "interrupted"
    assert logist("job", "cleanup", sid).returncode == 0
    assert left(docker_client, jobs_root) == []


def test_the_harvest_pauses_the_container_while_it_reads(rt, source_repo, docker_client):
    with rt.session(repo=str(source_repo), image=STEP_IMAGE, network="none") as s:
        (box,) = docker_client.containers.list(filters={"label": f"logist.job={s.id}"})
        since = int(time.time()) - 1
        s.exec(["sh", "-c", "echo x > x.txt"])
        s.harvest()
        actions = [  # `until` not in the future: the events call returns at once
            e["Action"]
            for e in docker_client.events(
                since=since, until=time.time(), decode=True, filters={"container": box.id}
            )
        ]
        assert "pause" in actions and "unpause" in actions
        assert actions.index("pause") < actions.index("unpause")


def test_the_sweep_stops_an_idle_session_with_its_work_and_spares_a_busy_one(
    logist, source_repo, jobs_root, docker_client
):
    idle = start(logist, source_repo, "--idle-timeout", "1s")
    busy = start(logist, source_repo)
    assert logist("session", "exec", idle, "--", "sh", "-c", "echo late > late.txt").returncode == 0
    wait_for(
        lambda: time.time() - 1.5 > 0 and _idle_for(jobs_root, idle) > 1.2,
        timeout=10,
        what="the session to be idle",
    )
    swept = logist("job", "cleanup", "--stale", "--json")
    assert swept.returncode == 0, swept.stderr
    report = json.loads(swept.stdout)
    assert {"job": busy, "reason": "session"} in report["skipped"]
    assert report["orphans_removed"] == 0  # a live session's container is no orphan
    assert json.loads(logist("job", "status", idle, "--json").stdout)["state"] == "succeeded"
    assert git(source_repo, "show", f"logist/{idle}:late.txt") == "late\n"
    assert logist("session", "exec", busy, "--", "true").returncode == 0
    canceled = logist("job", "cancel", busy)
    assert canceled.returncode == 0, canceled.stderr
    assert json.loads(logist("job", "status", busy, "--json").stdout)["state"] == "canceled"
    assert left(docker_client, jobs_root) == []


def _idle_for(jobs_root, sid: str) -> float:
    from logist.model import parse_time

    data = json.loads((jobs_root / sid / "job.json").read_text())
    return time.time() - parse_time(data["session"]["last_active"]).timestamp()


def test_the_example_of_docs_sessions_md_runs_as_written(tmp_path, capsys):
    import re
    from pathlib import Path

    from tests.helpers import make_repo

    text = (Path(__file__).resolve().parent.parent / "docs" / "sessions.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example is not None
    src = make_repo(tmp_path / "src")
    code = example.group(1).replace("/srv/src", str(src)).replace("/srv/jobs", str(tmp_path / "j"))
    exec(compile(code, "docs/sessions.md", "exec"), {"__name__": "example"})
    out = capsys.readouterr().out
    assert "$ sh -c 'cat FIX.md' -> exit 0\nfixed\n" in out and out.rstrip().endswith("succeeded")
    (branch,) = [b for b in git(src, "branch", "--format=%(refname:short)").split() if "/" in b]
    assert git(src, "show", f"{branch}:FIX.md") == "fixed\n"
    assert git(src, "show", f"{branch}:notes.md") == "what the agent learnt\n"


def test_job_logs_of_a_session_shows_its_commands_output(logist, source_repo):
    sid = start(logist, source_repo)
    logist("session", "exec", sid, "--", "echo", "first")
    logist("session", "exec", sid, "--", "echo", "second")
    assert logist("job", "logs", sid).stdout == "second\n"
    assert logist("job", "logs", sid, "--step", "1").stdout == "first\n"
    assert logist("job", "logs", sid, "--step", "3").returncode == 2
    assert logist("session", "stop", sid).returncode == 0


def test_job_cleanup_of_a_running_session_needs_force_and_keeps_its_work(
    logist, source_repo, jobs_root, docker_client
):
    sid = start(logist, source_repo)
    logist("session", "exec", sid, "--", "sh", "-c", "echo kept > kept.txt")
    refused = logist("job", "cleanup", sid)
    assert refused.returncode == 2 and "session stop" in refused.stderr
    forced = logist("job", "cleanup", sid, "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(logist("job", "status", sid, "--json").stdout)["state"] == "interrupted"
    assert git(source_repo, "show", f"logist/{sid}:kept.txt") == "kept\n"
    # numbered like the session's own harvests, not called its "setup"
    subject = git(source_repo, "log", "-1", "--format=%s", f"logist/{sid}").strip()
    assert subject == f"logist: {sid} session harvest 1"
    assert left(docker_client, jobs_root) == []


def test_read_file_takes_a_regular_file_only(rt, source_repo):
    with rt.session(repo=str(source_repo), image=STEP_IMAGE, network="none") as s:
        s.exec(["sh", "-c", "mkdir d; ln -s /etc/passwd link; echo ok > f"])
        assert s.read_file("f") == b"ok\n"
        for bad in ("d", "missing", "link"):
            with pytest.raises(logist.UsageError, match=bad):
                s.read_file(bad)


def test_a_bad_timeout_or_a_command_given_as_a_string_is_exit_2_and_runs_nothing(
    rt, source_repo, jobs_root
):
    """``--timeout 1e10`` (or 1e400) printed a thread's OverflowError and ran unbounded;
    ``timeout=nan`` or ``-1`` returned exit_code None at once; ``timeout="x"`` a TypeError;
    ``exec("echo hi")`` ran ``e c h o`` (red team, 12-06). Refused before anything runs."""

    def cli(*args: str):
        return run_logist(jobs_root, *args)

    sid = start(cli, source_repo)
    for value in ("1e10", "1e400", "nan", "0"):
        out = cli("session", "exec", sid, "--timeout", value, "--", "touch", "ran")
        assert out.returncode == 2, (value, out.stderr)
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert "invalid value for" in out.stderr.lower() and "--timeout" in out.stderr
    s = rt.session_of(sid)
    bad_timeouts = [float("nan"), float("inf"), -1, 0, 1e10, 10**400, "x", True, [5]]
    for timeout in bad_timeouts:
        with pytest.raises(logist.UsageError, match="--timeout") as refused:
            s.exec(["touch", "ran"], timeout=timeout)
        assert refused.value.exit_code == 2
    for argv in ("touch ran", b"touch", [], None, ["touch", 5]):
        with pytest.raises(logist.UsageError):
            s.exec(argv)
    for env in (["A"], {1: "x"}, {"A": 1}, "A=1"):  # an AttributeError, a TypeError (red team)
        with pytest.raises(logist.UsageError):
            s.exec(["touch", "ran"], env=env)
    assert s.exec(["sh", "-c", "ls ran 2>/dev/null; echo none"]).output == "none\n"
    assert s.exec(("echo", "a tuple"), timeout="30").output == "a tuple\n"  # as a spec's
    assert cli("session", "stop", sid).returncode == 0


def test_write_file_refuses_a_name_linux_or_git_cannot_hold_with_exit_2(rt, source_repo):
    """A 5000-character name reached the engine, whose refusal was exit 3 (red team, 12-06);
    a deep path was made that the engine's archive (from the host, under its data root) could
    not read back, nor git harvest beyond 4096 bytes."""
    with rt.session(repo=str(source_repo), image=STEP_IMAGE, network="none") as s:
        too_long = ["a" * 5000, "b" * 256, "/".join(["d" * 200] * 16), "\udcff.txt"]
        for path in too_long:
            for call, args in ((s.write_file, (path, b"x")), (s.read_file, (path,))):
                with pytest.raises(logist.UsageError) as refused:
                    call(*args)
                assert refused.value.exit_code == 2 and len(str(refused.value)) < 400
        longest = "/".join(["d" * 200] * 15)  # 3025 bytes with /workspace/
        s.write_file("c" * 255, b"255\n")
        s.write_file(longest, b"deep\n")
        assert s.read_file(longest) == b"deep\n" and s.read_file("c" * 255) == b"255\n"
        assert s.exec(["sh", "-c", "find . -name 'd*' -type d | wc -l"]).output.strip() == "14"


def test_session_exec_takes_its_options_before_the_double_dash_and_the_command_after(
    logist, source_repo
):
    sid = start(logist, source_repo)
    out = logist(
        "session", "exec", sid, "--env", "FOO=bar", "--workdir", "/tmp", "--",
        "sh", "-c", 'echo "$FOO $(pwd)"; echo --env x',
    )  # fmt: skip
    assert (out.returncode, out.stdout) == (0, "bar /tmp\n--env x\n"), out.stderr
    timed = logist("session", "exec", sid, "--timeout", "1", "--", "sleep", "30")
    assert timed.returncode != 0 and "timed out after 1s" in timed.stderr
    bad = logist("session", "exec", sid, "--env", "NOT-A-NAME=x", "--", "true")
    assert bad.returncode == 2
    assert logist("session", "stop", sid).returncode == 0


def _killed_in_its_start(jobs_root, source_repo, job_id: str) -> bool:
    """``session start`` SIGKILLed once the manifest says running; whether that was before
    its container was recorded."""
    import os

    command = [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "session", "start"]
    start = subprocess.Popen(
        [*command, job_id, "--repo", str(source_repo), "--image", "logist/step:latest"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manifest = jobs_root / job_id / "job.json"
    try:
        while start.poll() is None:  # `running` is recorded before the clone: kill in it
            with contextlib.suppress(OSError, ValueError, KeyError):
                if json.loads(manifest.read_text())["state"] == "running":
                    break
    finally:
        os.killpg(start.pid, signal.SIGKILL)
        start.wait()
    return json.loads(manifest.read_text())["session"]["container"] is None


@pytest.mark.timeout(240)
def test_a_session_whose_start_was_killed_before_its_container_breaks_no_sweep(
    jobs_root, source_repo, docker_client
):
    """The sweep meets a running session with no container recorded: nothing runs for it;
    the sweep goes on (it once exited 3 on it, and so reaped nothing of any job, ever)."""
    hit = False
    for i in range(5):  # a window of the start: tried until hit
        hit = _killed_in_its_start(jobs_root, source_repo, f"s{i}")
        out = run_logist(jobs_root, "job", "cleanup", "--stale", "--older-than", "0s", "--json")
        assert out.returncode == 0, out.stderr
        if hit:
            break
    assert hit, "the start was never killed before its container was recorded"
    label = {"label": f"logist.jobs-dir={jobs_root}"}
    assert docker_client.containers.list(all=True, filters=label) == []
    assert docker_client.networks.list(filters=label) == []


@pytest.mark.timeout(180)
def test_a_session_left_paused_by_a_killed_harvest_runs_its_next_command(
    logist, source_repo, jobs_root, docker_client
):
    """A harvest pauses the session's container; one killed then leaves it paused. The next
    command (under the session's lock: no harvest runs) unpauses it and runs."""
    sid = start(logist, source_repo)
    labels = {"label": [f"logist.jobs-dir={jobs_root}", f"logist.job={sid}", "logist.step=session"]}
    [box] = docker_client.containers.list(filters=labels)
    box.pause()
    out = logist("session", "exec", sid, "--", "sh", "-c", "echo after > after.txt")
    assert out.returncode == 0, out.stderr
    assert logist("session", "stop", sid).returncode == 0
    assert git(source_repo, "show", f"logist/{sid}:after.txt") == "after\n"


def test_what_a_session_command_writes_to_pid_1s_output_is_not_kept_by_the_engine(
    logist, source_repo, jobs_root, docker_client
):
    """A command writing into the container's own output (``/proc/1/fd/1``) is not logged
    by the engine: 300 MB there once filled its json-file log, unbounded (red team)."""
    sid = start(logist, source_repo)
    try:
        flood = "head -c 8000000 /dev/zero | tr '\\0' A | fold -w 4000 > /proc/1/fd/1"
        out = logist("session", "exec", sid, "--", "sh", "-c", flood)
        assert out.returncode == 0, out.stderr
        (box,) = docker_client.containers.list(
            filters={"label": [f"logist.jobs-dir={jobs_root}", f"logist.job={sid}"]}
        )
        box.reload()
        assert box.attrs["HostConfig"]["LogConfig"]["Type"] == "none"
        kept = box.attrs.get("LogPath") or ""
        assert kept == "" or os.path.getsize(kept) < 1 << 20
    finally:
        logist("session", "stop", sid)
    assert left(docker_client, jobs_root) == []
