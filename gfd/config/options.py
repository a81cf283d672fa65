"""The GFD option table: flag names, env vars, types, defaults and config-file keys (upstream main.go)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gfd.config.duration import INFINITE_NS, format_duration, parse_duration
from gfd.config.model import DEFAULT_MACHINE_TYPE_FILE, DEFAULT_OUTPUT_FILE, DISCOVERY_STRATEGIES, MIG_STRATEGIES

LOG_LEVELS = ("debug", "info", "warning", "error")
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_go_bool(text: str) -> bool:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f'parsing "{text}": invalid syntax')


# Durations are bounded: 0 or 1ns would be a busy loop, and a huge one overflows timers.
MIN_DURATION_NS = 10_000_000
MAX_DURATION_NS = 8760 * 3600 * 10**9


@dataclass(frozen=True)
class Option:
    dest: str
    flags: tuple[str, ...]
    envs: tuple[str, ...]
    kind: str  # "str" | "bool" | "duration" | "int" | "float"
    default: Any
    file_key: tuple[str, ...] | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""

    @property
    def name(self) -> str:
        return self.flags[0].lstrip("-")

    def parse_text(self, text: str) -> Any:
        """Convert a flag or env string; ValueError names what went wrong."""
        parsers: dict[str, Callable[[str], Any]] = {
            "str": str,
            "bool": parse_go_bool,
            "duration": parse_duration,
            "int": int,
            "float": float,
            # Comma-separated lists, as urfave/cli StringSlice / IntSlice flags and env vars.
            "list": lambda t: tuple(i.strip() for i in t.split(",") if i.strip()),
            "intlist": lambda t: tuple(int(i) for i in t.split(",") if i.strip()),
        }
        value = parsers[self.kind](text)
        self.check_value(value)
        return value

    def check_value(self, value: Any) -> None:
        """ValueError for a value outside the option's accepted set (choices, or the duration bounds)."""
        if self.kind == "duration" and not (MIN_DURATION_NS <= value <= MAX_DURATION_NS or value == INFINITE_NS):
            raise ValueError(f"{format_duration(value) if value >= 0 else f'{value}ns'} is out of range")
        for item in value if isinstance(value, tuple) else (value,):
            if self.choices is not None and item not in self.choices:
                raise ValueError(f'invalid value "{item}"')

    @property
    def accepted(self) -> str:
        if self.choices:
            return ", ".join(self.choices)
        return {
            "bool": "true, false",
            "duration": "a Go duration from 10ms to 8760h such as 60s or 1m30s, or infinite",
            "int": "an integer",
            "float": "a number",
            "str": "a string",
            "list": "a comma-separated list",
            "intlist": "a comma-separated list of integers",
        }[self.kind]

    def show_default(self) -> str:
        if self.kind == "duration":
            return format_duration(self.default)
        return ",".join(map(str, self.default)) if isinstance(self.default, tuple) else str(self.default)



