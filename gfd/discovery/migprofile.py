"""MIG profile names as go-nvlib builds them (`1g.5gb`, `1c.3g.20gb`, `1g.10gb+me`).

The tables are keyed by the NVML profile *index* (`NVML_GPU_INSTANCE_PROFILE_*`,
`NVML_COMPUTE_INSTANCE_PROFILE_*` in nvml.h), not by the driver's profile *ID* that
`nvmlGpuInstanceGetInfo().profileId` returns (on an A100 1g.5gb has index 0 but ID 19): the reader
maps an ID back to its index first, as go-nvlib does.
"""

from __future__ import annotations

import math

# NVML GPU-instance profile index -> slice count (nvml.h; go-nvlib nvlib/device/mig_profile.go).
GI_SLICES = {0: 1, 7: 1, 9: 1, 10: 1, 13: 1, 15: 1, 1: 2, 8: 2, 11: 2, 14: 2, 16: 2, 2: 3, 3: 4, 12: 4,
             6: 6, 4: 7, 5: 8}
# NVML compute-instance profile index -> slice count.
CI_SLICES = {0: 1, 7: 1, 1: 2, 2: 3, 3: 4, 6: 6, 4: 7, 8: 7, 5: 8}
_SUFFIX = {7: "+me", 8: "+me", 15: "+me.all", 16: "+me.all", 10: "+gfx", 11: "+gfx", 12: "+gfx",
           13: "-me", 14: "-me"}


class MigProfileError(ValueError):
    pass


def memory_gb(mig_memory_mib: int, parent_memory_mib: int) -> int:
    """go-nvlib's GB figure: the memory fraction rounded up to eighths, times the parent's GiB."""
    parent_bytes = parent_memory_mib * 1024 * 1024
    fraction = math.ceil(mig_memory_mib * 1024 * 1024 / parent_bytes * 8) / 8
    total_gb = math.ceil(parent_bytes / 2**30)
    return math.floor(fraction * total_gb + 0.5)


def profile_name(gi_profile: int, ci_profile: int, mig_memory_mib: int, parent_memory_mib: int) -> str:
    """The name for a GPU-instance and compute-instance profile *index* pair."""
    if gi_profile not in GI_SLICES:
        raise MigProfileError(f"invalid GPU Instance Profile index: {gi_profile}")
    if ci_profile not in CI_SLICES:
        raise MigProfileError(f"invalid Compute Instance Profile index: {ci_profile}")
    g = GI_SLICES[gi_profile]
    c = CI_SLICES[ci_profile]
    gb = memory_gb(mig_memory_mib, parent_memory_mib)
    base = f"{g}g.{gb}gb" if c == g else f"{c}c.{g}g.{gb}gb"
    return base + _SUFFIX.get(gi_profile, "")
