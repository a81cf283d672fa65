"""plugin/dra/mpsshares.py: the MPS daemons of enforced memory shares, one per GPU, against the stand-in
`nvidia-cuda-mps-control` (tests/mps/) and the simulator's NVML compute modes: started on demand, what a claim's
containers get, stopped with the GPU's last share, taken over after a restart of the plugin (and a daemon nothing
needs any more stopped), and a daemon that dies started again with its GPU reported unhealthy meanwhile."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gfd.model import Gpu
from plugin.cdi.driver import DriverFiles
from plugin.cdi.spec import IPC_OPTIONS, Mount
from plugin.dra.mpsshares import MpsShares, find_program
from plugin.dra.shares import ShareLimits
from plugin.mps.control import ControlError
from plugin.mps.root import MpsRoot
from tests.mps import standin

EXCLUSIVE_PROCESS, DEFAULT = 3, 0  # nvml.h nvmlComputeMode_t
HOST_ROOT = "/run/nvidia/mps"  # the host's path, as CDI specs name it


class Health:
    """What the plugin's health feed is told, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str | None]] = []

    def __call__(self, uuid: str, reason: str | None) -> None:
        self.told.append((uuid, reason))

    def down(self) -> list[str]:
        return [uuid for uuid, reason in self.told if reason is not None]


@pytest.fixture
def root(mps_root: MpsRoot) -> MpsRoot:
    return mps_root


@pytest.fixture
def node(opened: Callable[[str], tuple[Any, tuple[Gpu, ...]]]) -> tuple[Any, tuple[Gpu, ...]]:
    return opened("dgx-h100")


def shares(root: MpsRoot, gpus: tuple[Gpu, ...], health: Health) -> MpsShares:
    """A plugin process's view (each call: a new process, as after a restart)."""
    return MpsShares(HOST_ROOT, root, gpus, "", {}, health)


def modes(sim: Any) -> list[int]:
    return [g.compute_mode for g in sim.node.gpus]


