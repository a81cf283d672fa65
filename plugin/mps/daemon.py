"""One MPS control daemon per resource shared with MPS (upstream cmd/mps-control-daemon/mps/daemon.go):
GPUs in EXCLUSIVE_PROCESS compute mode, the daemon started with its pipe and log directories, each
client limited to its share of memory and SMs, and `.started` written for the plugin."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading

import structlog

from gfd.discovery import nvml
from gfd.discovery.errors import DiscoveryError
from gfd.lifecycle import Scope
from gfd.model import Gpu
from plugin.mps import MpsError
from plugin.mps.control import send, start_daemon
from plugin.mps.root import MpsRoot
from plugin.resources import Resource

log = structlog.get_logger("plugin.mps")
# MPS clients per GPU: 48 from Volta on, 16 before (NVIDIA MPS documentation, "Limitations"); upstream's
# check compares the compute capability with 7.5, so a V100 (7.0) gets 16: kept, as upstream.
MAX_CLIENTS = 48
MAX_CLIENTS_PRE_VOLTA = 16
SELINUX_LABEL = b"system_u:object_r:container_file_t:s0"  # pods must be able to open the pipes


def gpus_of(resource: Resource) -> list[Gpu]:
    return list({d.gpu.uuid: d.gpu for d in resource.devices}.values())


def replicas_per_gpu(resource: Resource) -> dict[str, int]:
    counts: dict[str, int] = {}
    for device in resource.devices:
        counts[device.gpu.uuid] = counts.get(device.gpu.uuid, 0) + 1
    return counts


def pinned_memory_limits(resource: Resource) -> dict[int, str]:
    """Per GPU index, its memory divided among its replicas, in MiB (`<n>M`); GPUs of unknown memory get none."""
    replicas = replicas_per_gpu(resource)
    return {g.index: f"{g.memory_mib // replicas[g.uuid]}M" for g in gpus_of(resource) if g.memory_mib}


def active_thread_percentage(resource: Resource) -> int:
    return 100 // (len(resource.devices) // len(gpus_of(resource)))


def check_replicas(resource: Resource) -> None:
    for gpu in gpus_of(resource):
        limit = MAX_CLIENTS if gpu.compute_capability >= (7, 5) else MAX_CLIENTS_PRE_VOLTA
        replicas = replicas_per_gpu(resource)[gpu.uuid]
        if replicas > limit:
            raise MpsError(f"invalid MPS configuration: invalid device maximum allowed replicas exceeded: "
                           f"{replicas} > {limit}")


class ResourceDaemon:
    def __init__(self, resource: Resource, root: MpsRoot) -> None:
        self.resource, self.root, self.name = resource, root, resource.name
        self.tails = Scope(f"MPS logs of {resource.name}")

    def start(self) -> None:
        for gpu in gpus_of(self.resource):
            _set_compute_mode(gpu, "EXCLUSIVE_PROCESS")
        log.info("Starting MPS daemon", resource=self.name)
        for directory in (self.root.pipe_dir(self.name), self.root.log_dir(self.name)):
            os.makedirs(directory, 0o755, exist_ok=True)
        _label_for_containers(self.root.pipe_dir(self.name))
        start_daemon(self.root, self.name, [g.uuid for g in gpus_of(self.resource)])
        # What MPS writes (control.log, and server.log once a client has started a server) shows in our log.
        self.tails = Scope(f"MPS logs of {self.name}")
        for f in ("control.log", "server.log"):
            tail = LogTail(os.path.join(self.root.log_dir(self.name), f), self.name)
            self.tails.start_thread("mps-log", functools.partial(tail.run, self.tails.stopping))
        for index, limit in sorted(pinned_memory_limits(self.resource).items()):
            send(self.root, self.name, f"set_default_device_pinned_mem_limit {index} {limit}")
        send(self.root, self.name, f"set_default_active_thread_percentage {active_thread_percentage(self.resource)}")
        with open(self.root.started(self.name), "w"):
            pass

    def stop(self) -> None:
        """Best effort, every step: a daemon that already died must not keep the GPUs exclusive."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root.started(self.name))
        try:
            send(self.root, self.name, "quit")
            log.info("Shut down MPS", resource=self.name)
        except MpsError as e:
            log.warning("MPS daemon did not take quit", resource=self.name, error=str(e))
        self.tails.close()
        for gpu in gpus_of(self.resource):
            try:
                _set_compute_mode(gpu, "DEFAULT")
            except MpsError as e:
                log.warning(str(e))
        shutil.rmtree(self.root.log_dir(self.name), ignore_errors=True)


class LogTail:
    """Follows an MPS log file into ours, so `kubectl logs` shows what MPS said."""

    def __init__(self, path: str, resource: str) -> None:
        self.path, self.resource = path, resource

    def run(self, stopping: threading.Event) -> None:
        offset = 0
        partial = b""
        while not stopping.wait(0.2):
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    data = f.read(1 << 20)
            except OSError:
                continue
            offset += len(data)
            *lines, partial = (partial + data).split(b"\n")
            for line in lines:
                log.info("mps", resource=self.resource, log=os.path.basename(self.path),
                         line=line.decode(errors="replace"))


def _set_compute_mode(gpu: Gpu, mode: str) -> None:
    try:
        nvml.set_compute_mode(gpu.index, mode)
    except DiscoveryError as e:
        raise MpsError(str(e)) from None
    log.info("compute mode set", gpu=gpu.uuid, mode=mode)


def _label_for_containers(path: str) -> None:
    """As upstream: on an SELinux host the pipe directory gets the label containers may use."""
    if os.path.isdir("/sys/fs/selinux"):
        try:
            os.setxattr(path, "security.selinux", SELINUX_LABEL)
        except OSError as e:
            log.warning("cannot label the MPS pipe directory for containers", path=path, error=e.strerror)
