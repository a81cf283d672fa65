"""`gpu-feature-discovery doctor` and `nvidia-device-plugin doctor`: the same checks, each program's own
flags and env for what it shares with them (simulation, driver root, outputs, CDI strategy), plus
`--host-root` (where the host's / is mounted), `--output table|json`, `--strict`, `--runtime-class` and
`--features-dir`. (`gpu-feature-discovery doctor --output` is the format: the daemon's `--output` alias of
`--output-file` does not apply to doctor.)"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gfd.config import ConfigError
from gfd.config.loader import load, parse_command_line
from gfd.config.options import Option
from gfd.doctor.checks import Context, run
from gfd.doctor.report import as_json, as_table, exit_status

OWN = (
    Option("host_root", ("--host-root",), ("HOST_ROOT",), "str", "/",
           help="where the host's / is mounted (/ when run on the host)"),
    Option("output", ("--output",), ("DOCTOR_OUTPUT",), "str", "table", None, ("table", "json"),
           help="table (readable) or json (see gfd/doctor/schema.json)"),
    Option("strict", ("--strict",), ("DOCTOR_STRICT",), "bool", False, help="exit 2 when there are warnings"),
    Option("runtime_class", ("--runtime-class",), ("RUNTIME_CLASS",), "str", "",
           help="the RuntimeClass the chart's pods use (runtimeClassName), if any"),
    Option("features_dir", ("--features-dir",), ("FEATURES_DIR",), "str",
           "/etc/kubernetes/node-feature-discovery/features.d", help="NFD's features.d directory"),
)
# Taken from the program's own option table when it has them, so the same flags and env apply.
SHARED = ("simulate", "container_driver_root", "kubeconfig", "node_name", "use_node_feature_api",
          "device_list_strategy", "device_id_strategy", "cdi_spec_dir", "kubelet_socket", "log_format", "log_level")


@dataclass(frozen=True)
class DoctorConfig:
    host_root: str = "/"
    output: str = "table"
    strict: bool = False
    runtime_class: str = ""
    simulate: str = ""
    container_driver_root: str = "/driver-root"
    kubeconfig: str = ""
    node_name: str = ""
    features_dir: str = "/etc/kubernetes/node-feature-discovery/features.d"
    use_node_feature_api: bool = False
    device_list_strategy: tuple[str, ...] = ()
    device_id_strategy: str = "uuid"
    cdi_spec_dir: str = "/var/run/cdi"
    kubelet_socket: str = "/var/lib/kubelet/device-plugins/kubelet.sock"
    log_format: str = "auto"
    log_level: str = "info"
    explicit: frozenset[str] = frozenset()


def main(prog: str, program_options: Sequence[Option], argv: Sequence[str], environ: Mapping[str, str]) -> int:
    options = (*OWN, *(o for o in program_options if o.dest in SHARED))
    try:
        config = load(parse_command_line(argv, environ, options, f"{prog} doctor"), options, DoctorConfig)
    except ConfigError as e:
        print(f"{prog} doctor: {e}", file=sys.stderr)
        return 1
    from gfd import logs

    logs.configure(config.log_format, "error")  # the report is the output; logs only for errors
    checks = run(context(config, environ))
    if config.output == "json":
        print(as_json(checks))
    else:
        print(as_table(checks, colour=sys.stdout.isatty() and "NO_COLOR" not in environ))
    return exit_status(checks, config.strict)


def context(config: DoctorConfig, environ: Mapping[str, str]) -> Context:
    """Open NVML (or the simulation) for the checks that ask it, and the API when credentials exist."""
    from gfd.discovery import nvml
    from gfd.discovery.errors import DiscoveryError, NvmlUnavailable
    from gfd.discovery.session import NodeSource

    c = Context(host_root=config.host_root, cdi=any(s.startswith("cdi-") for s in config.device_list_strategy),
                cdi_spec_dir=config.cdi_spec_dir, device_id_strategy=config.device_id_strategy,
                device_plugins_dir=os.path.dirname(config.kubelet_socket) or "/var/lib/kubelet/device-plugins",
                node_feature_api=bool(config.use_node_feature_api),
                runtime_class=config.runtime_class, node_name=config.node_name, features_dir=config.features_dir,
                driver_root=config.container_driver_root)
    source = NodeSource("nvml", config.simulate, driver_root=config.container_driver_root)
    try:
        source.open()
        c.nvml_library = nvml.locate_library(config.container_driver_root) or ""
        c.model = source.read()
        c.pending = {g.index: nvml.pending_state(g.index) for g in c.model.gpus}
    except (NvmlUnavailable, DiscoveryError, nvml.NVMLError) as e:
        c.nvml_error = source.init_failure(e) if isinstance(e, NvmlUnavailable) else str(e)
    finally:
        source.close()
    c.api = _api_client(config, environ)
    return c


def _api_client(config: DoctorConfig, environ: Mapping[str, str]) -> object | None:
    if not config.kubeconfig and "KUBERNETES_SERVICE_HOST" not in environ:
        return None
    from kubernetes import client
    from kubernetes import config as kube_config

    configuration = client.Configuration()
    try:
        if config.kubeconfig:
            kube_config.load_kube_config(config_file=config.kubeconfig,  # type: ignore[no-untyped-call]
                                         client_configuration=configuration)
        else:
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except Exception:  # unreadable credentials: the API checks say skipped
        return None
    return client.ApiClient(configuration)
