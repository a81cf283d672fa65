"""`doctor` (issue 15): on a simulated DGX A100 with a correct fake host root every check is ok; breaking
one piece of the set-up flips exactly the check that names it, with a remedy; the JSON output matches the
schema kept in the repo; the programs run it as `<program> doctor`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gfd.config.model import GFD_OPTIONS
from gfd.doctor.cli import main as doctor
from plugin.config import PLUGIN_OPTIONS
from tests.helpers import FakeHostRoot, free_port, kube_requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCHEMA = json.loads((ROOT / "gfd" / "doctor" / "schema.json").read_text())
# As `nvidia-ctk runtime configure --runtime=containerd --set-as-default` writes it (config version 2).
CONTAINERD = """version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "nvidia"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
      BinaryName = "/usr/bin/nvidia-container-runtime"
"""
CRIO_DROP_IN = """[crio.runtime]
default_runtime = "nvidia"
[crio.runtime.runtimes.nvidia]
runtime_path = "/usr/bin/nvidia-container-runtime"
runtime_type = "oci"
"""
DOCKER = {"default-runtime": "nvidia", "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}


class Host(FakeHostRoot):
    """A fake host root, as a correct GPU node has it; `kubelet.sock` is a real listening socket."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.write("etc/containerd/config.toml", CONTAINERD)
        for tool in ("usr/bin/nvidia-container-runtime", "usr/bin/nvidia-ctk"):
            self.write(tool, "#!/bin/sh\n", 0o755)
        (root / "etc/kubernetes/node-feature-discovery/features.d").mkdir(parents=True)
        self.kubelet = self.listen("var/lib/kubelet/device-plugins/kubelet.sock")


@pytest.fixture
def host() -> Iterator[Host]:
    root = Path(tempfile.mkdtemp(prefix="host-", dir="/tmp"))  # short: kubelet.sock must fit a socket path
    h = Host(root)
    yield h
    h.close()
    shutil.rmtree(root, ignore_errors=True)


def run(host: Host, *args: str, program: str = "plugin", env: dict[str, str] | None = None,
        capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, str]]]:
    prog, options = ("nvidia-device-plugin", PLUGIN_OPTIONS) if program == "plugin" else \
        ("gpu-feature-discovery", GFD_OPTIONS)
    status = doctor(prog, options, ["--simulate=dgx-a100", f"--host-root={host.root}", "--output=json", *args],
                    env or {})
    report = json.loads(capsys.readouterr().out)
    jsonschema.validate(report, SCHEMA)
    return status, {c["id"]: c for c in report["checks"]}


def verdicts(checks: dict[str, dict[str, str]]) -> dict[str, str]:
    return {k: c["verdict"] for k, c in checks.items()}


LOCAL_OK = {"nvml.library", "driver.version", "cuda.version", "devices.nodes", "gpus.mig-pending", "gpus.lost",
            "gpus.row-remapping", "runtime.nvidia", "toolkit.installed", "kubelet.device-plugins", "nfd.features"}


