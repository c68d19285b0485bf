"""Job specs from flags or YAML: strict validation, the id rule, durations."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

from logist import references
from logist.egress import parse_grants, parse_patterns
from logist.errors import UsageError
from logist.model import Job, Step
from logist.options import SPEC_KEYS
from logist.specread import read_spec

ID_RULE = "^[a-z0-9][a-z0-9_.-]{0,63}$"
_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEMORY_RE = re.compile(r"\d+(\.\d+)?[bkmg]?", re.IGNORECASE | re.ASCII)
_USER_RE = re.compile(r"[0-9]+(:[0-9]+)?")
_CAP_RE = re.compile(r"[A-Za-z_]+")
_RUNTIME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
URL_PREFIXES = ("file://", "git://", "https://", "http://", "ssh://")

NETWORKS = ("bridge", "none", "host")
PULLS = ("missing", "always", "never")
CLEANUPS = ("always", "on-success", "never")
TOP_KEYS = SPEC_KEYS  # logist/options.py declares them
RESOURCE_KEYS = frozenset({"memory", "cpus", "pids"})
STEP_KEYS = frozenset({"name", "run", "image", "timeout"})
DEFAULT_IMAGE = "logist/step:latest"
MAX_STEPS = 1000  # steps of one job: each is a container and a harvest
# A step's command is one argument of `sh -c` and each env entry one string of the container's
# process: the kernel takes at most 128 KiB for each (MAX_ARG_STRLEN), and about 2 MiB in all
MAX_COMMAND = (128 << 10) - 1
MAX_ENV_ENTRY = (128 << 10) - 1
MAX_ENV_TOTAL = 1 << 20
# the engine's and kernel's own ceilings, so a value past them is the user's mistake at once
MAX_CPUS = 4096.0
MAX_MEMORY = 1 << 50
MIN_MEMORY = 6 << 20  # the engines' least; below 1 byte Docker rounds to 0: no limit at all
MAX_ID = 2147483647  # runc's largest uid or gid (the kernel takes 2**32 - 2; runc refuses it)
MIN_CPUS = 0.01  # the engines' least; below it Docker rounds to 0: no limit at all
MAX_PIDS = 4194304  # the kernel's PID_MAX_LIMIT
MAX_TIMEOUT = 366 * 86400.0  # seconds: a year (Python's waits overflow far beyond)


ID_RULE_TEXT = (
    f"ids must match {ID_RULE} and make logist/<id> a valid git branch name "
    "(no '..', no trailing '.', no '.lock' suffix)"
)
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def valid_ref_name(name: str) -> bool:
    """Whether ``name`` is a valid full ref name, as ``git check-ref-format`` decides (for a
    name with at least one ``/``): no ``..``, ``@{``, control character, space, or any of
    ``~^:?*[\\``; no empty component, none beginning with ``.`` or ending with ``.lock``; not
    ending with ``/`` or ``.``; not ``@``."""
    if not name or name == "@" or name.endswith((".", "/")) or name.startswith("/"):
        return False
    if ".." in name or "@{" in name or _REF_FORBIDDEN.search(name):
        return False
    return all(
        part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/")
    )


def validate_id(job_id: str) -> str:
    """Return ``job_id`` if it follows the id rule (``ID_RULE``, and ``logist/<id>`` is a
    valid branch name), else raise ``UsageError`` stating the rule."""
    if (
        not isinstance(job_id, str)
        or not _ID_RE.fullmatch(job_id)
        or not valid_ref_name(f"logist/{job_id}")
    ):
        raise UsageError(f"invalid job id {job_id!r}: {ID_RULE_TEXT}")
    return job_id


def generate_id() -> str:
    """A fresh lowercase id: date, time and random hex."""
    import secrets

    return f"job-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` -> seconds."""
    m = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m:
        raise UsageError(f"invalid duration {text!r}: use a number and s, m, h or d (e.g. 24h)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def is_url(repo: str) -> bool:
    return repo.startswith(URL_PREFIXES)


def _bad(key: str, value: Any, why: str) -> UsageError:
    return UsageError(f"invalid value for {key}: {value!r} ({why})")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _bad(key, value, "one of " + ", ".join(choices))
    return value


def _positive(
    key: str, value: Any, kind: type = float, most: float = MAX_TIMEOUT, least: float = 0.0
) -> float | int:
    if isinstance(value, bool):
        raise _bad(key, value, "a positive number")
    try:
        number = kind(value)
        too_big = number > most
        finite = math.isfinite(number)
    except (TypeError, ValueError):
        raise _bad(key, value, f"a positive {'integer' if kind is int else 'number'}") from None
    except OverflowError:  # an integer of more digits than a float holds
        raise _bad(f"{key}", f"{str(value)[:20]}...", f"at most {most:.0f}") from None
    if kind is int and isinstance(value, float) and value != number:
        raise _bad(key, value, "a positive integer")
    if not finite:
        raise _bad(key, value, "a finite number")
    if number <= 0:
        raise _bad(key, value, "must be greater than 0")
    if too_big:
        raise _bad(key, value, f"at most {most:.0f}")
    if number < least:
        raise _bad(key, value, f"at least {least:g}, the engine's least")
    return number


def _bytes(size: str) -> float:
    """``512m`` -> bytes (a size ``_MEMORY_RE`` matched)."""
    unit = size[-1].lower()
    scale = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(unit)
    return float(size[:-1] if scale else size) * (scale or 1)


def _prompt(value: Any) -> str | None:
    """The job's prompt: it reaches each step as ``LOGIST_PROMPT``, one string of its process."""
    if value is None:
        return None
    text = _scalar("prompt", value)
    if "\0" in text or len(f"LOGIST_PROMPT={text}".encode()) > MAX_ENV_ENTRY:
        raise _bad(
            "prompt", f"{text[:20]}...", f"text without a NUL, at most {MAX_ENV_ENTRY - 14} bytes"
        )
    return text


def _scalar(key: str, value: Any) -> str:
    """A string (or a number, as YAML reads ``ref: 2024``) as text; nothing else."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _bad(key, value, "a string")
    if isinstance(value, str) and not _encodable(value):
        raise _bad(key, value[:40], "not valid text (a lone surrogate)")
    return str(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(key, value, "a non-empty string")
    if not _encodable(value):
        raise _bad(key, value[:40], "not valid text (a lone surrogate)")
    return value


def _argument(key: str, value: Any) -> str:
    """A value that reaches a program's arguments (``repo``, ``ref``, ``image``): not an option
    (no leading ``-``), no control character."""
    value = _text(key, value)
    if value.startswith("-") or _CONTROL_RE.search(value):
        raise _bad(key, value, "must not start with '-' nor hold a control character")
    return value


def _image(key: str, value: Any) -> str:
    return references.image(key, _argument(key, value))


def normalize_user(value: Any) -> str:
    value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if value == "root":
        return "0:0"
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        raise _bad("user", value, "UID:GID or root")
    if any(len(n) > 10 or int(n) > MAX_ID for n in value.split(":")):
        raise _bad("user", value[:40], f"ids are at most {MAX_ID}")
    return value if ":" in value else f"{value}:{value}"


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _bad("env", value, "a map of NAME: value")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _ENV_KEY_RE.fullmatch(k):
            raise _bad("env", k, "names are letters, digits and _ and do not start with a digit")
        if not isinstance(v, str | int | float):
            raise _bad(f"env.{k}", v, "a string, number or boolean")
        out[k] = str(v).lower() if isinstance(v, bool) else str(v)
        if "\0" in out[k] or not _encodable(out[k]):
            raise _bad(f"env.{k}", v, "text without a NUL or a lone surrogate")
        if len(f"{k}={out[k]}".encode()) > MAX_ENV_ENTRY:
            raise _bad(f"env.{k}", f"{out[k][:20]}...", f"at most {MAX_ENV_ENTRY} bytes")
    if sum(len(f"{k}={v}".encode()) + 1 for k, v in out.items()) > MAX_ENV_TOTAL:
        raise _bad("env", f"{len(out)} variables", f"at most {MAX_ENV_TOTAL >> 20} MiB in all")
    return out


def _names(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(key, value, "a list of names")
    return value


def _caps(value: Any) -> list[str]:
    """Capability names, upper case without the ``CAP_`` prefix (``net_raw`` -> ``NET_RAW``)."""
    out = []
    for cap in _names("cap_add", value):
        if not _CAP_RE.fullmatch(cap) or cap.upper() == "CAP_":
            raise _bad("cap_add", cap, "a capability name such as NET_RAW or CAP_NET_RAW")
        out.append(cap.upper().removeprefix("CAP_"))
    return list(dict.fromkeys(out))


def _secrets(value: Any, env: dict[str, str]) -> list[str]:
    out = []
    for name in _names("secrets", value):
        if not _ENV_KEY_RE.fullmatch(name):
            raise _bad("secrets", name, "an environment variable name (letters, digits, _)")
        if name in env:
            raise _bad("secrets", name, "also in env; a secret's value comes from the environment")
        out.append(name)
    return list(dict.fromkeys(out))


def _command(key: str, value: Any) -> str:
    """A step's command: a non-empty string the kernel can pass to ``sh -c``."""
    value = _text(key, value)
    if "\0" in value:
        raise _bad(key, value[:40], "must not hold a NUL character")
    if len(value.encode(errors="surrogateescape")) > MAX_COMMAND:
        raise _bad(key, f"{value[:20]}...", f"at most {MAX_COMMAND} bytes")
    return value


def _steps(value: Any) -> list[Step]:
    if value is not None and not isinstance(value, list):
        raise _bad("steps", value, "a list of commands")
    if not isinstance(value, list) or not value:
        raise UsageError("a job needs at least one step (--step CMD, or steps: in the spec)")
    if len(value) > MAX_STEPS:
        raise _bad("steps", f"{len(value)} steps", f"at most {MAX_STEPS}")
    steps = []
    for n, item in enumerate(value, start=1):
        if isinstance(item, str):
            steps.append(Step(index=n, run=_command(f"steps[{n}]", item)))
            continue
        if not isinstance(item, dict):
            raise _bad(f"steps[{n}]", item, "a command string or a map with run:")
        unknown = sorted(map(str, set(item) - STEP_KEYS))
        if unknown:
            raise UsageError(
                f"unknown key in steps[{n}]: {unknown[0]!r} (known: "
                + ", ".join(sorted(STEP_KEYS))
                + ")"
            )
        if "run" not in item:
            raise UsageError(f"steps[{n}] has no run: command")
        steps.append(
            Step(
                index=n,
                run=_command(f"steps[{n}].run", item["run"]),
                name=_text(f"steps[{n}].name", item["name"])
                if item.get("name") is not None
                else None,
                image=_image(f"steps[{n}].image", item["image"]) if item.get("image") else None,
                timeout=_positive(f"steps[{n}].timeout", item["timeout"])
                if item.get("timeout") is not None
                else None,
            )
        )
    return steps


def _yaml_loader():
    """A safe loader with YAML 1.2's plain scalars: ``33:33`` stays a string (YAML 1.1 reads it as
    the base-60 number 2013) and only true/false are booleans (not yes/no/on/off)."""
    import yaml

    bool_tag, int_tag, float_tag = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: ~10x faster
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in pairs if tag != bool_tag]
        for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for pairs in Loader.yaml_implicit_resolvers.values():
        for i, (tag, rx) in enumerate(pairs):
            if tag in (int_tag, float_tag):  # no sexagesimal numbers: nothing with a colon
                pairs[i] = (tag, re.compile(r"(?!.*:)" + rx.pattern, rx.flags))
    Loader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return Loader


MAX_SPEC_EXPANDED = 4 << 20  # its values' size once YAML aliases are expanded


def expanded_size(value: Any, memo: dict[int, int] | None = None) -> int:
    """A YAML value's size with every alias expanded, counted without expanding it: shared
    nodes (what aliases make) are measured once and counted each time they appear."""
    memo = {} if memo is None else memo
    open_: set[int] = set()  # nodes being measured: one met again inside itself is a cycle
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in memo and not done:
            continue
        if id(node) in open_ and not done:
            raise SpecCycle("an alias refers to a value that holds it (a cycle)")
        children = (
            ([x for kv in node.items() for x in kv] if isinstance(node, dict) else node)
            if isinstance(node, dict | list)
            else None
        )
        if children is None:
            if isinstance(node, str) and not _encodable(node):
                raise SpecCycle(f"{node[:40]!r} is not valid text (a lone surrogate)")
            memo[id(node)] = len(str(node)) + 1
        elif done:
            memo[id(node)] = 1 + sum(memo[id(c)] for c in children)
            open_.discard(id(node))
        else:
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in memo)
    return memo[id(value)]


class SpecCycle(ValueError):
    """A spec's values cannot be measured: a cycle, or text that is not text."""


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def load_yaml(path: Path) -> dict[str, Any]:
    """A spec file's map of keys: bounded on disk and once its aliases are expanded."""
    import yaml

    text = read_spec(path)
    try:
        data = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml's own bound
            raise UsageError(f"spec {path} is nested too deeply") from None
        raise UsageError(f"spec {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise UsageError(f"spec {path} is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise UsageError(f"spec {path} holds a value logist cannot read: {exc}"[:300]) from None
    if not isinstance(data, dict):
        raise UsageError(f"spec {path} must be a YAML map of keys")
    try:
        size = expanded_size(data)
    except RecursionError:
        raise UsageError(f"spec {path} is nested too deeply") from None
    except SpecCycle as exc:
        raise UsageError(f"spec {path}: {exc}") from None
    if size > MAX_SPEC_EXPANDED:
        raise UsageError(
            f"spec {path} expands to over {MAX_SPEC_EXPANDED >> 20} MiB (YAML aliases repeat "
            "its values)"
        )
    return data


def check_keys(raw: dict[str, Any], where: str = "") -> None:
    """Refuse (exit 2) a top-level key that is no spec key (``where``: the spec file's path)."""
    unknown = sorted(map(str, set(raw) - TOP_KEYS))
    if unknown:
        raise UsageError(
            f"{where}unknown spec key {unknown[0]!r} (known: {', '.join(sorted(TOP_KEYS))})"
        )


def build_job(raw: dict[str, Any], *, default_user: str, session: bool = False) -> Job:
    """Validate a merged spec (YAML keys, overridden by flags) into a pending ``Job`` (a
    ``session``'s has no steps: its commands come one by one)."""
    check_keys(raw)
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict):
        raise _bad("resources", resources, "a map with memory, cpus, pids")
    bad_res = sorted(map(str, set(resources) - RESOURCE_KEYS))
    if bad_res:
        raise UsageError(f"unknown key in resources: {bad_res[0]!r} (known: memory, cpus, pids)")
    for key in RESOURCE_KEYS:
        if raw.get(key) is not None:
            resources[key] = raw[key]

    job_id = raw.get("id")
    job_id = validate_id(job_id) if job_id is not None else generate_id()
    if not raw.get("repo"):
        raise UsageError("a job needs a repository: --repo SRC or repo: in the spec")
    repo = _argument("repo", raw["repo"])
    memory = resources.get("memory")
    if memory is not None and (
        not _MEMORY_RE.fullmatch(str(memory)) or not re.search(r"[1-9]", str(memory))
    ):  # 0 would mean "no limit" to the engine
        raise _bad("memory", memory, "a size greater than 0, such as 512m or 2g")
    if memory is not None and _bytes(str(memory)) > MAX_MEMORY:
        raise _bad("memory", memory, "at most 1024 TiB")
    if memory is not None and _bytes(str(memory)) < MIN_MEMORY:  # less is no limit, or refused
        raise _bad("memory", memory, "at least 6m, the engine's least")
    timeout = raw.get("timeout")
    env = _env(raw.get("env") or {})
    network = _choice("network", raw.get("network", "bridge"), NETWORKS)
    allow_hosts = [str(p) for p in parse_patterns(raw.get("allow_hosts"))]
    allow_private = parse_grants(raw.get("allow_private"))
    if allow_hosts and network != "bridge":
        raise UsageError(
            f"allow_hosts (--allow-host) needs the job's own network: not network {network}"
        )
    if allow_private and not allow_hosts:
        raise UsageError("allow_private (--allow-private) only opens the proxy of --allow-host")
    runtime = raw.get("runtime")
    if runtime is not None and not (isinstance(runtime, str) and _RUNTIME_RE.fullmatch(runtime)):
        raise _bad("runtime", runtime, "the name of a runtime the engine knows, e.g. runsc")
    return Job(
        id=job_id,
        repo=repo,
        ref=_argument("ref", _scalar("ref", raw["ref"])) if raw.get("ref") is not None else None,
        image=_image("image", raw["image"]) if raw.get("image") is not None else DEFAULT_IMAGE,
        prompt=_prompt(raw.get("prompt")),
        env=env,
        timeout=_positive("timeout", timeout) if timeout is not None else None,
        memory=str(memory) if memory is not None else None,
        cpus=_positive("cpus", resources["cpus"], float, MAX_CPUS, MIN_CPUS)
        if resources.get("cpus") is not None
        else None,
        pids=_positive("pids", resources["pids"], int, MAX_PIDS)
        if resources.get("pids") is not None
        else None,
        network=network,
        allow_hosts=allow_hosts,
        allow_private=allow_private,
        cap_add=_caps(raw.get("cap_add") or []),
        runtime=runtime,
        secrets=_secrets(raw.get("secrets") or [], env),
        user=normalize_user(raw["user"]) if raw.get("user") is not None else default_user,
        pull=_choice("pull", raw.get("pull", "missing"), PULLS),
        cleanup=_choice("cleanup", raw.get("cleanup", "always"), CLEANUPS),
        steps=[] if session and not raw.get("steps") else _steps(raw.get("steps")),
    )