GFD_OPTIONS: tuple[Option, ...] = (
    Option("mig_strategy", ("--mig-strategy",), ("GFD_MIG_STRATEGY", "MIG_STRATEGY"), "str", "none",
           ("flags", "migStrategy"), MIG_STRATEGIES, "the desired strategy for exposing MIG devices"),
    Option("fail_on_init_error", ("--fail-on-init-error",), ("GFD_FAIL_ON_INIT_ERROR", "FAIL_ON_INIT_ERROR"),
           "bool", True, ("flags", "failOnInitError"), help="fail the plugin if an error is encountered during init"),
    Option("oneshot", ("--oneshot",), ("GFD_ONESHOT",), "bool", False, ("flags", "gfd", "oneshot"),
           help="label once and exit"),
    Option("no_timestamp", ("--no-timestamp",), ("GFD_NO_TIMESTAMP",), "bool", False,
           ("flags", "gfd", "noTimestamp"), help="do not add the timestamp to the labels"),
    Option("sleep_interval_ns", ("--sleep-interval",), ("GFD_SLEEP_INTERVAL",), "duration", 60_000_000_000,
           ("flags", "gfd", "sleepInterval"), help="time to sleep between labeling"),
    Option("output_file", ("--output-file", "--output", "-o"), ("GFD_OUTPUT_FILE",), "str", DEFAULT_OUTPUT_FILE,
           ("flags", "gfd", "outputFile"), help="path to output file ('-' for stdout)"),
    Option("machine_type_file", ("--machine-type-file",), ("GFD_MACHINE_TYPE_FILE",), "str",
           DEFAULT_MACHINE_TYPE_FILE, ("flags", "gfd", "machineTypeFile"),
           help="a path to a file with the machine type"),
    Option("config_file", ("--config-file",), ("GFD_CONFIG_FILE", "CONFIG_FILE"), "str", "",
           help="the path to a config file as an alternative to command line options or environment variables"),
    Option("use_node_feature_api", ("--use-node-feature-api",),
           ("GFD_USE_NODE_FEATURE_API", "USE_NODE_FEATURE_API"), "bool", True, ("flags", "useNodeFeatureAPI"),
           help="use NFD NodeFeature API to publish labels"),
    Option("device_discovery_strategy", ("--device-discovery-strategy",), ("DEVICE_DISCOVERY_STRATEGY",), "str",
           "auto", ("flags", "deviceDiscoveryStrategy"), DISCOVERY_STRATEGIES,
           help="the strategy to use to discover devices"),
    Option("container_driver_root", ("--driver-root-ctr-path", "--container-driver-root"),
           ("DRIVER_ROOT_CTR_PATH", "CONTAINER_DRIVER_ROOT"), "str", "/driver-root",
           ("flags", "plugin", "containerDriverRoot"), help="the path where the NVIDIA driver root is mounted"),
    Option("namespace", ("--namespace",), ("NAMESPACE",), "str", "default", help="namespace of the NodeFeature"),
    Option("node_name", ("--node-name",), ("NODE_NAME",), "str", "", help="the name of this node"),
    Option("pod_name", ("--pod-name",), ("POD_NAME",), "str", "", help="the name of this pod"),
    Option("kubeconfig", ("--kubeconfig",), ("KUBECONFIG",), "str", "", help="absolute path to the kubeconfig"),
    Option("kube_api_qps", ("--kube-api-qps",), ("KUBE_API_QPS",), "float", 5.0, help="QPS to the API server"),
    Option("kube_api_burst", ("--kube-api-burst",), ("KUBE_API_BURST",), "int", 10, help="burst to the API server"),
    # Ours, not upstream's.
    Option("simulate", ("--simulate",), ("GFD_SIMULATE",), "str", "",
           help="run on a simulated node: a built-in profile name, a profile YAML path, or 'list'"),
    Option("log_format", ("--log-format",), ("GFD_LOG_FORMAT",), "str", "auto", None, ("auto", "console", "json"),
           help="log format: auto (console on a terminal, JSON otherwise), console or json"),
    Option("log_level", ("--log-level",), ("GFD_LOG_LEVEL",), "str", "info", None, LOG_LEVELS,
           help="the lowest level logged"),
    Option("metrics_address", ("--metrics-address",), ("GFD_METRICS_ADDRESS",), "str", "",
           help="serve Prometheus /metrics and /healthz on HOST:PORT (daemon mode; off when empty)"),
    Option("keep_output_on_exit", ("--keep-output-on-exit",), ("GFD_KEEP_OUTPUT_ON_EXIT",), "bool", False,
           help="keep the feature file when stopping (upstream removes it, so NFD drops every GPU label)"),
    Option("node_feature_resync_ns", ("--node-feature-resync",), ("GFD_NODE_FEATURE_RESYNC",), "duration",
           3_600_000_000_000, help="how often the NodeFeature object is re-read when nothing changed"),
)
