"""The gateway suite's containers: the engine probe, images, the echo upstream, etcd, gateways.

Everything runs through the docker SDK and testcontainers; nothing depends on this machine
(no bind mounts: files go into containers with put_archive, so a remote engine works too).
Every container started here is recorded and removed by `cleanup()`, whether or not Ryuk
(TESTCONTAINERS_RYUK_DISABLED) is there to reap it.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import docker.errors  # binds `docker` too (a bare `import docker` sorts oddly beside docker/)
import docker.utils
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from . import configs, echo, httpclient
from .wait import wait_until
from .wheel import build_wheel

VENV = "/opt/apisix-sidecar/venv"
VENV_PYTHON = f"{VENV}/bin/python"
LABEL = "org.apisix-sidecar.integration"
TESTPLUGINS_DIR = Path(__file__).resolve().parents[1] / "gateway" / "testplugins"
TEST_PLUGINS = ("test-rewrite", "test-extra-info", "test-raise")
PULL_TIMEOUT = 60.0  # seconds without any progress from the engine while pulling
LOG_TAIL = 300

# Retried while waiting: the port is not open yet, or the connection was cut.
NOT_YET = (OSError, http.client.HTTPException)


class Unavailable(Exception):
    """Something the suite needs cannot be had here; the message is one line naming it."""


class ContainerExited(RuntimeError):
    """A container stopped while the suite waited for it."""


def one_line(value: object, limit: int = 240) -> str:
    """A short single-line reason: an engine error's own explanation, whitespace folded."""
    text = getattr(value, "explanation", None) or str(value)
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the engine and images ------------------------------------------------------------------


def engine() -> docker.DockerClient:
    """A client of a Docker engine that answers, or Unavailable."""
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        raise Unavailable(f"no Docker engine at {where}: {one_line(exc)}") from None
    return client


def ensure_image(client: docker.DockerClient, ref: str, what: str,
                 pull_timeout: float = PULL_TIMEOUT) -> None:
    """Make sure image `ref` is present, pulling it if needed; else Unavailable naming it."""
    try:
        client.images.get(ref)
        return
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise Unavailable(f"{what} {ref}: {one_line(exc)}") from None
    puller = None
    try:
        puller = docker.from_env(timeout=pull_timeout)
        if "@" in ref:
            events = puller.api.pull(ref, stream=True, decode=True)
        else:
            repo, tag = docker.utils.parse_repository_tag(ref)
            events = puller.api.pull(repo, tag=tag or "latest", stream=True, decode=True)
        for event in events:
            if isinstance(event, dict) and event.get("error"):
                raise RuntimeError(event["error"])
        client.images.get(ref)
    except Exception as exc:
        raise Unavailable(
            f"{what} {ref} is neither present nor pullable: {one_line(exc)}"
        ) from None
    finally:
        if puller is not None:
            puller.close()


def build_plugin_image(client: docker.DockerClient, base: str, tag: str,
                       project: Path = TESTPLUGINS_DIR) -> str:
    """Derive `tag` from the gateway image `base`: pip-install the test plugin package, as a
    user adds plugins (no rebuild of apisix-sidecar), and check the runner lists them."""
    from .build import build_derived_image

    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(project, tmp)
        dockerfile = "\n".join([
            f"FROM {base}",
            f"COPY {wheel.name} /tmp/{wheel.name}",
            f"RUN {VENV}/bin/pip install --no-index --no-deps /tmp/{wheel.name}",
            f"RUN {VENV}/bin/apisix-sidecar plugins > /tmp/plugins.txt && cat /tmp/plugins.txt"
            " && for name in " + " ".join(TEST_PLUGINS) + "; do"
            " grep -qx $name /tmp/plugins.txt || exit 1; done",
            "",
        ])
        build_derived_image(client, dockerfile, {wheel.name: wheel.read_bytes()}, tag)
    return tag


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644,
               uid: int = 0, gid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


# --- containers -----------------------------------------------------------------------------

_started: list[DockerContainer] = []
_networks: list[Network] = []


def new_network() -> Network:
    network = Network().create()
    _networks.append(network)
    return network


def _start(container: DockerContainer) -> DockerContainer:
    _started.append(container)
    container.start()
    return container


def stop(container: DockerContainer) -> None:
    try:
        container.stop()
    except Exception:
        pass
    if container in _started:
        _started.remove(container)


def remove_network(network: Network) -> None:
    try:
        network.remove()
    except Exception:
        pass
    if network in _networks:
        _networks.remove(network)


def cleanup() -> None:
    """Remove every container and network this module started (idempotent)."""
    for container in reversed(list(_started)):
        stop(container)
    for network in reversed(list(_networks)):
        remove_network(network)


