"""What a test needs from outside the project, and one rule for when it is missing.

Two kinds of need: the team's shared test substrate (`../shared` beside the project, or where
`GFD_SHARED_DIR` points: NVIDIA's mock NVML, the CDI schema, the CRDs, the real control plane and kubelet)
and programs from Debian packages (gcc, podman, etcd, ...). A test that lacks one is skipped with one line
naming what is missing and how to get it; pytest folds the skips of one need into one summary line. When the
run must be complete (`CI=true`, which `.ci/run` sets, or `GFD_TESTS_REQUIRE_ALL=1`), a missing need fails
the test instead, so CI can never silently lose a tier.

Call these in a fixture or at the top of a test (an autouse fixture for a whole module), never at import
time: each returns what it found. `shared_files` gives parametrize its list without needing the files.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR_ENV = "GFD_SHARED_DIR"
REQUIRE_ALL_ENV = "GFD_TESTS_REQUIRE_ALL"
_TRUE = ("1", "true", "yes")

SHARED_PARTS = {
    "nvml-mock": "NVIDIA's mock NVML",
    "cdi": "the CDI specification's JSON schema",
    "crds": "the NFD and Prometheus-operator CRDs",
    "k8s": "a real etcd, kube-apiserver, NFD master and kubelet",
}
# The Debian package of every program a test runs; .ci/run installs each (a test keeps the two lists in step).
PACKAGES = {
    "cc": "gcc", "gcc": "gcc", "ldconfig": "libc-bin", "unshare": "util-linux", "findmnt": "util-linux",
    "mountpoint": "util-linux", "mount": "mount", "podman": "podman", "runc": "runc", "busybox": "busybox-static",
    "etcd": "etcd-server", "ip": "iproute2", "openssl": "openssl", "curl": "curl", "xz": "xz-utils",
    "strip": "binutils", "promtool": "prometheus", "prometheus": "prometheus",
}
_SBIN = ("/usr/sbin", "/sbin")  # where Debian puts ldconfig; not on a non-root user's PATH


def required() -> str:
    """Why every need is required in this run ("" when a missing one may be skipped)."""
    for variable in ("CI", REQUIRE_ALL_ENV):
        if os.environ.get(variable, "").lower() in _TRUE:
            return f"{variable}={os.environ[variable]}"
    return ""


def missing(need: str, remedy: str) -> NoReturn:
    """Skip (or, when the run must be complete, fail) the test: `need` says what is missing, `remedy` how
    to get it; one line."""
    why = required()
    if why:
        pytest.fail(f"{need}: {remedy} (required: {why})", pytrace=False)
    pytest.skip(f"{need}: {remedy}", allow_module_level=True)


def shared_dir() -> Path:
    return Path(os.environ.get(SHARED_DIR_ENV) or ROOT.parent / "shared")


def require_shared(part: str, *files: str) -> Path:
    """`../shared/<part>` (and each of `files` under it, glob patterns matching at least one file)."""
    path = shared_dir() / part
    absent = [f for f in files if not glob.glob(str(path / f))] if path.is_dir() else []
    if not path.is_dir() or absent:
        what = f"{path}/{absent[0]}" if absent else str(path)
        missing(f"needs {what} ({SHARED_PARTS.get(part, part)}, from the team's shared test substrate)",
                f"clone the substrate as ../shared beside the project, or point {SHARED_DIR_ENV} at it")
    return path


def shared_files(part: str, pattern: str) -> list[str]:
    """The names of `../shared/<part>/<pattern>`, for parametrize; when there are none, one placeholder, so
    that the test runs once and its require_shared(part, pattern) says what is missing."""
    names = sorted(p.name for p in (shared_dir() / part).glob(pattern))
    return names or [f"missing:{part}/{pattern}"]


def require_commands(*names: str, packages: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each program on PATH, by name -> its path; one line names every missing one and its Debian package
    (from PACKAGES, or `packages` for a program not listed there)."""
    known = {**PACKAGES, **(packages or {})}
    found = {name: shutil.which(name) for name in names}
    absent = [name for name, path in found.items() if path is None]
    if absent:
        off_path = {name: d for name in absent for d in _SBIN if os.access(os.path.join(d, name), os.X_OK)}
        uninstalled = [name for name in absent if name not in off_path]
        remedies = [f"put {', '.join(sorted(set(off_path.values())))} on PATH"] if off_path else []
        if uninstalled:
            remedies.append(f"apt-get install {' '.join(dict.fromkeys(known[name] for name in uninstalled))}, or "
                            "run .ci/run (it installs them)")
        details = [f"{name} (in {off_path[name]}, not on PATH)" if name in off_path
                   else f"{name} (Debian package {known[name]})" for name in absent]
        missing(f"needs {', '.join(details)}", "; ".join(remedies))
    return {name: path for name, path in found.items() if path is not None}


def require_command(name: str, package: str | None = None) -> str:
    return require_commands(name, packages={name: package} if package else None)[name]


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        missing(f"needs root ({why})", "run the tests as root, as .ci/run does")
