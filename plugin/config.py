"""nvidia-device-plugin flags, env vars and the shared v1 config file (upstream cmd/nvidia-device-plugin)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from gfd.config import ConfigError, Sharing, common
from gfd.config.loader import load, parse_command_line
from gfd.config.model import Imex
from gfd.config.options import Option, options_of, running_config

if TYPE_CHECKING:
    from gfd.discovery.session import NodeSource

log = structlog.get_logger("plugin")
DEVICE_LIST_STRATEGIES = ("envvar", "volume-mounts", "cdi-annotations", "cdi-cri")
DEVICE_ID_STRATEGIES = ("uuid", "index")
ALLOCATION_POLICIES = ("distributed", "packed")
# nvidia-container-toolkit internal/discover/hooks.go: the hooks a generated spec can hold, and `all`.
CDI_HOOKS = ("all", "create-symlinks", "enable-cuda-compat", "update-ldcache", "disable-device-node-modification",
             "update-application-profile")

_MOUNTED = "flags", "plugin"


@dataclass(frozen=True)
class PluginConfig:
    """The plugin's effective config; its fields declare the plugin's options (gfd.config.options)."""

    mig_strategy: str = common.MIG_STRATEGY.field(invalid="unknown MIG strategy: {}")
    fail_on_init_error: bool = common.FAIL_ON_INIT_ERROR.field()
    nvidia_driver_root: str = Option(("--driver-root", "--nvidia-driver-root"), ("NVIDIA_DRIVER_ROOT",), "str", "/",
                                     ("flags", "nvidiaDriverRoot"),
                                     help="the root path for the NVIDIA driver installation").field()
    nvidia_dev_root: str = Option(("--dev-root", "--nvidia-dev-root"), ("NVIDIA_DEV_ROOT",), "str", "",
                                  ("flags", "nvidiaDevRoot"),
                                  help="the root path for the NVIDIA device nodes (default: the driver root)").field()
    pass_device_specs: bool = Option(("--pass-device-specs",), ("PASS_DEVICE_SPECS",), "bool", False,
                                     (*_MOUNTED, "passDeviceSpecs"),
                                     help="pass the list of DeviceSpecs to the kubelet on Allocate()").field()
    device_list_strategy: tuple[str, ...] = Option(
        ("--device-list-strategy",), ("DEVICE_LIST_STRATEGY",), "list", ("envvar",),
        (*_MOUNTED, "deviceListStrategy"), DEVICE_LIST_STRATEGIES, "the desired strategy for passing the device list",
        "invalid --device-list-strategy option: invalid strategy: {}").field()
    device_id_strategy: str = Option(("--device-id-strategy",), ("DEVICE_ID_STRATEGY",), "str", "uuid",
                                     (*_MOUNTED, "deviceIDStrategy"), DEVICE_ID_STRATEGIES,
                                     "the desired strategy for passing device IDs",
                                     "invalid --device-id-strategy option: {}").field()
    gdrcopy_enabled: bool = Option(("--gdrcopy-enabled",), ("GDRCOPY_ENABLED",), "bool", False,
                                   ("flags", "gdrcopyEnabled"),
                                   help="ensure that containers that request GPUs get GDRCopy").field()
    gds_enabled: bool = Option(("--gds-enabled",), ("GDS_ENABLED",), "bool", False, ("flags", "gdsEnabled"),
                               help="ensure that containers that request GPUs get GPUDirect Storage").field()
    mofed_enabled: bool = Option(("--mofed-enabled",), ("MOFED_ENABLED",), "bool", False, ("flags", "mofedEnabled"),
                                 help="ensure that containers that request GPUs get MOFED").field()
    cdi_annotation_prefix: str = Option(("--cdi-annotation-prefix",), ("CDI_ANNOTATION_PREFIX",), "str",
                                        "cdi.k8s.io/", (*_MOUNTED, "cdiAnnotationPrefix"),
                                        help="the prefix to use for CDI container annotation keys").field()
    nvidia_cdi_hook_path: str = Option(("--nvidia-cdi-hook-path", "--nvidia-ctk-path"),
                                       ("NVIDIA_CDI_HOOK_PATH", "NVIDIA_CTK_PATH"), "str", "/usr/bin/nvidia-ctk",
                                       (*_MOUNTED, "nvidiaCTKPath"),
                                       help="the path to use for NVIDIA CDI hooks in the generated spec").field()
    container_driver_root: str = common.CONTAINER_DRIVER_ROOT.field()
    mps_root: str = common.MPS_ROOT.field()
    shared_devices_allocation_policy: str = Option(
        ("--shared-devices-allocation-policy",), ("SHARED_DEVICES_ALLOCATION_POLICY",), "str", "distributed",
        (*_MOUNTED, "sharedDevicesAllocationPolicy"), ALLOCATION_POLICIES,
        "how replicas of shared devices are picked", "invalid --shared-devices-allocation-policy option: {}").field()
    device_discovery_strategy: str = common.DEVICE_DISCOVERY_STRATEGY.field(
        choices=common.DISCOVERY_STRATEGIES[:3], invalid="invalid --device-discovery-strategy option {}")
    imex_channel_ids: tuple[int, ...] = Option(("--imex-channel-ids",), ("IMEX_CHANNEL_IDS",), "intlist", (),
                                               help="a list of IMEX channels to inject").field()
    imex_required: bool = Option(("--imex-required",), ("IMEX_REQUIRED",), "bool", False,
                                 help="the specified IMEX channels are required").field()
    kubelet_socket: str = common.KUBELET_SOCKET.field()
    config_file: str = common.CONFIG_FILE.field()
    cdi_feature_flags: tuple[str, ...] = Option(("--cdi-feature-flags",), ("CDI_FEATURE_FLAGS",), "list", (),
                                                help="feature flags for the CDI spec generator").field()
    cdi_disable_hooks: tuple[str, ...] = Option(
        ("--cdi-disable-hooks",), ("CDI_DISABLE_HOOKS",), "list", (), None, CDI_HOOKS,
        "CDI hooks to leave out of generated specs ('all' for every hook)",
        "invalid --cdi-disable-hooks option: unknown hook: {}").field()
    # Upstream reads these two from the environment only (XID health checks, see plugin.health.XidPolicy).
    disable_healthchecks: tuple[str, ...] = Option(
        (), ("DP_DISABLE_HEALTHCHECKS",), "list", (),
        help="XIDs (numbers) not to treat as critical; 'all' or 'xids' turns the XID checks off").field()
    enable_healthchecks: tuple[str, ...] = Option(
        (), ("DP_ENABLE_HEALTHCHECKS",), "list", (),
        help="XIDs (numbers) to treat as critical even when ignored by default; 'all' for every XID").field()
    # Ours, not upstream's.
    cdi_spec_dir: str = Option(("--cdi-spec-dir",), ("CDI_SPEC_DIR",), "str", "/var/run/cdi",
                               help="where CDI specs are written (the container runtime's CDI directory)").field()
    mps_container_root: str = common.MPS_CONTAINER_ROOT.field()
    simulate: str = common.SIMULATE.field(envs=("DP_SIMULATE", "GFD_SIMULATE"))
    log_format: str = common.LOG_FORMAT.field(envs=("DP_LOG_FORMAT",))
    log_level: str = common.LOG_LEVEL.field(envs=("DP_LOG_LEVEL",))
    metrics_address: str = common.METRICS_ADDRESS.field(envs=("DP_METRICS_ADDRESS",))
    health_recovery_ns: int = common.HEALTH_RECOVERY_PERIOD.field(envs=("DP_HEALTH_RECOVERY_PERIOD",))
    health_probe_ns: int = common.HEALTH_PROBE_INTERVAL.field(envs=("DP_HEALTH_PROBE_INTERVAL",))
    gpu_metrics_address: str = Option(("--gpu-metrics-address",), ("DP_GPU_METRICS_ADDRESS",), "str", "",
                                      help="serve GPU telemetry (dcgm-exporter's metric names) on HOST:PORT, e.g. "
                                           ":9101 (off when empty)").field()
    pod_resources_socket: str = Option(("--pod-resources-socket",), ("POD_RESOURCES_SOCKET",), "str",
                                       "/var/lib/kubelet/pod-resources/kubelet.sock",
                                       help="the kubelet's PodResources socket, to label GPU telemetry with the pod "
                                            "holding each device").field()
    collect_interval_ns: int = Option(("--collect-interval",), ("COLLECT_INTERVAL",), "duration", 10_000_000_000,
                                      help="how often GPU telemetry is sampled (scrapes read the last "
                                           "sample)").field()
    sharing: Sharing = field(default_factory=Sharing)
    imex: Imex = field(default_factory=Imex)
    explicit: frozenset[str] = frozenset()

    @property
    def dev_root(self) -> str:
        return self.nvidia_dev_root or self.nvidia_driver_root

    @property
    def plugin_dir(self) -> str:
        return os.path.dirname(self.kubelet_socket or common.KUBELET_SOCKET.default)

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


PLUGIN_OPTIONS = options_of(PluginConfig)


def node_source(config: PluginConfig) -> NodeSource:
    """The node as the plugin's programs read it: through NVML whenever the strategy is `auto`, as
    upstream's plugin (GFD's `auto` also knows vfio)."""
    from gfd.discovery.session import NodeSource

    strategy = "nvml" if config.device_discovery_strategy == "auto" else config.device_discovery_strategy
    return NodeSource(strategy, config.simulate, driver_root=config.container_driver_root)


def reload_or_keep(load: Callable[[Sequence[str], Mapping[str, str]], PluginConfig], argv: Sequence[str],
                   environ: Mapping[str, str], running: PluginConfig) -> PluginConfig:
    """A SIGHUP restart's config: loaded again, or the running one when the new one is bad (logged)."""
    try:
        config = load(argv, environ)
    except ConfigError as e:
        log.error("reload failed; keeping the running config", error=str(e))
        return running
    log.info("Running with config", **loggable(config))
    return config


