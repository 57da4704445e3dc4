"""Test helpers: run a plugin in-process, or talk to a running runner as APISIX does.

    from sidecar.testing import run_request
    result = run_request(MyPlugin(), {"body": "hi"}, path="/x", headers=[("x-a", "1")])
    assert result.status == 200          # a messages.Stop, a messages.Rewrite, or None
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.plugin import Plugin
from sidecar.protocol import messages as m
from sidecar.runner import new_request, new_response, run_request_chain, run_response_chain

from .client import Client, ExtraInfoSource, ProtocolViolation, RunnerError

Stop = m.Stop
Rewrite = m.Rewrite
ResponseChange = m.HTTPRespCallResp

__all__ = [
    "Client",
    "ExtraInfoSource",
    "ProtocolViolation",
    "ResponseChange",
    "Rewrite",
    "RunnerError",
    "Stop",
    "parse",
    "run_request",
    "run_response",
]

Chain = Plugin | Iterable[tuple[Plugin, Any]]


def parse(plugin: Plugin, conf: Any) -> Any:
    """Parse a configuration as PrepareConf would: a str is raw JSON, anything else is dumped."""
    return plugin.parse_conf(conf if isinstance(conf, str) else json.dumps(conf))


def _chain(plugin: Chain, conf: Any) -> list[tuple[Plugin, Any]]:
    if isinstance(plugin, Plugin):
        return [(plugin, parse(plugin, conf))]
    return [(p, parse(p, c)) for p, c in plugin]


def run_request(
    plugin: Chain,
    conf: Any = None,
    *,
    id: int = 0,
    method: str = "GET",
    path: str = "/",
    args: Iterable[tuple[str, str | None]] = (),
    headers: Iterable[tuple[str, str | None]] = (),
    src_ip: str = "127.0.0.1",
    vars: Mapping[str, str | bytes | None] | None = None,
    body: bytes | None = None,
    extra: ExtraInfoSource | None = None,
) -> m.Stop | m.Rewrite | None:
    """Run request_filter as the runner would; return what APISIX would be told.

    `plugin` is one plugin (with `conf`) or a list of (plugin, conf) run as a chain.
    """
    source = extra or ExtraInfoSource(vars=vars or {}, req_body=body)
    req = m.HTTPReqCallReq(
        id=id, src_ip=ipaddress.ip_address(src_ip).packed, method=method, path=path,
        args=list(args), headers=list(headers), conf_token=1,
    )
    request = new_request(req, lambda t, n: source.answer(m.ExtraInfoReq(t, n)))
    return run_request_chain(_chain(plugin, conf), request)


def run_response(
    plugin: Chain,
    conf: Any = None,
    *,
    id: int = 0,
    status: int = 200,
    headers: Iterable[tuple[str, str | None]] = (),
    body: bytes | None = None,
    vars: Mapping[str, str | bytes | None] | None = None,
    extra: ExtraInfoSource | None = None,
) -> m.HTTPRespCallResp:
    """Run response_filter as the runner would; return the HTTPRespCall reply APISIX would get."""
    source = extra or ExtraInfoSource(vars=vars or {}, resp_body=body)
    req = m.HTTPRespCallReq(id=id, status=status, headers=list(headers), conf_token=1)
    response = new_response(req, lambda t, n: source.answer(m.ExtraInfoReq(t, n)))
    return run_response_chain(_chain(plugin, conf), response)
