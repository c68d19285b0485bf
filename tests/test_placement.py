"""Engine URLs and placement (pure logic: reachability is faked here; the nodes' tests in
test_engines.py use real engines)."""

from __future__ import annotations

import threading

import pytest

from logist import engines
from logist.errors import EngineUnavailable, UsageError

A, B, C = "tcp://10.0.0.1:2375", "tcp://10.0.0.2:2375", "ssh://me@host"


def test_engine_urls_are_parsed_from_a_comma_separated_list_without_duplicates():
    assert engines.parse(f" {A}/, {B},,{A}") == [A, B]
    assert engines.parse([C, "unix:///run/docker.sock"]) == [C, "unix:///run/docker.sock"]


@pytest.mark.parametrize("bad", ["10.0.0.1:2375", "docker", "ftp://x"])
def test_an_engine_without_a_known_scheme_is_refused_with_the_rule(bad):
    with pytest.raises(UsageError, match="unix://PATH, tcp://HOST:PORT or ssh://"):
        engines.parse(bad)


def test_a_runtimes_engines_default_to_the_one_the_sdk_finds(monkeypatch, tmp_path):
    from logist import Runtime

    monkeypatch.delenv("LOGIST_ENGINES", raising=False)
    assert Runtime(tmp_path).engines == ["default"]
    assert engines.parse("default, tcp://h:1") == ["default", "tcp://h:1"]
    monkeypatch.setenv("LOGIST_ENGINES", f"{A},{B}")
    assert Runtime(tmp_path).engines == [A, B]
    assert Runtime(tmp_path, engines=[B]).engines == [B]  # given: the environment's unread


def test_workspaces_are_volumes_where_the_engine_does_not_share_our_files(monkeypatch):
    monkeypatch.delenv("LOGIST_WORKSPACES", raising=False)
    assert not engines.uses_volumes("unix:///var/run/docker.sock")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert not engines.uses_volumes("default") and not engines.uses_volumes(None)
    monkeypatch.setenv("DOCKER_HOST", "tcp://remote:2375")  # the default engine elsewhere
    assert engines.uses_volumes("default")
    assert engines.uses_volumes(A) and engines.uses_volumes(C)
    monkeypatch.setenv("LOGIST_WORKSPACES", "volume")
    assert engines.uses_volumes("unix:///var/run/docker.sock")
    monkeypatch.setenv("LOGIST_WORKSPACES", "bind")
    assert not engines.uses_volumes(A)


@pytest.fixture
def up(monkeypatch):
    return {A: True, B: True, C: True}


def test_new_jobs_go_to_the_engine_with_the_most_free_slots(up):
    placer = engines.Placer([A, B], 2, up.__getitem__)
    assert placer.slots == 4
    got = [placer.acquire(None) for _ in range(4)]
    assert sorted(got) == [A, A, B, B]
    placer.release(B)
    assert placer.acquire(None) == B


def test_a_placed_job_stays_on_its_engine_and_waits_for_a_slot_there(up):
    placer = engines.Placer([A, B], 1, up.__getitem__)
    assert placer.acquire(A) == A
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(placer.acquire(A)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and got == []  # B is free, but the job lives on A
    placer.release(A)
    waiter.join(5)
    assert got == [A]


def test_a_job_whose_engine_is_lost_is_placed_on_another_that_answers(up):
    up[A] = False
    placer = engines.Placer([A, B, C], 1, up.__getitem__)
    assert placer.acquire(A) in (B, C)
    up[B] = up[C] = False
    with pytest.raises(EngineUnavailable, match="no engine answers"):
        engines.Placer([A, B, C], 1, up.__getitem__).acquire(A)


def test_one_engine_is_never_probed():
    def probe(url):
        raise AssertionError("probed")

    assert engines.Placer([A], 1, probe).acquire(None) == A
