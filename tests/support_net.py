"""The stand-in internet of the network tests: a network of the test's own (in 198.18.0.0/15, the
benchmarking range, or a private range for "an internal service") with a web server on it
under several names. No traffic goes anywhere else."""

from __future__ import annotations

import os
import random

from tests.conftest import BUSYBOX

NAMES = ("web.example.test", "other.example.test", "x.sub.example.test", "sub.example.test")
SERVE = (
    "mkdir -p /www && echo hello-web > /www/index.html && httpd -p 80 -h /www && "
    "httpd -p 8443 -h /www && exec httpd -f -p 443 -h /www"
)


def network_with_server(cli, prefix: str, subnets: list[str], aliases: tuple[str, ...]):
    """A network of the test's own on the first free one of ``subnets``, with a web server
    (``SERVE``) under ``aliases``: (network, server, its address)."""
    import docker

    last: Exception | None = None
    for subnet in subnets:
        name = f"logist-test-{prefix}-{os.getpid()}-{random.randrange(1 << 20)}"
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
        try:
            net = cli.networks.create(name, driver="bridge", ipam=ipam, check_duplicate=True)
        except docker.errors.APIError as exc:  # another worker's subnet
            last = exc
            continue
        server = cli.containers.run(
            BUSYBOX, ["sh", "-c", SERVE], detach=True, network=name, name=f"{name}-web"
        )
        net.disconnect(server)
        net.connect(server, aliases=list(aliases))
        server.reload()
        ip = server.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
        return net, server, ip
    raise AssertionError(f"no free subnet among {subnets[:3]}...: {last}")


def left_behind(cli, jobs_root) -> tuple[list, list]:
    """The containers (any state) and networks labelled for ``jobs_root``."""
    label = {"label": f"logist.jobs-dir={jobs_root}"}
    return cli.containers.list(all=True, filters=label), cli.networks.list(filters=label)
