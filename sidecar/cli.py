"""The `apisix-sidecar` command: run the runner, print its version or plugins, probe a socket."""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import socket
import sys
from collections.abc import Sequence

from . import __version__

ENV_LISTEN = "APISIX_LISTEN_ADDRESS"
ENV_EXPIRE = "APISIX_CONF_EXPIRE_TIME"
ENV_PREFIX = "APISIX_SIDECAR_"


class UsageError(Exception):
    """A setting that makes the runner unable to start; exits 2 with one line on stderr."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else default


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _mode(text: str) -> int:
    try:
        value = int(text.removeprefix("0o"), 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal file mode: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"file mode out of range: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apisix-sidecar", description="Python plugin runner for Apache APISIX."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve APISIX on a unix socket")
    run.add_argument("--listen", help=f"unix:/path (default: ${ENV_LISTEN}, as APISIX sets it)")
    run.add_argument("--socket-mode", type=_mode, default=_env("SOCKET_MODE", "0766"),
                     help="socket file mode, octal (default 0766: workers may be another user)")
    run.add_argument("--backlog", type=_count, default=_env("BACKLOG", "1024"),
                     help="listen backlog (default 1024)")
    run.add_argument("--cache-size", type=_count, default=_env("CACHE_SIZE", "16384"),
                     help="most prepared configurations kept at once (default 16384)")
    run.add_argument("--plugin", action="append", default=[], metavar="MODULE[:ATTR]",
                     help="load a plugin (repeatable); also $APISIX_SIDECAR_PLUGINS")
    run.add_argument("--call-timeout", type=_positive, default=_env("CALL_TIMEOUT", "55"),
                     help="seconds a call may take, below APISIX's 60 s read timeout (default 55)")
    run.add_argument("--grace", type=_positive, default=_env("GRACE", "0.8"),
                     help="seconds in-flight calls get after SIGTERM (default 0.8)")
    run.add_argument("--log-level", default=_env("LOG_LEVEL", "info"),
                     choices=("debug", "info", "warning", "error", "critical"),
                     type=str.lower)
    run.add_argument("--log-format", default=_env("LOG_FORMAT", "json"), choices=("json", "text"))

    sub.add_parser("version", help="print the version")
    sub.add_parser("plugins", help="list the plugins the runner would load")

    check = sub.add_parser("check", help="exit 0 when a runner answers on the socket (a probe)")
    check.add_argument("--listen", help=f"unix:/path (default: ${ENV_LISTEN})")
    check.add_argument("--timeout", type=_positive, default=2.0)
    return parser


def load_registry(specs: Sequence[str]):
    """The default registry with built-in, installed (entry points) and named plugins."""
    from . import plugins  # noqa: F401  (registers the built-in plugins)
    from .plugin import PluginError, registry

    env_specs = (_env("PLUGINS") or "").replace(",", " ").split()
    try:
        registry.load_entry_points()
        registry.load_specs([*env_specs, *specs])
    except PluginError as exc:
        raise UsageError(str(exc)) from None
    return registry


def _expire_time() -> float:
    raw = os.environ.get(ENV_EXPIRE, "").strip()
    if not raw:
        return 3600.0
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise UsageError(f"{ENV_EXPIRE} must be a positive number of seconds, got {raw!r}")
    return value


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters of glibc's malloc.h
_MMAP_ABOVE = 32 << 20  # larger than any frame's body: every buffer comes from the heap
_TRIM_ABOVE = 256 << 20  # free heap kept before glibc hands pages back


def keep_freed_memory() -> bool:
    """Have glibc reuse freed buffers instead of unmapping or trimming them on every call.

    A call with a large body allocates and frees several buffers of that size; by default glibc
    maps each afresh, or trims the heap after it, and the runner page-faults over every one:
    four times the CPU of a 1 MiB response-rewrite call. The price: after a burst of large
    bodies the runner keeps up to 256 MiB of free heap for the next one. Returns False where
    there is no glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE) and mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE))


def freeze_startup_objects() -> int:
    """Collect once, then hide everything made so far (modules, plugins, the server) from the
    garbage collector; returns how many objects it froze.

    Calls that wait for APISIX keep their objects alive across collections, so with many such
    calls in flight full collections run every second or so, and each one pauses every
    connection: about 7 ms over the startup objects, about 1 ms once they are frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _run(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()
    keep_freed_memory()

    from . import logs
    from .cache import ConfCache
    from .runner import Runner
    from .server import AddressError, Server, parse_address

    logs.configure(args.log_level, args.log_format)
    try:
        path = parse_address(args.listen or os.environ.get(ENV_LISTEN))
        cache = ConfCache.for_expire_time(_expire_time(), max_entries=int(args.cache_size))
        server = Server(
            path,
            Runner(load_registry(args.plugin), cache),
            socket_mode=args.socket_mode,
            backlog=int(args.backlog),
            call_timeout=float(args.call_timeout),
            grace=float(args.grace),
        )
        server.bind()
    except (AddressError, UsageError) as exc:
        raise UsageError(str(exc)) from None
    freeze_startup_objects()
    server.serve_forever()
    return 0


def _check(args: argparse.Namespace) -> int:
    from .protocol import messages as m
    from .protocol.frame import RPC_PREPARE_CONF, FrameReader, write_frame
    from .server import AddressError, parse_address

    try:
        path = parse_address(args.listen or os.environ.get(ENV_LISTEN))
    except AddressError as exc:
        raise UsageError(str(exc)) from None
    payload = m.encode_prepare_conf_req(m.PrepareConfReq(conf=[], key="apisix-sidecar#check"))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(args.timeout)
            sock.connect(path)
            write_frame(sock, RPC_PREPARE_CONF, payload)
            frame = FrameReader(sock).read()
    except OSError as exc:
        print(f"apisix-sidecar: no runner answers on {path}: {exc}", file=sys.stderr)
        return 1
    if frame is None or frame[0] != RPC_PREPARE_CONF or not m.decode_prepare_conf_resp(frame[1]):
        print(f"apisix-sidecar: unexpected answer from {path}", file=sys.stderr)
        return 1
    print(f"ok: runner answers on {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m sidecar`."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "version":
            print(f"apisix-sidecar {__version__}")
            return 0
        if args.command == "plugins":
            for name in load_registry([]).names():
                print(name)
            return 0
        return _check(args)
    except UsageError as exc:
        print(f"apisix-sidecar: error: {exc}", file=sys.stderr)
        return 2
