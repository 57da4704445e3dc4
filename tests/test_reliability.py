"""The real runner under odd frames, faulty plugins and load: it keeps serving and fails closed.

Every test talks to a runner subprocess over its unix socket (see _runner_proc.py).
"""

from __future__ import annotations

import errno
import resource
import signal
import socket
import struct
import threading
import time

import pytest

from sidecar.protocol import messages as m
from sidecar.protocol.frame import (
    MAX_PAYLOAD,
    RPC_EXTRA_INFO,
    RPC_HTTP_REQ_CALL,
    RPC_HTTP_RESP_CALL,
    RPC_PREPARE_CONF,
    FrameReader,
    pack_frame,
    pack_header,
)
from sidecar.testing import Client, RunnerError
from tests._runner_proc import (  # noqa: F401  (fixtures)
    FAULTY,
    Healthy,
    connect,
    exchange,
    expect_err,
    expect_stop,
    module_runners_fixture,
    prepare,
    read_frame,
    req_call,
    req_call_payload,
    runners_fixture,
    wait_until,
)

PLUGINS = [f"{FAULTY}:{name}" for name in
           ("Raise", "Nonsense", "Sleep", "SwallowDeadline", "Block", "Tag", "BodyLength", "Exit")]
CALL_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def runner(module_runners):
    """One runner with the faulty plugins and a short call deadline, shared by this module."""
    args = [a for p in PLUGINS for a in ("--plugin", p)]
    return module_runners.start(*args, "--call-timeout", str(CALL_TIMEOUT))


@pytest.fixture
def healthy(runner):
    """A connection beside the test's abuse; checked before and after, then the runner's fds."""
    conn = Healthy(runner.path)
    conn.check()
    fds = runner.fd_count()
    yield conn
    conn.check()
    conn.close()
    wait_until(lambda: runner.fd_count() < fds, 5, what="the runner to close test connections")
    assert runner.proc.poll() is None, runner.stderr()


