"""`nvidia-dra-plugin doctor` (issue 23, item 6): on a simulated DGX A100 with a correct fake host root for the
DRA driver (containerd with CDI on, the driver's registration and DRA sockets served) every host check is ok;
breaking one piece flips exactly its check, with a remedy; the device plugin's checks are not its; the runtime's
CDI switch and spec directories as containerd 1.7, containerd 2.x and CRI-O read them. The API checks run on
the real API server in tests/test_helm_dra_cluster.py; a refusal here, on the loopback server."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gfd.doctor.checks import DRA
from gfd.doctor.cli import main as doctor
from gfd.doctor.subcommand import with_doctor
from plugin.dra.config import DRA_OPTIONS
from tests.helpers import FakeHostRoot, kube_requests

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "gfd" / "doctor" / "schema.json").read_text())
CRI = '[plugins."io.containerd.grpc.v1.cri"]\n'
# containerd 1.7 as the shared node runs it (config version 2, CDI on, the default spec directories).
CONTAINERD = 'version = 2\n' + CRI + 'enable_cdi = true\ncdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]\n'
REGISTRY, PLUGINS = "var/lib/kubelet/plugins_registry", "var/lib/kubelet/plugins"


class Host(FakeHostRoot):
    """A DRA node's host root: device nodes, containerd's config, and the driver's two sockets listening."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.write("etc/containerd/config.toml", CONTAINERD)
        self.listen(f"{REGISTRY}/gpu.nvidia.com-reg.sock")
        self.listen(f"{PLUGINS}/gpu.nvidia.com/dra.sock")


@pytest.fixture
def host() -> Iterator[Host]:
    root = Path(tempfile.mkdtemp(prefix="dra-", dir="/tmp"))  # short: the sockets' paths must fit
    h = Host(root)
    yield h
    h.close()
    shutil.rmtree(root, ignore_errors=True)


def run(host: Host, capsys: pytest.CaptureFixture[str], *args: str,
        env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, str]]]:
    status = doctor("nvidia-dra-plugin", DRA_OPTIONS, ["--simulate=dgx-a100", f"--host-root={host.root}",
                                                        "--output=json", *args], env or {}, DRA)
    report = json.loads(capsys.readouterr().out)
    jsonschema.validate(report, SCHEMA)
    return status, {c["id"]: c for c in report["checks"]}


