"""Hostile spec files, found by a red team of the spec-file trust split (contract v3:
"Trusted and untrusted inputs", "Bounds"). A spec file is untrusted: it may narrow, never
widen, and must not exhaust the host."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_logist

MiB = 1024 * 1024


def _limited(jobs_root: Path, *args: str, timeout: float = 30, env: dict | None = None):
    """Run the CLI with a 2 GiB address-space limit (so a hole cannot take the test host down)."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2048 * MiB, 2048 * MiB))

    return run_logist(jobs_root, *args, timeout=timeout, env=env, preexec_fn=limit)


def _bomb(levels: int = 8) -> str:
    """YAML list items: each level is 10 aliases of the previous one (10**levels leaves)."""
    items = ["&a0 [xxxxxxxx,xxxxxxxx,xxxxxxxx,xxxxxxxx,xxxxxxxx,xxxxxxxx,xxxxxxxx,xxxxxxxx]"]
    for i in range(1, levels + 1):
        items.append(f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(f"  - {item}" for item in items) + "\n"


# --- Bounds: a ~600-byte spec file (alias bomb) hangs create and eats memory ---------------
@pytest.mark.parametrize("key", ["prompt", "image", "cap_add", "ref", "memory"])
def test_alias_bomb_spec_is_refused_quickly(jobs_root, source_repo, tmp_path, key):
    """``prompt`` is str()'d, ``ref``/``memory`` are str()'d, and ``image``/``cap_add`` are
    repr()'d into the error message: every alias is expanded (10**8 leaves)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\n{key}:\n" + _bomb())
    assert spec.stat().st_size < 1024
    try:
        out = _limited(jobs_root, "job", "create", "--file", str(spec), timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a {spec.stat().st_size}-byte spec ({key}: alias bomb) hung job create")
    assert out.returncode == 2, out.stderr[-500:]
    assert len(out.stderr) < 10_000


# --- Bounds: the spec path is read whole, without a bound or a file-type check --------------
def test_spec_symlink_to_dev_zero_is_refused(jobs_root, tmp_path):
    """A repository under test can ship spec.yaml -> /dev/zero: read_text() reads forever."""
    spec = tmp_path / "spec.yaml"
    spec.symlink_to("/dev/zero")
    try:
        out = _limited(jobs_root, "job", "create", "--file", str(spec), timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("spec.yaml -> /dev/zero hung job create")
    assert out.returncode == 2, out.stderr[-500:]


def test_spec_fifo_is_refused(jobs_root, tmp_path):
    """A FIFO as the spec file blocks job create forever (open() waits for a writer)."""
    spec = tmp_path / "spec.yaml"
    os.mkfifo(spec)
    try:
        out = _limited(jobs_root, "job", "create", "--file", str(spec), timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("a FIFO spec file hung job create")
    assert out.returncode == 2, out.stderr


# --- Narrow, never widen: resource bounds --------------------------------------------------
def test_spec_cannot_lift_config_memory_bound(jobs_root, source_repo, tmp_path, logist):
    """The operator's configuration says memory: 2g; a spec's ``memory: 0`` (the engine reads 0
    as "no limit") lifts it. Same for pids: 100 -> 100000000."""
    config = tmp_path / "config.yaml"
    config.write_text("memory: 2g\npids: 100\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"repo: {source_repo}\nsteps: ['true']\nresources: {{memory: 0, pids: 100000000}}\n"
    )
    out = logist("job", "create", "--file", str(spec), env={"LOGIST_CONFIG": str(config)})
    if out.returncode == 0:
        job = json.loads((jobs_root / out.stdout.strip() / "job.json").read_text())
        pytest.fail(
            f"spec widened the configuration's bounds: memory={job.get('memory')!r} "
            f"pids={job.get('pids')!r}"
        )
    assert out.returncode == 2


def test_spec_cannot_raise_default_pids_limit(jobs_root, source_repo, tmp_path, logist):
    """Without any configuration, the default pids limit (4096) is the boundary; a spec file's
    ``pids: 100000000`` removes it (a fork bomb then exhausts the host)."""
    from logist.container_spec import DEFAULT_PIDS

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\npids: 100000000\n")
    out = logist("job", "create", "--file", str(spec))
    if out.returncode == 0:
        job = json.loads((jobs_root / out.stdout.strip() / "job.json").read_text())
        assert (job.get("pids") or DEFAULT_PIDS) <= DEFAULT_PIDS, f"pids={job.get('pids')}"
    else:
        assert out.returncode == 2


# --- The host-capability warning --------------------------------------------------------
def test_cap_add_all_warns(source_repo, logist):
    """``--cap-add SYS_ADMIN`` warns; ``--cap-add ALL`` (every capability, SYS_ADMIN included)
    is silent."""
    out = logist("job", "create", "--repo", str(source_repo), "--step", "true", "--cap-add", "ALL")
    assert out.returncode == 0, out.stderr
    assert "warning" in out.stderr, "--cap-add ALL gives SYS_ADMIN & co. without a warning"


# --- Bad specs must be exit 2 in one line, not a traceback --------------------------------
def test_mixed_type_unknown_keys_exit_2(source_repo, tmp_path, logist):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\n1: a\nx: b\n")
    out = logist("job", "create", "--file", str(spec))
    assert out.returncode == 2, out.stderr[-300:]


def test_huge_integer_exit_2(source_repo, tmp_path, logist):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\npids: {'1' * 5000}\n")
    out = logist("job", "create", "--file", str(spec))
    assert out.returncode == 2, out.stderr[-300:]


# --- Untrusted text reaches the operator's terminal raw -----------------------------------
def test_step_name_escape_sequences_not_printed_raw(source_repo, tmp_path, logist):
    """A spec's step ``name`` (and ``prompt``) may hold ESC/BEL: ``job status`` prints them as
    is, so a spec file drives the operator's terminal (OSC 8 links, title, screen clearing)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"repo: {source_repo}\n"
        'steps:\n  - name: "n\\e[2J\\e]8;;http://127.0.0.1/\\aclick\\e]8;;\\a"\n    run: "true"\n'
    )
    out = logist("job", "create", "--file", str(spec))
    if out.returncode == 2:
        return  # refused: fine
    assert out.returncode == 0, out.stderr
    status = logist("job", "status", out.stdout.strip())
    assert "\x1b" not in status.stdout and "\x07" not in status.stdout, repr(status.stdout)