def _running(container: DockerContainer, what: str) -> None:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    if wrapped.status in ("exited", "dead"):
        logs = wrapped.logs(tail=LOG_TAIL).decode("utf-8", "replace")
        raise ContainerExited(f"{what} exited (status {wrapped.attrs['State'].get('ExitCode')}):"
                              f"\n{logs}")


def _base_url(container: DockerContainer, port: int) -> str:
    return f"http://{container.get_container_host_ip()}:{container.get_exposed_port(port)}"


class Echo:
    """The JSON echo upstream (integration/support/echo.py) on the suite's network."""

    def __init__(self, image: str, network: Network, python: str = VENV_PYTHON) -> None:
        source = Path(echo.__file__).read_text()
        self.container = (
            DockerContainer(image, entrypoint=[python], labels={LABEL: "echo"})
            .with_command(["-c", source, "--port", str(configs.ECHO_PORT)])
            .with_network(network)
            .with_network_aliases(configs.ECHO_ALIAS)
            .with_exposed_ports(configs.ECHO_PORT)
        )

    def start(self, timeout: float = 30.0) -> Echo:
        _start(self.container)
        self.url = _base_url(self.container, configs.ECHO_PORT)

        def answers() -> bool:
            _running(self.container, "the echo upstream")
            return httpclient.request(self.url + echo.RECORD_PATH, timeout=2).status == 200

        wait_until(answers, timeout, what="the echo upstream to answer", retry_on=NOT_YET)
        return self

    def recorded(self) -> list[dict[str, Any]]:
        """Every request the upstream saw (newest last)."""
        return httpclient.request(self.url + echo.RECORD_PATH).json()

    def stop(self) -> None:
        stop(self.container)


class Etcd:
    """A one-member etcd, configured by command-line flags only (3.4 and 3.5 images)."""

    def __init__(self, image: str, network: Network) -> None:
        self.container = (
            DockerContainer(image, labels={LABEL: "etcd"})
            .with_command(configs.etcd_command())
            .with_network(network)
            .with_network_aliases(configs.ETCD_ALIAS)
            .with_exposed_ports(configs.ETCD_PORT)
        )

    def start(self, timeout: float = 60.0) -> Etcd:
        _start(self.container)
        url = _base_url(self.container, configs.ETCD_PORT) + "/health"

        def healthy() -> bool:
            _running(self.container, "etcd")
            reply = httpclient.request(url, timeout=2)
            return reply.status == 200 and str(reply.json().get("health")) == "true"

        wait_until(healthy, timeout, what="etcd /health", retry_on=NOT_YET + (ValueError,))
        return self

    def stop(self) -> None:
        stop(self.container)


# What the runner process looks like in /proc: the console script named in ext-plugin.cmd.
_RUNNER_PS = r"""
import os, signal, sys
me = os.getpid()
found = []
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == me:
        continue
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        continue
    if b"run" in argv and any(a == b"apisix-sidecar" or a.endswith(b"/apisix-sidecar")
                              for a in argv):
        found.append(int(pid))
for pid in found:
    if sys.argv[1:] == ["kill"]:
        os.kill(pid, signal.SIGKILL)
    print(pid)
"""