def test_a_correct_dra_node_is_all_ok_and_the_device_plugins_checks_are_not_its(
        host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    status, checks = run(host, capsys)
    assert status == 0
    assert list(checks) == ["nvml.library", "driver.version", "cuda.version", "devices.nodes", "gpus.mig-pending",
                            "gpus.lost", "gpus.row-remapping", "runtime.cdi", "dra.kubelet-plugin", "dra.api",
                            "dra.device-classes", "dra.resourceslices", "k8s.node-labels"]
    assert {k for k, c in checks.items() if c["verdict"] == "ok"} == {
        "nvml.library", "driver.version", "cuda.version", "devices.nodes", "gpus.mig-pending", "gpus.lost",
        "gpus.row-remapping", "runtime.cdi", "dra.kubelet-plugin"}
    assert checks["runtime.cdi"]["evidence"] == (f"containerd ({host.root}/etc/containerd/config.toml): CDI on, "
                                                 "spec dirs /etc/cdi, /var/run/cdi")
    assert {k: c["evidence"] for k, c in checks.items() if c["verdict"] == "skipped"} == {
        "dra.api": "no cluster credentials (in the pod, or --kubeconfig)",
        "dra.device-classes": "no cluster credentials (in the pod, or --kubeconfig)",
        "dra.resourceslices": "no node name (set NODE_NAME or --node-name)",
        "k8s.node-labels": "no node name (set NODE_NAME or --node-name)"}


def _cdi_off(h: Host) -> None:
    h.write("etc/containerd/config.toml", "version = 2\n" + CRI + "enable_cdi = false\n")


def _cdi_unset_on_containerd_1_7(h: Host) -> None:
    h.write("etc/containerd/config.toml", "version = 2\n" + CRI + 'sandbox_image = "pause:3.9"\n')


def _specs_elsewhere(h: Host) -> None:
    h.write("etc/containerd/config.toml", "version = 2\n" + CRI + 'enable_cdi = true\ncdi_spec_dirs = ["/run/cdi"]\n')


def _no_driver(h: Host) -> None:
    h.close()
    (h.root / REGISTRY / "gpu.nvidia.com-reg.sock").unlink()


def _driver_died(h: Host) -> None:
    h.sockets[1].close()  # its socket file stays, as after a crash


def _other_kubelet_root(h: Host) -> None:
    _no_driver(h)
    shutil.rmtree(h.root / REGISTRY)


@pytest.mark.parametrize(("breakage", "check", "verdict", "evidence", "remedy"), [
    (_cdi_off, "runtime.cdi", "failed", "CDI off", 'set plugins."io.containerd.grpc.v1.cri".enable_cdi = true'),
    (_cdi_unset_on_containerd_1_7, "runtime.cdi", "warning", "not set (off by default in containerd 1.7",
     "enable_cdi = true and restart containerd"),
    (_specs_elsewhere, "runtime.cdi", "failed", "spec dirs /run/cdi; the specs are written to /etc/cdi",
     "add /etc/cdi to containerd's cdi_spec_dirs"),
    (_no_driver, "dra.kubelet-plugin", "failed", "the DRA driver is not running on this node",
     "nvidia.com/gpu.deploy.dra-driver=true"),
    (_driver_died, "dra.kubelet-plugin", "failed", "nobody answers on", "restart the DRA driver's pod"),
    (_other_kubelet_root, "dra.kubelet-plugin", "failed", "plugins_registry does not exist", "--root-dir"),
])
def test_breaking_one_piece_flips_exactly_its_check(host: Host, capsys: pytest.CaptureFixture[str],
                                                    breakage: Callable[[Host], None], check: str, verdict: str,
                                                    evidence: str, remedy: str) -> None:
    _status, before = run(host, capsys)
    breakage(host)
    status, after = run(host, capsys)
    assert {k for k in after if after[k]["verdict"] != before[k]["verdict"]} == {check}
    assert after[check]["verdict"] == verdict
    assert evidence in after[check]["evidence"] and remedy in after[check]["remedy"]
    assert status == (1 if verdict == "failed" else 0)


@pytest.mark.parametrize(("path", "text", "verdict", "evidence"), [
    # containerd 2.x (config version 3): CDI is on unless switched off, under the CRI runtime plugin.
    ("etc/containerd/config.toml", "version = 3\n", "ok", "CDI not set (on by default in containerd 2.x"),
    ("etc/containerd/config.toml", 'version = 3\n[plugins."io.containerd.cri.v1.runtime"]\nenable_cdi = false\n',
     "failed", "CDI off"),
    # CRI-O always injects CDI devices; its spec directories can be changed.
    ("etc/crio/crio.conf.d/10-cdi.conf", "[crio.runtime]\n", "ok", "CDI on, spec dirs /etc/cdi, /var/run/cdi"),
    ("etc/crio/crio.conf.d/10-cdi.conf", '[crio.runtime]\ncdi_spec_dirs = ["/opt/cdi"]\n', "failed",
     "spec dirs /opt/cdi; the specs are written to /etc/cdi"),
    # What the runtime would refuse is named by its key.
    ("etc/containerd/config.toml", "version = 2\n" + CRI + 'enable_cdi = "yes"\n', "failed",
     'plugins."io.containerd.grpc.v1.cri".enable_cdi is a string, not a boolean'),
    ("etc/containerd/config.toml", "version = 2\n" + CRI + 'cdi_spec_dirs = ["/etc/cdi", 7]\n', "failed",
     'plugins."io.containerd.grpc.v1.cri".cdi_spec_dirs[1] is an integer, not a string'),
])
def test_the_runtimes_cdi_as_each_runtime_reads_its_config(host: Host, capsys: pytest.CaptureFixture[str], path: str,
                                                          text: str, verdict: str, evidence: str) -> None:
    (host.root / "etc/containerd/config.toml").unlink()
    host.write(path, text)
    check = run(host, capsys)[1]["runtime.cdi"]
    assert check["verdict"] == verdict and evidence in check["evidence"], check


def test_the_device_plugins_cdi_cri_strategy_needs_the_runtimes_cdi_too(host: Host,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from plugin.config import PLUGIN_OPTIONS

    _cdi_off(host)

    def runtime_cdi(*args: str) -> dict[str, str]:
        doctor("nvidia-device-plugin", PLUGIN_OPTIONS, ["--simulate=dgx-a100", f"--host-root={host.root}",
                                                        "--output=json", *args], {})
        return next(c for c in json.loads(capsys.readouterr().out)["checks"] if c["id"] == "runtime.cdi")

    assert runtime_cdi()["verdict"] == "skipped"
    assert runtime_cdi("--device-list-strategy=cdi-annotations")["verdict"] == "skipped"  # the toolkit's runtime
    assert runtime_cdi("--device-list-strategy=cdi-cri")["verdict"] == "failed"


def test_the_dra_program_runs_it_as_a_subcommand_with_its_own_options(host: Host,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """As plugin/dra/cli.py wraps its main; NVIDIA's env names for the kubelet's directories apply."""
    moved = host.root / "srv/kubelet"
    moved.parent.mkdir()
    (host.root / "var/lib/kubelet").rename(moved)  # a kubelet with --root-dir=/srv/kubelet
    entry = with_doctor("nvidia-dra-plugin", lambda: DRA_OPTIONS, DRA)(lambda argv, env: 99)
    status = entry(["doctor", "--simulate=dgx-a100", f"--host-root={host.root}", "--output=json"],
                   {"KUBELET_REGISTRAR_DIRECTORY_PATH": "/srv/kubelet/plugins_registry",
                    "KUBELET_PLUGINS_DIRECTORY_PATH": "/srv/kubelet/plugins", "CDI_ROOT": "/var/run/cdi"})
    checks = {c["id"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert status == 0 and checks["dra.kubelet-plugin"]["verdict"] == "ok"
    assert f"{moved}/plugins_registry/gpu.nvidia.com-reg.sock" in checks["dra.kubelet-plugin"]["evidence"]
    assert entry(["--version"], {}) == 99  # anything else is the program's


def test_an_api_refusal_is_a_finding_with_its_status(host: Host, capsys: pytest.CaptureFixture[str], apiserver: Any,
                                                     tmp_path: Path) -> None:
    apiserver.fail("GET", "/deviceclasses/", status=403)
    checks = run(host, capsys, f"--kubeconfig={apiserver.kubeconfig(str(tmp_path / 'kubeconfig'))}")[1]
    assert checks["dra.device-classes"]["verdict"] == "failed"
    assert "403" in checks["dra.device-classes"]["evidence"]
    assert "grant this ServiceAccount read access" in checks["dra.device-classes"]["remedy"]


def test_the_dra_api_checks_go_through_gfd_kube(host: Host, capsys: pytest.CaptureFixture[str], apiserver: Any,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = kube_requests(monkeypatch)
    run(host, capsys, f"--kubeconfig={apiserver.kubeconfig(str(tmp_path / 'kubeconfig'))}", "--node-name=node-1")
    assert len(sent) == len(apiserver.requests()) == 5  # API groups, 2 DeviceClasses, the node's slices, labels
