"""The end-to-end tier's world: a real etcd + kube-apiserver + NFD master (../shared/k8s/cluster) and a
real kubelet with containerd (../shared/k8s/node), in the private network and mount namespaces that
tests/test_e2e.py runs this session in."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from kubernetes import client, config, utils

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT.parent / "shared" / "k8s"
NODE = "gpu-node-1"

@dataclass
class Cluster:
    dir: Path
    kubeconfig: str
    api: client.ApiClient
    core: client.CoreV1Api
    env: dict[str, str]

    @property
    def api_port(self) -> int:
        return int(self.env["API_URL"].rsplit(":", 1)[1])

    @property
    def node_env(self) -> dict[str, str]:
        return _env(self.dir / "node" / "env")

    @property
    def ca_file(self) -> str:
        return str(self.dir / "pki" / "serving.crt")

    def apply(self, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            utils.create_from_dict(self.api, obj, namespace=obj["metadata"].get("namespace"))


def _env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    directory = Path(tempfile.mkdtemp(prefix="k8s-"))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run([str(K8S / "cluster"), "token", str(directory), f"system:node:{NODE}", "system:nodes"],
                   check=True, capture_output=True)
    kubeconfig = subprocess.run([str(K8S / "cluster"), "up", str(directory), "--nfd-master"], check=True,
                                capture_output=True, text=True).stdout.strip().splitlines()[-1]
    try:
        up = subprocess.run([str(K8S / "node"), "up", str(directory), NODE], capture_output=True, text=True,
                            check=False)
        assert up.returncode == 0, f"node up failed: {up.stdout[-2000:]} {up.stderr[-3000:]}"
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        api = client.ApiClient(configuration)
        yield Cluster(directory, kubeconfig, api, client.CoreV1Api(api), _env(directory / "env"))
    finally:
        subprocess.run([str(K8S / "node"), "down", str(directory)], check=False, capture_output=True)
        subprocess.run([str(K8S / "cluster"), "down", str(directory)], check=False, capture_output=True)


def render(values: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    out = helm_python.Chart.load(str(ROOT / "helm")).render(values, name="nvdp", namespace=namespace)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]
