"""Hardened steps, private job directories and secrets (issue 12)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from logist import container_spec, containers
from logist.errors import UsageError
from logist.spec import build_job
from logist.store import Store, default_root
from logist.streams import SecretMask, StepOutput, TerminalLines
from tests.helpers import create_job as create
from tests.helpers import git, make_repo, run_logist, wait_for
from tests.helpers import job_status as status

STEP_IMAGE = "logist/step:latest"
# capability numbers (linux/capability.h)
CAP = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6}
CAP.update({"SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_MODULE": 16})
CAP.update({"SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "MKNOD": 27, "SETFCAP": 31})
DANGEROUS = {"MKNOD", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE", "SYS_MODULE"}


def proc_status(text: str) -> dict[str, str]:
    """The ``Key:\tvalue`` lines of /proc/self/status found in ``text``."""
    return dict(re.findall(r"^(\w+):\s+(\S+)$", text, re.M))


def caps_of(hex_mask: str) -> set[str]:
    """The capabilities of a /proc/self/status mask (an unknown bit shows as its number)."""
    bits = int(hex_mask, 16)
    names = {bit: name for name, bit in CAP.items()}
    return {names.get(bit, str(bit)) for bit in range(64) if bits >> bit & 1}


# --- masking (no engine) ---------------------------------------------------------------------


def masked_in_chunks(secrets: list[str], data: bytes, cuts: list[int]) -> tuple[bytes, int]:
    """Feed ``data`` cut at ``cuts`` through a ``SecretMask``; the output and the most it held."""
    mask, out, most = SecretMask(secrets), [], 0
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        out.append(mask.feed(data[a:b]))
        most = max(most, len(mask.held))
    out.append(mask.flush())
    return b"".join(out), most


def test_mask_hides_every_secret_whatever_the_chunk_boundaries():
    rng = random.Random(12)
    secrets = ["abcdef", "abc", "xyzzy-token-123", "efg"]
    pieces = [b"abcdef", b"abc", b"abcde", b"xyzzy-token-123", b"ab", b"efg", b"hello\n", b"a"]
    pattern = re.compile(b"|".join(re.escape(s.encode()) for s in sorted(secrets, key=len)[::-1]))
    for _ in range(300):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 12))))
        out, most = masked_in_chunks(secrets, data, cuts)
        assert out == pattern.sub(b"***", data), (data, cuts)
        assert most <= len("xyzzy-token-123") - 1
        for s in secrets:
            assert s.encode() not in out.replace(b"***", b"|")


def test_mask_joins_a_secret_split_across_two_chunks_and_emits_the_rest_at_once():
    mask = SecretMask(["abcdef"])
    assert mask.feed(b"key=abc") == b"key="  # "abc" may be the secret's start: held
    assert mask.feed(b"def and more\n") == b"*** and more\n"
    assert mask.feed(b"hello\n") == b"hello\n"  # nothing that can start a secret: not held
    assert mask.feed(b"ab") == b""
    assert mask.flush() == b"ab"


def test_output_writes_masked_chunks_to_the_log_and_the_prefixed_terminal():
    log, term = io.BytesIO(), io.BytesIO()
    out = StepOutput(log, TerminalLines(term, b"[j] ", threading.Lock()), SecretMask(["s3cr3t"]))
    out(b"token s3")
    assert log.getvalue() == b"token "  # the log gets what is safe at once
    out(b"cr3t!\nnext s3cr3t")
    out.close()
    assert log.getvalue() == b"token ***!\nnext ***"
    assert term.getvalue() == b"[j] token ***!\n[j] next ***\n"


# --- spec (no engine) ------------------------------------------------------------------------


def spec(**extra) -> dict:
    return {"repo": "/src", "steps": ["true"], **extra}


def test_cap_add_runtime_and_secrets_are_validated_and_normalised():
    job = build_job(
        spec(cap_add=["net_raw", "CAP_SYS_PTRACE", "NET_RAW"], runtime="runsc", secrets=["K"]),
        default_user="0:0",
    )
    assert (job.cap_add, job.runtime, job.secrets) == (["NET_RAW", "SYS_PTRACE"], "runsc", ["K"])
    for bad in (
        spec(cap_add=["NET RAW"]),
        spec(cap_add=["CAP_"]),
        spec(cap_add=[3]),
        spec(runtime="run sc"),
        spec(secrets=["1KEY"]),
        spec(secrets=["K"], env={"K": "v"}),
    ):
        with pytest.raises(UsageError, match="invalid value for"):
            build_job(bad, default_user="0:0")


# --- private directories (no engine) ---------------------------------------------------------


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_jobs_root_and_job_directories_are_created_private(tmp_path):
    root = default_root(str(tmp_path / "new" / "jobs"))
    assert mode(root) == 0o700
    job = build_job(spec(), default_user="0:0")
    assert mode(Store(root).create(job)) == 0o700


def test_a_wider_jobs_root_is_tightened_only_when_it_holds_nothing_but_jobs(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir(mode=0o755)
    os.chmod(jobs, 0o755)
    Store(jobs).create(build_job(spec(), default_user="0:0"))
    (jobs / ".mirrors").mkdir()
    assert mode(default_root(str(jobs))) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("not a job")
    os.chmod(shared, 0o755)
    assert mode(default_root(str(shared))) == 0o755  # someone else's files: doctor says so
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    assert mode(default_root(str(sticky))) == 0o777


# --- the engine ------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_root_step_has_no_new_privileges_and_none_of_the_dangerous_capabilities(
    logist, source_repo
):
    job = create(logist, source_repo, "cat /proc/self/status", extra=("--user", "root"))
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    st = proc_status(out.stdout)
    assert st["NoNewPrivs"] == "1"
    for field in ("CapEff", "CapBnd", "CapPrm"):
        assert caps_of(st[field]) == set(container_spec.DEFAULT_CAPS), field
        assert not caps_of(st[field]) & DANGEROUS


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_cap_add_gives_that_capability_back_and_pids_overrides_the_default(logist, source_repo):
    job = create(
        logist,
        source_repo,
        "grep -E 'CapEff|NoNewPrivs' /proc/self/status;"
        " echo PidsMax: $(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null"
        " || cat /sys/fs/cgroup/pids.max)",
        extra=("--user", "root", "--cap-add", "net_raw", "--pids", "64"),
    )
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    st = proc_status(out.stdout)
    caps = caps_of(st["CapEff"])
    assert caps == {*container_spec.DEFAULT_CAPS, "NET_RAW"}
    assert st["NoNewPrivs"] == "1"
    assert st["PidsMax"] == "64"
    assert status(logist, job)["cap_add"] == ["NET_RAW"]


@contextlib.contextmanager
def running_container(docker_client, jobs_root: Path, job: str, env: dict | None = None):
    """``job run JOB`` in the background; yields its step's running container, then cancels."""
    runner = subprocess.Popen(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "job", "run", job],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        labels = [f"logist.jobs-dir={jobs_root}", f"logist.job={job}", "logist.step=1"]
        found = wait_for(
            lambda: docker_client.containers.list(filters={"label": labels}), what="the step"
        )
        yield found[0]
    finally:
        run_logist(jobs_root, "job", "cancel", job, "--grace", "0")
        with contextlib.suppress(subprocess.TimeoutExpired):
            runner.communicate(timeout=60)
        if runner.poll() is None:
            runner.kill()
            runner.wait()


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_step_container_is_hardened_and_its_secret_is_in_no_label_or_name(
    logist, source_repo, jobs_root, docker_client
):
    job = create(logist, source_repo, "sleep 60", extra=("--secret", "HARD_SECRET"))
    value = "hs-" + os.urandom(8).hex()
    with running_container(docker_client, jobs_root, job, {"HARD_SECRET": value}) as c:
        host = c.attrs["HostConfig"]
        assert host["PidsLimit"] == container_spec.DEFAULT_PIDS
        assert host["Privileged"] is False
        assert host["CapDrop"] == ["ALL"]
        assert {c.removeprefix("CAP_") for c in host["CapAdd"]} == set(container_spec.DEFAULT_CAPS)
        assert "no-new-privileges" in host["SecurityOpt"]
        assert not any("docker.sock" in m["Source"] for m in c.attrs["Mounts"])
        assert f"HARD_SECRET={value}" in c.attrs["Config"]["Env"]  # the step's environment
        assert value not in json.dumps(c.attrs["Config"]["Labels"]) + c.name
    assert status(logist, job)["state"] == "canceled"


