"""The gateway image in traditional mode: routes in etcd, created through the Admin API.

Routes are created the way the README's example does: PUT /apisix/admin/routes/<id> on the
Admin API port (9180) with the key in the X-API-KEY header.
"""

from __future__ import annotations

import uuid

from integration.support import configs


def test_say_through_a_route_created_with_the_admin_api(traditional, echo_upstream):
    traditional.put_route("1", configs.say_route("1", "/say", "hello"))
    traditional.wait_until_answers("/say", 200, "hello", timeout=30)
    marker = uuid.uuid4().hex
    reply = traditional.request(f"/say?marker={marker}")
    assert reply.status == 200, reply
    assert reply.text == "hello"
    assert reply.header("X-Resp-A6-Runner") == "Python"
    assert not [r for r in echo_upstream.recorded() if marker in str(r)]


def test_a_route_updated_through_the_admin_api_takes_effect(traditional):
    traditional.put_route("2", configs.say_route("2", "/update", "first"))
    traditional.wait_until_answers("/update", 200, "first", timeout=30)

    traditional.put_route("2", configs.say_route("2", "/update", "second"))
    # APISIX learns of the change through its etcd watch, within milliseconds; allow a little
    # for that, then the new configuration must hold for every request.
    traditional.wait_until_answers("/update", 200, "second", timeout=5,
                                   what="the updated route to answer with its new body")
    answers = [traditional.request("/update").text for _ in range(20)]
    assert answers == ["second"] * 20
