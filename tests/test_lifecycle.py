"""The runner's life as APISIX drives it: SIGTERM, reloads on the same path, its parent dying,
restarts that leave old tokens behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from sidecar.protocol import messages as m
from sidecar.protocol.frame import RPC_EXTRA_INFO, RPC_HTTP_REQ_CALL, FrameReader, pack_frame
from sidecar.testing import Client
from tests._runner_proc import (  # noqa: F401  (fixtures)
    FAULTY,
    connect,
    expect_err,
    expect_stop,
    prepare,
    req_call,
    req_call_payload,
    run_argv,
    runner_env,
    runners_fixture,
    wait_until,
)

SLEEP = ("--plugin", f"{FAULTY}:Sleep")


class InFlight(threading.Thread):
    """One call to the fault-sleep plugin; `started` is set once the runner is inside the plugin
    (it asked an ExtraInfo question), then `reply` holds the final frame or None if closed."""

    def __init__(self, path: str, token: int, call_id: int) -> None:
        super().__init__(daemon=True)
        self.sock = connect(path)
        self.token, self.call_id = token, call_id
        self.started = threading.Event()
        self.reply: tuple[int, bytes] | None = None
        self.done_at = 0.0

    def run(self) -> None:
        reader = FrameReader(self.sock)
        self.sock.sendall(pack_frame(RPC_HTTP_REQ_CALL, req_call_payload(self.token, self.call_id)))
        rtype, _ = reader.read()
        assert rtype == RPC_EXTRA_INFO
        self.started.set()
        no_value = m.encode_extra_info_resp(m.ExtraInfoResp(None))
        self.sock.sendall(pack_frame(RPC_EXTRA_INFO, no_value))
        try:
            self.reply = reader.read()
        except OSError:
            self.reply = None
        self.done_at = time.monotonic()
        self.sock.close()


def _sleep_token(path: str, seconds: float, body: str = "done") -> int:
    conf = json.dumps({"seconds": seconds, "announce": True, "body": body})
    with connect(path) as sock:
        return prepare(sock, [("fault-sleep", conf)])


def _start_calls(path: str, token: int, n: int) -> list[InFlight]:
    calls = [InFlight(path, token, i) for i in range(n)]
    for call in calls:
        call.start()
    for call in calls:
        assert call.started.wait(5), "the call never reached the plugin"
    return calls


def _refused(path: str) -> bool:
    try:
        connect(path, timeout=1).close()
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    return False


def test_sigterm_lets_in_flight_calls_finish_refuses_new_ones_and_exits_0_within_a_second(runners):
    runner = runners.start(*SLEEP)
    token = _sleep_token(runner.path, 0.4)
    idle = connect(runner.path)  # a pooled connection with no call on it
    calls = _start_calls(runner.path, token, 5)

    runner.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    wait_until(lambda: _refused(runner.path), 0.5, interval=0.005, what="new connections refused")
    refused_at = time.monotonic()
    assert idle.recv(1) == b""  # idle connections are closed at once
    rc = runner.wait(5)
    exited = time.monotonic() - sent

    for call in calls:
        call.join(5)
        expect_stop(call.reply, call.call_id, b"done")
        assert call.done_at > refused_at
    assert rc == 0
    assert exited < 1.0, f"exit took {exited:.3f}s"
    assert not os.path.exists(runner.path)
    print(f"\nFIGURE exit after SIGTERM with 5 calls in flight: {exited * 1000:.0f} ms")


def test_sigterm_with_no_call_in_flight_exits_0_at_once(runners):
    runner = runners.start()
    with Client(runner.path) as client:
        client.request([("say", '{"body":"x"}')])
        runner.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert runner.wait(5) == 0
    exited = time.monotonic() - sent
    assert exited < 1.0
    print(f"\nFIGURE exit after SIGTERM, idle: {exited * 1000:.0f} ms")


def test_calls_outliving_the_grace_are_dropped_and_the_runner_still_exits_0_within_a_second(
    runners,
):
    runner = runners.start(*SLEEP, "--grace", "0.6")
    token = _sleep_token(runner.path, 30)
    calls = _start_calls(runner.path, token, 3)
    runner.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert runner.wait(5) == 0
    exited = time.monotonic() - sent
    for call in calls:
        call.join(5)
        assert call.reply is None  # closed without a reply: APISIX answers 503, never a pass
    assert 0.55 < exited < 1.0
    assert "grace period over; dropping calls" in runner.messages()


def test_second_runner_on_the_same_path_keeps_its_socket_when_the_first_finishes_exiting(runners):
    first = runners.start(*SLEEP, "--grace", "5")
    token = _sleep_token(first.path, 1.5)
    (call,) = _start_calls(first.path, token, 1)
    first.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: _refused(first.path), 1, interval=0.005, what="the first runner to stop")

    second = runners.start(directory=first.dir)  # same path, as after `apisix reload`
    assert first.proc.poll() is None, "the first runner must still be exiting for this test"
    inode = os.stat(second.path).st_ino

    call.join(5)
    expect_stop(call.reply, 0, b"done")  # the first runner finished its call...
    assert first.wait(5) == 0
    assert os.stat(second.path).st_ino == inode  # ...and left the second one's socket alone
    assert "socket file belongs to a newer runner; leaving it" in first.messages()
    assert "removed stale socket file" in second.messages()
    with Client(second.path) as client:
        assert client.request([("say", '{"body":"second"}')]).action.body == b"second"


SUPERVISOR = r"""
import ctypes, json, os, socket, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back to us
argv, path, log, when = json.loads(sys.argv[1])
middle = subprocess.Popen([sys.executable, "-c", (
    "import subprocess, sys, time, json\n"
    "p = subprocess.Popen(json.loads(sys.argv[1]), stderr=open(sys.argv[2], 'wb'),"
    " stdout=subprocess.DEVNULL)\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(60)\n"), json.dumps(argv), log], stdout=subprocess.PIPE)
