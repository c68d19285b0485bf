"""The test nodes (engines in containers, ``tests/nodes.py``) and ``logist image push``, the
way images reach engines of a fleet without a registry."""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import sys
import tarfile
import time

import docker
import pytest

from logist import container_spec, containers
from logist.store import owner_id
from tests.faultproxy import FaultProxy
from tests.nodes import IMAGES, NODE_LABEL, OWNER_LABEL, reap_stale_nodes
from tests.support_containers import built_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BUSYBOX = "logist/busybox:latest"
MiB = 1 << 20


def image_id_on(node, image: str) -> str | None:
    cli = node.client()
    try:
        return cli.images.get(image).id
    except docker.errors.ImageNotFound:
        return None
    finally:
        cli.close()


@pytest.fixture
def tiny_image(docker_client):
    """An image of this test alone (``FROM logist/busybox`` with a label of its own): no node
    has it. Removed from the host afterwards (the nodes are the session's)."""
    tag = f"logist-test/push-{secrets.token_hex(4)}:1"
    dockerfile = f"FROM {BUSYBOX}\nLABEL logist.test-push={tag}\n"
    built_image(docker_client, tag, dockerfile)
    yield tag
    docker_client.images.remove(tag, force=True)


@pytest.mark.timeout(120)
def test_two_nodes_answer_as_separate_engines_with_the_images(running_nodes, record_property):
    a, b = running_nodes
    assert a.url.startswith("tcp://") and b.url.startswith("tcp://") and a.url != b.url
    ids = []
    for node in running_nodes:
        cli = node.client()
        try:
            ids.append(cli.info()["ID"])
            for image in IMAGES:
                assert cli.images.get(image).id  # loaded by the fixture
            # a container on the node's own default bridge (a step's default network)
            out = cli.containers.run(
                BUSYBOX, ["sh", "-c", "ip -4 route | grep -c default"], remove=True
            )
            assert out.strip() == b"1"
        finally:
            cli.close()
    assert ids[0] != ids[1], "two nodes must be two engines"
    for node in running_nodes:
        idle = node.memory()
        record_property(f"{node.name} timings", node.timings)
        record_property(f"{node.name} idle MiB", round(idle / MiB))
        print(f"{node.name}: {node.timings}, idle {idle / MiB:.0f} MiB", file=sys.stderr)
        assert idle < 400 * MiB, f"an idle node should cost ~80 MiB, not {idle / MiB:.0f}"


