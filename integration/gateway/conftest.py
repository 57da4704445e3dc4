"""Fixtures of the real-APISIX suite: engine and image probes, images, network, upstream, gateways.

Where no Docker engine answers, or the APISIX base image is neither present nor pullable, every
test here skips with one line naming what is missing (pytest -ra groups them into one line).

Environment:
  APISIX_IMAGE   base image of the gateway (default: the ARG pinned in docker/Dockerfile)
  ETCD_IMAGE     etcd image for traditional mode (default: configs.DEFAULT_ETCD_IMAGE; 3.4/3.5)
  EXTRA_CA       CA bundle file for the gateway image's build stage (TLS-inspecting proxies);
                 default as `make image` does (APISIX_SIDECAR_EXTRA_CA, else the host's bundle)
  TESTCONTAINERS_RYUK_DISABLED, TESTCONTAINERS_CONNECTION_MODE, DOCKER_HOST: as testcontainers
                 and the docker SDK read them; the suite removes its own containers either way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:  # plain `pytest` (not `python -m pytest`) leaves the root off sys.path
    sys.path.insert(0, _REPO)

from integration.support import configs  # noqa: E402

GATEWAY_TAG = "apisix-sidecar:integration"
PLUGIN_TAG = "apisix-sidecar:integration-testplugins"


# Why the suite cannot run here, once known: every test skips with this one reason.
_unavailable: list[str] = []


def _skip(reason: str) -> None:
    _unavailable.append(reason)
    pytest.skip(reason)


def _containers():
    try:
        from integration.support import containers
    except ImportError as exc:  # the test extra is not installed
        _skip(f"the docker SDK or testcontainers is missing: {exc}")
    return containers


@pytest.fixture(scope="session", autouse=True)
def docker_client():
    containers = _containers()
    try:
        client = containers.engine()
    except containers.Unavailable as exc:
        _skip(str(exc))
    yield client
    containers.cleanup()


@pytest.fixture(scope="session", autouse=True)
def apisix_base(docker_client):
    containers = _containers()
    ref = os.environ.get("APISIX_IMAGE") or configs.default_apisix_image()
    try:
        containers.ensure_image(docker_client, ref, "APISIX image")
    except containers.Unavailable as exc:
        _skip(str(exc))
    return ref


@pytest.fixture(scope="session")
def gateway_image(docker_client, apisix_base):
    """Our gateway image, built once per session from docker/Dockerfile on the real base."""
    from integration.support.build import build_gateway_image, default_extra_ca

    build_gateway_image(docker_client, apisix_base, GATEWAY_TAG,
                        extra_ca=os.environ.get("EXTRA_CA") or default_extra_ca())
    return GATEWAY_TAG


@pytest.fixture(scope="session")
def plugin_image(docker_client, gateway_image):
    """The gateway image plus the test plugin package, pip-installed (no rebuild of ours)."""
    containers = _containers()
    containers.build_plugin_image(docker_client, gateway_image, PLUGIN_TAG)
    yield PLUGIN_TAG
    try:
        docker_client.images.remove(PLUGIN_TAG, force=True)
    except Exception:
        pass


@pytest.fixture(scope="session")
def network(docker_client):
    containers = _containers()
    net = containers.new_network()
    yield net
    containers.remove_network(net)


@pytest.fixture(scope="session")
def echo_upstream(gateway_image, network):
    containers = _containers()
    upstream = containers.Echo(gateway_image, network).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def standalone(plugin_image, network, echo_upstream):
    """A gateway in file-driven standalone mode with the suite's route file."""
    gateway = _containers().start_standalone(plugin_image, network, "standalone")
    yield gateway
    gateway.stop()


@pytest.fixture
def fresh_standalone(plugin_image, network, echo_upstream):
    """A standalone gateway of the test's own, for tests that break things."""
    gateway = _containers().start_standalone(plugin_image, network, "fresh")
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def etcd(docker_client, network):
    containers = _containers()
    ref = os.environ.get("ETCD_IMAGE") or configs.DEFAULT_ETCD_IMAGE
    try:
        containers.ensure_image(docker_client, ref, "etcd image")
    except containers.Unavailable as exc:
        _skip(str(exc))
    server = containers.Etcd(ref, network).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def traditional(plugin_image, network, echo_upstream, etcd):
    """A gateway in traditional mode: etcd, Admin API with the suite's key."""
    gateway = _containers().start_traditional(plugin_image, network, "traditional")
    yield gateway
    gateway.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the logs of the gateways a failing test used to its report; report the skips
    caused by a missing engine or image at one place, so that `-ra` folds them into one line."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        reason = report.longrepr[2].removeprefix("Skipped: ")
        if reason in _unavailable:
            report.longrepr = (__file__, None, reason)
        return
    if not report.failed:
        return
    try:
        from integration.support.containers import Gateway
    except ImportError:
        return
    seen = set()
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Gateway) and id(value) not in seen:
            seen.add(id(value))
            report.sections.append((f"gateway {value.name}: container log (last lines)",
                                    value.logs()))
