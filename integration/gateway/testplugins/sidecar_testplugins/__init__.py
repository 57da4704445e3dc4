"""Plugins for the gateway integration suite, written against the public SDK only.

Installed with pip into a derived gateway image; the runner finds them through the entry points
in pyproject.toml (group "apisix_sidecar.plugins"), with no rebuild of apisix-sidecar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sidecar import Plugin


@dataclass
class RewriteConf:
    path: str | None = None
    set_headers: dict[str, str] = field(default_factory=dict)
    delete_headers: list[str] = field(default_factory=list)
    set_args: dict[str, str] = field(default_factory=dict)
    delete_args: list[str] = field(default_factory=list)


class Rewrite(Plugin):
    """test-rewrite: change the request on its way to the upstream.

    {"path": "/new", "set_headers": {"X-A": "1"}, "delete_headers": ["X-B"],
     "set_args": {"a": "1"}, "delete_args": ["b"]}
    """

    name = "test-rewrite"
    Conf = RewriteConf

    def request_filter(self, conf, request, response):
        if conf.path is not None:
            request.path = conf.path
        for name, value in conf.set_headers.items():
            request.headers.set(name, value)
        for name in conf.delete_headers:
            request.headers.delete(name)
        for name, value in conf.set_args.items():
            request.args.set(name, value)
        for name in conf.delete_args:
            request.args.delete(name)


class ExtraInfo(Plugin):
    """test-extra-info: answer with what APISIX tells through ExtraInfo.

    The reply is JSON: the `remote_addr` variable, the request's source IP as APISIX sent it in
    the call, the `route_id` variable and the request body (both fetched from APISIX on demand).
    """

    name = "test-extra-info"

    def request_filter(self, conf, request, response):
        payload = {
            "remote_addr": request.var("remote_addr"),
            "src_ip": None if request.src_ip is None else str(request.src_ip),
            "route_id": request.var("route_id"),
            "body": request.body().decode("utf-8", "replace"),
        }
        response.status = 200
        response.headers.set("Content-Type", "application/json")
        response.write(json.dumps(payload))


class Raise(Plugin):
    """test-raise: fail every request it sees, as a buggy plugin would."""

    name = "test-raise"

    def request_filter(self, conf, request, response):
        raise RuntimeError("test-raise fails on purpose")
