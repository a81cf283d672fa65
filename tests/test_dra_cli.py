"""`nvidia-dra-plugin` as a process on a simulated node and the real API server, with the kubelet's calls made
by a stand-in (tests/dra.py; the real kubelet is the end-to-end tier's): what it serves, its /healthz and
metrics, a prepared claim's spec, a clean stop, what it imported on the way, and start-up failures as one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.dra import KubeletCalls, allocated_claim
from tests.helpers import eventually, free_port, http_get
from tests.test_imports import check_kubernetes, imported

BIN = Path(sys.executable).parent
NODE = "gpu-node-1"
NS = "dra-cli"
GROUP, VERSION = "resource.k8s.io", "v1"


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    dirs: Path
    url: str
    log: Path

    @property
    def registration_socket(self) -> str:
        return str(self.dirs / "registry" / "gpu.nvidia.com-reg.sock")

    def metrics(self) -> dict[str, float]:
        answer = http_get(f"{self.url}/metrics")
        assert answer is not None and answer[0] == 200
        return {f"{s.name}{json.dumps(s.labels, sort_keys=True) if s.labels else ''}": s.value
                for family in text_string_to_metric_families(answer[1]) for s in family.samples}


def args(dirs: Path) -> list[str]:
    return [f"--kubelet-registrar-directory-path={dirs / 'registry'}",
            f"--kubelet-plugins-directory-path={dirs / 'plugins'}", f"--cdi-root={dirs / 'cdi'}", "--log-format=json"]


@pytest.fixture
def driver(dra_api: tuple[client.ApiClient, str], tmp_path: Path) -> Iterator[Running]:
    api, kubeconfig = dra_api
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    port = free_port()
    log = tmp_path / "driver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "nvidia-dra-plugin"), f"--node-name={NODE}", f"--kubeconfig={kubeconfig}",
                                 "--simulate=a100-80gb-mig-mixed", f"--http-endpoint=127.0.0.1:{port}",
                                 "--image-name=nvcr.io/nvidia/k8s-dra-driver-gpu:v25.8.0", *args(tmp_path)],
                                stdout=out, stderr=out, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    running = Running(proc, tmp_path, f"http://127.0.0.1:{port}", log)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.CustomObjectsApi(api).delete_collection_cluster_custom_object(GROUP, VERSION, "resourceslices")
        client.CoreV1Api(api).delete_namespace(NS)


def test_the_program_publishes_registers_prepares_and_stops_cleanly(dra_api: tuple[client.ApiClient, str],
                                                                    driver: Running) -> None:
    api = dra_api[0]
    eventually(lambda: http_get(f"{driver.url}/healthz") is not None, timeout=30)
    eventually(lambda: driver.metrics().get('nvidia_dra_plugin_resourceslice_writes_total{"verb": "create"}') == 2,
               timeout=30)  # the counter slice and the device slice
    assert http_get(f"{driver.url}/healthz") == (503, "not registered with the kubelet yet")
    kubelet = KubeletCalls(driver.registration_socket)
    try:
        info = kubelet.register()
        assert (info.type, info.name, info.endpoint, list(info.supported_versions)) == (
            "DRAPlugin", "gpu.nvidia.com", str(driver.dirs / "plugins" / "gpu.nvidia.com" / "dra.sock"),
            ["v1.DRAPlugin", "v1beta1.DRAPlugin"])
        eventually(lambda: http_get(f"{driver.url}/healthz") == (200, "ok"), timeout=10)
        claim = allocated_claim(api, NS, "training", NODE, "gpu-0-mig-3g40gb-9-4")
        time.sleep(1)  # the claim reaches the driver's watch
        answer = kubelet.prepare(claim).claims[claim.uid]
        assert answer.error == "" and [(d.request_names, d.pool_name, d.device_name, d.cdi_device_ids)
                                       for d in answer.devices] == [
            (["gpu"], NODE, "gpu-0-mig-3g40gb-9-4", [f"k8s.gpu.nvidia.com/claim={claim.uid}-gpu-0-mig-3g40gb-9-4"])]
        assert os.listdir(driver.dirs / "cdi") == [f"k8s.gpu.nvidia.com-claim_{claim.uid}.json"]
        metrics = driver.metrics()
        assert metrics['nvidia_dra_plugin_claims_total{"operation": "prepare", "result": "ok"}'] == 1
        assert metrics["nvidia_dra_plugin_claim_reads_total"] == 0  # from the watched cache: no request
        assert not any(k.startswith("nvidia_dra_plugin_api_requests_total") and '"verb": "get"' in k for k in metrics)
        assert kubelet.unprepare(claim).claims[claim.uid].error == ""
        assert os.listdir(driver.dirs / "cdi") == []
    finally:
        kubelet.close()
    driver.proc.send_signal(signal.SIGTERM)
    assert driver.proc.wait(30) == 0
    assert not Path(driver.registration_socket).exists()
    assert not (driver.dirs / "plugins" / "gpu.nvidia.com" / "dra.sock").exists()
    events = [json.loads(line) for line in driver.log.read_text().splitlines() if line.startswith("{")]
    ignored = [e for e in events if e["event"] == "options accepted for compatibility have no effect"]
    assert [e["options"] for e in ignored] == [["--image-name"]]
    assert not any(e["level"] in ("error", "critical") for e in events), events
    # Every module it loaded, at start and at run time: the official client's pieces only (bench/dra.py: RSS).
    check_kubernetes(imported(driver.log.read_text()))


@pytest.mark.parametrize(("argv", "error"), [
    (["--simulate=no-library"], "nvml init failed: ERROR_LIBRARY_NOT_FOUND (no libnvidia-ml.so.1"),
    (["--simulate=t4", "--cdi-root=FILE"], "path for cdi file generation is not a directory: 'FILE'"),
    (["--simulate=t4", "--metrics-address=:99999"], "invalid metrics address ':99999'"),
])
def test_a_start_that_cannot_succeed_is_one_line_and_exit_1(tmp_path: Path, argv: list[str], error: str) -> None:
    (tmp_path / "file").write_text("")
    argv = [a.replace("FILE", str(tmp_path / "file")) for a in argv]
    done = subprocess.run([str(BIN / "nvidia-dra-plugin"), "--node-name=n", *args(tmp_path), *argv],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    errors = [json.loads(line)["event"] for line in done.stdout.splitlines() + done.stderr.splitlines()
              if line.startswith("{") and json.loads(line)["level"] == "error"]
    assert len(errors) == 1 and errors[0].startswith("error starting nvidia-dra-plugin: " +
                                                     error.replace("FILE", str(tmp_path / "file")))
    assert "Traceback" not in done.stderr



def test_sighup_applies_the_sharing_options(dra_api: tuple[client.ApiClient, str], tmp_path: Path) -> None:
    """The per-node file turned to memory shares (config-manager's SIGHUP) makes the published devices shareable."""
    api, kubeconfig = dra_api
    config_file = tmp_path / "config.yaml"
    config_file.write_text("version: v1\n")
    slices = client.CustomObjectsApi(api)

    def shareable() -> list[bool]:
        answer: Any = slices.list_cluster_custom_object(GROUP, VERSION, "resourceslices",
                                                        field_selector=f"spec.nodeName={NODE}")
        return [bool(d.get("allowMultipleAllocations")) for s in answer["items"] for d in s["spec"].get("devices", [])]

    def events() -> list[str]:
        return [json.loads(line)["event"] for line in log.read_text().splitlines() if line.startswith("{")]

    log = tmp_path / "driver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "nvidia-dra-plugin"), f"--node-name={NODE}", f"--kubeconfig={kubeconfig}",
                                 "--simulate=t4", f"--config-file={config_file}", *args(tmp_path)],
                                stdout=out, stderr=out)
    try:
        eventually(lambda: "started" in events() and bool(shareable()) and not any(shareable()), timeout=30)
        config_file.write_text("version: v1\nflags:\n  dra:\n    consumableShares: memory\n"
                               "    featureGates: [ConsumableShares=true]\n")
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: bool(shareable()) and all(shareable()), timeout=30)
        assert "config reloaded" in events()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        slices.delete_collection_cluster_custom_object(GROUP, VERSION, "resourceslices")


def test_a_reload_during_the_start_is_owed_to_its_end(tmp_path: Path) -> None:
    """A SIGHUP on the signal thread while `start` runs sets up nothing beside it (a second set of MPS daemons):
    the start runs it once it has ended."""
    from plugin.dra.cli import DraPlugin
    from plugin.dra.config import load_dra_config

    config_file = tmp_path / "config.yaml"
    config_file.write_text("version: v1\nflags:\n  mpsRoot: /run/nvidia/mps\n  dra:\n    consumableShares: memory\n"
                           "    shareEnforcement: mps\n    featureGates: [ConsumableShares=true]\n")
    argv = ["--node-name=n", f"--config-file={config_file}"]
    plugin = DraPlugin(load_dra_config(argv, {}), argv, {})
    plugin.reload()
    assert plugin._reload_owed and plugin.mps is None and plugin.preparer is None
