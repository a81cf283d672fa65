"""What discovery raises: one hierarchy for NVML and sysfs failures alike.

NVML's answer is translated once, where pynvml is called (gfd/discovery/nvml.py, telemetry.py,
events.py), and kept as data: `call`, `error` (its name) and `code` (its number), never parsed back out of
a message. No pynvml.NVMLError leaves gfd/discovery.
"""

from __future__ import annotations


class DiscoveryError(Exception):
    """Reading the node failed (upstream treats it as fatal for the labelling pass). `call` is the NVML
    function that failed, `error` NVML's answer by name (`ERROR_UNKNOWN`) and `code` its number
    (nvml.h's nvmlReturn_t); "" and None for a failure that is not NVML's (a sysfs file, a version string
    that is not one)."""

    def __init__(self, message: str, call: str = "", error: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.call, self.error, self.code = call, error, code


class NvmlUnavailable(DiscoveryError):
    """The NVML library is missing or refused to initialise; the message is the NVML error name."""

    @property
    def library_missing(self) -> bool:
        return self.error == "ERROR_LIBRARY_NOT_FOUND"


class GpuLost(DiscoveryError):
    """A per-GPU query answered NVML_ERROR_GPU_IS_LOST: the GPU is reported lost, the pass goes on."""

    def __init__(self, call: str, code: int | None = None) -> None:
        super().__init__(f"ERROR_GPU_IS_LOST in {call}", call, "ERROR_GPU_IS_LOST", code)
        self.uuid = ""  # when the GPU answered its UUID before it was lost


class WatchError(DiscoveryError):
    """Waiting for NVML events failed (not a timeout): upstream then marks every device unhealthy."""