# --- Values the engine or the kernel cannot take: refused at create, not at every run (red
# team of the Python API, 12-06: a raw TypeError or a traceback, or a job that is accepted,
# then `interrupted` on each run with exit 3) ----------------------------------------------
@pytest.mark.parametrize(
    "line, says",
    [
        ("resources: big", "resources"),
        ("resources: [1]", "resources"),
        ("cpus: 1.0e+300", "cpus"),
        ("cpus: 5000", "cpus"),
        ("timeout: 1.0e+300", "timeout"),
        ("memory: 99999999999999999999g", "memory"),
        ('env: {A: "a\\0b"}', "NUL"),
        ("env: {A: !!binary YWJj}", "env.A"),
        (f"env: {{A: {'x' * (128 << 10)}}}", "env.A"),
        ('steps: ["a\\0b"]', "NUL"),
        (f"steps: [{'x' * (128 << 10)}]", "steps[1]"),
        ("steps: echo", "a list of commands"),
        ("ref: [main]", "ref"),
        ("prompt: {a: 1}", "prompt"),
        # the red team of spec files (12-06): a cycle hung create, growing without bound; a
        # lone surrogate or a 400-digit number was a traceback; "almost zero" was no limit at
        # all; a uid past the kernel's or a prompt past 128 KiB failed every run
        ('steps: &a ["true", *a]', "cycle"),
        ("env: &a {A: *a}", "cycle"),
        ('steps: ["echo \\ud800"]', "valid"),
        ('env: {A: "\\ud800"}', "valid"),
        ('image: "\\udfff"', "valid"),
        ('memory: "0.5"', "at least 6m"),
        ("memory: 1b", "at least 6m"),
        ("cpus: 0.0000000001", "at least 0.01"),
        (f"cpus: {'9' * 400}", "cpus"),
        (f"resources: {{pids: {'9' * 400}}}", "pids"),
        (f"timeout: {'9' * 400}", "timeout"),
        ('user: "99999999999999999999:0"', "user"),
        ('user: "2147483648:0"', "ids are at most 2147483647"),  # runc's bound, not the kernel's
        ('user: "\u0661\u0660\u0660\u0660:0"', "user"),  # Arabic-Indic digits: \\d took them
        ('user: "\uff11\uff10\uff10\uff10"', "user"),  # fullwidth
        (f"prompt: {'p' * (200 << 10)}", "prompt"),
    ],
)
def test_a_spec_value_past_the_engines_or_kernels_limits_is_refused_at_create(
    jobs_root, source_repo, tmp_path, line, says
):
    import logist

    rt = logist.Runtime(jobs_dir=jobs_root, notify=lambda msg: None)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"repo: {source_repo}\nimage: logist/busybox:latest\n"
        + ("" if line.startswith("steps") else "steps: ['true']\n")
        + line
        + "\n"
    )
    with pytest.raises(logist.UsageError, match=re.escape(says)) as refused:
        rt.create(file=spec)
    assert refused.value.exit_code == 2 and len(str(refused.value)) < 400
    assert rt.list() == [] and not any(jobs_root.iterdir())