def loggable(config: PluginConfig) -> dict[str, object]:
    """The "Running with config" line: every option by its config name, with the IMEX channels and the sharing
    in force (either may come from the file)."""
    return {**running_config(config, PLUGIN_OPTIONS), "imexChannelIds": list(config.channel_ids),
            "sharingStrategy": config.sharing.strategy}


def load_plugin_config(argv: Sequence[str], environ: Mapping[str, str]) -> PluginConfig:
    return validate(load(parse_command_line(argv, environ, PLUGIN_OPTIONS, "nvidia-device-plugin"),
                         PLUGIN_OPTIONS, PluginConfig))


def validate(config: PluginConfig, needs_mps_root: bool = True) -> PluginConfig:
    """Upstream's start-up checks that involve more than one option, with its messages (a single option's
    value is checked as it is parsed). The MPS control daemon has no --mps-root (it works under its
    container's mount of it)."""
    src = "unable to validate flags"

    def fail(field_name: str, message: str, accepted: str) -> None:
        raise ConfigError(src, field_name, message, accepted)

    if config.sharing.strategy == "mps":
        if config.mig_strategy == "mixed":
            fail("mig-strategy", "using --mig-strategy=mixed is not supported with MPS", "none, single")
        if needs_mps_root and not config.mps_root:
            fail("mps-root", "using MPS requires --mps-root to be specified", "a host directory")
    if config.channel_ids not in ((), (0,)):
        fail("imex-channel-ids", "invalid IMEX channel IDs: invalid IMEX config: channelIDs must be [] or [0]; "
             f"found [{' '.join(map(str, config.channel_ids))}]", "[] or [0]")
    return config