class Gateway:
    """One container of the gateway image, reached on its published 9080 (and 9180)."""

    def __init__(self, image: str, network: Network, name: str,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.container = (
            DockerContainer(image, labels={LABEL: f"gateway-{name}"})
            .with_network(network)
            .with_exposed_ports(configs.GATEWAY_PORT, configs.ADMIN_PORT)
        )
        for key, value in (env or {}).items():
            self.container.with_env(key, value)
        self.admin_key = (env or {}).get(configs.ADMIN_KEY_ENV)
        self._final_logs: str | None = None

    # lifecycle

    def start(self) -> Gateway:
        _start(self.container)
        self.url = _base_url(self.container, configs.GATEWAY_PORT)
        self.admin_url = _base_url(self.container, configs.ADMIN_PORT)
        return self

    def stop(self) -> None:
        if self._final_logs is None:
            self._final_logs = self._fetch_logs()
        stop(self.container)

    def check_running(self) -> None:
        _running(self.container, f"gateway {self.name}")

    def wait_until_answers(self, path: str, status: int, body: str | None = None,
                           timeout: float = 90.0, what: str | None = None) -> httpclient.Reply:
        """Poll `path` until it answers `status` (and `body`); fail at once if APISIX exits."""

        def answers() -> httpclient.Reply | None:
            self.check_running()
            reply = self.request(path, timeout=min(5.0, timeout))
            ok = reply.status == status and (body is None or reply.text == body)
            return reply if ok else None

        return wait_until(answers, timeout, interval=0.25, retry_on=NOT_YET,
                          what=what or f"{path} on gateway {self.name} to answer {status}")

    # files, logs, processes

    def put_file(self, path: str, data: str | bytes, mode: int = 0o664) -> None:
        """Write a file into the container (as the apisix user's, uid 636)."""
        target = PurePosixPath(path)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            payload = data.encode() if isinstance(data, str) else data
            _add_bytes(tar, target.name, payload, mode=mode, uid=636, gid=0)
        if not self.container.get_wrapped_container().put_archive(str(target.parent),
                                                                  archive.getvalue()):
            raise RuntimeError(f"could not write {path} into gateway {self.name}")

    def _fetch_logs(self, tail: int = LOG_TAIL) -> str:
        try:
            raw = self.container.get_wrapped_container().logs(tail=tail)
        except Exception as exc:
            return f"(no logs: {one_line(exc)})"
        return raw.decode("utf-8", "replace")

    def logs(self, tail: int = LOG_TAIL) -> str:
        """The last lines of APISIX's output (error log and access log, runner output in it)."""
        return self._final_logs if self._final_logs is not None else self._fetch_logs(tail)

    def exec_python(self, source: str, *args: str) -> str:
        code, output = self.container.get_wrapped_container().exec_run(
            [VENV_PYTHON, "-c", source, *args], user="root")
        text = output.decode("utf-8", "replace")
        if code != 0:
            raise RuntimeError(f"exec in gateway {self.name} failed ({code}): {text}")
        return text

    def runner_pids(self) -> list[int]:
        """Process ids of the runner APISIX started (normally exactly one)."""
        return [int(line) for line in self.exec_python(_RUNNER_PS).split()]

    def kill_runner(self) -> list[int]:
        """SIGKILL every runner process; return the ids killed."""
        return [int(line) for line in self.exec_python(_RUNNER_PS, "kill").split()]

    # HTTP

    def request(self, path: str, method: str = "GET", **kwargs: Any) -> httpclient.Reply:
        return httpclient.request(self.url + path, method, **kwargs)

    def admin(self, method: str, path: str, body: Any = None) -> httpclient.Reply:
        """Call the Admin API as the seed's example does: 127.0.0.1:9180, header X-API-KEY."""
        if not self.admin_key:
            raise RuntimeError(f"gateway {self.name} has no Admin API key")
        return httpclient.request(self.admin_url + path, method,
                                  headers={"X-API-KEY": self.admin_key}, body=body)

    def put_route(self, route_id: str, route: dict[str, Any]) -> httpclient.Reply:
        """PUT /apisix/admin/routes/<id>; the id goes in the URL, not the body."""
        body = {k: v for k, v in route.items() if k != "id"}
        reply = self.admin("PUT", f"/apisix/admin/routes/{route_id}", body)
        if reply.status not in (200, 201):
            raise AssertionError(f"Admin API refused route {route_id}: {reply}")
        return reply


@contextmanager
def _up_or_stopped(gateway: Gateway, name: str) -> Iterator[None]:
    """If bringing the gateway up fails, stop it and raise with its log attached."""
    try:
        yield
    except BaseException as exc:
        logs = gateway.logs()
        gateway.stop()
        raise RuntimeError(f"gateway {name} did not come up: {exc}\n--- its log ---\n{logs}") \
            from None


def start_standalone(image: str, network: Network, name: str,
                     apisix_yaml: str | None = None, timeout: float = 90.0) -> Gateway:
    """A gateway in file-driven standalone mode serving the suite's route file, ready."""
    gateway = Gateway(image, network, name).start()
    with _up_or_stopped(gateway, name):
        # APISIX re-reads conf/apisix.yaml every second and applies it once it ends with #END.
        gateway.put_file(configs.STANDALONE_FILE,
                         apisix_yaml or configs.standalone_apisix_yaml())
        gateway.wait_until_answers(configs.SAY_PRE, 200, configs.SAY_BODY, timeout=timeout,
                                   what=f"the routes of gateway {name} to answer")
    return gateway


def start_traditional(image: str, network: Network, name: str,
                      timeout: float = 90.0) -> Gateway:
    """A gateway in traditional mode (etcd + Admin API) whose Admin API answers."""
    gateway = Gateway(image, network, name, env=configs.traditional_env()).start()
    with _up_or_stopped(gateway, name):
        def admin_ready() -> bool:
            gateway.check_running()
            return gateway.admin("GET", "/apisix/admin/routes").status == 200

        wait_until(admin_ready, timeout, interval=0.25, retry_on=NOT_YET,
                   what=f"the Admin API of gateway {name}")
    return gateway