@pytest.mark.parametrize("user", ["2147483648", "0:2147483648", "4294967294:0"])
def test_a_uid_or_gid_past_runcs_range_is_refused_at_create_from_a_spec_and_the_command_line(
    jobs_root, source_repo, tmp_path, logist, user
):
    """The engine took them at create and runc refused every start ("uids and gids must be in
    range 0-2147483647"): the job ended interrupted, and ``job run --all`` retried it forever."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\nuser: '{user}'\n")
    from_spec = logist("job", "create", "--file", str(spec))
    flag = logist("job", "create", "--repo", str(source_repo), "--step", "true", "--user", user)
    said = f"invalid value for user: '{user}' (ids are at most 2147483647)"
    for out in (from_spec, flag):
        assert out.returncode == 2 and out.stdout == "", out.stderr
        assert out.stderr == f"logist: error: {said}\n"
    import logist as api

    rt = api.Runtime(jobs_dir=jobs_root, notify=lambda msg: None)
    with pytest.raises(api.UsageError, match=re.escape(said)) as refused:
        rt.create(repo=str(source_repo), steps=["true"], user=user)
    assert refused.value.exit_code == 2
    assert list(jobs_root.iterdir()) == []


def test_the_largest_uid_and_gid_runc_takes_are_accepted(jobs_root, source_repo, tmp_path, logist):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"id: most\nrepo: {source_repo}\nsteps: ['true']\nuser: 2147483647\n")
    assert logist("job", "create", "--file", str(spec)).returncode == 0
    args = ("--repo", str(source_repo), "--step", "true", "--user", "0:2147483647")
    assert logist("job", "create", "flag", *args).returncode == 0
    users = [json.loads((jobs_root / j / "job.json").read_text())["user"] for j in ("most", "flag")]
    assert users == ["2147483647:2147483647", "0:2147483647"]


def test_a_resources_value_that_is_no_map_is_one_line_and_exit_2_on_the_command_line(
    source_repo, tmp_path, logist
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\nresources: big\n")
    out = logist("job", "create", "--file", str(spec))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-300:]
    assert out.stderr.count("\n") == 1, out.stderr


def test_a_spec_cannot_run_as_root_where_the_configuration_names_another_user(
    source_repo, tmp_path, logist
):
    config = tmp_path / "config.yaml"
    config.write_text('user: "1000:1000"\n')
    spec = tmp_path / "spec.yaml"
    env = {"LOGIST_CONFIG": str(config)}
    for user in ("root", "0", '"0:1000"', '"1000:0"'):
        spec.write_text(f"repo: {source_repo}\nsteps: ['true']\nuser: {user}\n")
        out = logist("job", "create", "--file", str(spec), env=env)
        assert out.returncode == 2 and "--user root" in out.stderr, (user, out.stderr)
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\nuser: root\n")
    granted = logist("job", "create", "--file", str(spec), "--user", "root", env=env)
    assert granted.returncode == 0, granted.stderr
    config.write_text('user: "1000:1000"\nallow: {user: [root]}\n')
    allowed = logist("job", "create", "--file", str(spec), env=env)
    assert allowed.returncode == 0, allowed.stderr
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\nuser: 2000\n")
    config.write_text('user: "1000:1000"\n')
    other = logist("job", "create", "--file", str(spec), env=env)  # another user, not root
    assert other.returncode == 0, other.stderr


def test_an_error_line_shows_no_control_character_and_is_bounded(source_repo, tmp_path, logist):
    """C1 controls (CSI, U+009B) and bidirectional overrides in a value reached the terminal
    raw in the error line; a 100 KB value made a 100 KB line (red team, 12-06)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text('repo: "/tmp/nowhere\\u009b2J\\u202e"\nsteps: ["true"]\n')
    out = logist("job", "create", "--file", str(spec))
    assert out.returncode == 2, out.stderr
    assert "\x9b" not in out.stderr and "\u202e" not in out.stderr, repr(out.stderr)
    assert out.stderr.count("\n") == 1
    spec.write_text(f"repo: {source_repo}\nref: {'a' * 100_000}\nsteps: ['true']\n")
    long = logist("job", "create", "--file", str(spec))
    assert long.returncode == 2 and len(long.stderr) < 1200, len(long.stderr)