runner = int(middle.stdout.readline())
deadline = time.monotonic() + 15
while True:  # the parent dies once the socket file exists, or once it accepts a connection
    try:
        if when == "bound" and os.path.exists(path): break
        s = socket.socket(socket.AF_UNIX); s.connect(path); s.close(); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.001)
middle.kill(); middle.wait()
killed = time.monotonic()
result = {"runner": runner}
while time.monotonic() - killed < 5:
    pid, status = os.waitpid(runner, os.WNOHANG)
    if pid:
        result.update(rc=os.waitstatus_to_exitcode(status), seconds=time.monotonic() - killed)
        break
    time.sleep(0.01)
else:
    os.kill(runner, 9); os.waitpid(runner, 0)
    result.update(rc=None, seconds=None)
result["socket_left"] = os.path.exists(path)
print(json.dumps(result), flush=True)
"""


@pytest.mark.parametrize("when", ["bound", "serving"])
def test_runner_exits_when_its_parent_dies_and_removes_its_socket(runners, when):
    directory = runners.new_dir()
    path, log = str(directory / "r.sock"), str(directory / "r.log")
    spec = json.dumps([run_argv(path), path, log, when])
    out = subprocess.run([sys.executable, "-c", SUPERVISOR, spec], env=runner_env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["rc"] == 0, f"runner lingered after its parent died: {result}"
    assert result["seconds"] < 2.0  # the parent is polled every 0.5 s
    assert result["socket_left"] is False
    messages = [json.loads(line)["message"] for line in open(log) if line.startswith("{")]
    assert "parent process exited; stopping" in messages
    print(f"\nFIGURE exit after parent death: {result['seconds'] * 1000:.0f} ms")


ROUTES = [[("say", json.dumps({"body": f"route-{k}"}))] for k in range(5)]


def test_restart_client_holding_old_tokens_re_prepares_and_loses_no_request(runners):
    first = runners.start()
    client = Client(first.path, timeout=5)
    answered = 0
    for i in range(50):
        k = i % 5
        assert client.request(ROUTES[k], id=i).action.body == f"route-{k}".encode()
        answered += 1
    assert (client.prepares, client.retries) == (5, 0)

    assert first.terminate() == 0
    runners.start(directory=first.dir)
    client.close()  # APISIX's pool drops connections the old runner closed; its tokens survive

    for i in range(50, 100):
        k = i % 5
        assert client.request(ROUTES[k], id=i).action.body == f"route-{k}".encode()
        answered += 1
    assert answered == 100
    assert client.retries == 5  # one CONF_TOKEN_NOT_FOUND per route, then a fresh token
    assert client.prepares == 10
    client.close()


def test_tokens_of_a_previous_runner_are_never_another_configurations_across_restarts(runners):
    """Issue 9 item 1: tokens numbered from a fixed start would collide after a restart."""
    directory = runners.new_dir()
    old_tokens: list[int] = []
    restarts, routes = 20, 10
    for gen in range(restarts + 1):
        runner = runners.start(directory=directory)
        with connect(runner.path) as sock:
            for token in old_tokens:
                assert expect_err(req_call(sock, token, 1)) == m.ERR_CONF_TOKEN_NOT_FOUND
            tokens = [prepare(sock, [("say", f'{{"body":"g{gen}-r{r}"}}')], key=f"route#{r}#1")
                      for r in range(routes)]
            for r, token in enumerate(tokens):
                assert token != 0
                expect_stop(req_call(sock, token, r), r, f"g{gen}-r{r}".encode())
        assert not set(tokens) & set(old_tokens)
        old_tokens.extend(tokens)
        assert runner.terminate() == 0
    assert len(old_tokens) == (restarts + 1) * routes


def test_connect_to_a_stopped_runner_is_refused_not_hung(runners):
    runner = runners.start()
    assert runner.terminate() == 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        err = sock.connect_ex(runner.path)
    assert err in (errno.ENOENT, errno.ECONNREFUSED)