def test_a_correct_node_is_all_ok(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    status, checks = run(host, capsys=capsys)
    assert status == 0
    assert {k for k, v in verdicts(checks).items() if v == "ok"} == LOCAL_OK
    # What needs the API or a CDI strategy says why it did not run.
    assert {k: c["evidence"] for k, c in checks.items() if c["verdict"] == "skipped"} == {
        "runtime.cdi": "no CDI device names for the runtime (cdi-cri strategy or DRA driver)",
        "cdi.specs": "no CDI device list strategy chosen",
        "k8s.runtimeclass": "the chart sets no runtimeClassName",
        "k8s.node-labels": "no node name (set NODE_NAME or --node-name)"}


def _break_nodes(h: Host) -> None:
    (h.root / "dev/nvidia3").unlink()


def _break_runtime(h: Host) -> None:
    h.write("etc/containerd/config.toml", 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
            'default_runtime_name = "runc"\n')


def _runtime_syntax(h: Host) -> None:
    h.write("etc/containerd/config.toml", "version = 2\n[plugins\n")


def _break_toolkit(h: Host) -> None:
    for tool in ("usr/bin/nvidia-container-runtime", "usr/bin/nvidia-ctk"):
        (h.root / tool).unlink()


def _break_kubelet(h: Host) -> None:
    h.kubelet.close()
    (h.root / "var/lib/kubelet/device-plugins/kubelet.sock").unlink()


def _break_features(h: Host) -> None:
    shutil.rmtree(h.root / "etc/kubernetes/node-feature-discovery/features.d")


@pytest.mark.parametrize(("breakage", "check", "verdict", "remedy"), [
    (_break_nodes, "devices.nodes", "failed", "nvidia-modprobe"),
    (_break_runtime, "runtime.nvidia", "failed", "nvidia-ctk runtime configure --runtime=containerd --set-as-default"),
    (_runtime_syntax, "runtime.nvidia", "failed", "as the evidence says"),
    (_break_toolkit, "toolkit.installed", "failed", "install the NVIDIA Container Toolkit"),
    (_break_kubelet, "kubelet.device-plugins", "failed", "--root-dir"),
    (_break_features, "nfd.features", "failed", "deploy NFD"),
])
def test_breaking_one_piece_flips_exactly_its_check(host: Host, capsys: pytest.CaptureFixture[str],
                                                    breakage: Callable[[Host], None], check: str, verdict: str,
                                                    remedy: str) -> None:
    _status, before = run(host, capsys=capsys)
    breakage(host)
    status, after = run(host, capsys=capsys)
    changed = {k for k in after if after[k]["verdict"] != before[k]["verdict"]}
    assert changed == {check} and after[check]["verdict"] == verdict
    assert remedy in after[check]["remedy"]
    assert status == 1


def test_the_runtime_may_be_cri_o_or_docker_and_a_handler_needs_a_runtime_class(
        host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    (host.root / "etc/containerd/config.toml").unlink()
    host.write("etc/crio/crio.conf.d/99-nvidia.conf", CRIO_DROP_IN)
    assert verdicts(run(host, capsys=capsys)[1])["runtime.nvidia"] == "ok"
    (host.root / "etc/crio/crio.conf.d/99-nvidia.conf").unlink()
    host.write("etc/docker/daemon.json", json.dumps(DOCKER))
    assert verdicts(run(host, capsys=capsys)[1])["runtime.nvidia"] == "ok"
    host.write("etc/docker/daemon.json", json.dumps({"runtimes": DOCKER["runtimes"]}))  # a handler, not the default
    status, checks = run(host, "--strict", capsys=capsys)
    assert checks["runtime.nvidia"]["verdict"] == "warning" and "runtimeClassName" in checks["runtime.nvidia"]["remedy"]
    assert status == 2  # --strict: warnings only
    assert verdicts(run(host, "--runtime-class=nvidia", capsys=capsys)[1])["runtime.nvidia"] == "ok"
    (host.root / "etc/docker/daemon.json").unlink()
    assert verdicts(run(host, capsys=capsys)[1])["runtime.nvidia"] == "skipped"


def test_gpu_states_flip_their_checks(host: Host, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      write_yaml: Any) -> None:
    """MIG pending, lost, row remapping: set in a profile (the simulator answers NVML as the driver does)."""
    profile = tmp_path / "node.yaml"
    profile.write_text(json.dumps({"gpus": [{"model": "A100-SXM4-40GB", "count": 8}],
                                   "telemetry": {"remap_pending": 1}}))
    checks = run(host, f"--simulate={profile}", capsys=capsys)[1]
    assert checks["gpus.row-remapping"]["verdict"] == "warning" and "reset" in checks["gpus.row-remapping"]["remedy"]
    profile.write_text(json.dumps({"gpus": [{"model": "A100-SXM4-40GB", "count": 8}],
                                   "telemetry": {"remap_failure": 1}}))
    assert verdicts(run(host, f"--simulate={profile}", capsys=capsys)[1])["gpus.row-remapping"] == "failed"
    profile.write_text(json.dumps({"gpus": [{"model": "A100-SXM4-40GB", "count": 8}],
                                   "faults": [{"call": "nvmlDeviceGetUUID", "error": "GPU_IS_LOST", "gpu": 2}]}))
    checks = run(host, f"--simulate={profile}", capsys=capsys)[1]
    assert checks["gpus.lost"]["verdict"] == "failed" and "reboot" in checks["gpus.lost"]["remedy"]
    profile.write_text(json.dumps({"gpus": [{"model": "A100-SXM4-40GB", "count": 8}], "driver_version": "375.66"}))
    checks = run(host, f"--simulate={profile}", capsys=capsys)[1]
    assert checks["driver.version"]["verdict"] == "failed" and "384.81" in checks["driver.version"]["remedy"]


def test_mig_mode_pending_a_reset(host: Host, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from gfd.discovery.simulated import profiles

    real = profiles.load_profile

    def pending(name: str) -> Any:
        node = real(name)
        node.gpus[1].mig_pending = True
        return node

    monkeypatch.setattr(profiles, "load_profile", pending)
    checks = run(host, capsys=capsys)[1]
    assert checks["gpus.mig-pending"]["verdict"] == "warning"
    assert "GPU 1 (MIG off -> on)" in checks["gpus.mig-pending"]["evidence"]


def test_no_driver_is_one_failed_check_and_the_rest_say_why(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    status, checks = run(host, "--simulate=no-library", capsys=capsys)
    assert status == 1
    assert checks["nvml.library"]["verdict"] == "failed"
    assert "--driver-root-ctr-path" in checks["nvml.library"]["remedy"]
    assert {k for k, c in checks.items() if c["verdict"] == "failed"} == {"nvml.library"}
    assert all(checks[k]["evidence"] == "NVML not loaded" for k in ("driver.version", "devices.nodes", "gpus.lost"))


def test_cdi_specs_written_by_the_plugin_pass_and_stale_ones_fail(host: Host,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from gfd.discovery.session import NodeSource
    from plugin.cdi.store import publish
    from plugin.config import load_plugin_config

    spec_dir = host.root / "var/run/cdi"
    assert run(host, "--device-list-strategy=cdi-cri", capsys=capsys)[1]["cdi.specs"]["verdict"] == "failed"
    config = load_plugin_config(["--simulate=dgx-a100", "--device-list-strategy=cdi-cri",
                                 f"--cdi-spec-dir={spec_dir}"], {})
    with NodeSource("nvml", config.simulate) as source:
        source.open()
        publish(source.read(), config, (), {}, source.host_root)
    assert run(host, "--device-list-strategy=cdi-cri", capsys=capsys)[1]["cdi.specs"]["verdict"] == "ok"
    # Index names no longer match a UUID strategy's: a stale spec.
    checks = run(host, "--device-list-strategy=cdi-cri", "--device-id-strategy=index", capsys=capsys)[1]
    assert checks["cdi.specs"]["verdict"] == "failed" and "restart the device plugin" in checks["cdi.specs"]["remedy"]
    (spec_dir / "k8s.device-plugin.nvidia.com-gpu.json").write_text("{not json")
    assert "is not a CDI spec" in run(host, "--device-list-strategy=cdi-cri", capsys=capsys)[1]["cdi.specs"]["evidence"]
    # A FIFO where the spec should be: read as any operator-handed file (never blocks doctor).
    (spec_dir / "k8s.device-plugin.nvidia.com-gpu.json").unlink()
    os.mkfifo(spec_dir / "k8s.device-plugin.nvidia.com-gpu.json")
    evidence = run(host, "--device-list-strategy=cdi-cri", capsys=capsys)[1]["cdi.specs"]["evidence"]
    assert "is not a CDI spec" in evidence and "not a regular file" in evidence


def test_api_checks_on_a_loopback_api_server(host: Host, capsys: pytest.CaptureFixture[str], apiserver: Any,
                                             tmp_path: Path) -> None:
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    args = [f"--kubeconfig={kubeconfig}", "--node-name=node-1", "--runtime-class=nvidia",
            "--use-node-feature-api=true"]
    checks = run(host, *args, program="gfd", capsys=capsys)[1]
    assert {k: checks[k]["verdict"] for k in ("nfd.features", "k8s.runtimeclass", "k8s.node-labels")} == {
        "nfd.features": "failed", "k8s.runtimeclass": "failed", "k8s.node-labels": "failed"}
    apiserver.put_object("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/nodefeatures.nfd.k8s-sigs.io", {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "nodefeatures.nfd.k8s-sigs.io"},
        "spec": {"group": "nfd.k8s-sigs.io", "scope": "Namespaced",
                 "names": {"plural": "nodefeatures", "kind": "NodeFeature"},
                 "versions": [{"name": "v1alpha1", "served": True, "storage": True}]}})
    apiserver.put_object("/apis/node.k8s.io/v1/runtimeclasses/nvidia", {
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "nvidia"})
    apiserver.put_object("/api/v1/nodes/node-1", {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"nvidia.com/gpu.product": "A100", "nvidia.com/gpu.count": "8"}}})
    checks = run(host, *args, program="gfd", capsys=capsys)[1]
    assert {k: checks[k]["verdict"] for k in ("nfd.features", "k8s.runtimeclass", "k8s.node-labels")} == {
        "nfd.features": "ok", "k8s.runtimeclass": "ok", "k8s.node-labels": "ok"}
    apiserver.fail("GET", "/runtimeclasses/", status=403)
    checks = run(host, *args, program="gfd", capsys=capsys)[1]
    assert checks["k8s.runtimeclass"]["verdict"] == "failed" and "403" in checks["k8s.runtimeclass"]["evidence"]


def test_the_programs_run_it_as_a_subcommand(host: Host) -> None:
    # GFD publishes through the NodeFeature API by default: without credentials its NFD check is skipped.
    for program, summary in (("gpu-feature-discovery", "10 ok, 0 warning, 0 failed, 5 skipped"),
                             ("nvidia-device-plugin", "11 ok, 0 warning, 0 failed, 4 skipped")):
        proc = subprocess.run([str(BIN / program), "doctor", "--simulate=dgx-a100", f"--host-root={host.root}"],
                              capture_output=True, text=True, timeout=60, check=False,
                              env={"PATH": os.environ["PATH"], "NO_COLOR": "1"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].split() == ["CHECK", "VERDICT", "EVIDENCE", "/", "REMEDY"]
        assert lines[-1] == summary and "\033[" not in proc.stdout


def test_the_daemons_check_their_node_at_start_log_problems_and_keep_running(tmp_path: Path) -> None:
    from tests.helpers import eventually, free_port, http_get, read_labels

    profile = tmp_path / "node.yaml"
    profile.write_text(json.dumps({"gpus": [{"model": "A100-SXM4-40GB", "count": 2}],
                                   "telemetry": {"remap_failure": 1}}))
    port, out = free_port(), tmp_path / "gfd"
    proc = subprocess.Popen([str(BIN / "gpu-feature-discovery"), f"--simulate={profile}", "--log-format=json",
                             "--use-node-feature-api=false", f"--output-file={out}",
                             f"--metrics-address=127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        eventually(lambda: read_labels(out).get("nvidia.com/gpu.count") == "2", timeout=20)  # it labels anyway
        answer = http_get(f"http://127.0.0.1:{port}/metrics")
        assert answer is not None
        assert 'gfd_setup_check{check="gpus.row-remapping",verdict="failed"} 1.0' in answer[1]
        assert 'gfd_setup_check{check="devices.nodes",verdict="ok"} 1.0' in answer[1]
    finally:
        proc.terminate()
        logged, _ = proc.communicate(timeout=10)
    problems = [json.loads(line) for line in logged.splitlines() if '"set-up check"' in line]
    assert [(p["check"], p["verdict"]) for p in problems] == [("gpus.row-remapping", "failed")]
    assert "replaced" in problems[0]["remedy"]


def _doctor(*args: str, program: str = "nvidia-device-plugin", **popen: Any) -> subprocess.CompletedProcess[str]:
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.run([str(BIN / program), "doctor", *args], text=True, timeout=60, check=False,
                          env={"PATH": os.environ["PATH"], "NO_COLOR": "1", "COLUMNS": "110"}, **streams)


def _readme_example(command: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split(f"$ {command}\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_is_what_doctor_prints_on_a_simulated_node() -> None:
    """Anyone can reproduce it: the simulation provides NVML, the driver root's device nodes and the GPUs'
    states; what only a host has (runtime, toolkit, kubelet, NFD) is skipped, saying why."""
    proc = _doctor("--simulate=dgx-a100")
    assert proc.stdout == _readme_example("nvidia-device-plugin doctor --simulate=dgx-a100")
    assert proc.returncode == 0 and proc.stderr == ""


def test_the_readme_example_with_a_broken_host_root_is_what_doctor_prints(host: Host) -> None:
    _break_runtime(host)
    _break_nodes(host)
    proc = _doctor("--simulate=dgx-a100", f"--host-root={host.root}")
    assert proc.stdout.replace(str(host.root), "/host") == \
        _readme_example("nvidia-device-plugin doctor --simulate=dgx-a100 --host-root=/host")
    assert proc.returncode == 1


def test_a_simulated_node_is_reported_as_simulated_and_its_host_checks_skipped() -> None:
    for program in ("gpu-feature-discovery", "nvidia-device-plugin"):
        report = json.loads(_doctor("--simulate=t4", "--output=json", program=program).stdout)
        checks = {c["id"]: c for c in report["checks"]}
        assert checks["nvml.library"]["evidence"].startswith("simulated node (--simulate=t4)")
        assert checks["devices.nodes"] == {"id": "devices.nodes", "verdict": "ok", "remedy": "",
                                           "evidence": "4 GPUs, 6 device nodes present"}  # the simulated driver root's
        host_checks = {"runtime.nvidia", "toolkit.installed", "kubelet.device-plugins"}
        assert all(checks[k]["verdict"] == "skipped" and "--host-root" in checks[k]["evidence"] for k in host_checks)
        assert report["summary"]["failed"] == 0
    # A simulated node whose library is missing fails as a real one would, and says it is simulated.
    report = json.loads(_doctor("--simulate=no-library", "--output=json").stdout)
    assert report["checks"][0]["verdict"] == "failed"
    assert report["checks"][0]["evidence"].startswith("simulated node (--simulate=no-library): ")


def test_an_unknown_profile_is_one_line() -> None:
    proc = _doctor("--simulate=no-such-node")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "unknown profile 'no-such-node'" in proc.stderr


def test_a_reader_that_goes_away_ends_the_output_without_a_traceback() -> None:
    """`doctor | head -1`: made deterministic with a pipe whose reading end is closed before doctor writes."""
    for profile, verdict in (("dgx-a100", 0), ("no-library", 1)):  # the exit status still gives the verdict
        read, write = os.pipe()
        os.close(read)
        try:
            proc = _doctor(f"--simulate={profile}", stdout=write)
        finally:
            os.close(write)
        assert (proc.returncode, proc.stderr) == (verdict, "")


def test_both_programs_help_names_the_doctor() -> None:
    for program in ("gpu-feature-discovery", "nvidia-device-plugin"):
        main = subprocess.run([str(BIN / program), "--help"], capture_output=True, text=True, timeout=60, check=True)
        assert "Subcommand:`doctor`checksthisnode'sset-up" in "".join(main.stdout.split())  # however it wraps
        doctor_help = _doctor("--help", program=program)
        assert doctor_help.returncode == 0 and "--host-root" in doctor_help.stdout
        assert "Check this node's set-up" in doctor_help.stdout


def test_every_api_request_goes_through_gfd_kube_and_its_errors_are_the_verdicts(
        host: Host, capsys: pytest.CaptureFixture[str], apiserver: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of issue 22: doctor sent its requests past gfd.kube (no budget, its own error mapping and a
    catch-all that called any failure "the API did not answer")."""
    sent = kube_requests(monkeypatch)
    args = [f"--kubeconfig={apiserver.kubeconfig(str(tmp_path / 'kubeconfig'))}", "--node-name=node-1",
            "--runtime-class=nvidia", "--use-node-feature-api=true"]
    apiserver.fail("GET", "/runtimeclasses/", status=429, retry_after=7)
    apiserver.fail("GET", "/nodes/", status=503)
    checks = run(host, *args, program="gfd", capsys=capsys)[1]
    assert len(sent) == len(apiserver.requests()) == 3
    assert checks["nfd.features"]["evidence"] == "CRD nodefeatures.nfd.k8s-sigs.io is not served"  # 404: NotFound
    assert checks["k8s.runtimeclass"]["evidence"] == "the API answered 429 Too Many Requests"
    assert checks["k8s.node-labels"]["evidence"] == "the API answered 503 Service Unavailable"
    unreachable = tmp_path / "unreachable"
    unreachable.write_text((tmp_path / "kubeconfig").read_text().replace(apiserver.url,
                                                                        f"http://127.0.0.1:{free_port()}"))
    checks = run(host, *args[1:], f"--kubeconfig={unreachable}", program="gfd", capsys=capsys)[1]
    assert checks["k8s.node-labels"]["verdict"] == "failed"
    assert checks["k8s.node-labels"]["evidence"].startswith("the API did not answer: ")
