"""Plugins the protocol tests load into a real runner with `--plugin tests.plugins_for_tests`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from sidecar import Plugin, Request, Response, StopResponse, register


@dataclass
class RewriteConf:
    path: str | None = None
    set_headers: dict[str, str] = field(default_factory=dict)
    del_headers: list[str] = field(default_factory=list)
    set_args: dict[str, str] = field(default_factory=dict)
    del_args: list[str] = field(default_factory=list)
    resp_headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


@register
class Rewrite(Plugin):
    """Rewrites the request as configured."""

    name = "test-rewrite"
    Conf = RewriteConf

    def request_filter(self, conf: RewriteConf, request: Request, response: StopResponse) -> None:
        if conf.path:
            request.path = conf.path
        for name, value in conf.set_headers.items():
            request.headers.set(name, value)
        for name in conf.del_headers:
            request.headers.delete(name)
        for name, value in conf.set_args.items():
            request.args.set(name, value)
        for name in conf.del_args:
            request.args.delete(name)
        for name, value in conf.resp_headers.items():
            request.resp_headers.add(name, value)
        if conf.body:
            request.set_body(conf.body)


@register
class Echo(Plugin):
    """Answers with a JSON view of the request as the chain left it, vars and body included."""

    name = "test-echo"

    def request_filter(self, conf: dict, request: Request, response: StopResponse) -> None:
        conf = conf or {}
        view = {
            "id": request.id,
            "src_ip": str(request.src_ip),
            "method": request.method,
            "path": request.path,
            "args": request.args.items(),
            "headers": request.headers.items(),
            "vars": {name: request.var(name) for name in conf.get("vars", [])},
        }
        if conf.get("body"):
            view["body"] = request.body().decode()
            view["body_again"] = request.body().decode()
        response.status = 200
        response.headers.set("Content-Type", "application/json")
        response.write(json.dumps(view))


@register
class Raise(Plugin):
    """Raises in every filter."""

    name = "test-raise"

    def request_filter(self, conf, request, response) -> None:
        raise RuntimeError("boom from test-raise")

    def response_filter(self, conf, response) -> None:
        raise RuntimeError("boom from test-raise")


@register
class Sleep(Plugin):
    """Sleeps `seconds` (cooperatively, as gevent patches time.sleep) before doing nothing."""

    name = "test-sleep"

    def request_filter(self, conf: dict, request, response) -> None:
        time.sleep(float(conf["seconds"]))


@register
class Huge(Plugin):
    """Answers with a body of `size` bytes (to exceed the frame limit)."""

    name = "test-huge"

    def request_filter(self, conf: dict, request, response) -> None:
        response.write(b"x" * int(conf["size"]))


@register
class RespBodyTwice(Plugin):
    """Reads the upstream body twice and a var, then appends what it saw."""

    name = "test-resp-body"

    def response_filter(self, conf, response: Response) -> None:
        first = response.body()
        second = response.body()
        response.headers.set("X-Same", str(first == second))
        response.headers.set("X-Route", response.var("route_id") or "-")
        response.set_body(first + b"|seen")


@register
class FaultInjection(Plugin):
    """The Go runner's sample `fault-injection`, enough to replay captured frames."""

    name = "fault-injection"

    def request_filter(self, conf: dict, request, response) -> None:
        import random

        if random.random() * 100 < float(conf.get("percentage", 100)):
            response.status = int(conf["http_status"])
            if conf.get("body"):
                response.write(conf["body"])


@register
class RequestBodyRewrite(Plugin):
    """The Go runner's sample `request-body-rewrite`."""

    name = "request-body-rewrite"

    def request_filter(self, conf: dict, request, response) -> None:
        request.set_body(conf["new_body"])
