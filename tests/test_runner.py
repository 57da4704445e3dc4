"""The runner without a socket: PrepareConf, calls, the reply's content and error mapping."""

import logging

import pytest

import tests.plugins_for_tests  # noqa: F401  (registers the test plugins)
from sidecar.cache import ConfCache
from sidecar.plugin import registry
from sidecar.protocol import messages as m
from sidecar.protocol.frame import MAX_PAYLOAD
from sidecar.runner import Runner


@pytest.fixture
def runner() -> Runner:
    import sidecar.plugins  # noqa: F401

    return Runner(registry, ConfCache(ttl=60))


def prepare(runner: Runner, conf, key="route#1#ext-plugin-pre-req#1") -> int:
    t, payload = runner.handle(1, m.encode_prepare_conf_req(m.PrepareConfReq(conf=conf, key=key)))
    assert t == 1
    return m.decode_prepare_conf_resp(payload)


def req_call(runner: Runner, token: int, ask=None, **kw) -> tuple[int, bytes]:
    fields = dict(id=0, src_ip=b"\x7f\0\0\1", method="GET", path="/p",
                  args=[("a", "1")], headers=[("host", "h")], conf_token=token)
    fields.update(kw)
    payload = m.encode_http_req_call_req(m.HTTPReqCallReq(**fields))
    return runner.handle(2, payload, ask) if ask else runner.handle(2, payload)


def err_code(frame) -> int:
    assert frame[0] == 0, f"expected an Err frame, got type {frame[0]}"
    return m.decode_err(frame[1])


def test_same_key_same_token_and_a_new_key_a_new_token(runner):
    first = prepare(runner, [("say", '{"body":"x"}')])
    assert first != 0
    assert prepare(runner, [("say", '{"body":"x"}')]) == first
    assert prepare(runner, [("say", '{"body":"x"}')], key="route#1#ext-plugin-pre-req#2") != first


def test_an_empty_conf_gets_a_token_and_changes_nothing(runner):
    token = prepare(runner, [])
    t, payload = req_call(runner, token)
    assert t == 2
    assert m.decode_http_req_call_resp(payload) == m.HTTPReqCallResp(id=0, action=None)


def test_unknown_token_is_conf_token_not_found(runner):
    assert err_code(req_call(runner, 12345)) == m.ERR_CONF_TOKEN_NOT_FOUND


def test_unknown_rpc_type_and_garbage_are_bad_request(runner):
    assert err_code(runner.handle(9, b"whatever")) == m.ERR_BAD_REQUEST
    assert err_code(runner.handle(3, b"")) == m.ERR_BAD_REQUEST
    assert err_code(runner.handle(2, b"\xff\xff")) == m.ERR_BAD_REQUEST


@pytest.mark.parametrize(
    ("conf", "why"),
    [
        ([("no-such-plugin", "{}")], "unknown plugin 'no-such-plugin'"),
        ([("say", '{"body": 1}')], "configuration rejected: body: must be str"),
        ([("say", '{"body":"x"}'), ("response-rewrite", '{"status": 9}')], "status"),
    ],
)
def test_a_refused_configuration_fails_closed_and_is_logged_once(runner, caplog, conf, why):
    with caplog.at_level(logging.ERROR, logger="sidecar"):
        token = prepare(runner, conf, key="route#9#ext-plugin-pre-req#1")
        prepare(runner, conf, key="route#9#ext-plugin-pre-req#1")
        for _ in range(3):
            assert err_code(req_call(runner, token)) == m.ERR_SERVICE_UNAVAILABLE
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert refused[0].key == "route#9#ext-plugin-pre-req#1"
    assert why in refused[0].reason


def test_a_raising_plugin_is_service_unavailable_with_its_traceback(runner, caplog):
    token = prepare(runner, [("test-raise", "{}")])
    with caplog.at_level(logging.ERROR, logger="sidecar"):
        assert err_code(req_call(runner, token)) == m.ERR_SERVICE_UNAVAILABLE
    record = next(r for r in caplog.records if r.getMessage() == "plugin failed")
    assert record.plugin == "test-raise"
    assert "boom from test-raise" in caplog.text and "Traceback" in caplog.text


