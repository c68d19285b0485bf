"""The operator's configuration file and the trust split of a job's inputs (contract v3,
"Trusted and untrusted inputs").

Trusted: the command line, logist's environment and this file (``$LOGIST_CONFIG``, else
``/etc/logist/config.yaml``). Untrusted: a spec file. The file holds defaults for every job (the
spec's job-wide keys), ``allow:`` (what a spec file may ask for beyond the default boundary) and
the bounds of ``logist/bounds.py``::

    network: none
    resources: {memory: 2g}
    allow:
      cap_add: [NET_ADMIN]      # capabilities beyond container_spec.DEFAULT_CAPS
      network: [host]           # network: host
      secrets: [API_TOKEN]      # secrets: names
      runtime: [runc]           # a runtime other than the configuration's default runtime
      image: [registry.internal:5000]  # an image on this registry host (or this whole image)
    max_result_size: 512m

It is read once per ``create``; nothing is cached.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logist.bounds import Bounds
from logist.errors import UsageError

CONFIG_ENV = "LOGIST_CONFIG"
DEFAULT_PATH = Path("/etc/logist/config.yaml")
PER_JOB_KEYS = frozenset({"id", "repo", "ref", "prompt", "steps"})
BOUND_KEYS = frozenset(f.name for f in dataclasses.fields(Bounds))
ALLOW_KEYS = ("cap_add", "network", "secrets", "runtime", "user", "repo", "image")
_OPENNESS = {"none": 0, "bridge": 1, "host": 2}  # networks, from the narrowest
# capabilities that reach the host: its files, its kernel, other processes
HOST_CAPS = ("DAC_READ_SEARCH", "SYS_ADMIN", "SYS_PTRACE", "SYS_MODULE", "SYS_RAWIO", "BPF")
_LISTS = ("cap_add", "secrets")  # unions across layers: every layer's names are asked for
_MAPS = ("env", "resources")  # merged key by key


@dataclass(frozen=True)
class Config:
    """The operator's configuration: job defaults, grants (``allow``), bounds."""

    path: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    allow: dict[str, frozenset[str]] = field(
        default_factory=lambda: {k: frozenset() for k in ALLOW_KEYS}
    )
    bounds: dict[str, Any] = field(default_factory=dict)

    def job_bounds(self) -> dict[str, Any]:
        """The bounds the file sets, as numbers, for ``Job.bounds`` (``{}``: the defaults)."""
        parsed = Bounds.from_dict(self.bounds)
        return {key: getattr(parsed, key) for key in self.bounds}


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Read the operator's configuration. An absent default file is an empty configuration;
    ``$LOGIST_CONFIG`` naming a missing, unreadable or invalid file is exit 2 naming it."""
    environ = os.environ if environ is None else environ
    named = environ.get(CONFIG_ENV)
    path = Path(named) if named else DEFAULT_PATH
    if not named and not path.exists():
        return Config()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise UsageError(f"cannot read configuration {path} (${CONFIG_ENV}): {why}") from None
    return parse_config(_load(text, path), str(path))


def _load(text: str, path: Path) -> dict[str, Any]:
    import yaml

    from logist.spec import _yaml_loader

    try:
        data = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise UsageError(f"configuration {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"configuration {path} must be a YAML map of keys")
    return data


def parse_config(data: dict[str, Any], where: str) -> Config:
    """Validate a configuration map: spec keys the same way as a spec's, ``allow``, bounds."""
    from logist.spec import TOP_KEYS

    known = (TOP_KEYS - PER_JOB_KEYS) | BOUND_KEYS | {"allow"}
    for key in data:
        if key not in known:
            hint = " (a per-job key: give it in the spec or on the command line)"
            raise UsageError(
                f"configuration {where}: unknown key {key!r}"
                + (hint if key in PER_JOB_KEYS else f" (known: {', '.join(sorted(known))})")
            )
    defaults = {k: v for k, v in data.items() if k in TOP_KEYS}
    bounds = {k: v for k, v in data.items() if k in BOUND_KEYS}
    try:
        _check_defaults(defaults)
        Bounds.from_dict(bounds)
        allow = _allow(data.get("allow"))
    except UsageError as exc:
        raise UsageError(f"configuration {where}: {exc}") from None
    return Config(path=where, defaults=defaults, allow=allow, bounds=bounds)


def _check_defaults(defaults: dict[str, Any]) -> None:
    """Validate job defaults exactly as a spec's keys (a placeholder repository and step)."""
    from logist.spec import build_job

    probe = {**copy.deepcopy(defaults), "repo": "/", "steps": ["true"]}
    build_job(probe, default_user="0:0")


