"""The gate of a step that starts beside its proxy (logist/gate.py, logist/helper/gate.sh), run
with ``sh`` on a FIFO of the test's own: no Docker."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
from pathlib import Path

from logist.gate import GATE, MOUNTED_AT, Gate


def _gated(path: Path, *argv: str) -> subprocess.Popen:
    """The step's entrypoint as the engine runs it, with the gate at ``path``."""
    entry = Gate.entrypoint(None)
    assert entry[:5] == ["/bin/sh", "-c", GATE, "logist-gate", MOUNTED_AT]
    return subprocess.Popen(
        ["sh", "-c", GATE, "logist-gate", str(path), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_step_runs_its_command_as_given_once_the_gate_says_go(tmp_path):
    gate = Gate(tmp_path / "gate")
    try:
        args = ["printf", "[%s]", "-e", "--", "two words", "line\nbreak", ""]
        step = _gated(gate.path, *args)
        gate.say(True)
        out, err = step.communicate(timeout=10)
    finally:
        gate.close()
    assert step.returncode == 0, err
    assert out == "[-e][--][two words][line\nbreak][]"


def test_the_step_waits_at_the_gate_until_it_is_told(tmp_path):
    gate = Gate(tmp_path / "gate")
    marker = tmp_path / "ran"
    try:
        step = _gated(gate.path, "touch", str(marker))
        with contextlib.suppress(subprocess.TimeoutExpired):
            step.wait(timeout=0.5)
        assert step.poll() is None and not marker.exists()
        gate.say(True)
        step.communicate(timeout=10)
    finally:
        gate.close()
    assert step.returncode == 0 and marker.exists()


def test_a_proxy_that_did_not_start_leaves_the_step_unrun(tmp_path):
    gate = Gate(tmp_path / "gate")
    marker = tmp_path / "ran"
    try:
        step = _gated(gate.path, "touch", str(marker))
        gate.say(False)
        gate.say(True)  # once said, said
        _, err = step.communicate(timeout=10)
    finally:
        gate.close()
    assert step.returncode == 125 and not marker.exists()
    assert "proxy did not start listening: the step did not run" in err


def test_logist_gone_before_saying_leaves_the_step_unrun(tmp_path):
    gate = Gate(tmp_path / "gate")
    marker = tmp_path / "ran"
    step = _gated(gate.path, "touch", str(marker))
    gate.close()  # logist's end of the FIFO closes, as when it is killed
    step.communicate(timeout=10)
    assert step.returncode == 125 and not marker.exists()


def test_the_gate_is_a_fifo_the_steps_user_can_read_and_only_logist_write(tmp_path):
    (tmp_path / "gate").write_text("a killed run's leftover")
    gate = Gate(tmp_path / "gate")
    try:
        mode = os.lstat(gate.path).st_mode
        assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o644
        # a reader's open does not wait for a writer: logist holds the FIFO open
        opened: list[int] = []
        reader = threading.Thread(target=lambda: opened.append(os.open(gate.path, os.O_RDONLY)))
        reader.start()
        reader.join(timeout=5)
        assert opened, "the step's open of the gate blocked"
        os.close(opened[0])
        mount = gate.mount()
        assert mount["Target"] == MOUNTED_AT and mount["ReadOnly"] is True
        assert mount["Source"] == str(gate.path) and mount["Type"] == "bind"
    finally:
        gate.close()
    assert not os.path.lexists(gate.path)
    gate.say(True)  # after close: nothing, no error
    gate.close()


def test_a_gate_full_of_a_steps_bytes_does_not_block_logist(tmp_path):
    gate = Gate(tmp_path / "gate")
    writer = os.open(gate.path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        try:
            while True:
                os.write(writer, b"x" * 4096)
        except BlockingIOError:
            pass
        gate.say(True)  # returns at once: the pipe is full
        assert gate.said is True
    finally:
        os.close(writer)
        gate.close()


def test_the_gate_keeps_the_images_entrypoint_after_it():
    entry = Gate.entrypoint(["/docker-entrypoint.sh", "--flag"])
    assert entry == [
        "/bin/sh",
        "-c",
        GATE,
        "logist-gate",
        MOUNTED_AT,
        "/docker-entrypoint.sh",
        "--flag",
    ]
    assert "#" not in GATE  # `ps` in the step shows the text: no comments