@pytest.mark.timeout(120)
def test_image_push_lands_an_image_on_both_nodes_then_skips_them(
    running_nodes, tiny_image, docker_client, logist
):
    a, b = running_nodes
    assert image_id_on(a, tiny_image) is None and image_id_on(b, tiny_image) is None
    wanted = docker_client.images.get(tiny_image).id
    try:
        out = logist("image", "push", tiny_image, "--engine", a.url, "--engine", b.url, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {
            "image": tiny_image,
            "pushed": [a.url, b.url],
            "skipped": [],
            "failed": [],
        }
        assert image_id_on(a, tiny_image) == wanted and image_id_on(b, tiny_image) == wanted

        again = logist("image", "push", tiny_image, "--engine", a.url, "--engine", b.url)
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("skipped") == 2 and "pushed" not in again.stderr, again.stderr
    finally:
        remove_image(running_nodes, tiny_image)


@pytest.mark.timeout(120)
def test_image_push_from_one_node_to_another(running_nodes, tiny_image, docker_client, logist):
    a, b = running_nodes
    wanted = docker_client.images.get(tiny_image).id
    try:
        assert logist("image", "push", tiny_image, "--engine", a.url).returncode == 0
        out = logist("image", "push", tiny_image, "--from", a.url, "--engine", b.url, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["pushed"] == [b.url]
        assert image_id_on(b, tiny_image) == wanted
    finally:
        remove_image(running_nodes, tiny_image)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["reset", "hang"])
def test_image_push_whose_source_fails_mid_way_exits_3_naming_the_source(
    running_nodes, tiny_image, logist, action
):
    """The source engine (behind a fault proxy) drops or never answers the save once the
    target's load has begun: exit 3 naming the source, nothing loaded on the target."""
    a, _ = running_nodes
    with FaultProxy() as proxy:
        rule = proxy.fail("GET", r"/images/.+/get$", action)
        out = logist(
            "image", "push", tiny_image, "--from", proxy.host, "--engine", a.url,
            env={"LOGIST_DOCKER_TIMEOUT": "3"},
        )  # fmt: skip
        assert rule.fired, proxy.seen
    assert out.returncode == 3, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert f"source engine at {proxy.host}" in last and a.url not in last, out.stderr
    assert image_id_on(a, tiny_image) is None


def remove_image(nodes, image: str) -> None:
    for node in nodes:
        cli = node.client()
        try:
            cli.images.remove(image, force=True)
        except docker.errors.ImageNotFound:
            pass
        finally:
            cli.close()


@pytest.mark.timeout(60)
def test_image_push_to_an_unreachable_engine_exits_3_naming_it(running_nodes, logist):
    a, _ = running_nodes
    bad = "tcp://127.0.0.1:1"
    out = logist("image", "push", BUSYBOX, "--engine", a.url, "--engine", bad, "--json")
    assert out.returncode == 3, out.stderr
    assert bad in out.stderr and "unreachable" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    report = json.loads(out.stdout)
    assert report["skipped"] == [a.url]  # the reachable target is still served
    assert [f["engine"] for f in report["failed"]] == [bad]


@pytest.mark.timeout(60)
def test_image_push_of_an_image_missing_locally_exits_3_naming_it(running_nodes, logist):
    a, _ = running_nodes
    missing = f"logist-test/absent-{secrets.token_hex(4)}:1"
    out = logist("image", "push", missing, "--engine", a.url)
    assert out.returncode == 3, out.stderr
    assert missing in out.stderr and "not on the source engine" in out.stderr
    assert image_id_on(a, missing) is None


@pytest.mark.timeout(120)
def test_a_killed_node_is_unreachable_then_comes_back_with_its_images(running_nodes, logist):
    _, b = running_nodes
    cli = b.client()
    engine_id = cli.info()["ID"]
    cli.close()
    b.kill()
    try:
        assert not b.answers()
        # packets to a lost host vanish: without an answer, the request deadline decides
        out = logist(
            "image", "push", BUSYBOX, "--engine", b.url, env={"LOGIST_DOCKER_TIMEOUT": "5"}
        )
        assert out.returncode == 3, out.stderr
        assert b.url in out.stderr and "unreachable" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 2, out.stderr  # progress + the error
    finally:
        took = b.start()
    print(f"{b.name}: restarted in {took:.2f} s", file=sys.stderr)
    cli = b.client()
    try:
        assert cli.info()["ID"] == engine_id  # the same engine, at the same URL
        assert all(cli.images.get(image) for image in IMAGES)  # its storage survived
    finally:
        cli.close()


@pytest.mark.timeout(120)
def test_image_push_streams_the_archive_without_holding_it(running_nodes, docker_client):
    """The step image's archive (~270 MB) goes through a logist process of far less memory."""
    _, b = running_nodes
    image = "logist/step:latest"
    cli = b.client()
    try:
        cli.images.remove(image, force=True)
    finally:
        cli.close()
    size = docker_client.images.get(image).attrs["Size"]
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.monotonic()\n"
        "r = subprocess.run([sys.executable, '-m', 'logist', 'image', 'push', sys.argv[1],"
        " '--engine', sys.argv[2]], capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(r.returncode, peak, time.monotonic() - t, repr(r.stderr))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe, image, b.url], capture_output=True, text=True, timeout=100
        )
    finally:
        if image_id_on(b, image) is None:  # the nodes are the session's: leave them whole
            b.load([image])
    code, peak, seconds, stderr = out.stdout.split(" ", 3)
    assert code == "0", stderr
    print(
        f"push of {image} ({size / MiB:.0f} MiB): {float(seconds):.1f} s, "
        f"peak RSS {int(peak) / MiB:.0f} MiB",
        file=sys.stderr,
    )
    assert image_id_on(b, image) == docker_client.images.get(image).id
    assert int(peak) < min(size / 2, 150 * MiB), "the archive must be streamed, not held"


