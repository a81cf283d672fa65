"""Options more than one program has, declared once. Each program's config uses them with its own env
vars where upstream's names differ by program (GFD reads `GFD_MIG_STRATEGY` before `MIG_STRATEGY`, the
device plugin only `MIG_STRATEGY`)."""

from __future__ import annotations

from gfd.config.options import Option
from plugin.dra.sharing import DISABLED, ENFORCEMENTS, NO_ENFORCEMENT

MIG_STRATEGIES = ("none", "single", "mixed")
DISCOVERY_STRATEGIES = ("auto", "nvml", "tegra", "vfio")
LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

MIG_STRATEGY = Option(("--mig-strategy",), ("MIG_STRATEGY",), "str", "none", ("flags", "migStrategy"),
                      MIG_STRATEGIES, "the desired strategy for exposing MIG devices on GPUs that support it")
FAIL_ON_INIT_ERROR = Option(("--fail-on-init-error",), ("FAIL_ON_INIT_ERROR",), "bool", True,
                            ("flags", "failOnInitError"),
                            help="fail the plugin if an error is encountered during initialization")
DEVICE_DISCOVERY_STRATEGY = Option(("--device-discovery-strategy",), ("DEVICE_DISCOVERY_STRATEGY",), "str", "auto",
                                   ("flags", "deviceDiscoveryStrategy"), DISCOVERY_STRATEGIES,
                                   "the strategy to use to discover devices")
CONTAINER_DRIVER_ROOT = Option(("--driver-root-ctr-path", "--container-driver-root"),
                               ("DRIVER_ROOT_CTR_PATH", "CONTAINER_DRIVER_ROOT"), "str", "/driver-root",
                               ("flags", "plugin", "containerDriverRoot"),
                               help="the path where the NVIDIA driver root is mounted")
# The kubelet's registration socket, in its device-plugin directory (the kubelet's default --root-dir).
KUBELET_SOCKET = Option(("--kubelet-socket",), ("KUBELET_SOCKET",), "str",
                        "/var/lib/kubelet/device-plugins/kubelet.sock",
                        help="the kubelet's registration socket; empty skips registration")
CONFIG_FILE = Option(("--config-file",), ("CONFIG_FILE",), "str", "",
                     help="the path to a config file as an alternative to command line options or environment "
                          "variables")
KUBECONFIG = Option(("--kubeconfig",), ("KUBECONFIG",), "str", "", help="absolute path to the kubeconfig")
KUBE_API_QPS = Option(("--kube-api-qps",), ("KUBE_API_QPS",), "float", 5.0, help="QPS to the API server")
KUBE_API_BURST = Option(("--kube-api-burst",), ("KUBE_API_BURST",), "int", 10, help="burst to the API server")
NODE_NAME = Option(("--node-name",), ("NODE_NAME",), "str", "", help="the name of this node")
MPS_ROOT = Option(("--mps-root",), ("MPS_ROOT",), "str", "", ("flags", "mpsRoot"), help="the MPS root on the host")
# Ours, not upstream's.
SIMULATE = Option(("--simulate",), (), "str", "",
                  help="run on a simulated node: a built-in profile name, a profile YAML path, or 'list'")
LOG_FORMAT = Option(("--log-format",), (), "str", "auto", None, LOG_FORMATS,
                    "log format: auto (console on a terminal, JSON otherwise), console or json")
LOG_LEVEL = Option(("--log-level",), (), "str", "info", None, LOG_LEVELS, "the lowest level logged")
HEALTH_RECOVERY_PERIOD = Option(("--health-recovery-period",), (), "duration", 300_000_000_000,
                                help="an unhealthy device is healthy again after its checks pass for this long")
HEALTH_PROBE_INTERVAL = Option(("--health-probe-interval",), (), "duration", 30_000_000_000,
                               help="how often every GPU is probed (finds GPUs lost without an XID)")
MPS_CONTAINER_ROOT = Option(("--mps-container-root",), ("MPS_CONTAINER_ROOT",), "str", "/mps",
                            help="where --mps-root is mounted in this container (the MPS pipe, log and shm "
                                 "directories)")
METRICS_ADDRESS = Option(("--metrics-address",), (), "str", "",
                         help="serve Prometheus /metrics and /healthz on HOST:PORT (off when empty)")
# The DRA driver's sharing settings (NVIDIA's --consumable-shares and --feature-gates, our --share-enforcement). GFD
# reads them from the same per-node config file (flags.dra.*), or its env, for its memory-shares labels.
CONSUMABLE_SHARES = Option(("--consumable-shares",), ("CONSUMABLE_SHARES",), "str", DISABLED,
                           ("flags", "dra", "consumableShares"),
                           help="let several claims share a device: 'disabled', 'memory', 'unlimited', or a positive "
                                "integer (needs the ConsumableShares feature gate)")
DRA_FEATURE_GATES = Option(("--feature-gates",), ("FEATURE_GATES",), "list", (), ("flags", "dra", "featureGates"),
                           help="key=value pairs of the DRA driver's feature gates")
SHARE_ENFORCEMENT = Option(("--share-enforcement",), ("SHARE_ENFORCEMENT",), "str", NO_ENFORCEMENT,
                           ("flags", "dra", "shareEnforcement"), ENFORCEMENTS,
                           "how memory shares (--consumable-shares=memory) are held to their size: 'mps' runs each "
                           "shared GPU's clients under an MPS daemon with their claim's memory and compute as limits "
                           "(needs --mps-root); 'none' counts them in the scheduler only, as NVIDIA's driver")
