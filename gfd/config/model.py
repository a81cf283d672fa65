"""GFD's effective configuration: one frozen object, built once per load and passed down. Its fields
declare GFD's options (flags, env vars, file keys: upstream main.go); see gfd.config.options."""

from __future__ import annotations

from dataclasses import dataclass, field

from gfd.config import common
from gfd.config.options import Option, options_of

DEFAULT_OUTPUT_FILE = "/etc/kubernetes/node-feature-discovery/features.d/gfd"
DEFAULT_MACHINE_TYPE_FILE = "/sys/class/dmi/id/product_name"
STDOUT = "-"


@dataclass(frozen=True)
class ReplicatedResource:
    name: str
    replicas: int
    rename: str = ""


@dataclass(frozen=True)
class ReplicatedResources:
    resources: tuple[ReplicatedResource, ...]
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False

    def entry(self, name: str) -> ReplicatedResource | None:
        return next((r for r in self.resources if r.name == name), None)

    @property
    def any_shared(self) -> bool:
        return any(r.replicas > 1 for r in self.resources)


@dataclass(frozen=True)
class Sharing:
    time_slicing: ReplicatedResources | None = None
    mps: ReplicatedResources | None = None

    @property
    def active(self) -> ReplicatedResources | None:
        """The entry list GFD consults: `mps` whenever that key exists, else `timeSlicing`."""
        return self.mps if self.mps is not None else self.time_slicing

    @property
    def strategy(self) -> str:
        if self.mps is not None and self.mps.any_shared:
            return "mps"
        if self.time_slicing is not None and self.time_slicing.any_shared:
            return "time-slicing"
        return "none"


@dataclass(frozen=True)
class Imex:
    channel_ids: tuple[int, ...] = ()
    required: bool = False


@dataclass(frozen=True)
class Config:
    mig_strategy: str = common.MIG_STRATEGY.field(envs=("GFD_MIG_STRATEGY", "MIG_STRATEGY"),
                                                  help="the desired strategy for exposing MIG devices")
    fail_on_init_error: bool = common.FAIL_ON_INIT_ERROR.field(envs=("GFD_FAIL_ON_INIT_ERROR", "FAIL_ON_INIT_ERROR"))
    oneshot: bool = Option(("--oneshot",), ("GFD_ONESHOT",), "bool", False, ("flags", "gfd", "oneshot"),
                           help="label once and exit").field()
    no_timestamp: bool = Option(("--no-timestamp",), ("GFD_NO_TIMESTAMP",), "bool", False,
                                ("flags", "gfd", "noTimestamp"), help="do not add the timestamp to the labels").field()
    sleep_interval_ns: int = Option(("--sleep-interval",), ("GFD_SLEEP_INTERVAL",), "duration", 60_000_000_000,
                                    ("flags", "gfd", "sleepInterval"), help="time to sleep between labeling").field()
    output_file: str = Option(("--output-file", "--output", "-o"), ("GFD_OUTPUT_FILE",), "str", DEFAULT_OUTPUT_FILE,
                              ("flags", "gfd", "outputFile"), help="path to output file ('-' for stdout)").field()
    machine_type_file: str = Option(("--machine-type-file",), ("GFD_MACHINE_TYPE_FILE",), "str",
                                    DEFAULT_MACHINE_TYPE_FILE, ("flags", "gfd", "machineTypeFile"),
                                    help="a path to a file with the machine type").field()
    config_file: str = common.CONFIG_FILE.field(envs=("GFD_CONFIG_FILE", "CONFIG_FILE"))
    use_node_feature_api: bool = Option(("--use-node-feature-api",),
                                        ("GFD_USE_NODE_FEATURE_API", "USE_NODE_FEATURE_API"), "bool", True,
                                        ("flags", "useNodeFeatureAPI"),
                                        help="use NFD NodeFeature API to publish labels",
                                        default_help="true, unless --output-file is given without this flag; "
                                                     "--output-file=- always writes stdout").field()
    device_discovery_strategy: str = common.DEVICE_DISCOVERY_STRATEGY.field()
    container_driver_root: str = common.CONTAINER_DRIVER_ROOT.field()
    namespace: str = Option(("--namespace",), ("NAMESPACE",), "str", "default",
                            help="namespace of the NodeFeature").field()
    node_name: str = common.NODE_NAME.field()
    pod_name: str = Option(("--pod-name",), ("POD_NAME",), "str", "", help="the name of this pod").field()
    kubeconfig: str = common.KUBECONFIG.field()
    kube_api_qps: float = common.KUBE_API_QPS.field()
    kube_api_burst: int = common.KUBE_API_BURST.field()
    # Ours, not upstream's.
    simulate: str = common.SIMULATE.field(envs=("GFD_SIMULATE",))
    log_format: str = common.LOG_FORMAT.field(envs=("GFD_LOG_FORMAT",))
    log_level: str = common.LOG_LEVEL.field(envs=("GFD_LOG_LEVEL",))
    metrics_address: str = common.METRICS_ADDRESS.field(envs=("GFD_METRICS_ADDRESS",),
                                                        help="serve Prometheus /metrics and /healthz on HOST:PORT "
                                                             "(daemon mode; off when empty)")
    keep_output_on_exit: bool = Option(("--keep-output-on-exit",), ("GFD_KEEP_OUTPUT_ON_EXIT",), "bool", False,
                                       help="keep the feature file when stopping (upstream removes it, so NFD "
                                            "drops every GPU label)").field()
    node_feature_resync_ns: int = Option(("--node-feature-resync",), ("GFD_NODE_FEATURE_RESYNC",), "duration",
                                         3_600_000_000_000,
                                         help="how often the NodeFeature object is re-read when nothing "
                                              "changed").field()
    # The DRA driver's sharing settings, as the per-node config file gives them to both programs (flags.dra.*), or
    # the env: the memory-shares labels. No flags; a value the driver refuses is the driver's to report.
    consumable_shares: str = common.CONSUMABLE_SHARES.field(flags=())
    dra_feature_gates: tuple[str, ...] = common.DRA_FEATURE_GATES.field(flags=())
    share_enforcement: str = common.SHARE_ENFORCEMENT.field(flags=(), choices=None)
    sharing: Sharing = field(default_factory=Sharing)
    imex: Imex = field(default_factory=Imex)
    # Options given explicitly (flag, env or file), by attribute name: decides the output (see outputs).
    explicit: frozenset[str] = frozenset()


GFD_OPTIONS = options_of(Config)
