"""What doctor reads from the Kubernetes API: one method per question, each one request through gfd.kube
(the request budget, timeouts, and a typed `KubeError` for every failure). The checks in
gfd/doctor/checks.py turn the answers, and the errors, into verdicts.

Imported by doctor's command line only: the kubernetes client takes ~400 ms to import (python -X importtime),
which the daemons' start-up checks, never reading the API, do not pay."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from gfd.kube.client import Kube


class Cluster:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        api = kube.api_client
        self._core, self._node, self._resource = client.CoreV1Api(api), client.NodeV1Api(api), client.ResourceV1Api(api)
        self._crds, self._apis = client.ApiextensionsV1Api(api), client.ApisApi(api)

    def custom_resource_definition(self, name: str) -> Any:
        return self.kube.request("get", self._crds.read_custom_resource_definition_with_http_info, name)

    def runtime_class(self, name: str) -> Any:
        return self.kube.request("get", self._node.read_runtime_class_with_http_info, name)

    def node(self, name: str) -> Any:
        return self.kube.request("get", self._core.read_node_with_http_info, name)

    def api_groups(self) -> list[Any]:
        return self.kube.request("get", self._apis.get_api_versions_with_http_info).groups or []

    def device_class(self, name: str) -> Any:
        return self.kube.request("get", self._resource.read_device_class_with_http_info, name)

    def resource_slices(self, node: str) -> list[Any]:
        return self.kube.request("list", self._resource.list_resource_slice_with_http_info,
                                 field_selector=f"spec.nodeName={node}").items or []
