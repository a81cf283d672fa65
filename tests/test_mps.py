"""MPS sharing end to end (issue 13): the real `mps-control-daemon` program driving a stand-in
`nvidia-cuda-mps-control` (tests/mps/, found on PATH as the real one is), the plugin waiting for it and
watching it, the program's start-up checks and its shutdown whatever the daemons do (issue 20), and the
device plugin's daemons against the simulator's NVML. The per-GPU daemon itself: test_mps_daemon.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gfd.discovery.session import NodeSource
from gfd.lifecycle import STOP_DEADLINE_S
from gfd.model import Gpu
from plugin.cli import DevicePlugin
from plugin.config import load_plugin_config
from plugin.mps import MpsError
from plugin.mps.cli import load_daemon_config
from plugin.mps.control import Control
from plugin.mps.replicas import check_replicas, gpus_of, replica_limits, resource_daemon
from plugin.mps.root import MpsRoot
from plugin.mps.shm import shm_size
from plugin.resources import PluginDevice, Resource, build_resources
from tests.helpers import eventually, kill_all
from tests.kubelet import KubeletStandIn
from tests.mps import standin
from tests.requirements import require_command

DAEMON = str(Path(sys.executable).parent / "mps-control-daemon")
RESOURCE = "nvidia.com/gpu"


@pytest.fixture
def mps_root() -> Iterator[Path]:
    """Short: the control socket's path must fit a unix socket address (108 bytes), as for the real MPS."""
    with tempfile.TemporaryDirectory(prefix="mps-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def path_with_stand_in(monkeypatch: pytest.MonkeyPatch) -> str:
    path = standin.path_with_stand_in()
    monkeypatch.setenv("PATH", path)
    return path


def mps_config(write_yaml: Any, replicas: int = 4) -> str:
    return str(write_yaml({"version": "v1", "sharing": {"mps": {"resources": [
        {"name": RESOURCE, "replicas": replicas}]}}}))


def control_log(root: Path, resource: str = RESOURCE) -> str:
    return standin.control_log(root / resource / "log")


class DaemonProcess:
    """`mps-control-daemon` as the chart runs it (its console script), on a simulated node."""

    def __init__(self, root: Path, path: str, *args: str, faults: str = "") -> None:
        self.log = root.parent / f"{root.name}.daemon.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([DAEMON, "--log-format=json", f"--mps-container-root={root}", *args],
                                         stdout=out, stderr=out,
                                         env={**os.environ, "PATH": path, standin.FAULTS: faults})

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=STOP_DEADLINE_S + 5)


@pytest.fixture
def daemon(mps_root: Path, path_with_stand_in: str) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def _start(*args: str, faults: str = "") -> DaemonProcess:
        d = DaemonProcess(mps_root, path_with_stand_in, *args, faults=faults)
        started.append(d)
        return d

    yield _start
    kill_all(d.proc for d in started)
    for d in started:
        d.log.unlink(missing_ok=True)
    _kill_stand_in(mps_root)


def _stand_in_pid(root: Path, resource: str = RESOURCE) -> int | None:
    return standin.daemon_pid(root / resource / "pipe")


def _kill_stand_in(root: Path) -> None:
    standin.kill_daemon(root / RESOURCE / "pipe")


# -- the daemon program ------------------------------------------------------------------------------------
def test_daemon_starts_mps_with_a_quarter_each_and_signals_readiness(daemon: Callable[..., DaemonProcess],
                                                                     mps_root: Path, write_yaml: Any) -> None:
    d = daemon("--simulate=t4", f"--config-file={mps_config(write_yaml)}")
    eventually(lambda: (mps_root / ".ready").exists() or d.proc.poll() is not None, timeout=20)
    assert d.proc.poll() is None, d.text()
    assert (mps_root / RESOURCE / ".started").exists()
    assert (mps_root / RESOURCE / "pipe" / "control").exists()  # what the pods' mount points at
    log = control_log(mps_root)
    # T4: 15360 MiB each (simulated model, from NVIDIA's T4 datasheet), 4 clients per GPU.
    assert [line.split("Cmd:")[1] for line in log.splitlines() if "Cmd:set" in line] == [
        "set_default_device_pinned_mem_limit 0 3840M", "set_default_device_pinned_mem_limit 1 3840M",
        "set_default_device_pinned_mem_limit 2 3840M", "set_default_device_pinned_mem_limit 3 3840M",
        "set_default_active_thread_percentage 25"]
    visible = next(line for line in log.splitlines() if "CUDA_VISIBLE_DEVICES=" in line).split("=", 1)[1]
    assert len(visible.split(",")) == 4 and all(u.startswith("GPU-") for u in visible.split(","))
    modes = [line for line in d.text().splitlines() if "compute mode set" in line]
    assert len(modes) == 4 and all('"mode": "EXCLUSIVE_PROCESS"' in line for line in modes)
    # The control log is followed into the daemon's own log.
    eventually(lambda: "set_default_active_thread_percentage 25" in d.text())

    pid = _stand_in_pid(mps_root)
    assert d.stop() == 0
    assert pid is not None and standin.gone(pid)  # the stand-in daemon took `quit`
    assert not (mps_root / ".ready").exists() and not (mps_root / RESOURCE / ".started").exists()
    assert not (mps_root / RESOURCE / "log").exists() and not (mps_root / RESOURCE / "pipe" / "control").exists()
    restored = [line for line in d.text().splitlines() if "compute mode set" in line][4:]
    assert len(restored) == 4 and all('"mode": "DEFAULT"' in line for line in restored)