@pytest.mark.docker
@pytest.mark.timeout(60)
def test_a_mount_of_the_engine_socket_is_refused(docker_client, jobs_root):
    for source in ("/var/run/docker.sock", "/var/run"):
        with pytest.raises(UsageError, match="exposes the engine"):
            spec = container_spec.ContainerSpec(
                image=STEP_IMAGE,
                command=["true"],
                job_id="x",
                step=1,
                jobs_root=jobs_root,
                owner="test:1:1",
                mounts=[docker.types.Mount("/s", source, type="bind")],
            )
            containers.create(docker_client, spec)


@pytest.mark.docker
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("option", "value"), [("--runtime", "no-such"), ("--cap-add", "NO_SUCH_CAP")]
)
def test_a_setting_the_engine_refuses_is_exit_2_and_a_failed_job(
    logist, source_repo, option, value
):
    job = create(logist, source_repo, "true", "true", extra=(option, value))
    out = logist("job", "run", job)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert "refused" in lines[0] and value.lower() in lines[0].lower()
    st = status(logist, job)
    assert st["state"] == "failed"
    assert [s["state"] for s in st["steps"]] == ["failed", "pending"]
    assert st["error"] and st["steps"][0]["error"] == st["error"]
    assert not st["active"]


INSTALL = r"""set -e
# a package with a maintainer script that adds a system user, chowns and setgids a directory
mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/bin /tmp/pkg/var/lib/hello-logist /srv/repo
printf '#!/bin/sh\necho hello from the package\n' > /tmp/pkg/usr/bin/hello-logist
chmod 0755 /tmp/pkg/usr/bin/hello-logist
cat > /tmp/pkg/DEBIAN/control <<EOF
Package: hello-logist
Version: 1.0
Architecture: all
Maintainer: t <t@t>
Description: a package installed offline by a test
EOF
cat > /tmp/pkg/DEBIAN/postinst <<'EOF'
#!/bin/sh
set -e
useradd --system --no-create-home hellod
chown hellod: /var/lib/hello-logist
chmod 2750 /var/lib/hello-logist
EOF
chmod 0755 /tmp/pkg/DEBIAN/postinst
dpkg-deb --build --root-owner-group /tmp/pkg /srv/repo/hello-logist_1.0_all.deb >/dev/null
cd /srv/repo
{ dpkg-deb -f hello-logist_1.0_all.deb
  echo "Filename: ./hello-logist_1.0_all.deb"
  echo "Size: $(stat -c %s hello-logist_1.0_all.deb)"
  echo "SHA256: $(sha256sum hello-logist_1.0_all.deb | cut -d' ' -f1)"; echo; } > Packages
chmod -R a+rX /srv/repo
# an apt source on this filesystem: apt fetches it in its _apt sandbox (setgroups, setresuid)
rm -f /etc/apt/sources.list.d/*
echo 'deb [trusted=yes] file:/srv/repo ./' > /etc/apt/sources.list
apt-get update >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }
DEBIAN_FRONTEND=noninteractive apt-get install -y hello-logist >>/tmp/apt.log 2>&1 \
  || { cat /tmp/apt.log; exit 1; }
grep -E '^(W|E):' /tmp/apt.log || true
hello-logist
stat -c 'dir %A %U' /var/lib/hello-logist
# pip, as root, into a venv, from a local directory (no index)
python3 -m venv /opt/venv
mkdir -p /tmp/lp/hl && echo 'WORD = "hi from pip"' > /tmp/lp/hl/__init__.py
cat > /tmp/lp/setup.py <<'EOF'
from setuptools import setup
setup(name="hl", version="1", packages=["hl"])
EOF
/opt/venv/bin/pip install -q --no-index --disable-pip-version-check /tmp/lp >/tmp/pip.log 2>&1 \
  || { cat /tmp/pip.log; exit 1; }
/opt/venv/bin/python -c 'import hl; print(hl.WORD)'
su -s /bin/sh nobody -c 'echo su: $(id -un)'
"""


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_default_image_installs_a_package_with_apt_and_pip_as_root(tmp_path, logist):
    repo = make_repo(tmp_path / "src", {"install.sh": INSTALL})
    job = create(logist, repo, "sh install.sh", extra=("--user", "root", "--network", "none"))
    out = logist("job", "run", job, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hello from the package" in out.stdout
    assert "dir drwxr-s--- hellod" in out.stdout  # chown and setgid by the maintainer script
    assert "hi from pip" in out.stdout
    assert "su: nobody" in out.stdout
    assert "unsandboxed" not in out.stdout  # apt dropped to _apt as it does on any host
    assert not re.search(r"^E:", out.stdout, re.M)


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_step_as_another_uid_writes_its_private_workspace(logist, source_repo, jobs_root):
    job = create(
        logist,
        source_repo,
        "id -u > uid.txt && echo more >> README.md",
        extra=("--user", "4242:4242"),
    )
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert mode(jobs_root / job) == 0o700
    assert git(source_repo, "show", f"logist/{job}:uid.txt") == "4242\n"


@pytest.fixture
def open_base(docker_client) -> Iterator[Path]:
    """A directory every host user can traverse (tmp_path's parents are private to root); the
    jobs root logist makes inside it is ``BASE/jobs``."""
    base = Path(tempfile.mkdtemp(prefix="logist-hardening-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        left = docker_client.containers.list(
            all=True, filters={"label": f"logist.jobs-dir={base / 'jobs'}"}
        )
        for c in left:
            c.remove(force=True)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"containers left behind: {[c.short_id for c in left]}"


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *cmd], capture_output=True, text=True, cwd="/"
    )


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_setuid_and_data_files_a_root_step_left_are_out_of_other_users_reach(open_base):
    if os.geteuid() != 0:
        pytest.fail("this test starts as root to act as another host user", pytrace=False)
    source = make_repo(open_base / "src")
    jobs = open_base / "jobs"
    step = "cp /bin/cat suid; chmod 4755 suid; echo private-data > data.txt; chmod 644 data.txt"
    out = run_logist(
        jobs,
        "job",
        "create",
        "--repo",
        str(source),
        "--step",
        step,
        "--user",
        "root",
        "--cleanup",
        "never",
    )
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    ran = run_logist(jobs, "job", "run", job)
    assert ran.returncode == 0, ran.stderr
    ws = jobs / job / "workspace"
    assert (ws / "suid").stat().st_mode & 0o4755 == 0o4755  # it is there, setuid root
    assert as_nobody("cat", "/etc/hostname").returncode == 0  # nobody can run things at all
    for cmd in (
        [str(ws / "suid"), "/etc/shadow"],
        ["cat", str(ws / "data.txt")],
        ["ls", str(ws)],
        ["ls", str(jobs)],
    ):
        denied = as_nobody(*cmd)
        assert denied.returncode != 0, cmd
        assert "Permission denied" in denied.stderr, denied.stderr


