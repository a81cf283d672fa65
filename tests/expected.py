"""Expected label blocks, written from shared/reference/gfd-labels.md (not from our code)."""

from __future__ import annotations


def versions(driver: str, cuda: str) -> dict[str, str]:
    parts = driver.split(".")
    major, minor, rev = parts[0], parts[1], parts[2] if len(parts) == 3 else ""
    cmaj, cmin = cuda.split(".")
    d = "nvidia.com/cuda."
    return {
        d + "driver.major": major, d + "driver.minor": minor, d + "driver.rev": rev,
        d + "driver-version.major": major, d + "driver-version.minor": minor,
        d + "driver-version.revision": rev, d + "driver-version.full": driver,
        d + "runtime.major": cmaj, d + "runtime.minor": cmin,
        d + "runtime-version.major": cmaj, d + "runtime-version.minor": cmin,
        d + "runtime-version.full": cuda,
    }


def resource(key: str, product: str, count: int, replicas: int = 1, strategy: str = "none",
             memory: int | None = None) -> dict[str, str]:
    p = f"nvidia.com/{key}."
    out = {p + "product": product, p + "count": str(count), p + "replicas": str(replicas),
           p + "sharing-strategy": strategy}
    if memory is not None:
        out[p + "memory"] = str(memory)
    return out


def compute(major: int, minor: int, family: str) -> dict[str, str]:
    return {"nvidia.com/gpu.compute.major": str(major), "nvidia.com/gpu.compute.minor": str(minor),
            "nvidia.com/gpu.family": family}


def mig_attributes(key: str, memory: int, sm: int, gi: int, ci: int, copy: int, dec: int, enc: int, jpeg: int,
                   ofa: int) -> dict[str, str]:
    p = f"nvidia.com/{key}."
    return {p + "memory": str(memory), p + "multiprocessors": str(sm), p + "slices.gi": str(gi),
            p + "slices.ci": str(ci), p + "engines.copy": str(copy), p + "engines.decoder": str(dec),
            p + "engines.encoder": str(enc), p + "engines.jpeg": str(jpeg), p + "engines.ofa": str(ofa)}


def flags(mig_capable: bool, mps_capable: bool = False, mode: str = "compute", machine: str | None = None,
          vgpu: bool | None = False, strategy: str | None = None) -> dict[str, str]:
    out = {"nvidia.com/mig.capable": str(mig_capable).lower(), "nvidia.com/mps.capable": str(mps_capable).lower(),
           "nvidia.com/gpu.mode": mode}
    if machine is not None:
        out["nvidia.com/gpu.machine"] = machine
    if vgpu is not None:
        out["nvidia.com/vgpu.present"] = str(vgpu).lower()
    if strategy is not None:
        out["nvidia.com/mig.strategy"] = strategy
    return out
