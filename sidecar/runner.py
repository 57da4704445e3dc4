"""One exchange, payload in and reply out: prepare a chain, run it, build the reply, map errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .cache import ConfCache, Prepared
from .http import HOP_BY_HOP, CallFields, Entry, Request, Response, StopResponse
from .plugin import Registry
from .protocol import messages as m
from .protocol.frame import (
    MAX_PAYLOAD,
    RPC_ERROR,
    RPC_HTTP_REQ_CALL,
    RPC_HTTP_RESP_CALL,
    RPC_NAMES,
    RPC_PREPARE_CONF,
)

log = logging.getLogger("sidecar.runner")

Ask = Callable[[int, "str | None"], "bytes | None"]
"""Asks APISIX for one ExtraInfo item mid-call: (INFO_VAR, name) / (INFO_REQ_BODY, None) / ..."""

_JOINED_WITH_SEMICOLON = frozenset(("cookie",))
_HOP_BY_HOP_AND_LENGTH = HOP_BY_HOP | {"content-length"}  # dropped when the body is replaced


class ExtraInfoFailed(Exception):
    """The connection broke while asking APISIX for extra information; it must be closed."""


def _no_extra_info(info_type: int, name: str | None) -> bytes | None:
    raise ExtraInfoFailed("extra information cannot be asked outside a call")


class Runner:
    """Answers APISIX's requests with the plugins of a registry and a shared token cache."""

    def __init__(self, registry: Registry, cache: ConfCache) -> None:
        self.registry = registry
        self.cache = cache

    def handle(self, rpc_type: int, payload: bytes, ask: Ask = _no_extra_info) -> tuple[int, bytes]:
        """Answer one request frame; errors become type-0 frames with the protocol's code.

        ExtraInfoFailed propagates (the caller closes the connection), as do BaseExceptions such
        as a call deadline.
        """
        try:
            if rpc_type == RPC_HTTP_REQ_CALL:
                reply = self._request_call(payload, ask)
            elif rpc_type == RPC_HTTP_RESP_CALL:
                reply = self._response_call(payload, ask)
            elif rpc_type == RPC_PREPARE_CONF:
                reply = self._prepare(payload)
            else:
                log.warning("unknown RPC type", extra={"rpc_type": rpc_type})
                return error_frame(m.ERR_BAD_REQUEST)
        except m.DecodeError as exc:
            log.warning(
                "undecodable payload",
                extra={"rpc": RPC_NAMES.get(rpc_type, rpc_type), "error": str(exc)},
            )
            return error_frame(m.ERR_BAD_REQUEST)
        except _CallError as exc:
            return error_frame(exc.code)
        except ExtraInfoFailed:
            raise
        except Exception:
            log.exception("failed to answer", extra={"rpc": RPC_NAMES.get(rpc_type, rpc_type)})
            return error_frame(m.ERR_SERVICE_UNAVAILABLE)
        if len(reply) > MAX_PAYLOAD:
            log.error(
                "reply exceeds the frame limit",
                extra={"rpc": RPC_NAMES[rpc_type], "size": len(reply), "limit": MAX_PAYLOAD},
            )
            return error_frame(m.ERR_SERVICE_UNAVAILABLE)
        return rpc_type, reply

    def _prepare(self, payload: bytes) -> bytes:
        req = m.decode_prepare_conf_req(payload)
        token = self.cache.token_for(req.key, req.conf)
        if token is None:
            token = self.cache.put(self.prepare_chain(req.key, req.conf))
            log.debug("prepared", extra={"key": req.key, "token": token})
        return m.encode_prepare_conf_resp(token)

    def prepare_chain(self, key: str, conf: list[tuple[str, str]]) -> Prepared:
        """Parse every entry once, in order; an unknown plugin or a rejected entry fails closed."""
        chain: list[tuple[Any, Any]] = []
        for name, raw in conf:
            plugin = self.registry.get(name)
            if plugin is None:
                reason = f"unknown plugin {name!r} (registered: {', '.join(self.registry.names())})"
                return self._failed(key, conf, name, reason)
            try:
                parsed = plugin.parse_conf(raw)
            except Exception as exc:
                return self._failed(key, conf, name, f"configuration rejected: {exc}")
            chain.append((plugin, parsed))
        return Prepared(key=key, conf=conf, chain=chain)

    @staticmethod
    def _failed(key: str, conf: list[tuple[str, str]], plugin: str, reason: str) -> Prepared:
        log.error(
            "configuration refused; every call with its token gets SERVICE_UNAVAILABLE",
            extra={"key": key, "plugin": plugin, "reason": reason},
        )
        return Prepared(key=key, conf=conf, error=f"plugin {plugin!r}: {reason}")

    def _lookup(self, token: int, call_id: int) -> Prepared:
        prepared = self.cache.get(token)
        if prepared is None or prepared.error is not None:
            raise self._refused(prepared, token, call_id)
        return prepared

    @staticmethod
    def _refused(prepared: Prepared | None, token: int, call_id: int) -> _CallError:
        """CONF_TOKEN_NOT_FOUND for an unknown token, SERVICE_UNAVAILABLE for a failed conf."""
        if prepared is None:
            log.info("unknown conf token", extra={"token": token, "request_id": call_id})
            return _CallError(m.ERR_CONF_TOKEN_NOT_FOUND)
        log.debug(
            "refused call on a failed configuration",
            extra={"token": token, "request_id": call_id, "reason": prepared.error},
        )
        return _CallError(m.ERR_SERVICE_UNAVAILABLE)

    def _request_call(self, payload: bytes, ask: Ask) -> bytes:
        req = m.LazyHTTPReqCall(payload)  # address, path, args and headers on first use
        prepared = self.cache.get(req.conf_token)
        if prepared is None or prepared.error is not None:
            raise self._refused(prepared, req.conf_token, req.id)
        started = time.perf_counter() if log.isEnabledFor(logging.DEBUG) else 0.0
        try:
            action = run_request_chain(prepared.chain, new_request(req, ask))
        except _PluginFailed as exc:
            raise _plugin_failed(exc, req.conf_token, req.id) from None
        if started:
            _log_call("request call", req.conf_token, req.id, started, action)
        return m.encode_req_call_reply(req.id, action)

    def _response_call(self, payload: bytes, ask: Ask) -> bytes:
        req = m.decode_http_resp_call_req(payload)
        chain = self._lookup(req.conf_token, req.id).chain
        started = time.perf_counter() if log.isEnabledFor(logging.DEBUG) else 0.0
        try:
            reply = run_response_chain(chain, new_response(req, ask))
        except _PluginFailed as exc:
            raise _plugin_failed(exc, req.conf_token, req.id) from None
        if started:
            _log_call("response call", req.conf_token, req.id, started, reply)
        return m.encode_http_resp_call_resp(reply)


