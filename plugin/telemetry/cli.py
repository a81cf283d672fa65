"""`gpu-metrics-exporter`: GPU telemetry alone, for nodes that run another device plugin. The same
collector the device plugin runs with `--gpu-metrics-address`; it takes XIDs from NVML's events itself
(in the plugin they come from the health stream)."""

from __future__ import annotations

import functools
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import structlog

from gfd import signals
from gfd.config.loader import load, parse_command_line
from gfd.config.options import Option, options_of
from gfd.discovery.errors import DiscoveryError, NvmlUnavailable
from gfd.httpserver import AddressError, serve
from gfd.lifecycle import Lifecycle
from gfd.model import DeviceModel
from gfd.program import configured, process_arguments
from plugin.config import PLUGIN_OPTIONS, PluginConfig, node_source
from plugin.telemetry.collector import TelemetryCollector

log = structlog.get_logger("plugin.telemetry")
PROG = "gpu-metrics-exporter"
_PLUGIN = {o.dest: o for o in PLUGIN_OPTIONS}


@dataclass(frozen=True)
class ExporterConfig(PluginConfig):
    """The plugin's config and this program's own options: where the DRA driver's shares and the host's processes
    are (share telemetry, beside the DRA driver)."""

    dra_checkpoint_dir: str = Option(
        ("--dra-checkpoint-dir",), ("DRA_CHECKPOINT_DIR",), "str", "",
        help="the DRA driver's directory (<kubelet plugins dir>/gpu.nvidia.com): report its shares, the pod holding "
             "each and the memory its processes use (off when empty)").field()
    proc_root: str = Option(("--proc-root",), ("PROC_ROOT",), "str", "/proc",
                            help="where the host's processes are seen (the host's /proc mounted read-only, or /proc "
                                 "with hostPID): a GPU process's cgroup names its pod").field()


# The plugin's options, the same flags and env, except that the address is this program's whole job.
OPTIONS = (
    replace(_PLUGIN["gpu_metrics_address"], flags=("--address",), envs=("GPU_METRICS_ADDRESS",), default=":9101",
            help="serve /metrics and /healthz on HOST:PORT"),
    *(_PLUGIN[name] for name in ("pod_resources_socket", "collect_interval_ns", "simulate", "container_driver_root",
                                 "log_format", "log_level")),
    *(o for o in options_of(ExporterConfig) if o.dest not in _PLUGIN),
)


def hostname(environ: Mapping[str, str]) -> str:
    """dcgm-exporter's `Hostname` label: the node's name in a pod (NODE_NAME), else the host name."""
    return environ.get("NODE_NAME") or socket.gethostname()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args, env = process_arguments(argv, environ)
    config = configured(PROG, lambda: load(parse_command_line(args, env, OPTIONS, PROG), OPTIONS, ExporterConfig))
    if config is None:
        return 1
    return run(config, hostname(env))


def run(config: ExporterConfig, host: str) -> int:
    life = Lifecycle(PROG, main="waiting for a stop signal")
    signals.install(life)  # before any thread starts (NVML's, the HTTP server's)
    with life:
        status = _serve(life, config, host)
    log.info("Exiting")
    return life.exit_status(status)


def _serve(life: Lifecycle, config: ExporterConfig, host: str) -> int:
    source = life.enter("NVML", node_source(config))
    try:
        source.open()
    except NvmlUnavailable as e:
        log.error(f"NVML unavailable: {e}")
        return 1

    def model() -> DeviceModel | None:
        try:
            return source.read()  # read again each time: a MIG re-layout shows at the next collection
        except DiscoveryError as e:
            log.error("reading the GPUs failed; keeping the last telemetry", error=str(e))
            return None

    collector = TelemetryCollector(model, config.collect_interval_ns / 1e9, config.pod_resources_socket, host,
                                   checkpoint_dir=config.dra_checkpoint_dir, proc_root=config.proc_root)
    try:
        serve(life, config.gpu_metrics_address, collector.render, collector.healthy)
    except AddressError as e:
        log.error(str(e))
        return 1
    life.start_thread("gpu-telemetry", functools.partial(collector.run, life.stopping))
    log.info("serving GPU telemetry", address=config.gpu_metrics_address,
             interval_s=config.collect_interval_ns / 1e9)
    life.stopping.wait()
    return 0
