"""A job's own network, and egress by name through the job's proxy (contract v3), against the
real engine. "The internet" is a network of the test's own in 198.18.0.0/15 (the benchmarking
range, not a private one) with web servers under several names; "an internal service" is one
on a private network of the test's own. No traffic goes anywhere else."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logist.networks import network_name
from tests.conftest import BUSYBOX, STEP_IMAGE
from tests.helpers import commit_file, run_logist, wait_for
from tests.support_net import NAMES, left_behind, network_with_server
from tests.support_wait import ended

pytestmark = pytest.mark.docker


def _cmd(jobs_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), *args]


# the step's side: each check prints one line "CHECK -> RESULT"
CLIENT = r"""
import os, socket, sys, urllib.request
proxy = os.environ.get("HTTP_PROXY", "")
for check in sys.argv[1:]:
    kind, _, arg = check.partition(" ")
    try:
        if kind == "GET":
            with urllib.request.urlopen(arg, timeout=10) as r:
                result = f"{r.status} {r.read().decode().strip()}"
        elif kind in ("CONNECT", "VIA"):  # straight to the proxy (VIA: whatever NO_PROXY says)
            host = proxy.split("//")[1].rsplit(":", 1)[0]
            s = socket.create_connection((host, 3128), timeout=10)
            line = f"CONNECT {arg}" if kind == "CONNECT" else f"GET {arg}"
            s.sendall(f"{line} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            result = s.recv(200).split(b"\r\n")[0].decode().split(" ", 2)[1]
        elif kind == "DIRECT":
            host, port = arg.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=3).close()
            result = "connected"
        elif kind == "DNS":
            result = socket.gethostbyname(arg)
    except urllib.error.HTTPError as exc:
        result = str(exc.code)
    except Exception as exc:
        result = f"failed {type(exc).__name__}"
    print(f"{check} -> {result}", flush=True)