class _CallError(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _PluginFailed(Exception):
    def __init__(self, plugin: str) -> None:
        self.plugin = plugin


def _plugin_failed(exc: _PluginFailed, token: int, call_id: int) -> _CallError:
    """A plugin failure becomes SERVICE_UNAVAILABLE, logged once with the plugin's traceback."""
    log.error(
        "plugin failed",
        exc_info=exc.__cause__,
        extra={"plugin": exc.plugin, "token": token, "request_id": call_id},
    )
    return _CallError(m.ERR_SERVICE_UNAVAILABLE)


def error_frame(code: int) -> tuple[int, bytes]:
    """A type-0 frame carrying an Err.Resp code."""
    return RPC_ERROR, m.encode_err(code)


def _log_call(what: str, token: int, call_id: int, started: float, result: Any) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            what,
            extra={
                "token": token,
                "request_id": call_id,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "result": type(result).__name__,
            },
        )


def new_request(req: CallFields, ask: Ask) -> Request:
    """The SDK view of an HTTPReqCall; variables and the body come through `ask`."""
    return Request(req, lambda name: ask(m.INFO_VAR, name), lambda: ask(m.INFO_REQ_BODY, None))


def new_response(req: m.HTTPRespCallReq, ask: Ask) -> Response:
    """The SDK view of an HTTPRespCall; variables and the upstream body come through `ask`."""
    return Response(
        req.id,
        req.status,
        req.headers,
        lambda name: ask(m.INFO_VAR, name),
        lambda: ask(m.INFO_RESP_BODY, None),
    )


def run_request_chain(chain: list[tuple[Any, Any]], request: Request) -> m.Stop | m.Rewrite | None:
    """Run request_filter of each plugin in order; the first that responds ends the chain."""
    stop = StopResponse()
    for plugin, conf in chain:
        try:
            plugin.request_filter(conf, request, stop)
        except (ExtraInfoFailed, _PluginFailed, m.DecodeError):  # DecodeError: lazy headers/args
            raise
        except Exception as exc:
            raise _PluginFailed(plugin.name) from exc
        if stop.stopped:
            return m.Stop(*stop.parts())
    return rewrite_of(request)


def rewrite_of(request: Request) -> m.Rewrite | None:
    """Only what the plugins changed; None when nothing did.

    Request headers are set one entry per name (APISIX's set_header replaces), so several values
    travel joined. When only the path changes, the untouched args travel too: APISIX before 3.16
    drops the query string of a path-only rewrite.
    """
    headers = _header_entries(request) if request.headers_loaded else []
    args = _multi_entries(request.args.changes()) if request.args_loaded else []
    resp_headers = request.resp_headers.items() if request.resp_headers_loaded else []
    path = request.path if request.path_changed else None
    body = request.new_body or b""
    if path is None and not (headers or args or resp_headers or body):
        return None
    if path is not None and not args:
        args = [(name, value) for name, value in request.args.items() if value is not None]
    return m.Rewrite(path=path, headers=headers, args=args, resp_headers=resp_headers, body=body)


def _header_entries(request: Request) -> list[Entry]:
    entries: list[Entry] = []
    for name, values in request.headers.changes():
        if not values:
            entries.append((name, None))
        else:
            sep = "; " if name.lower() in _JOINED_WITH_SEMICOLON else ", "
            entries.append((name, sep.join(v or "" for v in values)))
    return entries


def _multi_entries(changes: list[tuple[str, list[str | None]]]) -> list[Entry]:
    """APISIX: the first entry of a name replaces it, later ones add, a value-less one deletes."""
    entries: list[Entry] = []
    for name, values in changes:
        if not values:
            entries.append((name, None))
        else:
            entries.extend((name, "" if v is None else v) for v in values)
    return entries


def run_response_chain(chain: list[tuple[Any, Any]], response: Response) -> m.HTTPRespCallResp:
    """Run response_filter of each plugin in order and describe the resulting response.

    The reply always carries the full header set (minus hop-by-hop headers, and minus
    Content-Length when the body is replaced): once APISIX gets any header it copies none of the
    upstream's, and without any it drops Content-Type and Content-Encoding.
    """
    for plugin, conf in chain:
        try:
            plugin.response_filter(conf, response)
        except (ExtraInfoFailed, _PluginFailed):
            raise
        except Exception as exc:
            raise _PluginFailed(plugin.name) from exc
    body = response.new_body or b""
    drop = _HOP_BY_HOP_AND_LENGTH if body else HOP_BY_HOP
    headers = [(n, v) for n, v in response.headers.items() if n.lower() not in drop]
    status = response.status if response.status != response.upstream_status else 0
    return m.HTTPRespCallResp(id=response.id, status=status, headers=headers, body=body)
