"""The SDK objects: multi-valued headers and args, Request, StopResponse, Response."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import Args, Headers, Request, Response, StopResponse
from sidecar.protocol.messages import HTTPReqCallReq


def no_fetch(*_):
    raise AssertionError("nothing should be fetched")


def make_request(fetch_var=no_fetch, fetch_body=no_fetch, **kw) -> Request:
    fields = dict(
        id=7, src_ip=bytes([10, 0, 0, 1]), method="POST", path="/a",
        args=[("x", "1"), ("x", "2"), ("flag", None)],
        headers=[("host", "h"), ("x-same", "one"), ("x-same", "two")], conf_token=1,
    )
    fields.update(kw)
    return Request(HTTPReqCallReq(**fields), fetch_var, fetch_body)


def test_headers_are_case_insensitive_and_keep_every_value():
    h = Headers([("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2")])
    assert h.get("content-type") == "text/plain"
    assert h.get_all("SET-COOKIE") == ["a=1", "b=2"]
    assert "CONTENT-TYPE" in h and "x" not in h
    assert h.items() == [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"),
                         ("Set-Cookie", "b=2")]


def test_set_add_delete_are_tracked_as_changes():
    h = Headers([("a", "1"), ("b", "2"), ("c", "3")])
    h.set("A", "9")
    h.add("b", "3")
    h.delete("c")
    h.delete("never-there")
    assert sorted(h.changes()) == [("A", ["9"]), ("b", ["2", "3"]), ("c", [])]


def test_setting_the_same_values_again_is_no_change():
    h = Headers([("a", "1")])
    h.set("a", "1")
    h.delete("missing")
    assert h.changes() == [] and not h.changed


def test_header_values_must_be_strings():
    with pytest.raises(TypeError):
        Headers().set("x", 5)


def test_args_are_case_sensitive_and_a_flag_has_no_value():
    a = Args([("x", "1"), ("X", "2"), ("debug", None)])
    assert a.get("x") == "1" and a.get("X") == "2"
    assert "debug" in a and a.get("debug") is None
    a.set("flag2", None)
    assert a.get_all("flag2") == [None]


def test_request_exposes_what_apisix_sent():
    r = make_request()
    assert r.id == 7 and r.method == "POST" and r.path == "/a"
    assert r.src_ip == ipaddress.ip_address("10.0.0.1")
    assert make_request(src_ip=ipaddress.ip_address("::1").packed).src_ip == \
        ipaddress.ip_address("::1")
    assert make_request(src_ip=b"").src_ip is None
    assert r.args.get_all("x") == ["1", "2"]
    assert r.headers.get("X-Same") == "one"


def test_vars_and_body_are_fetched_once_and_cached():
    calls = []

    def fetch_var(name):
        calls.append(name)
        return {"remote_addr": b"1.2.3.4", "empty": b""}.get(name)

    def fetch_body():
        calls.append("body")
        return b"payload"

    r = make_request(fetch_var=fetch_var, fetch_body=fetch_body)
    assert r.var("remote_addr") == "1.2.3.4"
    assert r.var("remote_addr") == "1.2.3.4"
    assert r.var("missing") is None and r.var("missing") is None
    assert r.var("empty") == ""
    assert r.body() == b"payload" and r.body() == b"payload"
    assert calls == ["remote_addr", "missing", "empty", "body"]


def test_a_request_without_body_reads_as_empty_bytes():
    assert make_request(fetch_body=lambda: None).body() == b""


def test_set_body_replaces_and_refuses_empty():
    r = make_request()
    r.set_body("new")
    assert r.body() == b"new" and r.new_body == b"new"
    with pytest.raises(ValueError):
        r.set_body(b"")


def test_path_can_be_set_but_not_emptied():
    r = make_request()
    assert not r.path_changed
    r.path = "/b"
    assert r.path_changed and r.path == "/b"
    with pytest.raises(ValueError):
        r.path = ""


def test_stop_response_stops_only_when_touched():
    s = StopResponse()
    assert not s.stopped
    s.headers.set("x", "1")
    assert s.stopped
    s2 = StopResponse()
    s2.write("a")
    s2.write(b"b")
    assert s2.stopped and s2.body == b"ab" and s2.status == 0
    s3 = StopResponse()
    s3.status = 403
    assert s3.stopped
    with pytest.raises(ValueError):
        s3.status = 42


def test_response_status_body_and_vars():
    fetched = []
    resp = Response(3, 200, [("Content-Type", "text/html")],
                    fetch_var=lambda n: fetched.append(n) or b"5",
                    fetch_body=lambda: fetched.append("body") or b"<p>")
    assert resp.status == 200 and resp.upstream_status == 200
    resp.status = 201
    assert resp.status == 201
    assert resp.body() == b"<p>" and resp.body() == b"<p>"
    assert resp.var("route_id") == "5" and resp.var("route_id") == "5"
    resp.set_body("new")
    assert resp.body() == b"new"
    assert fetched == ["body", "route_id"]
    with pytest.raises(ValueError):
        resp.set_body("")


def test_stop_response_body_gathers_every_write_and_empty_writes_stop_too():
    s = StopResponse()
    s.write(b"")
    assert s.stopped and s.body == b""
    for chunk in ("x", b"y", bytearray(b"z"), "é"):
        s.write(chunk)
    assert s.body == "xyzé".encode() and type(s.body) is bytes
    assert s.parts() == (0, [], "xyzé".encode())
    s.headers.add("X-A", "1")
    assert s.parts() == (0, [("X-A", "1")], "xyzé".encode())
    with pytest.raises(TypeError):
        s.headers.set("X-B", 2)


def test_sdk_objects_are_fresh_per_call_and_keep_plugin_attributes():
    a, b = make_request(), make_request()
    a.path = "/changed"
    a.headers.set("x-new", "1")
    a.seen_by = "plugin-a"  # plugins may pass data along the chain on the request
    assert b.path == "/a" and not b.path_changed and "x-new" not in b.headers
    assert not hasattr(b, "seen_by") and a.seen_by == "plugin-a"
    s1, s2 = StopResponse(), StopResponse()
    s1.write("one")
    assert s2.body == b"" and not s2.stopped


class _Source:
    """Entries handed over on demand, counting how often they were asked for."""

    def __init__(self, entries):
        self.entries, self.calls = entries, 0

    def __call__(self):
        self.calls += 1
        return self.entries


def test_deferred_headers_that_are_only_set_are_never_read():
    source = _Source([("host", "h"), ("x-a", "old")])
    h = Headers.deferred(source)
    h.set("X-A", "1")
    h.set("x-b", "2")
    h.set("x-a", "3")
    assert h.changes() == [("x-a", ["3"]), ("x-b", ["2"])]
    assert source.calls == 0
    with pytest.raises(TypeError):
        h.set("x-c", 4)


def test_deferred_headers_read_once_then_behave_as_eager_ones():
    source = _Source([("host", "h"), ("x-a", "old"), ("x-a", "older")])
    h = Headers.deferred(source)
    h.set("X-A", "1")
    h.set("host", "h")  # the value it already has: no change once the entries are known
    assert h.get("x-a") == "1" and source.calls == 1
    assert h.items() == [("host", "h"), ("X-A", "1")]
    assert h.changes() == [("X-A", ["1"])]
    h.add("x-a", "2")
    assert h.get_all("x-a") == ["1", "2"] and source.calls == 1


@pytest.mark.parametrize("first", [
    lambda h: h.get("x"), lambda h: h.get_all("x"), lambda h: h.add("x", "v"),
    lambda h: h.delete("x"), lambda h: h.items(), lambda h: "x" in h, lambda h: list(h),
    lambda h: len(h), lambda h: bool(h), lambda h: repr(h), lambda h: h.changed,
])
def test_every_read_of_deferred_entries_reads_them_first(first):
    source = _Source([("x", "1")])
    h = Headers.deferred(source)
    h.set("y", "2")
    first(h)
    assert source.calls == 1
    assert ("y", "2") in h.items()


OPS = st.lists(st.tuples(
    st.sampled_from(["set", "add", "delete", "get"]),
    st.sampled_from(["a", "A", "b", "c"]),
    st.sampled_from(["1", "2"]),
), max_size=8)
ENTRIES = st.lists(st.tuples(st.sampled_from(["a", "b", "B"]), st.sampled_from(["1", "2"])),
                   max_size=4)


@settings(max_examples=300, deadline=None)
@given(entries=ENTRIES, ops=OPS)
def test_deferred_and_eager_headers_end_the_same(entries, ops):
    eager, deferred = Headers(entries), Headers.deferred(lambda: entries)
    for op, name, value in ops:
        for h in (eager, deferred):
            if op == "get":
                assert h.get(name) == eager.get(name)
            elif op == "delete":
                h.delete(name)
            else:
                getattr(h, op)(name, value)
    changes, exact = deferred.changes(), eager.changes()
    assert all(c in changes for c in exact)
    # A name set while the entries were unread may be reported though it ends as it began.
    assert all(c in exact or c[1] == Headers(entries).get_all(c[0]) for c in changes)
    assert deferred.items() == eager.items()
    assert deferred.changes() == eager.changes()


def test_deferred_entries_that_fail_to_read_fail_every_read_and_keep_the_sets():
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("malformed vector")

    h = Headers.deferred(broken)
    h.set("x-a", "1")
    for _ in range(2):
        with pytest.raises(ValueError, match="malformed"):
            h.get("host")
    assert len(calls) == 2 and h.changes() == [("x-a", ["1"])]
