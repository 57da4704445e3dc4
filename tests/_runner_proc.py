"""The real runner as a subprocess, and raw-socket helpers to talk to it, for the reliability tests.

Tests import the fixtures `runners` and `module_runners` (as runners_fixture, ...) from here;
every process a test starts is killed and every directory removed when the test ends, passed or
not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from sidecar.protocol import messages as m
from sidecar.protocol.frame import (
    RPC_ERROR,
    RPC_HTTP_REQ_CALL,
    RPC_PREPARE_CONF,
    FrameReader,
    pack_frame,
)

REPO = Path(__file__).resolve().parents[1]
FRAMES = Path("/work/shared/apisix-frames")
FAULTY = "tests.faulty_plugins"


def runner_env(**extra: str) -> dict[str, str]:
    """The environment of a runner: this one, minus settings that would change its behaviour."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("APISIX_SIDECAR_") and k != "APISIX_LISTEN_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_argv(path: str, *args: str) -> list[str]:
    """The command line of a runner listening on `path` with JSON logs."""
    return [sys.executable, "-m", "sidecar", "run", "--listen", f"unix:{path}",
            "--log-format", "json", *args]


class RunnerProc:
    """One runner process, its socket path and its captured stderr."""

    def __init__(self, directory: Path, args: Sequence[str], name: str = "r.sock",
                 env: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.path = str(directory / name)
        self.stderr_path = directory / f"{name}.{time.monotonic_ns()}.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 (closed in stop/kill)
        self.proc = subprocess.Popen(
            run_argv(self.path, *args), cwd=REPO, env=runner_env(**(env or {})),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 15.0) -> RunnerProc:
        """Poll until the runner answers a PrepareConf on its socket (no fixed sleep)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"runner exited with {self.proc.returncode}: {self.stderr()}")
            try:
                with connect(self.path, timeout=1.0) as sock:
                    prepare(sock, [])
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"runner not ready in {timeout}s: {self.stderr()}"
                    ) from None
                time.sleep(0.01)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def logs(self) -> list[dict]:
        """The runner's JSON log lines so far."""
        return [json.loads(line) for line in self.stderr().splitlines() if line.startswith("{")]

    def messages(self) -> list[str]:
        return [line.get("message", "") for line in self.logs()]

    def wait(self, timeout: float = 5.0) -> int:
        rc = self.proc.wait(timeout)
        self._stderr.close()
        return rc

    def terminate(self, timeout: float = 5.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        finally:
            self._stderr.close()
            if self.proc.stdout:
                self.proc.stdout.close()

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def status(self, timeout: float = 5.0) -> dict:
        """Ask for the runner's status log line (SIGUSR1) and return it."""
        before = sum(1 for msg in self.messages() if msg == "status")
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.logs() if line.get("message") == "status"]
            if len(lines) > before:
                return lines[-1]
            time.sleep(0.01)
        raise AssertionError("no status line after SIGUSR1")


class Runners:
    """Starts runners in short temporary directories and cleans everything up."""

    def __init__(self) -> None:
        self.procs: list[RunnerProc] = []
        self.dirs: list[Path] = []

    def new_dir(self) -> Path:
        # Short: unix socket paths are limited to 107 bytes, pytest's tmp_path can be longer.
        directory = Path(tempfile.mkdtemp(prefix="sc-", dir="/tmp"))
        self.dirs.append(directory)
        return directory

    def start(self, *args: str, directory: Path | None = None, ready: bool = True,
              env: dict[str, str] | None = None) -> RunnerProc:
        proc = RunnerProc(directory or self.new_dir(), args, env=env)
        self.procs.append(proc)
        return proc.wait_ready() if ready else proc

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(name="runners")
def runners_fixture() -> Iterator[Runners]:
    """A factory of runner processes, all killed at the end of the test."""
    factory = Runners()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(name="module_runners", scope="module")
def module_runners_fixture() -> Iterator[Runners]:
    """The same, shared by the tests of a module."""
    factory = Runners()
    try:
        yield factory
    finally:
        factory.cleanup()


# --- raw protocol helpers (blocking sockets, one frame at a time) ---------------------------

def connect(path: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def read_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    return FrameReader(sock).read()


def exchange(sock: socket.socket, rpc_type: int, payload: bytes) -> tuple[int, bytes]:
    sock.sendall(pack_frame(rpc_type, payload))
    frame = read_frame(sock)
    assert frame is not None, "runner closed the connection instead of replying"
    return frame


def prepare(sock: socket.socket, conf: list[tuple[str, str]], key: str = "") -> int:
    """PrepareConf on this connection; returns the token."""
    payload = m.encode_prepare_conf_req(m.PrepareConfReq(conf=conf, key=key))
    rtype, reply = exchange(sock, RPC_PREPARE_CONF, payload)
    assert rtype == RPC_PREPARE_CONF, (rtype, reply)
    return m.decode_prepare_conf_resp(reply)


def req_call_payload(token: int, call_id: int = 0, path: str = "/",
                     headers: list | None = None, args: list | None = None) -> bytes:
    return m.encode_http_req_call_req(m.HTTPReqCallReq(
        id=call_id, src_ip=bytes((127, 0, 0, 1)), method="GET", path=path,
        args=args or [], headers=headers or [], conf_token=token,
    ))


def req_call(sock: socket.socket, token: int, call_id: int = 0) -> tuple[int, bytes]:
    return exchange(sock, RPC_HTTP_REQ_CALL, req_call_payload(token, call_id))


def expect_err(frame: tuple[int, bytes] | None) -> int:
    """The Err code of a type-0 reply (fails on anything else)."""
    assert frame is not None, "connection closed, an Err reply was expected"
    rtype, payload = frame
    assert rtype == RPC_ERROR, f"expected a type-0 Err reply, got type {rtype}: {payload!r}"
    return m.decode_err(payload)


def expect_stop(frame: tuple[int, bytes], call_id: int, body: bytes) -> None:
    rtype, payload = frame
    assert rtype == RPC_HTTP_REQ_CALL, (rtype, payload)
    reply = m.decode_http_req_call_resp(payload)
    assert reply.id == call_id
    assert isinstance(reply.action, m.Stop), reply
    assert reply.action.body == body


class Healthy:
    """A connection kept open beside the abuse, checked to get correct replies throughout."""

    def __init__(self, path: str) -> None:
        self.sock = connect(path, timeout=5.0)
        self.token = prepare(self.sock, [("say", '{"body":"healthy"}')])
        self.calls = 0

    def check(self) -> None:
        self.calls += 1
        expect_stop(req_call(self.sock, self.token, self.calls), self.calls, b"healthy")

    def close(self) -> None:
        self.sock.close()


def wait_until(predicate, timeout: float, interval: float = 0.01, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
