"""The end-to-end tier's world: a real etcd + kube-apiserver + NFD master + kube-scheduler and
kube-controller-manager (../shared/k8s/cluster) and a real kubelet with containerd (../shared/k8s/node), in the
private network and mount namespaces that tests/test_e2e.py runs this session in."""

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

from tests.requirements import shared_dir

ROOT = Path(__file__).resolve().parents[2]
K8S = shared_dir() / "k8s"  # tests/test_e2e.py requires it before it starts this session
NODE = "gpu-node-1"
POD_RUNNER = "pod-runner"

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
            utils.create_from_dict(self.api, obj,  # type: ignore[no-untyped-call]
                                   namespace=obj["metadata"].get("namespace"))


def _env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    directory = Path(tempfile.mkdtemp(prefix="k8s-"))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run([str(K8S / "cluster"), "token", str(directory), f"system:node:{NODE}", "system:nodes"],
                   check=True, capture_output=True)
    kubeconfig = subprocess.run([str(K8S / "cluster"), "up", str(directory), "--nfd-master", "--scheduler"],
                                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    try:
        _node_up(directory)
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                client_configuration=configuration)
        api = client.ApiClient(configuration)
        core = client.CoreV1Api(api)
        # Where the pod runner binds the Pod objects of pods it runs itself: a Node, so that the
        # controller-manager's pod garbage collector does not delete them (and their tokens) as orphans.
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=POD_RUNNER, labels={}, annotations={})))
        yield Cluster(directory, kubeconfig, api, core, _env(directory / "env"))
    finally:
        subprocess.run([str(K8S / "node"), "down", str(directory)], check=False, capture_output=True)
        subprocess.run([str(K8S / "cluster"), "down", str(directory)], check=False, capture_output=True)


def _node_up(directory: Path) -> None:
    """`node up`, once more after a clean `node down` if the first attempt fails: it has failed now and then
    at start without a word (exit 1, nothing on stdout or stderr, not reproducible by hand); what it left
    in its logs is printed for the next person who looks."""
    for attempt in (1, 2):
        up = subprocess.run([str(K8S / "node"), "up", str(directory), NODE], capture_output=True, text=True,
                            check=False)
        if up.returncode == 0:
            return
        logs = {p.name: p.read_text(errors="replace")[-2000:] for p in (directory / "node").glob("*.log")}
        print(f"node up attempt {attempt}: exit {up.returncode}; stdout {up.stdout[-2000:]!r}; "
              f"stderr {up.stderr[-3000:]!r}; logs {logs}")
        subprocess.run([str(K8S / "node"), "down", str(directory)], check=False, capture_output=True)
    raise AssertionError(f"node up failed twice (exit {up.returncode}): {up.stderr[-3000:]}")


def render(values: dict[str, Any], namespace: str, release: str = "nvdp") -> list[dict[str, Any]]:
    """A release name of its own keeps a module's cluster-scoped objects (ClusterRoles) apart from another's."""
    out = helm_python.Chart.load(str(ROOT / "helm")).render(values, name=release, namespace=namespace)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]
