"""The runner over a real unix socket, driven by a client that behaves as APISIX does."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from sidecar.protocol import messages as m
from sidecar.protocol.frame import FrameReader, pack_frame
from sidecar.testing import Client, RunnerError
from tests.test_plugin import install_greet_package

SAY = [("say", '{"body":"hello"}')]


@pytest.fixture
def client(shared_runner):
    with Client(shared_runner.path) as c:
        yield c


def raw_conn(path: str) -> tuple[socket.socket, FrameReader]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s, FrameReader(s)


def prepare_raw(path: str, conf, key: str) -> int:
    s, reader = raw_conn(path)
    with s:
        payload = m.encode_prepare_conf_req(m.PrepareConfReq(conf=conf, key=key))
        s.sendall(pack_frame(1, payload))
        rpc_type, reply = reader.read()
    assert rpc_type == 1
    return m.decode_prepare_conf_resp(reply)


def call_frame(token: int, id: int = 0) -> bytes:
    return pack_frame(2, m.encode_http_req_call_req(m.HTTPReqCallReq(
        id=id, src_ip=b"\x7f\0\0\1", method="GET", path="/", args=[], headers=[],
        conf_token=token)))


def test_say_answers_through_the_socket(client):
    reply = client.request(SAY, id=0)
    assert reply == m.HTTPReqCallResp(id=0, action=m.Stop(
        status=200, headers=[("X-Resp-A6-Runner", "Python")], body=b"hello"))


def test_connections_are_pooled_and_reused_across_calls(client):
    for i in range(20):
        assert client.request(SAY, id=i).id == i
    assert len(client._idle) == 2, "one connection for calls, one for PrepareConf"
    assert client.prepares == 1


def test_a_token_prepared_on_one_connection_serves_calls_on_others(shared_runner):
    token = prepare_raw(shared_runner.path, SAY, "route#77#ext-plugin-pre-req#1")
    conns = [raw_conn(shared_runner.path) for _ in range(3)]
    for i, (s, reader) in enumerate(conns):
        s.sendall(call_frame(token, id=i))
        rpc_type, reply = reader.read()
        assert rpc_type == 2
        assert m.decode_http_req_call_resp(reply).action.body == b"hello"
        s.close()


def test_a_connection_carries_many_exchanges_of_every_type_and_may_idle(shared_runner):
    s, reader = raw_conn(shared_runner.path)
    with s:
        for round_ in range(3):
            s.sendall(pack_frame(1, m.encode_prepare_conf_req(
                m.PrepareConfReq(conf=[("response-rewrite", '{"status": 201}')], key="k-mixed"))))
            token = m.decode_prepare_conf_resp(reader.read()[1])
            s.sendall(pack_frame(4, m.encode_http_resp_call_req(
                m.HTTPRespCallReq(id=round_, status=200, headers=[], conf_token=token))))
            rpc_type, reply = reader.read()
            assert rpc_type == 4 and m.decode_http_resp_call_resp(reply).status == 201
            s.sendall(call_frame(token, id=round_))
            assert reader.read()[0] == 2
            time.sleep(0.5)


def test_request_id_zero_and_the_largest_id_are_echoed(client):
    assert client.request(SAY, id=0).id == 0
    assert client.request(SAY, id=2**32 - 1).id == 2**32 - 1


def test_extra_info_round_trips_on_the_call_connection(client):
    reply = client.request([("test-echo", '{"vars": ["remote_addr", "route_id", "nope"], '
                                          '"body": true}')],
                           vars={"remote_addr": "10.1.2.3", "route_id": "5"}, body=b"payload")
    seen = json.loads(reply.action.body)
    assert seen["vars"] == {"remote_addr": "10.1.2.3", "route_id": "5", "nope": None}
    assert seen["body"] == seen["body_again"] == "payload"
    assert client.last_extra_info.asked == [
        (m.INFO_VAR, "remote_addr"), (m.INFO_VAR, "route_id"), (m.INFO_VAR, "nope"),
        (m.INFO_REQ_BODY, None)]


def test_response_rewrite_fetches_the_upstream_body_through_extra_info(client):
    conf = [("response-rewrite", '{"filters": [{"regex": "world", "replace": "APISIX"}]}')]
    reply = client.response(conf, status=200, body=b"hello world",
                            headers=[("Content-Type", "text/plain"), ("Content-Length", "11")])
    assert reply.body == b"hello APISIX"
    assert ("Content-Type", "text/plain") in reply.headers
    assert not any(n.lower() == "content-length" for n, _ in reply.headers)
    assert client.last_extra_info.asked == [(m.INFO_RESP_BODY, None)]


def test_the_upstream_body_is_fetched_once_even_when_read_twice(client):
    reply = client.response([("test-resp-body", "{}")], body=b"up",
                            vars={"route_id": "3"})
    assert reply.body == b"up|seen"
    assert ("X-Same", "True") in reply.headers and ("X-Route", "3") in reply.headers
    assert client.last_extra_info.asked == [(m.INFO_RESP_BODY, None), (m.INFO_VAR, "route_id")]


def test_a_chain_where_the_first_rewrites_and_the_second_stops(client):
    reply = client.request([("test-rewrite", '{"path": "/rewritten", '
                                             '"set_headers": {"x-first": "yes"}}'),
                            ("test-echo", "{}")], path="/orig")
    seen = json.loads(reply.action.body)
    assert seen["path"] == "/rewritten" and ["x-first", "yes"] in seen["headers"]


def test_a_rewrite_reaches_apisix_with_deletions_as_valueless_entries(client):
    reply = client.request([("test-rewrite", '{"del_headers": ["x-gone"], "del_args": ["q"]}')],
                           headers=[("x-gone", "1")], args=[("q", "1")])
    assert reply.action == m.Rewrite(headers=[("x-gone", None)], args=[("q", None)])


def test_unknown_plugin_fails_closed_with_service_unavailable(client, shared_runner):
    with pytest.raises(RunnerError) as exc:
        client.request([("auth-that-does-not-exist", "{}")], key="route#fc#ext-plugin-pre-req#1")
    assert exc.value.code == m.ERR_SERVICE_UNAVAILABLE
    log = shared_runner.log()
    assert "route#fc#ext-plugin-pre-req#1" in log and "auth-that-does-not-exist" in log


def test_a_raising_plugin_gets_service_unavailable_and_others_keep_working(client):
    with pytest.raises(RunnerError) as exc:
        client.request([("test-raise", "{}")])
    assert exc.value.code == m.ERR_SERVICE_UNAVAILABLE
    assert client.request(SAY).action.body == b"hello"


def test_an_overrunning_plugin_is_cut_at_the_deadline_and_the_connection_stays_usable(
        shared_runner):
    token = prepare_raw(shared_runner.path, [("test-sleep", '{"seconds": 5}')], "route#slow")
    fast = prepare_raw(shared_runner.path, SAY, "route#fast")
    s, reader = raw_conn(shared_runner.path)
    with s:
        started = time.monotonic()
        s.sendall(call_frame(token))
        rpc_type, reply = reader.read()
        assert rpc_type == 0 and m.decode_err(reply) == m.ERR_SERVICE_UNAVAILABLE
        assert time.monotonic() - started < 3, "the runner runs with --call-timeout 1"
        s.sendall(call_frame(fast))
        assert reader.read()[0] == 2


def test_a_slow_call_does_not_hold_up_other_connections(shared_runner):
    token = prepare_raw(shared_runner.path, [("test-sleep", '{"seconds": 0.8}')], "route#slow2")
    slow, slow_reader = raw_conn(shared_runner.path)
    with slow, Client(shared_runner.path) as c:
        slow.sendall(call_frame(token))
        started = time.monotonic()
        for _ in range(10):
            assert c.request(SAY).action.body == b"hello"
        assert time.monotonic() - started < 0.8, "answered while the slow call waited"
        assert slow_reader.read()[0] == 2


def test_unknown_rpc_type_and_garbage_get_bad_request_on_a_living_connection(shared_runner):
    s, reader = raw_conn(shared_runner.path)
    with s:
        s.sendall(pack_frame(9, b"whatever"))
        assert reader.read() == (0, m.encode_err(m.ERR_BAD_REQUEST))
        s.sendall(pack_frame(2, b"\x01\x02\x03"))
        rpc_type, reply = reader.read()
        assert rpc_type == 0 and m.decode_err(reply) == m.ERR_BAD_REQUEST
        s.sendall(pack_frame(1, m.encode_prepare_conf_req(m.PrepareConfReq(conf=[], key="x"))))
        assert reader.read()[0] == 1


def test_a_truncated_frame_closes_only_its_own_connection(shared_runner):
    bad, _ = raw_conn(shared_runner.path)
    with Client(shared_runner.path) as c:
        c.request(SAY)
        bad.sendall(b"\x02\x00\x01\x00abc")
        bad.shutdown(socket.SHUT_WR)
        assert bad.recv(10) == b""
        bad.close()
        assert c.request(SAY).action.body == b"hello"


def test_many_concurrent_connections_each_with_many_calls(shared_runner):
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with Client(shared_runner.path) as c:
                for i in range(20):
                    assert c.request(SAY, id=n * 100 + i).id == n * 100 + i
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


def test_after_a_runner_restart_the_client_re_prepares_and_loses_nothing(start_runner):
    first = start_runner()
    with Client(first.path) as c:
        assert c.request(SAY).action.body == b"hello"
        assert first.stop() == 0
        second = start_runner(path=first.path)
        assert c.request(SAY).action.body == b"hello"
        assert (c.prepares, c.retries) == (2, 1)
        second.stop()


def test_a_plugin_installed_as_a_package_is_found_through_its_entry_point(start_runner, tmp_path):
    site = tmp_path / "site"
    install_greet_package(site)
    runner = start_runner(env={"PYTHONPATH": os.pathsep.join([str(site), os.getcwd()])})
    with Client(runner.path) as c:
        assert c.request([("greet", "")]).action.body == b"hi from greet"


def test_conf_expire_time_sets_the_cache_lifetime(start_runner):
    runner = start_runner(env={"APISIX_CONF_EXPIRE_TIME": "1"})
    with Client(runner.path) as c:
        c.request(SAY)
        time.sleep(1.5)
        assert c.request(SAY).action.body == b"hello"
        assert c.retries == 1, "the token expired after 1.2 s and was re-prepared"


def test_pooled_connections_the_runner_closed_are_dropped_not_reused(start_runner):
    first = start_runner()
    with Client(first.path) as c:
        c.request(SAY)
        assert first.stop() == 0
        start_runner(path=first.path)
        assert c.request(SAY).action.body == b"hello"
        assert c.retries == 1


def test_calls_on_connections_older_than_the_deadline_are_not_cut(shared_runner):
    """The runner runs with --call-timeout 1: each call's deadline counts from its own start,
    however long its connection has lived and however busy the runner is."""
    conf = [("test-echo", '{"vars": ["remote_addr"]}')]
    errors: list[BaseException] = []
    counts: list[int] = []

    def worker() -> None:
        try:
            with Client(shared_runner.path) as c:
                started, calls = time.monotonic(), 0
                while time.monotonic() - started < 3:
                    reply = c.request(conf, vars={"remote_addr": "10.0.0.9"})
                    assert json.loads(reply.action.body)["vars"] == {"remote_addr": "10.0.0.9"}
                    calls += 1
                counts.append(calls)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(counts) == 6
