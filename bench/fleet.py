"""GFD daemons in NodeFeature mode on one real API server, as the chart runs them (defaults, in-cluster
credentials of the chart's ServiceAccount, NVIDIA's mock NVML): start-up time, memory and CPU per node.

Starts `../shared/k8s/cluster` with its NFD master, applies the chart's GFD objects (helm/static), creates
`--nodes` Node objects and one Pod per node owned by the chart's DaemonSet (nothing runs them: the
daemons below stand in for them), then starts one `gpu-feature-discovery` per node at once, each in a
mount namespace of its own with a TokenRequest token at the in-cluster path and the env the chart's pod
spec gives (NODE_NAME, NAMESPACE, POD_NAME). Reports the time until every NodeFeature object exists and
until the NFD master has labelled every Node, each daemon's RSS and PSS (/proc/PID/smaps_rollup) and CPU
time once all are labelled, and the API requests the fleet sent about NodeFeatures and Pods in an idle
window after that (the API server's own apiserver_request_total).
Needs root (mount namespaces), `unshare`, and ../shared (k8s, nvml-mock).
Run: python -m bench.fleet [--nodes 50] [--idle-s 15]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, utils

from bench.common import cpu_seconds, machine

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CHART = ROOT / "helm" / "static" / "gpu-feature-discovery.yaml"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MOCK_CONFIG = "mock-nvml-config-a100.yaml"
REQUEST_RESOURCES = ("nodefeatures", "pods")


class Fleet:
    def __init__(self, directory: Path, nodes: int) -> None:
        self.dir, self.nodes = directory, nodes
        kubeconfig = subprocess.run([str(SHARED / "k8s" / "cluster"), "up", str(directory), "--nfd-master"],
                                    check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        self.env = dict(line.split("=", 1) for line in (directory / "env").read_text().splitlines() if "=" in line)
        self.api = config.new_client_from_config(kubeconfig)  # type: ignore[no-untyped-call]
        self.core: Any = client.CoreV1Api(self.api)  # Any: the bench sends plain dicts, as the API allows
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.procs: list[subprocess.Popen[bytes]] = []

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait()
        subprocess.run([str(SHARED / "k8s" / "cluster"), "down", str(self.dir)], check=False, capture_output=True)

    def prepare(self) -> tuple[dict[str, Any], str]:
        """The chart's objects, the Nodes and the Pods; the DaemonSet's pod spec and a token directory."""
        objects = [o for o in yaml.safe_load_all(CHART.read_text()) if o]
        for obj in objects:
            utils.create_from_dict(self.api, obj,  # type: ignore[no-untyped-call]
                                   namespace=obj["metadata"].get("namespace"))
        daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
        namespace = daemonset["metadata"]["namespace"]
        owner: Any = client.AppsV1Api(self.api).read_namespaced_daemon_set(daemonset["metadata"]["name"], namespace)
        template = daemonset["spec"]["template"]
        for n in range(self.nodes):
            node = f"gpu-node-{n}"
            self.core.create_node({"metadata": {"name": node, "labels": {"kubernetes.io/hostname": node},
                                                "annotations": {"bench": "fleet"}}})
            self.core.create_namespaced_pod(namespace, {
                "metadata": {"name": f"gfd-{n}", "labels": template["metadata"]["labels"],
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "controller": True,
                                                  "name": owner.metadata.name, "uid": owner.metadata.uid}]},
                "spec": template["spec"] | {"nodeName": node}})
        account = template["spec"]["serviceAccountName"]
        token = self.core.create_namespaced_service_account_token(account, namespace, {
            "spec": {"audiences": [], "expirationSeconds": 3600}})
        tokens = self.dir / "serviceaccount"
        tokens.mkdir()
        (tokens / "token").write_text(token.status.token)
        (tokens / "ca.crt").write_text((self.dir / "pki" / "serving.crt").read_text())
        (tokens / "namespace").write_text(namespace)
        return daemonset, str(tokens)

    def start(self, daemonset: dict[str, Any], tokens: str) -> None:
        namespace = daemonset["metadata"]["namespace"]
        container = daemonset["spec"]["template"]["spec"]["containers"][0]
        program = Path(sys.executable).parent / container["command"][0]
        script = f"mkdir -p {SA_DIR} && mount --bind {shlex.quote(tokens)} {SA_DIR} && exec {shlex.quote(str(program))}"
        for n in range(self.nodes):
            env = {"PATH": os.environ["PATH"], "HOME": "/root", "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                   "KUBERNETES_SERVICE_PORT": self.env["API_URL"].rsplit(":", 1)[1],
                   "NODE_NAME": f"gpu-node-{n}", "NAMESPACE": namespace, "POD_NAME": f"gfd-{n}",
                   "LD_LIBRARY_PATH": str(SHARED / "nvml-mock"),
                   "MOCK_NVML_CONFIG": str(SHARED / "nvml-mock" / "configs" / MOCK_CONFIG)}
            if "PYTHONPATH" in os.environ:  # another checkout's code, to compare releases with one venv
                env["PYTHONPATH"] = os.environ["PYTHONPATH"]
            self.procs.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def node_features(self, namespace: str) -> int:
        found = self.custom.list_namespaced_custom_object("nfd.k8s-sigs.io", "v1alpha1", namespace, "nodefeatures")
        return len(found["items"])

    def owners(self, namespace: str) -> set[tuple[str, ...]]:
        """The kinds each NodeFeature object's owner references name (the daemons read their Pod for them)."""
        found = self.custom.list_namespaced_custom_object("nfd.k8s-sigs.io", "v1alpha1", namespace, "nodefeatures")
        return {tuple(o["kind"] for o in item["metadata"].get("ownerReferences", [])) for item in found["items"]}

    def labelled_nodes(self) -> int:
        return len(self.core.list_node(label_selector="nvidia.com/gpu.count").items)

    def requests(self) -> float:
        """The API server's count of requests about NodeFeatures and Pods, every verb and code."""
        text = self.api.call_api(*self.api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
                                 ).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("apiserver_request_total{")
                   and any(f'resource="{r}"' in line for r in REQUEST_RESOURCES))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def usage(pid: int) -> tuple[float, float, float]:
    """(RSS MiB, PSS MiB, CPU seconds) of one process."""
    rollup = {line.split(":")[0]: int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text()
              .splitlines()[1:]}
    return rollup["Rss"] / 1024, rollup["Pss"] / 1024, cpu_seconds(pid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--idle-s", type=float, default=15.0, help="the idle window in which requests are counted")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        fleet = Fleet(Path(tmp) / "k8s", args.nodes)
        try:
            daemonset, tokens = fleet.prepare()
            namespace = daemonset["metadata"]["namespace"]
            start = time.monotonic()
            fleet.start(daemonset, tokens)
            wait_for(lambda: fleet.node_features(namespace) == args.nodes, args.timeout, "the NodeFeature objects")
            written = time.monotonic() - start
            wait_for(lambda: fleet.labelled_nodes() == args.nodes, args.timeout, "the NFD master's labels")
            labelled = time.monotonic() - start
            exited = [p.pid for p in fleet.procs if p.poll() is not None]
            if exited:
                raise RuntimeError(f"daemons exited: {exited}")
            if fleet.owners(namespace) != {("DaemonSet", "Pod")}:
                raise RuntimeError(f"owner references not as the chart's pods make them: {fleet.owners(namespace)}")
            time.sleep(2.0)  # settle: the deletion watches open after the first write
            before = fleet.requests()
            time.sleep(args.idle_s)
            idle_requests = fleet.requests() - before  # the bench sends none in the window (/metrics has no resource)
            rss, pss, cpu = zip(*(usage(p.pid) for p in fleet.procs), strict=True)
        finally:
            fleet.close()
    print(f"machine: {machine()}")
    print(f"{args.nodes} GFD daemons, NodeFeature mode, chart defaults, NVIDIA's mock NVML ({MOCK_CONFIG}), "
          "started at once")
    print(f"all NodeFeature objects written: {written:.2f} s; all Nodes labelled by the NFD master: {labelled:.2f} s "
          "(upstream: 2.2 s, issue 21)")
    print(f"per daemon: RSS median {statistics.median(rss):.1f} MiB (max {max(rss):.1f}), PSS median "
          f"{statistics.median(pss):.1f} MiB, CPU median {statistics.median(cpu) * 1000:.0f} ms "
          "(upstream: 44 MB RSS, 10 MB PSS, issue 21)")
    print(f"API requests about NodeFeatures and Pods in {args.idle_s:.0f} s idle: {idle_requests:.0f} "
          "(upstream: 1 GET per node per minute)")


if __name__ == "__main__":
    main()
