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
from typing import TYPE_CHECKING

from gfd.config import common
from gfd.config.errors import ConfigError
from gfd.config.loader import load, parse_command_line
from gfd.config.model import DEFAULT_OUTPUT_FILE
from gfd.config.options import Option, options_of
from gfd.doctor.checks import DEVICE_PLUGIN, DRA, Context, run
from gfd.doctor.cluster import Cluster
from gfd.doctor.report import as_json, as_table, exit_status
from gfd.kube.client import connect
from gfd.kube.errors import CredentialsError
from gfd.program import configured

if TYPE_CHECKING:
    from gfd.discovery.session import NodeSource


@dataclass(frozen=True, kw_only=True)
class DoctorConfig:
    """Doctor's own options, then what it shares with the program it runs for: taken from that program's
    options (`SHARED`), so the same flags, env vars and defaults apply. A program without one of them
    (the plugin has no NodeFeature option, GFD no CDI strategy) leaves the value below."""

    host_root: str = Option(("--host-root",), ("HOST_ROOT",), "str", "/",
                            help="where the host's / is mounted (/ when run on the host)").field()
    output: str = Option(("--output",), ("DOCTOR_OUTPUT",), "str", "table", None, ("table", "json"),
                         help="table (readable) or json (see gfd/doctor/schema.json)").field()
    strict: bool = Option(("--strict",), ("DOCTOR_STRICT",), "bool", False,
                          help="exit 2 when there are warnings").field()
    runtime_class: str = Option(("--runtime-class",), ("RUNTIME_CLASS",), "str", "",
                                help="the RuntimeClass the chart's pods use (runtimeClassName), if any").field()
    features_dir: str = Option(("--features-dir",), ("FEATURES_DIR",), "str", os.path.dirname(DEFAULT_OUTPUT_FILE),
                               help="NFD's features.d directory").field()
    simulate: str
    container_driver_root: str
    log_format: str
    log_level: str
    kubeconfig: str = ""
    node_name: str = ""
    use_node_feature_api: bool = False
    device_list_strategy: tuple[str, ...] = ()
    device_id_strategy: str = "uuid"
    cdi_spec_dir: str = ""
    kubelet_socket: str = common.KUBELET_SOCKET.default
    # The DRA driver's (nvidia-dra-plugin doctor).
    cdi_root: str = ""
    kubelet_registrar_directory_path: str = ""
    kubelet_plugins_directory_path: str = ""
    explicit: frozenset[str] = frozenset()


SHARED = ("simulate", "container_driver_root", "kubeconfig", "node_name", "use_node_feature_api",
          "device_list_strategy", "device_id_strategy", "cdi_spec_dir", "kubelet_socket", "log_format", "log_level",
          "cdi_root", "kubelet_registrar_directory_path", "kubelet_plugins_directory_path")
API_TIMEOUT = (3.0, 3.0)  # connect, read (seconds): a doctor answers at once, a hung API server is a finding


def main(prog: str, program_options: Sequence[Option], argv: Sequence[str], environ: Mapping[str, str],
         driver: str = DEVICE_PLUGIN) -> int:
    """`driver`: which node-level GPU driver the program is (DEVICE_PLUGIN for GFD too, or DRA): the checks
    about it run."""
    from gfd.discovery.session import NodeSource

    options = (*options_of(DoctorConfig), *(o for o in program_options if o.dest in SHARED))
    # The report is the output; logs only for errors.
    config = configured(f"{prog} doctor", lambda: load(parse_command_line(argv, environ, options, f"{prog} doctor"),
                                                       options, DoctorConfig), log_level="error")
    if config is None:
        return 1
    try:
        source = NodeSource("nvml", config.simulate, driver_root=config.container_driver_root)
    except ConfigError as e:  # an unknown or broken --simulate profile
        print(f"{prog} doctor: {e}", file=sys.stderr)
        return 1
    try:  # the checks run while a simulation's tree (its driver root and device nodes) exists
        checks = run(context(config, environ, source, driver))
    finally:
        source.close()
    report = as_json(checks) if config.output == "json" else \
        as_table(checks, colour=sys.stdout.isatty() and "NO_COLOR" not in environ)
    _print(report)
    return exit_status(checks, config.strict)


def _print(report: str) -> None:
    """The report on stdout; a reader that has gone (`doctor | head -1`) ends the output, not the run: stdout
    is pointed at /dev/null so that the interpreter's last flush does not fail again (Python's documented
    way, "Note on SIGPIPE"), and the exit status still gives the verdict."""
    try:
        print(report, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def context(config: DoctorConfig, environ: Mapping[str, str], source: NodeSource,
            driver: str = DEVICE_PLUGIN) -> Context:
    """Read NVML (or the simulation) for the checks that ask it, and open the API when credentials exist. A
    simulated node given no --host-root is checked in the simulation's own tree, which has no host files."""
    from gfd.discovery import nvml
    from gfd.discovery.errors import DiscoveryError, NvmlUnavailable

    simulated = source.simulation is not None
    host_files = not simulated or "host_root" in config.explicit
    dra = driver == DRA
    c = Context(host_root=config.host_root if host_files else source.host_root,
                cdi=any(s.startswith("cdi-") for s in config.device_list_strategy),
                cdi_cri="cdi-cri" in config.device_list_strategy, driver=driver,
                dra_registrar_dir=config.kubelet_registrar_directory_path,
                dra_plugins_dir=config.kubelet_plugins_directory_path,
                cdi_spec_dir=config.cdi_root if dra else config.cdi_spec_dir,
                device_id_strategy=config.device_id_strategy,
                device_plugins_dir=os.path.dirname(config.kubelet_socket or common.KUBELET_SOCKET.default),
                node_feature_api=bool(config.use_node_feature_api),
                runtime_class=config.runtime_class, node_name=config.node_name, features_dir=config.features_dir,
                driver_root=config.container_driver_root, simulated=config.simulate if simulated else "",
                host_files=host_files)
    try:
        source.open()
        if not simulated:
            c.nvml_library = nvml.locate_library(config.container_driver_root) or ""
        c.model = source.read()
        c.pending = nvml.pending_states(c.model.gpus)
    except DiscoveryError as e:
        c.nvml_error = source.init_failure(e) if isinstance(e, NvmlUnavailable) else str(e)
    finally:
        source.close_nvml()
    c.cluster = _cluster(config, environ)
    return c


def _cluster(config: DoctorConfig, environ: Mapping[str, str]) -> Cluster | None:
    if not config.kubeconfig and "KUBERNETES_SERVICE_HOST" not in environ:
        return None
    try:
        return Cluster(connect(config.kubeconfig, "gfd-doctor", timeout=API_TIMEOUT))
    except CredentialsError:  # unreadable credentials: the API checks say skipped
        return None
