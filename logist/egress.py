"""Egress by name (contract v3): the ``--allow-host`` patterns, the ``--allow-private`` grants,
the job's proxy configuration made from them (Squid's), and the proxy's log of refused
requests read back per step. Pure logic: ``logist/networks.py`` runs the proxy.

A pattern is ``HOST`` (ports 80 and 443), ``HOST:PORT`` or ``*.DOMAIN[:PORT]`` (any subdomain,
not the apex). Names are lowercase DNS names (or IPv4 literals); nothing else reaches the
configuration, so no value of a spec file can add a line to it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from logist.errors import UsageError

PROXY_PORT = 3128
DEFAULT_PORTS = (80, 443)
MAX_PATTERNS = 256  # a spec's list, bounded like everything untrusted
MAX_GRANTS = 64
MAX_DENIED_KEYS = 100  # distinct HOST:PORT keys recorded per step; more are only counted
MAX_LINE = 8192  # a proxy log line longer than this is dropped (a step chooses its URLs)
READY = b"Accepting HTTP Socket connections"  # Squid's line once it listens

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_KEY_RE = re.compile(r"[a-z0-9._-]{1,253}:\d{1,5}")

# Never reached through the proxy unless granted: loopback, private, link-local (cloud
# metadata), carrier-grade NAT (some clouds' metadata), "this network", multicast, reserved.
BLOCKED = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "64:ff9b::/96",  # NAT64: an IPv4 address inside
    "64:ff9b:1::/48",
    "2002::/16",  # 6to4: an IPv4 address inside
    "2001::/32",  # Teredo
    "100::/64",  # discard
)


@dataclass(frozen=True)
class Pattern:
    """One ``--allow-host``: a name (``*.`` kept for a wildcard) and its ports."""

    name: str
    ports: tuple[int, ...]

    @property
    def wildcard(self) -> bool:
        return self.name.startswith("*.")

    def __str__(self) -> str:
        if self.ports == DEFAULT_PORTS:
            return self.name
        return f"{self.name}:{self.ports[0]}"

    def covers(self, other: Pattern) -> bool:
        """Whether every host and port ``other`` allows is allowed by this pattern."""
        if not set(other.ports) <= set(self.ports):
            return False
        if not self.wildcard:
            return other.name == self.name
        suffix = self.name[1:]  # ".example.com"
        return other.name.endswith(suffix) and other.name != suffix[1:]


def parse_pattern(text: Any) -> Pattern:
    """A pattern from ``--allow-host`` or ``allow_hosts``.

    Raises:
        UsageError: not ``HOST``, ``HOST:PORT`` or ``*.DOMAIN[:PORT]`` (exit 2).
    """
    if not isinstance(text, str) or len(text) > 260 or not text.isascii():
        raise _bad(text)  # ASCII before lower(): the Kelvin sign would become a "k"
    name, sep, port = text.strip().lower().rpartition(":")
    if not sep:
        name, port = port, ""
    ports = DEFAULT_PORTS
    if sep:
        if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad(text)
        ports = (int(port),)
    bare = name[2:] if name.startswith("*.") else name
    if len(bare) > 253 or not bare.isascii() or not _NAME_RE.fullmatch(bare):
        raise _bad(text)
    address = _is_ip(bare)
    if address and name.startswith("*."):
        raise _bad(text)
    if not address and bare.replace(".", "").isdigit():
        raise _bad(text)  # digits and dots that are no address: a typo, never a name
    return Pattern(name, ports)


def parse_patterns(values: Any) -> list[Pattern]:
    """``allow_hosts``' patterns (deduplicated, in order).

    Raises:
        UsageError: not a list of patterns, or too many.
    """
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise UsageError(f"invalid value for allow_hosts: {str(values)[:80]!r} (a list of hosts)")
    if len(values) > MAX_PATTERNS:
        raise UsageError(f"allow_hosts has {len(values)} patterns; at most {MAX_PATTERNS}")
    return list(dict.fromkeys(parse_pattern(v) for v in values))


def parse_grants(values: Any) -> list[str]:
    """``--allow-private`` ranges, normalised (``10.1.2.3/8`` -> ``10.0.0.0/8``).

    Raises:
        UsageError: not a CIDR (exit 2).
    """
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise UsageError("invalid value for allow_private: a list of CIDR ranges")
    if len(values) > MAX_GRANTS:
        raise UsageError(f"allow_private has {len(values)} ranges; at most {MAX_GRANTS}")
    out = []
    for value in values:
        try:
            if not isinstance(value, str) or not value.isascii():
                raise ValueError(value)
            out.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise UsageError(
                f"invalid value for allow_private: {str(value)[:80]!r} (a CIDR range such as "
                "10.20.0.0/16)"
            ) from None
    return list(dict.fromkeys(out))


def _is_ip(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _bad(text: Any) -> UsageError:
    return UsageError(
        f"invalid value for allow_hosts: {str(text)[:80]!r} (HOST, HOST:PORT or "
        "*.DOMAIN[:PORT], e.g. api.example.com or '*.pypi.org')"
    )


def squid_config(patterns: list[Pattern], grants: list[str], clients: list[str]) -> str:
    """The proxy's whole configuration: listen on ``PROXY_PORT``, for ``clients`` (the job's
    internal network's subnets) only, not another container on the egress network; for each
    pattern, its names
    and ports (plain HTTP and CONNECT) are allowed unless the name has an address in a blocked
    range that ``grants`` do not cover; everything else is refused. The name and port are
    checked first, so a name no pattern allows is never looked up (no DNS for it: a step cannot
    send data out in the names it asks for). No cache, no disk, no forwarded headers; each
    request logged on stdout as one ``L STATUS METHOD URL`` line."""
    lines = [
        f"http_port {PROXY_PORT}",
        "pid_filename none",
        "cache_log stdio:/dev/stderr",
        "logformat logist L %Ss %rm %ru",
        "access_log stdio:/dev/stdout logist",
        "cache deny all",
        "cache_mem 0 MB",
        "memory_pools off",
        "netdb_filename none",
        "pinger_enable off",
        "coredump_dir /tmp",
        "via off",
        "forwarded_for delete",
        "httpd_suppress_version_string on",
        "shutdown_lifetime 0 seconds",
        "max_filedescriptors 4096",
        "read_ahead_gap 4 MB",  # throughput: reads ahead of a slow client (16 KB by default)
    ]
    if not clients:
        raise ValueError("the proxy needs the subnets of its clients")
    lines.append("acl steps src " + " ".join(str(ipaddress.ip_network(c)) for c in clients))
    lines.append("http_access deny !steps")
    # one address in a range still blocked refuses the name, whatever its other addresses
    lines.append("acl blocked dst " + " ".join(blocked_ranges(grants)))
    for i, p in enumerate(patterns):
        if p.wildcard:
            suffix = re.escape(p.name[1:])
            lines.append(f"acl host{i} dstdom_regex -n -i ^[a-z0-9.-]+{suffix}$")
        else:
            lines.append(f"acl host{i} dstdomain -n {p.name}")
        lines.append(f"acl port{i} port {' '.join(map(str, p.ports))}")
        # left to right, stopping at the first miss: the lookup (`dst`) comes last
        lines.append(f"http_access deny host{i} port{i} blocked")
        lines.append(f"http_access allow host{i} port{i}")
    lines.append("http_access deny all")
    return "\n".join(lines) + "\n"


def blocked_ranges(grants: list[str]) -> list[str]:
    """``BLOCKED`` less the granted ranges (a grant inside a blocked range carves it out)."""
    nets = [ipaddress.ip_network(b) for b in BLOCKED]
    for grant in map(ipaddress.ip_network, grants):
        out = []
        for net in nets:
            if net.version != grant.version or not net.overlaps(grant):
                out.append(net)
            elif not grant.supernet_of(net):  # type: ignore[arg-type]
                out.extend(net.address_exclude(grant))  # type: ignore[arg-type]
        nets = out
    return [str(n) for n in sorted(nets, key=lambda n: (n.version, n))] or ["0.0.0.0/32"]


@dataclass
class DeniedLog:
    """The proxy's output, fed as it comes: its refused requests counted by ``HOST:PORT``
    until ``take`` hands them over. Bounded: a line over ``MAX_LINE`` is dropped, at most
    ``MAX_DENIED_KEYS`` keys are kept (the rest counted in ``other``)."""

    counts: dict[str, int] = field(default_factory=dict)
    other: int = 0
    ready: bool = False
    tail: list[bytes] = field(default_factory=list)  # the last lines, for an error message
    _buf: bytes = b""

    def feed(self, chunk: bytes) -> None:
        data = self._buf + chunk
        *lines, rest = data.split(b"\n")
        self._buf = rest if len(rest) <= MAX_LINE else b""
        for line in lines:
            if len(line) <= MAX_LINE:
                self._line(line)

    def _line(self, line: bytes) -> None:
        if line.startswith(b"L "):
            parts = line.split(b" ")
            if len(parts) == 4 and b"DENIED" in parts[1]:
                self._count(denied_key(parts[2], parts[3]))
            return
        if READY in line:
            self.ready = True
        self.tail = [*self.tail[-4:], line[:300]]

    def _count(self, key: str) -> None:
        if key in self.counts or len(self.counts) < MAX_DENIED_KEYS:
            self.counts[key] = self.counts.get(key, 0) + 1
        else:
            self.other += 1

    def take(self) -> dict[str, Any]:
        """What was refused since the last take: ``{"denied": {KEY: n}}`` (and ``other``)."""
        out: dict[str, Any] = {"denied": dict(sorted(self.counts.items()))}
        if self.other:
            out["denied_other"] = self.other
        self.counts, self.other = {}, 0
        return out


def denied_key(method: bytes, url: bytes) -> str:
    """``HOST:PORT`` of a refused request (``CONNECT host:port``, or a URL's host and port);
    ``invalid`` for what is not a plain name or address."""
    text = url.decode("ascii", "replace").lower()
    port = 443 if method == b"CONNECT" else 80
    if "://" in text:
        scheme, _, text = text.partition("://")
        port = {"https": 443, "ftp": 21}.get(scheme, 80) if method != b"CONNECT" else port
        text = text.split("/", 1)[0].rsplit("@", 1)[-1]
    host, sep, given = text.rpartition(":")
    if not sep or "]" in given:
        host = text
    elif given.isdigit():
        port = int(given)
    key = f"{host}:{port}"
    return key if _KEY_RE.fullmatch(key) else "invalid"


def denied_lines(job_id: str, index: int, egress: dict[str, Any], limit: int = 20) -> list[str]:
    """One terminal line per refused host of a step (at most ``limit``, then how many more)."""
    denied = egress.get("denied") or {}
    items = sorted(denied.items(), key=lambda kv: (-kv[1], kv[0]))
    out = [
        f"logist: {job_id}: step {index}: egress refused: {key} ({n} request{'s' * (n != 1)})"
        for key, n in items[:limit]
    ]
    more = len(items) - limit + (1 if egress.get("denied_other") else 0)
    if more > 0:
        other = egress.get("denied_other") or 0
        hosts = len(items) - limit
        text = f"{hosts} more hosts" if hosts > 0 else ""
        if other:
            text += f"{', and ' if text else ''}{other} more requests to other hosts"
        out.append(f"logist: {job_id}: step {index}: egress refused: {text}")
    return out
