"""`nvidia-dra-plugin`: the DRA driver gpu.nvidia.com on one node, with NVIDIA's gpu-kubelet-plugin's flags.

Start-up is a sequence of resources entered into the program's lifecycle and closed in reverse at a stop (or
when a later step fails): read the node → serve the kubelet's sockets (registration, DRA, health) → watch the
claims and publish the ResourceSlices → watch device health. Every thread is a thread of the lifecycle; /metrics
and /healthz are the one HTTP server's (gfd/httpserver). /healthz is ok once the kubelet has registered the
driver and the API server holds the node's slices.
"""

from __future__ import annotations

import functools
import gc
import os
import time
from collections.abc import Mapping

import structlog

from gfd import logs, signals
from gfd.config import ConfigError
from gfd.config.options import running_config
from gfd.discovery.errors import DiscoveryError, NvmlUnavailable
from gfd.discovery.session import NodeSource
from gfd.doctor.subcommand import with_doctor
from gfd.httpserver import AddressError, Health, HttpServer, health_handler, metrics_handler
from gfd.kube.client import connect
from gfd.kube.errors import CredentialsError
from gfd.lifecycle import Lifecycle
from gfd.model import DeviceModel
from gfd.program import configured
from plugin.cdi import CdiError
from plugin.dra import taints
from plugin.dra.checkpoint import Checkpoint, read_boot_id
from plugin.dra.claimcache import ClaimCache
from plugin.dra.claimspecs import ClaimSpecFiles, NodeEdits, dra_roots, hook_path, prepare_cdi_root
from plugin.dra.config import DRA_OPTIONS, PROGRAM, DraConfig, load_dra_config, log_ignored
from plugin.dra.devices import allocatable_devices
from plugin.dra.health import HealthFeed, xid_policy
from plugin.dra.metrics import DraMetrics
from plugin.dra.prepare import Preparer
from plugin.dra.publisher import SlicePublisher
from plugin.dra.server import DraPluginServer, HealthBoard
from plugin.dra.slices import pool
from plugin.dra.topology import pcie_roots
from plugin.health import HealthChecker, HealthState
from plugin.server import ServeError

log = structlog.get_logger("plugin.dra")


class StartError(Exception):
    """Start-up cannot continue (exit 1; the kubelet starts the pod again)."""