def _allow(value: Any) -> dict[str, frozenset[str]]:
    from logist.spec import NETWORKS, _caps, _names, _secrets

    value = {} if value is None else value
    if not isinstance(value, dict):
        raise UsageError(f"invalid value for allow: {value!r} (a map of {', '.join(ALLOW_KEYS)})")
    for key in value:
        if key not in ALLOW_KEYS:
            raise UsageError(f"unknown key in allow: {key!r} (known: {', '.join(ALLOW_KEYS)})")
    networks = _names("allow.network", value.get("network") or [])
    for net in networks:
        if net not in NETWORKS:
            choices = ", ".join(NETWORKS)
            raise UsageError(f"invalid value for allow.network: {net!r} (one of {choices})")
    return {
        "cap_add": frozenset(_caps(value.get("cap_add") or [])),
        "network": frozenset(networks),
        "secrets": frozenset(_secrets(value.get("secrets") or [], {})),
        "runtime": frozenset(_names("allow.runtime", value.get("runtime") or [])),
        "user": frozenset(_choices("allow.user", value.get("user") or [], ("root",))),
        "repo": frozenset(_names("allow.repo", value.get("repo") or [])),
        "image": frozenset(_images(value.get("image") or [])),
    }


def _images(value: Any) -> list[str]:
    """``allow.image``: whole image references, or registry hosts (``HOST``, ``HOST:PORT``)."""
    from logist import references
    from logist.spec import _names

    out = []
    for entry in _names("allow.image", value):
        if not references.DOMAIN.fullmatch(entry):
            references.image("allow.image", entry)  # else: exit 2 naming it
        out.append(entry)
    return out


def _choices(key: str, value: Any, known: tuple[str, ...]) -> list[str]:
    from logist.spec import _choice, _names

    return [_choice(key, name, known) for name in _names(key, value)]


def merge_layers(*layers: dict[str, Any]) -> dict[str, Any]:
    """Merge spec maps, later layers over earlier ones (config defaults, spec file, flags):
    ``env`` and ``resources`` key by key, ``cap_add`` and ``secrets`` as unions, the rest
    replaced. None means "not given"."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in _fold_resources(layer).items():
            if value is None:
                continue
            before = out.get(key)
            if key in _LISTS and isinstance(value, str):
                value = [value]
            if key in _MAPS and isinstance(value, dict) and isinstance(before, dict):
                out[key] = {**before, **value}
            elif key in _LISTS and isinstance(before, list) and isinstance(value, list):
                out[key] = [*before, *value]
            else:
                out[key] = copy.deepcopy(value)
    return out


def _fold_resources(layer: dict[str, Any]) -> dict[str, Any]:
    """``memory``/``cpus``/``pids`` moved into the layer's ``resources`` map (they win there)."""
    from logist.spec import RESOURCE_KEYS

    given = {k: layer[k] for k in RESOURCE_KEYS if layer.get(k) is not None}
    resources = layer.get("resources")
    if not given or not (resources is None or isinstance(resources, dict)):
        return layer
    rest = {k: v for k, v in layer.items() if k not in RESOURCE_KEYS}
    return {**rest, "resources": {**(resources or {}), **given}}


def _resources_of(layer: dict[str, Any]) -> dict[str, Any]:
    """A layer's ``resources`` map, folded; {} when it is not a map (``build_job`` names it)."""
    resources = _fold_resources(layer).get("resources")
    return resources if isinstance(resources, dict) else {}


