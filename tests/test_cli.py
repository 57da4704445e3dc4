"""The `apisix-sidecar` command: version, plugins, logs, and settings from the environment."""

from __future__ import annotations

import json
import subprocess
import sys

from sidecar import __version__
from sidecar.testing import Client
from tests.conftest import ROOT, runner_env


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, env=runner_env(**env), cwd=ROOT, timeout=30)


def test_version_prints_the_package_version():
    out = cli("version")
    assert out.returncode == 0 and out.stdout == f"apisix-sidecar {__version__}\n"


def test_plugins_lists_built_in_and_configured_plugins():
    assert cli("plugins").stdout.split() == ["response-rewrite", "say"]
    out = cli("plugins", APISIX_SIDECAR_PLUGINS="tests.plugins_for_tests:Echo")
    names = out.stdout.split()
    assert names == sorted(names) and {"response-rewrite", "say", "test-echo"} <= set(names)


def test_a_bad_plugin_spec_exits_2_with_one_line():
    out = cli("plugins", APISIX_SIDECAR_PLUGINS="no_such_module:X")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "cannot import plugin module 'no_such_module'" in out.stderr


def test_logs_are_json_lines_on_stderr_and_stdout_stays_empty(start_runner):
    runner = start_runner("--plugin", "tests.plugins_for_tests:Raise")
    with Client(runner.path) as c:
        try:
            c.request([("test-raise", "{}")])
        except Exception:
            pass
    assert runner.stop() == 0
    records = [json.loads(line) for line in runner.log().splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    failed = next(r for r in records if r["message"] == "plugin failed")
    assert failed["plugin"] == "test-raise" and failed["level"] == "ERROR"
    assert "boom from test-raise" in failed["exc_info"]


def test_check_probes_a_live_runner_and_fails_on_a_dead_socket(start_runner, tmp_path):
    runner = start_runner()
    out = cli("check", "--listen", f"unix:{runner.path}")
    assert out.returncode == 0 and "runner answers" in out.stdout
    dead = cli("check", "--listen", f"unix:{tmp_path}/none.sock", "--timeout", "0.5")
    assert dead.returncode == 1 and "no runner answers" in dead.stderr


def test_listen_address_comes_from_the_environment_as_apisix_sets_it(tmp_path):
    from tests.conftest import wait_for_socket

    path = str(tmp_path / "env.sock")
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run"],
                            env=runner_env(APISIX_LISTEN_ADDRESS=f"unix:{path}"),
                            stderr=subprocess.PIPE, cwd=ROOT)
    try:
        wait_for_socket(path, proc)
        with Client(path) as c:
            assert c.request([("say", '{"body":"env"}')]).action.body == b"env"
    finally:
        proc.terminate()
        assert proc.wait(5) == 0


def _python(code: str) -> str:
    """What a fresh interpreter prints running `code` (process-wide settings stay out of here)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout


def test_the_runner_keeps_freed_large_buffers_instead_of_faulting_them_in_again():
    """keep_freed_memory: large buffers allocated and freed on every call (1 MiB bodies) are
    reused, not mapped afresh each time (that cost a 1 MiB call four times the CPU)."""
    code = (
        "import resource, sys\n"
        "from sidecar.cli import keep_freed_memory\n"
        "assert keep_freed_memory()\n"
        "def call():\n"
        "    body = bytearray(1 << 20); reply = bytes(body) + b'x'; return len(reply)\n"
        "call()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(200): call()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    out = _python(code)
    assert int(out) < 50, out  # without it: about 147,000 here


def test_startup_objects_are_frozen_so_full_collections_scan_only_what_calls_made():
    """freeze_startup_objects: with many waiting calls in flight full collections come every
    second or so and pause every connection; frozen startup objects make each one ~7x shorter."""
    code = (
        "import gc, gevent, sidecar.server, sidecar.runner\n"
        "from sidecar.cli import freeze_startup_objects\n"
        "before = len(gc.get_objects())\n"
        "frozen = freeze_startup_objects()\n"
        "print(before, frozen, len(gc.get_objects()))\n"
    )
    out = _python(code)
    before, frozen, after = map(int, out.split())
    assert frozen > 10_000 and after < before // 10, out
