"""What the gateway suite configures: its routes, the standalone route file, the etcd command line.

Pure data and text, no Docker: unit tested in tests/test_integration_support.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .yamlutil import dump_apisix_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"

# Used only where docker/Dockerfile cannot be read; the Dockerfile's ARG is the pin.
FALLBACK_APISIX_IMAGE = "apache/apisix:3.19.0-debian"
# etcd's own image, configured by command-line flags only (any 3.4 or 3.5 tag works).
DEFAULT_ETCD_IMAGE = "quay.io/coreos/etcd:v3.5.17"

# The upstream, as the gateway reaches it on the suite's network.
ECHO_ALIAS = "echo"
ECHO_PORT = 8080
ETCD_ALIAS = "etcd"
ETCD_PORT = 2379

# Traditional mode (docker/entrypoint.sh): DEPLOYMENT_ENV=traditional selects
# conf/config-traditional.yaml, whose Admin API key and etcd endpoint come from ADMIN_KEY_ENV and
# ETCD_HOST_ENV. The key below exists only in this suite (letters in it: APISIX's ${{...}}
# interpolation would turn an all-digit key into a number).
DEPLOYMENT_ENV = "APISIX_SIDECAR_DEPLOYMENT"
ADMIN_KEY_ENV = "APISIX_ADMIN_KEY"
ETCD_HOST_ENV = "APISIX_ETCD_HOST"
TEST_ADMIN_KEY = "integration-suite-admin-key-5f1c2a9e"

GATEWAY_PORT = 9080
ADMIN_PORT = 9180
STANDALONE_FILE = "/usr/local/apisix/conf/apisix.yaml"

# Route paths of the standalone file, one per case.
SAY_PRE = "/say-pre"
SAY_POST = "/say-post"
RR_REPLACE = "/rr-replace"
RR_FILTERS = "/rr-filters"
REWRITE = "/rewrite"
EXTRA_INFO = "/extra-info"
RAISE = "/raise"
PLAIN = "/plain"

SAY_BODY = "hello"
SAY_POST_BODY = "hello from post-req"
RR_REPLACE_CONF = {"status": 201, "headers": {"X-Rewritten": "yes"}, "body": "rewritten\n"}
# The upstream echoes the query: o=zqz-zqz&g=k1k2k3 becomes o=ONE-zqz, g=K1K2K3.
RR_FILTERS_CONF = {
    "filters": [
        {"regex": "zqz", "scope": "once", "replace": "ONE"},
        {"regex": "k([0-9])", "scope": "global", "replace": "K$1"},
    ]
}
REWRITE_CONF = {
    "path": "/rewritten/path",
    "set_headers": {"X-Changed": "new", "X-Added": "added"},
    "delete_headers": ["X-Drop"],
    "set_args": {"a": "changed", "n": "new"},
    "delete_args": ["b"],
}


def default_apisix_image(dockerfile: Path = DOCKERFILE) -> str:
    """The base image docker/Dockerfile pins (`ARG APISIX_IMAGE=...`), else the fallback."""
    try:
        text = dockerfile.read_text()
    except OSError:
        return FALLBACK_APISIX_IMAGE
    match = re.search(r"^\s*ARG\s+APISIX_IMAGE\s*=\s*(\S+)", text, re.MULTILINE)
    return match.group(1).strip("\"'") if match else FALLBACK_APISIX_IMAGE


def conf_entry(name: str, conf: Any) -> dict[str, str]:
    """One element of an ext-plugin `conf` array: the plugin name and its JSON configuration."""
    return {"name": name, "value": json.dumps(conf, separators=(",", ":"))}


def ext_plugin(*entries: tuple[str, Any]) -> dict[str, Any]:
    """The configuration of ext-plugin-pre-req/post-req/post-resp running these plugins."""
    return {"conf": [conf_entry(name, conf) for name, conf in entries]}


def upstream(host: str = ECHO_ALIAS, port: int = ECHO_PORT) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {f"{host}:{port}": 1}}


def route(
    route_id: str, uri: str, plugins: dict[str, Any], upstream_: dict[str, Any]
) -> dict[str, Any]:
    return {"id": str(route_id), "uri": uri, "plugins": plugins, "upstream": upstream_}


def say_route(route_id: str, uri: str, body: str, phase: str = "ext-plugin-pre-req",
              upstream_: dict[str, Any] | None = None) -> dict[str, Any]:
    return route(route_id, uri, {phase: ext_plugin(("say", {"body": body}))},
                 upstream_ or upstream())


def suite_routes(echo_host: str = ECHO_ALIAS, echo_port: int = ECHO_PORT) -> list[dict[str, Any]]:
    """Every route of the standalone file. All share one upstream object, on purpose: the
    route file must still come out without YAML aliases."""
    up = upstream(echo_host, echo_port)
    return [
        say_route("1", SAY_PRE, SAY_BODY, "ext-plugin-pre-req", up),
        say_route("2", SAY_POST, SAY_POST_BODY, "ext-plugin-post-req", up),
        route("3", RR_REPLACE,
              {"ext-plugin-post-resp": ext_plugin(("response-rewrite", RR_REPLACE_CONF))}, up),
        route("4", RR_FILTERS,
              {"ext-plugin-post-resp": ext_plugin(("response-rewrite", RR_FILTERS_CONF))}, up),
        route("5", REWRITE, {"ext-plugin-pre-req": ext_plugin(("test-rewrite", REWRITE_CONF))}, up),
        route("6", EXTRA_INFO, {"ext-plugin-pre-req": ext_plugin(("test-extra-info", {}))}, up),
        route("7", RAISE, {"ext-plugin-pre-req": ext_plugin(("test-raise", {}))}, up),
        route("8", PLAIN, {}, up),
    ]


def standalone_apisix_yaml(routes: list[dict[str, Any]] | None = None) -> str:
    """The route file for file-driven standalone mode, ending with `#END`, alias-free."""
    return dump_apisix_yaml({"routes": suite_routes() if routes is None else routes})


def etcd_command(name: str = "integration", advertise_host: str = ETCD_ALIAS) -> list[str]:
    """A one-member etcd cluster configured by flags only (etcd 3.4, 3.5 and 3.6 accept them)."""
    peer = "http://127.0.0.1:2380"
    return [
        "/usr/local/bin/etcd",
        f"--name={name}",
        "--data-dir=/tmp/etcd-data",
        f"--listen-client-urls=http://0.0.0.0:{ETCD_PORT}",
        f"--advertise-client-urls=http://{advertise_host}:{ETCD_PORT}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={name}={peer}",
        "--initial-cluster-state=new",
    ]


def traditional_env(etcd_host: str = ETCD_ALIAS, admin_key: str = TEST_ADMIN_KEY) -> dict[str, str]:
    """Environment that runs the gateway image in traditional mode against the suite's etcd."""
    return {
        DEPLOYMENT_ENV: "traditional",
        ADMIN_KEY_ENV: admin_key,
        ETCD_HOST_ENV: f"http://{etcd_host}:{ETCD_PORT}",
    }
