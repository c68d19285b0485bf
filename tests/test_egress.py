"""Egress by name without an engine: the patterns, the grants, the proxy's configuration made
from them, its log read back, where a spec file may set them, and the proxy's entry script
(run with ``sh`` and a stand-in Squid)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

import logist
from logist.config import Config, check_spec_file
from logist.egress import (
    BLOCKED,
    DeniedLog,
    denied_key,
    denied_lines,
    parse_grants,
    parse_pattern,
    parse_patterns,
    squid_config,
)
from logist.errors import UsageError
from tests.helpers import make_repo

ENTRY = Path(__file__).resolve().parent.parent / "images" / "proxy" / "entrypoint.sh"


@pytest.mark.parametrize(
    ("text", "name", "ports"),
    [
        ("api.example.com", "api.example.com", (80, 443)),
        ("API.Example.COM", "api.example.com", (80, 443)),
        ("files.example.com:8443", "files.example.com", (8443,)),
        ("*.pypi.org", "*.pypi.org", (80, 443)),
        ("*.pypi.org:443", "*.pypi.org", (443,)),
        ("localhost", "localhost", (80, 443)),
        ("203.0.113.5:8080", "203.0.113.5", (8080,)),
    ],
)
def test_a_pattern_is_a_name_and_its_ports(text, name, ports):
    pattern = parse_pattern(text)
    assert (pattern.name, pattern.ports) == (name, ports)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "*",
        "*.",
        "a b.com",
        "a.com:0",
        "a.com:65536",
        "a.com:44x",
        "a.com:",
        "-a.com",
        "a-.com",
        "a..com",
        "a.com.",
        "1.2.3",
        "*.1.2.3.4",
        "**.a.com",
        "a.*.com",
        "x*.a.com",
        "héllo.com",
        "a.com\nhttp_access allow all",
        "a.com http_access",
        "a.com:443:1",
        "[::1]:80",
        "a" * 64 + ".com",
        "http://a.com",
        "a.com/path",
        "a.com#x",
        "%61.com",
        7,
        None,
    ],
)
def test_a_bad_pattern_is_refused_with_the_forms_named(text):
    with pytest.raises(UsageError, match="HOST, HOST:PORT or"):
        parse_pattern(text)


@pytest.mark.parametrize(
    "text",
    ["\u212aelvin.example.com", "api.example.\u212a", "\u0130.example.com", "a.com:\uff18\uff10"],
)
def test_a_non_ascii_pattern_is_refused_even_when_its_lower_case_is_ascii(text):
    """The Kelvin sign (U+212A) lower-cases to ``k``: the pattern was lower-cased before its
    ASCII check, so ``\u212aelvin.example.com`` was taken as ``kelvin.example.com`` (red team,
    12-06)."""
    with pytest.raises(UsageError, match="HOST, HOST:PORT or") as refused:
        parse_pattern(text)
    assert refused.value.exit_code == 2
    with pytest.raises(UsageError):
        parse_patterns(["ok.example.com", text])


def test_patterns_must_be_a_bounded_list():
    assert parse_patterns(None) == []
    assert len(parse_patterns(["a.com", "A.com", "b.com"])) == 2
    with pytest.raises(UsageError, match="a list"):
        parse_patterns("a.com")
    with pytest.raises(UsageError, match="at most 256"):
        parse_patterns([f"h{i}.com" for i in range(257)])


def test_a_wildcard_covers_subdomains_not_its_apex_nor_other_ports():
    wild = parse_pattern("*.example.com")
    assert wild.covers(parse_pattern("a.example.com"))
    assert wild.covers(parse_pattern("*.b.example.com"))
    assert not wild.covers(parse_pattern("example.com"))
    assert not wild.covers(parse_pattern("a.example.com:8443"))
    assert not wild.covers(parse_pattern("aexample.com"))
    assert parse_pattern("a.com").covers(parse_pattern("a.com:443"))
    assert not parse_pattern("a.com:443").covers(parse_pattern("a.com"))


def test_grants_are_cidr_ranges_normalised():
    assert parse_grants(["10.1.2.3/16", "fd00::1/64"]) == ["10.1.0.0/16", "fd00::/64"]
    for bad in (["10.0.0.0/33"], ["ten"], ["10.0.0.0/8 10.0.0.0/8"], "10.0.0.0/8", [5]):
        with pytest.raises(UsageError, match="allow_private"):
            parse_grants(bad)


def test_the_configuration_allows_each_pattern_only_and_looks_up_no_other_name():
    """The name and the port come first on every rule: a name no pattern allows is refused
    before the lookup a ``dst`` needs (red team, 12-06: ``deny blocked`` came first, so Squid
    looked up every name a step asked for, and the names reached DNS servers outside)."""
    conf = squid_config(parse_patterns(["a.com", "*.b.org:8443"]), [], ["10.9.8.0/24"])
    lines = conf.splitlines()
    access = [line for line in lines if line.startswith("http_access")]
    assert access == [
        "http_access deny !steps",  # another container on the egress network: refused first
        "http_access deny host0 port0 blocked",
        "http_access allow host0 port0",
        "http_access deny host1 port1 blocked",
        "http_access allow host1 port1",
        "http_access deny all",
    ]
    blocked_acl = next(line for line in lines if line.startswith("acl blocked dst "))
    assert set(blocked_acl.split()[3:]) == set(BLOCKED)
    for blocked in ("127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "fe80::/10"):
        assert blocked in BLOCKED
    for embeds_ipv4 in ("64:ff9b::/96", "2002::/16"):
        assert embeds_ipv4 in BLOCKED
    assert "acl steps src 10.9.8.0/24" in lines
    assert "acl host0 dstdomain -n a.com" in lines and "acl port0 port 80 443" in lines
    assert r"acl host1 dstdom_regex -n -i ^[a-z0-9.-]+\.b\.org$" in lines
    assert "acl port1 port 8443" in lines
    assert "via off" in lines and "forwarded_for delete" in lines and "cache deny all" in lines
    for rule in access:  # the looked-up ACL only after a name and a port matched
        words = rule.split()[2:]
        if "blocked" in words:
            assert words[0].startswith("host") and words[1].startswith("port")
            assert words.index("blocked") == 2


def test_a_grant_carves_its_range_out_of_the_blocked_ones():
    """Squid's ``dst`` matches when any address of the name does: ``deny blocked !granted``
    let a name with one granted address reach its other, blocked ones (red team, 12-06)."""
    conf = squid_config(parse_patterns(["inside.corp"]), ["10.20.0.0/16"], ["10.9.8.0/24"])
    blocked = next(line for line in conf.splitlines() if line.startswith("acl blocked dst "))
    ranges = [ipaddress.ip_network(r) for r in blocked.split()[3:]]
    inside = ipaddress.ip_address("10.20.3.4")
    assert not any(inside in r for r in ranges)
    for still in ("10.21.0.1", "10.19.255.255", "10.0.0.1", "127.0.0.1", "169.254.169.254"):
        assert any(ipaddress.ip_address(still) in r for r in ranges), still
    assert "granted" not in conf
    everything = squid_config(parse_patterns(["a.com"]), ["0.0.0.0/0", "::/0"], ["10.9.8.0/24"])
    assert "acl blocked dst 0.0.0.0/32" in everything  # nothing left blocked: still valid


def test_the_terminal_says_how_many_more_hosts_and_requests_were_refused():
    egress = {"denied": {f"h{i:02}.example:443": 1 for i in range(25)}, "denied_other": 234}
    lines = denied_lines("j", 1, egress)
    assert len(lines) == 21
    assert (
        lines[-1]
        == "logist: j: step 1: egress refused: 5 more hosts, and 234 more requests to other hosts"
    )
    assert denied_lines("j", 1, {"denied": {"a:80": 1}, "denied_other": 0}) == [
        "logist: j: step 1: egress refused: a:80 (1 request)"
    ]


def test_the_proxy_log_counts_refused_requests_by_host_and_port():
    log = DeniedLog()
    log.feed(b"2026/12/05 10:47:24| Accepting HTTP Socket connections at conn2\nL TCP_DEN")
    assert log.ready
    log.feed(b"IED CONNECT evil.example:443\nL TCP_MISS GET http://ok.example/\n")
    log.feed(b"L TCP_DENIED GET http://evil.example/x\nL TCP_DENIED GET http://evil.example:81/\n")
    log.feed(b"L TCP_DENIED CONNECT evil.example:443\n")
    assert log.take() == {
        "denied": {"evil.example:443": 2, "evil.example:80": 1, "evil.example:81": 1}
    }
    assert log.take() == {"denied": {}}


def test_the_proxy_log_is_bounded_against_a_flood_of_names_and_long_lines():
    log = DeniedLog()
    for i in range(150):
        log.feed(f"L TCP_DENIED GET http://h{i}.example/\n".encode())
    log.feed(b"L TCP_DENIED GET http://" + b"a" * 10_000 + b"\n")
    log.feed(b"L TCP_DENIED GET http://\x1b[31mred/\n")
    taken = log.take()
    # 50 names past the cap and the unreadable one; the over-long line is dropped
    assert len(taken["denied"]) == 100 and taken["denied_other"] == 51
    assert denied_key(b"GET", b"http://\x1b[31mred/") == "invalid"
    assert denied_key(b"GET", b"http://user@h.example:8080/a:b") == "h.example:8080"
    assert denied_key(b"CONNECT", b"h.example:22") == "h.example:22"
    assert denied_key(b"GET", b"https://h.example/") == "h.example:443"


def test_one_terminal_line_per_refused_host_bounded():
    lines = denied_lines("j", 2, {"denied": {f"h{i}:80": i + 1 for i in range(25)}})
    assert lines[0] == "logist: j: step 2: egress refused: h24:80 (25 requests)"
    assert len(lines) == 21 and lines[-1].endswith("5 more hosts")
    assert denied_lines("j", 1, {"denied": {}}) == []


# --- where the settings may come from ----------------------------------------------------------


@pytest.fixture
def rt(tmp_path):
    runtime = logist.Runtime(jobs_dir=tmp_path / "jobs")
    yield runtime
    runtime.close()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"allow_hosts": ["bad host"]}, "HOST, HOST:PORT"),
        ({"allow_hosts": ["a.com"], "network": "none"}, "not network none"),
        ({"allow_hosts": ["a.com"], "network": "host"}, "not network host"),
        ({"allow_private": ["10.0.0.0/8"]}, "only opens the proxy"),
        ({"allow_hosts": ["a.com"], "allow_private": ["nope"]}, "a CIDR range"),
    ],
)
def test_bad_egress_settings_exit_2_and_make_no_job(rt, tmp_path, spec, message):
    repo = make_repo(tmp_path / "src")
    with pytest.raises(UsageError, match=message) as caught:
        rt.create(repo=str(repo), steps=["true"], **spec)
    assert caught.value.exit_code == 2
    assert not any((tmp_path / "jobs").iterdir())


def test_the_api_may_grant_private_ranges_like_the_command_line(rt, tmp_path):
    repo = make_repo(tmp_path / "src")
    job_id = rt.create(
        repo=str(repo), steps=["true"], allow_hosts=["a.com"], allow_private=["10.0.0.0/8"]
    )
    view = rt.status(job_id)
    assert view["allow_hosts"] == ["a.com"] and view["allow_private"] == ["10.0.0.0/8"]
    assert view["steps"][0]["egress"] == {"denied": {}}


def _config(defaults=None) -> Config:
    from logist.config import _allow

    return Config(path="cfg.yaml", defaults=defaults or {}, allow=_allow(None), bounds={})


def test_a_spec_file_narrows_the_configurations_allow_list_and_never_widens_it():
    config = _config({"allow_hosts": ["*.example.com", "pypi.org"]})
    check_spec_file({"allow_hosts": ["a.example.com", "pypi.org:443"]}, {}, config, "s.yaml")
    for wider in (["evil.com"], ["example.com"], ["a.example.com:22"], []):
        with pytest.raises(UsageError, match="may only narrow"):
            check_spec_file({"allow_hosts": wider}, {}, config, "s.yaml")
    # the command line's list wins over the spec's: nothing for the spec to widen
    check_spec_file({"allow_hosts": ["evil.com"]}, {"allow_hosts": ["a.com"]}, config, "s.yaml")
    # without a trusted list, a spec's list narrows the job's open network
    check_spec_file({"allow_hosts": ["evil.com"]}, {}, _config(), "s.yaml")


def test_a_spec_file_never_grants_private_ranges():
    with pytest.raises(UsageError, match="cannot grant"):
        check_spec_file({"allow_private": ["10.0.0.0/8"]}, {}, _config(), "s.yaml")


# --- the proxy's entry script ------------------------------------------------------------------


def _entry(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "squid"
    fake.write_text('#!/bin/sh\necho "squid $*"\necho "conf=${LOGIST_PROXY_CONF:-unset}"\n')
    fake.chmod(0o755)
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOGIST_PROXY_DIR": str(tmp_path)}
    return subprocess.run(
        ["sh", str(ENTRY)], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def test_the_entry_script_writes_the_configuration_privately_and_runs_squid_on_it(tmp_path):
    conf = "http_port 3128\nhttp_access deny all"
    out = _entry(tmp_path, {"LOGIST_PROXY_CONF": conf})
    assert out.returncode == 0, out.stderr
    written = tmp_path / "squid.conf"
    assert out.stdout.splitlines() == [f"squid -N -f {written}", "conf=unset"]
    assert written.read_text() == conf + "\n"
    assert written.stat().st_mode & 0o077 == 0


def test_the_entry_script_refuses_to_run_without_a_configuration(tmp_path):
    out = _entry(tmp_path, {})
    assert out.returncode == 2 and "LOGIST_PROXY_CONF is empty" in out.stderr
    assert not (tmp_path / "squid.conf").exists()


def test_the_entry_script_is_executable_in_the_image():
    assert os.access(ENTRY, os.X_OK)
