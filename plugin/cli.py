"""`nvidia-device-plugin`: upstream flags, env and config file; serves every resource to the kubelet."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import structlog

from gfd import signals
from gfd.config import ConfigError
from gfd.doctor.subcommand import with_doctor
from gfd.httpserver import AddressError, Health, serve
from gfd.program import configured
from plugin.config import PLUGIN_OPTIONS, PluginConfig, load_plugin_config, node_source, reload_or_keep

if TYPE_CHECKING:
    from gfd.discovery.session import NodeSource
    from gfd.model import DeviceModel
    from plugin.health import HealthChecker
    from plugin.kubelet import KubeletRegistrar
    from plugin.mps.readiness import MpsWatch
    from plugin.telemetry.collector import TelemetryCollector

log = structlog.get_logger("plugin")


class StartError(Exception):
    """Start-up cannot continue (exit 1), like upstream's fatal errors."""


@dataclass
class _Plugins:
    """Everything one start owns; a SIGHUP stops it and builds a new one."""

    source: NodeSource
    checker: HealthChecker
    registrar: KubeletRegistrar
    mps_watch: MpsWatch | None = None


class DevicePlugin:
    def __init__(self, argv: Sequence[str], environ: Mapping[str, str], config: PluginConfig) -> None:
        from plugin.metrics import PluginMetrics

        self.argv, self.environ, self.config = argv, environ, config
        self.metrics = PluginMetrics()
        self.stop_event = threading.Event()
        self.reload = False
        self.registrar_stop = threading.Event()
        self.current: _Plugins | None = None
        self.waiting = False  # started with nothing to serve (no GPUs, or NVML absent and allowed)
        self.model: DeviceModel | None = None  # the last start's, for GPU telemetry
        self.telemetry: TelemetryCollector | None = None
        self.setup_checked = False

    def request_reload(self) -> None:
        """A full restart: stop serving, reload the config, rediscover, serve and register again."""
        self.reload = True
        self.registrar_stop.set()

    def stop(self) -> None:
        self.stop_event.set()
        self.registrar_stop.set()

    def healthy(self) -> Health:
        """/healthz: serving, registered with the kubelet, and the health loop running (or switched off)."""
        plugins = self.current
        if plugins is None:
            return Health(True, "ok; no devices to serve") if self.waiting else Health(False, "starting")
        registrar, checker = plugins.registrar, plugins.checker
        if registrar.blocked:
            return Health(False, "a resource's socket is served by another process")
        if registrar.pending:
            return Health(False, "not registered with the kubelet yet")
        if checker.policy.enabled and not checker.is_alive():
            return Health(False, "the device health loop is not running")
        return Health(True, "ok")

    def run(self) -> int:
        servers = []
        try:
            if self.config.metrics_address:
                servers.append(serve(self.config.metrics_address, self.metrics.registry, self.healthy))
            if self.config.gpu_metrics_address:
                self.telemetry = self._telemetry()
                servers.append(serve(self.config.gpu_metrics_address, self.telemetry.render, self.telemetry.healthy))
        except AddressError as e:
            log.error(f"error starting plugins: {e}")
            for server in servers:
                server.stop()
            return 1
        if self.telemetry is not None:
            self.telemetry.start()
        try:
            while not self.stop_event.is_set():
                self.registrar_stop.clear()
                try:
                    plugins = self.start()
                except StartError as e:
                    log.error(f"error starting plugins: {e}")
                    return 1
                self.waiting = plugins is None
                try:
                    if plugins is None:
                        self.registrar_stop.wait()  # nothing to serve: wait for a signal
                    else:
                        plugins.registrar.run(self.registrar_stop)
                finally:
                    self.shutdown(plugins)
                if self.reload and not self.stop_event.is_set():
                    self.reload = False
                    self.config = reload_or_keep(load_plugin_config, self.argv, self.environ, self.config)
        finally:
            for server in servers:
                server.stop()
                server.join()
            if self.telemetry is not None:
                self.telemetry.stop()
        log.info("Exiting")
        return 0

    def _telemetry(self) -> TelemetryCollector:
        """Samples the GPUs of the last start on its own thread (started once its address is served); the
        health stream feeds it XIDs."""
        from plugin.telemetry.cli import hostname
        from plugin.telemetry.collector import TelemetryCollector

        return TelemetryCollector(lambda: self.model, self.config.collect_interval_ns / 1e9,
                                  self.config.pod_resources_socket, hostname(self.environ or os.environ), xids=True)

    def start(self) -> _Plugins | None:
        """Discover, build resources, serve and register. None: no devices, wait for signals."""
        from gfd.discovery.errors import DiscoveryError, NvmlUnavailable
        from gfd.doctor.checks import Context
        from gfd.doctor.startup import check_at_start
        from plugin.cdi import CdiError
        from plugin.cdi.store import publish
        from plugin.health import HealthChecker, HealthState, Rediscovery, XidPolicy
        from plugin.host import read_node_devices
        from plugin.kubelet import KubeletRegistrar
        from plugin.mps.readiness import MpsWatch, wait_until_ready
        from plugin.mps.root import MpsRoot
        from plugin.resources import ResourceError, build_resources, lost_placeholders
        from plugin.server import DevicePluginService, ResourceServer, ServeError

        config = self.config
        try:
            source = node_source(config)
        except ConfigError as e:
            raise StartError(str(e)) from None
        try:
            source.open()
        except NvmlUnavailable as e:
            source.close()
            if config.fail_on_init_error:
                raise StartError(f"nvml init failed: {e}") from None
            log.warning(f"nvml init failed: {e}; if this is a GPU node, did you set the container runtime to "
                        "nvidia?")
            log.info("No devices found. Waiting indefinitely.")
            return None
        try:
            model = source.read(topology=True)
            resources = build_resources(model, config)
            node = read_node_devices(config, resources, source.host_root)
            if config.cdi_enabled:
                classes = publish(model, config, node.imex_channels, node.mig_cap_minors, source.host_root)
                node = replace(node, cdi_classes=classes)
        except (DiscoveryError, ResourceError, CdiError) as e:
            source.close()
            raise StartError(str(e)) from None
        if not self.setup_checked:  # once per process: the node's set-up, from inside this container
            self.setup_checked = True
            check_at_start(model, self.metrics.setup_check,
                           context=Context(host_root=source.host_root, driver_root=config.container_driver_root))
        if not resources:
            log.info("No devices found. Waiting indefinitely.")
        mps = [r for r in resources if r.mps]
        mps_root = MpsRoot(config.mps_container_root)
        if mps and not wait_until_ready(mps_root, mps, self.registrar_stop):
            source.close()  # stopped or reloading while waiting
            return None
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
        services = [DevicePluginService(r, config, node, state, model.links, self.metrics) for r in resources]
        registrar = KubeletRegistrar([ResourceServer(s, config.plugin_dir) for s in services], config.kubelet_socket,
                                     self.metrics)
        watch = MpsWatch(mps_root, mps, state) if mps else None
        self.current = plugins = _Plugins(source, checker, registrar, watch)
        try:
            registrar.start()
        except (ServeError, OSError) as e:
            registrar.stop()
            source.close()
            self.current = None
            raise StartError(str(e) if isinstance(e, ServeError) else f"cannot serve: {e}") from None
        checker.start()
        if watch is not None:
            watch.start()
        return plugins

    @staticmethod
    def shutdown(plugins: _Plugins | None) -> None:
        if plugins is None:
            return
        plugins.registrar.stop()
        plugins.checker.stop()
        plugins.checker.join(2)
        if plugins.mps_watch is not None:
            plugins.mps_watch.stop()
        plugins.source.close()


@with_doctor("nvidia-device-plugin", lambda: PLUGIN_OPTIONS)
def main(argv: list[str], environ: Mapping[str, str]) -> int:
    config = configured("nvidia-device-plugin: error starting plugins", lambda: load_plugin_config(argv, environ))
    if config is None:
        return 1
    plugin = DevicePlugin(argv, environ, config)
    signals.install(plugin.stop, plugin.request_reload)
    return plugin.run()