def _closed_without_reply(sock: socket.socket) -> bool:
    """True when the runner closes the connection without sending anything more."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# --- frame edge cases -------------------------------------------------------------------------

def test_header_split_over_several_writes_is_read_whole(runner, healthy):
    conf = [("say", '{"body":"split"}')]
    payload = m.encode_prepare_conf_req(m.PrepareConfReq(conf=conf, key=""))
    frame = pack_frame(RPC_PREPARE_CONF, payload)
    with connect(runner.path) as sock:
        for piece in (frame[:1], frame[1:3], frame[3:4], frame[4:]):
            sock.sendall(piece)
            time.sleep(0.005)  # let each write arrive on its own
        rtype, reply = read_frame(sock)
        assert rtype == RPC_PREPARE_CONF
        token = m.decode_prepare_conf_resp(reply)
        expect_stop(req_call(sock, token, 7), 7, b"split")


def test_payload_dribbled_one_byte_at_a_time_is_read_whole(runner, healthy):
    conf = [("say", '{"body":"drip"}')]
    payload = m.encode_prepare_conf_req(m.PrepareConfReq(conf=conf, key=""))
    frame = pack_frame(RPC_PREPARE_CONF, payload)
    with connect(runner.path) as sock:
        for i in range(len(frame)):
            sock.sendall(frame[i:i + 1])
            if i % 8 == 0:
                healthy.check()  # the runner serves others while this frame trickles in
            time.sleep(0.001)
        rtype, reply = read_frame(sock)
        assert rtype == RPC_PREPARE_CONF
        expect_stop(req_call(sock, m.decode_prepare_conf_resp(reply), 1), 1, b"drip")


@pytest.mark.parametrize("rpc_type", [0, 1, 2, 3, 4, 5, 255])
def test_length_zero_gets_bad_request_and_the_connection_stays_usable(runner, healthy, rpc_type):
    with connect(runner.path) as sock:
        assert expect_err(exchange(sock, rpc_type, b"")) == m.ERR_BAD_REQUEST
        expect_stop(req_call(sock, healthy.token, 3), 3, b"healthy")


@pytest.mark.parametrize("rpc_type", [RPC_PREPARE_CONF, RPC_HTTP_REQ_CALL, RPC_HTTP_RESP_CALL, 9])
def test_maximum_length_of_garbage_gets_bad_request_and_the_connection_stays_usable(
    runner, healthy, rpc_type
):
    garbage = b"\xff" * MAX_PAYLOAD
    with connect(runner.path, timeout=30) as sock:
        frame = pack_header(rpc_type, MAX_PAYLOAD) + garbage
        assert len(frame) == 4 + 16 * 1024 * 1024 - 1
        assert expect_err(exchange(sock, rpc_type, garbage)) == m.ERR_BAD_REQUEST
        expect_stop(req_call(sock, healthy.token, 4), 4, b"healthy")


@pytest.mark.parametrize("sent", [0, 1, 99])
def test_length_larger_than_what_follows_then_eof_closes_that_connection_only(
    runner, healthy, sent
):
    with connect(runner.path) as sock:
        sock.sendall(pack_header(RPC_HTTP_REQ_CALL, 100) + b"x" * sent)
        healthy.check()  # the runner waits for the rest of that frame and serves others meanwhile
        sock.shutdown(socket.SHUT_WR)
        assert _closed_without_reply(sock)
    wait_until(lambda: "closing connection" in runner.messages(), 5, what="the close to be logged")


def test_header_cut_short_then_eof_closes_that_connection_only(runner, healthy):
    with connect(runner.path) as sock:
        sock.sendall(b"\x02\x00")
        sock.shutdown(socket.SHUT_WR)
        assert _closed_without_reply(sock)


def test_peer_disconnecting_mid_reply_leaves_the_runner_serving(runner, healthy):
    big = "b" * (4 * 1024 * 1024)
    with connect(runner.path, timeout=30) as sock:
        token = prepare(sock, [("say", f'{{"body":"{big}"}}')])
    for _ in range(3):
        sock = connect(runner.path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(pack_frame(RPC_HTTP_REQ_CALL, req_call_payload(token, 5)))
        assert sock.recv(4)[:1] == bytes((RPC_HTTP_REQ_CALL,))  # the reply has started
        sock.close()  # reset, mid-reply
        healthy.check()
    assert not [line for line in runner.logs() if line["message"] == "connection error"]


def _call_until_extra_info(path: str, token: int) -> socket.socket:
    sock = connect(path)
    sock.sendall(pack_frame(RPC_HTTP_REQ_CALL, req_call_payload(token, 11)))
    rtype, question = read_frame(sock)
    assert rtype == RPC_EXTRA_INFO
    assert m.decode_extra_info_req(question).info_type == m.INFO_REQ_BODY
    return sock


@pytest.mark.parametrize("how", ["close", "reset", "half-answer", "wrong-type", "garbage"])
def test_peer_failing_mid_extra_info_loses_only_its_own_connection(runner, healthy, how):
    with connect(runner.path) as sock:
        token = prepare(sock, [("body-length", "{}")])
    sock = _call_until_extra_info(runner.path, token)
    answer = pack_frame(RPC_EXTRA_INFO, m.encode_extra_info_resp(m.ExtraInfoResp(b"body")))
    if how == "close":
        sock.close()
    elif how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    else:
        if how == "half-answer":
            sock.sendall(answer[:6])
            sock.shutdown(socket.SHUT_WR)
        elif how == "wrong-type":
            sock.sendall(pack_frame(RPC_HTTP_REQ_CALL, req_call_payload(token, 12)))
        else:
            sock.sendall(pack_frame(RPC_EXTRA_INFO, b"\x01\x02\x03"))
        assert _closed_without_reply(sock)
        sock.close()
    healthy.check()


def test_extra_info_question_left_unanswered_closes_the_connection_at_the_call_deadline(
    runner, healthy
):
    with connect(runner.path) as sock:
        token = prepare(sock, [("body-length", "{}")])
    with _call_until_extra_info(runner.path, token) as sock:
        started = time.monotonic()
        while time.monotonic() - started < CALL_TIMEOUT / 2:
            healthy.check()
        assert _closed_without_reply(sock)
        assert CALL_TIMEOUT * 0.9 < time.monotonic() - started < CALL_TIMEOUT + 1.0


def test_several_frames_in_one_write_are_answered_in_order(runner, healthy):
    with connect(runner.path) as sock:
        calls = b"".join(pack_frame(RPC_HTTP_REQ_CALL, req_call_payload(healthy.token, i))
                         for i in range(20))
        sock.sendall(calls)
        reader = FrameReader(sock)
        for i in range(20):
            expect_stop(reader.read(), i, b"healthy")


# --- plugin faults ------------------------------------------------------------------------------

def _timed_call(client: Client, conf) -> tuple[object, float]:
    """(reply or RunnerError, seconds) of one request call."""
    started = time.monotonic()
    try:
        result: object = client.request(conf)
    except RunnerError as exc:
        result = exc
    return result, time.monotonic() - started


def _assert_fails_closed(result: object) -> None:
    assert isinstance(result, RunnerError), f"a faulty call was answered {result!r}"
    assert result.code == m.ERR_SERVICE_UNAVAILABLE


@pytest.mark.parametrize("conf", [
    [("fault-raise", "{}")],
    [("tag", "{}"), ("fault-raise", "{}")],
    *([("fault-nonsense", f'{{"kind": "{kind}"}}')] for kind in (
        "status-too-big", "status-negative", "status-text", "body-object", "header-number",
        "path-number")),
    [("tag", "{}"), ("fault-nonsense", '{"kind": "body-object"}')],
], ids=lambda conf: "+".join(f"{n}{v}" if v != "{}" else n for n, v in conf))
def test_plugin_raising_or_leaving_nonsense_gets_service_unavailable(runner, healthy, conf):
    with Client(runner.path, timeout=5) as client:
        result, _ = _timed_call(client, conf)
    _assert_fails_closed(result)


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "GeneratorExit",
                                  "BaseException"])
def test_plugin_calling_sys_exit_or_raising_base_exceptions_fails_its_call_not_the_runner(
    runner, healthy, kind
):
    with Client(runner.path, timeout=5) as client:
        for _ in range(3):
            result, _ = _timed_call(client, [("fault-exit", f'{{"raise": "{kind}"}}')])
            _assert_fails_closed(result)
            healthy.check()
    assert runner.proc.poll() is None


def test_plugin_return_value_is_ignored(runner, healthy):
    with Client(runner.path, timeout=5) as client:
        assert client.request([("fault-nonsense", '{"kind": "returns-value"}')]).action is None


@pytest.mark.parametrize("conf", [
    [("fault-raise", "{}")],
    [("fault-nonsense", '{"kind": "status-too-big"}')],
    [("fault-nonsense", '{"kind": "body-object"}')],
])
def test_response_plugin_faults_get_service_unavailable(runner, healthy, conf):
    with Client(runner.path, timeout=5) as client:
        with pytest.raises(RunnerError) as caught:
            client.response(conf, status=200, headers=[("Content-Type", "text/plain")], body=b"u")
    assert caught.value.code == m.ERR_SERVICE_UNAVAILABLE


def _while_faulty_call(runner, conf, healthy) -> tuple[object, float, list[float]]:
    """Run one faulty call in a thread; meanwhile time healthy calls on another connection."""
    outcome: list = []
    client = Client(runner.path, timeout=10)
    client.prepare(conf)  # so the faulty call starts at once
    worker = threading.Thread(target=lambda: outcome.append(_timed_call(client, conf)))
    worker.start()
    latencies = []
    try:
        while worker.is_alive():
            started = time.monotonic()
            healthy.check()
            latencies.append(time.monotonic() - started)
    finally:
        worker.join(10)
        client.close()
    result, elapsed = outcome[0]
    return result, elapsed, latencies


@pytest.mark.parametrize("conf", [
    [("fault-sleep", '{"seconds": 30}')],
    [("tag", "{}"), ("fault-sleep", '{"seconds": 30}')],
    [("fault-swallow", '{"seconds": 30}')],
], ids=["sleep", "tag+sleep", "swallows-the-deadline"])
def test_plugin_sleeping_past_the_deadline_gets_service_unavailable_in_time(runner, healthy, conf):
    result, elapsed, latencies = _while_faulty_call(runner, conf, healthy)
    _assert_fails_closed(result)
    assert CALL_TIMEOUT * 0.9 < elapsed < CALL_TIMEOUT + 1.0
    assert len(latencies) >= 10 and max(latencies) < CALL_TIMEOUT / 2


def test_plugin_blocked_on_network_io_does_not_stall_other_connections(runner, healthy):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts nothing, answers nothing
        port = silent.getsockname()[1]
        conf = [("fault-block", f'{{"port": {port}}}')]
        result, elapsed, latencies = _while_faulty_call(runner, conf, healthy)
    _assert_fails_closed(result)
    assert CALL_TIMEOUT * 0.9 < elapsed < CALL_TIMEOUT + 1.0
    assert len(latencies) >= 10 and max(latencies) < CALL_TIMEOUT / 2


def _concurrent_calls(runner, count: int, conf) -> tuple[list, float]:
    """`count` clients each make one call at once: their (result, seconds), and the seconds
    until every one was answered."""
    clients = [Client(runner.path, timeout=10) for _ in range(count)]
    results: list = []
    threads = [threading.Thread(target=lambda c=c: results.append(_timed_call(c, conf)))
               for c in clients]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    took = time.monotonic() - started
    for c in clients:
        c.close()
    assert len(results) == count
    return results, took


def test_many_sleeping_calls_at_once_all_time_out_together(runner, healthy):
    results, took = _concurrent_calls(runner, 50, [("fault-sleep", '{"seconds": 30}')])
    for result, _ in results:
        _assert_fails_closed(result)
    assert took < CALL_TIMEOUT + 2.0


def _wave_of_sleeping_calls(runner, count: int, conf) -> float:
    """`count` calls that sleep, all at once; seconds until every one is answered."""
    results, took = _concurrent_calls(runner, count, conf)
    assert all(isinstance(r, m.HTTPReqCallResp) and isinstance(r.action, m.Stop)
               and r.action.body == b"slept" for r, _ in results), results[:3]
    return took


def test_the_running_runner_has_frozen_its_startup_objects(runner):
    assert runner.status()["gc_frozen"] > 10_000


def test_calls_that_wait_are_served_side_by_side_by_a_bounded_pool_of_workers(runner, healthy):
    """Each call that waits takes a worker greenlet of its own, so waiting calls overlap rather
    than queue; the workers are kept for later calls and their number stays bounded."""
    conf = [("fault-sleep", '{"seconds": 0.2}')]
    before = runner.status()["greenlets"]
    took = _wave_of_sleeping_calls(runner, 100, conf)
    healthy.check()
    assert took < 5.0, f"100 calls of 0.2 s took {took:.1f}s: they were served one by one"
    # Spares beyond one per connection (or 8) end once the clients' connections are closed.
    wait_until(lambda: runner.status()["greenlets"] <= before + 8 + 1, 5,
               what="the spare workers of the first wave to end")
    _wave_of_sleeping_calls(runner, 100, conf)
    wait_until(lambda: runner.status()["greenlets"] <= before + 8 + 1, 5,
               what="the spare workers of the second wave to end")


# --- load ---------------------------------------------------------------------------------------

@pytest.fixture
def many_fds():
    """Enough descriptors for a thousand connections in this process and the runners it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _say_tokens(path: str, n: int) -> list[int]:
    with connect(path) as sock:
        return [prepare(sock, [("say", f'{{"body":"route-{k}"}}')]) for k in range(n)]


