"""`say`: answer the request itself with a fixed body (ext-plugin-pre-req / post-req)."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar import Plugin, Request, StopResponse, register


@dataclass(frozen=True)
class SayConf:
    """`{"body": "..."}`; an empty or missing body lets the request through."""

    body: str = ""


@register
class Say(Plugin):
    """Stop the request with status 200, `X-Resp-A6-Runner: Python` and the configured body."""

    name = "say"
    Conf = SayConf

    def request_filter(self, conf: SayConf, request: Request, response: StopResponse) -> None:
        if not conf.body:
            return
        response.status = 200
        response.headers.set("X-Resp-A6-Runner", "Python")
        response.write(conf.body)
