"""What discovery raises: one module for NVML and sysfs failures alike."""

from __future__ import annotations


class DiscoveryError(Exception):
    """A failure upstream treats as fatal for the labelling pass; `call` is the NVML function."""

    def __init__(self, message: str, call: str = "") -> None:
        super().__init__(message)
        self.call = call


class GpuLost(Exception):
    """A per-GPU query answered NVML_ERROR_GPU_IS_LOST: the GPU is reported lost, the pass goes on."""

    def __init__(self, call: str) -> None:
        super().__init__(call)
        self.call = call
        self.uuid = ""  # when the GPU answered its UUID before it was lost


class NvmlUnavailable(DiscoveryError):
    """The NVML library is missing or refused to initialise; the message is the NVML error name."""

    @property
    def library_missing(self) -> bool:
        return str(self) == "ERROR_LIBRARY_NOT_FOUND"