def check_spec_file(spec: dict[str, Any], flags: dict[str, Any], config: Config, path) -> None:
    """Refuse (exit 2) what a spec file asks for beyond the default boundary and nothing
    trusted grants: a capability outside ``DEFAULT_CAPS``, a network wider than the default
    (``host``; ``bridge`` when the configuration's is ``none``), any secret, a runtime other
    than the configuration's, an image on a registry host the spec names. Granted by the same
    value on the command line, in the configuration's defaults, or in its ``allow:``."""
    from logist.spec import _caps, _names, _secrets, check_keys

    check_keys(spec, f"{path}: ")  # before merge_layers takes a null value as not given

    def trusted(key: str, norm) -> set[str]:
        given = [*_as_list(flags.get(key)), *_as_list(config.defaults.get(key))]
        return set(norm(given)) | set(config.allow[key])

    asked = _caps(spec.get("cap_add") or [])
    if asked:  # logist.containers is a large import: only when there is something to check
        from logist.container_spec import DEFAULT_CAPS

        caps = trusted("cap_add", _caps) | set(DEFAULT_CAPS)
    for cap in asked:
        if cap not in caps:
            raise _refusal(path, f"cap_add {cap}", f"--cap-add {cap}", "cap_add", cap, config)
    repo = spec.get("repo")  # the command line's --repo overrides it
    if (
        isinstance(repo, str)
        and flags.get("repo") is None
        and is_network_source(repo)
        and repo not in trusted("repo", list)
    ):
        raise _refusal(path, f"the repository {repo}", "--repo", "repo", repo, config)
    _check_images(spec, flags, config, path)
    _check_network(spec.get("network"), flags, config, path)
    _check_egress(spec, flags, config, path)
    _check_runtime(spec.get("runtime"), flags, config, path)
    _check_resources(spec, flags, config, path)
    _check_user(spec.get("user"), flags, config, path)
    secrets = trusted("secrets", lambda v: _names("secrets", v))
    for name in _secrets(spec.get("secrets") or [], {}):
        if name not in secrets:
            raise _refusal(path, f"secret {name}", f"--secret {name}", "secrets", name, config)


def is_network_source(repo: str) -> bool:
    """Whether host git reaches ``repo`` over the network (a URL but ``file://``; logist takes
    anything else for a local path), with the user's git configuration (credentials, headers,
    ssh keys): from a spec file, a grant (red team, 12-06: a spec's ``http://127.0.0.1:PORT/``
    was asked)."""
    from logist.spec import is_url

    return is_url(repo) and not repo.startswith("file://")


def _check_images(spec: dict[str, Any], flags: dict[str, Any], config: Config, path) -> None:
    """A spec's ``image`` (unless ``--image`` overrides it) and its steps' (unless ``--step``
    replaces them) name no registry host, or a granted one: the engine pulls from the host an
    image names, with the operator's registry credentials (red team: a spec's
    ``127.0.0.1:PORT/x`` made the engine ask the host's loopback). Granted by the same image as
    ``--image`` or the configuration's ``image``, or ``allow: {image: [...]}`` naming the whole
    reference or its registry host. No registry host: the engine's default, the operator's."""
    from logist import references

    asked = [] if flags.get("image") is not None else [("image", spec.get("image"))]
    steps = spec.get("steps") if flags.get("steps") is None else None
    for n, step in enumerate(steps if isinstance(steps, list) else [], start=1):
        if isinstance(step, dict):
            asked.append((f"steps[{n}].image", step.get("image")))
    trusted = {flags.get("image"), config.defaults.get("image")} | set(config.allow["image"])
    hosts = {entry.lower() for entry in config.allow["image"]}  # only allow: names hosts
    for key, image in asked:
        try:
            host = references.registry_host(references.image(key, image))
        except (UsageError, TypeError):
            continue  # not an image reference: build_job names it
        if host is None or image in trusted or host.lower() in hosts:
            continue
        raise _refusal(path, f"{key} {image}", f"--image {image}", "image", host, config)


def _check_user(asked: Any, flags: dict[str, Any], config: Config, path) -> None:
    """A spec's user is not root (uid or gid 0) where the configuration names a user that is
    not (or ``allow: {user: [root]}`` grants it)."""
    from logist.spec import normalize_user

    trusted = config.defaults.get("user")
    if asked is None or trusted is None or flags.get("user") is not None:
        return  # nothing asked, the invoking user's default, or the command line chose
    try:
        ids, trusted_ids = normalize_user(asked).split(":"), normalize_user(trusted).split(":")
    except UsageError:
        return  # build_job names it
    if "0" in ids and "0" not in trusted_ids and "root" not in config.allow["user"]:
        raise _refusal(path, f"user {asked}", "--user root", "user", "root", config)


def _check_network(net: Any, flags: dict[str, Any], config: Config, path) -> None:
    """A spec's network no wider than the configuration's default (``bridge`` without one)."""
    if not isinstance(net, str) or net not in _OPENNESS or flags.get("network") is not None:
        return  # not a network (build_job says so), or the command line chose
    if net in config.allow["network"]:
        return
    if _OPENNESS[net] > _OPENNESS.get(config.defaults.get("network"), _OPENNESS["bridge"]):
        raise _refusal(path, f"network: {net}", f"--network {net}", "network", net, config)


