"""plugin/mps as a library: one MPS control daemon per GPU (what the DRA driver's memory-sized shares start
on demand, issue 24) against the stand-in `nvidia-cuda-mps-control` (tests/mps/) and the simulator's NVML
compute modes; the bounds of talking to it and of following its logs (issue 20)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gfd.model import Gpu
from plugin.mps import MpsError
from plugin.mps import daemon as mps_daemon
from plugin.mps.control import ControlError
from plugin.mps.daemon import Limits, LogTail, MpsDaemon, stop_all
from plugin.mps.root import MpsRoot
from tests.mps import standin

EXCLUSIVE_PROCESS, DEFAULT = 3, 0  # nvml.h nvmlComputeMode_t


@pytest.fixture
def root(mps_root: MpsRoot) -> MpsRoot:
    return mps_root


@pytest.fixture
def node(opened: Callable[[str], tuple[Any, tuple[Gpu, ...]]]) -> tuple[Any, tuple[Gpu, ...]]:
    """An 8-GPU node (simulated DGX A100) with NVML open, as the DRA driver holds it."""
    return opened("dgx-a100")


def modes(sim: Any) -> list[int]:
    return [g.compute_mode for g in sim.node.gpus]


def started_server(daemon: MpsDaemon) -> int:
    daemon.control.send("start_server -uid 0")
    (server,) = (int(p) for p in daemon.control.send("get_server_list").split())
    return server


def test_a_daemon_for_one_gpu_serves_that_gpu_alone_and_gives_it_back(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = node
    gpu = gpus[3]
    daemon = MpsDaemon.for_gpu(root, gpu)
    assert daemon.name == gpu.uuid and daemon.not_ready() is not None
    daemon.start()
    pid = standin.daemon_pid(Path(daemon.pipe_dir))
    try:
        assert modes(sim) == [DEFAULT] * 3 + [EXCLUSIVE_PROCESS] + [DEFAULT] * 4
        assert daemon.pipe_dir == f"{root.path}/{gpu.uuid}/pipe" and Path(daemon.pipe_dir, "control").exists()
        log_dir = Path(daemon.log_dir)
        assert f"CUDA_VISIBLE_DEVICES={gpu.uuid}\n" in standin.control_log(log_dir)
        # Default limits: the whole GPU, numbered 0 as the daemon sees it.
        assert standin.commands(log_dir) == [f"set_default_device_pinned_mem_limit 0 {gpu.memory_mib}M",
                                             "set_default_active_thread_percentage 100"]
        assert daemon.not_ready() is None and Path(root.started(gpu.uuid)).exists()
        daemon.start()  # started already: nothing to do
        assert standin.daemon_pid(Path(daemon.pipe_dir)) == pid and daemon.not_ready() is None
    finally:
        assert daemon.stop() is True
    assert modes(sim) == [DEFAULT] * 8
    assert pid is not None and standin.gone(pid)
    assert daemon.not_ready() == "the MPS control daemon has not signalled readiness"


def test_daemons_of_two_gpus_are_independent(root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = node
    first, second = MpsDaemon.for_gpu(root, gpus[0]), MpsDaemon.for_gpu(root, gpus[1], Limits(50, {}))
    first.start()
    second.start()
    try:
        assert standin.daemon_pid(Path(first.pipe_dir)) != standin.daemon_pid(Path(second.pipe_dir))
        assert standin.commands(Path(second.log_dir)) == ["set_default_active_thread_percentage 50"]
        assert first.stop() is True
        assert modes(sim)[:2] == [DEFAULT, EXCLUSIVE_PROCESS] and second.not_ready() is None
    finally:
        second.stop()
    assert modes(sim) == [DEFAULT] * 8


def test_stopping_daemons_that_do_not_quit_kills_them_and_restores_every_gpu_at_once(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: `quit` never answered, SIGTERM ignored (daemon and server): SIGKILL to each daemon's process
    group; 8 daemons stopped together take as long as one (STOP_BOUND_S), not 8 times that."""
    sim, gpus = node
    monkeypatch.setenv(standin.FAULTS, "quit-hangs,ignores-sigterm")
    daemons = [MpsDaemon.for_gpu(root, g) for g in gpus]
    for d in daemons:
        d.start()
    pids = [standin.daemon_pid(Path(d.pipe_dir)) for d in daemons]
    servers = [started_server(d) for d in daemons]
    assert modes(sim) == [EXCLUSIVE_PROCESS] * 8

    with capture_logs() as logs:
        began = time.monotonic()
        assert stop_all(daemons) is True
        took = time.monotonic() - began
    assert took < mps_daemon.STOP_BOUND_S
    assert modes(sim) == [DEFAULT] * 8
    assert all(p is not None and standin.gone(p) for p in pids) and all(standin.gone(s) for s in servers)
    signals = [e["signal"] for e in logs if e["event"] == "Stopping the MPS daemon with a signal"]
    assert sorted(signals) == ["SIGKILL"] * 8 + ["SIGTERM"] * 8


