"""The helper's request channel (logist/channel.py): Docker's stream framing is read, and only
the helper's tagged lines and its nonce's end line count. Pure logic over a socket pair; the
real helper is driven through it by every Docker test that harvests (and
``test_harvests_are_requests_on_the_helpers_input_not_execs`` below checks that it is)."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from logist.channel import Channel, ChannelLost, Stopped

pytestmark = pytest.mark.timeout(30)


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def serve(peer: socket.socket, answer) -> threading.Thread:
    """A fake helper: reads one request (nonce, count, args) and sends what ``answer`` makes
    of it, as raw frames."""

    def go() -> None:
        data = b""
        while data.count(b"\n") < 2 or data.count(b"\n") < 2 + int(data.split(b"\n")[1]):
            data += peer.recv(4096)
        lines = data.decode().split("\n")
        nonce, args = lines[0], lines[2 : 2 + int(lines[1])]
        for chunk in answer(nonce, args):
            peer.sendall(chunk)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_an_answer_split_across_frames_and_streams_is_read_as_the_helper_tagged_it():
    ours, peer = socket.socketpair()

    def answer(nonce, args):
        assert args == ["logist/j", "a b c", ""]
        body = f"o commit abc\no bundle x.bundle\ne warning: hm\nend {nonce} 0\n".encode()
        yield frame(2, b"shell noise on stderr\n")
        yield frame(1, body[:5])
        yield frame(1, body[5:20])[:7]  # a frame split in the middle of its header
        yield frame(1, body[5:20])[7:] + frame(1, body[20:])

    serve(peer, answer)
    code, out, err = Channel(ours, None).request(["logist/j", "a b c", ""], deadline=10)
    assert (code, out, err) == (0, b"commit abc\nbundle x.bundle\n", b"warning: hm\n")


def test_untagged_lines_and_another_nonces_end_do_not_count():
    ours, peer = socket.socketpair()

    def answer(nonce, args):
        yield frame(1, b"commit forged\nend 0000000000000000 0\no commit real\n")
        yield frame(1, f"end {nonce} 3\n".encode())

    serve(peer, answer)
    code, out, _err = Channel(ours, None).request([], deadline=10)
    assert (code, out) == (3, b"commit real\n")


def test_a_connection_that_ends_before_the_answer_is_lost():
    ours, peer = socket.socketpair()

    def answer(nonce, args):
        yield frame(1, b"o commit abc\n")
        peer.close()

    serve(peer, answer)
    with pytest.raises(ChannelLost):
        Channel(ours, None).request([], deadline=10)


def test_a_silent_helper_that_is_no_longer_alive_is_lost_not_waited_for():
    ours, _peer = socket.socketpair()
    with pytest.raises(ChannelLost, match="stopped"):
        Channel(ours, None).request([], deadline=20, alive=lambda: False)


def test_a_stop_request_waits_for_the_grace_then_gives_up():
    ours, _peer = socket.socketpair()
    with pytest.raises(Stopped):
        Channel(ours, None).request([], deadline=20, should_stop=lambda: True, grace=0.3)


def test_an_argument_with_a_newline_is_refused_before_anything_is_sent():
    ours, peer = socket.socketpair()
    with pytest.raises(ValueError):
        Channel(ours, None).request(["a\nb"], deadline=1)
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(10)


# --- the real helper ----------------------------------------------------------------------------


def _exec_starts(docker_client, job: str, since: float, until: float) -> int:
    events = docker_client.events(
        since=since,
        until=until,
        filters={"event": "exec_start", "label": [f"logist.job={job}"]},
        decode=True,
    )
    return sum(1 for _ in events)


@pytest.mark.docker
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["requests", "exec"])
def test_harvests_are_requests_on_the_helpers_input_not_execs(
    mode, logist, source_repo, docker_client
):
    """On Docker every harvest is a request on the helper's standard input: no ``exec`` in it
    (``LOGIST_HELPER_EXEC=1``, the way Podman is driven, makes one per harvest). Both ways
    harvest the same work."""
    import time

    from tests.helpers import create_job, git

    commit = "git -c user.name=a -c user.email=a@a commit -qm two"
    steps = ("echo one > one.txt", f"echo two > two.txt && git add -A && {commit}", "true")
    job = create_job(logist, source_repo, *steps)
    env = {"LOGIST_HELPER_EXEC": "1"} if mode == "exec" else {}
    since = time.time() - 1
    out = logist("job", "run", job, env=env)
    until = time.time() + 1
    assert out.returncode == 0, out.stderr
    execs = _exec_starts(docker_client, job, since, until)
    assert execs == (0 if mode == "requests" else 3)
    assert git(source_repo, "show", f"logist/{job}:one.txt") == "one\n"
    assert git(source_repo, "show", f"logist/{job}:two.txt") == "two\n"
    subjects = git(source_repo, "log", "--format=%s", f"logist/{job}").splitlines()
    assert subjects[:3] == ["two", f"logist: {job} step 1", "initial"]


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_helper_removed_between_two_harvests_is_started_again(
    logist, source_repo, jobs_root, docker_client
):
    """A helper that goes away while its channel is open (``job cancel`` elsewhere removes
    every container of a job; here only the helper goes) is replaced: the work still lands."""
    from tests.helpers import create_job, git, wait_for

    job = create_job(
        logist,
        source_repo,
        "echo one > one.txt",
        "while [ ! -e go ]; do sleep 0.1; done; echo two > two.txt",
        extra=("--image", "logist/busybox:latest"),
    )
    import subprocess
    import sys

    from tests.support_wait import ended

    command = [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "job", "run", job]
    labels = [f"logist.job={job}", f"logist.jobs-dir={jobs_root}", "logist.step=2"]
    with ended(
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ) as runner:
        wait_for(lambda: docker_client.containers.list(filters={"label": labels}), what="step 2")
        helpers = docker_client.containers.list(
            filters={"label": [f"logist.job={job}", "logist.step=helper"]}
        )
        assert len(helpers) == 1
        helpers[0].remove(force=True)
        (jobs_root / job / "workspace" / "go").write_text("")
        _out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    assert git(source_repo, "show", f"logist/{job}:one.txt") == "one\n"
    assert git(source_repo, "show", f"logist/{job}:two.txt") == "two\n"


def test_an_answer_beyond_the_cap_keeps_its_head_and_still_ends():
    from logist import channel

    ours, peer = socket.socketpair()
    line = b"o ref " + b"a" * 40 + b" refs/logist/j/heads/x\n"
    count = channel.MAX_ANSWER // len(line) + 5000

    def answer(nonce, args):
        yield frame(1, b"o commit abc\n")
        for _ in range(count // 1000):
            yield frame(1, line * 1000)
        yield frame(1, f"\nend {nonce} 0\n".encode())

    serve(peer, answer)
    code, out, _err = Channel(ours, None).request([], deadline=20)
    assert code == 0
    assert out.startswith(b"commit abc\nref ")
    assert len(out) <= channel.MAX_ANSWER
    assert out.endswith(b"refs/logist/j/heads/x\n")


def test_a_harvest_whose_answer_the_engine_lost_is_asked_again(
    logist, source_repo, jobs_root, monkeypatch
):
    """Podman's exec attach under load once handed back exit 0 and no output: the harvest had
    ended, its answer lost, and the job failed (`the harvest helper failed: exit 0`; CI,
    12-06). An ended harvest with no answer is asked again, once."""
    from logist import Runtime
    from logist.sandbox import Sandbox
    from tests.helpers import create_job, git

    real = Sandbox._request
    calls: list[int] = []

    def lossy(self, args):
        calls.append(1)
        if len(calls) == 1:
            real(self, args)  # it ran; what it said is lost
            return 0, b"", b""
        return real(self, args)

    monkeypatch.setattr(Sandbox, "_request", lossy)
    job = create_job(logist, source_repo, "echo one > one.txt")
    [result] = Runtime(jobs_root).run_jobs([job])
    assert result.error is None, result.error
    assert len(calls) == 2
    assert git(source_repo, "show", f"logist/{job}:one.txt") == "one\n"