def test_a_gpus_daemon_starts_with_its_first_share_and_stops_with_its_last(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = node
    health = Health()
    mps = shares(root, gpus, health)
    mps.ensure(gpus[2].uuid)
    mps.ensure(gpus[2].uuid)  # a second share of the same GPU: the same daemon
    pipe = Path(root.pipe_dir(gpus[2].uuid))
    pid = standin.daemon_pid(pipe)
    assert mps.running() == [gpus[2].uuid] and pid is not None
    assert modes(sim) == [DEFAULT, DEFAULT, EXCLUSIVE_PROCESS] + [DEFAULT] * 5
    # Default limits: the whole GPU (a client that drops its own limits gets this much).
    assert standin.commands(Path(root.log_dir(gpus[2].uuid))) == [
        f"set_default_device_pinned_mem_limit 0 {gpus[2].memory_mib}M", "set_default_active_thread_percentage 100"]
    mps.release(gpus[2].uuid)
    assert standin.gone(pid) and modes(sim) == [DEFAULT] * 8 and mps.running() == []
    assert not Path(root.path, gpus[2].uuid).exists()  # nothing left for the next start to find
    assert health.down() == []


def test_a_claims_containers_get_the_pipe_their_limits_and_the_shared_memory(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    _, gpus = node
    mps = shares(root, gpus, Health())
    uuid = gpus[1].uuid
    mps.ensure(uuid)
    try:
        edits = mps.client_edits(uuid, ShareLimits(uuid, 30 * 1024, 25, True))
        assert edits.env == (f"CUDA_MPS_PIPE_DIRECTORY=/mps/{uuid}/pipe",
                             "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=30720M",  # device 0: the daemon serves one GPU
                             "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25")
        assert edits.mounts == (Mount(f"{HOST_ROOT}/{uuid}/pipe", f"/mps/{uuid}/pipe", IPC_OPTIONS),
                                Mount(f"{HOST_ROOT}/shm", "/dev/shm", IPC_OPTIONS))
        # A share that consumed no compute gets no thread limit (the daemon's default: all SMs).
        memory_only = mps.client_edits(uuid, ShareLimits(uuid, 4096, 0, True))
        assert [e.split("=", 1)[0] for e in memory_only.env] == ["CUDA_MPS_PIPE_DIRECTORY",
                                                                 "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]
    finally:
        mps.release(uuid)


def test_after_a_restart_a_running_daemon_is_adopted_and_one_no_share_needs_is_stopped(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = node
    first = shares(root, gpus, Health())
    for gpu in gpus[:2]:
        first.ensure(gpu.uuid)
    kept, unneeded = (standin.daemon_pid(Path(root.pipe_dir(g.uuid))) for g in gpus[:2])
    first.detach()  # the plugin stops; its daemons serve on
    assert kept is not None and unneeded is not None and not standin.gone(kept) and not standin.gone(unneeded)
    health = Health()
    second = shares(root, gpus, health)  # the next start: only GPU 0's shares are in the checkpoint
    second.reconcile({gpus[0].uuid})
    assert second.running() == [gpus[0].uuid]
    assert standin.daemon_pid(Path(root.pipe_dir(gpus[0].uuid))) == kept and not standin.gone(kept)
    assert standin.gone(unneeded) and modes(sim) == [EXCLUSIVE_PROCESS] + [DEFAULT] * 7
    assert "start_server" not in " ".join(standin.commands(Path(root.log_dir(gpus[0].uuid))))
    assert health.down() == []
    second.release(gpus[0].uuid)  # the adopted daemon stops as one this process started
    assert standin.gone(kept) and modes(sim) == [DEFAULT] * 8


def test_a_share_whose_daemon_died_with_the_plugin_gets_a_new_one_at_the_next_start(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = node
    first = shares(root, gpus, Health())
    first.ensure(gpus[5].uuid)
    dead = standin.daemon_pid(Path(root.pipe_dir(gpus[5].uuid)))
    first.detach()
    assert dead is not None
    os.killpg(dead, signal.SIGKILL)  # a container's processes end with it
    standin.wait_gone(dead)
    health = Health()
    second = shares(root, gpus, health)
    second.reconcile({gpus[5].uuid})
    new = standin.daemon_pid(Path(root.pipe_dir(gpus[5].uuid)))
    assert new not in (None, dead) and second.running() == [gpus[5].uuid]
    assert health.told == [(gpus[5].uuid, "not running after a restart of the plugin"), (gpus[5].uuid, None)]
    assert modes(sim)[5] == EXCLUSIVE_PROCESS
    second.release(gpus[5].uuid)


def test_a_daemon_that_dies_is_started_again_and_its_gpu_is_unhealthy_meanwhile(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    _, gpus = node
    health = Health()
    mps = shares(root, gpus, health)
    uuid = gpus[0].uuid
    mps.ensure(uuid)
    mps.check()
    assert health.down() == []
    dead = standin.daemon_pid(Path(root.pipe_dir(uuid)))
    assert dead is not None
    os.killpg(dead, signal.SIGKILL)
    standin.wait_gone(dead)
    mps.check()
    new = standin.daemon_pid(Path(root.pipe_dir(uuid)))
    assert new not in (None, dead)
    assert [(u, r is not None) for u, r in health.told[-2:]] == [(uuid, True), (uuid, False)]
    mps.release(uuid)


def test_a_released_daemon_is_not_started_again_by_supervision(root: MpsRoot,
                                                              node: tuple[Any, tuple[Gpu, ...]]) -> None:
    _, gpus = node
    health = Health()
    mps = shares(root, gpus, health)
    mps.ensure(gpus[0].uuid)
    mps.release(gpus[0].uuid)
    mps.check()
    assert mps.running() == [] and not Path(root.pipe_dir(gpus[0].uuid)).exists() and health.down() == []


def test_the_control_program_is_found_on_path_else_under_the_driver_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", standin.path_with_stand_in())
    files = DriverFiles("550.54.15", ("/usr/lib64/libcuda.so.550.54.15",), (),
                        ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-cuda-mps-control"), (), ())
    assert find_program(str(tmp_path), files) == (str(standin.STAND_IN / "nvidia-cuda-mps-control"), {})
    monkeypatch.setenv("PATH", "/nonexistent")
    program, env = find_program(str(tmp_path / "driver-root"), files)
    # The driver's: its MPS server beside it found first, its libraries loaded from the driver root.
    assert program == f"{tmp_path}/driver-root/usr/bin/nvidia-cuda-mps-control"
    assert env == {"PATH": f"{tmp_path}/driver-root/usr/bin:/nonexistent",
                   "LD_LIBRARY_PATH": f"{tmp_path}/driver-root/usr/lib64"}
    with pytest.raises(ControlError, match=r"nvidia-cuda-mps-control not found on PATH .*; nor under the driver root"):
        find_program(str(tmp_path), DriverFiles("550.54.15", (), (), ("/usr/bin/nvidia-smi",), (), ()))


@pytest.mark.xfail(strict=True, reason="review24: ensure() trusts a daemon whose supervised restart failed")
def test_a_share_prepared_after_a_failed_restart_is_not_told_its_daemon_runs(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of issue 24: supervision keeps a daemon that could not be started again in `_daemons`, so `ensure`
    answers as if it ran. A claim prepared then gets the MPS env and a pipe directory with no daemon behind it, and
    its CUDA runs without MPS, unlimited (NVIDIA's MPS guide: a client that cannot reach the daemon runs without
    MPS)."""
    import plugin.mps.daemon as daemon_module
    from plugin.mps import MpsError

    _, gpus = node
    health = Health()
    mps = shares(root, gpus, health)
    uuid = gpus[0].uuid
    mps.ensure(uuid)
    dead = standin.daemon_pid(Path(root.pipe_dir(uuid)))
    assert dead is not None
    os.killpg(dead, signal.SIGKILL)
    standin.wait_gone(dead)
    real = daemon_module._set_compute_mode

    def refusing(gpu: Gpu, mode: str) -> None:  # NVML refuses EXCLUSIVE_PROCESS once (e.g. a context is open)
        if mode == "EXCLUSIVE_PROCESS":
            raise MpsError("nvmlDeviceSetComputeMode: In use by another client")
        real(gpu, mode)

    monkeypatch.setattr(daemon_module, "_set_compute_mode", refusing)
    mps.check()  # the restart fails; the GPU is reported down
    assert health.down() == [uuid]
    monkeypatch.setattr(daemon_module, "_set_compute_mode", real)
    mps.ensure(uuid)  # a new share of this GPU is prepared before the next supervision round
    try:
        pid = standin.daemon_pid(Path(root.pipe_dir(uuid)))
        assert pid is not None and not standin.gone(pid), "ensure() returned, but no MPS daemon serves the GPU"
    finally:
        mps.release(uuid)
