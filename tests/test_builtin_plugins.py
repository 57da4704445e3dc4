"""`say` and `response-rewrite`, run in-process through sidecar.testing."""

import pytest

from sidecar import ConfError
from sidecar.plugins.response_rewrite import ResponseRewrite
from sidecar.plugins.say import Say
from sidecar.testing import Stop, parse, run_request, run_response

UPSTREAM = [
    ("Content-Type", "text/x-a6-upstream; charset=utf-8"),
    ("Content-Length", "11"),
    ("Transfer-Encoding", "chunked"),
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
    ("X-Upstream-Custom", "yes"),
]


def test_say_stops_with_200_the_runner_header_and_the_body():
    assert run_request(Say(), {"body": "hello"}) == Stop(
        status=200, headers=[("X-Resp-A6-Runner", "Python")], body=b"hello"
    )


@pytest.mark.parametrize("conf", [{}, {"body": ""}])
def test_say_without_a_body_lets_the_request_through(conf):
    assert run_request(Say(), conf) is None


@pytest.mark.parametrize("conf", ['{"body": 5}', '{"bodie": "x"}', "[1]", "{"])
def test_say_rejects_bad_configurations(conf):
    with pytest.raises(ConfError):
        parse(Say(), conf)


def test_response_rewrite_sets_status_headers_and_keeps_upstream_headers():
    reply = run_response(ResponseRewrite(), {"status": 201, "headers": {"X-New": "v"}},
                         headers=UPSTREAM, body=b"upstream!!!")
    assert reply.status == 201
    assert reply.body == b""
    assert reply.headers == [
        ("Content-Type", "text/x-a6-upstream; charset=utf-8"),
        ("Content-Length", "11"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("X-Upstream-Custom", "yes"),
        ("X-New", "v"),
        ("X-Resp-A6-Runner", "Python"),
    ]


def test_a_header_named_in_the_conf_replaces_the_upstream_one_case_insensitively():
    reply = run_response(ResponseRewrite(), {"headers": {"content-type": "text/html"}},
                         headers=UPSTREAM, body=b"x")
    assert ("content-type", "text/html") in reply.headers
    assert not any(v.startswith("text/x-a6") for _, v in reply.headers)


def test_body_replacement_drops_length_and_hop_by_hop_headers():
    reply = run_response(ResponseRewrite(), {"body": "new body"}, headers=UPSTREAM, body=b"old")
    assert reply.body == b"new body"
    names = [n.lower() for n, _ in reply.headers]
    assert "content-length" not in names and "transfer-encoding" not in names
    assert names.count("set-cookie") == 2 and "content-type" in names
    assert reply.status == 0, "the upstream status is kept"


def test_once_replaces_the_first_match_and_global_every_match():
    body = b"cat bat cot"
    once = run_response(ResponseRewrite(),
                        {"filters": [{"regex": "c\\w+", "scope": "once", "replace": "X"}]},
                        body=body)
    glob = run_response(ResponseRewrite(),
                        {"filters": [{"regex": "c\\w+", "scope": "global", "replace": "X"}]},
                        body=body)
    assert once.body == b"X bat cot"
    assert glob.body == b"X bat X", "every match, not copies of the first matched text"


def test_replace_uses_apisix_group_syntax():
    conf = {"filters": [{"regex": "(\\w+)@(\\w+)", "scope": "global",
                         "replace": "$2:$1 ${1}$$ $0 \\1 $x"}]}
    reply = run_response(ResponseRewrite(), conf, body=b"ann@a bob@b")
    assert reply.body == b"a:ann ann$ ann@a \\1 $x b:bob bob$ bob@b \\1 $x"


def test_filters_apply_in_order_and_body_wins_over_filters():
    conf = {"filters": [{"regex": "a", "scope": "global", "replace": "b"},
                        {"regex": "b", "scope": "global", "replace": "c"}]}
    assert run_response(ResponseRewrite(), conf, body=b"ab").body == b"cc"
    conf["body"] = "final"
    assert run_response(ResponseRewrite(), conf, body=b"ab").body == b"final"


def test_filters_that_match_nothing_keep_the_upstream_body():
    conf = {"filters": [{"regex": "zzz", "replace": "y"}]}
    assert run_response(ResponseRewrite(), conf, body=b"abc").body == b""


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"status": 99}, "status"),
        ({"status": 600}, "status"),
        ({"status": "200"}, "status"),
        ({"headers": {"X": 1}}, "headers.X"),
        ({"headers": []}, "headers"),
        ({"body": 3}, "body"),
        ({"filters": [{"regex": "("}]}, "filters[0].regex"),
        ({"filters": [{"regex": "a", "scope": "sometimes"}]}, "filters[0].scope"),
        ({"filters": [{"regex": "(a)", "replace": "$2"}]}, "filters[0].replace"),
        ({"filters": [{"regex": "a", "replace": "${1}"}]}, "filters[0].replace"),
        ({"filters": [{"scope": "once"}]}, "filters[0].regex"),
        ({"filters": [{"regex": "a", "bogus": 1}]}, "filters[0]"),
        ({"filters": {}}, "filters"),
        ({"colour": "red"}, "unknown field 'colour'"),
        ([], "configuration"),
    ],
)
def test_response_rewrite_rejects_bad_configurations_naming_the_field(conf, field):
    with pytest.raises(ConfError) as exc:
        parse(ResponseRewrite(), conf)
    assert field in str(exc.value)


def test_response_rewrite_fetches_the_body_only_when_filters_need_it():
    from sidecar.testing import ExtraInfoSource

    source = ExtraInfoSource(resp_body=b"abc")
    run_response(ResponseRewrite(), {"status": 202}, extra=source)
    assert source.asked == []
    run_response(ResponseRewrite(), {"filters": [{"regex": "a", "replace": "b"}]}, extra=source)
    assert source.asked == [(3, None)]
