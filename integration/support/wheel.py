"""Pack a small pure-Python project into a wheel without a build backend or a network.

The suite installs its test plugin package into a derived gateway image with pip. Building
that package from source inside the image would need a build backend from PyPI (unreachable
behind some proxies and in offline CI); a pure-Python wheel is only a zip file with metadata,
so it is written here from the project's pyproject.toml: [project] name, version, description,
dependencies, entry-points, and [tool.setuptools] packages.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with path.open("rb") as f:
        return tomllib.load(f)


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _metadata(project: dict[str, Any]) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
    ]
    if project.get("description"):
        lines.append(f"Summary: {project['description']}")
    if project.get("requires-python"):
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines.extend(f"Requires-Dist: {dep}" for dep in project.get("dependencies", []))
    return "\n".join(lines) + "\n"


def _entry_points(project: dict[str, Any]) -> str:
    text = []
    for group, entries in project.get("entry-points", {}).items():
        text.append(f"[{group}]")
        text.extend(f"{name} = {value}" for name, value in entries.items())
        text.append("")
    return "\n".join(text)


def build_wheel(project_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `<name>-<version>-py3-none-any.whl` for the project into out_dir; return its path."""
    project_dir = Path(project_dir)
    config = _load_toml(project_dir / "pyproject.toml")
    project = config["project"]
    packages = config.get("tool", {}).get("setuptools", {}).get("packages", [])
    if not packages:
        raise ValueError(f"{project_dir}/pyproject.toml lists no [tool.setuptools] packages")
    dist = re.sub(r"[-_.]+", "_", project["name"]).lower()
    version = project["version"]
    info = f"{dist}-{version}.dist-info"

    files: dict[str, bytes] = {}
    for package in packages:
        root = project_dir / package.replace(".", "/")
        for source in sorted(root.rglob("*.py")):
            if "__pycache__" in source.parts:
                continue
            files[source.relative_to(project_dir).as_posix()] = source.read_bytes()
    files[f"{info}/METADATA"] = _metadata(project).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: apisix-sidecar integration suite\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    entry_points = _entry_points(project)
    if entry_points:
        files[f"{info}/entry_points.txt"] = entry_points.encode()
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()

    out = Path(out_dir) / f"{dist}-{version}-py3-none-any.whl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    return out
