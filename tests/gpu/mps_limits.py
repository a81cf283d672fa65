"""The real-GPU check of memory shares (issue 24 item 6), for a machine with an NVIDIA GPU (Volta or newer), its
driver (`libcuda.so.1`, NVML, `nvidia-cuda-mps-control`) and root. Not part of the test run: no CI machine has a GPU.

    sudo .venv/bin/python -m tests.gpu.mps_limits [--gpu 0] [--allocate-mib 1536] [--limits-mib 1024,2048]
    PATH=$PWD/tests/mps:$PATH .venv/bin/python -m tests.gpu.mps_limits --simulate dgx-h100   # a dry run, no GPU

It runs the DRA driver's own MPS path for one GPU (plugin/mps/daemon.py `MpsDaemon.for_gpu`: the GPU in
EXCLUSIVE_PROCESS, one control daemon, default limits the whole GPU) and, at the same time, one CUDA client per
limit with the environment a claim's CDI edits give its container (`client_environment`: the pipe directory and
`CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=<MiB>M`). Each client creates a context and asks `cuMemAlloc` for
`--allocate-mib`; NVIDIA's MPS documentation says an allocation over the client's limit fails with out of memory,
and that CUDA's own context memory counts against the limit. Expected with the defaults: the 1024 MiB client's
1536 MiB allocation fails (CUDA_ERROR_OUT_OF_MEMORY), the 2048 MiB client's succeeds. Then the daemon stops and the
GPU must be back in DEFAULT. One JSON document on stdout (each client's cuMemGetInfo before the allocation, NVML's
compute and MPS process lists with their used memory while both clients hold their contexts: what share telemetry
reads); exit 0 when every expectation held, 1 when one did not, 2 when the machine cannot run the check.
The CUDA driver API through ctypes (no toolkit needed: only the driver's library). The dry run (`--simulate`, the
MPS stand-in on PATH) runs everything but CUDA: its clients cannot load libcuda.so.1, so it ends with exit 1."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pynvml

from gfd import logs
from gfd.discovery.errors import DiscoveryError
from gfd.discovery.session import NodeSource
from plugin.mps import MpsError
from plugin.mps.daemon import MpsDaemon
from plugin.mps.root import MpsRoot

CUDA_SUCCESS, CUDA_ERROR_OUT_OF_MEMORY = 0, 2  # cuda.h CUresult
MIB = 1024 * 1024


def client(allocate_mib: int) -> int:
    """One MPS client: a context on device 0 (the daemon's only GPU), cuMemGetInfo, cuMemAlloc of `allocate_mib`;
    prints what happened as one JSON line, then holds its context until stdin closes."""
    result: dict[str, Any] = {"pid": os.getpid(), "limit": os.environ.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")}
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        print(json.dumps({**result, "error": str(e)}), flush=True)
        return 2

    def call(name: str, *args: Any) -> int:
        code = int(getattr(cuda, name)(*args))
        if code != CUDA_SUCCESS:
            text = ctypes.c_char_p()
            cuda.cuGetErrorName(code, ctypes.byref(text))
            result.setdefault("errors", {})[name] = f"{code} {(text.value or b'?').decode()}"
        return code

    device, context = ctypes.c_int(), ctypes.c_void_p()
    free, total, pointer = ctypes.c_size_t(), ctypes.c_size_t(), ctypes.c_uint64()
    if call("cuInit", 0) or call("cuDeviceGet", ctypes.byref(device), 0) or \
            call("cuCtxCreate_v2", ctypes.byref(context), 0, device):
        print(json.dumps(result), flush=True)
        return 2
    if call("cuMemGetInfo_v2", ctypes.byref(free), ctypes.byref(total)) == CUDA_SUCCESS:
        result["free_mib"], result["total_mib"] = free.value // MIB, total.value // MIB
    result["allocate"] = call("cuMemAlloc_v2", ctypes.byref(pointer), ctypes.c_size_t(allocate_mib * MIB))
    print(json.dumps(result), flush=True)
    sys.stdin.read()  # hold the context (and the allocation) while the parent reads NVML
    if result["allocate"] == CUDA_SUCCESS:
        call("cuMemFree_v2", pointer)
    call("cuCtxDestroy_v2", context)  # a clean exit: MPS does not support killing a client mid-work
    return 0


def processes(index: int) -> dict[str, Any]:
    """NVML's compute and MPS process lists of the GPU (PID and used memory in MiB), or NVML's error."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    found: dict[str, Any] = {}
    for name, query in (("compute", pynvml.nvmlDeviceGetComputeRunningProcesses),
                        ("mps", pynvml.nvmlDeviceGetMPSComputeRunningProcesses)):
        try:
            found[name] = [{"pid": p.pid, "used_mib": None if p.usedGpuMemory is None else p.usedGpuMemory // MIB}
                           for p in query(handle)]
        except (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError) as e:  # the latter: a driver without _v3
            found[name] = f"NVML: {e}"
    return found


def compute_mode(index: int) -> int:
    return int(pynvml.nvmlDeviceGetComputeMode(pynvml.nvmlDeviceGetHandleByIndex(index)))


def check(index: int, allocate_mib: int, limits_mib: list[int], simulate: str) -> int:
    if os.geteuid() != 0 and not simulate:
        print("needs root: the check sets the GPU's compute mode, as the DRA driver does", file=sys.stderr)
        return 2
    source = NodeSource("auto", simulate)
    try:
        source.open()
    except DiscoveryError as e:
        print(f"no NVML: {e}", file=sys.stderr)
        return 2
    gpu = next((g for g in source.read().gpus if g.index == index), None)
    if gpu is None:
        print(f"no GPU {index} on this machine", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"gpu": gpu.uuid, "name": gpu.name, "memory_mib": gpu.memory_mib,
                              "allocate_mib": allocate_mib}
    root = MpsRoot(tempfile.mkdtemp(prefix="mps-check-"))
    daemon = MpsDaemon.for_gpu(root, gpu)
    try:
        daemon.start()
    except MpsError as e:
        print(f"the MPS daemon did not start: {e}", file=sys.stderr)
        shutil.rmtree(root.path, ignore_errors=True)
        return 2
    clients: list[subprocess.Popen[str]] = []
    try:
        report["mode_while_shared"] = compute_mode(index)
        for limit in limits_mib:
            env = {**os.environ, **daemon.client_environment(root.pipe_dir(gpu.uuid), {gpu.uuid: limit})}
            clients.append(subprocess.Popen([sys.executable, "-m", "tests.gpu.mps_limits", "--client",
                                             str(allocate_mib)], env=env, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True))
        answers = [json.loads(c.stdout.readline() or "{}") for c in clients if c.stdout is not None]
        report["clients"] = [{"limit_mib": limit, **answer} for limit, answer in zip(limits_mib, answers, strict=True)]
        report["nvml"] = processes(index)
    finally:
        for c in clients:
            c.communicate("", timeout=30)
        report["daemon_stopped"] = daemon.stop()
        report["mode_after"] = compute_mode(index)
        shutil.rmtree(root.path, ignore_errors=True)
    expected = [CUDA_SUCCESS if allocate_mib < limit else CUDA_ERROR_OUT_OF_MEMORY for limit in limits_mib]
    report["held"] = {
        "allocations": [c.get("allocate") for c in report["clients"]] == expected,
        "exclusive_while_shared": report["mode_while_shared"] == pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS,
        "default_after": report["daemon_stopped"] and report["mode_after"] == pynvml.NVML_COMPUTEMODE_DEFAULT}
    print(json.dumps(report, indent=2))
    return 0 if all(report["held"].values()) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.mps_limits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", type=int, default=0, help="the GPU's index (default 0)")
    parser.add_argument("--allocate-mib", type=int, default=1536, help="what each client allocates (default 1536)")
    parser.add_argument("--limits-mib", default="1024,2048", help="one client per limit (default 1024,2048)")
    parser.add_argument("--simulate", default="", help="a dry run on a simulated node (a profile name)")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args(argv)
    if args.client is not None:
        return client(args.client)
    logs.configure()  # the driver code's log lines to stderr: stdout is the report
    return check(args.gpu, args.allocate_mib, [int(m) for m in args.limits_mib.split(",")], args.simulate)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
