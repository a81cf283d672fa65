"""nvidia-dra-plugin's options: the flags and env vars of NVIDIA's gpu-kubelet-plugin (its main.go and the
kube-client, feature-gate and logging flags it adds) with their defaults, plus ours. Options that mean nothing
here are accepted, so a DaemonSet written for NVIDIA's driver starts unchanged, and logged once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from gfd.config import ConfigError, common
from gfd.config.loader import load, parse_command_line
from gfd.config.options import Option, options_of, parse_go_bool
from plugin.dra.sharing import NO_ENFORCEMENT, ConsumableShares

log = structlog.get_logger("plugin.dra")

PROGRAM = "nvidia-dra-plugin"
DRIVER_NAME = "gpu.nvidia.com"
REGISTRAR_DIR = "/var/lib/kubelet/plugins_registry"  # k8s.io/dynamic-resource-allocation/kubeletplugin defaults
PLUGINS_DIR = "/var/lib/kubelet/plugins"
CONSUMABLE_SHARES_GATE = "ConsumableShares"
# NVIDIA's driver gates with their defaults (pkg/featuregates), then component-base's logging gates, which the
# same --feature-gates flag accepts; AllAlpha/AllBeta are component-base's meta gates.
DRIVER_GATES = {"TimeSlicingSettings": False, "MPSSupport": False, "IMEXDaemonsWithDNSNames": True,
                "PassthroughSupport": False, "NVMLDeviceHealthCheck": False, "DynamicMIG": False,
                "ComputeDomainCliques": True, "CrashOnNVLinkFabricErrors": True, "DeviceMetadata": False,
                "FabricManagerPartitioning": False, "HostManagedIMEXDaemon": False, "NodeLocalFabricIPC": False,
                "DRAListTypeAttributes": False, CONSUMABLE_SHARES_GATE: False}
LOGGING_GATES = {"ContextualLogging": True, "LoggingAlphaOptions": False, "LoggingBetaOptions": True,
                 "AllAlpha": False, "AllBeta": False}
# NVIDIA's gate rules (featuregates.ValidateFeatureGates): (gate, other, other must be on).
GATE_RULES = (("ComputeDomainCliques", "IMEXDaemonsWithDNSNames", True), ("DynamicMIG", "PassthroughSupport", False),
              ("DynamicMIG", "MPSSupport", False), ("PassthroughSupport", "NVMLDeviceHealthCheck", False),
              ("DeviceMetadata", "PassthroughSupport", True))
# Gates with an effect here; our health checks always run, so NVMLDeviceHealthCheck is among the others.
EFFECTIVE_GATES = (CONSUMABLE_SHARES_GATE,)
# klog verbosity from which our log level is debug (Kubernetes' logging conventions: 4 is debug).
DEBUG_VERBOSITY = 4
_IGNORED = "accepted for compatibility with NVIDIA's gpu-kubelet-plugin; no effect here"


def _ignored(flag: str, env: str, kind: str, default: object, what: str) -> Option:
    return Option((flag,), (env,), kind, default, help=f"{what} ({_IGNORED})")


@dataclass(frozen=True)
class DraConfig:
    """The DRA driver's effective config; its fields declare its options (gfd.config.options)."""

    node_name: str = common.NODE_NAME.field(help="the name of the node to be worked on (required)")
    cdi_root: str = Option(("--cdi-root",), ("CDI_ROOT",), "str", "/etc/cdi",
                           help="absolute path to the directory where per-claim CDI specs are written").field()
    nvidia_driver_root: str = Option(("--nvidia-driver-root", "--host_driver-root"),
                                     ("NVIDIA_DRIVER_ROOT", "HOST_DRIVER_ROOT"), "str", "/",
                                     help="the root of the NVIDIA driver installation on the host, as written into "
                                          "CDI specs (typically '/' or '/run/nvidia/driver')").field()
    container_driver_root: str = common.CONTAINER_DRIVER_ROOT.field(
        flags=("--container-driver-root",), envs=("DRIVER_ROOT_CTR_PATH",), file_key=None,
        help="where the NVIDIA driver root is mounted in this container")
    nvidia_cdi_hook_path: str = Option(("--nvidia-cdi-hook-path",), ("NVIDIA_CDI_HOOK_PATH",), "str", "",
                                       help="absolute host path of nvidia-cdi-hook for the generated CDI specs "
                                            "(empty: a copy in the plugin's directory under the kubelet plugins "
                                            "directory)").field()
    kubelet_registrar_directory_path: str = Option(
        ("--kubelet-registrar-directory-path",), ("KUBELET_REGISTRAR_DIRECTORY_PATH",), "str", REGISTRAR_DIR,
        help="the kubelet's plugin registration directory").field()
    kubelet_plugins_directory_path: str = Option(
        ("--kubelet-plugins-directory-path",), ("KUBELET_PLUGINS_DIRECTORY_PATH",), "str", PLUGINS_DIR,
        help="the kubelet's plugins directory (the DRA socket and the checkpoint go in <this>/gpu.nvidia.com)").field()
    additional_xids_to_ignore: tuple[str, ...] = Option(
        ("--additional-xids-to-ignore",), ("ADDITIONAL_XIDS_TO_IGNORE",), "list", (),
        help="XIDs (numbers) that do not make a device unhealthy").field()
    consumable_shares: str = common.CONSUMABLE_SHARES.field()
    feature_gates: tuple[str, ...] = common.DRA_FEATURE_GATES.field(
        help="key=value pairs of feature gates: " + ", ".join(sorted(DRIVER_GATES | LOGGING_GATES)))
    kubeconfig: str = common.KUBECONFIG.field()
    kube_api_qps: float = common.KUBE_API_QPS.field()
    kube_api_burst: int = common.KUBE_API_BURST.field()
    metrics_path: str = Option(("--metrics-path",), ("METRICS_PATH",), "str", "/metrics",
                               help="the HTTP path of the Prometheus metrics").field()
    verbosity: int = Option(("--v",), ("V",), "int", 0,
                            help=f"klog's log verbosity; {DEBUG_VERBOSITY} or more logs at debug level unless "
                                 "--log-level is given").field()
    logging_format: str = Option(("--logging-format",), ("LOGGING_FORMAT",), "str", "text", None, ("text", "json"),
                                 "klog's log format; --log-format, when given, wins").field()
    # NVIDIA's, meaning nothing here (logged once when given; see `ignored`).
    namespace: str = _ignored("--namespace", "NAMESPACE", "str", "default", "namespace of NVIDIA's custom "
                              "resources").field()
    host_root: str = _ignored("--host-root", "HOST_ROOT", "str", "/host-root", "the host's root for "
                              "passthrough").field()
    image_name: str = _ignored("--image-name", "IMAGE_NAME", "str", "", "image for NVIDIA's MPS "
                               "Deployments").field()
    image_pull_secrets: str = _ignored("--image-pull-secrets", "IMAGE_PULL_SECRETS", "str", "",
                                       "pull secrets for NVIDIA's MPS Deployments").field()
    image_pull_policy: str = _ignored("--image-pull-policy", "IMAGE_PULL_POLICY", "str", "",
                                      "pull policy for NVIDIA's MPS Deployments").field()
    service_account_name: str = _ignored("--service-account-name", "SERVICE_ACCOUNT_NAME", "str", "",
                                         "service account for NVIDIA's MPS Deployments").field()
    healthcheck_port: int = _ignored("--healthcheck-port", "HEALTHCHECK_PORT", "int", -1,
                                     "port of a gRPC health service (ours: /healthz on --metrics-address)").field()
    default_config: str = _ignored("--default-config", "DEFAULT_CONFIG", "str", "", "NVIDIA's per-node "
                                   "DriverConfig profile").field()
    vmodule: str = _ignored("--vmodule", "VMODULE", "str", "", "klog's per-file verbosity").field()
    log_flush_frequency_ns: int = _ignored("--log-flush-frequency", "LOG_FLUSH_FREQUENCY", "duration",
                                           5_000_000_000, "klog's flush interval").field()
    log_text_split_stream: bool = _ignored("--log-text-split-stream", "LOG_TEXT_SPLIT_STREAM", "bool", False,
                                           "klog's split text streams").field()
    log_text_info_buffer_size: str = _ignored("--log-text-info-buffer-size", "LOG_TEXT_INFO_BUFFER_SIZE", "str",
                                              "0", "klog's text info buffer").field()
    log_json_split_stream: bool = _ignored("--log-json-split-stream", "LOG_JSON_SPLIT_STREAM", "bool", False,
                                           "klog's split JSON streams").field()
    log_json_info_buffer_size: str = _ignored("--log-json-info-buffer-size", "LOG_JSON_INFO_BUFFER_SIZE", "str",
                                              "0", "klog's JSON info buffer").field()
    # Ours, not NVIDIA's.
    share_enforcement: str = common.SHARE_ENFORCEMENT.field()
    mps_root: str = common.MPS_ROOT.field(help="the MPS root on the host (the pipe directories and shm that "
                                               "containers of enforced shares mount)")
    mps_container_root: str = common.MPS_CONTAINER_ROOT.field()
    config_file: str = common.CONFIG_FILE.field(help="a config file (the chart's per-node config, written by "
                                                     "config-manager) with flags.dra.consumableShares, "
                                                     "flags.dra.shareEnforcement, flags.dra.featureGates and "
                                                     "flags.mpsRoot; SIGHUP reads it again")
    simulate: str = common.SIMULATE.field(envs=("DRA_SIMULATE",))
    log_format: str = common.LOG_FORMAT.field(envs=("DRA_LOG_FORMAT",))
    log_level: str = common.LOG_LEVEL.field(envs=("DRA_LOG_LEVEL",))
    health_recovery_ns: int = common.HEALTH_RECOVERY_PERIOD.field(envs=("DRA_HEALTH_RECOVERY_PERIOD",))
    health_probe_ns: int = common.HEALTH_PROBE_INTERVAL.field(envs=("DRA_HEALTH_PROBE_INTERVAL",))
    # NVIDIA's --http-endpoint serves its metrics: the same setting as our --metrics-address.
    metrics_address: str = common.METRICS_ADDRESS.field(flags=("--metrics-address", "--http-endpoint"),
                                                        envs=("DRA_METRICS_ADDRESS", "HTTP_ENDPOINT"))
    explicit: frozenset[str] = frozenset()

    @property
    def gates(self) -> dict[str, bool]:
        """Every known gate with its value: the defaults overridden by --feature-gates (validated)."""
        return {**DRIVER_GATES, **LOGGING_GATES, **parse_gates(self.feature_gates)}

    @property
    def shares(self) -> ConsumableShares:
        return ConsumableShares.parse(self.consumable_shares, self.share_enforcement)

    @property
    def plugin_dir(self) -> str:
        """The driver's own directory under the kubelet's plugins directory: dra.sock, the checkpoint."""
        return f"{self.kubelet_plugins_directory_path.rstrip('/')}/{DRIVER_NAME}"

    @property
    def dra_socket(self) -> str:
        return f"{self.plugin_dir}/dra.sock"

    @property
    def registration_socket(self) -> str:
        return f"{self.kubelet_registrar_directory_path.rstrip('/')}/{DRIVER_NAME}-reg.sock"

    @property
    def effective_log_format(self) -> str:
        if "log_format" in self.explicit or "logging_format" not in self.explicit:
            return self.log_format
        return "json" if self.logging_format == "json" else "console"

    @property
    def effective_log_level(self) -> str:
        if "log_level" in self.explicit or self.verbosity < DEBUG_VERBOSITY:
            return self.log_level
        return "debug"

    @property
    def ignored(self) -> tuple[str, ...]:
        """What was asked for and has no effect here: NVIDIA's options given explicitly, and gates changed from
        their defaults that change nothing here."""
        options = tuple(f"--{o.name}" for o in DRA_OPTIONS if o.dest in self.explicit and _IGNORED in o.help)
        defaults = DRIVER_GATES | LOGGING_GATES
        gates = tuple(f"feature gate {name}={str(value).lower()}" for name, value in parse_gates(
            self.feature_gates).items() if name not in EFFECTIVE_GATES and value != defaults[name])
        unenforced: tuple[str, ...] = ()
        if "share_enforcement" in self.explicit and self.share_enforcement != NO_ENFORCEMENT and \
                not self.shares.enforced:  # only memory shares are enforced; time-slicing shares stay NVIDIA's
            unenforced = (f"--share-enforcement={self.share_enforcement} (with --consumable-shares="
                          f"{self.consumable_shares})",)
        return options + gates + unenforced


