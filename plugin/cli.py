"""`nvidia-device-plugin`: upstream flags, env and config file; serves every resource to the kubelet."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from threading import Thread
from typing import TYPE_CHECKING

import structlog

from gfd import signals
from gfd.config import ConfigError
from gfd.discovery.errors import DiscoveryError, NvmlUnavailable
from gfd.discovery.session import NodeSource
from gfd.doctor.checks import Context
from gfd.doctor.startup import check_at_start
from gfd.doctor.subcommand import with_doctor
from gfd.lifecycle import Lifecycle, Scope
from gfd.model import DeviceModel
from gfd.program import configured
from plugin.cdi import CdiError
from plugin.config import PLUGIN_OPTIONS, PluginConfig, load_plugin_config, loggable, node_source, reload_or_keep
from plugin.health import HealthChecker, HealthState, Rediscovery, XidPolicy
from plugin.host import read_node_devices
from plugin.kubelet import KubeletRegistrar
from plugin.metrics import PluginMetrics
from plugin.mps.readiness import MpsWatch, wait_until_ready
from plugin.mps.root import MpsRoot
from plugin.resources import ResourceError, build_resources, lost_placeholders
from plugin.server import DevicePluginService, ResourceServer, ServeError

if TYPE_CHECKING:
    from gfd.httpserver import Health
    from plugin.telemetry.collector import TelemetryCollector

log = structlog.get_logger("plugin")


class StartError(Exception):
    """Start-up cannot continue (exit 1), like upstream's fatal errors."""


@dataclass
class _Plugins:
    """What one start serves; a SIGHUP stops its scope and builds a new one."""

    source: NodeSource
    checker: HealthChecker
    health_loop: Thread
    registrar: KubeletRegistrar


