"""Where the node's NVML comes from (the real library or a simulated profile), and one read of it."""

from __future__ import annotations

import structlog

from gfd.config import Config, ConfigError
from gfd.discovery import nvml
from gfd.discovery.errors import NvmlUnavailable
from gfd.discovery.node import read_node, read_vfio_node
from gfd.model import DeviceModel

log = structlog.get_logger("gfd.discovery")

SUPPORTED_STRATEGIES = ("auto", "nvml", "vfio")


class NodeSource:
    """Owns the NVML library choice for the process: real `libnvidia-ml.so.1`, or a simulation.

    Without --simulate nothing is installed: NVML comes from the driver root when one is mounted there
    (upstream's lookup), else pynvml's ordinary search, so any drop-in NVML works.
    """

    def __init__(self, discovery_strategy: str, simulate: str = "", machine_type_file: str = "",
                 driver_root: str = "") -> None:
        if discovery_strategy not in SUPPORTED_STRATEGIES:
            raise ConfigError(
                "option device-discovery-strategy", "deviceDiscoveryStrategy",
                f"'{discovery_strategy}' is not implemented yet", ", ".join(SUPPORTED_STRATEGIES),
            )
        self.strategy = discovery_strategy
        self.machine_type_file = machine_type_file
        self.driver_root = "" if simulate else driver_root
        self.simulation = None
        self.host_root = "/"
        self.reader: nvml.NvmlReader | None = None
        if simulate:
            from gfd.discovery.simulated.install import install
            from gfd.discovery.simulated.profiles import load_profile

            self.simulation = install(load_profile(simulate))
            self.host_root = self.simulation.host_root

    @classmethod
    def for_gfd(cls, config: Config) -> NodeSource:
        return cls(config.device_discovery_strategy, config.simulate, config.machine_type_file,
                   config.container_driver_root)

    @property
    def ready(self) -> bool:
        """NVML is open, or not needed (vfio reads sysfs only)."""
        return self.strategy == "vfio" or self.reader is not None

    def open(self) -> None:
        """Initialise NVML (NvmlUnavailable when it cannot be); caches start empty each time."""
        if self.strategy == "vfio":
            return
        library = nvml.init(self.driver_root)
        if self.simulation is None:
            log.info("NVML loaded", library=library)
        self.reader = nvml.NvmlReader()

    def read(self, topology: bool = False) -> DeviceModel:
        """Read the node; with NVML closed the model has no GPUs."""
        if self.strategy == "vfio":
            return read_vfio_node(self.host_root, self.machine_type_file)
        return read_node(self.reader, self.host_root, self.machine_type_file, topology)

    @property
    def failed_queries(self) -> tuple[tuple[str, str], ...]:
        """(NVML function, error) for every query of the last read that failed, fatal or not (for metrics:
        a diagnostic of the read, not a fact of the node, so not in the model)."""
        return tuple(self.reader.errors) if self.reader is not None else ()

    def close_nvml(self) -> None:
        """Shut NVML down (to open it again later in the same run); the source stays usable."""
        if self.reader is not None:
            self.reader = None
            nvml.shutdown()

    def close(self) -> None:
        """Done with the source: NVML shut down if open, a simulation removed."""
        self.close_nvml()
        if self.simulation is not None:
            self.simulation.close()
            self.simulation = None

    def __enter__(self) -> NodeSource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def init_failure(self, error: NvmlUnavailable) -> str:
        """Upstream's wording for an NVML that cannot be opened, by discovery strategy (scripts grep it), then
        in brackets what it means on this node and what to do."""
        if self.strategy == "auto" and error.library_missing:
            return f"failed to create resource manager: unsupported strategy auto ({error}: {self.explain(error)})"
        return f"error creating labeler: failed to initialize resource manager: {error} ({self.explain(error)})"

    def explain(self, error: NvmlUnavailable) -> str:
        """The likely cause of an NVML that cannot be opened and the remedy, in one clause."""
        if error.library_missing:
            where = (f"under the driver root {self.driver_root} (--driver-root-ctr-path) or "
                     if nvml.mounted_driver_root(self.driver_root) else "")
            return (f"no {nvml.LIBRARY} {where}on the library search path: no NVIDIA driver here, or its root not "
                    "mounted; `--simulate list` names simulated nodes to run on")
        return _NVML_INIT_CAUSES.get(error.error, "see `doctor` for the driver's state")


# What nvmlInit's other refusals mean on a Kubernetes node.
_NVML_INIT_CAUSES = {
    "ERROR_DRIVER_NOT_LOADED": "the NVIDIA kernel module is not loaded on this node",
    "ERROR_NO_PERMISSION": "no access to /dev/nvidia*: run the container with the NVIDIA runtime or privileged",
    "ERROR_LIB_RM_VERSION_MISMATCH": "the driver library and the loaded kernel module differ in version (a driver "
                                     "upgraded without a reboot)",
}
