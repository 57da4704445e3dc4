"""The gateway image in file-driven standalone mode, end to end through a real APISIX.

Each test sends HTTP requests to the gateway's 9080; the routes come from the suite's apisix.yaml
(integration/support/configs.py), the upstream is the JSON echo (integration/support/echo.py).
"""

from __future__ import annotations

import ipaddress
import json
import uuid

from integration.support import configs
from integration.support.configs import (
    EXTRA_INFO,
    PLAIN,
    RAISE,
    REWRITE,
    RR_FILTERS,
    RR_REPLACE,
    SAY_POST,
    SAY_PRE,
)


def _marker() -> str:
    return uuid.uuid4().hex


def _upstream_saw(echo_upstream, marker: str) -> list[dict]:
    return [r for r in echo_upstream.recorded() if marker in json.dumps(r)]


def test_a_route_without_runner_plugins_reaches_the_upstream(standalone, echo_upstream):
    marker = _marker()
    reply = standalone.request(f"{PLAIN}?marker={marker}")
    assert reply.status == 200, reply
    assert reply.json()["query"] == {"marker": [marker]}
    assert len(_upstream_saw(echo_upstream, marker)) == 1


def test_say_on_pre_req_answers_and_the_upstream_sees_nothing(standalone, echo_upstream):
    marker = _marker()
    reply = standalone.request(f"{SAY_PRE}?marker={marker}")
    assert reply.status == 200, reply
    assert reply.text == configs.SAY_BODY
    assert reply.header("X-Resp-A6-Runner") == "Python"
    assert _upstream_saw(echo_upstream, marker) == []


def test_say_on_post_req_answers_and_the_upstream_sees_nothing(standalone, echo_upstream):
    marker = _marker()
    reply = standalone.request(f"{SAY_POST}?marker={marker}")
    assert reply.status == 200, reply
    assert reply.text == configs.SAY_POST_BODY
    assert reply.header("X-Resp-A6-Runner") == "Python"
    assert _upstream_saw(echo_upstream, marker) == []


def test_response_rewrite_sets_status_headers_and_body_keeping_upstream_headers(
    standalone, echo_upstream
):
    marker = _marker()
    reply = standalone.request(f"{RR_REPLACE}?marker={marker}")
    assert reply.status == 201, reply
    assert reply.text == "rewritten\n"
    assert reply.header("X-Rewritten") == "yes"
    assert reply.header("X-Resp-A6-Runner") == "Python"
    # Headers the plugin did not touch are the upstream's, Content-Type included.
    assert reply.header("Content-Type") == "application/json"
    assert reply.header("X-Echo-Upstream") == "echo"
    assert len(_upstream_saw(echo_upstream, marker)) == 1


def test_response_rewrite_filters_replace_once_and_globally_with_groups(standalone):
    reply = standalone.request(f"{RR_FILTERS}?o=zqz-zqz&g=k1k2k3")
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == "application/json"
    assert reply.header("X-Echo-Upstream") == "echo"
    assert reply.header("X-Resp-A6-Runner") == "Python"
    echoed = reply.json()
    assert echoed["path"] == RR_FILTERS
    assert echoed["query"]["o"] == ["ONE-zqz"]  # scope once: the first match only
    assert echoed["query"]["g"] == ["K1K2K3"]  # scope global: every match, $1 is the group


def test_request_rewrite_plugin_changes_path_headers_and_args_the_upstream_gets(standalone):
    reply = standalone.request(
        f"{REWRITE}?a=1&b=2&c=3",
        headers={"X-Changed": "old", "X-Drop": "1", "X-Keep": "kept"},
    )
    assert reply.status == 200, reply
    echoed = reply.json()
    assert echoed["path"] == "/rewritten/path"
    assert echoed["query"] == {"a": ["changed"], "c": ["3"], "n": ["new"]}
    headers = echoed["headers"]
    assert headers["x-changed"] == ["new"]
    assert headers["x-added"] == ["added"]
    assert "x-drop" not in headers
    assert headers["x-keep"] == ["kept"]


def test_extra_info_gives_the_plugin_remote_addr_and_the_request_body(standalone, echo_upstream):
    body = "ping body \u2713 " + _marker()
    reply = standalone.request(EXTRA_INFO, "POST", body=body.encode(),
                               headers={"Content-Type": "text/plain; charset=utf-8"})
    assert reply.status == 200, reply
    answer = reply.json()
    assert answer["body"] == body
    assert answer["route_id"] == "6"
    ipaddress.ip_address(answer["remote_addr"])
    assert answer["remote_addr"] == answer["src_ip"]
    assert _upstream_saw(echo_upstream, body.split()[-1]) == []


def test_a_raising_plugin_gives_503_and_other_routes_keep_working(standalone):
    runner = standalone.runner_pids()
    for _ in range(3):
        reply = standalone.request(RAISE)
        assert reply.status == 503, reply
    say = standalone.request(SAY_PRE)
    assert say.status == 200, say
    assert say.text == configs.SAY_BODY
    rewrite = standalone.request(f"{REWRITE}?a=1")
    assert rewrite.status == 200, rewrite
    assert rewrite.json()["path"] == "/rewritten/path"
    assert standalone.runner_pids() == runner  # the same runner process served them all