def test_a_reply_over_the_frame_limit_is_service_unavailable(runner):
    token = prepare(runner, [("test-huge", f'{{"size": {MAX_PAYLOAD}}}')])
    assert err_code(req_call(runner, token)) == m.ERR_SERVICE_UNAVAILABLE


def test_the_chain_runs_in_order_and_a_stop_ends_it(runner):
    token = prepare(runner, [
        ("test-rewrite", '{"set_headers": {"x-from-first": "1"}, "path": "/new"}'),
        ("test-echo", "{}"),
        ("test-raise", "{}"),
    ])
    t, payload = req_call(runner, token, id=77)
    reply = m.decode_http_req_call_resp(payload)
    assert reply.id == 77 and isinstance(reply.action, m.Stop)
    import json

    seen = json.loads(reply.action.body)
    assert seen["path"] == "/new"
    assert ["x-from-first", "1"] in seen["headers"]


def test_a_rewrite_carries_only_what_changed(runner):
    token = prepare(runner, [("test-rewrite",
                              '{"set_headers": {"x-new": "v"}, "del_headers": ["host", "absent"],'
                              ' "set_args": {"b": "2"}, "del_args": ["a"],'
                              ' "resp_headers": {"x-resp": "r"}, "body": "nb"}')])
    reply = m.decode_http_req_call_resp(req_call(runner, token)[1])
    assert reply.action == m.Rewrite(
        path=None,
        headers=[("x-new", "v"), ("host", None)],
        args=[("b", "2"), ("a", None)],
        resp_headers=[("x-resp", "r")],
        body=b"nb",
    )


def test_a_path_only_rewrite_keeps_the_query_for_older_apisix(runner):
    token = prepare(runner, [("test-rewrite", '{"path": "/moved"}')])
    reply = m.decode_http_req_call_resp(
        req_call(runner, token, args=[("x", "1"), ("x", "2"), ("flag", None)])[1]
    )
    assert reply.action == m.Rewrite(path="/moved", args=[("x", "1"), ("x", "2")])


def test_a_plugin_that_changes_nothing_gives_no_action(runner):
    token = prepare(runner, [("test-rewrite", "{}"), ("say", "{}")])
    assert m.decode_http_req_call_resp(req_call(runner, token)[1]).action is None


def test_extra_info_is_asked_once_per_item_per_call(runner):
    token = prepare(runner, [("test-echo", '{"vars": ["remote_addr", "remote_addr"], "body": 1}')])
    asked = []

    def ask(info_type, name):
        asked.append((info_type, name))
        return {"remote_addr": b"1.2.3.4"}.get(name, b"the body")

    reply = m.decode_http_req_call_resp(req_call(runner, token, ask=ask)[1])
    assert b'"remote_addr": "1.2.3.4"' in reply.action.body
    assert b'"body": "the body", "body_again": "the body"' in reply.action.body
    assert asked == [(m.INFO_VAR, "remote_addr"), (m.INFO_REQ_BODY, None)]


def test_a_response_call_runs_response_filters(runner):
    token = prepare(runner, [("response-rewrite", '{"status": 418}')],
                    key="route#1#ext-plugin-post-resp#1")
    payload = m.encode_http_resp_call_req(m.HTTPRespCallReq(
        id=5, status=200, headers=[("Content-Type", "a/b")], conf_token=token))
    t, reply = runner.handle(4, payload)
    assert t == 4
    assert m.decode_http_resp_call_resp(reply) == m.HTTPRespCallResp(
        id=5, status=418, headers=[("Content-Type", "a/b"), ("X-Resp-A6-Runner", "Python")])


def test_a_response_call_with_an_empty_chain_still_echoes_upstream_headers(runner):
    token = prepare(runner, [], key="route#2#ext-plugin-post-resp#1")
    payload = m.encode_http_resp_call_req(m.HTTPRespCallReq(
        id=1, status=200, headers=[("Content-Type", "a/b"), ("Connection", "close")],
        conf_token=token))
    reply = m.decode_http_resp_call_resp(runner.handle(4, payload)[1])
    assert reply == m.HTTPRespCallResp(id=1, status=0, headers=[("Content-Type", "a/b")])
