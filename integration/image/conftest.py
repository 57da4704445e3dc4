"""Fixtures of the image tests: a Docker engine, the base image, the gateway image built once.

Without a reachable Docker engine every test that needs one is skipped with one reason line.
Where apache/apisix cannot be had (CI here has no registry) the gateway is built on the stand-in
base of integration/support/build.py, which has apache/apisix's user and layout but no APISIX.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `integration.support` without a pythonpath setting
    sys.path.insert(0, str(REPO_ROOT))

from integration.image.helpers import (  # noqa: E402
    MARKER_SUBJECT,
    docker_client_or_reason,
    remove_image,
)
from integration.support import build  # noqa: E402

GATEWAY_TAG = "localhost/apisix-sidecar:image-test"


@pytest.fixture(scope="session")
def docker_client():
    client, reason = docker_client_or_reason()
    if client is None:
        pytest.skip(reason)
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client) -> tuple[str, bool]:
    """(image, is_standin): apache/apisix when present or pullable, else the stand-in."""
    try:
        return build.resolve_base_image(docker_client)
    except build.StandInUnavailable as exc:
        pytest.skip(f"no apache/apisix image and no stand-in base: {exc}")


@pytest.fixture(scope="session")
def marker_ca(tmp_path_factory) -> tuple[Path, str] | None:
    """A throwaway self-signed certificate handed to the build as an extra CA, so the final image
    can be searched for it: (PEM file, one line of its base64 body). None without openssl.
    """
    if shutil.which("openssl") is None:
        return None
    workdir = tmp_path_factory.mktemp("marker-ca")
    cert, key = workdir / "marker.crt", workdir / "marker.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={MARKER_SUBJECT}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    body = [line for line in cert.read_text().splitlines() if line and "-----" not in line]
    return cert, body[len(body) // 2]


@pytest.fixture(scope="session")
def gateway_image(docker_client, base_image, marker_ca, tmp_path_factory) -> Iterator[str]:
    """The gateway image built from docker/Dockerfile on the base, once per session.

    The build stage gets the host's CA bundle (needed behind this machine's TLS-inspecting proxy,
    harmless elsewhere) plus the marker certificate.
    """
    parts = []
    host_ca = build.default_extra_ca()
    if host_ca:
        parts.append(Path(host_ca).read_text())
    if marker_ca:
        parts.append(marker_ca[0].read_text())
    extra_ca = None
    if parts:
        bundle = tmp_path_factory.mktemp("extra-ca") / "extra-ca.crt"
        bundle.write_text("\n".join(parts))
        extra_ca = str(bundle)
    build.build_gateway_image(docker_client, base_image[0], GATEWAY_TAG, extra_ca=extra_ca)
    yield GATEWAY_TAG
    if os.environ.get("APISIX_SIDECAR_KEEP_TEST_IMAGES") != "1":
        remove_image(docker_client, GATEWAY_TAG)
        # the classic builder leaves the build stage (which held the certificates) dangling
        docker_client.images.prune(filters={"dangling": True, "label": build.BUILD_STAGE_LABEL})


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A host directory, mode 0777 so the runner (uid 636) can create its socket in it; short
    enough for a unix socket path.
    """
    path = Path(tempfile.mkdtemp(prefix="sidecar-sock-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def unique_name() -> str:
    return f"apisix-sidecar-image-test-{uuid.uuid4().hex[:8]}"
