"""Consumable shares (NVIDIA's `--consumable-shares`): which devices the scheduler may allocate to several
claims at once, and the capacity request policies that size each claim's share.

NVIDIA's shape (kubernetes-sigs/dra-driver-nvidia-gpu consumable_shares.go): every shareable device gets
`allowMultipleAllocations: true` and its `memory` capacity, rounded down to whole MiB, a request policy with
step 1Mi and max = that memory; `memory` gives a claim that names no amount the whole GPU (default = max,
min 1Mi); `unlimited` and `N` give it nothing (default 0, min 0), and `N` adds a `shares` capacity of N with
default 1. Memory-sized shares enforced by MPS (issue 24) extend this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DISABLED = "disabled"
MEMORY = "memory"
UNLIMITED = "unlimited"
MODES = (DISABLED, MEMORY, UNLIMITED)
MIB = 1024 * 1024


@dataclass(frozen=True)
class ConsumableShares:
    """`mode` is disabled, memory or unlimited; `shares` is N for `--consumable-shares=N` (mode unlimited)."""

    mode: str = DISABLED
    shares: int = 0

    @property
    def enabled(self) -> bool:
        return self.mode != DISABLED

    @classmethod
    def parse(cls, text: str) -> ConsumableShares:
        """ValueError (NVIDIA's message) for anything but disabled, memory, unlimited or a positive integer."""
        value = text.strip()
        if value in MODES:
            return cls(value)
        if value.isdigit() and int(value) > 0:  # Go's strconv.Atoi: decimal digits only (a sign is refused here)
            return cls(UNLIMITED, int(value))
        raise ValueError(f'invalid value for --consumable-shares: "{text}" (must be \'disabled\', \'memory\', '
                         "'unlimited', or a positive integer)")

    def memory_capacity(self, memory_bytes: int) -> dict[str, Any]:
        """The `memory` capacity of a shareable device of `memory_bytes` (a ResourceSlice capacity entry)."""
        whole = memory_bytes // MIB * MIB  # Max and default must be multiples of the step
        default, minimum = (whole, MIB) if self.mode == MEMORY else (0, 0)
        return {"value": quantity(whole), "requestPolicy": {
            "default": quantity(default),
            "validRange": {"min": quantity(minimum), "max": quantity(whole), "step": "1Mi"}}}

    def shares_capacity(self) -> dict[str, Any] | None:
        """The `shares` capacity of `--consumable-shares=N`, else None."""
        if not self.shares:
            return None
        return {"value": str(self.shares), "requestPolicy": {
            "default": "1", "validRange": {"min": "1", "max": str(self.shares), "step": "1"}}}


NOT_SHARED = ConsumableShares()


def quantity(count: int) -> str:
    """A byte count as the API server canonicalises it (BinarySI: the largest exact Ki/Mi/Gi/Ti/Pi/Ei suffix),
    so what we write reads back unchanged and change detection compares like with like."""
    if count == 0:
        return "0"
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = 1024 ** ("KMGTPE".index(suffix[0]) + 1)
        if count % unit == 0:
            return f"{count // unit}{suffix}"
    return str(count)
