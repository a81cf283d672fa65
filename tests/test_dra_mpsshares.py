"""plugin/dra/mpsshares.py: the MPS daemons of enforced memory shares, one per GPU, against the stand-in
`nvidia-cuda-mps-control` (tests/mps/) and the simulator's NVML compute modes: started on demand, what a claim's
containers get, stopped with the GPU's last share, taken over after a restart of the plugin (and a daemon nothing
needs any more stopped), and a daemon that dies started again with its GPU reported unhealthy meanwhile."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import plugin.mps.daemon as daemon_module
from gfd.model import Gpu
from plugin.cdi.driver import DriverFiles
from plugin.cdi.spec import IPC_OPTIONS, Mount
from plugin.dra.mpsshares import MpsShares, find_program, leftovers
from plugin.dra.shares import ShareLimits
from plugin.mps import MpsError, supervision
from plugin.mps.control import PROBE, ControlError
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


class Clock:
    """Supervision's time, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shares(root: MpsRoot, gpus: tuple[Gpu, ...], health: Health, clock: Clock | None = None) -> MpsShares:
    """A plugin process's view (each call: a new process, as after a restart)."""
    return MpsShares(HOST_ROOT, root, gpus, "", {}, health, clock or Clock())


def kill(root: MpsRoot, uuid: str) -> int:
    """The GPU's daemon and its servers killed (as a crash would); its PID."""
    pid = standin.daemon_pid(Path(root.pipe_dir(uuid)))
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    standin.wait_gone(pid)
    return pid


@pytest.fixture
def refused(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """NVML refuses EXCLUSIVE_PROCESS (e.g. a context is open) until the test empties the list; each refusal
    recorded in it."""
    real = daemon_module._set_compute_mode
    refusing = ["refusing"]

    def set_mode(gpu: Gpu, mode: str) -> None:
        if mode == "EXCLUSIVE_PROCESS" and refusing:
            refusing.append(gpu.uuid)
            raise MpsError("nvmlDeviceSetComputeMode: In use by another client")
        real(gpu, mode)

    monkeypatch.setattr(daemon_module, "_set_compute_mode", set_mode)
    yield refusing


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
    dead = kill(root, uuid)
    for _ in range(supervision.THRESHOLD - 1):  # one failed probe is not enough
        mps.check()
    assert standin.daemon_pid(Path(root.pipe_dir(uuid))) == dead and health.told == []
    mps.check()
    new = standin.daemon_pid(Path(root.pipe_dir(uuid)))
    assert new not in (None, dead)
    assert [(u, r is not None) for u, r in health.told] == [(uuid, True), (uuid, False)]
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


def test_a_share_prepared_after_a_failed_restart_is_not_told_its_daemon_runs(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of issue 24: supervision keeps a daemon that could not be started again in `_daemons`, so `ensure`
    answers as if it ran. A claim prepared then gets the MPS env and a pipe directory with no daemon behind it, and
    its CUDA runs without MPS, unlimited (NVIDIA's MPS guide: a client that cannot reach the daemon runs without
    MPS). A restart that fails leaves the GPU in EXCLUSIVE_PROCESS: the running shares' processes must not go on
    outside MPS, without their limits, on a DEFAULT GPU."""
    sim, gpus = node
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
    for _ in range(supervision.THRESHOLD):
        mps.check()  # the restart fails; the GPU is reported down
    assert health.down() == [uuid]
    assert modes(sim)[0] == EXCLUSIVE_PROCESS
    monkeypatch.setattr(daemon_module, "_set_compute_mode", real)
    mps.ensure(uuid)  # a new share of this GPU is prepared before the next supervision round
    try:
        pid = standin.daemon_pid(Path(root.pipe_dir(uuid)))
        assert pid is not None and not standin.gone(pid), "ensure() returned, but no MPS daemon serves the GPU"
    finally:
        mps.release(uuid)


def test_a_share_is_not_given_a_dead_daemon_before_supervision_noticed(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]], refused: list[str]) -> None:
    """Review of issue 24, MUST 3: between two checks, a new share of a GPU whose daemon died gets a new one at
    once, or the claim fails with one line (the kubelet retries it); never a pipe directory with nothing behind."""
    _, gpus = node
    health = Health()
    mps = shares(root, gpus, health)
    uuid = gpus[0].uuid
    refused.clear()
    mps.ensure(uuid)
    dead = kill(root, uuid)
    refused.append("refusing")
    with pytest.raises(MpsError, match=f"^the MPS daemon of {uuid} does not serve \\(the MPS control daemon is not "
                                       "running\\) and did not start again: nvmlDeviceSetComputeMode: In use"):
        mps.ensure(uuid)
    assert health.down() == [uuid]
    refused.clear()
    mps.ensure(uuid)  # the kubelet's retry
    try:
        new = standin.daemon_pid(Path(root.pipe_dir(uuid)))
        assert new not in (None, dead) and not standin.gone(new) and health.told[-1] == (uuid, None)
    finally:
        mps.release(uuid)


def test_a_stalled_daemon_keeps_its_clients_until_it_stays_unanswering_past_the_threshold(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of issue 24, MUST 8: a control daemon that runs but does not answer (stopped here with SIGSTOP) is
    restarted, its MPS servers killed with it, only after THRESHOLD unanswered queries in a row; one that answers
    again before keeps its servers. Each change is logged once."""
    monkeypatch.setattr(supervision, "PROBE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(daemon_module, "QUIT_S", 0.3)
    monkeypatch.setattr(daemon_module, "TERM_S", 0.3)
    _, gpus = node
    health, clock = Health(), Clock()
    mps = shares(root, gpus, health, clock)
    uuid = gpus[0].uuid
    mps.ensure(uuid)
    control = daemon_module.MpsDaemon.for_gpu(root, gpus[0]).control
    control.send("start_server -uid 0")  # a client's server
    (server,) = (int(p) for p in control.send("get_server_list").split())
    stalled = standin.daemon_pid(Path(root.pipe_dir(uuid)))
    assert stalled is not None
    try:
        with capture_logs() as logs:
            os.kill(stalled, signal.SIGSTOP)
            clock.now += supervision.ANSWER_EVERY_S  # the next check queries it
            for _ in range(supervision.THRESHOLD - 1):
                mps.check()
            os.kill(stalled, signal.SIGCONT)
            mps.check()  # answers again: the count starts again
            assert not standin.gone(server) and health.told == []
            os.kill(stalled, signal.SIGSTOP)
            clock.now += supervision.ANSWER_EVERY_S
            for _ in range(supervision.THRESHOLD - 1):
                mps.check()
            assert not standin.gone(server) and health.told == []
            mps.check()
        assert standin.gone(server) and standin.gone(stalled)
        new = standin.daemon_pid(Path(root.pipe_dir(uuid)))
        assert new not in (None, stalled) and [r is None for _, r in health.told] == [False, True]
        changes = ["MPS daemon not answering", "MPS daemon answers again", "MPS daemon not answering",
                   "MPS daemon not serving; starting it again", "MPS daemon serving again"]
        assert [e["event"] for e in logs if e["event"] in changes] == changes
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stalled, signal.SIGCONT)
        mps.release(uuid)


def test_a_restart_that_keeps_failing_is_backed_off_and_logged_once(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]], refused: list[str]) -> None:
    """Review of issue 24, MUST 8: checked every second for 10 simulated minutes, a daemon that cannot start
    again is tried about 10 to 30 times (capped exponential backoff), not 600; one error line, not one a try."""
    sim, gpus = node
    health, clock = Health(), Clock()
    mps = shares(root, gpus, health, clock)
    uuid = gpus[0].uuid
    refused.clear()
    mps.ensure(uuid)
    kill(root, uuid)
    refused.append("refusing")
    with capture_logs() as logs:
        for _ in range(600):
            mps.check()
            clock.now += supervision.CHECK_S
        attempts = len(refused) - 1
        # Delays of 1, 2, 4 ... s, then RESTART_CAP_S, each jittered into [d/2, d].
        assert 600 / supervision.RESTART_CAP_S <= attempts <= 600 / (supervision.RESTART_CAP_S / 2) + 8
        # Kept while it cannot serve: the shares' processes must not run outside MPS on a DEFAULT GPU.
        assert health.down() == [uuid] and modes(sim)[0] == EXCLUSIVE_PROCESS
        refused.clear()  # NVML takes the mode again
        clock.now += supervision.RESTART_CAP_S
        mps.check()
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert errors == ["MPS daemon not serving; starting it again", "MPS daemon did not start; retrying with backoff"]
    assert health.told[-1] == (uuid, None) and modes(sim)[0] == EXCLUSIVE_PROCESS
    mps.release(uuid)


