"""Image references, checked where they enter (a spec, a flag, the API): the grammar of the
engines' ``reference`` package, so a bad one is exit 2 at create, not a failed job at run."""

from __future__ import annotations

import re

from logist.errors import UsageError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
_DOMAIN = rf"(?:{_HOST}(?:\.{_HOST})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # ASCII only (\w takes any letter)
_DIGEST = r"sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128}"  # what engines take
REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@(?:{_DIGEST}))?", re.ASCII)
DOMAIN = re.compile(_DOMAIN, re.ASCII)  # a registry host: HOST or HOST:PORT
MAX_NAME = 255  # the engines' bound on a repository's name


def image(key: str, value: str) -> str:
    """``value`` if it is an image reference (``[host[:port]/]path[:tag][@digest]``, or an
    image's id); else UsageError (exit 2) naming ``key``."""
    found = REFERENCE.fullmatch(value)
    if found is None or len(found.group("name")) > MAX_NAME:
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise UsageError(
            f"invalid value for {key}: {shown!r} (an image reference such as "
            "logist/step:latest or registry:5000/team/app@sha256:...)"
        )
    return value


def registry_host(value: str) -> str | None:
    """The registry host ``value`` (a valid reference) names explicitly, else None (the
    engine's default registry). Docker's rule: the first of two or more path components is a
    host when it holds ``.`` or ``:``, is ``localhost``, or has an upper-case letter
    (``127.0.0.1:5000/x``, ``registry.example.com/x``, ``[::1]:5000/x``; not ``logist/step``,
    nor ``python:3.12``, whose ``:`` begins a tag)."""
    first, slash, _ = value.partition("/")
    if not slash:
        return None
    if any(c in first for c in ".:") or first == "localhost" or first != first.lower():
        return first
    return None
