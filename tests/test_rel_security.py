"""What the runner exposes: its socket's mode, no TCP, request data never run as code, no bodies in
logs; and how it refuses to start, with exit 2 and one line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sidecar.protocol import messages as m
from sidecar.protocol.frame import RPC_HTTP_REQ_CALL
from sidecar.server import bind_unix
from sidecar.testing import Client, RunnerError
from tests._runner_proc import (  # noqa: F401  (fixtures)
    FAULTY,
    connect,
    exchange,
    expect_err,
    run_argv,
    runner_env,
    runners_fixture,
)

# --- the socket file's mode ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o700, 0o660, 0o766])
def test_socket_file_is_created_with_its_mode_by_bind_itself(monkeypatch, mode):
    """With the chmod after bind disabled, the umask around bind alone gives the final mode: there
    is no instant with wider permissions."""
    directory = Path(os.path.realpath("/tmp")) / f"sc-mode-{os.getpid()}-{mode:o}"
    directory.mkdir()
    umask_before = os.umask(0o022)
    os.umask(umask_before)
    monkeypatch.setattr("sidecar.server.os.chmod", lambda *_: None)
    try:
        sock, _ = bind_unix(str(directory / "r.sock"), mode, 8)
        sock.close()
        assert stat.S_IMODE(os.lstat(directory / "r.sock").st_mode) == mode
        assert os.umask(umask_before) == umask_before  # restored
    finally:
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()


@pytest.mark.parametrize("mode", ["0700", "0766"])
def test_every_stat_of_the_socket_during_startup_sees_the_final_mode(runners, mode):
    directory = runners.new_dir()
    path = directory / "r.sock"
    seen: set[int] = set()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                seen.add(stat.S_IMODE(os.lstat(path).st_mode))
            except FileNotFoundError:
                pass

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        runners.start("--socket-mode", mode, directory=directory)
    finally:
        stop.set()
        poller.join(5)
    assert seen == {int(mode, 8)}


# --- no TCP ---------------------------------------------------------------------------------------

def _inet_inodes() -> set[str]:
    inodes = set()
    for name in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        inodes.update(line.split()[9] for line in lines if line.strip())
    return inodes


def test_runner_never_opens_an_inet_socket(runners):
    runner = runners.start()
    with Client(runner.path) as client:
        for i in range(20):
            client.request([("say", '{"body":"x"}')], id=i)
        fd_dir = f"/proc/{runner.pid}/fd"
        sockets = set()
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith("socket:["):
                sockets.add(target[len("socket:["):-1])
    assert sockets, "the runner holds no socket at all?"
    assert not sockets & _inet_inodes()
    unix = Path("/proc/net/unix").read_text()
    assert any(line.split()[-1] == runner.path for line in unix.splitlines()[1:]
               if line.split()[6] in sockets)


# --- request data and configuration are data --------------------------------------------------

@pytest.fixture
def marker(runners):
    path = runners.new_dir() / "evaluated"
    yield path
    assert not path.exists(), "request data or configuration was run as code"


def _payloads(marker: Path) -> list[str]:
    return [
        f"__import__('os').system('touch {marker}')",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"{{{{ ''.__class__.__mro__[1].__subclasses__() }}}} ; touch {marker}",
        f"${{jndi:ldap://x/{marker}}}",
        f"!!python/object/apply:os.system ['touch {marker}']",
    ]


def test_configuration_values_come_back_as_text(runners, marker):
    runner = runners.start()
    with Client(runner.path) as client:
        for text in _payloads(marker):
            reply = client.request([("say", json.dumps({"body": text}))])
            assert reply.action.body == text.encode()


def test_request_data_comes_back_as_text(runners, marker):
    runner = runners.start("--plugin", f"{FAULTY}:Echo")
    with Client(runner.path) as client:
        for text in _payloads(marker):
            reply = client.request([("echo", "{}")], path=f"/{text}", args=[("q", text)],
                                   headers=[("x-h", text)])
            assert reply.action.body.decode() == f"/{text}\nq={text}\nx-h: {text}"


def test_configuration_that_is_not_json_or_names_a_module_is_refused_not_run(runners, marker):
    runner = runners.start(env={"SC_IMPORT_MARKER": str(marker)})
    confs = [
        [("say", f"__import__('os').system('touch {marker}')")],
        [("tests._import_marker", "{}")],
        [("tests._import_marker:Marker", "{}")],
        [("os:system", f"touch {marker}")],
    ]
    with Client(runner.path) as client:
        for conf in confs:
            with pytest.raises(RunnerError) as caught:
                client.request(conf)
            assert caught.value.code == m.ERR_SERVICE_UNAVAILABLE


def test_the_import_marker_module_would_be_seen_if_imported(runners, marker):
    """The control of the test above: importing tests._import_marker does create the marker."""
    env = runner_env(SC_IMPORT_MARKER=str(marker))
    subprocess.run([sys.executable, "-c", "import tests._import_marker"], env=env, check=True)
    assert marker.exists()
    marker.unlink()


# --- logs -------------------------------------------------------------------------------------

SECRETS = {"body": "BODY-SECRET-7f3a", "var": "VAR-SECRET-7f3a", "header": "HDR-SECRET-7f3a",
           "arg": "ARG-SECRET-7f3a", "path": "PATH-SECRET-7f3a"}


def _traffic_with_secrets(runner) -> None:
    with Client(runner.path) as client:
        for plugin in ("body-length", "fault-raise"):
            try:
                reply = client.request(
                    [(plugin, "{}")], path=f"/{SECRETS['path']}", args=[("a", SECRETS["arg"])],
                    headers=[("x-h", SECRETS["header"])], body=SECRETS["body"].encode() * 100,
                    vars={"secret_var": SECRETS["var"]})
            except RunnerError as exc:
                assert exc.code == m.ERR_SERVICE_UNAVAILABLE
            else:
                assert reply.action.body == b"body=1600 var=15"
    with connect(runner.path) as sock:  # an undecodable call carrying the secret
        garbage = b"\x04\x00\x00\x00" + SECRETS["body"].encode() * 3
        assert expect_err(exchange(sock, RPC_HTTP_REQ_CALL, garbage)) == m.ERR_BAD_REQUEST


def test_info_logs_carry_no_request_data_and_stdout_stays_empty(runners):
    runner = runners.start("--plugin", f"{FAULTY}:BodyLength", "--plugin", f"{FAULTY}:Raise")
    _traffic_with_secrets(runner)
    assert runner.terminate() == 0
    logs = runner.stderr()
    assert "plugin failed" in logs and "undecodable payload" in logs  # the calls were logged
    for what, secret in SECRETS.items():
        assert secret not in logs, f"request {what} in the info log"
    assert runner.proc.stdout.read() == b""


def test_debug_logs_describe_calls(runners):
    runner = runners.start("--plugin", f"{FAULTY}:BodyLength", "--plugin", f"{FAULTY}:Raise",
                           "--log-level", "debug")
    _traffic_with_secrets(runner)
    assert runner.terminate() == 0
    assert "request call" in runner.messages()


# --- refusing to start --------------------------------------------------------------------------

def _not_a_socket(tmp: Path) -> str:
    (tmp / "file").write_text("keep me")
    return f"unix:{tmp / 'file'}"


def _a_directory(tmp: Path) -> str:
    (tmp / "dir").mkdir()
    return f"unix:{tmp / 'dir'}"


BAD_ADDRESSES = {
    "missing": lambda tmp: None,
    "empty": lambda tmp: "",
    "tcp": lambda tmp: "tcp://127.0.0.1:9180",
    "host-port": lambda tmp: "127.0.0.1:9180",
    "relative": lambda tmp: "unix:r.sock",
    "too-long": lambda tmp: "unix:/tmp/" + "x" * 120,
    "no-directory": lambda tmp: f"unix:{tmp}/missing/r.sock",
    "directory-is-a-file": lambda tmp: "unix:/etc/hostname/r.sock",
    "unusable-directory": lambda tmp: "unix:/sys/r.sock",
    "not-a-socket": _not_a_socket,
    "a-directory": _a_directory,
}


@pytest.mark.parametrize(
    ("case", "how"),
    [(case, how) for case in BAD_ADDRESSES for how in ("flag", "env")
     if not (case == "missing" and how == "env")],  # no address at all: one way to say it
)
def test_unusable_address_exits_2_with_one_line(runners, case, how):
    tmp = runners.new_dir()
    address = BAD_ADDRESSES[case](tmp)
    argv, env = [sys.executable, "-m", "sidecar", "run"], runner_env()
    if address is not None and how == "flag":
        argv += ["--listen", address]
    elif address is not None:
        env["APISIX_LISTEN_ADDRESS"] = address
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("apisix-sidecar: error: "), out.stderr
    if case == "not-a-socket":
        assert (tmp / "file").read_text() == "keep me"
