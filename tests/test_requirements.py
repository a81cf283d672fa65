"""tests/requirements.py, proved: on a bare clone (no ../shared, none of the Debian programs the tests run)
the tests that need them skip, each saying in one line what is missing and how to get it; with CI=true the
same tests fail. Proved on one test of each need, run by pytest in a subprocess with GFD_SHARED_DIR pointing
at an empty directory and a PATH that holds everything on this one but the programs the helper knows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements import PACKAGES, REQUIRE_ALL_ENV, ROOT, SHARED_DIR_ENV

# One test per need (each skips or fails before any expensive set-up), and what its line must name.
NEEDS = {
    "tests/test_nvml_mock.py::test_the_mock_and_its_profiles_are_there": "nvml-mock (NVIDIA's mock NVML",
    "tests/test_telemetry.py::test_on_nvidias_mock_the_readings_are_the_profiles": "nvml-mock (NVIDIA's mock NVML",
    "tests/test_cdi.py::test_driver_files_hooks_and_the_root_transform": "cdi (the CDI specification's JSON schema",
    "tests/test_helm.py::test_nfd_rules_validate_against_the_crd": "crds (the NFD and Prometheus-operator CRDs",
    "tests/test_cdi_ldcache.py::test_an_old_format_cache_alone_falls_back_to_the_directories":
        "gcc (Debian package gcc)",
    "tests/test_cli.py::test_a_drop_in_libnvidia_ml_on_the_library_path_is_loaded": "cc (Debian package gcc)",
    "tests/test_mps.py::test_mount_shm_mounts_half_the_memory_as_tmpfs": "unshare (Debian package util-linux)",
    "tests/test_cdi_runtime.py::test_all_gives_every_gpu":
        "podman (Debian package podman)" if os.geteuid() == 0 else "needs root",
    "tests/test_e2e.py::test_end_to_end_tier_on_a_real_control_plane_and_kubelet":
        "k8s (a real etcd, kube-apiserver" if os.geteuid() == 0 else "needs root",
}


def _bare_path(directory: Path) -> str:
    """This PATH without the programs tests/requirements.py knows: links to everything else."""
    directory.mkdir()
    for d in [str(Path(sys.executable).parent), *os.environ["PATH"].split(os.pathsep)]:
        for entry in os.scandir(d) if os.path.isdir(d) else ():
            if entry.name not in PACKAGES and not (directory / entry.name).exists():
                (directory / entry.name).symlink_to(entry.path)
    return str(directory)


def _pytest(tmp_path: Path, **env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", REQUIRE_ALL_ENV)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfEs", *NEEDS], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**clean, SHARED_DIR_ENV: str(tmp_path / "no-shared"), "COLUMNS": "1000", **env})
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("bare")
    return tmp, _bare_path(tmp / "bin")


def test_a_bare_clone_passes_with_every_missing_need_named(bare: tuple[Path, str]) -> None:
    tmp, path = bare
    status, out = _pytest(tmp, PATH=path)
    assert status == 0 and re.match(rf"{len(NEEDS)} skipped in ", out.splitlines()[-1]), out[-3000:]
    reasons = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", out, flags=re.M)
    assert all(re.fullmatch(r"needs [^:]+: [^:]+", r) for r in reasons), reasons  # what is missing: how to get it
    for test, need in NEEDS.items():
        assert any(need in r for r in reasons), (test, need, reasons)


def test_with_ci_true_every_missing_need_fails(bare: tuple[Path, str]) -> None:
    tmp, path = bare
    status, out = _pytest(tmp, PATH=path, CI="true")
    assert status == 1 and "skipped" not in out.splitlines()[-1], out[-3000:]
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+) - Failed: (.*)$", out, flags=re.M)
    for test, need in NEEDS.items():
        assert any(t.startswith(test) and need in r and r.endswith("(required: CI=true)") for t, r in failures), \
            (test, need, failures)


def test_every_package_a_test_may_need_is_one_ci_installs() -> None:
    ci = (ROOT / ".ci/run").read_text()
    packages = re.findall(r"for pkg in (.*?); do", ci, flags=re.S)
    assert packages and set(PACKAGES.values()) <= set(packages[0].replace("\\", " ").split())
    assert "export CI=true" in ci


def test_no_test_finds_the_shared_substrate_by_itself() -> None:
    """Every test reaches ../shared through tests/requirements.py, so that a missing part is named."""
    own = re.compile(r"""(parents?\b.*["']shared["']|/ *["']shared["'] */)""")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "tests").rglob("*.py") if p.name != "requirements.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if own.search(line)]
    assert offenders == []