def _check_egress(spec: dict[str, Any], flags: dict[str, Any], config: Config, path) -> None:
    """A spec's ``allow_hosts`` only narrows: each of its patterns within the trusted side's
    (the command line's, else the configuration's), if that has any; ``allow_private`` is a
    grant, never a spec file's."""
    if spec.get("allow_private") is not None:
        raise UsageError(
            f"spec file {path} asks for allow_private, which a spec file cannot grant: give "
            "--allow-private on the command line"
        )
    if "allow_hosts" not in spec or flags.get("allow_hosts"):
        return  # the command line's list wins
    trusted = config.defaults.get("allow_hosts")
    if not trusted:
        return  # the spec's list narrows the job's network to those hosts
    from logist.egress import parse_patterns

    try:
        asked, allowed = parse_patterns(spec["allow_hosts"]), parse_patterns(trusted)
    except UsageError:
        return  # build_job names the bad value
    wider = [p for p in asked if not any(t.covers(p) for t in allowed)]
    if not asked or wider:
        what = f"allow_hosts {wider[0]}" if wider else "allow_hosts: [] (every host)"
        raise UsageError(
            f"spec file {path} asks for {what}, beyond the configuration's allow_hosts: a spec "
            "file may only narrow it (give --allow-host on the command line)"
        )


def _check_resources(spec: dict[str, Any], flags: dict[str, Any], config: Config, path) -> None:
    """A spec's memory, cpus, pids and timeouts no higher than the trusted side's: the command
    line's (which then wins anyway), else the configuration's, else logist's default pids
    and memory limits. Values that do not parse are left to ``build_job`` to name."""
    asked = _fold_resources(spec).get("resources") or {}
    if not isinstance(asked, dict):
        return  # build_job names it
    steps = spec.get("steps") if isinstance(spec.get("steps"), list) else []
    timeouts = [spec.get("timeout"), *(s.get("timeout") for s in steps if isinstance(s, dict))]
    trusted_res = {
        **_resources_of(config.defaults),
        **_resources_of(flags),
    }
    if any(asked.get(k) is not None and trusted_res.get(k) is None for k in ("pids", "memory")):
        from logist.container_spec import DEFAULT_MEMORY, DEFAULT_PIDS

        trusted_res.setdefault("pids", DEFAULT_PIDS)
        trusted_res.setdefault("memory", DEFAULT_MEMORY)
    ceiling_timeout = flags.get("timeout") or config.defaults.get("timeout")
    checks = [(key, asked.get(key), trusted_res.get(key)) for key in ("memory", "cpus", "pids")]
    checks += [("timeout", t, ceiling_timeout) for t in timeouts]
    for key, value, ceiling in checks:
        if value is None or ceiling is None:
            continue
        try:
            over = _amount(key, value) > _amount(key, ceiling)
        except (UsageError, TypeError, ValueError, OverflowError):
            continue
        if over:
            raise UsageError(
                f"spec file {path} asks for {key} {value}, over the trusted {ceiling}: a spec "
                f"file may only lower it (give --{key} on the command line, or raise {key} in "
                f"the configuration ({config.path or f'${CONFIG_ENV} or {DEFAULT_PATH}'}))"
            )


def _amount(key: str, value: Any) -> float:
    from logist.bounds import parse_size

    if key == "memory":
        return parse_size(str(value), key)
    if isinstance(value, bool):
        raise TypeError(key)
    return float(value)


def _check_runtime(runtime: Any, flags: dict[str, Any], config: Config, path) -> None:
    """A spec may not replace the runtime the configuration chose (e.g. runsc) by another."""
    chosen = config.defaults.get("runtime")
    if not isinstance(runtime, str) or chosen is None or runtime == chosen:
        return
    if flags.get("runtime") is not None:
        return
    if runtime not in config.allow["runtime"]:
        raise _refusal(
            path, f"runtime {runtime}", f"--runtime {runtime}", "runtime", runtime, config
        )


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _refusal(path, setting: str, flag: str, key: str, value: str, config: Config) -> UsageError:
    where = config.path or f"${CONFIG_ENV} or {DEFAULT_PATH}"
    return UsageError(
        f"spec file {path} asks for {setting}, which a spec file cannot grant: "
        f"give {flag} on the command line, or allow: {{{key}: [{value}]}} in the "
        f"configuration ({where})"
    )


def host_caps(caps: list[str]) -> list[str]:
    """The capabilities among ``caps`` that open the host to a step."""
    return [cap for cap in caps if cap in HOST_CAPS or cap == "ALL"]
