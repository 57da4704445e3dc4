"""The gateway suite's helpers (integration/support), tested without Docker.

The suite itself skips where no engine or APISIX image is at hand; these keep its moving parts
honest everywhere: the alias-free YAML, the route file and configurations, the echo upstream,
the wait helper, and the wheel of the test plugin package.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import threading
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest` (not `python -m pytest`) leaves the root off it
    sys.path.insert(0, str(REPO))

from integration.support import configs, echo, httpclient, yamlutil  # noqa: E402
from integration.support.wait import WaitTimeout, wait_until  # noqa: E402
from integration.support.wheel import build_wheel  # noqa: E402

TESTPLUGINS = REPO / "integration" / "gateway" / "testplugins"


# --- YAML without anchors or aliases ---------------------------------------------------------


def test_an_object_referenced_twice_dumps_in_full_without_anchor_or_alias():
    shared = {"type": "roundrobin", "nodes": {"echo:8080": 1}}
    data = {"routes": [{"id": "1", "upstream": shared}, {"id": "2", "upstream": shared}]}

    text = yamlutil.dump(data)

    assert "&" not in text and "*" not in text
    assert not yamlutil.has_anchor_or_alias(text)
    assert text.count("roundrobin") == 2
    assert yaml.safe_load(text) == data


def test_plain_pyyaml_would_have_aliased_it():
    shared = {"a": 1}
    text = yaml.safe_dump({"x": shared, "y": shared})
    assert yamlutil.has_anchor_or_alias(text)  # the trap the dumper exists for


def test_apisix_yaml_ends_with_the_end_marker_on_its_own_line():
    text = yamlutil.dump_apisix_yaml({"routes": []})
    assert text.endswith("\n#END\n")
    assert yaml.safe_load(text) == {"routes": []}


# --- the suite's configuration ---------------------------------------------------------------


def test_standalone_route_file_is_alias_free_and_ends_with_end_marker():
    text = configs.standalone_apisix_yaml()
    assert text.rstrip("\n").splitlines()[-1] == "#END"
    assert not yamlutil.has_anchor_or_alias(text)
    routes = yaml.safe_load(text)["routes"]
    assert routes == configs.suite_routes()
    ids = [r["id"] for r in routes]
    uris = [r["uri"] for r in routes]
    assert len(set(ids)) == len(ids) and len(set(uris)) == len(uris)
    for r in routes:
        assert r["upstream"] == {"type": "roundrobin", "nodes": {"echo:8080": 1}}


def test_runner_plugins_are_configured_as_apisix_expects():
    routes = {r["uri"]: r for r in configs.suite_routes()}
    say = routes[configs.SAY_PRE]["plugins"]["ext-plugin-pre-req"]["conf"]
    assert say == [{"name": "say", "value": '{"body":"hello"}'}]
    assert "ext-plugin-post-req" in routes[configs.SAY_POST]["plugins"]
    for uri in (configs.RR_REPLACE, configs.RR_FILTERS):
        (entry,) = routes[uri]["plugins"]["ext-plugin-post-resp"]["conf"]
        assert entry["name"] == "response-rewrite"
        assert isinstance(json.loads(entry["value"]), dict)  # a JSON string, as APISIX sends it
    filters = json.loads(routes[configs.RR_FILTERS]["plugins"]["ext-plugin-post-resp"]["conf"][0]
                         ["value"])["filters"]
    assert [f["scope"] for f in filters] == ["once", "global"]
    assert routes[configs.PLAIN]["plugins"] == {}


def test_traditional_environment_selects_the_mode_and_carries_key_and_etcd():
    env = configs.traditional_env()
    assert env[configs.DEPLOYMENT_ENV] == "traditional"
    assert env[configs.ADMIN_KEY_ENV] == configs.TEST_ADMIN_KEY
    assert not configs.TEST_ADMIN_KEY.isdigit()
    assert env[configs.ETCD_HOST_ENV] == "http://etcd:2379"


def test_traditional_config_takes_the_admin_key_and_etcd_from_the_suites_variables():
    path = REPO / "docker" / "config-traditional.yaml"
    if not path.exists():
        pytest.skip("docker/config-traditional.yaml is not there yet")
    text = path.read_text()
    assert not yamlutil.has_anchor_or_alias(text)
    config = yaml.safe_load(text)
    keys = config["deployment"]["admin"]["admin_key"]
    assert any(k["key"] == "${{" + configs.ADMIN_KEY_ENV + "}}" for k in keys)
    hosts = config["deployment"]["etcd"]["host"]
    assert any(h.startswith("${{" + configs.ETCD_HOST_ENV) for h in hosts)
    entrypoint = (REPO / "docker" / "entrypoint.sh").read_text()
    assert configs.DEPLOYMENT_ENV in entrypoint


def test_etcd_is_configured_by_flags_that_etcd_3_4_and_3_5_both_accept():
    command = configs.etcd_command()
    assert command[0] == "/usr/local/bin/etcd"
    flags = dict(arg[2:].split("=", 1) for arg in command[1:])
    assert flags["listen-client-urls"] == "http://0.0.0.0:2379"
    assert flags["advertise-client-urls"] == "http://etcd:2379"
    assert flags["initial-cluster"] == f"{flags['name']}={flags['initial-advertise-peer-urls']}"


def test_default_apisix_image_is_the_one_docker_pins(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG APISIX_IMAGE=apache/apisix:9.9.9-debian\nFROM ${APISIX_IMAGE}\n")
    assert configs.default_apisix_image(dockerfile) == "apache/apisix:9.9.9-debian"
    assert configs.default_apisix_image(tmp_path / "missing") == configs.FALLBACK_APISIX_IMAGE
    assert configs.default_apisix_image().startswith("apache/apisix:")


# --- the echo upstream -----------------------------------------------------------------------


@pytest.fixture
def echo_url():
    server = echo.make_server("127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_echo_answers_method_path_query_headers_and_body_as_json(echo_url):
    reply = httpclient.request(
        echo_url + "/some/path%20x?a=1&a=2&flag&empty=",
        "POST",
        headers=[("X-Same", "one"), ("X-Same", "two"), ("Content-Type", "text/plain")],
        body="hello \u2713",
    )
    assert reply.status == 200
    assert reply.header("Content-Type") == "application/json"
    assert reply.header("X-Echo-Upstream") == "echo"
    got = reply.json()
    assert got["method"] == "POST"
    assert got["path"] == "/some/path%20x"
    assert got["query"] == {"a": ["1", "2"], "flag": [""], "empty": [""]}
    assert got["headers"]["x-same"] == ["one", "two"]
    assert got["headers"]["content-type"] == ["text/plain"]
    assert got["body"] == "hello \u2713"


def test_echo_reads_a_chunked_body_and_answers_any_method(echo_url):
    import http.client

    port = int(echo_url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("PATCH", "/c", body=iter([b"ab", b"cd"]), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    got = json.loads(conn.getresponse().read())
    conn.close()
    assert (got["method"], got["body"]) == ("PATCH", "abcd")
    for method in ("GET", "PUT", "DELETE", "OPTIONS"):
        assert httpclient.request(echo_url + "/m", method).json()["method"] == method
    assert httpclient.request(echo_url + "/m", "HEAD").body == b""


def test_echo_records_what_reached_it_but_not_its_record_queries(echo_url):
    httpclient.request(echo_url + "/first?m=1")
    httpclient.request(echo_url + "/second", "PUT", body="x")
    recorded = httpclient.request(echo_url + echo.RECORD_PATH).json()
    assert [(r["method"], r["path"]) for r in recorded] == [("GET", "/first"), ("PUT", "/second")]
    again = httpclient.request(echo_url + echo.RECORD_PATH).json()
    assert again == recorded


def test_echo_runs_as_a_script_from_its_source_alone(tmp_path):
    """The suite starts it as `python -c <source> --port N` inside a container."""
    source = Path(echo.__file__).read_text()
    proc = subprocess.Popen(
        [sys.executable, "-c", source, "--host", "127.0.0.1", "--port", "0", "--quiet"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stderr.readline()
        assert line.startswith("echo: listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert httpclient.request(f"http://127.0.0.1:{port}/x?y=1").json()["query"] == {"y": ["1"]}
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0  # SIGTERM ends it cleanly (it is PID 1 in a container)


def test_echo_source_keeps_to_what_an_older_python3_understands():
    tree = ast.parse(Path(echo.__file__).read_text())
    assert not any(isinstance(node, ast.Match) for node in ast.walk(tree))


# --- waiting ---------------------------------------------------------------------------------


def test_wait_until_returns_the_value_once_the_condition_turns_true():
    calls = []

    def condition():
        calls.append(1)
        return "ready" if len(calls) >= 3 else None

    assert wait_until(condition, timeout=2, interval=0.01) == "ready"
    assert len(calls) == 3


def test_wait_until_treats_expected_errors_as_not_yet():
    attempts = iter([ConnectionRefusedError("refused"), OSError("reset"), 42])

    def condition():
        value = next(attempts)
        if isinstance(value, Exception):
            raise value
        return value

    assert wait_until(condition, timeout=2, interval=0.01, retry_on=(OSError,)) == 42


def test_wait_until_times_out_with_a_message_naming_what_and_the_last_error():
    def condition():
        raise ConnectionRefusedError("port 9080 closed")

    start = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        wait_until(condition, timeout=0.2, interval=0.05, what="the gateway to answer")
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 1.0
    message = str(info.value)
    assert "the gateway to answer" in message
    assert "ConnectionRefusedError: port 9080 closed" in message
    assert isinstance(info.value, TimeoutError)


def test_wait_until_does_not_swallow_errors_it_was_not_told_to_retry():
    def condition():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        wait_until(condition, timeout=1, interval=0.01, retry_on=(OSError,))


def test_wait_until_reports_the_last_falsy_result():
    with pytest.raises(WaitTimeout, match=r"last result: \[\]"):
        wait_until(lambda: [], timeout=0.05, interval=0.01)


# --- the test plugin package -----------------------------------------------------------------


def test_test_plugin_wheel_installs_with_pip_and_declares_its_entry_points(tmp_path):
    wheel = build_wheel(TESTPLUGINS, tmp_path / "dist")
    assert wheel.name == "sidecar_testplugins-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        record = zf.read("sidecar_testplugins-0.1.0.dist-info/RECORD").decode()
    assert "sidecar_testplugins/__init__.py" in names
    assert all(name in record for name in names)

    target = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
         "--disable-pip-version-check", "--target", str(target), str(wheel)],
        capture_output=True, text=True,
    )
    if result.returncode != 0 and "No module named pip" in result.stderr:
        pytest.skip("pip is not installed in this environment")
    assert result.returncode == 0, result.stderr
    (dist,) = metadata.distributions(path=[str(target)])
    assert dist.metadata["Name"] == "sidecar-testplugins"
    assert dist.requires == ["apisix-sidecar"]
    points = {(e.group, e.name): e.value for e in dist.entry_points}
    assert points == {
        ("apisix_sidecar.plugins", "test-rewrite"): "sidecar_testplugins:Rewrite",
        ("apisix_sidecar.plugins", "test-extra-info"): "sidecar_testplugins:ExtraInfo",
        ("apisix_sidecar.plugins", "test-raise"): "sidecar_testplugins:Raise",
    }


def test_test_plugin_entry_points_name_classes_with_matching_plugin_names():
    tree = ast.parse((TESTPLUGINS / "sidecar_testplugins" / "__init__.py").read_text())
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                        and getattr(stmt.targets[0], "id", None) == "name"):
                    names[node.name] = stmt.value.value
    assert names == {"Rewrite": "test-rewrite", "ExtraInfo": "test-extra-info",
                     "Raise": "test-raise"}
    route_plugins = {
        entry["name"]
        for r in configs.suite_routes()
        for phase in r["plugins"].values()
        for entry in phase["conf"]
    }
    assert {"test-rewrite", "test-extra-info", "test-raise"} <= route_plugins


def test_test_plugins_do_what_the_suite_expects_through_the_sdk(monkeypatch):
    testing = pytest.importorskip("sidecar.testing")
    monkeypatch.syspath_prepend(str(TESTPLUGINS))
    plugins = pytest.importorskip("sidecar_testplugins")

    rewrite = testing.run_request(
        plugins.Rewrite(), configs.REWRITE_CONF, path=configs.REWRITE,
        args=[("a", "1"), ("b", "2"), ("c", "3")], headers=[("x-drop", "1"), ("x-keep", "k")],
    )
    assert rewrite.path == "/rewritten/path"
    assert ("x-drop", None) in [(k.lower(), v) for k, v in rewrite.headers]
    assert ("b", None) in rewrite.args and ("a", "changed") in rewrite.args

    stop = testing.run_request(
        plugins.ExtraInfo(), {}, src_ip="10.1.2.3", body=b"ping",
        vars={"remote_addr": "10.1.2.3", "route_id": "6"},
    )
    assert stop.status == 200
    assert json.loads(stop.body) == {"remote_addr": "10.1.2.3", "src_ip": "10.1.2.3",
                                     "route_id": "6", "body": "ping"}

    with pytest.raises(Exception):  # noqa: B017 - the runner wraps it; any failure will do
        testing.run_request(plugins.Raise(), {})


def test_a_gateway_that_fails_to_come_up_is_stopped_and_its_log_reported():
    from integration.support.containers import _up_or_stopped

    class FakeGateway:
        stopped = False

        def logs(self) -> str:
            return "nginx: [emerg] bad config"

        def stop(self) -> None:
            self.stopped = True

    up = FakeGateway()
    with _up_or_stopped(up, "gw-ok"):
        pass
    assert not up.stopped
    down = FakeGateway()
    with pytest.raises(RuntimeError, match=r"gateway gw-x did not come up: boom(.|\n)*bad config"):
        with _up_or_stopped(down, "gw-x"):
            raise TimeoutError("boom")
    assert down.stopped
