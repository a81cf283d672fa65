"""`nvidia-dra-plugin`: the DRA driver gpu.nvidia.com on one node, with NVIDIA's gpu-kubelet-plugin's flags.

Start-up is a sequence of resources entered into the program's lifecycle and closed in reverse at a stop (or
when a later step fails): read the node → take over the MPS daemons of enforced shares → serve the kubelet's
sockets (registration, DRA, health) → watch the claims and publish the ResourceSlices → watch device health and
the MPS daemons. Every thread is a thread of the lifecycle; /metrics and /healthz are the one HTTP server's
(gfd/httpserver). /healthz is ok once the kubelet has registered the driver and the API server holds the node's
slices. SIGHUP reads the config again (config-manager's per-node file): a change of the sharing options applies at
once (slices, later prepares), except that a GPU holding shares keeps their enforcement until they end
(plugin/dra/prepare.py); other options take effect at the next start.
"""

from __future__ import annotations

import functools
import gc
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

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
from plugin.dra.devices import Allocatable, allocatable_devices
from plugin.dra.health import HealthFeed, xid_policy
from plugin.dra.metrics import DraMetrics
from plugin.dra.mpsshares import MpsShares, find_program, leftovers
from plugin.dra.prepare import Preparer
from plugin.dra.publisher import SlicePublisher
from plugin.dra.server import DraPluginServer, HealthBoard
from plugin.dra.slices import pool
from plugin.dra.topology import pcie_roots
from plugin.health import HealthChecker, HealthState
from plugin.mps import MpsError
from plugin.mps.root import checked_root
from plugin.server import ServeError

log = structlog.get_logger("plugin.dra")


class StartError(Exception):
    """Start-up cannot continue (exit 1; the kubelet starts the pod again)."""