def test_a_daemon_that_died_is_started_again_with_its_gpu_left_exclusive(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = node
    daemon = MpsDaemon.for_gpu(root, gpus[0])
    daemon.start()
    try:
        first = standin.daemon_pid(Path(daemon.pipe_dir))
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert daemon.not_ready() is not None
        with capture_logs() as logs:
            daemon.restart()
        assert daemon.not_ready() is None and standin.daemon_pid(Path(daemon.pipe_dir)) not in (None, first)
        assert [e["mode"] for e in logs if e["event"] == "compute mode set"] == ["EXCLUSIVE_PROCESS"]
        assert modes(sim)[0] == EXCLUSIVE_PROCESS
    finally:
        daemon.stop()


def test_a_daemon_that_cannot_start_leaves_its_gpu_untouched(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    sim, gpus = node
    Path(root.path, gpus[0].uuid).write_text("")  # where its directories would go
    with capture_logs() as logs, pytest.raises(MpsError, match=f"cannot make {root.path}/{gpus[0].uuid}/pipe"):
        MpsDaemon.for_gpu(root, gpus[0]).start()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with capture_logs() as more, pytest.raises(ControlError, match="nvidia-cuda-mps-control not found on PATH"):
        MpsDaemon.for_gpu(root, gpus[1]).start()
    assert modes(sim) == [DEFAULT] * 8
    assert not [e for e in logs + more if e["event"] == "compute mode set"]


def test_an_answer_beyond_the_bound_is_cut_without_holding_it(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: 50 MB answered to a query: refused at 64 KiB, the control program killed, little held."""
    _sim, gpus = node
    monkeypatch.setenv(standin.FAULTS, "huge-answers=50000000")
    daemon = MpsDaemon.for_gpu(root, gpus[0])
    daemon.start()
    try:
        tracemalloc.start()
        try:
            reason = daemon.control.answers()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert reason is not None and reason.endswith("answered more than 64 KiB")
        assert peak < 1 << 20
    finally:
        daemon.stop()


def test_a_command_without_an_answer_times_out(root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _sim, gpus = node
    monkeypatch.setenv(standin.FAULTS, "quit-hangs")
    monkeypatch.setattr(mps_daemon, "QUIT_S", 0.5)  # the stop after the test: no need to wait longer
    daemon = MpsDaemon.for_gpu(root, gpus[0])
    daemon.start()
    try:
        began = time.monotonic()
        with pytest.raises(ControlError, match=r"<<< 'quit': no answer in 0.5s$"):
            daemon.control.send("quit", timeout_s=0.5)
        assert time.monotonic() - began < 2
    finally:
        daemon.stop()


def test_a_client_environment_names_its_pipe_and_its_own_limits(node: tuple[Any, tuple[Gpu, ...]]) -> None:
    _sim, gpus = node
    pair = MpsDaemon(MpsRoot("/run/nvidia/mps"), "pair", gpus[2:4])
    assert pair.client_environment("/mps/pair/pipe", {gpus[3].uuid: 2048, gpus[2].uuid: 1024}, 25) == {
        "CUDA_MPS_PIPE_DIRECTORY": "/mps/pair/pipe", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=1024M,1=2048M",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"}
    assert MpsDaemon.for_gpu(MpsRoot("/m"), gpus[0]).client_environment("/p") == {"CUDA_MPS_PIPE_DIRECTORY": "/p"}
    with pytest.raises(ValueError, match=f"not served by the MPS daemon pair: {gpus[0].uuid}"):
        pair.client_environment("/p", {gpus[0].uuid: 1024})


def test_limits_are_checked_and_numbered_as_the_daemon_sees_its_gpus(node: tuple[Any, tuple[Gpu, ...]]) -> None:
    _sim, gpus = node
    assert Limits.whole(gpus[5:7]).commands(gpus[5:7]) == [
        f"set_default_device_pinned_mem_limit 0 {gpus[5].memory_mib}M",
        f"set_default_device_pinned_mem_limit 1 {gpus[6].memory_mib}M", "set_default_active_thread_percentage 100"]
    for bad in ({"active_thread_percentage": 0}, {"active_thread_percentage": 101},
                {"pinned_memory_mib": {gpus[0].uuid: 0}}):
        with pytest.raises(ValueError):
            Limits(**bad)
    with pytest.raises(ValueError, match="at least one GPU"):
        MpsDaemon(MpsRoot("/m"), "none", ())


# -- following the MPS logs -------------------------------------------------------------------------------------
def test_a_log_without_newlines_holds_no_more_than_one_line(tmp_path: Path) -> None:
    """Issue 20: a control log that never ends its line grew the tail's buffer without bound (30 -> 252 MB in
    30 s); now what is held stays within a line's bound, whatever the file's size."""
    path = tmp_path / "control.log"
    path.write_bytes(b"x" * (8 << 20))
    tail = LogTail(str(path), "GPU-0")
    stopping = threading.Event()
    tracemalloc.start()
    try:
        with capture_logs() as logs:
            thread = threading.Thread(target=tail.run, args=(stopping,))
            thread.start()
            time.sleep(1.5)
            stopping.set()
            thread.join()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    lines = [e["line"] for e in logs]
    assert lines == ["x" * mps_daemon.MAX_LINE_BYTES + "…"]  # logged once, cut; the rest dropped


def test_log_lines_are_cut_and_a_shrunk_log_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    long = "a" * (mps_daemon.MAX_LINE_BYTES + 10)
    path.write_bytes(f"{long}\nok\npartial".encode() + b"\xff")
    tail = LogTail(str(path), "GPU-0")
    with capture_logs() as logs:
        tail.poll()
        with open(path, "ab") as f:
            f.write(b" end\n")
        tail.poll()
        path.write_bytes(b"rotated\n")
        tail.poll()
    assert [e["line"] for e in logs] == [long[:mps_daemon.MAX_LINE_BYTES] + "…", "ok", "partial\ufffd end", "rotated"]
    assert {e["log"] for e in logs} == {"server.log"} and {e["name"] for e in logs} == {"GPU-0"}


def test_a_log_that_is_not_a_regular_file_is_not_opened_for_long(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "control.log")  # opening a FIFO for reading would wait for a writer
    tail = LogTail(str(tmp_path / "control.log"), "GPU-0")
    began = time.monotonic()
    with capture_logs() as logs:
        tail.poll()
    assert time.monotonic() - began < 1 and logs == []


def left_by_an_earlier_process(root: MpsRoot, gpu: Gpu) -> int | None:
    """The GPU's daemon started by a process that has ended (the daemon serves on, the GPU still exclusive); its PID."""
    earlier = MpsDaemon.for_gpu(root, gpu)
    earlier.start()
    pid = standin.daemon_pid(Path(earlier.pipe_dir))
    earlier.detach()
    return pid


def test_a_daemon_an_earlier_process_left_is_adopted_and_stops_as_if_started_here(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = node
    pid = left_by_an_earlier_process(root, gpus[4])
    assert pid is not None and not standin.gone(pid) and modes(sim)[4] == EXCLUSIVE_PROCESS
    later = MpsDaemon.for_gpu(root, gpus[4])
    with capture_logs() as logs:
        assert later.adopt() is True and later.adopt() is True
    assert [e["event"] for e in logs] == ["Adopted the running MPS daemon"]
    assert later.not_ready() is None and standin.commands(Path(later.log_dir)).count("quit") == 0
    assert later.stop() is True
    assert standin.gone(pid) and modes(sim) == [DEFAULT] * 8


def test_what_is_left_of_a_dead_daemon_is_not_adopted_but_its_gpu_is_given_back(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]]) -> None:
    sim, gpus = node
    pid = left_by_an_earlier_process(root, gpus[1])
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    standin.wait_gone(pid)
    later = MpsDaemon.for_gpu(root, gpus[1])
    assert later.adopt() is False and later.not_ready() is not None
    assert later.stop() is True and modes(sim) == [DEFAULT] * 8  # its directory says the GPU was made exclusive
    untouched = MpsDaemon.for_gpu(root, gpus[2])
    with capture_logs() as logs:
        assert untouched.adopt() is False and untouched.stop() is True
    assert not [e for e in logs if e["event"] == "compute mode set"]  # never made exclusive: left alone


def test_a_pidfile_naming_another_process_is_not_adopted_nor_signalled(
        root: MpsRoot, node: tuple[Any, tuple[Gpu, ...]], tmp_path: Path) -> None:
    """Review of issue 24, SHOULD 12: the pidfile is in the pipe directory, which tenants mount read-write. A PID
    written there, even of a process calling itself nvidia-cuda-mps-control, is taken only when that process was
    started for this pipe directory: a tenant cannot make the driver signal another process."""
    sim, gpus = node
    real = left_by_an_earlier_process(root, gpus[0])
    assert real is not None
    pidfile = Path(root.pipe_dir(gpus[0].uuid), mps_daemon.PIDFILE)
    decoys = [subprocess.Popen(["sleep", "60"], start_new_session=True),
              subprocess.Popen(["bash", "-c", "exec -a nvidia-cuda-mps-control sleep 60"], start_new_session=True,
                               env={**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)})]
    try:
        for decoy in decoys:
            pidfile.write_text(str(decoy.pid))
            later = MpsDaemon.for_gpu(root, gpus[0])
            with capture_logs() as logs:
                assert later.adopt() is False
                assert later.stop() is True  # nothing of ours to end; the GPU given back
            assert decoy.poll() is None, "a process the pidfile named was signalled"
            assert [e["pid"] for e in logs if e["event"].startswith("MPS pidfile names")] == [decoy.pid]
            assert modes(sim)[0] == DEFAULT
    finally:
        for decoy in decoys:
            decoy.kill()
            decoy.wait()
        os.killpg(real, signal.SIGKILL)


def test_our_probes_are_left_out_of_our_log_and_a_grown_log_is_emptied_once_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of issue 24, SHOULD 16: the daemon logs each query as `Cmd:<query>`; ours are not copied, and the log
    on tmpfs is emptied once past MAX_LOG_BYTES and read to its end (MPS appends: it writes on from the start)."""
    monkeypatch.setattr(mps_daemon, "MAX_LOG_BYTES", 100)
    path = tmp_path / "control.log"
    path.write_text("[t Control 1] Cmd:get_default_active_thread_percentage\n[t Control 1] Cmd:start_server -uid 0\n")
    tail = LogTail(str(path), "GPU-0")
    with capture_logs() as logs:
        tail.poll()
        assert path.stat().st_size > 0  # below the bound: kept
        with open(path, "a") as f:
            f.write("[t Control 1] NEW CLIENT 0 from user 0\n" * 3)
        tail.poll()
        assert path.stat().st_size == 0
        with open(path, "a") as f:
            f.write("[t Control 1] after\n")
        tail.poll()
    assert [e["line"] for e in logs] == ["[t Control 1] Cmd:start_server -uid 0"] + [
        "[t Control 1] NEW CLIENT 0 from user 0"] * 3 + ["[t Control 1] after"]
