"""GPU telemetry read through NVML, under dcgm-exporter's metric names (its default counters CSV,
`etc/default-counters.csv`, and DCGM's field list `dcgm_fields.h`): one table says, per metric, the NVML
call, the unit conversion and the Prometheus type, so the exporter, the README and the tests share it.

A query a GPU does not support (NOT_SUPPORTED, FUNCTION_NOT_FOUND) is left out for that GPU; any other
failure leaves the value out of that sample; GPU_IS_LOST raises GpuLost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pynvml

from gfd.discovery.errors import GpuLost
from gfd.discovery.nvml import NVMLError, error_name, translated


@dataclass(frozen=True)
class Field:
    name: str  # dcgm-exporter's
    kind: str  # "gauge" or "counter"
    unit: str
    call: str  # the NVML function, for the README and the logs
    read: Callable[[Any], float]
    mig: bool = False  # also read on MIG device handles


def _fb(part: str) -> Callable[[Any], float]:
    return lambda h: getattr(pynvml.nvmlDeviceGetMemoryInfo(h), part) / (1 << 20)


def _field_value(field_id: int, member: str) -> Callable[[Any], float]:
    """One NVML field value (nvmlDeviceGetFieldValues); its own return code is the answer for that field."""
    def read(handle: Any) -> float:
        (value,) = pynvml.nvmlDeviceGetFieldValues(handle, [field_id])
        if value.nvmlReturn != pynvml.NVML_SUCCESS:
            raise pynvml.NVMLError(value.nvmlReturn)
        return float(getattr(value.value, member))

    return read


def _ecc(kind: int) -> Callable[[Any], float]:
    return lambda h: pynvml.nvmlDeviceGetTotalEccErrors(h, kind, pynvml.NVML_VOLATILE_ECC)


FIELDS: tuple[Field, ...] = (
    Field("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", "nvmlDeviceGetUtilizationRates",
          lambda h: pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
    Field("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", "nvmlDeviceGetUtilizationRates",
          lambda h: pynvml.nvmlDeviceGetUtilizationRates(h).memory),
    Field("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).", "nvmlDeviceGetEncoderUtilization",
          lambda h: pynvml.nvmlDeviceGetEncoderUtilization(h)[0]),
    Field("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).", "nvmlDeviceGetDecoderUtilization",
          lambda h: pynvml.nvmlDeviceGetDecoderUtilization(h)[0]),
    Field("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", "nvmlDeviceGetMemoryInfo",
          _fb("free"), mig=True),
    Field("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", "nvmlDeviceGetMemoryInfo",
          _fb("used"), mig=True),
    Field("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (in MiB).", "nvmlDeviceGetMemoryInfo",
          _fb("total"), mig=True),
    Field("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", "nvmlDeviceGetTemperature",
          lambda h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
    Field("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).",
          "nvmlDeviceGetFieldValues(NVML_FI_DEV_MEMORY_TEMP)", _field_value(pynvml.NVML_FI_DEV_MEMORY_TEMP, "uiVal")),
    Field("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", "nvmlDeviceGetPowerUsage",
          lambda h: pynvml.nvmlDeviceGetPowerUsage(h) / 1000),
    Field("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ).",
          "nvmlDeviceGetTotalEnergyConsumption", pynvml.nvmlDeviceGetTotalEnergyConsumption),
    Field("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", "nvmlDeviceGetClockInfo",
          lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
    Field("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", "nvmlDeviceGetClockInfo",
          lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)),
    Field("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.",
          "nvmlDeviceGetPcieReplayCounter", pynvml.nvmlDeviceGetPcieReplayCounter),
    Field("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "Total number of single-bit volatile ECC errors.",
          "nvmlDeviceGetTotalEccErrors", _ecc(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED)),
    Field("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Total number of double-bit volatile ECC errors.",
          "nvmlDeviceGetTotalEccErrors", _ecc(pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)),
    Field("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for correctable errors.",
          "nvmlDeviceGetRemappedRows", lambda h: pynvml.nvmlDeviceGetRemappedRows(h)[0]),
    Field("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter",
          "Number of remapped rows for uncorrectable errors.", "nvmlDeviceGetRemappedRows",
          lambda h: pynvml.nvmlDeviceGetRemappedRows(h)[1]),
    Field("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed.",
          "nvmlDeviceGetRemappedRows", lambda h: pynvml.nvmlDeviceGetRemappedRows(h)[3]),
    Field("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter",
          "Total number of NVLink bandwidth counters for all lanes.",
          "nvmlDeviceGetFieldValues(NVML_FI_DEV_NVLINK_BANDWIDTH_C0_TOTAL)",
          _field_value(pynvml.NVML_FI_DEV_NVLINK_BANDWIDTH_C0_TOTAL, "ullVal")),
)
UNSUPPORTED = (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)


@dataclass(frozen=True)
class Sample:
    values: dict[str, float]  # field name -> value, for the fields that answered
    unsupported: frozenset[str]  # fields the device does not support
    errors: dict[str, str]  # field name -> NVML error name, for other failures


def mig_handle(gpu: Any, index: int) -> Any:
    """DiscoveryError (GpuLost when the GPU is lost) for NVML's refusal."""
    try:
        return pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, index)
    except pynvml.NVMLError_GpuIsLost as e:
        raise GpuLost("nvmlDeviceGetMigDeviceHandleByIndex", e.value) from e
    except NVMLError as e:
        raise translated(e, "nvmlDeviceGetMigDeviceHandleByIndex", f"error getting MIG device {index}") from e


def sample(handle: Any, mig: bool = False) -> Sample:
    values: dict[str, float] = {}
    unsupported = set()
    errors = {}
    for field in FIELDS:
        if mig and not field.mig:
            continue
        try:
            values[field.name] = float(field.read(handle))
        except NVMLError as e:
            if isinstance(e, pynvml.NVMLError_GpuIsLost):
                raise GpuLost(field.call, e.value) from e
            if getattr(e, "value", None) in UNSUPPORTED:
                unsupported.add(field.name)
            else:
                errors[field.name] = error_name(e)
    return Sample(values, frozenset(unsupported), errors)
