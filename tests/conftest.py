"""Shared fixtures: a real runner process on a unix socket, and the captured APISIX frames."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def frames_dir() -> Path | None:
    """../shared/apisix-frames next to the checkout (or $APISIX_FRAMES_DIR), if present."""
    env = os.environ.get("APISIX_FRAMES_DIR")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in ROOT.parents:
        candidate = parent / "shared" / "apisix-frames"
        if candidate.is_dir():
            return candidate
    return None


@dataclass
class RunnerProcess:
    """A runner started as APISIX would start it, with its stderr kept in a file."""

    proc: subprocess.Popen
    path: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def wait_for_socket(path: str, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> None:
    """Return once `path` accepts connections; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"runner exited with {proc.returncode} before listening")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {path} after {timeout}s")


def runner_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sidecar", "run", *args]


def runner_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("APISIX_LISTEN_ADDRESS", None)
    env.update(extra)
    return env


@pytest.fixture
def start_runner(tmp_path: Path) -> Iterator[Callable[..., RunnerProcess]]:
    """Start runner processes on sockets under tmp_path; all are killed at teardown."""
    started: list[RunnerProcess] = []

    def start(*args: str, path: str | None = None, env: dict[str, str] | None = None,
              wait: bool = True) -> RunnerProcess:
        sock = path or str(tmp_path / f"r{len(started)}.sock")
        log_path = tmp_path / f"runner{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                runner_command("--listen", f"unix:{sock}", *args),
                env=runner_env(**(env or {})), stdout=log, stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        runner = RunnerProcess(proc, sock, log_path)
        started.append(runner)
        if wait:
            wait_for_socket(sock, proc)
        return runner

    yield start
    for runner in started:
        if runner.proc.poll() is None:
            runner.proc.kill()
            runner.proc.wait(5)


@pytest.fixture(scope="module")
def shared_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunnerProcess]:
    """One runner with the test plugins loaded, shared by a module's protocol tests."""
    tmp = tmp_path_factory.mktemp("runner")
    sock = str(tmp / "r.sock")
    log_path = tmp / "runner.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            runner_command("--listen", f"unix:{sock}", "--plugin", "tests.plugins_for_tests",
                           "--call-timeout", "1", "--log-level", "debug"),
            env=runner_env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    runner = RunnerProcess(proc, sock, log_path)
    wait_for_socket(sock, proc)
    yield runner
    if proc.poll() is None:
        proc.terminate()
        proc.wait(5)
