"""Plugins the benchmark loads into the runner with `--plugin bench.plugins:Rewrite` etc.

They do the typical small amount of work of their scenario and nothing else, so a figure measures
the runner and not the plugin.
"""

from __future__ import annotations

from sidecar import Plugin, Request, StopResponse

REWRITE_PATH = "/rewritten"
REWRITE_HEADERS = (("x-bench-a", "1"), ("x-bench-b", "two"))
REWRITE_ARG = ("bench", "yes")
VARS = ("remote_addr", "server_addr", "route_id")


class Rewrite(Plugin):
    """Rewrites the path, sets two headers and one argument (a `Rewrite` reply)."""

    name = "bench-rewrite"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        request.path = REWRITE_PATH
        for name, value in REWRITE_HEADERS:
            request.headers.set(name, value)
        request.args.set(*REWRITE_ARG)


class ReadVars(Plugin):
    """Reads three variables through ExtraInfo and answers with them (a `Stop` reply)."""

    name = "bench-vars"

    def request_filter(self, conf, request: Request, response: StopResponse) -> None:
        response.status = 200
        response.write("|".join(request.var(name) or "" for name in VARS))