def test_supervision_queries_a_daemon_once_a_minute_and_leaves_its_queries_out_of_our_log(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    """Review of issue 24, SHOULD 16: checks each second look at the daemon's process and socket; only one a
    minute sends it a command (a `Cmd:` line in its log on tmpfs), and that line is not copied into ours."""
    _, gpus = node
    clock = Clock()
    mps = shares(root, gpus, Health(), clock)
    uuid = gpus[0].uuid
    log_dir = Path(root.log_dir(uuid))
    with capture_logs() as logs:
        mps.ensure(uuid)
        for _ in range(int(supervision.ANSWER_EVERY_S) * 2 + 1):  # a check at each second of two minutes
            mps.check()
            clock.now += supervision.CHECK_S
        assert standin.commands(log_dir).count(PROBE) == 2
        mps.release(uuid)  # its log followed to the end
    copied = [e["line"] for e in logs if e["event"] == "mps"]
    assert any("Cmd:set_default_active_thread_percentage 100" in line for line in copied)
    assert not [line for line in copied if PROBE in line]


def test_leftover_daemons_are_found_and_stopped_when_no_share_needs_them(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    """Review of issue 24, SHOULD 10: a daemon a crash left (its directory under the MPS root) is found whatever
    the enforcement setting, and a start whose checkpoint names no enforced share stops it, its GPU in DEFAULT."""
    sim, gpus = node
    first = shares(root, gpus, Health())
    first.ensure(gpus[3].uuid)
    pid = standin.daemon_pid(Path(root.pipe_dir(gpus[3].uuid)))
    first.detach()
    assert leftovers(root.path, [g.uuid for g in gpus]) == [gpus[3].uuid] and pid is not None
    assert leftovers(str(Path(root.path, "absent")), [g.uuid for g in gpus]) == []
    shares(root, gpus, Health()).reconcile(set())
    assert standin.gone(pid) and modes(sim) == [DEFAULT] * 8
    assert leftovers(root.path, [g.uuid for g in gpus]) == []
