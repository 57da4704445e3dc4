"""Plugins that misbehave on purpose, loaded into a runner by `--plugin tests.faulty_plugins:X`.

Each takes its behaviour from the route configuration so one runner serves every case.
"""

from __future__ import annotations

import socket
import sys
import time

from sidecar import Plugin, Request, Response, StopResponse


class Raise(Plugin):
    """Raises in every filter."""

    name = "fault-raise"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        raise RuntimeError("plugin bug")

    def response_filter(self, conf, response: Response) -> None:
        raise RuntimeError("plugin bug")


class Nonsense(Plugin):
    """Leaves values the reply cannot carry, chosen by `{"kind": ...}`."""

    name = "fault-nonsense"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        kind = conf["kind"]
        if kind == "status-too-big":
            response.status = 70000
            response.write("x")
        elif kind == "status-negative":
            response.status = -1
            response.write("x")
        elif kind == "status-text":
            response.status = "teapot"
            response.write("x")
        elif kind == "body-object":
            response.write(object())
        elif kind == "header-number":
            response.headers.set("x-n", 5)
        elif kind == "path-number":
            request.path = 5
        elif kind == "returns-value":
            return "stop please"  # a filter's return value means nothing

    def response_filter(self, conf, response: Response) -> None:
        kind = conf["kind"]
        if kind == "status-too-big":
            response.status = 70000
        elif kind == "body-object":
            response.set_body(object())


class Sleep(Plugin):
    """Sleeps `seconds` (cooperatively: time.sleep is monkey-patched), optionally first asking a
    var so the caller knows the call is in flight, then stops with `body`."""

    name = "fault-sleep"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        if conf.get("announce"):
            request.var("announce")
        time.sleep(conf["seconds"])
        response.write(conf.get("body", "slept"))


class SwallowDeadline(Plugin):
    """Sleeps past the deadline and swallows whatever interrupts it, then carries on."""

    name = "fault-swallow"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        try:
            time.sleep(conf["seconds"])
        except BaseException:  # noqa: BLE001 (the point of this plugin)
            pass
        request.headers.set("x-after-deadline", "1")


class Block(Plugin):
    """Connects to a TCP server that never answers and waits for its reply."""

    name = "fault-block"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        with socket.create_connection(("127.0.0.1", conf["port"])) as sock:
            sock.recv(1)
        response.write("never")


class Tag(Plugin):
    """Sets a request header (a rewrite that must not escape if a later plugin fails)."""

    name = "tag"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        request.headers.set("x-tag", "1")


class BodyLength(Plugin):
    """Reads the request body and a var, and answers with their sizes only."""

    name = "body-length"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        body = request.body()
        var = request.var("secret_var") or ""
        response.write(f"body={len(body)} var={len(var)}")


class Echo(Plugin):
    """Answers with the path, the args and the headers as text (request data, never run)."""

    name = "echo"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        parts = [request.path, *(f"{n}={v}" for n, v in request.args.items()),
                 *(f"{n}: {v}" for n, v in request.headers.items())]
        response.write("\n".join(parts))


class Exit(Plugin):
    """Calls sys.exit() (or raises another BaseException named by `{"raise": ...}`)."""

    name = "fault-exit"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        kind = conf.get("raise", "SystemExit")
        if kind == "SystemExit":
            sys.exit(3)
        if kind == "KeyboardInterrupt":
            raise KeyboardInterrupt
        if kind == "GeneratorExit":
            raise GeneratorExit
        raise BaseException("plugin bug")