def test_a_dead_mps_daemon_is_started_again(daemon: Callable[..., DaemonProcess], mps_root: Path,
                                            write_yaml: Any) -> None:
    d = daemon("--simulate=t4", f"--config-file={mps_config(write_yaml)}")
    eventually(lambda: (mps_root / ".ready").exists(), timeout=20)
    first = _stand_in_pid(mps_root)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    eventually(lambda: _stand_in_pid(mps_root) not in (None, first) and
               (mps_root / RESOURCE / ".started").exists(), timeout=10)  # .started: after the limits
    assert "MPS daemon not answering; starting it again" in d.text()
    assert "set_default_active_thread_percentage 25" in control_log(mps_root)  # limits set again
    assert d.stop() == 0


def test_without_mps_sharing_the_daemon_waits(daemon: Callable[..., DaemonProcess], mps_root: Path) -> None:
    d = daemon("--simulate=t4")
    eventually(lambda: "No devices are configured for MPS sharing; Waiting indefinitely." in d.text(), timeout=20)
    assert d.proc.poll() is None and not (mps_root / ".ready").exists()
    assert d.stop() == 0


@pytest.mark.parametrize(("args", "config", "says"), [
    (["--simulate=t4"], {"sharing": {"mps": {"resources": [{"name": RESOURCE, "replicas": 49}]}}},
     "invalid MPS configuration: invalid device maximum allowed replicas exceeded: 49 > 48"),
    (["--simulate=dgx1v"], {"sharing": {"mps": {"resources": [{"name": RESOURCE, "replicas": 17}]}}},
     "exceeded: 17 > 16"),
    (["--simulate=a100-mig-single", "--mig-strategy=single"],
     {"sharing": {"mps": {"resources": [{"name": RESOURCE, "replicas": 2}]}}},
     "sharing using MPS is not supported for MIG devices"),
    (["--simulate=t4", "--mig-strategy=mixed"],
     {"sharing": {"mps": {"resources": [{"name": RESOURCE, "replicas": 2}]}}},
     "using --mig-strategy=mixed is not supported with MPS"),
])
def test_a_bad_mps_setup_is_one_line_and_exit_1(daemon: Callable[..., DaemonProcess], write_yaml: Any,
                                               args: list[str], config: dict[str, Any], says: str) -> None:
    d = daemon(*args, f"--config-file={write_yaml({'version': 'v1', **config})}")
    assert d.proc.wait(timeout=20) == 1
    errors = [line for line in d.text().splitlines() if '"level": "error"' in line or not line.startswith("{")]
    assert len(errors) == 1 and says in errors[0], d.text()