class DraPlugin:
    def __init__(self, config: DraConfig, argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.argv, self.environ = list(argv), dict(environ or {})  # what a reload reads again
        self.metrics = DraMetrics()
        self.life = Lifecycle(PROGRAM, main="waiting for a stop")
        self.server: DraPluginServer | None = None
        self.publisher: SlicePublisher | None = None
        self.preparer: Preparer | None = None
        self.mps: MpsShares | None = None
        self._node: _Node | None = None
        self._feed: HealthFeed | None = None
        self._health = taints.HEALTHY
        self._lock = threading.Lock()  # the sharing options: a reload against the health feed's republish
        self._started = False  # a SIGHUP (the signal thread) while `start` runs is applied when it ends
        self._reload_owed = False

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
        self.preparer = preparer = Preparer(config.node_name, checkpoint, claims, specs, {d.name: d for d in devices},
                                            config.shares)
        # Device health: the device plugin's checker, reported as taints (in the slices) and to the kubelet.
        board = HealthBoard()
        state = HealthState(config.health_recovery_ns / 1e9)
        policy = xid_policy(config.additional_xids_to_ignore)
        self._feed = feed = HealthFeed(state, policy, devices, board, self._publish)
        # Enforced shares: the MPS daemons of the checkpointed ones, before the kubelet can call.
        self._node = _Node(model, devices, edits, pcie_roots((g.pci_bus_id for g in model.gpus), source.host_root))
        # Whatever the setting: daemons an earlier run left (a crash) are stopped when no checkpointed share needs them.
        if config.shares.enforced or preparer.enforced_gpus() or leftovers(
                config.mps_container_root, (g.uuid for g in model.gpus)):
            self.mps = self._mps_shares(config, feed.mps_health, required=config.shares.enforced)
        if self.mps is not None:
            life.callback("MPS daemons", self.mps.detach)  # they serve their clients on; the next start adopts them
            self.mps.reconcile(preparer.enforced_gpus())
            preparer.update_sharing(config.shares, self.mps)
            life.start_thread("mps", functools.partial(self.mps.run, life.stopping))
        self.server = server = DraPluginServer(config.registration_socket, config.dra_socket, preparer, board,
                                               life, self.metrics)
        life.callback("kubelet sockets", server.stop)
        try:
            server.start()
        except ServeError as e:
            raise StartError(str(e)) from e
        # The slices: published now, again at every change of device health or of the sharing options.
        self.publisher = publisher = SlicePublisher(kube, config.node_name,
                                                    lambda verb: self.metrics.slice_writes.labels(verb=verb).inc())
        self._publish(taints.HEALTHY)
        life.start_thread("resourceslices watch", functools.partial(publisher.watch, life.stopping))
        life.start_thread("resourceslices", functools.partial(publisher.run, life.stopping), wake=publisher.wake)
        checker = HealthChecker(model.gpus, state, policy, config.health_probe_ns / 1e9, xid_seen=feed.xid_seen)
        life.start_thread("health", functools.partial(checker.run, life.stopping))
        life.start_thread("health taints", functools.partial(feed.run, life.stopping), wake=feed.wake)
        # Everything start-up made (modules, the clients, the model) lives until the exit: kept out of the cyclic
        # garbage collector's full passes, which would otherwise walk it all and stall a prepare now and then.
        gc.freeze()
        log.info("started", node=config.node_name, devices=len(devices), seconds=round(time.monotonic() - started, 3))
        with self._lock:
            self._started, owed = True, self._reload_owed
        if owed:
            self.reload()

    def _publish(self, health: taints.DeviceHealth) -> None:
        """The node's pool with this health and the sharing options in force (the health feed's callback)."""
        node, publisher = self._node, self.publisher
        if node is None or publisher is None:
            return  # before the publisher: the start publishes the first pool itself
        with self._lock:
            self._health = health
            self.metrics.tainted.set(len(taints.unschedulable(node.devices, health)))
            publisher.publish(pool(node.model, self.config.node_name, self.config.shares, health, node.pcie_roots))

    def _mps_shares(self, config: DraConfig, on_health: Callable[[str, str | None], None],
                    required: bool) -> MpsShares | None:
        """The MPS daemons of enforced shares (their root checked, nvidia-cuda-mps-control found): StartError
        when `required` (memory shares are enforced) and they cannot be had; else None, logged (the checkpoint
        names enforced shares of an earlier configuration, whose daemons cannot be managed now)."""
        assert self._node is not None
        node = self._node
        try:
            root = checked_root(config.mps_container_root, "mps-container-root")
            program, environment = find_program(node.edits.roots.driver, node.edits.files)
        except (ConfigError, MpsError) as e:
            if required:
                raise StartError(f"memory shares enforced by MPS: {e}") from e
            log.error("prepared claims hold MPS shares, but MPS cannot be used", error=str(e))
            return None
        gpus = [g for g in node.model.gpus if not g.mig_enabled]
        return MpsShares(config.mps_root, root, gpus, program, environment, on_health)

    def reload(self) -> None:
        """SIGHUP: the config read again; the sharing options applied (slices, later prepares), other changes
        logged as waiting for the next start. A config that cannot be read or applied leaves the running one.
        During the start it is owed, not run: applied beside a half-made start it could set up a second set of MPS
        daemons beside the start's own."""
        with self._lock:
            if not self._started:
                self._reload_owed = True
                log.info("reload waits for the start to end")
                return
        try:
            config = load_dra_config(self.argv, self.environ)
        except ConfigError as e:
            log.error("reload failed; keeping the running config", error=str(e))
            return
        preparer, feed = self.preparer, self._feed
        assert preparer is not None and feed is not None  # set by the start
        applied = {"consumable_shares", "share_enforcement", "feature_gates", "explicit"}
        if config.shares.enforced and self.mps is None:  # MPS set up now, with the root the file names
            try:
                self.mps = self._mps_shares(config, feed.mps_health, required=True)
            except StartError as e:
                log.error("reload failed; keeping the running config", error=str(e))
                return
            assert self.mps is not None
            self.life.callback("MPS daemons", self.mps.detach)
            self.life.start_thread("mps", functools.partial(self.mps.run, self.life.stopping))
            applied.add("mps_root")
        later = [o.config_name for o in DRA_OPTIONS if o.dest not in applied and
                 getattr(config, o.dest) != getattr(self.config, o.dest)]
        if later:
            log.warning("changed options take effect at the next start", options=later)
        with self._lock:
            self.config = replace(self.config, **{name: getattr(config, name) for name in applied})
            health = self._health
        preparer.update_sharing(self.config.shares, self.mps)
        self._publish(health)
        kept = preparer.modes_kept()  # GPUs whose shares keep their mode, and the new setting's, until they end
        waiting = {"gpusUnderMpsUntilSharesEnd": sorted(uuid for uuid, mps in kept.items() if mps),
                   "gpusWithoutMpsUntilSharesEnd": sorted(uuid for uuid, mps in kept.items() if not mps)}
        log.info("config reloaded", consumableShares=self.config.consumable_shares,
                 shareEnforcement=self.config.share_enforcement, **{k: v for k, v in waiting.items() if v})

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


@dataclass(frozen=True)
class _Node:
    """What start-up read of the node, for the slices published at every change."""

    model: DeviceModel
    devices: tuple[Allocatable, ...]
    edits: NodeEdits
    pcie_roots: Mapping[str, str]


@with_doctor(PROGRAM, lambda: DRA_OPTIONS)
def main(argv: list[str], environ: Mapping[str, str]) -> int:
    config = configured(f"{PROGRAM}: error", lambda: load_dra_config(argv, environ))
    if config is None:
        return 1
    logs.configure(config.effective_log_format, config.effective_log_level)  # klog's -v and --logging-format count
    log.info("Running with config", **running_config(config, DRA_OPTIONS))
    log_ignored(config)
    plugin = DraPlugin(config, argv, environ)
    signals.install(plugin.life, plugin.reload)
    return plugin.run()
