"""Build the gateway image (docker/Dockerfile) and, where apache/apisix cannot be had, a stand-in.

    base, standin = resolve_base_image(client)          # apache/apisix if present/pullable
    image = build_gateway_image(client, base, "localhost/apisix-sidecar:test",
                                extra_ca=default_extra_ca())

The stand-in (`localhost/apisix-standin:bookworm`) is Debian bookworm from debootstrap with
apache/apisix's `apisix` user (uid/gid 636), its /usr/local/apisix layout and an entrypoint that
runs any command but `docker-start`. It holds no APISIX: it exists only to test our layer of the
image (the Python runtime, the virtual environment, the files and their owners). Both it and the
Debian base under it are cached by tag in the engine, so later runs skip debootstrap.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import docker.models.images

import docker

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = "docker/Dockerfile"
DEBIAN_BASE = "localhost/debian:bookworm-slim"
STANDIN_IMAGE = "localhost/apisix-standin:bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
APISIX_UID = 636
BUILD_STAGE_LABEL = "apisix-sidecar.stage=build"  # on the Dockerfile's build stage
LOCK_FILE = Path(tempfile.gettempdir()) / "apisix-sidecar-standin.lock"

OPENRESTY_PATH = (
    "/usr/local/openresty/luajit/bin:/usr/local/openresty/nginx/sbin:/usr/local/openresty/bin"
)
STANDIN_DESCRIPTION = "A stand-in for apache/apisix: its apisix user and layout, no APISIX inside"

# The stand-in mirrors what our Dockerfile relies on in apache/apisix (debian/Dockerfile of
# apache/apisix-docker, 3.16 on): user and group apisix 636, /usr/local/apisix owned apisix:0
# with g=u, WORKDIR, PATH, USER apisix, ENTRYPOINT/CMD and STOPSIGNAL.
STANDIN_DOCKERFILE = f"""\
FROM {DEBIAN_BASE}
RUN groupadd --system --gid {APISIX_UID} apisix \\
    && useradd --system --gid apisix --no-create-home --shell /usr/sbin/nologin \\
       --uid {APISIX_UID} apisix \\
    && mkdir -p /usr/local/apisix/conf /usr/local/apisix/logs \\
    && chown -R apisix:0 /usr/local/apisix \\
    && chmod -R g=u /usr/local/apisix
COPY docker-entrypoint.sh /docker-entrypoint.sh
WORKDIR /usr/local/apisix
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{OPENRESTY_PATH}
LABEL org.opencontainers.image.title="apisix stand-in" \\
      org.opencontainers.image.description="{STANDIN_DESCRIPTION}"
USER apisix
EXPOSE 9080 9443
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["docker-start"]
STOPSIGNAL SIGQUIT
"""

STANDIN_ENTRYPOINT = """\
#!/bin/sh
# apisix stand-in: there is no APISIX in this image, only its user and layout.
if [ "${1:-}" = "docker-start" ]; then
    echo "apisix stand-in: no APISIX in this image; it only tests the apisix-sidecar layer" >&2
    exit 1
fi
exec "$@"
"""


class BuildFailed(RuntimeError):
    """An image build failed; the message ends with the tail of the build log."""


class StandInUnavailable(RuntimeError):
    """The stand-in base cannot be built here (no debootstrap, not root, no mirror)."""


def default_apisix_image() -> str:
    """The `ARG APISIX_IMAGE=` default of docker/Dockerfile (the pinned apache/apisix tag)."""
    text = (REPO_ROOT / DOCKERFILE).read_text()
    match = re.search(r"^ARG APISIX_IMAGE=(\S+)", text, re.MULTILINE)
    if not match:
        raise ValueError(f"{DOCKERFILE} has no `ARG APISIX_IMAGE=` default")
    return match.group(1)


def default_extra_ca() -> str | None:
    """CA certificates for the build stage: $APISIX_SIDECAR_EXTRA_CA, else the host's bundle.

    Handing the host bundle over is harmless where PyPI is reached directly, and needed where the
    host trusts a TLS-inspecting proxy that the base image does not know. Set the variable to an
    empty string to hand nothing.
    """
    value = os.environ.get("APISIX_SIDECAR_EXTRA_CA")
    if value is not None:
        return value or None
    return HOST_CA_BUNDLE if os.path.isfile(HOST_CA_BUNDLE) else None


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def resolve_base_image(client: docker.DockerClient) -> tuple[str, bool]:
    """(base image, is_standin): $APISIX_IMAGE or the Dockerfile's default when it is present or
    can be pulled (skip pulling with APISIX_SIDECAR_PULL=0), else the stand-in, built if missing.
    """
    wanted = os.environ.get("APISIX_IMAGE") or default_apisix_image()
    if image_exists(client, wanted):
        return wanted, False
    if os.environ.get("APISIX_SIDECAR_PULL", "1") != "0":
        repository, _, tag = wanted.rpartition(":")
        try:
            client.images.pull(repository, tag=tag)
            return wanted, False
        except docker.errors.APIError:
            pass
    return ensure_standin_image(client), True


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One stand-in build at a time on this machine (test sessions may run side by side)."""
    with open(LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_debian_base(client: docker.DockerClient) -> str:
    """localhost/debian:bookworm-slim from `debootstrap --variant=minbase`, unless already there."""
    if image_exists(client, DEBIAN_BASE):
        return DEBIAN_BASE
    with _lock():
        if image_exists(client, DEBIAN_BASE):
            return DEBIAN_BASE
        if shutil.which("debootstrap") is None:
            raise StandInUnavailable("debootstrap is not installed (apt-get install debootstrap)")
        if os.geteuid() != 0:
            raise StandInUnavailable("debootstrap needs root to build the stand-in base")
        work = Path(tempfile.mkdtemp(prefix="apisix-standin-"))
        try:
            rootfs = work / "rootfs"
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                capture_output=True, text=True, timeout=900,
            )
            if result.returncode != 0:
                tail = (result.stdout + result.stderr)[-2000:]
                raise StandInUnavailable(f"debootstrap failed ({result.returncode}): {tail}")
            lists = rootfs / "var/lib/apt/lists"
            for entry in lists.iterdir() if lists.is_dir() else ():
                if entry.is_file():
                    entry.unlink()
            tar_path = work / "rootfs.tar"
            subprocess.run(
                ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tar_path), "."],
                check=True, capture_output=True, timeout=600,
            )
            repository, _, tag = DEBIAN_BASE.rpartition(":")
            client.api.import_image_from_file(str(tar_path), repository=repository, tag=tag)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return DEBIAN_BASE