class DraPlugin:
    def __init__(self, config: DraConfig) -> None:
        self.config = config
        self.metrics = DraMetrics()
        self.life = Lifecycle(PROGRAM, main="waiting for a stop")
        self.server: DraPluginServer | None = None
        self.publisher: SlicePublisher | None = None

    def healthy(self) -> Health:
        """/healthz: registered with the kubelet, and the node's ResourceSlices published."""
        if self.server is None or self.publisher is None:
            return Health(False, "starting")
        if not self.server.registration.registered.is_set():
            return Health(False, "not registered with the kubelet" + (
                f": {self.server.registration.error}" if self.server.registration.error else " yet"))
        if not self.publisher.in_sync.is_set():
            return Health(False, "ResourceSlices not published")
        return Health(True, "ok")

    def run(self) -> int:
        with self.life:
            try:
                self.start()
            except StartError as e:
                log.error(f"error starting {PROGRAM}: {e}")
                return 1
            self.life.stopping.wait()
        log.info("Exiting")
        return self.life.exit_status(0)

    def start(self) -> None:
        """Each step's resources and threads go into the lifecycle, closed in reverse at the stop."""
        started = time.monotonic()
        config, life = self.config, self.life
        if config.metrics_address:
            self._serve_http()
        source, model, edits = self._read_node()
        devices = allocatable_devices(model)
        try:
            kube = connect(config.kubeconfig, PROGRAM, config.kube_api_qps, config.kube_api_burst,
                           self.metrics.api_request)
        except CredentialsError as e:
            raise StartError(f"cannot build a Kubernetes client: {e}") from e
        life.callback("Kubernetes client", kube.close)
        life.on_stop(kube.cancel)
        # The kubelet's side: prepare reads claims from the watched cache.
        claims = ClaimCache(kube, config.node_name, self.metrics.claim_cache_misses.inc)
        life.start_thread("claims", functools.partial(claims.run, life.stopping))
        checkpoint, specs = Checkpoint(config.plugin_dir, read_boot_id()), ClaimSpecFiles(config.cdi_root, edits)
        if checkpoint.from_earlier_boot:
            log.info("CDI specs of the earlier boot removed", specs=specs.remove_all(), cdi_root=config.cdi_root)
        preparer = Preparer(config.node_name, checkpoint, claims, specs, {d.name: d for d in devices},
                            config.shares.enabled)
        board = HealthBoard()
        self.server = server = DraPluginServer(config.registration_socket, config.dra_socket, preparer, board,
                                               self.metrics)
        life.callback("kubelet sockets", server.stop)
        try:
            server.start()
        except ServeError as e:
            raise StartError(str(e)) from e
        # The slices: published now, again at every change of device health.
        roots_by_bus = pcie_roots((g.pci_bus_id for g in model.gpus), source.host_root)
        self.publisher = publisher = SlicePublisher(kube, config.node_name,
                                                    lambda verb: self.metrics.slice_writes.labels(verb=verb).inc())

        def publish(health: taints.DeviceHealth) -> None:
            self.metrics.tainted.set(len(taints.unschedulable(devices, health)))
            publisher.publish(pool(model, config.node_name, config.shares, health, roots_by_bus))

        publish(taints.HEALTHY)
        life.start_thread("resourceslices watch", functools.partial(publisher.watch, life.stopping))
        life.start_thread("resourceslices", functools.partial(publisher.run, life.stopping), wake=publisher.wake)
        # Device health: the device plugin's checker, reported as taints and to the kubelet.
        state = HealthState(config.health_recovery_ns / 1e9)
        policy = xid_policy(config.additional_xids_to_ignore)
        feed = HealthFeed(state, policy, devices, board, publish)
        checker = HealthChecker(model.gpus, state, policy, config.health_probe_ns / 1e9, xid_seen=feed.xid_seen)
        life.start_thread("health", functools.partial(checker.run, life.stopping))
        life.start_thread("health taints", functools.partial(feed.run, life.stopping), wake=feed.wake)
        # Everything start-up made (modules, the clients, the model) lives until the exit: kept out of the cyclic
        # garbage collector's full passes, which would otherwise walk it all and stall a prepare now and then.
        gc.freeze()
        log.info("started", node=config.node_name, devices=len(devices), seconds=round(time.monotonic() - started, 3))

    def _serve_http(self) -> None:
        try:
            http = HttpServer(self.config.metrics_address)
        except AddressError as e:
            raise StartError(str(e)) from e
        http.route(self.config.metrics_path, metrics_handler(self.metrics.registry))  # NVIDIA's --metrics-path
        http.route("/healthz", health_handler(self.healthy))
        http.start(self.life)

    def _read_node(self) -> tuple[NodeSource, DeviceModel, NodeEdits]:
        """The node, once: its devices, and what every claim's CDI spec shares."""
        config = self.config
        try:
            source = self.life.enter("NVML", NodeSource("nvml", config.simulate,
                                                        driver_root=config.container_driver_root))
        except ConfigError as e:
            raise StartError(str(e)) from e
        try:
            source.open()
        except NvmlUnavailable as e:
            raise StartError(f"nvml init failed: {e} ({source.explain(e)})") from e
        try:
            model = source.read()
            os.makedirs(config.plugin_dir, exist_ok=True)
            prepare_cdi_root(config.cdi_root)
            roots = dra_roots(config.container_driver_root, config.nvidia_driver_root, source.host_root)
            edits = NodeEdits.read(model, roots, hook_path(config.nvidia_cdi_hook_path, config.plugin_dir),
                                   source.host_root)
        except (DiscoveryError, CdiError) as e:
            raise StartError(str(e)) from e
        except OSError as e:
            raise StartError(f"cannot create {config.plugin_dir}: {e.strerror or e}") from e
        for lost in model.lost_gpus:
            log.error("GPU lost at start; not offered", gpu=lost.uuid, index=lost.index)
        return source, model, edits


@with_doctor(PROGRAM, lambda: DRA_OPTIONS)
def main(argv: list[str], environ: Mapping[str, str]) -> int:
    config = configured(f"{PROGRAM}: error", lambda: load_dra_config(argv, environ))
    if config is None:
        return 1
    logs.configure(config.effective_log_format, config.effective_log_level)  # klog's -v and --logging-format count
    log.info("Running with config", **running_config(config, DRA_OPTIONS))
    log_ignored(config)
    plugin = DraPlugin(config)
    signals.install(plugin.life)
    return plugin.run()
