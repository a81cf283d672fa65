"""nvidia-device-plugin flags, env vars and the shared v1 config file (upstream cmd/nvidia-device-plugin)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from gfd.config import ConfigError, Sharing
from gfd.config.loader import load, parse_command_line
from gfd.config.model import DISCOVERY_STRATEGIES, MIG_STRATEGIES, Imex
from gfd.config.options import LOG_LEVELS, Option

log = structlog.get_logger("plugin")
DEVICE_LIST_STRATEGIES = ("envvar", "volume-mounts", "cdi-annotations", "cdi-cri")
DEVICE_ID_STRATEGIES = ("uuid", "index")
ALLOCATION_POLICIES = ("distributed", "packed")
# nvidia-container-toolkit internal/discover/hooks.go: the hooks a generated spec can hold, and `all`.
CDI_HOOKS = ("all", "create-symlinks", "enable-cuda-compat", "update-ldcache", "disable-device-node-modification")
KUBELET_SOCKET = "/var/lib/kubelet/device-plugins/kubelet.sock"

PLUGIN_OPTIONS: tuple[Option, ...] = (
    Option("mig_strategy", ("--mig-strategy",), ("MIG_STRATEGY",), "str", "none", ("flags", "migStrategy"),
           help="the desired strategy for exposing MIG devices on GPUs that support it"),
    Option("fail_on_init_error", ("--fail-on-init-error",), ("FAIL_ON_INIT_ERROR",), "bool", True,
           ("flags", "failOnInitError"), help="fail the plugin if an error is encountered during initialization"),
    Option("nvidia_driver_root", ("--driver-root", "--nvidia-driver-root"), ("NVIDIA_DRIVER_ROOT",), "str", "/",
           ("flags", "nvidiaDriverRoot"), help="the root path for the NVIDIA driver installation"),
    Option("nvidia_dev_root", ("--dev-root", "--nvidia-dev-root"), ("NVIDIA_DEV_ROOT",), "str", "",
           ("flags", "nvidiaDevRoot"), help="the root path for the NVIDIA device nodes (default: the driver root)"),
    Option("pass_device_specs", ("--pass-device-specs",), ("PASS_DEVICE_SPECS",), "bool", False,
           ("flags", "plugin", "passDeviceSpecs"), help="pass the list of DeviceSpecs to the kubelet on Allocate()"),
    Option("device_list_strategy", ("--device-list-strategy",), ("DEVICE_LIST_STRATEGY",), "list", ("envvar",),
           ("flags", "plugin", "deviceListStrategy"), help="the desired strategy for passing the device list"),
    Option("device_id_strategy", ("--device-id-strategy",), ("DEVICE_ID_STRATEGY",), "str", "uuid",
           ("flags", "plugin", "deviceIDStrategy"), help="the desired strategy for passing device IDs"),
    Option("gdrcopy_enabled", ("--gdrcopy-enabled",), ("GDRCOPY_ENABLED",), "bool", False,
           ("flags", "gdrcopyEnabled"), help="ensure that containers that request GPUs get GDRCopy"),
    Option("gds_enabled", ("--gds-enabled",), ("GDS_ENABLED",), "bool", False, ("flags", "gdsEnabled"),
           help="ensure that containers that request GPUs get GPUDirect Storage"),
    Option("mofed_enabled", ("--mofed-enabled",), ("MOFED_ENABLED",), "bool", False, ("flags", "mofedEnabled"),
           help="ensure that containers that request GPUs get MOFED"),
    Option("cdi_annotation_prefix", ("--cdi-annotation-prefix",), ("CDI_ANNOTATION_PREFIX",), "str", "cdi.k8s.io/",
           ("flags", "plugin", "cdiAnnotationPrefix"), help="the prefix to use for CDI container annotation keys"),
    Option("nvidia_cdi_hook_path", ("--nvidia-cdi-hook-path", "--nvidia-ctk-path"),
           ("NVIDIA_CDI_HOOK_PATH", "NVIDIA_CTK_PATH"), "str", "/usr/bin/nvidia-ctk",
           ("flags", "plugin", "nvidiaCTKPath"), help="the path to use for NVIDIA CDI hooks in the generated spec"),
    Option("container_driver_root", ("--driver-root-ctr-path", "--container-driver-root"),
           ("DRIVER_ROOT_CTR_PATH", "CONTAINER_DRIVER_ROOT"), "str", "/driver-root",
           ("flags", "plugin", "containerDriverRoot"), help="the path where the NVIDIA driver root is mounted"),
    Option("mps_root", ("--mps-root",), ("MPS_ROOT",), "str", "", ("flags", "mpsRoot"),
           help="the MPS root on the host"),
    Option("shared_devices_allocation_policy", ("--shared-devices-allocation-policy",),
           ("SHARED_DEVICES_ALLOCATION_POLICY",), "str", "distributed",
           ("flags", "plugin", "sharedDevicesAllocationPolicy"), help="distributed or packed"),
    Option("device_discovery_strategy", ("--device-discovery-strategy",), ("DEVICE_DISCOVERY_STRATEGY",), "str",
           "auto", ("flags", "deviceDiscoveryStrategy"), help="the strategy to use to discover devices"),
    Option("imex_channel_ids", ("--imex-channel-ids",), ("IMEX_CHANNEL_IDS",), "intlist", (),
           help="a list of IMEX channels to inject"),
    Option("imex_required", ("--imex-required",), ("IMEX_REQUIRED",), "bool", False,
           help="the specified IMEX channels are required"),
    Option("kubelet_socket", ("--kubelet-socket",), ("KUBELET_SOCKET",), "str", KUBELET_SOCKET,
           help="the kubelet's registration socket; empty skips registration"),
    Option("config_file", ("--config-file",), ("CONFIG_FILE",), "str", "",
           help="the path to a config file as an alternative to command line options or environment variables"),
    Option("cdi_feature_flags", ("--cdi-feature-flags",), ("CDI_FEATURE_FLAGS",), "list", (),
           help="feature flags for the CDI spec generator"),
    Option("cdi_disable_hooks", ("--cdi-disable-hooks",), ("CDI_DISABLE_HOOKS",), "list", (),
           help="CDI hooks to leave out of generated specs ('all' for every hook)"),
    # Ours, not upstream's.
    Option("cdi_spec_dir", ("--cdi-spec-dir",), ("CDI_SPEC_DIR",), "str", "/var/run/cdi",
           help="where CDI specs are written (the container runtime's CDI directory)"),
    Option("mps_container_root", ("--mps-container-root",), ("MPS_CONTAINER_ROOT",), "str", "/mps",
           help="where --mps-root is mounted in this container (the MPS pipe, log and shm directories)"),
    Option("simulate", ("--simulate",), ("DP_SIMULATE", "GFD_SIMULATE"), "str", "",
           help="run on a simulated node: a built-in profile name or a profile YAML path"),
    Option("log_format", ("--log-format",), ("DP_LOG_FORMAT",), "str", "auto", None, ("auto", "console", "json"),
           help="log format"),
    Option("log_level", ("--log-level",), ("DP_LOG_LEVEL",), "str", "info", None, LOG_LEVELS,
           help="the lowest level logged"),
    Option("metrics_address", ("--metrics-address",), ("DP_METRICS_ADDRESS",), "str", "",
           help="serve Prometheus /metrics on HOST:PORT (off when empty)"),
    Option("health_recovery_ns", ("--health-recovery-period",), ("DP_HEALTH_RECOVERY_PERIOD",), "duration",
           300_000_000_000, help="an unhealthy device is healthy again after its checks pass for this long"),
    Option("health_probe_ns", ("--health-probe-interval",), ("DP_HEALTH_PROBE_INTERVAL",), "duration",
           30_000_000_000, help="how often every GPU is probed (finds GPUs lost without an XID)"),
    Option("gpu_metrics_address", ("--gpu-metrics-address",), ("DP_GPU_METRICS_ADDRESS",), "str", "",
           help="serve GPU telemetry (dcgm-exporter's metric names) on HOST:PORT, e.g. :9101 (off when empty)"),
    Option("pod_resources_socket", ("--pod-resources-socket",), ("POD_RESOURCES_SOCKET",), "str",
           "/var/lib/kubelet/pod-resources/kubelet.sock",
           help="the kubelet's PodResources socket, to label GPU telemetry with the pod holding each device"),
    Option("collect_interval_ns", ("--collect-interval",), ("COLLECT_INTERVAL",), "duration", 10_000_000_000,
           help="how often GPU telemetry is sampled (scrapes read the last sample)"),
)


@dataclass(frozen=True)
class PluginConfig:
    mig_strategy: str = "none"
    fail_on_init_error: bool = True
    nvidia_driver_root: str = "/"
    nvidia_dev_root: str = ""
    pass_device_specs: bool = False
    device_list_strategy: tuple[str, ...] = ("envvar",)
    device_id_strategy: str = "uuid"
    gdrcopy_enabled: bool = False
    gds_enabled: bool = False
    mofed_enabled: bool = False
    cdi_annotation_prefix: str = "cdi.k8s.io/"
    nvidia_cdi_hook_path: str = "/usr/bin/nvidia-ctk"
    container_driver_root: str = "/driver-root"
    mps_root: str = ""
    shared_devices_allocation_policy: str = "distributed"
    device_discovery_strategy: str = "auto"
    imex_channel_ids: tuple[int, ...] = ()
    imex_required: bool = False
    kubelet_socket: str = KUBELET_SOCKET
    config_file: str = ""
    cdi_feature_flags: tuple[str, ...] = ()
    cdi_disable_hooks: tuple[str, ...] = ()
    cdi_spec_dir: str = "/var/run/cdi"
    mps_container_root: str = "/mps"
    simulate: str = ""
    log_format: str = "auto"
    log_level: str = "info"
    metrics_address: str = ""
    health_recovery_ns: int = 300_000_000_000
    health_probe_ns: int = 30_000_000_000
    gpu_metrics_address: str = ""
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    collect_interval_ns: int = 10_000_000_000
    sharing: Sharing = field(default_factory=Sharing)
    imex: Imex = field(default_factory=Imex)
    explicit: frozenset[str] = frozenset()

    @property
    def dev_root(self) -> str:
        return self.nvidia_dev_root or self.nvidia_driver_root

    @property
    def plugin_dir(self) -> str:
        return os.path.dirname(self.kubelet_socket) if self.kubelet_socket else os.path.dirname(KUBELET_SOCKET)

    @property
    def channel_ids(self) -> tuple[int, ...]:
        """--imex-channel-ids overrides the file's imex.channelIDs when given."""
        return self.imex_channel_ids if "imex_channel_ids" in self.explicit else self.imex.channel_ids

    @property
    def cdi_only(self) -> bool:
        return all(s.startswith("cdi-") for s in self.device_list_strategy)

    @property
    def cdi_enabled(self) -> bool:
        return any(s.startswith("cdi-") for s in self.device_list_strategy)


