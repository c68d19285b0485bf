"""Trusted and untrusted inputs (contract v3): a spec file may narrow a step's boundary, never
widen it; the command line and the operator's configuration ($LOGIST_CONFIG) grant; the
configuration's defaults and bounds reach the job."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from logist import config as config_mod
from logist.bounds import MIB
from logist.config import Config, load_config, merge_layers

CFG_ANY = "$LOGIST_CONFIG or /etc/logist/config.yaml"


def write_spec(tmp_path: Path, repo: Path, body: str, name: str = "spec.yaml") -> Path:
    spec = tmp_path / name
    spec.write_text(f"repo: {repo}\nsteps: ['true']\n{body}\n")
    return spec


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "logist-config.yaml"
    path.write_text(body)
    return path


def manifest(jobs_root: Path, job_id: str) -> dict:
    return json.loads((jobs_root / job_id / "job.json").read_text())


def create(logist, *args: str, config: Path | str = ""):
    """``job create`` with ``$LOGIST_CONFIG`` set (empty: the default path, absent here)."""
    return logist("job", "create", *args, env={"LOGIST_CONFIG": str(config)})


def refusal(spec: Path, setting: str, flag: str, allow: str, where: str) -> str:
    return (
        f"logist: error: spec file {spec} asks for {setting}, which a spec file cannot grant: "
        f"give {flag} on the command line, or allow: {allow} in the configuration ({where})\n"
    )


# --- refusals from a spec file ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "setting", "flag", "allow"),
    [
        ("cap_add: [DAC_READ_SEARCH]", "cap_add DAC_READ_SEARCH", "--cap-add DAC_READ_SEARCH",
         "{cap_add: [DAC_READ_SEARCH]}"),
        ("cap_add: [CHOWN, cap_sys_admin]", "cap_add SYS_ADMIN", "--cap-add SYS_ADMIN",
         "{cap_add: [SYS_ADMIN]}"),
        ("cap_add: net_admin", "cap_add NET_ADMIN", "--cap-add NET_ADMIN",
         "{cap_add: [NET_ADMIN]}"),
        ("network: host", "network: host", "--network host", "{network: [host]}"),
        ("secrets: [HOME]", "secret HOME", "--secret HOME", "{secrets: [HOME]}"),
    ],
)  # fmt: skip
def test_spec_file_widening_is_refused_naming_the_setting_and_its_grant(
    logist, jobs_root, source_repo, tmp_path, body, setting, flag, allow
):
    spec = write_spec(tmp_path, source_repo, f"id: widen\n{body}")
    cfg = write_config(tmp_path, "")
    out = create(logist, "--file", str(spec), config=cfg)
    assert out.returncode == 2
    assert out.stderr == refusal(spec, setting, flag, allow, str(cfg))
    assert out.stdout == "" and not (jobs_root / "widen").exists()


def test_refusal_without_a_configuration_names_where_one_would_be(
    logist, source_repo, tmp_path, monkeypatch
):
    assert not config_mod.DEFAULT_PATH.exists()  # this machine has no /etc/logist/config.yaml
    spec = write_spec(tmp_path, source_repo, "secrets: [HOME]")
    out = create(logist, "--file", str(spec))
    assert out.returncode == 2
    assert out.stderr == refusal(spec, "secret HOME", "--secret HOME", "{secrets: [HOME]}", CFG_ANY)


def test_every_secret_of_a_spec_must_be_granted_not_only_the_first(logist, source_repo, tmp_path):
    spec = write_spec(tmp_path, source_repo, "secrets: [TOKEN_A, TOKEN_B]")
    cfg = write_config(tmp_path, "")
    out = create(logist, "--file", str(spec), "--secret", "TOKEN_A", config=cfg)
    assert out.returncode == 2
    assert "asks for secret TOKEN_B" in out.stderr and "--secret TOKEN_B" in out.stderr


def test_a_spec_secret_that_is_no_variable_name_is_invalid_before_any_grant_question(
    logist, source_repo, tmp_path
):
    spec = write_spec(tmp_path, source_repo, "secrets: ['1X']")
    out = create(logist, "--file", str(spec), "--secret", "1X")
    assert out.returncode == 2
    assert out.stderr.startswith("logist: error: invalid value for secrets: '1X'")


@pytest.mark.parametrize(
    ("key", "value"),
    [("repo", "-uhere"), ("ref", "--upload-pack=touch x"), ("ref", "main\x1b[2J"),
     ("image", "-v"), ("image", "busybox\x7f"), ("repo", "/src\nx")],
)  # fmt: skip
def test_repo_ref_and_image_that_look_like_options_or_hold_control_chars_are_refused(
    logist, jobs_root, source_repo, tmp_path, key, value
):
    spec = tmp_path / "spec.yaml"
    data = {"id": "opt", "repo": str(source_repo), "steps": ["true"], key: value}
    spec.write_text(json.dumps(data))  # JSON is YAML, and it escapes control characters
    out = create(logist, "--file", str(spec))
    assert out.returncode == 2
    assert out.stderr.startswith(f"logist: error: invalid value for {key}: ")
    assert "must not start with '-' nor hold a control character" in out.stderr
    assert not (jobs_root / "opt").exists()
    flag = create(logist, "--repo", str(source_repo), "--step", "true", f"--{key}={value}")
    assert flag.returncode == 2, flag.stderr  # from the command line too


def test_step_image_from_a_spec_that_looks_like_an_option_is_refused(logist, source_repo, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"repo: {source_repo}\nsteps: [{{run: 'true', image: '--privileged'}}]\n")
    out = create(logist, "--file", str(spec))
    assert out.returncode == 2
    assert "invalid value for steps[1].image: '--privileged'" in out.stderr


# --- what a spec file may do ------------------------------------------------------------------


def test_spec_file_may_narrow_network_none_bridge_and_default_caps(
    logist, jobs_root, source_repo, tmp_path
):
    for n, network in enumerate(("none", "bridge")):
        spec = write_spec(
            tmp_path,
            source_repo,
            f"id: narrow{n}\nnetwork: {network}\ncap_add: [CHOWN, kill]\nresources: {{pids: 64}}",
        )
        out = create(logist, "--file", str(spec))
        assert out.returncode == 0, out.stderr
        assert out.stderr == ""  # no warning either
        m = manifest(jobs_root, f"narrow{n}")
        assert (m["network"], m["cap_add"], m["pids"]) == (network, ["CHOWN", "KILL"], 64)


def test_spec_network_host_overridden_by_the_command_line_is_not_a_widening(
    logist, jobs_root, source_repo, tmp_path
):
    spec = write_spec(tmp_path, source_repo, "id: over\nnetwork: host")
    out = create(logist, "--file", str(spec), "--network", "none")
    assert out.returncode == 0, out.stderr
    assert manifest(jobs_root, "over")["network"] == "none"


@pytest.mark.parametrize(
    ("cfg_body", "spec_body", "setting", "flag", "allow"),
    [
        ("network: none\n", "network: bridge", "network: bridge", "--network bridge",
         "{network: [bridge]}"),
        ("runtime: runsc\n", "runtime: runc", "runtime runc", "--runtime runc",
         "{runtime: [runc]}"),
    ],
)  # fmt: skip
def test_a_spec_file_cannot_undo_the_configurations_narrower_network_or_runtime(
    logist, jobs_root, source_repo, tmp_path, cfg_body, spec_body, setting, flag, allow
):
    cfg = write_config(tmp_path, cfg_body)
    spec = write_spec(tmp_path, source_repo, f"id: undo\n{spec_body}")
    out = create(logist, "--file", str(spec), config=cfg)
    assert out.returncode == 2
    assert out.stderr == refusal(spec, setting, flag, allow, str(cfg))
    granted = write_config(tmp_path, f"{cfg_body}allow: {allow}\n")
    out = create(logist, "--file", str(spec), config=granted)
    assert out.returncode == 0, out.stderr
    key, value = spec_body.split(": ")
    assert manifest(jobs_root, "undo")[key] == value
    out = create(logist, "byflag", "--file", str(spec), *flag.split(), config=cfg)
    assert out.returncode == 0, out.stderr
    assert manifest(jobs_root, "byflag")[key] == value


def test_a_spec_file_may_repeat_or_narrow_the_configurations_network_and_runtime(
    logist, jobs_root, source_repo, tmp_path
):
    cfg = write_config(tmp_path, "network: bridge\nruntime: runc\n")
    spec = write_spec(tmp_path, source_repo, "id: same\nnetwork: none\nruntime: runc")
    out = create(logist, "--file", str(spec), config=cfg)
    assert out.returncode == 0, out.stderr
    m = manifest(jobs_root, "same")
    assert (m["network"], m["runtime"]) == ("none", "runc")


# --- grants -----------------------------------------------------------------------------------

WIDE = "cap_add: [NET_ADMIN]\nnetwork: host\nsecrets: [API_TOKEN]"


def test_the_command_line_grants_what_the_spec_file_asks_for(
    logist, jobs_root, source_repo, tmp_path
):
    spec = write_spec(tmp_path, source_repo, f"id: byflag\n{WIDE}")
    args = ["--cap-add", "net_admin", "--network", "host", "--secret", "API_TOKEN"]
    out = create(logist, "--file", str(spec), *args)
    assert out.returncode == 0, out.stderr
    m = manifest(jobs_root, "byflag")
    assert (m["cap_add"], m["network"], m["secrets"]) == (["NET_ADMIN"], "host", ["API_TOKEN"])


def test_the_configurations_allow_grants_what_the_spec_file_asks_for(
    logist, jobs_root, source_repo, tmp_path
):
    cfg = write_config(
        tmp_path, "allow:\n  cap_add: [CAP_NET_ADMIN]\n  network: [host]\n  secrets: [API_TOKEN]\n"
    )
    spec = write_spec(tmp_path, source_repo, f"id: byallow\n{WIDE}")
    out = create(logist, "--file", str(spec), config=cfg)
    assert out.returncode == 0, out.stderr
    m = manifest(jobs_root, "byallow")
    assert (m["cap_add"], m["network"], m["secrets"]) == (["NET_ADMIN"], "host", ["API_TOKEN"])
    # allow: grants only what it names
    other = write_spec(tmp_path, source_repo, "secrets: [OTHER]", name="other.yaml")
    out = create(logist, "--file", str(other), config=cfg)
    assert out.returncode == 2 and "asks for secret OTHER" in out.stderr


def test_a_configuration_default_is_trusted_and_grants_the_same_value_in_a_spec(
    logist, jobs_root, source_repo, tmp_path
):
    cfg = write_config(tmp_path, "network: host\nsecrets: [API_TOKEN]\ncap_add: [NET_ADMIN]\n")
    spec = write_spec(tmp_path, source_repo, f"id: bydefault\n{WIDE}")
    out = create(logist, "--file", str(spec), config=cfg)
    assert out.returncode == 0, out.stderr
    m = manifest(jobs_root, "bydefault")
    assert (m["cap_add"], m["network"], m["secrets"]) == (["NET_ADMIN"], "host", ["API_TOKEN"])


def test_a_host_opening_capability_on_the_command_line_warns_once_at_create(
    logist, jobs_root, source_repo
):
    out = create(
        logist, "warned", "--repo", str(source_repo), "--step", "true", "--cap-add", "SYS_ADMIN"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "warned\n"
    assert out.stderr == (
        "logist: warning: job warned gets SYS_ADMIN: a step can reach the host "
        "(its files, kernel or processes) with it\n"
    )
    assert manifest(jobs_root, "warned")["cap_add"] == ["SYS_ADMIN"]
    quiet = create(logist, "--repo", str(source_repo), "--step", "true", "--cap-add", "NET_ADMIN")
    assert quiet.returncode == 0 and quiet.stderr == ""


# --- the configuration file -------------------------------------------------------------------


def test_configuration_defaults_apply_and_the_spec_then_the_flags_override_them(
    logist, jobs_root, source_repo, tmp_path
):
    cfg = write_config(
        tmp_path,
        "network: none\ntimeout: 300\nresources: {memory: 1g, cpus: 1}\n"
        "env: {FROM_CFG: c, BOTH: cfg}\nimage: logist/busybox:latest\ncleanup: never\n",
    )
    spec = write_spec(tmp_path, source_repo, "id: layered\nmemory: 512m\nenv: {BOTH: spec}")
    out = create(logist, "--file", str(spec), "--timeout", "10", "--env", "FLAG=f", config=cfg)
    assert out.returncode == 0, out.stderr
    m = manifest(jobs_root, "layered")
    assert (m["network"], m["timeout"], m["memory"], m["cpus"]) == ("none", 10, "512m", 1)
    assert m["env"] == {"FROM_CFG": "c", "BOTH": "spec", "FLAG": "f"}
    assert (m["image"], m["cleanup"]) == ("logist/busybox:latest", "never")
    bare = create(logist, "bare", "--repo", str(source_repo), "--step", "true", config=cfg)
    assert bare.returncode == 0, bare.stderr
    m = manifest(jobs_root, "bare")
    assert (m["network"], m["timeout"], m["memory"]) == ("none", 300, "1g")


def test_bounds_from_the_configuration_land_in_job_json(logist, jobs_root, source_repo, tmp_path):
    cfg = write_config(tmp_path, "max_result_size: 10m\nlog_limit: 1048576\ngit_deadline: 30\n")
    out = create(logist, "bounded", "--repo", str(source_repo), "--step", "true", config=cfg)
    assert out.returncode == 0, out.stderr
    bounds = manifest(jobs_root, "bounded")["bounds"]
    assert bounds == {"max_result_size": 10 * MIB, "log_limit": MIB, "git_deadline": 30.0}
    plain = create(logist, "plain", "--repo", str(source_repo), "--step", "true")
    assert plain.returncode == 0 and manifest(jobs_root, "plain")["bounds"] == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "nosuch: 1\n",
            "unknown key 'nosuch' (known: allow, allow_hosts, allow_private, cap_add, ",
        ),
        ("repo: /src\n", "unknown key 'repo' (a per-job key: give it in the spec or on the"),
        ("network: moon\n", "invalid value for network: 'moon' (one of bridge, none, host)"),
        ("max_object_size: lots\n", "invalid value for max_object_size: 'lots'"),
        ("allow: {shell: [bash]}\n", "unknown key in allow: 'shell' (known: cap_add, network,"),
        ("allow: {user: [admin]}\n", "invalid value for allow.user: 'admin' (one of root)"),
        ("allow: [host]\n", "invalid value for allow: ['host'] (a map of cap_add, network,"),
        ("allow: {network: [moon]}\n", "invalid value for allow.network: 'moon'"),
        ("allow: {secrets: ['1X']}\n", "invalid value for secrets: '1X'"),
        ("- a list\n", "must be a YAML map of keys"),
        ("network: [unclosed\n", "is not valid YAML"),
    ],
)
def test_a_bad_configuration_is_exit_2_naming_the_file_and_the_key(
    logist, jobs_root, source_repo, tmp_path, body, message
):
    cfg = write_config(tmp_path, body)
    out = create(logist, "--repo", str(source_repo), "--step", "true", config=cfg)
    assert out.returncode == 2
    assert out.stderr.startswith("logist: error: configuration " + str(cfg))
    assert message in out.stderr and out.stderr.count("\n") == 1
    assert list(jobs_root.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_logist_config_naming_a_file_it_cannot_read_is_exit_2_naming_it(
    logist, jobs_root, source_repo, tmp_path, kind
):
    path = tmp_path / "cfg.yaml"
    if kind == "directory":
        path.mkdir()
    out = create(logist, "--repo", str(source_repo), "--step", "true", config=path)
    assert out.returncode == 2
    assert out.stderr.startswith(
        f"logist: error: cannot read configuration {path} ($LOGIST_CONFIG)"
    )
    assert list(jobs_root.iterdir()) == []


def test_an_absent_default_configuration_is_empty_and_logist_config_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", tmp_path / "absent.yaml")
    assert load_config({}) == Config()
    assert load_config({"LOGIST_CONFIG": ""}) == Config()
    default = tmp_path / "default.yaml"
    default.write_text("network: none\n")
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", default)
    assert load_config({}).defaults == {"network": "none"}
    named = write_config(tmp_path, "allow: {secrets: [A]}\n")
    cfg = load_config({"LOGIST_CONFIG": str(named)})
    assert cfg.defaults == {} and cfg.allow["secrets"] == {"A"} and cfg.path == str(named)


def test_layers_merge_maps_by_key_union_names_and_let_later_values_win():
    merged = merge_layers(
        {"resources": {"memory": "1g", "cpus": 2}, "env": {"A": "1"}, "secrets": ["S"]},
        {"memory": "512m", "env": {"B": "2"}, "cap_add": "NET_ADMIN", "network": "none"},
        {"pids": 10, "secrets": ["T"], "network": None, "cap_add": ["KILL"]},
    )
    assert merged == {
        "resources": {"memory": "512m", "cpus": 2, "pids": 10},
        "env": {"A": "1", "B": "2"},
        "secrets": ["S", "T"],
        "cap_add": ["NET_ADMIN", "KILL"],
        "network": "none",
    }


# --- images on a registry host the spec names -------------------------------------------------

EVIL = "127.0.0.1:47123/evil/x:latest"  # the engine would ask the host's loopback for it


def write_image_spec(tmp_path: Path, repo: Path, image: str | None, *step_images: str) -> Path:
    steps = ["true", *({"run": "true", "image": i} for i in step_images)]
    data = {"repo": str(repo), "steps": steps, **({"image": image} if image else {})}
    spec = tmp_path / "images.yaml"
    spec.write_text(json.dumps(data))
    return spec


@pytest.mark.parametrize(
    ("image", "host"),
    [(EVIL, "127.0.0.1:47123"), ("localhost/evil", "localhost"), ("[::1]:5000/x", "[::1]:5000"),
     ("registry.example.com/team/app@sha256:" + "a" * 64, "registry.example.com"),
     ("Evil/x", "Evil")],
)  # fmt: skip
@pytest.mark.parametrize("where", ["job", "step"])
def test_a_spec_file_image_on_a_registry_host_needs_a_grant(
    logist, jobs_root, source_repo, tmp_path, image, host, where
):
    """The engine pulls from the registry an image names, with the operator's registry
    credentials: a spec's ``127.0.0.1:PORT/...`` made it ask the host's loopback (red team)."""
    job, steps = (image, ()) if where == "job" else (None, ("logist/busybox:latest", image))
    spec = write_image_spec(tmp_path, source_repo, job, *steps)
    cfg = write_config(tmp_path, "")
    out = create(logist, "--file", str(spec), config=cfg)
    setting = f"image {image}" if where == "job" else f"steps[3].image {image}"
    assert out.returncode == 2
    assert out.stderr == refusal(
        spec, setting, f"--image {image}", f"{{image: [{host}]}}", str(cfg)
    )
    assert out.stdout == "" and list(jobs_root.iterdir()) == []


def test_a_spec_files_registry_image_is_granted_by_the_same_image_on_the_command_line(
    logist, jobs_root, source_repo, tmp_path
):
    spec = write_image_spec(tmp_path, source_repo, EVIL, EVIL)
    out = create(logist, "flag", "--file", str(spec), "--image", EVIL)
    assert out.returncode == 0, out.stderr
    m = manifest(jobs_root, "flag")
    assert (m["image"], m["steps"][1]["image"]) == (EVIL, EVIL)
    # --image overrides the spec's image, so that one is no question; a step's other image is
    other = write_image_spec(tmp_path, source_repo, "localhost/a", "localhost/b")
    out = create(logist, "--file", str(other), "--image", "localhost/a")
    assert out.returncode == 2 and "asks for steps[2].image localhost/b" in out.stderr
    out = create(logist, "--file", str(other), "--image", "localhost")  # an image, not a host
    assert out.returncode == 2 and "asks for steps[2].image localhost/b" in out.stderr
    # steps given on the command line replace the spec's, images and all
    out = create(logist, "steps", "--file", str(other), "--image", "python:3.12", "--step", "true")
    assert out.returncode == 0, out.stderr


def test_the_configurations_allow_image_grants_a_registry_host_or_a_whole_image(
    logist, jobs_root, source_repo, tmp_path
):
    spec = write_image_spec(tmp_path, source_repo, EVIL, "127.0.0.1:47123/other:1")
    by_host = write_config(tmp_path, "allow: {image: ['127.0.0.1:47123']}\n")
    out = create(logist, "host", "--file", str(spec), config=by_host)
    assert out.returncode == 0, out.stderr
    assert manifest(jobs_root, "host")["image"] == EVIL
    for entry in ("127.0.0.1", "127.0.0.1:47124", "evil/x:latest", EVIL):  # the host as written
        cfg = write_config(tmp_path, f"allow: {{image: ['{entry}']}}\n")
        out = create(logist, "--file", str(spec), config=cfg)
        assert out.returncode == 2 and "cannot grant" in out.stderr, (entry, out.stderr)
    whole = write_config(tmp_path, f"allow: {{image: ['{EVIL}', '127.0.0.1:47123/other:1']}}\n")
    out = create(logist, "whole", "--file", str(spec), config=whole)
    assert out.returncode == 0, out.stderr
    default = write_config(tmp_path, f"image: '{EVIL}'\n")  # a default is trusted: that image
    out = create(
        logist, "--file", str(write_image_spec(tmp_path, source_repo, EVIL)), config=default
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "image", ["python:3.12", "logist/step:latest", "library/busybox", "localhost:5000", "a" * 64]
)
def test_a_spec_file_image_without_a_registry_host_needs_no_grant(
    logist, jobs_root, source_repo, tmp_path, image
):
    """The engine's default registry is the operator's choice (``localhost:5000`` is the image
    ``localhost`` tagged ``5000`` there; 64 hex digits, an image's id)."""
    spec = write_image_spec(tmp_path, source_repo, image, image)
    out = create(logist, "ok", "--file", str(spec), config=write_config(tmp_path, ""))
    assert out.returncode == 0, out.stderr
    assert manifest(jobs_root, "ok")["image"] == image


@pytest.mark.parametrize("entry", ["bad//x", "-v", "https://registry.example.com", "a:b:c"])
def test_an_allow_image_entry_that_is_no_image_nor_registry_host_is_exit_2(
    logist, source_repo, tmp_path, entry
):
    cfg = write_config(tmp_path, f"allow: {{image: ['{entry}']}}\n")
    out = create(logist, "--repo", str(source_repo), "--step", "true", config=cfg)
    assert out.returncode == 2
    assert out.stderr.startswith(
        f"logist: error: configuration {cfg}: invalid value for allow.image"
    )


# --- a refused secret never reaches a step; a granted one does ---------------------------------


@pytest.mark.docker
@pytest.mark.timeout(180)
@pytest.mark.parametrize("grant", ["flag", "config"])
def test_a_spec_files_secret_reaches_the_step_only_when_granted(
    logist, jobs_root, source_repo, tmp_path, docker_client, grant
):
    name, value = "LOGIST_GRANT_SECRET", "gs-" + os.urandom(8).hex()
    spec = write_spec(tmp_path, source_repo, f"secrets: [{name}]\nimage: logist/busybox:latest")
    spec.write_text(spec.read_text().replace("['true']", f"['echo \"got=${name}.\"']"))
    cfg = write_config(tmp_path, f"allow: {{secrets: [{name}]}}\n" if grant == "config" else "")
    env = {name: value, "LOGIST_CONFIG": ""}
    refused = logist("run", "--file", str(spec), env=env)
    assert refused.returncode == 2
    assert f"asks for secret {name}" in refused.stderr
    assert value not in refused.stdout + refused.stderr and "got=" not in refused.stdout
    assert list(jobs_root.iterdir()) == []  # no job, so no step, no container
    label = f"logist.jobs-dir={jobs_root}"
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
    args = ["--secret", name] if grant == "flag" else []
    env["LOGIST_CONFIG"] = str(cfg)
    granted = logist("run", "--file", str(spec), *args, env=env)
    assert granted.returncode == 0, granted.stderr
    assert "got=***." in granted.stdout and value not in granted.stdout + granted.stderr
