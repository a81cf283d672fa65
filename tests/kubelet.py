"""A kubelet stand-in: the Registration service on kubelet.sock, the kubelet's calls into plugins, and
its PodResources API (`pod-resources/kubelet.sock` beside the plugin directory) listing what it allocated:
device-plugin devices, and the devices of DRA claims a container uses (`dynamic_resources`).

Like the kubelet it validates Register, dials the plugin's socket and calls GetDevicePluginOptions
before Register returns, then follows ListAndWatch in the background. `restart()` does what a kubelet
restart does to the directory: every socket but its own is deleted and a new kubelet.sock appears.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from plugin.api import api_pb2, api_pb2_grpc, podresources_pb2, podresources_pb2_grpc


@dataclass
class Registration:
    request: Any
    options: Any
    at: float
    channel: grpc.Channel
    stub: Any
    devices: list[Any] = field(default_factory=list)
    updates: int = 0


class _PodResources(podresources_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: KubeletStandIn) -> None:
        self.kubelet = kubelet

    def List(self, request: Any, context: Any) -> Any:
        pods: dict[tuple[str, str], dict[str, tuple[list[Any], list[Any]]]] = {}

        def lists(namespace: str, pod: str, container: str) -> tuple[list[Any], list[Any]]:
            return pods.setdefault((namespace, pod), {}).setdefault(container, ([], []))

        with self.kubelet.changed:
            for (namespace, pod, container), (resource, ids) in self.kubelet.assigned.items():
                lists(namespace, pod, container)[0].append(
                    podresources_pb2.ContainerDevices(resource_name=resource, device_ids=ids))
            for (namespace, pod, container), claims in self.kubelet.claimed.items():
                lists(namespace, pod, container)[1].extend(claims)
        return podresources_pb2.ListPodResourcesResponse(pod_resources=[
            podresources_pb2.PodResources(name=pod, namespace=namespace, containers=[
                podresources_pb2.ContainerResources(name=c, devices=d, dynamic_resources=claims)
                for c, (d, claims) in containers.items()])
            for (namespace, pod), containers in pods.items()])


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: KubeletStandIn) -> None:
        self.kubelet = kubelet

    def Register(self, request: Any, context: Any) -> Any:
        if request.version != "v1beta1":
            context.abort(grpc.StatusCode.UNKNOWN, f'requested API version "{request.version}" is not supported '
                                                   'by kubelet. Supported version is ["v1beta1"]')
        if "/" not in request.resource_name or request.resource_name.startswith("kubernetes.io/"):
            context.abort(grpc.StatusCode.UNKNOWN, f'the ResourceName "{request.resource_name}" is invalid')
        channel = grpc.insecure_channel(f"unix://{os.path.join(self.kubelet.directory, request.endpoint)}")
        stub = api_pb2_grpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
        try:
            options = stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=10)
        except grpc.RpcError as e:
            context.abort(grpc.StatusCode.UNKNOWN, f"failed to get device plugin options: {e.details()}")
        reg = Registration(request, options, time.monotonic(), channel, stub)
        with self.kubelet.changed:
            old = self.kubelet.registrations.get(request.resource_name)
            self.kubelet.registrations[request.resource_name] = reg
            self.kubelet.history.append(reg)
            self.kubelet.changed.notify_all()
        if old is not None:
            old.channel.close()
        threading.Thread(target=self.kubelet._follow, args=(reg,), daemon=True).start()
        return api_pb2.Empty()


class KubeletStandIn:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.socket = os.path.join(directory, "kubelet.sock")
        self.registrations: dict[str, Registration] = {}
        self.history: list[Registration] = []
        self.changed = threading.Condition()
        self.server: grpc.Server | None = None
        # (namespace, pod, container) -> (resource, device IDs), as the kubelet's PodResources API lists them
        self.assigned: dict[tuple[str, str, str], tuple[str, list[str]]] = {}
        # (namespace, pod, container) -> the DRA claims it uses (podresources_pb2.DynamicResource)
        self.claimed: dict[tuple[str, str, str], list[Any]] = {}
        pod_resources = os.path.join(os.path.dirname(directory), "pod-resources")
        os.makedirs(pod_resources, exist_ok=True)
        self.pod_resources_socket = os.path.join(pod_resources, "kubelet.sock")
        self.pod_resources = grpc.server(futures.ThreadPoolExecutor(2, thread_name_prefix="kubelet-stand-in"))
        podresources_pb2_grpc.add_PodResourcesListerServicer_to_server(  # type: ignore[no-untyped-call]
            _PodResources(self), self.pod_resources)
        self.pod_resources.add_insecure_port(f"unix://{self.pod_resources_socket}")
        self.pod_resources.start()
        self.start()

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(8, thread_name_prefix="kubelet-stand-in"))
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self), server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self.server = server

    def stop(self) -> None:
        self.pod_resources.stop(0).wait()
        self._stop_registration()

    def _stop_registration(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None
        for reg in self.registrations.values():
            reg.channel.close()

    def restart(self) -> None:
        """Stop, wipe every socket in the directory (as the kubelet does at start), serve a new kubelet.sock."""
        self._stop_registration()
        with self.changed:
            self.registrations.clear()
        for name in os.listdir(self.directory):
            if name != "kubelet_internal_checkpoint":
                os.unlink(os.path.join(self.directory, name))
        self.start()

    def _follow(self, reg: Registration) -> None:
        try:
            for response in reg.stub.ListAndWatch(api_pb2.Empty()):
                with self.changed:
                    reg.devices = list(response.devices)
                    reg.updates += 1
                    self.changed.notify_all()
        except grpc.RpcError:
            return  # the plugin stopped or the channel was closed

    # -- what tests ask --------------------------------------------------------------------------
    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise AssertionError("kubelet stand-in: condition not reached in time")

    def registered(self, resource: str, timeout: float = 5.0) -> Registration:
        self.wait(lambda: resource in self.registrations and bool(self.registrations[resource].updates), timeout)
        return self.registrations[resource]

    def health(self, resource: str) -> dict[str, str]:
        with self.changed:
            return {d.ID: d.health for d in self.registrations[resource].devices}

    def allocate(self, resource: str, *ids: str) -> Any:
        request = api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])
        return self.registered(resource).stub.Allocate(request, timeout=5).container_responses[0]

    def run_pod(self, namespace: str, pod: str, container: str, resource: str, *ids: str) -> Any:
        """Allocate as for a container being created, and list the assignment as the kubelet does."""
        response = self.allocate(resource, *ids)
        with self.changed:
            self.assigned[(namespace, pod, container)] = (resource, list(ids))
        return response

    def run_claim_pod(self, namespace: str, pod: str, container: str, claim: str, claim_uid: str,
                      devices: list[tuple[str, str, str]]) -> None:
        """List a container using the claim `claim` (in the pod's namespace) whose allocation is `devices`
        ((driver, pool, device) each), prepared as our DRA driver answers (one CDI device per device), as the
        kubelet does once the claim is prepared and the container started."""
        resources = [podresources_pb2.ClaimResource(
            cdi_devices=[podresources_pb2.CDIDevice(name=f"k8s.{driver}/claim={claim_uid}-{device}")],
            driver_name=driver, pool_name=pool, device_name=device) for driver, pool, device in devices]
        with self.changed:
            self.claimed.setdefault((namespace, pod, container), []).append(podresources_pb2.DynamicResource(
                claim_name=claim, claim_namespace=namespace, claim_resources=resources))

    def delete_pod(self, namespace: str, pod: str) -> None:
        with self.changed:
            self.assigned = {k: v for k, v in self.assigned.items() if k[:2] != (namespace, pod)}
            self.claimed = {k: v for k, v in self.claimed.items() if k[:2] != (namespace, pod)}

    def preferred(self, resource: str, available: list[str], must: list[str], size: int) -> list[str]:
        request = api_pb2.PreferredAllocationRequest(container_requests=[api_pb2.ContainerPreferredAllocationRequest(
            available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size)])
        response = self.registered(resource).stub.GetPreferredAllocation(request, timeout=5)
        return list(response.container_responses[0].deviceIDs)