DRA_OPTIONS = options_of(DraConfig)


def parse_gates(items: Sequence[str]) -> dict[str, bool]:
    """`Name=bool` items of --feature-gates; ValueError with component-base's wording for a bad one."""
    known = DRIVER_GATES | LOGGING_GATES
    gates = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"missing bool value for {name}")
        if name not in known:
            raise ValueError(f"unrecognized feature gate: {name}")
        try:
            gates[name] = parse_go_bool(value.strip())
        except ValueError as e:
            raise ValueError(f"invalid value of {name}={value.strip()}, err: {e}") from e
    return gates


def load_dra_config(argv: Sequence[str], environ: Mapping[str, str]) -> DraConfig:
    return validate(load(parse_command_line(argv, environ, DRA_OPTIONS, PROGRAM), DRA_OPTIONS, DraConfig))


def validate(config: DraConfig) -> DraConfig:
    """NVIDIA's start-up checks that involve more than one option, with its messages."""
    if not config.node_name:
        raise ConfigError("command line", "node-name", 'Required flag "node-name" not set',
                          "the node's name, e.g. from the downward API (spec.nodeName)")
    try:
        gates = config.gates
    except ValueError as e:
        raise ConfigError("feature gate validation failed", "feature-gates", str(e),
                          ", ".join(sorted(DRIVER_GATES | LOGGING_GATES))) from e
    for gate, other, needed in GATE_RULES:
        if gates[gate] and gates[other] != needed:
            relation = "requires {} to also be enabled" if needed else "is currently mutually exclusive with {}"
            raise ConfigError("feature gate validation failed", "feature-gates",
                              f"feature gate {gate} {relation.format(other)}")
    try:
        shares = config.shares
    except ValueError as e:
        raise ConfigError("invalid CLI flags", "consumable-shares", str(e)) from e
    if shares.enabled and not gates[CONSUMABLE_SHARES_GATE]:
        raise ConfigError("invalid CLI flags", "consumable-shares",
                          f"--consumable-shares requires feature gate {CONSUMABLE_SHARES_GATE} to be enabled",
                          f"--feature-gates={CONSUMABLE_SHARES_GATE}=true")
    if shares.enforced and not config.mps_root:  # the device plugin's check, in its words
        raise ConfigError("invalid CLI flags", "mps-root", "using MPS requires --mps-root to be specified",
                          "the host directory mounted at --mps-container-root")
    for xid in config.additional_xids_to_ignore:
        if not xid.isdigit():
            raise ConfigError("invalid CLI flags", "additional-xids-to-ignore", f"not an XID number: {xid!r}",
                              "a comma-separated list of XID numbers")
    return config


def log_ignored(config: DraConfig) -> None:
    """One line at start naming what was accepted for compatibility and does nothing here."""
    if config.ignored:
        log.warning("options accepted for compatibility have no effect", options=list(config.ignored))
