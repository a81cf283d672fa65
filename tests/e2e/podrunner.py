"""Run a rendered pod's containers as local processes, the way the kubelet would start them.

Each container runs with exactly the command, args and env of the rendered pod spec (fieldRefs
resolved from a real Pod object the runner creates), in a mount namespace of its own where every
volume is bind-mounted at its mountPath (a `Bidirectional` one of a real host path as a peer of that path,
so that what the container mounts there is seen on the host, as the kubelet's rshared mount gives it):
emptyDir and hostPath volumes are temp directories, a
configMap volume holds the ConfigMap's keys read from the API, and the ServiceAccount token is a
TokenRequest token of the pod's ServiceAccount bound to that Pod, at the in-cluster path with the
API server's CA, as the kubelet projects it. The containers share the runner's PID namespace
(`shareProcessNamespace`). Only `extra_env` is added, and it is named where it is used.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
BIN = Path(sys.executable).parent


class PodRunner:
    def __init__(self, core: Any, pod_template: dict[str, Any], name: str, namespace: str, node_name: str,
                 api_port: int, ca_file: str, real_host_paths: tuple[str, ...] = (), pod_node: str = "") -> None:
        """`real_host_paths`: hostPath volumes served by this machine's own path (the kubelet's device-plugin
        directory); every other hostPath is a temp directory. `pod_node`: where the Pod object is bound
        (default `node_name`; another name keeps a real kubelet from trying to run it too)."""
        self.core, self.template, self.name, self.namespace = core, pod_template, name, namespace
        self.real_host_paths = real_host_paths
        self.node_name, self.api_port, self.ca_file = node_name, api_port, ca_file
        self.root = Path(tempfile.mkdtemp(prefix=f"pod-{name}-"))
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.created_dirs: list[str] = []
        self.shared_paths: list[str] = []
        spec = pod_template["spec"]
        pod = client.V1Pod(metadata=client.V1ObjectMeta(name=name, namespace=namespace,
                                                        labels=pod_template["metadata"].get("labels")),
                           spec=spec | {"nodeName": pod_node or node_name})
        self.pod = core.create_namespaced_pod(namespace, pod)
        self.volumes = {v["name"]: self._volume(v) for v in spec.get("volumes", [])}
        self.volumes["__token__"] = self._token(spec.get("serviceAccountName", "default"))

    # -- volumes ----------------------------------------------------------------------------------
    def _volume(self, volume: dict[str, Any]) -> str:
        path = self.root / "volumes" / volume["name"]
        path.mkdir(parents=True)
        if "hostPath" in volume and volume["hostPath"]["path"] in ("/sys", *self.real_host_paths):
            return str(volume["hostPath"]["path"])  # this machine's own path, as the hostPath gives it
        if "configMap" in volume:
            cm = self.core.read_namespaced_config_map(volume["configMap"]["name"], self.namespace)
            for key, value in (cm.data or {}).items():
                (path / key).write_text(value)
        return str(path)

    def _token(self, service_account: str) -> str:
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=3600,
            bound_object_ref=client.V1BoundObjectReference(kind="Pod", api_version="v1", name=self.name,
                                                           uid=self.pod.metadata.uid)))
        token = self.core.create_namespaced_service_account_token(service_account, self.namespace, request)
        path = self.root / "serviceaccount"
        path.mkdir()
        (path / "token").write_text(token.status.token)
        (path / "ca.crt").write_text(Path(self.ca_file).read_text())
        (path / "namespace").write_text(self.namespace)
        return str(path)

    # -- containers -------------------------------------------------------------------------------
    def env(self, container: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
        fields = {"spec.nodeName": self.node_name, "metadata.namespace": self.namespace, "metadata.name": self.name}
        env = {"PATH": f"{BIN}:{os.environ['PATH']}", "KUBERNETES_SERVICE_HOST": "127.0.0.1",
               "KUBERNETES_SERVICE_PORT": str(self.api_port), "HOME": "/root"}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        return env | extra

    def start(self, container_name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        spec = self.template["spec"]
        container = next(c for c in spec["containers"] + spec.get("initContainers", [])
                         if c["name"] == container_name)
        mounts = [(self.volumes[m["name"]], m["mountPath"]) for m in container.get("volumeMounts", [])]
        bidirectional = [self.volumes[m["name"]] for m in container.get("volumeMounts", [])
                         if m.get("mountPropagation") == "Bidirectional"]
        for source in bidirectional:
            self._share(source)
        if spec.get("automountServiceAccountToken", True):
            mounts.append((self.volumes["__token__"], SA_DIR))
        script = ["set -e"]
        for source, target in mounts:
            if source == target:
                continue
            missing = target
            while not os.path.isdir(missing):  # remember exactly the directories mkdir -p makes
                self.created_dirs.append(missing)
                missing = os.path.dirname(missing)
            script += [f"mkdir -p {shlex.quote(target)}", f"mount --bind {shlex.quote(source)} {shlex.quote(target)}"]
        argv = container.get("command", []) + container.get("args", [])
        script.append("exec " + " ".join(shlex.quote(a) for a in argv))
        log = open(self.root / f"{container_name}.log", "wb")  # noqa: SIM115 - closed with the process
        # "unchanged": this namespace's mounts are private (the tier's unshare made them so) but for the shared ones.
        propagation = "unchanged" if bidirectional else "private"
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", propagation, "sh", "-c", "\n".join(script)],
                                env=self.env(container, extra_env or {}), stdout=log, stderr=log)
        self.procs.append((container_name, proc))
        return proc

    def _share(self, path: str) -> None:
        """`path` a shared mount point (a bind mount of itself), so that a container's bind mount of it is its peer."""
        if path in self.shared_paths:
            return
        subprocess.run(["mount", "--bind", path, path], check=True)
        subprocess.run(["mount", "--make-shared", path], check=True)
        self.shared_paths.append(path)

    def run_to_completion(self, container_name: str, extra_env: dict[str, str] | None = None,
                          timeout: float = 60) -> int:
        return self.start(container_name, extra_env).wait(timeout)

    def log(self, container_name: str) -> str:
        return (self.root / f"{container_name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for path in self.shared_paths:  # with what the containers mounted under it
            subprocess.run(["umount", "--lazy", path], check=False)
        for target in sorted(set(self.created_dirs), key=len, reverse=True):  # mount points it had to create
            with contextlib.suppress(OSError):
                os.rmdir(target)