def run_daemon(root: str | Path, config: str, path: str, cwd: Path | None = None,
               wrap: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """`mps-control-daemon` that is expected to exit: its status and its output's lines."""
    args = [DAEMON, "--log-format=json", "--simulate=t4", f"--mps-container-root={root}", f"--config-file={config}"]
    proc = subprocess.run([*wrap, *args], capture_output=True, text=True, timeout=30, cwd=cwd,
                          env={**os.environ, "PATH": path}, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def assert_one_error_and_no_gpu_touched(lines: list[str], *says: str) -> None:
    errors = [line for line in lines if '"level": "error"' in line or not line.startswith("{")]
    assert len(errors) == 1 and all(s in errors[0] for s in says), lines
    assert not any("compute mode set" in line for line in lines), lines


def test_no_control_program_is_one_line_before_any_gpu_is_touched(mps_root: Path, write_yaml: Any) -> None:
    status, lines = run_daemon(mps_root, mps_config(write_yaml), "/usr/bin:/bin")
    assert status == 1
    assert_one_error_and_no_gpu_touched(lines, "nvidia-cuda-mps-control not found on PATH")


def test_a_control_program_that_cannot_run_is_one_line_before_any_gpu_is_touched(
        mps_root: Path, write_yaml: Any, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-cuda-mps-control").write_text("#!/bin/sh\n")  # mode 0644: not executable
    status, lines = run_daemon(mps_root, mps_config(write_yaml), f"{bin_dir}:/usr/bin:/bin")
    assert status == 1
    assert_one_error_and_no_gpu_touched(lines, f"{bin_dir}/nvidia-cuda-mps-control is not executable")


def _regular_file(d: Path) -> str:
    (d / "file").write_text("")
    return str(d / "file")


def _fifo(d: Path) -> str:
    os.mkfifo(d / "fifo")
    return str(d / "fifo")


@pytest.mark.parametrize(("make_root", "problem"), [
    (_regular_file, "not a directory (a regular file)"),
    (_fifo, "not a directory (a FIFO)"),
    (lambda d: "/dev/null", "not a directory (a character device)"),
    (lambda d: str(d / "missing"), "No such file or directory"),
    (lambda d: "", "empty (it would be the current directory)"),
    (lambda d: "mps", "not an absolute path"),
], ids=["file", "fifo", "dev-null", "missing", "empty", "relative"])
def test_an_unusable_root_is_one_line_and_exit_1_with_the_gpus_untouched(
        tmp_path: Path, write_yaml: Any, make_root: Callable[[Path], str], problem: str) -> None:
    """Issue 20: checked at start, before NVML or the control program; an empty or relative root never
    writes into the current directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    root = make_root(tmp_path)
    try:
        status, lines = run_daemon(root, mps_config(write_yaml), standin.path_with_stand_in(), cwd=cwd)
    finally:
        for where in (cwd, cwd / "mps", Path(root or "/nonexistent")):
            _kill_stand_in(where)
    assert status == 1
    assert_one_error_and_no_gpu_touched(lines, "mps-container-root", problem)
    assert "Traceback" not in "\n".join(lines)
    assert list(cwd.iterdir()) == []


def test_a_read_only_root_is_one_line_and_exit_1(mps_root: Path, write_yaml: Any) -> None:
    """A read-only mount (a tmpfs mounted ro in a private mount namespace): only writing tells."""
    require_command("unshare")
    wrap = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        wrap[1:1] = ["--user", "--map-root-user"]
    mount = f"mount -t tmpfs -o ro tmpfs {mps_root} && exec \"$@\""
    status, lines = run_daemon(mps_root, mps_config(write_yaml), standin.path_with_stand_in(),
                               wrap=(*wrap, "sh", "-c", mount, "sh"))
    assert status == 1
    assert_one_error_and_no_gpu_touched(lines, "mps-container-root", "not writable: Read-only file system")


@pytest.mark.parametrize("faults", ["quit-hangs,ignores-sigterm", "quit-answers-garbage"])
def test_sigterm_restores_every_gpu_and_ends_a_daemon_that_does_not_quit(
        daemon: Callable[..., DaemonProcess], mps_root: Path, write_yaml: Any, faults: str) -> None:
    """Issue 20: a daemon that never answers `quit` (or answers it with bytes that are not text) and ignores
    SIGTERM is killed, its MPS server with it, and all 8 GPUs are back in DEFAULT, within the stop deadline."""
    d = daemon("--simulate=dgx-a100", f"--config-file={mps_config(write_yaml, 2)}", faults=faults)
    eventually(lambda: (mps_root / ".ready").exists() or d.proc.poll() is not None, timeout=30)
    assert d.proc.poll() is None, d.text()
    pid = _stand_in_pid(mps_root)
    control = Control.under(MpsRoot(str(mps_root)), RESOURCE)
    control.send("start_server -uid 0")
    servers = [int(p) for p in control.send("get_server_list").split()]
    assert pid is not None and len(servers) == 1

    stopped = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - stopped < STOP_DEADLINE_S
    text = d.text()
    restored = [line for line in text.splitlines() if "compute mode set" in line and '"DEFAULT"' in line]
    assert len(restored) == 8, text
    assert standin.gone(pid) and standin.gone(servers[0])
    assert "Traceback" not in text


def test_a_flood_of_answers_is_cut_and_the_daemon_started_again(daemon: Callable[..., DaemonProcess],
                                                                 mps_root: Path, write_yaml: Any) -> None:
    """Issue 20: a control program that answers a health query with 100 MB is killed at 64 KiB; the
    program's peak memory stays near its size at rest (it grew by twice the answer before)."""
    d = daemon("--simulate=t4", f"--config-file={mps_config(write_yaml)}", faults="huge-answers=100000000")
    eventually(lambda: "answered more than 64 KiB" in d.text() or d.proc.poll() is not None, timeout=30)
    status = Path(f"/proc/{d.proc.pid}/status").read_text()
    peak_mib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) // 1024
    assert peak_mib < 120, d.text()
    assert "MPS daemon not answering; starting it again" in d.text()
    assert d.stop() == 0


def test_mount_shm_mounts_half_the_memory_as_tmpfs(mps_root: Path) -> None:
    """The init container's step, for real, in a private mount namespace."""
    require_command("unshare")
    shm = mps_root / "shm"
    size = f"{sys.executable} -c 'import os; s = os.statvfs(\"{shm}\"); print(s.f_blocks * s.f_frsize)'"
    script = f"{DAEMON} mount-shm --mps-container-root={mps_root} && grep ' {shm} ' /proc/self/mountinfo && {size}"
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare[1:1] = ["--user", "--map-root-user"]
    proc = subprocess.run([*unshare, "sh", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    mountinfo, total = proc.stdout.strip().splitlines()[-2:]
    assert " - tmpfs shm " in mountinfo and "rw,nosuid,nodev,noexec,relatime" in mountinfo
    half = shm_size()  # "<MemTotal/2>k", as upstream
    assert half.endswith("k") and abs(int(total) - int(half[:-1]) * 1024) < 4096  # tmpfs rounds to pages
    assert not (mps_root / "shm").is_mount()  # the mount stayed in its namespace


# -- the daemon's steps against the simulator's NVML -----------------------------------------------------------
def test_compute_mode_is_exclusive_while_mps_runs_and_default_after(mps_root: Path, path_with_stand_in: str,
                                                                     write_yaml: Any) -> None:
    config = load_daemon_config(["--simulate=l4", f"--config-file={mps_config(write_yaml, 3)}"], {})
    with NodeSource("nvml", config.simulate) as source:
        source.open()
        resource = next(r for r in build_resources(source.read(), config) if r.mps)
        assert source.simulation is not None
        gpus = source.simulation.node.gpus
        daemon = resource_daemon(resource, MpsRoot(str(mps_root)))
        try:
            daemon.start()
            assert [g.compute_mode for g in gpus] == [3]  # nvml.h NVML_COMPUTEMODE_EXCLUSIVE_PROCESS
            # L4: 23034 MiB (simulated model), 3 clients: floor(23034 / 3).
            assert "Cmd:set_default_device_pinned_mem_limit 0 7678M" in control_log(mps_root)
            assert "Cmd:set_default_active_thread_percentage 33" in control_log(mps_root)
        finally:
            daemon.stop()
        assert [g.compute_mode for g in gpus] == [0]


def test_two_mps_resources_get_a_daemon_each(mps_root: Path, path_with_stand_in: str, write_yaml: Any) -> None:
    """Upstream's config can only name nvidia.com/gpu for MPS, so two resources are built here directly."""
    config = load_daemon_config(["--simulate=heterogeneous", f"--config-file={mps_config(write_yaml, 2)}"], {})
    with NodeSource("nvml", config.simulate) as source:
        source.open()
        shared = next(r for r in build_resources(source.read(), config) if r.mps)
        a100 = Resource("nvidia.com/gpu-a100", tuple(d for d in shared.devices if "A100" in d.gpu.name), 2, True, True)
        t4 = Resource("nvidia.com/gpu-t4", tuple(d for d in shared.devices if "T4" in d.gpu.name), 2, True, True)
        root = MpsRoot(str(mps_root))
        daemons = [resource_daemon(r, root) for r in (a100, t4)]
        try:
            for d in daemons:
                d.start()
            assert all(d.not_ready() is None for d in daemons)
            assert _stand_in_pid(mps_root, a100.name) != _stand_in_pid(mps_root, t4.name)
            # Each daemon numbers its GPUs from 0, in the order of its CUDA_VISIBLE_DEVICES.
            assert [c for c in standin.commands(mps_root / a100.name / "log") if "pinned" in c] == [
                "set_default_device_pinned_mem_limit 0 20480M", "set_default_device_pinned_mem_limit 1 20480M"]
            assert [c for c in standin.commands(mps_root / t4.name / "log") if "pinned" in c] == [
                "set_default_device_pinned_mem_limit 0 7680M"]  # 15360 MiB, 2 replicas
        finally:
            for d in daemons:
                d.stop()
        assert all(Control.under(root, r.name).answers() is not None for r in (a100, t4))


def test_limits_and_replica_checks_are_per_gpu() -> None:
    def gpu(index: int, memory: int | None, cc: tuple[int, int]) -> Gpu:
        return Gpu(index=index, uuid=f"GPU-{index}", name="x", memory_mib=memory, compute_capability=cc,
                   architecture="", brand="", pci_bus_id="", pci_device_id=0, minor_number=index, numa_node=None,
                   pci_class=None, mig_capable=False, mig_enabled=False)

    g0, g1 = gpu(0, 16000, (7, 0)), gpu(1, None, (8, 0))
    devices = tuple(PluginDevice(f"{g.uuid}::{i}", g.uuid, str(g.index), g, None, i)
                    for g in (g0, g1) for i in range(2))
    resource = Resource(RESOURCE, devices, 2, True, True)
    limits = replica_limits(resource)
    assert limits.pinned_memory_mib == {"GPU-0": 8000}  # unknown memory: no limit sent
    assert limits.commands(gpus_of(resource)) == [
        "set_default_device_pinned_mem_limit 0 8000M", "set_default_active_thread_percentage 50"]
    crowded = Resource(RESOURCE, tuple(PluginDevice(f"GPU-0::{i}", "GPU-0", "0", g0, None, i) for i in range(17)),
                       17, True, True)
    with pytest.raises(MpsError, match="17 > 16"):  # compute capability 7.0: upstream's limit of 16
        check_replicas(crowded)


# -- the plugin waits for the daemon and watches it -------------------------------------------------------------
def test_plugin_serves_only_once_mps_is_ready_and_follows_its_health(
        daemon: Callable[..., DaemonProcess], mps_root: Path, path_with_stand_in: str, write_yaml: Any,
        tmp_path: Path) -> None:
    cfg = mps_config(write_yaml)
    plugin_dir = tmp_path / "device-plugins"
    plugin_dir.mkdir()
    kubelet = KubeletStandIn(str(plugin_dir))
    args = [f"--kubelet-socket={kubelet.socket}", "--simulate=t4", f"--config-file={cfg}", f"--mps-root={mps_root}",
            f"--mps-container-root={mps_root}", "--log-format=json", "--health-probe-interval=50ms"]
    plugin = DevicePlugin(args, {}, load_plugin_config(args, {}))
    thread = threading.Thread(target=plugin.run, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        assert RESOURCE not in kubelet.registrations  # no daemon yet: not served
        assert plugin.healthy() == (False, "starting")
        d = daemon("--simulate=t4", f"--config-file={cfg}")
        kubelet.wait(lambda: RESOURCE in kubelet.registrations, timeout=20)
        devices = kubelet.registered(RESOURCE).devices
        assert len(devices) == 16 and all(dev.health == "Healthy" for dev in devices)
        resp = kubelet.allocate(RESOURCE, devices[0].ID)
        assert dict(resp.envs) == {"NVIDIA_VISIBLE_DEVICES": devices[0].ID.split("::")[0],
                                   "CUDA_MPS_PIPE_DIRECTORY": f"/mps/{RESOURCE}/pipe"}
        assert [(m.container_path, m.host_path) for m in resp.mounts] == [
            (f"/mps/{RESOURCE}/pipe", f"{mps_root}/{RESOURCE}/pipe"), ("/dev/shm", f"{mps_root}/shm")]
        assert Path(resp.mounts[0].host_path, "control").exists()  # the directory the running daemon serves

        pid = _stand_in_pid(mps_root)
        assert pid is not None
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        kubelet.wait(lambda: all(dev.health == "Unhealthy" for dev in kubelet.registered(RESOURCE).devices),
                     timeout=5)
        assert time.monotonic() - killed < 3
        kubelet.wait(lambda: all(dev.health == "Healthy" for dev in kubelet.registered(RESOURCE).devices),
                     timeout=15)
        assert d.stop() == 0
    finally:
        plugin.stop()
        thread.join(10)
        kubelet.stop()
    assert not thread.is_alive()