def ensure_standin_image(client: docker.DockerClient) -> str:
    """localhost/apisix-standin:bookworm (see the module docstring), built once and reused."""
    if image_exists(client, STANDIN_IMAGE):
        return STANDIN_IMAGE
    ensure_debian_base(client)
    with _lock():
        if not image_exists(client, STANDIN_IMAGE):
            files = {
                "Dockerfile": (STANDIN_DOCKERFILE.encode(), 0o644),
                "docker-entrypoint.sh": (STANDIN_ENTRYPOINT.encode(), 0o755),
            }
            _build(client, _tar(files), tag=STANDIN_IMAGE, dockerfile="Dockerfile")
    return STANDIN_IMAGE


def gateway_context(extra_ca: str | os.PathLike[str] | None = None) -> io.BytesIO:
    """The build context of docker/Dockerfile as a tar: what .dockerignore lets through
    (pyproject.toml, README.md, sidecar/, docker/), minus any docker/certs/*.crt of this checkout,
    plus `extra_ca` as docker/certs/extra-ca.crt.
    """
    files: dict[str, tuple[bytes, int, int]] = {}

    def entry(path: Path) -> tuple[bytes, int, int]:
        stat = path.stat()
        return path.read_bytes(), stat.st_mode & 0o777, int(stat.st_mtime)

    def add_tree(top: Path) -> None:
        for path in sorted(top.rglob("*")):
            rel = path.relative_to(REPO_ROOT).as_posix()
            if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
                continue
            if rel.startswith("docker/certs/") and rel.endswith(".crt"):
                continue
            files[rel] = entry(path)

    for name in ("pyproject.toml", "README.md"):
        path = REPO_ROOT / name
        if path.is_file():
            files[name] = entry(path)
    add_tree(REPO_ROOT / "sidecar")
    add_tree(REPO_ROOT / "docker")
    if extra_ca:
        files["docker/certs/extra-ca.crt"] = (Path(extra_ca).read_bytes(), 0o644, 0)
    return _tar(files)


def build_gateway_image(
    client: docker.DockerClient,
    base_image: str,
    tag: str,
    extra_ca: str | None = None,
) -> docker.models.images.Image:
    """Build docker/Dockerfile FROM `base_image` (its APISIX_IMAGE argument) as `tag`.

    `extra_ca` is a PEM file (one certificate or a bundle) handed to the build stage as
    docker/certs/extra-ca.crt; the checkout's own docker/certs/*.crt are left out. Raises
    BuildFailed with the tail of the log when the build fails.
    """
    _build(client, gateway_context(extra_ca), tag=tag, dockerfile=DOCKERFILE,
           buildargs={"APISIX_IMAGE": base_image})
    return client.images.get(tag)


def build_derived_image(
    client: docker.DockerClient, dockerfile: str, files: dict[str, bytes], tag: str
) -> docker.models.images.Image:
    """Build a small image from `dockerfile` with `files` as its context (a derived image)."""
    context = {"Dockerfile": (dockerfile.encode(), 0o644)}
    context.update({name: (data, 0o644) for name, data in files.items()})
    _build(client, _tar(context), tag=tag, dockerfile="Dockerfile")
    return client.images.get(tag)


def _tar(files: dict[str, tuple[bytes, int] | tuple[bytes, int, int]]) -> io.BytesIO:
    """A tar of name -> (data, mode[, mtime]); mtime defaults to 0 (a stable build cache key)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (data, mode, *mtime) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = mtime[0] if mtime else 0
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _build(
    client: docker.DockerClient,
    context: io.BytesIO,
    *,
    tag: str,
    dockerfile: str,
    buildargs: dict[str, str] | None = None,
) -> None:
    log: list[str] = []
    error = None
    stream = client.api.build(
        fileobj=context, custom_context=True, dockerfile=dockerfile, tag=tag,
        buildargs=buildargs or {}, rm=True, forcerm=True, pull=False, decode=True,
    )
    for chunk in stream:
        if "stream" in chunk:
            log.append(chunk["stream"])
        if "error" in chunk:
            error = chunk["error"]
            log.append(error + "\n")
    if error is not None:
        tail = "".join(log)[-4000:]
        raise BuildFailed(
            f"building {tag} failed: {error.strip()}\n--- build log (tail) ---\n{tail}"
        )