"""


@pytest.fixture(scope="module")
def outside(docker_client):
    """The stand-in internet: (network name, the web server's address)."""
    subnets = [f"198.18.{n}.0/24" for n in random.sample(range(256), 12)]
    net, server, ip = network_with_server(docker_client, "out", subnets, NAMES)
    yield net.name, ip
    server.remove(force=True)
    net.remove()


@pytest.fixture(scope="module")
def internal(docker_client):
    """An internal service on a private range: (network name, subnet, address)."""
    picks = random.sample(range(256), 12)
    subnets = [f"10.{n}.{random.randrange(256)}.0/24" for n in picks]
    net, server, ip = network_with_server(docker_client, "in", subnets, ("inside.example.test",))
    net.reload()
    subnet = net.attrs["IPAM"]["Config"][0]["Subnet"]
    yield net.name, subnet, ip
    server.remove(force=True)
    net.remove()


@pytest.fixture
def repo(source_repo: Path) -> Path:
    commit_file(source_repo, "client.py", CLIENT, "the test's client")
    return source_repo


def _run(jobs_root, egress: str, *args: str, checks: list[str] = (), **kw):
    step = "python3 client.py " + " ".join(f"'{c}'" for c in checks)
    env = {"LOGIST_EGRESS_NETWORK": egress, **kw.pop("env", {})}
    return run_logist(jobs_root, "run", *args, "--step", step, env=env, **kw)


def _allowed(jobs_root, egress: str, *args: str, env: dict | None = None):
    """``logist run ARGS --allow-host web.example.test`` with the test's egress network."""
    env = {"LOGIST_EGRESS_NETWORK": egress, **(env or {})}
    return run_logist(jobs_root, "run", *args, "--allow-host", "web.example.test", env=env)


def _started(jobs_root, egress: str, job_id: str, repo: Path, step: str, **popen):
    """``logist run JOB --allow-host web.example.test --step STEP``, a process of its own."""
    args = ["run", job_id, "--repo", str(repo), "--allow-host", "web.example.test"]
    return subprocess.Popen(
        _cmd(jobs_root, *args, "--step", step),
        env={**os.environ, "LOGIST_EGRESS_NETWORK": egress},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def _results(out) -> dict[str, str]:
    lines = [line for line in out.stdout.splitlines() if " -> " in line]
    return dict(line.split(" -> ", 1) for line in lines)


def _status(jobs_root, job_id: str) -> dict:
    out = run_logist(jobs_root, "job", "status", job_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_allowed_hosts_pass_through_the_proxy_and_everything_else_is_refused(
    jobs_root, repo, outside, docker_client
):
    egress, web_ip = outside
    checks = [
        "GET http://web.example.test/",
        "GET http://other.example.test/",
        "GET http://x.sub.example.test:8443/",
        "GET http://sub.example.test:8443/",
        f"GET http://{web_ip}/",
        "CONNECT web.example.test:443",
        "CONNECT other.example.test:443",
        "CONNECT web.example.test:22",
        f"DIRECT {web_ip}:80",
        "DNS web.example.test",
    ]
    out = _run(
        jobs_root,
        egress,
        "eg1",
        "--repo",
        str(repo),
        "--allow-host",
        "web.example.test",
        "--allow-host",
        "*.sub.example.test:8443",
        checks=checks,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    got = _results(out)
    assert got == {
        "GET http://web.example.test/": "200 hello-web",
        "GET http://other.example.test/": "403",
        "GET http://x.sub.example.test:8443/": "200 hello-web",
        "GET http://sub.example.test:8443/": "403",  # a wildcard is not its apex
        f"GET http://{web_ip}/": "403",  # an address is no allowed name
        "CONNECT web.example.test:443": "200",
        "CONNECT other.example.test:443": "403",
        "CONNECT web.example.test:22": "403",
        f"DIRECT {web_ip}:80": got[f"DIRECT {web_ip}:80"],
        "DNS web.example.test": got["DNS web.example.test"],
    }, out.stdout
    assert got[f"DIRECT {web_ip}:80"].startswith("failed")  # no route but the proxy
    assert got["DNS web.example.test"].startswith("failed")  # no name resolves in the step
    view = _status(jobs_root, "eg1")
    assert view["allow_hosts"] == ["web.example.test", "*.sub.example.test:8443"]
    assert view["steps"][0]["egress"] == {
        "denied": {
            "other.example.test:80": 1,
            "sub.example.test:8443": 1,
            f"{web_ip}:80": 1,
            "other.example.test:443": 1,
            "web.example.test:22": 1,
        }
    }
    assert "eg1: step 1: egress refused: web.example.test:22 (1 request)" in out.stderr
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_steps_sharing_a_held_namespace_reach_the_outside_only_through_the_proxy(
    jobs_root, repo, outside, docker_client
):
    egress, web_ip = outside
    checks = [
        "GET http://web.example.test/",
        "GET http://other.example.test/",
        f"DIRECT {web_ip}:80",
        "DNS web.example.test",
    ]
    client = "python3 client.py " + " ".join(f"'{c}'" for c in checks)
    first = "while [ ! -f go ]; do sleep 0.05; done"
    args = ["run", "held", "--repo", str(repo), "--allow-host", "web.example.test"]
    command = _cmd(jobs_root, *args, "--step", first, "--step", client)
    env = {**os.environ, "LOGIST_EGRESS_NETWORK": egress}
    popen = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with ended(popen) as runner:
        label = {"label": [f"logist.jobs-dir={jobs_root}", "logist.step=1"]}
        [step] = wait_for(lambda: docker_client.containers.list(filters=label), 60, "step 1")
        label = {"label": [f"logist.jobs-dir={jobs_root}", "logist.step=netns"]}
        [holder] = docker_client.containers.list(filters=label)
        assert step.attrs["HostConfig"]["NetworkMode"] == f"container:{holder.id}"
        own = network_name("held", jobs_root)
        assert list(holder.attrs["NetworkSettings"]["Networks"]) == [own]  # internal only
        (jobs_root / "held" / "workspace" / "go").write_text("")
        stdout, stderr = runner.communicate(timeout=180)
    assert runner.returncode == 0, stdout + stderr
    got = _results(subprocess.CompletedProcess([], 0, stdout.decode(), ""))
    assert got["GET http://web.example.test/"] == "200 hello-web", stdout
    assert got["GET http://other.example.test/"] == "403"
    assert got[f"DIRECT {web_ip}:80"].startswith("failed")
    assert got["DNS web.example.test"].startswith("failed")
    view = _status(jobs_root, "held")
    assert view["steps"][1]["egress"] == {"denied": {"other.example.test:80": 1}}
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_the_step_sits_on_the_jobs_internal_network_and_the_proxy_is_hardened(
    jobs_root, repo, outside, docker_client
):
    egress, _ = outside
    proc = _started(jobs_root, egress, "eg2", repo, "sleep 30")
    try:
        label = {"label": [f"logist.jobs-dir={jobs_root}", "logist.step=1"]}
        [step] = wait_for(
            lambda: docker_client.containers.list(filters=label), 60, "the step to run"
        )
        proxies = {"label": [f"logist.jobs-dir={jobs_root}", "logist.step=proxy"]}
        [proxy] = wait_for(  # it starts beside the first step
            lambda: docker_client.containers.list(filters=proxies), 60, "the proxy to run"
        )
        [net] = docker_client.networks.list(filters={"label": f"logist.jobs-dir={jobs_root}"})
        net.reload()
        assert net.name == network_name("eg2", jobs_root) and net.attrs["Internal"] is True
        assert net.attrs["Labels"]["logist.job"] == "eg2"
        assert net.attrs["Labels"]["logist.managed"] == "true"
        assert list(step.attrs["NetworkSettings"]["Networks"]) == [net.name]
        assert set(proxy.attrs["NetworkSettings"]["Networks"]) == {net.name, egress}
        host = proxy.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
        assert not host["CapAdd"] and "no-new-privileges" in host["SecurityOpt"]
        assert host["Memory"] > 0 and host["PidsLimit"] > 0
        assert proxy.attrs["Config"]["User"] == "proxy"
        forwarding = "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding"
        assert proxy.exec_run(["sh", "-c", forwarding]).output.split() == [b"0", b"0"]
        env = dict(e.split("=", 1) for e in step.attrs["Config"]["Env"])
        # named by its alias on the job's network, which the step resolves to its address
        assert "logist-proxy" in proxy.attrs["NetworkSettings"]["Networks"][net.name]["Aliases"]
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            assert env[key] == "http://logist-proxy:3128"
        address = proxy.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
        found = step.exec_run(["getent", "hosts", "logist-proxy"]).output.decode().split()
        assert found[:1] == [address]
        assert env["NO_PROXY"] == "localhost,127.0.0.1"
    finally:
        subprocess.run(
            _cmd(jobs_root, "job", "cancel", "eg2"),
            capture_output=True,
            timeout=60,
        )
        proc.communicate(timeout=60)
    assert _status(jobs_root, "eg2")["state"] == "canceled"
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_a_name_that_resolves_to_a_private_address_is_refused_unless_granted(
    jobs_root, repo, internal, docker_client
):
    egress, subnet, _ = internal
    checks = ["GET http://inside.example.test/", "VIA http://localhost:80/"]
    allow = ["--allow-host", "inside.example.test", "--allow-host", "localhost"]
    out = _run(jobs_root, egress, "eg3", "--repo", str(repo), *allow, checks=checks)
    assert out.returncode == 0, out.stderr
    assert _results(out) == {
        "GET http://inside.example.test/": "403",
        "VIA http://localhost:80/": "403",
    }
    granted = ["--allow-private", subnet]
    out = _run(jobs_root, egress, "eg4", "--repo", str(repo), *allow, *granted, checks=checks)
    assert out.returncode == 0, out.stderr
    assert _results(out) == {
        "GET http://inside.example.test/": "200 hello-web",
        "VIA http://localhost:80/": "403",  # loopback is not in the granted range
    }
    assert _status(jobs_root, "eg4")["allow_private"] == [subnet]


# counts the DNS packets (UDP) that carry a name, on every interface of the namespace it runs in
SNIFF = r"""
import socket, sys, time
name, seconds = sys.argv[1].encode(), float(sys.argv[2])
qname = b"".join(bytes([len(p)]) + p for p in name.split(b"."))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.settimeout(0.2)
end, seen = time.monotonic() + seconds, 0
while time.monotonic() < end:
    try:
        frame = s.recv(65535)
    except socket.timeout:
        continue
    if frame[12:14] == b"\x08\x00" and frame[23] == 17 and qname in frame:
        seen += 1
print(seen, flush=True)
"""


@pytest.mark.timeout(180)
def test_a_name_no_pattern_allows_is_never_looked_up_by_the_proxy(
    jobs_root, repo, outside, docker_client
):
    """A step could send data out in the names it asks for (``http://<data>.example/``): the
    proxy refused them, but looked each up first (red team, 12-06). The name here is one the
    engine's DNS answers itself (an alias on the test's own network): nothing leaves."""
    egress, _ = outside
    step = "sleep 4; python3 client.py 'GET http://other.example.test/'; sleep 1"
    runner = _started(jobs_root, egress, "dnsleak", repo, step)
    try:
        label = {"label": [f"logist.jobs-dir={jobs_root}", "logist.step=proxy"]}
        running = {**label, "status": "running"}
        proxies = wait_for(lambda: docker_client.containers.list(filters=running), 60, "proxy")
        pid = str(proxies[0].attrs["State"]["Pid"])
        sniff = ["nsenter", "-t", pid, "-n", sys.executable, "-c", SNIFF, "other.example.test"]
        looked_up = subprocess.run([*sniff, "6"], capture_output=True, text=True, timeout=60)
        out, err = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, err
    assert "GET http://other.example.test/ -> 403" in out.decode()
    assert looked_up.stdout.strip() == "0", looked_up.stdout + looked_up.stderr


@pytest.mark.timeout(180)
def test_a_name_with_a_granted_and_a_blocked_address_is_refused(
    jobs_root, repo, internal, docker_client
):
    """Squid's ``dst`` matches when any address of the name does: with ``deny blocked
    !granted``, one granted address (a decoy with no server) let the proxy on to the name's
    other, blocked address (red team, 12-06: 200 from the web server)."""
    egress, _, _ = internal
    decoy = docker_client.containers.create(BUSYBOX, ["sleep", "120"], network=egress)
    net = docker_client.networks.get(egress)
    net.disconnect(decoy)
    net.connect(decoy, aliases=["inside.example.test"])
    decoy.start()
    try:
        decoy.reload()
        address = decoy.attrs["NetworkSettings"]["Networks"][egress]["IPAddress"]
        checks = ["GET http://inside.example.test/"]
        allow = ["--allow-host", "inside.example.test", "--allow-private", f"{address}/32"]
        out = _run(jobs_root, egress, "mix", "--repo", str(repo), *allow, checks=checks)
        assert out.returncode == 0, out.stderr
        assert _results(out) == {"GET http://inside.example.test/": "403"}
    finally:
        decoy.remove(force=True)


def test_a_spec_file_narrows_egress_and_cannot_grant_private_ranges(
    jobs_root, repo, outside, tmp_path
):
    egress, _ = outside
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {repo}\nallow_hosts: [web.example.test]\n")
    checks = ["GET http://web.example.test/", "GET http://other.example.test/"]
    out = _run(jobs_root, egress, "eg5", "--file", str(spec), checks=checks)
    assert out.returncode == 0, out.stderr
    assert _results(out) == {
        "GET http://web.example.test/": "200 hello-web",
        "GET http://other.example.test/": "403",
    }
    spec.write_text(f"repo: {repo}\nallow_hosts: [web.example.test]\nallow_private: [10.0.0.0/8]\n")
    out = _run(jobs_root, egress, "eg6", "--file", str(spec), checks=checks)
    assert out.returncode == 2 and "allow_private" in out.stderr
    assert "cannot grant" in out.stderr and not (jobs_root / "eg6").exists()


def test_jobs_on_their_own_networks_cannot_reach_each_other(
    jobs_root, repo, docker_client, tmp_path
):
    server = subprocess.Popen(
        _cmd(
            jobs_root,
            "run",
            "serves",
            "--repo",
            str(repo),
            "--step",
            "exec python3 -m http.server 8080",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        label = {"label": [f"logist.jobs-dir={jobs_root}", "logist.step=1"]}
        [box] = wait_for(
            lambda: docker_client.containers.list(filters=label), 60, "the server's step"
        )
        own = network_name("serves", jobs_root)
        assert list(box.attrs["NetworkSettings"]["Networks"]) == [own]
        ip = box.attrs["NetworkSettings"]["Networks"][own]["IPAddress"]
        fetch = (
            "import sys, time, urllib.request\n"
            "for _ in range(40):\n"
            "    try:\n"
            f"        print(urllib.request.urlopen('http://{ip}:8080/', timeout=3).status)\n"
            "        break\n"
            "    except Exception as exc:\n"
            "        time.sleep(0.25)\n"
            "else:\n"
            "    print('unreachable')\n"
        )
        # a container on the serving job's network reaches it: the server is up
        seen = docker_client.containers.run(
            STEP_IMAGE, ["python3", "-c", fetch], network=own, remove=True
        )
        assert seen.strip() == b"200"
        # another job's step does not
        commit_file(repo, "fetch.py", fetch.replace("range(40)", "range(2)"))
        out = run_logist(
            jobs_root, "run", "other", "--repo", str(repo), "--step", "python3 fetch.py"
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "unreachable"
    finally:
        run_logist(jobs_root, "job", "cancel", "serves", timeout=60)
        server.communicate(timeout=60)
    assert left_behind(docker_client, jobs_root) == ([], [])


# For the steps' scripts that write packets: an IPv4 packet (``proto``, ``payload``) with its
# header's checksum
IPV4 = r"""
import socket, struct
def checksum(b):
    b += b"\0" * (len(b) % 2)
    n = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while n >> 16:
        n = (n & 0xFFFF) + (n >> 16)
    return ~n & 0xFFFF
def ipv4(src, dst, proto, payload):
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:] + payload
"""
# The step's gateway (the host), for the scripts below
GATEWAY = r"""
import socket, struct
gw = next(socket.inet_ntoa(struct.pack("<I", int(f[2], 16)))
          for f in (l.split() for l in open("/proc/net/route").read().splitlines()[1:])
          if f[1] == "00000000")
"""
# A step with a ping socket (no capability) listens for echo replies with its id; it stops once
# the test writes "sent" into its workspace, then proves the path works with its own echo
SPOOF_RECEIVER = (
    GATEWAY
    + r"""
import pathlib, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
s.bind(("0.0.0.0", 0x1234))
s.settimeout(0.5)
pathlib.Path("ready").write_text("")
got = b""
deadline = time.time() + 60
while time.time() < deadline:
    try:
        got += s.recvfrom(2000)[0]
    except socket.timeout:
        if pathlib.Path("sent").exists():
            break
print("spoofed", b"SECRET" in got)
s.settimeout(5)
s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"CONTROL", (gw, 0))
print("control", b"CONTROL" in s.recvfrom(2000)[0])
"""
)
# A step granted NET_RAW sends its gateway (the host) echo requests with another job's address
SPOOF_SENDER = (
    IPV4
    + GATEWAY
    + r"""
import sys, time
icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"SECRET"
icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
packet = ipv4(sys.argv[1], gw, 1, icmp)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(5):
    raw.sendto(packet, (gw, 0))
    time.sleep(0.1)
print("sent as", sys.argv[1])
"""
)


def test_a_step_with_net_raw_cannot_reach_another_job_through_the_hosts_echo_replies(
    jobs_root, repo, docker_client
):
    """Red team: a step granted NET_RAW sent the host echo requests with another job's address
    as their source, and the host's replies carried its data to that job (any network, either
    engine). The host's reverse-path filter on the bridges (scripts/rp-filter.sh) drops them."""
    commit_file(repo, "receive.py", SPOOF_RECEIVER)
    commit_file(repo, "send.py", SPOOF_SENDER)
    receiver = subprocess.Popen(
        _cmd(jobs_root, "run", "hears", "--repo", str(repo), "--step", "python3 receive.py"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ws = jobs_root / "hears" / "workspace"
    try:
        wait_for(lambda: (ws / "ready").exists(), 60, "the receiving step")
        label = {"label": [f"logist.jobs-dir={jobs_root}", "logist.job=hears", "logist.step=1"]}
        [box] = docker_client.containers.list(filters=label)
        ip = box.attrs["NetworkSettings"]["Networks"][network_name("hears", jobs_root)]
        step = f"python3 send.py {ip['IPAddress']}"
        out = run_logist(
            jobs_root, "run", "spoofs", "--repo", str(repo), "--cap-add", "NET_RAW", "--step", step
        )
        assert out.returncode == 0 and "sent as" in out.stdout, out.stdout + out.stderr
        (ws / "sent").write_text("")
        heard, err = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
    assert receiver.returncode == 0, err
    assert heard.split() == ["spoofed", "False", "control", "True"], heard + err
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_a_failing_step_leaves_no_proxy_or_network(jobs_root, repo, outside, docker_client):
    egress, _ = outside
    out = _allowed(jobs_root, egress, "--repo", str(repo), "--step", "exit 3")
    assert out.returncode == 1, out.stderr
    assert left_behind(docker_client, jobs_root) == ([], [])


@pytest.mark.timeout(180)
def test_the_sweep_removes_the_proxy_and_network_a_killed_runner_left(
    jobs_root, repo, outside, docker_client
):
    egress, _ = outside
    runner = _started(jobs_root, egress, "killed", repo, "sleep 60", start_new_session=True)
    try:
        label = {"label": [f"logist.jobs-dir={jobs_root}", "logist.step=1"]}
        wait_for(lambda: docker_client.containers.list(filters=label), 60, "the step to run")
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.communicate(timeout=30)
    boxes, nets = left_behind(docker_client, jobs_root)
    assert len(nets) == 1 and {c.labels["logist.step"] for c in boxes} >= {"1", "proxy"}

    out = run_logist(jobs_root, "job", "cleanup", "--stale", "--older-than", "0s", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert left_behind(docker_client, jobs_root) == ([], [])


@pytest.mark.timeout(120)
def test_the_sweep_goes_on_past_an_orphan_network_the_engine_will_not_remove(
    jobs_root, docker_client
):
    """A container that is not logist's sits on one orphan network, so the engine keeps it:
    the sweep names it in `failed` (exit 4) and still removes the other orphans. (The engine
    lists networks in a new order each time: before the change, the sweep stopped at the kept
    one, leaving the orphans listed after it, 7 times in 8.)"""

    def orphan(job: str):
        labels = {"logist.managed": "true", "logist.job": job, "logist.jobs-dir": str(jobs_root)}
        labels["logist.step"] = "network"
        name = network_name(job, jobs_root)
        return docker_client.networks.create(name, check_duplicate=True, labels=labels)

    made = [orphan("kept")]
    squatter = docker_client.containers.run(
        BUSYBOX, ["sleep", "60"], detach=True, network=made[0].name, labels={"logist-test": "x"}
    )
    try:
        made += [orphan(f"free-{i}") for i in range(7)]

        out = run_logist(jobs_root, "job", "cleanup", "--stale", "--older-than", "0s", "--json")

        assert out.returncode == 4, out.stdout + out.stderr
        failed = json.loads(out.stdout)["failed"]
        assert [f["job"] for f in failed] == ["kept"] and made[0].name in failed[0]["error"]
        assert [n.name for n in left_behind(docker_client, jobs_root)[1]] == [made[0].name]
    finally:
        squatter.remove(force=True)
        for net in made:
            with contextlib.suppress(Exception):
                net.remove()


@pytest.mark.timeout(180)
def test_the_sweep_leaves_a_running_jobs_proxy_and_network_alone(
    jobs_root, repo, outside, docker_client
):
    """``cleanup --stale`` from cron while a job runs: its proxy and network are its own
    (their owner is alive), not orphans; the step still reaches the allowed host after."""
    egress, _ = outside
    step = "until [ -e go ]; do sleep 0.05; done; python3 client.py 'GET http://web.example.test/'"
    with ended(_started(jobs_root, egress, "alive", repo, step)) as runner:
        label = {"label": [f"logist.jobs-dir={jobs_root}", "logist.step=1"]}
        wait_for(lambda: docker_client.containers.list(filters=label), 60, "the step to run")
        before = left_behind(docker_client, jobs_root)
        out = run_logist(jobs_root, "job", "cleanup", "--stale", "--older-than", "0s", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["orphans_removed"] == 0
        after = left_behind(docker_client, jobs_root)
        assert [c.id for c in after[0]] == [c.id for c in before[0]]
        assert [n.id for n in after[1]] == [n.id for n in before[1]]
        (jobs_root / "alive" / "workspace" / "go").write_text("")
        stdout, stderr = runner.communicate(timeout=120)
    assert runner.returncode == 0, stderr
    assert _results(subprocess.CompletedProcess([], 0, stdout.decode(), "")) == {
        "GET http://web.example.test/": "200 hello-web"
    }
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_a_missing_proxy_image_exits_3_and_leaves_nothing(jobs_root, repo, outside, docker_client):
    egress, _ = outside
    missing = {"LOGIST_PROXY_IMAGE": "logist/absent:none"}
    out = _allowed(jobs_root, egress, "noproxy", "--repo", str(repo), "--step", "true", env=missing)
    assert out.returncode == 3, out.stderr
    assert "logist/absent:none" in out.stderr
    assert _status(jobs_root, "noproxy")["steps"][0]["state"] == "pending"
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_a_session_gets_the_proxy_and_leaves_nothing_when_it_stops(
    jobs_root, repo, outside, docker_client
):
    import logist

    egress, _ = outside
    env_before = dict(os.environ)
    os.environ["LOGIST_EGRESS_NETWORK"] = egress  # the operator's setting, as a CLI's would be
    try:
        rt = logist.Runtime(jobs_dir=jobs_root)
        with rt.session(repo=str(repo), allow_hosts=["web.example.test"]) as s:
            checks = ["GET http://web.example.test/", "GET http://other.example.test/"]
            r = s.exec(["python3", "client.py", *checks], timeout=60)
            assert r.exit_code == 0
            assert "GET http://web.example.test/ -> 200 hello-web" in r.output
            assert "GET http://other.example.test/ -> 403" in r.output
            assert len(left_behind(docker_client, jobs_root)[1]) == 1
        rt.close()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_default_bridge_jobs_get_a_network_of_their_own_removed_after(
    jobs_root, repo, docker_client
):
    started = time.time()
    out = run_logist(
        jobs_root, "run", "own", "--repo", str(repo), "--step", "cat /sys/class/net/eth0/address"
    )
    assert out.returncode == 0, out.stderr
    events = docker_client.events(
        since=int(started), until=int(time.time()) + 1, decode=True, filters={"type": "network"}
    )
    created = {e["Actor"]["Attributes"].get("name") for e in events if e["Action"] == "create"}
    assert network_name("own", jobs_root) in created
    assert left_behind(docker_client, jobs_root) == ([], [])


PROBE = """
import errno, socket, sys, time
for address in sys.argv[2:]:
    for _ in range(50):  # an IPv6 address is unusable for a moment (duplicate detection)
        try:
            socket.create_connection((address, int(sys.argv[1])), timeout=3).close()
            print("reached", address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                time.sleep(0.1)
                continue
            print("refused", address, type(exc).__name__)
        break
    else:
        print("refused", address, "unusable")
"""


def _host_addresses(net) -> list[str]:
    """The host's addresses on the network ``net`` once a container is on it: its gateway,
    and the IPv6 link-local addresses of its bridge (``fe80::...%eth0`` as a step names them)
    where the bridge has IPv6."""
    gateway = net.attrs["IPAM"]["Config"][0]["Gateway"]
    options = net.attrs.get("Options") or {}
    bridge = options.get("com.docker.network.bridge.name") or f"br-{net.id[:12]}"
    if not Path(f"/sys/class/net/{bridge}").exists():  # Podman's: its own name for it
        bridge = subprocess.run(
            ["podman", "network", "inspect", net.name, "--format", "{{.NetworkInterface}}"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    if Path(f"/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6").read_text().strip() == "1":
        return [gateway]

    def local() -> list[str]:
        shown = subprocess.run(
            ["ip", "-6", "-o", "addr", "show", "dev", bridge], capture_output=True, text=True
        ).stdout
        return [w.split("/")[0] for w in shown.split() if w.startswith("fe80:")]

    return [gateway, *(f"{a}%eth0" for a in wait_for(local, 10, f"{bridge}'s link-local"))]


def _probe_gateway(jobs_root, repo, docker_client, job_id: str, port: int, *extra: str) -> str:
    """Run a job whose step connects to the host's addresses on its own network (its gateway
    and the bridge's IPv6 link-local ones, which the test writes into the workspace once the
    network exists) at ``port``: a line for each."""
    step = f"while [ ! -s gw ]; do sleep 0.05; done; python3 probe.py {port} $(cat gw)"
    command = _cmd(jobs_root, "run", job_id, "--repo", str(repo), *extra, "--step", step)
    with ended(
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ) as runner:
        net = wait_for(
            lambda: docker_client.networks.list(names=[network_name(job_id, jobs_root)]),
            60,
            "the network",
        )[0]
        net.reload()
        ws = jobs_root / job_id / "workspace"
        wait_for(ws.is_dir, 60, "the workspace")
        label = {"label": [f"logist.jobs-dir={jobs_root}", "logist.step=1"]}
        wait_for(lambda: docker_client.containers.list(filters=label), 60, "the step")
        (ws / "gw").write_text(" ".join(_host_addresses(net)))
        out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    return out.strip()


def test_the_host_is_not_reachable_through_an_internal_networks_gateway(
    jobs_root, repo, outside, docker_client
):
    import socket

    egress, _ = outside
    commit_file(repo, "probe.py", PROBE)
    # the test's own, on the host, at every address (IPv6 too, where the host has it)
    try:
        server = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    except OSError:
        server = socket.create_server(("0.0.0.0", 0))
    port = server.getsockname()[1]
    try:
        # on a job's own bridge network the host answers at the gateway (docs/security.md)
        got = _probe_gateway(jobs_root, repo, docker_client, "gw1", port)
        assert got.splitlines()[0].startswith("reached"), got
        os.environ["LOGIST_EGRESS_NETWORK"] = egress
        try:
            allow = ("--allow-host", "web.example.test")
            got = _probe_gateway(jobs_root, repo, docker_client, "gw2", port, *allow)
        finally:
            del os.environ["LOGIST_EGRESS_NETWORK"]
        # neither its IPv4 gateway nor an IPv6 link-local address of its bridge
        assert got and all(line.startswith("refused") for line in got.splitlines()), got
    finally:
        server.close()


# a step granted NET_RAW writes UDP datagrams for the host (its address on the egress network)
# in frames addressed to the proxy's MAC: only a proxy that routes would pass them on
RAW = (
    IPV4
    + r"""
import os, sys
dst, port = sys.argv[1], int(sys.argv[2])
proxy = socket.gethostbyname(os.environ["HTTP_PROXY"].split("//")[1].rsplit(":", 1)[0])
socket.create_connection((proxy, 3128), timeout=5).close()  # its MAC is now in the ARP table
mac = next(l.split()[3] for l in open("/proc/net/arp") if l.split()[0] == proxy)
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect((proxy, 9))
src = probe.getsockname()[0]
own = open("/sys/class/net/eth0/address").read().strip()
data = b"routed-by-the-proxy"
udp = struct.pack("!HHHH", 40000, port, 8 + len(data), 0) + data
frame = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex(own.replace(":", "")) + b"\x08\x00"
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
raw.bind(("eth0", 0))
for _ in range(5):
    raw.send(frame + ipv4(src, dst, 17, udp))
print("sent")
"""
)


def test_a_step_with_net_raw_cannot_route_through_its_proxy(
    jobs_root, repo, outside, docker_client
):
    import socket

    egress, _ = outside
    net = docker_client.networks.get(egress)
    import ipaddress

    config = net.attrs["IPAM"]["Config"][0]  # the host's address on the egress network:
    host = config.get("Gateway") or str(ipaddress.ip_network(config["Subnet"])[1])
    commit_file(repo, "raw.py", RAW)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("0.0.0.0", 0))
    listener.settimeout(3)
    port = listener.getsockname()[1]
    try:
        out = _allowed(
            jobs_root,
            egress,
            "--repo",
            str(repo),
            "--cap-add",
            "NET_RAW",
            "--step",
            f"python3 raw.py {host} {port}",
        )
        assert out.returncode == 0 and out.stdout.strip() == "sent", out.stderr
        with pytest.raises(TimeoutError):
            got = listener.recvfrom(100)
            raise AssertionError(f"the proxy routed a step's datagram to the host: {got}")
    finally:
        listener.close()
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_a_network_a_killed_run_left_is_replaced_when_the_job_runs_again(
    jobs_root, repo, outside, docker_client
):
    egress, _ = outside
    name = network_name("again", jobs_root)
    labels = {"logist.managed": "true", "logist.job": "again", "logist.jobs-dir": str(jobs_root)}
    stale = docker_client.networks.create(
        name, driver="bridge", check_duplicate=True, labels={**labels, "logist.step": "network"}
    )
    labels["logist.step"] = "proxy"
    squatter = docker_client.containers.run(
        BUSYBOX, ["sleep", "60"], detach=True, network=stale.name, labels=labels
    )
    try:
        checks = ["GET http://web.example.test/"]
        allow = ("--allow-host", "web.example.test")
        out = _run(jobs_root, egress, "again", "--repo", str(repo), *allow, checks=checks)
        assert out.returncode == 0, out.stderr
        assert _results(out) == {"GET http://web.example.test/": "200 hello-web"}
        assert not docker_client.networks.list(names=[name])
    finally:
        with contextlib.suppress(Exception):
            squatter.remove(force=True)
        with contextlib.suppress(Exception):
            stale.remove()


@pytest.mark.timeout(180)
def test_a_job_of_the_same_id_in_another_jobs_root_leaves_a_running_job_alone(
    tmp_path, jobs_root, source_repo, docker_client
):
    """Network names are engine-wide: each jobs root's job `same` gets a network of its own
    (the root's hash in the name), and the second never takes the first's for a stale one."""
    other = tmp_path / "other-root"
    other.mkdir()
    for root, step in ((jobs_root, "until [ -e go ]; do sleep 0.05; done"), (other, "true")):
        out = run_logist(root, "job", "create", "same", "--repo", str(source_repo), "--step", step)
        assert out.returncode == 0, out.stderr
    command = _cmd(jobs_root, "job", "run", "same")
    with ended(
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ) as first:
        label = {"label": [f"logist.jobs-dir={jobs_root}", "logist.step=1"]}
        wait_for(lambda: docker_client.containers.list(filters=label), 60, "the first's step")
        second = run_logist(other, "job", "run", "same")
        assert second.returncode == 0, second.stderr
        (jobs_root / "same" / "workspace" / "go").write_text("")
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err


@pytest.mark.docker
def test_an_engine_error_while_making_the_jobs_network_is_tried_again(
    jobs_root, repo, docker_client, monkeypatch
):
    """Rootful Podman sometimes fails a network's creation when another network's interface
    goes while it lists the host's ("route ip+net: no such network interface", a 500 seen in
    CI): the creation is tried again instead of failing the job with exit 3."""
    import docker
    import requests

    from logist import networks

    make, failed = networks._create_network, []

    def flaky(cli, name, internal, tags):
        if not failed:
            failed.append(name)
            response = requests.Response()
            response.status_code = 500
            raise docker.errors.APIError("route ip+net: no such network interface", response)
        return make(cli, name, internal, tags)

    monkeypatch.setattr(networks, "_create_network", flaky)
    monkeypatch.setattr(networks, "_made_early", lambda run: False)  # the SDK path, as Podman's
    out = run_logist(jobs_root, "run", "flaky", "--repo", str(repo), "--step", "true")
    assert out.returncode == 0, out.stderr
    assert failed == [network_name("flaky", jobs_root)]
    assert left_behind(docker_client, jobs_root) == ([], [])
