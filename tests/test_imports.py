"""What our programs import: start-up time and memory (bench/startup.py, bench/fleet.py measure them).

The official kubernetes client, imported whole, is 596 modules and +36 MiB RSS; gfd.kube loads only the pieces
our programs use (gfd/kube/client.py says how). These tests run the programs as they run in a pod and read
`python -X importtime`'s list of every module imported, so an import anywhere (a module's top, or a call at
run time) that brings the rest back fails here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver import FakeApiServer
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parent.parent
NS = "gpu-ops"
# What `kubernetes/__init__.py` imports besides the client (config, dynamic with jsonschema, stream, watch,
# leaderelection, informer), and the generated CoreV1Api (13 MiB) with its models: none of it is ours to pay.
NOT_LOADED = ("kubernetes.dynamic", "kubernetes.stream", "kubernetes.watch", "kubernetes.leaderelection",
              "kubernetes.informer", "kubernetes.client.api.core_v1_api", "kubernetes.client.models.v1_pod",
              "kubernetes.client.models.v1_node", "jsonschema", "websocket")
MAX_KUBERNETES_MODULES = 40  # 21 with kubernetes 37.0.2 and a kubeconfig; 596 when the whole client is imported


def imported(stderr: str) -> list[str]:
    """The modules a process imported, from PYTHONPROFILEIMPORTTIME's lines ("import time: self | cum | name")."""
    return [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")
            and not line.rstrip().endswith("| imported package")]


def env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "PYTHONPROFILEIMPORTTIME": "1", **extra}


def check_kubernetes(modules: list[str]) -> None:
    loaded = [m for m in modules if m == "kubernetes" or m.startswith("kubernetes.")]
    assert not [m for m in modules if m.startswith(NOT_LOADED)], "the whole kubernetes client is back"
    assert not [m for m in loaded if m.startswith("kubernetes.client.api.")], loaded  # generated API classes
    assert not [m for m in loaded if m.startswith("kubernetes.client.models.")], loaded
    assert len(loaded) <= MAX_KUBERNETES_MODULES, loaded


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.close()


def test_the_nodefeature_daemon_loads_only_the_client_pieces_it_uses(apiserver: FakeApiServer,
                                                                     tmp_path: Path) -> None:
    """The chart's default GFD: NodeFeature output, its Pod read for owner references, the deletion watch."""
    apiserver.put_object(f"/api/v1/namespaces/{NS}/pods/gfd-abc", {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "gfd-abc", "namespace": NS, "uid": "pod-uid",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "gfd", "uid": "ds-uid"}]}})
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    proc = subprocess.Popen([sys.executable, "-m", "gfd", "--simulate=dgx-a100", f"--kubeconfig={kubeconfig}"],
                            env=env(NODE_NAME="node1", NAMESPACE=NS, POD_NAME="gfd-abc"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: len(apiserver.watches()) == 1, timeout=30)  # written, and its deletion watched
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    created = apiserver.requests("POST")[0].body
    assert [o["kind"] for o in created["metadata"]["ownerReferences"]] == ["DaemonSet", "Pod"]  # the Pod was read
    check_kubernetes(imported(stderr))


def test_in_a_pod_the_kubeconfig_loader_is_not_loaded() -> None:
    """A pod reads its service account; the kubeconfig loader (oauthlib, requests: +5 MiB) is for a kubeconfig."""
    code = ("from gfd.kube.client import connect\n"
            "from gfd.kube.errors import CredentialsError\n"
            "try:\n    connect('', 'test')\nexcept CredentialsError:\n    pass\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env(KUBERNETES_SERVICE_HOST="127.0.0.1",
                                                                 KUBERNETES_SERVICE_PORT="1"),
                          capture_output=True, text=True, timeout=60, check=True)
    modules = imported(proc.stderr)
    assert "kubernetes.config.incluster_config" in modules
    assert not [m for m in modules if m.startswith(("kubernetes.config.kube_config", "oauthlib", "requests"))]
    check_kubernetes(modules)


def test_whoever_asks_for_the_whole_client_still_gets_it() -> None:
    """The deferred package __init__s run on first use of a name only they define (a test's, a tool's)."""
    code = ("import gfd.kube.client, kubernetes, sys\n"
            "assert 'kubernetes.watch' not in sys.modules\n"
            "from kubernetes import config, watch\n"
            "print(kubernetes.__version__, callable(config.load_kube_config), watch.Watch.__name__,"
            " kubernetes.client.CoreV1Api.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60,
                          check=True)
    assert proc.stdout.split() == ["37.0.2", "True", "Watch", "CoreV1Api"]


def test_a_plugin_start_without_endpoints_or_cdi_does_not_import_them() -> None:
    """Imported where used (plugin/cli.py): the HTTP server, GPU telemetry and CDI spec generation."""
    proc = subprocess.run([sys.executable, "-c", "import plugin.cli"], env=env(), capture_output=True, text=True,
                          timeout=60, check=True)
    modules = imported(proc.stderr)
    assert "plugin.server" in modules  # the list is read right
    assert not [m for m in modules if m.startswith(("gfd.httpserver", "h11", "plugin.telemetry", "plugin.cdi.store",
                                                    "plugin.cdi.generate", "kubernetes"))]