def test_an_unknown_spec_key_with_no_value_is_refused(source_repo, tmp_path, logist):
    """``privileged:`` (null) was dropped as "not given" before the unknown keys were looked
    for, so a spec asking for it was accepted (red team, 12-06)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\nprivileged:\nvolumes: ~\n")
    out = logist("job", "create", "--file", str(spec))
    assert out.returncode == 2 and "unknown spec key 'privileged'" in out.stderr, out.stderr


@pytest.mark.docker
def test_a_step_given_no_memory_limit_gets_the_default_and_a_spec_cannot_raise_it(
    jobs_root, source_repo, tmp_path, logist
):
    """A step allocated 3 GiB, and could have taken the host's memory, with no limit given
    (red team, 12-06): the default is 8 GiB with no swap, a spec file may only lower it."""
    read = (
        "cat /sys/fs/cgroup/memory.max 2>/dev/null"
        " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    out = logist("run", "--repo", str(source_repo), "--step", read)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(8 * 1024**3)], out.stdout
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: ['true']\nmemory: 16g\n")
    over = logist("job", "create", "--file", str(spec))
    assert over.returncode == 2 and "memory 16g, over the trusted 8g" in over.stderr, over.stderr
    swap = (
        "cat /sys/fs/cgroup/memory.swap.max 2>/dev/null"
        " || cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"
    )
    spec.write_text(f"repo: {source_repo}\nsteps: ['{read}', '{swap}']\nmemory: 512m\n")
    lower = logist("run", "--file", str(spec))
    # and no swap (the engine's default gave as much again: red team, 12-06)
    assert lower.returncode == 0 and lower.stdout.split()[0] == str(512 * 1024**2), lower
    assert lower.stdout.split()[1] in ("0", str(512 * 1024**2)), lower.stdout
    granted = logist("job", "create", "--file", str(spec), "--memory", "16g")
    assert granted.returncode == 0, granted.stderr


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:{port}/internal/delete?all=1", "ssh://127.0.0.1:{port}/x.git"]
)
def test_a_spec_files_repository_url_is_never_asked_without_a_grant(tmp_path, logist, url):
    """Host git asked a spec's ``repo:`` URL with the operator's git configuration (credential
    helpers, headers, ssh keys): any host the spec named, loopback included (red team, 12-06).
    A local server of the test's own sees no request; ``--repo`` or ``allow: {repo: [URL]}``
    grants it."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    url = url.format(port=port)
    seen: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            seen.append(conn.recv(200) or b"(connected)")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"repo: '{url}'\nsteps: ['true']\n")
        out = logist("job", "create", "--file", str(spec))
        assert out.returncode == 2 and "--repo" in out.stderr and "allow: {repo:" in out.stderr
        config = tmp_path / "config.yaml"
        config.write_text(f"allow: {{repo: ['{url}']}}\n")
        granted = logist("job", "create", "--file", str(spec), env={"LOGIST_CONFIG": str(config)})
        assert "cannot grant" not in granted.stderr  # asked now (and refused: no repository)
    finally:
        done.set()
        thread.join(timeout=5)
        server.close()
    assert len(seen) == 1, seen  # the granted one only


@pytest.mark.parametrize(
    "image",
    [
        "logist/busybox:latest --privileged",
        "Logist/Step",
        "a//b",
        "logist/busybox:l\u00e9",  # not ASCII
        "logist/busybox@sha256:" + "a" * 63,  # a digest's length
        "logist/busybox@sha256:" + "A" * 64,
    ],
)
def test_an_image_that_is_no_reference_is_refused_at_create(source_repo, tmp_path, logist, image):
    """It was stored, and the job failed at run (red team, 12-06): now exit 2 at create, for
    the job's image and a step's."""
    out = logist("job", "create", "--repo", str(source_repo), "--image", image, "--step", "true")
    assert out.returncode == 2 and "an image reference" in out.stderr, out.stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: [{{run: 'true', image: '{image}'}}]\n")
    out = logist("job", "create", "--file", str(spec))
    assert out.returncode == 2 and "steps[1].image" in out.stderr, out.stderr
