"""Simulated telemetry: what a GPU's sensors and counters read, as time patterns a profile can set.

A profile's `telemetry:` maps a key below to a number or a pattern: `{constant: v}`, `{ramp: {from, to,
period_s}}` (sawtooth), `{sine: {min, max, period_s}}` or `{steps: {values: [...], every_s}}`. GPU i sees the
pattern shifted by i/count of a period, so the GPUs of a node differ. The defaults are an idle GPU; they are
arbitrary readings, not facts about a model (those live in models/ with their sources). A query a GPU does not
support is a fault in the profile (`faults: [{call: nvmlDeviceGetFieldValues, error: NOT_SUPPORTED}]`).

Units are NVML's: `*_util` and the GPM activities (`gr_engine_active`, `tensor_active`, `dram_active`) in %,
PCIe and NVLink traffic in KiB/s per direction (NVML's PCIe counters are KB/s, its NVLink counters KiB; GPM
reports the same PCIe traffic in MiB/s), power in W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gfd.config.errors import ConfigError, short

DEFAULTS: dict[str, float] = {
    "gpu_util": 0, "mem_util": 0, "enc_util": 0, "dec_util": 0, "fb_used_mib": 0, "gpu_temp": 34,
    "memory_temp": 32, "power_w": 60, "sm_clock": 210, "mem_clock": 1215, "pcie_replay": 0,
    "ecc_sbe": 0, "ecc_dbe": 0, "remapped_correctable": 0, "remapped_uncorrectable": 0, "remap_pending": 0,
    "remap_failure": 0, "nvlink_kib_per_s": 0, "pcie_tx_kib_per_s": 0, "pcie_rx_kib_per_s": 0,
    "gr_engine_active": 0, "tensor_active": 0, "dram_active": 0,
}
PATTERNS = ("constant", "ramp", "sine", "steps")


@dataclass(frozen=True)
class Pattern:
    kind: str
    args: dict[str, Any]

    def at(self, t: float, phase: float) -> float:
        a = self.args
        if self.kind == "constant":
            return float(a["value"])
        period = float(a.get("period_s") or a.get("every_s") or 1.0)
        x = (t / period + phase) % 1.0
        if self.kind == "ramp":
            return float(a["from"]) + (float(a["to"]) - float(a["from"])) * x
        if self.kind == "sine":
            low, high = float(a["min"]), float(a["max"])
            return low + (high - low) * (1 + math.sin(2 * math.pi * x)) / 2
        values = [float(v) for v in a["values"]]  # steps: each value for `every_s`, then the next
        return values[int(t / period + phase * len(values)) % len(values)]


def parse_telemetry(raw: Any, src: str) -> dict[str, Pattern]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(src, "telemetry", "expected a mapping", ", ".join(DEFAULTS))
    patterns = {key: Pattern("constant", {"value": value}) for key, value in DEFAULTS.items()}
    for key, value in raw.items():
        if key not in DEFAULTS:
            raise ConfigError(src, f"telemetry.{short(key)}", "unknown reading", ", ".join(DEFAULTS))
        patterns[key] = _pattern(value, f"telemetry.{key}", src)
    return patterns


def _pattern(value: Any, field_name: str, src: str) -> Pattern:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Pattern("constant", {"value": value})
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in PATTERNS:
        raise ConfigError(src, field_name, f"not a number or a pattern: {short(value)}", ", ".join(PATTERNS))
    kind, args = next(iter(value.items()))
    needed = {"constant": {"value"}, "ramp": {"from", "to", "period_s"}, "sine": {"min", "max", "period_s"},
              "steps": {"values", "every_s"}}[kind]
    if kind == "constant" and not isinstance(args, dict):
        args = {"value": args}
    if not isinstance(args, dict) or set(args) != needed:
        raise ConfigError(src, f"{field_name}.{kind}", f"expected the keys {sorted(needed)}", ", ".join(sorted(needed)))
    pattern = Pattern(kind, args)
    try:
        period = float(args["period_s"] if "period_s" in args else args.get("every_s", 1))
        pattern.at(0.0, 0.0)
    except (TypeError, ValueError, IndexError, ZeroDivisionError, KeyError) as e:
        raise ConfigError(src, f"{field_name}.{kind}", f"not numbers: {short(args)}",
                          ", ".join(sorted(needed))) from e
    if not period > 0:
        raise ConfigError(src, f"{field_name}.{kind}", "the period must be positive", "a number of seconds > 0")
    return pattern