class DevicePlugin:
    def __init__(self, argv: Sequence[str], environ: Mapping[str, str], config: PluginConfig) -> None:
        self.argv, self.environ, self.config = argv, environ, config
        self.metrics = PluginMetrics()
        self.life = Lifecycle("nvidia-device-plugin", main="kubelet registration loop")
        # A reload request (SIGHUP) sets `reload`, then stops the run known then. The loop makes a run known
        # before it looks at the flag, and clears the flag before it reads the config: whatever the
        # interleaving, a request either stops the run or is seen by the loop, and is followed by a read.
        self.reload = False
        self.run_scope: Scope | None = None
        self.current: _Plugins | None = None
        self.waiting = False  # started with nothing to serve (no GPUs, or NVML absent and allowed)
        self.model: DeviceModel | None = None  # the last start's, for GPU telemetry
        self.telemetry: TelemetryCollector | None = None
        self.setup_checked = False

    def request_reload(self) -> None:
        """A full restart: stop serving, reload the config, rediscover, serve and register again."""
        self.reload = True
        run = self.run_scope
        if run is not None:
            run.stop()

    def stop(self) -> None:
        self.life.stop()

    def healthy(self) -> Health:
        """/healthz: serving, registered with the kubelet, and the health loop running (or switched off)."""
        from gfd.httpserver import Health  # loaded by serve() already: this runs only for /healthz

        plugins = self.current
        if plugins is None:
            return Health(True, "ok; no devices to serve") if self.waiting else Health(False, "starting")
        registrar = plugins.registrar
        if registrar.blocked:
            return Health(False, "a resource's socket is served by another process")
        if registrar.pending:
            return Health(False, "not registered with the kubelet yet")
        if plugins.checker.policy.enabled and not plugins.health_loop.is_alive():
            return Health(False, "the device health loop is not running")
        return Health(True, "ok")

    def run(self) -> int:
        with self.life:
            status = self._serve(self.life)
        log.info("Exiting")
        return self.life.exit_status(status)

    def _serve(self, life: Lifecycle) -> int:
        """The endpoints and GPU telemetry for the whole process, then one run per config until a stop."""
        if self.config.metrics_address or self.config.gpu_metrics_address:
            # Imported here: a start with no endpoint (the chart's default) skips h11 and the server, 8 ms CPU
            # and 0.4 MiB on the 2-CPU CI machine (tests/test_imports.py).
            from gfd.httpserver import AddressError, serve

            try:
                if self.config.metrics_address:
                    serve(life, self.config.metrics_address, self.metrics.registry, self.healthy)
                if self.config.gpu_metrics_address:
                    self.telemetry = telemetry = self._telemetry()
                    serve(life, self.config.gpu_metrics_address, telemetry.render, telemetry.healthy)
                    life.start_thread("gpu-telemetry", functools.partial(telemetry.run, life.stopping))
            except AddressError as e:
                log.error(f"error starting plugins: {e}")
                return 1
        while not life.stopping.is_set():
            if self.reload:
                self.reload = False
                self.config = reload_or_keep(load_plugin_config, self.argv, self.environ, self.config)
            with life.scope("plugins") as run:
                run.callback("run state", self._forget)  # the last thing the run's close does
                self.run_scope = run
                if self.reload or run.stopping.is_set():  # a reload (read the config again first) or a stop
                    continue
                try:
                    plugins = self.start(run)
                except StartError as e:
                    log.error(f"error starting plugins: {e}")
                    return 1
                self.waiting = plugins is None
                if plugins is None:
                    run.stopping.wait()  # nothing to serve: wait for a signal
                else:
                    plugins.registrar.run(run.stopping)
        return 0

    def _forget(self) -> None:
        """A run has closed: nothing of it may answer /healthz (its health loop has ended) or feed GPU
        telemetry (its NVML is closed) while the next one starts, or finds nothing to serve."""
        self.current = None
        self.model = None

    def _telemetry(self) -> TelemetryCollector:
        """Samples the GPUs of the last start on its own thread (started once its address is served); the
        health stream feeds it XIDs."""
        # Imported here: GPU telemetry is 12 ms CPU and 1.2 MiB of a start without --gpu-metrics-address.
        from plugin.telemetry.cli import hostname
        from plugin.telemetry.collector import TelemetryCollector

        return TelemetryCollector(lambda: self.model, self.config.collect_interval_ns / 1e9,
                                  self.config.pod_resources_socket, hostname(self.environ or os.environ), xids=True)

    def start(self, run: Scope) -> _Plugins | None:
        """Discover, build resources, serve and register, each entered into `run` (closed in reverse when
        it stops, or here on a failure). None: no devices, wait for signals."""
        config = self.config
        try:
            source = run.enter("NVML", node_source(config))
        except ConfigError as e:
            raise StartError(str(e)) from e
        try:
            source.open()
        except NvmlUnavailable as e:
            if config.fail_on_init_error:
                raise StartError(f"nvml init failed: {e} ({source.explain(e)})") from e
            log.warning(f"nvml init failed: {e}; if this is a GPU node, did you set the container runtime to "
                        "nvidia?")
            log.info("No devices found. Waiting indefinitely.")
            return None
        try:
            model = source.read(topology=True)
            resources = build_resources(model, config)
            node = read_node_devices(config, resources, source.host_root)
            if config.cdi_enabled:
                # Imported here: CDI spec generation is 8 ms CPU of a start without a cdi-* strategy.
                from plugin.cdi.store import publish

                classes = publish(model, config, node.imex_channels, node.mig_cap_minors, source.host_root)
                node = replace(node, cdi_classes=classes)
        except (DiscoveryError, ResourceError, CdiError) as e:
            raise StartError(str(e)) from e
        if not self.setup_checked:  # once per process: the node's set-up, from inside this container
            self.setup_checked = True
            check_at_start(model, self.metrics.setup_check,
                           context=Context(host_root=source.host_root, driver_root=config.container_driver_root))
        if not resources:
            log.info("No devices found. Waiting indefinitely.")
        mps = [r for r in resources if r.mps]
        mps_root = MpsRoot(config.mps_container_root)
        if mps and not wait_until_ready(mps_root, mps, run.stopping):
            return None  # stopped or reloading while waiting
        state = HealthState(config.health_recovery_ns / 1e9)
        lost = lost_placeholders(model)
        for gpu in lost:
            log.error("GPU lost at start; advertised Unhealthy until it answers again", gpu=gpu.uuid,
                      index=gpu.index)
            state.fault((gpu.uuid, -1, -1), "GPU lost")
        uuids = frozenset(g.uuid for g in lost)
        rediscover = Rediscovery(uuids, self.request_reload, source.host_root) if lost else None
        policy = XidPolicy.of(config.disable_healthchecks, config.enable_healthchecks)
        checker = HealthChecker(model.gpus + lost, state, policy,
                                config.health_probe_ns / 1e9, rediscover=rediscover,
                                xid_seen=self.telemetry.record_xid if self.telemetry else None)
        self.model = model
        services = [DevicePluginService(r, config, node, state, model.links, self.metrics, run.stopping)
                    for r in resources]
        registrar = KubeletRegistrar([ResourceServer(s, config.plugin_dir, run) for s in services],
                                     config.kubelet_socket, self.metrics)
        run.callback("kubelet sockets", registrar.stop)
        try:
            registrar.start()
        except (ServeError, OSError) as e:
            raise StartError(str(e) if isinstance(e, ServeError) else f"cannot serve: {e}") from e
        health_loop = run.start_thread("health", functools.partial(checker.run, run.stopping))
        if mps:
            watch = MpsWatch(mps_root, mps, state)
            run.start_thread("mps-watch", functools.partial(watch.run, run.stopping))
        self.current = plugins = _Plugins(source, checker, health_loop, registrar)
        return plugins


@with_doctor("nvidia-device-plugin", lambda: PLUGIN_OPTIONS)
def main(argv: list[str], environ: Mapping[str, str]) -> int:
    config = configured("nvidia-device-plugin: error starting plugins", lambda: load_plugin_config(argv, environ))
    if config is None:
        return 1
    log.info("Running with config", **loggable(config))
    plugin = DevicePlugin(argv, environ, config)
    signals.install(plugin.life, plugin.request_reload)
    return plugin.run()