SECRET_STEPS = (
    'printf %s "$LOGIST_TEST_SECRET" | sha256sum',
    'echo "the key is $LOGIST_TEST_SECRET."',
    # split across two reads of the stream
    "printf 'key: %s' \"${LOGIST_TEST_SECRET%%????????????}\"; sleep 1;"
    " printf '%s!\\n' \"${LOGIST_TEST_SECRET#????????}\"",
)


def files_containing(root: Path, needle: bytes) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError), open(path, "rb") as fh:
                if needle in fh.read():
                    found.append(path)
    return found


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_secret_reaches_the_step_masked_in_output_and_log_and_stored_nowhere(
    logist, source_repo, jobs_root
):
    value = "sk-" + os.urandom(8).hex() + "x"  # 20 characters
    assert len(value) == 20
    job = create(logist, source_repo, *SECRET_STEPS, extra=("--secret", "LOGIST_TEST_SECRET"))
    out = logist("job", "run", job, env={"LOGIST_TEST_SECRET": value})
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256(value.encode()).hexdigest() in out.stdout  # the step had it
    assert "the key is ***." in out.stdout
    assert "key: ***!" in out.stdout  # printed in two halves a second apart
    assert value not in out.stdout + out.stderr
    assert value[:12] not in out.stdout and value[8:] not in out.stdout
    logs = jobs_root / job / "logs"
    assert (logs / "step-2.log").read_text() == "the key is ***.\n"
    assert (logs / "step-3.log").read_text() == "key: ***!\n"
    assert files_containing(jobs_root, value.encode()) == []
    st = status(logist, job)
    assert st["secrets"] == ["LOGIST_TEST_SECRET"]
    assert value not in json.dumps(st)
    assert json.loads((jobs_root / job / "job.json").read_text())["secrets"] == [
        "LOGIST_TEST_SECRET"
    ]


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_missing_secret_is_exit_2_naming_it_before_any_container(
    logist, source_repo, jobs_root, docker_client
):
    job = create(logist, source_repo, "true", extra=("--secret", "LOGIST_ABSENT_SECRET"))
    env = dict(os.environ)
    env.pop("LOGIST_ABSENT_SECRET", None)
    since = int(time.time()) - 1
    out = subprocess.run(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "job", "run", job],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "LOGIST_ABSENT_SECRET" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    created = list(
        docker_client.events(  # `until` not in the future: the call returns at once
            since=since,
            until=time.time(),
            decode=True,
            filters={
                "type": "container",
                "event": "create",
                "label": f"logist.jobs-dir={jobs_root}",
            },
        )
    )
    assert created == []
    st = status(logist, job)
    assert st["state"] == "failed" and st["steps"][0]["state"] == "failed"
    assert "LOGIST_ABSENT_SECRET" in st["error"]


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_doctor_reports_a_jobs_root_other_users_can_reach(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    (root / "notes.txt").write_text("someone else's file: logist leaves the mode alone")
    os.chmod(root, 0o755)
    out = run_logist(root, "doctor", "--json")
    assert out.returncode == 3
    check = {c["name"]: c for c in json.loads(out.stdout)["checks"]}["jobs-root-private"]
    assert not check["ok"] and "755" in check["detail"]
    os.chmod(root, 0o700)
    out = run_logist(root, "doctor", "--json")
    check = {c["name"]: c for c in json.loads(out.stdout)["checks"]}["jobs-root-private"]
    assert check["ok"], check


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_non_root_logist_keeps_its_jobs_private_and_steps_write_the_workspace(
    nonroot_user, open_base
):
    uid, gid = nonroot_user["uid"], nonroot_user["gid"]
    os.chown(open_base, uid, gid)
    source = make_repo(open_base / "src")
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(source)], check=True)
    jobs = open_base / "jobs"

    as_user = ["runuser", "-u", nonroot_user["name"], "--", nonroot_user["logist"]]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*as_user, "--jobs-dir", str(jobs), *args],
            capture_output=True,
            text=True,
            timeout=240,
            cwd="/",
        )

    for user in (f"{uid}:{gid}", "4242:4242"):
        out = run("job", "create", "--repo", str(source), "--user", user, "--step", "id -u > u")
        assert out.returncode == 0, out.stderr
        job = out.stdout.strip()
        ran = run("job", "run", job)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert git(source, "show", f"logist/{job}:u") == f"{user.split(':')[0]}\n"
        assert mode(jobs / job) == 0o700
    assert mode(jobs) == 0o700 and jobs.stat().st_uid == uid
