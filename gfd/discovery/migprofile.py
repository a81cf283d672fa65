"""MIG profile names as go-nvlib builds them (`1g.5gb`, `1c.3g.20gb`, `1g.10gb+me`)."""

from __future__ import annotations

import math

# NVML GPU-instance profile id -> slice count (go-nvlib nvlib/device/mig_profile.go).
GI_SLICES = {0: 1, 7: 1, 9: 1, 10: 1, 13: 1, 15: 1, 1: 2, 8: 2, 11: 2, 14: 2, 16: 2, 2: 3, 3: 4, 12: 4, 6: 6,
             4: 7, 5: 8}
# NVML compute-instance profile id -> slice count.
CI_SLICES = {0: 1, 7: 1, 1: 2, 2: 3, 3: 4, 6: 6, 4: 7, 8: 7, 5: 8}
_SUFFIX = {7: "+me", 8: "+me", 15: "+me.all", 16: "+me.all", 10: "+gfx", 11: "+gfx", 12: "+gfx", 13: "-me",
           14: "-me"}


class MigProfileError(ValueError):
    pass


def memory_gb(mig_memory_mib: int, parent_memory_mib: int) -> int:
    """go-nvlib's GB figure: the memory fraction rounded up to eighths, times the parent's GiB."""
    parent_bytes = parent_memory_mib * 1024 * 1024
    fraction = math.ceil(mig_memory_mib * 1024 * 1024 / parent_bytes * 8) / 8
    total_gb = math.ceil(parent_bytes / 2**30)
    return math.floor(fraction * total_gb + 0.5)


def profile_name(gi_profile_id: int, ci_profile_id: int, mig_memory_mib: int, parent_memory_mib: int) -> str:
    if gi_profile_id not in GI_SLICES:
        raise MigProfileError(f"invalid GPU Instance Profile ID: {gi_profile_id}")
    if ci_profile_id not in CI_SLICES:
        raise MigProfileError(f"invalid Compute Instance Profile ID: {ci_profile_id}")
    g = GI_SLICES[gi_profile_id]
    c = CI_SLICES[ci_profile_id]
    gb = memory_gb(mig_memory_mib, parent_memory_mib)
    base = f"{g}g.{gb}gb" if c == g else f"{c}c.{g}g.{gb}gb"
    return base + _SUFFIX.get(gi_profile_id, "")