@pytest.mark.timeout(120)
def test_a_named_volume_on_a_node_round_trips_archives_through_a_container(
    running_nodes, jobs_root
):
    """What volume workspaces rely on: put_archive into a volume, a container on the node
    working in it, get_archive of its result; then ``leftovers`` sees, and no longer sees,
    the labelled container and volume."""
    a, _ = running_nodes
    cli = a.client()
    volume = f"logist-roundtrip-{secrets.token_hex(4)}"
    labels = container_spec.labels("roundtrip", "h", jobs_root, owner_id())
    try:
        started = time.monotonic()
        cli.volumes.create(volume, labels=labels)
        spec = container_spec.ContainerSpec(
            image=BUSYBOX,
            command=["sh", "-c", "tr a-z A-Z < /workspace/in.txt > /workspace/out.txt"],
            job_id="roundtrip",
            step="h",
            jobs_root=jobs_root,
            owner=owner_id(),
            mounts=[docker.types.Mount("/workspace", volume, type="volume")],
        )
        container = containers.create(cli, spec)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = b"hello from the host\n"
            info = tarfile.TarInfo("in.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        assert container.put_archive("/workspace", buf.getvalue())
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0
        stream, _ = container.get_archive("/workspace/out.txt")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("out.txt")
            assert member is not None and member.read() == b"HELLO FROM THE HOST\n"
        took = time.monotonic() - started
        print(f"volume round trip on {a.name}: {took:.2f} s", file=sys.stderr)
        assert sorted(a.leftovers(jobs_root)) == [
            f"container {container.name}",
            f"volume {volume}",
        ]
    finally:
        a.remove_leftovers(jobs_root)
        cli.close()
    assert a.leftovers(jobs_root) == []


@pytest.mark.timeout(60)
def test_stale_test_nodes_of_a_dead_session_are_reaped_and_live_ones_kept(
    running_nodes, docker_client
):
    dead = {NODE_LABEL: "deadbeef", OWNER_LABEL: f"{socket.gethostname()}:999999999:0"}
    name = f"logist-test-node-stale-{secrets.token_hex(4)}"
    docker_client.volumes.create(name, labels=dead)
    docker_client.containers.create(BUSYBOX, ["true"], name=name, labels=dead)
    reaped = reap_stale_nodes(docker_client)
    assert f"container {name}" in reaped and f"volume {name}" in reaped
    for node in running_nodes:
        assert node.container().status == "running" and node.answers()


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_allow_host_on_a_remote_engine_runs_the_proxy_there(
    running_nodes, logist, jobs_root, source_repo
):
    """The job's network and proxy are made on the job's engine (here a node over tcp://, its
    workspace a volume); the proxy image goes there like any image (``image push``)."""
    from tests.helpers import commit_file
    from tests.support_net import NAMES, SERVE
    from tests.test_networks import CLIENT

    node = running_nodes[0]
    pushed = logist("image", "push", "logist/proxy:latest", "--engine", node.url)
    assert pushed.returncode == 0, pushed.stderr
    cli = node.client()
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="198.18.42.0/24")])
    net = cli.networks.create(f"logist-test-out-{os.getpid()}", driver="bridge", ipam=ipam)
    server = cli.containers.create("logist/busybox:latest", ["sh", "-c", SERVE], network=net.name)
    try:
        net.disconnect(server)
        net.connect(server, aliases=list(NAMES))
        server.start()
        commit_file(source_repo, "client.py", CLIENT)
        checks = ["GET http://web.example.test/", "GET http://other.example.test/"]
        out = logist(
            "--engine",
            node.url,
            "run",
            "remote-egress",
            "--repo",
            str(source_repo),
            "--allow-host",
            "web.example.test",
            "--step",
            "python3 client.py " + " ".join(f"'{c}'" for c in checks),
            env={"LOGIST_EGRESS_NETWORK": net.name},
        )
        assert out.returncode == 0, out.stderr
        assert "GET http://web.example.test/ -> 200 hello-web" in out.stdout
        assert "GET http://other.example.test/ -> 403" in out.stdout
        assert node.leftovers(jobs_root) == []
    finally:
        server.remove(force=True)
        net.remove()
        cli.close()
