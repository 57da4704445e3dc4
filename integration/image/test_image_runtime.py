"""The gateway image as built from docker/Dockerfile, and the runner in it started as APISIX does.

Runs on apache/apisix when the engine has it (or can pull it), else on the stand-in base (same
`apisix` user and layout, no APISIX): these tests cover our layer of the image, not APISIX.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import docker.errors
import pytest

from integration.image.helpers import (
    APISIX_UID,
    CONTAINER_SOCKET_DIR,
    DOCKER_DIR,
    REPO_ROOT,
    SOCKET_NAME,
    docker_client_or_reason,
    ext_plugin_cmd,
    plugin_wheel,
    remove_container,
    remove_image,
    route_conf,
    runner_processes,
    start_runner,
)
from integration.support.build import build_derived_image
from sidecar.testing import Client, Stop

_probe, _no_engine = docker_client_or_reason()
if _probe is None:  # one skip line for the whole module, not one per test
    pytest.skip(_no_engine, allow_module_level=True)
_probe.close()

VENV = "/opt/apisix-sidecar/venv"
COMPILERS = {"gcc", "cc", "c++", "g++", "clang", "make", "ld", "as", "cpp"}
CROSS_TOOL = re.compile(r"^(\w+-linux-gnu-)?(gcc|g\+\+|cpp|ld|as)(-\d+)?$")
BIN_DIRS = {"bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin"}
UNWANTED_PACKAGES = ("python3-venv", "python3-pip", "python3-dev", "build-essential", "gcc",
                     "g++", "make", "libpython3-dev")


@pytest.fixture(scope="module")
def runner(docker_client, gateway_image):
    """One runner container shared by the read-only checks below: (container, socket path)."""
    socket_dir = Path(tempfile.mkdtemp(prefix="sidecar-sock-"))
    socket_dir.chmod(0o777)
    container = start_runner(docker_client, gateway_image, socket_dir,
                             name=f"apisix-sidecar-image-test-runner-{socket_dir.name[-8:]}")
    yield container, socket_dir / SOCKET_NAME
    remove_container(container)
    shutil.rmtree(socket_dir, ignore_errors=True)


def run_in_image(client, image, command, environment=None, entrypoint=None) -> str:
    """Run a one-off command in the image (as its user) and return its output."""
    kwargs = {"entrypoint": entrypoint} if entrypoint is not None else {}
    out = client.containers.run(image, command=command, environment=environment or {},
                                remove=True, stdout=True, stderr=True, **kwargs)
    return out.decode()


def test_image_builds_on_the_available_base_and_runs_as_apisix(docker_client, gateway_image,
                                                                base_image):
    image, standin = base_image
    note = " (the stand-in: no APISIX inside)" if standin else ""
    print(f"gateway image built FROM {image}{note}")
    config = docker_client.images.get(gateway_image).attrs["Config"]
    assert config["User"] in ("apisix", str(APISIX_UID))
    assert config["WorkingDir"] == "/usr/local/apisix"
    assert config["Entrypoint"] == ["/usr/local/bin/apisix-sidecar-entrypoint"]
    assert config["Cmd"] == ["docker-start"]
    out = run_in_image(docker_client, gateway_image, ["sh", "-c", "id -u; id -g"],
                       entrypoint=[])
    assert out.split() == [str(APISIX_UID), str(APISIX_UID)]


def test_runner_reports_the_project_version(docker_client, gateway_image):
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    out = run_in_image(docker_client, gateway_image, [f"{VENV}/bin/apisix-sidecar", "version"],
                       entrypoint=[])
    assert out.strip() == f"apisix-sidecar {version}"


def test_files_apisix_may_write_belong_to_the_apisix_user(docker_client, gateway_image):
    out = run_in_image(
        docker_client, gateway_image,
        ["stat", "-c", "%u %a %n", "conf", "conf/config.yaml", "conf/config-traditional.yaml",
         "conf/apisix.yaml", VENV],
        entrypoint=[],
    )
    rows = [line.split() for line in out.splitlines()]
    assert {uid for uid, _, _ in rows} == {str(APISIX_UID)}
    assert all(int(mode[-3], 8) & 0o6 == 0o6 for _, mode, _ in rows)  # owner reads and writes


def test_runner_starts_with_the_argv_and_environment_apisix_gives_it(runner):
    container, _ = runner
    [process] = runner_processes(container)
    assert process["argv"][1:] == ext_plugin_cmd()  # argv[0]: the script's interpreter
    assert process["argv"][0] == f"{VENV}/bin/python3"
    assert process["env"] == ["APISIX_CONF_EXPIRE_TIME", "APISIX_LISTEN_ADDRESS", "PATH"]


def test_runner_runs_as_uid_636(runner):
    container, _ = runner
    assert [p["uid"] for p in runner_processes(container)] == [APISIX_UID]


def test_socket_appears_with_the_configured_mode_owned_by_apisix(runner):
    _, path = runner
    stat = path.stat()
    assert oct(stat.st_mode & 0o777) == oct(0o766)
    assert stat.st_uid == APISIX_UID


def test_say_answers_through_the_socket_as_the_demo_route_configures_it(runner):
    _, path = runner
    conf = route_conf("ext-plugin-pre-req", "say")
    with Client(str(path)) as client:
        reply = client.request(conf, path="/say", method="GET", headers=[("host", "localhost")])
    assert isinstance(reply.action, Stop)
    assert reply.action.status == 200
    assert reply.action.body == b"hello"


def test_response_rewrite_answers_through_the_socket_as_the_demo_route_configures_it(runner):
    _, path = runner
    conf = route_conf("ext-plugin-post-resp", "response-rewrite")
    with Client(str(path)) as client:
        reply = client.response(conf, status=200, headers=[("Content-Type", "text/plain")],
                                body=b"hello from the upstream\n")
    headers = {name.lower(): value for name, value in reply.headers}
    assert headers["x-rewritten-by"] == "apisix-sidecar"
    assert headers["content-type"] == "text/plain"
    assert reply.body == b"hello from the upstream, rewritten by apisix-sidecar\n"


def test_docker_stop_ends_the_runner_within_a_second_with_exit_code_0(
    docker_client, gateway_image, socket_dir, unique_name
):
    container = start_runner(docker_client, gateway_image, socket_dir, name=unique_name)
    try:
        with Client(str(socket_dir / SOCKET_NAME)) as client:  # an idle pooled connection stays
            client.request(route_conf("ext-plugin-pre-req", "say"), path="/say")
            signalled = datetime.now(timezone.utc)
            container.stop(timeout=10)  # SIGTERM (stop_signal), SIGKILL only after 10 s
        container.reload()
        state = container.attrs["State"]
        assert state["ExitCode"] == 0, container.logs().decode()[-2000:]
        # when the engine saw the runner exit, leaving out its own teardown of the container
        finished = datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", state["FinishedAt"])
                                          .replace("Z", "+00:00"))
        elapsed = (finished - signalled).total_seconds()
        print(f"runner exited {elapsed:.3f} s after SIGTERM")
        assert 0 <= elapsed < 1.0, f"the runner took {elapsed:.2f} s to exit after SIGTERM"
        assert not (socket_dir / SOCKET_NAME).exists(), "the runner removes its socket"
    finally:
        remove_container(container)


def test_final_image_holds_no_compilers_caches_certificates_or_apt_lists(
    docker_client, gateway_image, marker_ca, tmp_path
):
    container = docker_client.containers.create(gateway_image, entrypoint=["true"], command=[])
    try:
        export = tmp_path / "rootfs.tar"
        with open(export, "wb") as out:
            for chunk in container.export():
                out.write(chunk)
    finally:
        remove_container(container)

    marker = marker_ca[1].encode() if marker_ca else None
    problems: list[str] = []
    dpkg_status = ""
    with tarfile.open(export) as tar:
        for member in tar:
            name = member.name.lstrip("./")
            parts = name.split("/")
            base = parts[-1]
            if "/".join(parts[:-1]) in BIN_DIRS and (base in COMPILERS or CROSS_TOOL.match(base)):
                problems.append(f"compiler tool: /{name}")
            if name.startswith("var/lib/apt/lists/") and member.isfile():
                problems.append(f"apt list: /{name}")
            if name.startswith("var/cache/apt/archives/") and base.endswith(".deb"):
                problems.append(f"apt archive: /{name}")
            if "/.cache/pip" in f"/{name}" or name.startswith("tmp/pip-") or base == "http-v2":
                problems.append(f"pip cache: /{name}")
            if name.startswith("build/") or base in ("extra-ca.crt", "ca-bundle.pem"):
                problems.append(f"build-stage leftover: /{name}")
            if member.isfile():
                if name == "var/lib/dpkg/status":
                    dpkg_status = tar.extractfile(member).read().decode(errors="replace")
                elif marker and member.size < 64 * 1024 * 1024:
                    if marker in tar.extractfile(member).read():
                        problems.append(f"extra CA certificate inside: /{name}")
    installed = {
        block.split("\n", 1)[0].removeprefix("Package: ")
        for block in dpkg_status.split("\n\n")
        if "Status: install ok installed" in block
    }
    assert "python3" in installed
    problems += [f"package installed: {p}" for p in UNWANTED_PACKAGES if p in installed]
    problems += [f"package installed: {p}" for p in installed  # gcc-12, not gcc-12-base
                 if re.fullmatch(r"(gcc|g\+\+|cpp|clang)(-\d+)?", p)]
    assert problems == []


def test_a_plugin_pip_installed_in_a_derived_image_is_found_and_answers(
    docker_client, gateway_image, socket_dir, unique_name
):
    source = (
        "from sidecar import Plugin\n\n\n"
        "class Greeter(Plugin):\n"
        "    name = 'image-test-greeter'\n\n"
        "    def request_filter(self, conf, request, response):\n"
        "        response.status = 203\n"
        "        response.headers.set('X-Greeter', 'derived-image')\n"
        "        response.write('greetings, ' + conf['who'])\n"
    )
    wheel_name, wheel = plugin_wheel(
        "apisix-sidecar-image-test-greeter", "image_test_greeter",
        source, {"image-test-greeter": "image_test_greeter:Greeter"},
    )
    # What a user writes: FROM our image, pip install into the environment, as the image's user.
    dockerfile = (
        f"FROM {gateway_image}\n"
        f"COPY {wheel_name} /tmp/\n"
        f"RUN {VENV}/bin/pip install --no-index /tmp/{wheel_name}\n"
    )
    tag = f"localhost/apisix-sidecar-derived:{unique_name[-8:]}"
    build_derived_image(docker_client, dockerfile, {wheel_name: wheel}, tag)
    container = None
    try:
        listed = run_in_image(docker_client, tag, [f"{VENV}/bin/apisix-sidecar", "plugins"],
                              entrypoint=[])
        assert "image-test-greeter" in listed.split()
        assert {"say", "response-rewrite"} <= set(listed.split())

        container = start_runner(docker_client, tag, socket_dir, name=unique_name)
        with Client(str(socket_dir / SOCKET_NAME)) as client:
            reply = client.request([("image-test-greeter", '{"who": "derived image"}')],
                                   path="/greet")
        assert isinstance(reply.action, Stop)
        assert reply.action.status == 203
        assert ("X-Greeter", "derived-image") in reply.action.headers
        assert reply.action.body == b"greetings, derived image"
    finally:
        if container is not None:
            remove_container(container)
        remove_image(docker_client, tag)


def test_traditional_mode_is_selected_at_run_time_with_the_key_from_the_environment(
    docker_client, gateway_image
):
    standalone = run_in_image(docker_client, gateway_image, ["cat", "conf/config.yaml"])
    assert standalone == (DOCKER_DIR / "config.yaml").read_text()

    traditional = run_in_image(
        docker_client, gateway_image, ["cat", "conf/config.yaml"],
        environment={"APISIX_SIDECAR_DEPLOYMENT": "traditional", "APISIX_ADMIN_KEY": "k3y-abc"},
    )
    assert traditional == (DOCKER_DIR / "config-traditional.yaml").read_text()
    assert "k3y-abc" not in traditional  # APISIX reads the key from the environment itself


@pytest.mark.parametrize(
    "environment, message",
    [
        ({"APISIX_SIDECAR_DEPLOYMENT": "traditional"}, "needs APISIX_ADMIN_KEY"),
        ({"APISIX_SIDECAR_DEPLOYMENT": "etcd"}, "must be standalone or traditional"),
    ],
)
def test_entrypoint_refuses_an_incomplete_or_unknown_deployment(
    docker_client, gateway_image, environment, message
):
    with pytest.raises(docker.errors.ContainerError) as failure:
        run_in_image(docker_client, gateway_image, ["true"], environment=environment)
    assert failure.value.exit_status == 2
    assert message in failure.value.stderr.decode()


def test_the_listen_address_comes_from_the_bind_mounted_directory(runner):
    container, path = runner
    inside = container.exec_run(["ls", CONTAINER_SOCKET_DIR]).output.decode().split()
    assert inside == [SOCKET_NAME] and path.exists()