def test_a_thousand_concurrent_connections_each_get_their_own_answers(runners, many_fds):
    runner = runners.start()
    tokens = _say_tokens(runner.path, 10)
    socks = [connect(runner.path) for _ in range(1000)]
    try:
        for rnd in range(3):
            for i, sock in enumerate(socks):  # every connection has a call outstanding at once
                sock.sendall(pack_frame(RPC_HTTP_REQ_CALL,
                                        req_call_payload(tokens[i % 10], rnd * 1000 + i)))
            for i, sock in enumerate(socks):
                expect_stop(read_frame(sock), rnd * 1000 + i, f"route-{i % 10}".encode())
        status = runner.status()
        assert status["connections"] == 1000
        assert status["in_flight"] == 0
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: runner.status()["connections"] == 0, 10, interval=0.1,
               what="the runner to see every connection closed")


def _burst_connect(path: str, n: int) -> tuple[list[socket.socket], int]:
    """Open n connections as fast as possible without waiting; (connected, refused with EAGAIN)."""
    socks, refused = [], 0
    for _ in range(n):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:
            refused += 1
            sock.close()
            continue
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EAGAIN:
                raise
            refused += 1
            continue
        sock.setblocking(True)
        sock.settimeout(10)
        socks.append(sock)
    return socks, refused


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _burst_while_stopped(runner, n: int) -> tuple[list[socket.socket], int]:
    """The burst while the runner cannot accept, so only the listen backlog holds them."""
    runner.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: _state(runner.pid) == "T", 5, interval=0.001, what="the runner stopped")
        return _burst_connect(runner.path, n)
    finally:
        runner.proc.send_signal(signal.SIGCONT)


def test_five_hundred_connections_opened_at_once_are_all_answered(runners, many_fds):
    runner = runners.start()
    (token,) = _say_tokens(runner.path, 1)
    socks, refused = _burst_while_stopped(runner, 500)
    try:
        assert refused == 0
        for i, sock in enumerate(socks):
            sock.sendall(pack_frame(RPC_HTTP_REQ_CALL, req_call_payload(token, i)))
        for i, sock in enumerate(socks):
            expect_stop(read_frame(sock), i, b"route-0")
    finally:
        for sock in socks:
            sock.close()
    assert any(line.get("backlog") == 1024 for line in runner.logs())


def test_backlog_is_configurable_and_a_small_one_refuses_a_burst(runners, many_fds):
    runner = runners.start("--backlog", "16")
    socks, refused = _burst_while_stopped(runner, 100)
    for sock in socks:
        sock.close()
    assert any(line.get("backlog") == 16 for line in runner.logs())
    # What APISIX saw as "resource temporarily unavailable": the backlog (16, +1 in Linux) is full.
    assert refused > 0 and len(socks) == 17
