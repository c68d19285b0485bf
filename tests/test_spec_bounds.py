"""A spec file is untrusted input: bounded on disk, once its YAML aliases are expanded, and in
its number of steps; a device or a directory given as a spec is refused, a pipe is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from logist.errors import UsageError
from logist.spec import MAX_STEPS, expanded_size, load_yaml
from logist.specread import MAX_SPEC_BYTES

ALIAS_BOMB = """\
a: &a ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
repo: {repo}
steps: *h
"""


def test_a_device_given_as_spec_is_refused_without_reading_it(logist):
    out = logist("job", "create", "--file", "/dev/zero")
    assert out.returncode == 2, out.stderr
    assert "not a regular file" in out.stderr


def test_a_directory_given_as_spec_is_refused_in_one_line(logist, tmp_path: Path):
    out = logist("job", "create", "--file", str(tmp_path))
    assert out.returncode == 2
    assert "not a regular file" in out.stderr and "Traceback" not in out.stderr


def test_a_spec_over_the_size_bound_is_refused(logist, tmp_path: Path, source_repo: Path):
    spec = tmp_path / "big.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: [x]\nprompt: " + "a" * MAX_SPEC_BYTES + "\n")
    out = logist("job", "create", "--file", str(spec))
    assert out.returncode == 2
    assert "is over 1 MiB" in out.stderr


def test_a_yaml_alias_bomb_is_refused_at_once(logist, tmp_path: Path, source_repo: Path):
    spec = tmp_path / "bomb.yaml"
    spec.write_text(ALIAS_BOMB.format(repo=source_repo))
    out = logist("job", "create", "--file", str(spec), timeout=30)
    assert out.returncode == 2
    assert "expands to over" in out.stderr
    assert not any((tmp_path / "jobs").iterdir())


def test_expanded_size_counts_shared_nodes_each_time_without_expanding_them():
    leaf = ["x" * 9]
    layer = leaf
    for _ in range(40):  # 2**40 leaves: counted, never built
        layer = [layer, layer]
    assert expanded_size(layer) > 2**40
    assert expanded_size({"a": "bc"}) == 1 + 2 + 3


def test_a_spec_read_from_a_pipe_works(source_repo: Path):
    """``--file <(make-spec)`` is a pipe: it is read."""
    read, write = os.pipe()
    try:
        os.write(write, f"repo: {source_repo}\nsteps: [make]\n".encode())
        os.close(write)
        assert load_yaml(Path(f"/proc/self/fd/{read}"))["steps"] == ["make"]
    finally:
        os.close(read)


def test_a_fifo_nobody_writes_to_is_refused_at_once(logist, tmp_path: Path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    out = logist("job", "create", "--file", str(fifo), timeout=30)
    assert out.returncode == 2
    assert "must be a YAML map" in out.stderr


def test_more_steps_than_the_bound_are_refused(logist, tmp_path: Path, source_repo: Path):
    spec = tmp_path / "many.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps:\n" + "  - x\n" * (MAX_STEPS + 1))
    out = logist("job", "create", "--file", str(spec))
    assert out.returncode == 2
    assert f"at most {MAX_STEPS}" in out.stderr


def test_load_yaml_raises_usage_errors_only(tmp_path: Path):
    with pytest.raises(UsageError):
        load_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("asked", "code"),
    [("timeout: 30", 0), ("timeout: 600", 2), ("cpus: 4", 2), ("memory: 4g", 2), ("memory: 1g", 0)],
)
def test_a_spec_may_lower_the_configured_resources_never_raise_them(
    logist, tmp_path: Path, source_repo: Path, asked: str, code: int
):
    config = tmp_path / "config.yaml"
    config.write_text("timeout: 60\ncpus: 1\nmemory: 2g\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: [x]\n{asked}\n")
    out = logist("job", "create", "--file", str(spec), env={"LOGIST_CONFIG": str(config)})
    assert out.returncode == code, out.stderr
    if code:
        assert "a spec file may only lower it" in out.stderr


def test_a_step_timeout_in_a_spec_may_not_exceed_the_command_line_timeout(
    logist, tmp_path: Path, source_repo: Path
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: [{{run: x, timeout: 900}}]\n")
    out = logist("job", "create", "--file", str(spec), "--timeout", "60")
    assert out.returncode == 2
    assert "timeout 900, over the trusted 60" in out.stderr


def test_a_spec_that_is_a_link_to_a_file_is_refused_and_shows_nothing_of_it(logist, tmp_path):
    """A repository's spec.yaml -> a host file: its keys and values were shown in the errors
    (``unknown spec key 'aws_secret_access_key'``; red team, 12-06). A pipe given as
    ``/dev/fd/N`` (a link) is still read, as above."""
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key: SECRETVALUE123\n")
    link = tmp_path / "spec.yaml"
    link.symlink_to(secret)
    out = logist("job", "create", "--file", str(link))
    assert out.returncode == 2 and "a symbolic link" in out.stderr, out.stderr
    assert "aws_secret" not in out.stderr and "SECRETVALUE" not in out.stderr


def test_a_spec_that_is_a_link_to_a_named_pipe_is_refused(logist, tmp_path):
    """Only an anonymous pipe's link (``<(...)``) is read: a repository's spec.yaml -> a host's
    FIFO drained another program's pipe and showed it (red team, 12-06)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "spec.yaml"
    link.symlink_to(fifo)
    out = logist("job", "create", "--file", str(link), timeout=30)
    assert out.returncode == 2 and "a symbolic link" in out.stderr, out.stderr


def test_a_spec_on_standard_input_is_read(logist, source_repo, tmp_path):
    """``--file /dev/stdin < spec.yaml``: a descriptor the operator names, a link to a file."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: [make]\n")
    with open(spec) as fh:
        out = logist("job", "create", "--file", "/dev/stdin", stdin=fh)
    assert out.returncode == 0, out.stderr
