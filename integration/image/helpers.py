"""Helpers of the image tests: the engine, the docker/ files, the runner started as APISIX does."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import time
import zipfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
MARKER_SUBJECT = "apisix-sidecar image test marker CA"
APISIX_UID = 636
SOCKET_NAME = "apisix-1.sock"  # what APISIX names it when the nginx master is PID 1
CONTAINER_SOCKET_DIR = "/run/apisix-sidecar-test"


def docker_client_or_reason():
    """(client, None) when a Docker engine answers, else (None, one line saying why not)."""
    try:
        import docker
    except ImportError:
        return None, "image tests skipped: the docker SDK is not installed (pip install docker)"
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return None, f"image tests skipped: no Docker engine reachable at {where} ({first})"
    return client, None


def remove_image(client, ref: str) -> None:
    import docker.errors

    try:
        client.images.remove(ref, force=True)
    except docker.errors.ImageNotFound:
        pass


def load_yaml(name: str):
    return yaml.safe_load((DOCKER_DIR / name).read_text())


def ext_plugin_cmd() -> list[str]:
    """`ext-plugin.cmd` of docker/config.yaml: the argv APISIX starts the runner with."""
    return list(load_yaml("config.yaml")["ext-plugin"]["cmd"])


def route_conf(phase: str, plugin_name: str) -> list[tuple[str, str]]:
    """The ext-plugin `conf` list of the docker/apisix.yaml route that runs `plugin_name` in
    `phase` (e.g. ext-plugin-pre-req), as (name, value) pairs.
    """
    for route in load_yaml("apisix.yaml")["routes"]:
        conf = (route.get("plugins") or {}).get(phase, {}).get("conf", [])
        if any(entry["name"] == plugin_name for entry in conf):
            return [(entry["name"], entry["value"]) for entry in conf]
    raise LookupError(f"no route in docker/apisix.yaml runs {plugin_name} in {phase}")


def image_path_env(client, image: str) -> str:
    """The image's PATH, which nginx passes on to the runner."""
    for item in client.images.get(image).attrs["Config"].get("Env") or []:
        if item.startswith("PATH="):
            return item[len("PATH="):]
    return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def start_runner(client, image: str, socket_dir: Path, name: str, expire: str = "3600"):
    """Start the runner in `image` exactly as APISIX would: the argv of ext-plugin.cmd, an
    environment holding only PATH, APISIX_LISTEN_ADDRESS and APISIX_CONF_EXPIRE_TIME, as the
    image's user, not PID 1 (a child of an init, as it is a child of nginx). Returns the container
    once the socket accepts connections.
    """
    env = [
        f"PATH={image_path_env(client, image)}",
        f"APISIX_LISTEN_ADDRESS=unix:{CONTAINER_SOCKET_DIR}/{SOCKET_NAME}",
        f"APISIX_CONF_EXPIRE_TIME={expire}",
    ]
    container = client.containers.run(
        image,
        entrypoint=["/usr/bin/env", "-i", *env, *ext_plugin_cmd()],
        command=[],
        volumes={str(socket_dir): {"bind": CONTAINER_SOCKET_DIR, "mode": "rw"}},
        init=True,
        stop_signal="SIGTERM",
        name=name,
        detach=True,
    )
    try:
        wait_for_socket(container, socket_dir / SOCKET_NAME)
    except Exception:
        remove_container(container)
        raise
    return container


def wait_for_socket(container, path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect(str(path))
                    return
                except OSError:
                    pass
        container.reload()
        if container.status == "exited":
            logs = container.logs().decode(errors="replace")[-2000:]
            raise AssertionError(f"the runner exited before listening:\n{logs}")
        time.sleep(0.05)
    raise AssertionError(f"no socket at {path} after {timeout} s")


def remove_container(container) -> None:
    try:
        container.remove(force=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


# Run inside the container with the image's python3 (no ps/pgrep in a minimal image): every
# process whose argv ends with the given command, less wrappers (env, init) and the probe itself.
_PROBE = r"""
import json, os, sys
cmd = sys.argv[1:]
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")[:-1]
        if argv[-len(cmd):] != cmd or os.path.basename(argv[0]) in ("env", "docker-init", "tini"):
            continue
        with open(f"/proc/{pid}/status") as f:
            uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = sorted(e.split("=", 1)[0] for e in f.read().decode().split("\0") if e)
        found.append({"pid": int(pid), "argv": argv, "uid": int(uid), "env": env})
    except OSError:
        pass
print(json.dumps(found))
"""


def runner_processes(container) -> list[dict]:
    """The runner's processes in the container: pid, argv (as the kernel has it, the shebang's
    interpreter first), uid and the names of its environment variables.
    """
    result = container.exec_run(["python3", "-c", _PROBE, *ext_plugin_cmd()])
    assert result.exit_code == 0, result.output.decode(errors="replace")
    return json.loads(result.output)


def plugin_wheel(
    dist: str, module: str, source: str, entry_points: dict[str, str]
) -> tuple[str, bytes]:
    """A minimal pure-Python wheel: one module, entry points in apisix_sidecar.plugins.

    Made by hand so that the derived image installs it with `pip install --no-index` and the test
    needs neither PyPI from inside a container nor a build backend.
    """
    version = "1.0"
    normalized = dist.replace("-", "_")
    info = f"{normalized}-{version}.dist-info"
    files = {
        f"{module}.py": source.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: apisix-sidecar-image-test\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{info}/entry_points.txt": (
            "[apisix_sidecar.plugins]\n"
            + "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        ).encode(),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return f"{normalized}-{version}-py3-none-any.whl", buffer.getvalue()