def reload_or_keep(load: Callable[[Sequence[str], Mapping[str, str]], PluginConfig], argv: Sequence[str],
                   environ: Mapping[str, str], running: PluginConfig) -> PluginConfig:
    """A SIGHUP restart's config: loaded again, or the running one when the new one is bad (logged)."""
    try:
        return load(argv, environ)
    except ConfigError as e:
        log.error("reload failed; keeping the running config", error=str(e))
        return running


def load_plugin_config(argv: Sequence[str], environ: Mapping[str, str]) -> PluginConfig:
    return validate(load(parse_command_line(argv, environ, PLUGIN_OPTIONS, "nvidia-device-plugin"),
                         PLUGIN_OPTIONS, PluginConfig))


def validate(config: PluginConfig, needs_mps_root: bool = True) -> PluginConfig:
    """Upstream's start-up validation, in its order and with its messages. The MPS control daemon has no
    --mps-root (it works under its container's mount of it)."""
    src = "unable to validate flags"

    def fail(field_name: str, message: str, accepted: str) -> None:
        raise ConfigError(src, field_name, message, accepted)

    for strategy in config.device_list_strategy:
        if strategy not in DEVICE_LIST_STRATEGIES:
            fail("device-list-strategy", f"invalid --device-list-strategy option: invalid strategy: {strategy}",
                 ", ".join(DEVICE_LIST_STRATEGIES))
    if config.device_id_strategy not in DEVICE_ID_STRATEGIES:
        fail("device-id-strategy", f"invalid --device-id-strategy option: {config.device_id_strategy}",
             ", ".join(DEVICE_ID_STRATEGIES))
    if config.shared_devices_allocation_policy not in ALLOCATION_POLICIES:
        fail("shared-devices-allocation-policy",
             f"invalid --shared-devices-allocation-policy option: {config.shared_devices_allocation_policy}",
             ", ".join(ALLOCATION_POLICIES))
    if config.sharing.strategy == "mps":
        if config.mig_strategy == "mixed":
            fail("mig-strategy", "using --mig-strategy=mixed is not supported with MPS", "none, single")
        if needs_mps_root and not config.mps_root:
            fail("mps-root", "using MPS requires --mps-root to be specified", "a host directory")
    if config.device_discovery_strategy not in DISCOVERY_STRATEGIES[:3]:
        fail("device-discovery-strategy",
             f"invalid --device-discovery-strategy option {config.device_discovery_strategy}", "auto, nvml, tegra")
    if config.mig_strategy not in MIG_STRATEGIES:
        fail("mig-strategy", f"unknown MIG strategy: {config.mig_strategy}", ", ".join(MIG_STRATEGIES))
    for hook in config.cdi_disable_hooks:
        if hook not in CDI_HOOKS:
            fail("cdi-disable-hooks", f"invalid --cdi-disable-hooks option: unknown hook: {hook}", ", ".join(CDI_HOOKS))
    if config.channel_ids not in ((), (0,)):
        fail("imex-channel-ids", "invalid IMEX channel IDs: invalid IMEX config: channelIDs must be [] or [0]; "
             f"found [{' '.join(map(str, config.channel_ids))}]", "[] or [0]")
    return config
