"""Consumable shares (NVIDIA's `--consumable-shares`): which devices the scheduler may allocate to several
claims at once, and the capacity request policies that size each claim's share.

NVIDIA's shape (kubernetes-sigs/dra-driver-nvidia-gpu consumable_shares.go): every shareable device gets
`allowMultipleAllocations: true` and its `memory` capacity, rounded down to whole MiB, a request policy with
step 1Mi and max = that memory; `memory` gives a claim that names no amount the whole GPU (default = max,
min 1Mi); `unlimited` and `N` give it nothing (default 0, min 0), and `N` adds a `shares` capacity of N with
default 1. NVIDIA enforces none of it: the scheduler counts, nothing on the GPU holds a claim to its share.

Ours (`--share-enforcement=mps`, issue 24): memory shares are enforced by the GPU's MPS daemon
(plugin/dra/mpsshares.py), and a full GPU also gets a `compute` capacity, percent of its SMs, whose policy
(default 0) leaves a claim that names only memory, as claims written for NVIDIA's driver do, consuming no compute,
so such claims still pack. MIG devices are not shared under enforcement (README: MPS and MIG), and time-slicing
shares (`unlimited`, `N`) stay NVIDIA's: counted, not enforced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gfd.model import MIB

DISABLED = "disabled"
MEMORY = "memory"  # the capacity a share is sized by, and the mode (`--consumable-shares=memory`) that sizes it
UNLIMITED = "unlimited"
MODES = (DISABLED, MEMORY, UNLIMITED)
NO_ENFORCEMENT, MPS = "none", "mps"
ENFORCEMENTS = (NO_ENFORCEMENT, MPS)
COMPUTE = "compute"  # the capacity of an enforced share's SMs, in percent


@dataclass(frozen=True)
class ConsumableShares:
    """`mode` is disabled, memory or unlimited; `shares` is N for `--consumable-shares=N` (mode unlimited);
    `enforcement` is `--share-enforcement` (it holds only for memory shares: `enforced`)."""

    mode: str = DISABLED
    shares: int = 0
    enforcement: str = NO_ENFORCEMENT

    @property
    def enabled(self) -> bool:
        return self.mode != DISABLED

    @property
    def enforced(self) -> bool:
        """Memory shares held to their size by MPS."""
        return self.mode == MEMORY and self.enforcement == MPS

    def shareable(self, mig: bool, has_memory: bool) -> bool:
        """Whether a device is published for several claims at once. Under enforcement, only a full GPU whose
        memory is known: a share is sized by memory, and MPS is not offered on MIG devices here."""
        return self.enabled and (not self.enforced or (not mig and has_memory))

    @classmethod
    def parse(cls, text: str, enforcement: str = NO_ENFORCEMENT) -> ConsumableShares:
        """ValueError (NVIDIA's message) for anything but disabled, memory, unlimited or a positive integer."""
        value = text.strip()
        if value in MODES:
            return cls(value, enforcement=enforcement)
        if value.isdigit() and int(value) > 0:  # Go's strconv.Atoi: decimal digits only (a sign is refused here)
            return cls(UNLIMITED, int(value), enforcement)
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

    def compute_capacity(self) -> dict[str, Any] | None:
        """The `compute` capacity of an enforced share (percent of the GPU's SMs, whole percents), else None.
        Default 0: a claim that names no compute consumes none and gets no thread limit (without a policy, or
        with default 100, it would consume the whole GPU's and no second claim would fit beside it)."""
        if not self.enforced:
            return None
        return {"value": "100", "requestPolicy": {
            "default": "0", "validRange": {"min": "0", "max": "100", "step": "1"}}}


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
