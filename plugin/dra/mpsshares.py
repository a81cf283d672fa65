"""Memory shares enforced by MPS (`--share-enforcement=mps`): one MPS control daemon per GPU that holds an enforced
share (plugin/mps/daemon.py: the GPU in EXCLUSIVE_PROCESS while it runs, the daemon's default limits the whole
GPU), the container edits that make a claim's containers clients of it with the claim's limits, and supervision.

- A claim's containers get the daemon's pipe directory (the host's `<mps root>/<GPU UUID>/pipe` at
  `/mps/<GPU UUID>/pipe`), `CUDA_MPS_PIPE_DIRECTORY`, `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=<MiB>M` (device 0: the
  daemon serves one GPU, which its clients see as their device 0), `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` when the claim
  consumed compute, and the MPS shared memory (`<mps root>/shm` at /dev/shm, the tmpfs the MPS servers use too).
- The daemons run in this program's container with their files under `--mps-container-root`; they outlive a stop
  of this program where its container's processes do (the next start adopts them), and a start stops a daemon
  that no checkpointed share needs, returning its GPU to DEFAULT, whatever the enforcement setting (`leftovers`).
- Supervision (plugin/mps/supervision.py): a daemon that stops serving is started again after THRESHOLD failed
  probes in a row, a failing restart backed off; its GPU's devices tainted meanwhile, through `on_health`. A share
  is never handed a daemon given up on or found dead: `ensure` restarts it at once, or fails the claim.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping

import structlog

from gfd.discovery.sysfs import host_path
from gfd.model import Gpu
from plugin.cdi.driver import DriverFiles
from plugin.cdi.spec import IPC_OPTIONS, ContainerEdits, Mount
from plugin.dra.shares import ShareLimits
from plugin.mps import MpsError
from plugin.mps.control import CONTROL, ControlError, find_control
from plugin.mps.daemon import MpsDaemon
from plugin.mps.root import CONTAINER_ROOT, MpsRoot
from plugin.mps.supervision import CHECK_S, Supervised

log = structlog.get_logger("plugin.dra")

CLIENT_SHM = "/dev/shm"


def leftovers(root: str, uuids: Iterable[str]) -> list[str]:
    """The GPUs (of `uuids`) with a daemon's directory under the MPS root `root` (as this container sees it): what
    an earlier run left, perhaps with its daemon still running and the GPU in EXCLUSIVE_PROCESS."""
    return sorted(u for u in uuids if os.path.isdir(os.path.join(root, u)))


def find_program(driver_root: str, files: DriverFiles) -> tuple[str, dict[str, str]]:
    """nvidia-cuda-mps-control and what its environment needs: the one on PATH (an image or a runtime that
    provides the driver's programs), else the driver's under `driver_root` (`--container-driver-root`, where this
    container reads the host's driver), run with the driver's programs (its MPS server) and libraries found
    first. ControlError when neither is there."""
    try:
        return find_control(), {}
    except ControlError as e:
        on_path = e
    program = next((p for p in files.binaries if os.path.basename(p) == CONTROL), None)
    if program is None:
        raise ControlError(f"{on_path}; nor under the driver root {driver_root}")
    found = host_path(driver_root, program)
    path = os.pathsep.join([os.path.dirname(found), os.environ.get("PATH", "")])
    libraries = os.pathsep.join(host_path(driver_root, d) for d in files.library_dirs)
    return found, {"PATH": path, "LD_LIBRARY_PATH": libraries}


class MpsShares:
    """The node's MPS daemons for enforced shares, by GPU UUID. `host_root` is the host's MPS root (what CDI
    specs name), `root` the same directory as this container sees it. `on_health(uuid, reason)` is told when a
    GPU's daemon stops serving (a reason) and serves again (None). `clock`: supervision's time. Thread-safe."""

    def __init__(self, host_root: str, root: MpsRoot, gpus: Collection[Gpu], program: str,
                 environment: Mapping[str, str], on_health: Callable[[str, str | None], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host_root, self.root = MpsRoot(host_root), root
        self.gpus = {g.uuid: g for g in gpus}
        self.program, self.environment, self.on_health = program, dict(environment), on_health
        self.clock = clock
        self._daemons: dict[str, Supervised] = {}
        self._lock = threading.Lock()

    def running(self) -> list[str]:
        """The GPUs whose daemon this program runs."""
        with self._lock:
            return sorted(self._daemons)

    def ensure(self, uuid: str) -> None:
        """The GPU's daemon serves: started when it does not run, started again at once when supervision gave up
        on it or it is found dead (a share must not get a pipe directory with no daemon behind it: its CUDA
        would run without MPS, unlimited). MpsError (one line) when it cannot start: the claim fails and the
        kubelet retries it."""
        with self._lock:
            supervised = self._daemons.get(uuid)
            if supervised is None:
                daemon = self._daemon(uuid)
                daemon.start()
                self._daemons[uuid] = self._supervised(uuid, daemon)
                return
            reason = supervised.serving()
            if reason is not None:
                supervised.restart_now(reason)

    def release(self, uuid: str) -> None:
        """The GPU holds no enforced share any more: its daemon stopped, the GPU back in DEFAULT, its files gone."""
        with self._lock:
            supervised = self._daemons.pop(uuid, None)
            if supervised is not None:
                self._stop(supervised.daemon)
        self.on_health(uuid, None)

    def client_edits(self, uuid: str, limits: ShareLimits) -> ContainerEdits:
        """What makes a container a client of the GPU's daemon, held to `limits` (the claim's shares of it)."""
        pipe = MpsRoot(CONTAINER_ROOT).pipe_dir(uuid)
        memory = {uuid: limits.memory_mib} if limits.memory_mib else None
        env = self._daemon(uuid).client_environment(pipe, memory, limits.compute_percent or None)
        mounts = (Mount(self.host_root.pipe_dir(uuid), pipe, IPC_OPTIONS),
                  Mount(self.host_root.shm, CLIENT_SHM, IPC_OPTIONS))
        return ContainerEdits(env=tuple(f"{k}={v}" for k, v in env.items()), mounts=mounts)

    def reconcile(self, wanted: Collection[str]) -> None:
        """At start, after a restart of this program: the daemons of the GPUs in `wanted` (those with checkpointed
        enforced shares) adopted where they still run and answer, started again otherwise (a GPU whose daemon
        cannot start is reported to `on_health` and retried by `check`); a daemon no share needs, or what is
        left of one, stopped (its GPU back in DEFAULT)."""
        for uuid in self.gpus:
            daemon = self._daemon(uuid)
            try:
                running = daemon.adopt()
            except MpsError as e:
                log.error("MPS daemon cannot be adopted", gpu=uuid, error=str(e))
                running = False
            if uuid not in wanted:
                if running or os.path.isdir(os.path.join(self.root.path, uuid)):
                    log.info("MPS daemon no share needs; stopping it", gpu=uuid)
                    self._stop(daemon)
                continue
            with self._lock:
                self._daemons[uuid] = supervised = self._supervised(uuid, daemon)
                if not running or daemon.not_ready() is not None:
                    with contextlib.suppress(MpsError):  # logged; supervision tries again, backed off
                        supervised.restart_now("not running after a restart of the plugin")

    def check(self) -> None:
        """One round of supervision (plugin/mps/supervision.py): each daemon probed, restarted when it failed
        THRESHOLD probes in a row or when its backoff after a failed restart has passed."""
        with self._lock:
            daemons = dict(self._daemons)
        for uuid, supervised in daemons.items():
            verdict = supervised.probe()  # outside the lock: a query may take PROBE_TIMEOUT_S
            with self._lock:
                if self._daemons.get(uuid) is not supervised:
                    continue  # released meanwhile: not answering because it was stopped
                supervised.judge(*verdict)

    def run(self, stopping: threading.Event) -> None:
        while not stopping.wait(CHECK_S):
            self.check()

    def detach(self) -> None:
        """This program stops: the daemons keep serving their clients (the next start adopts them)."""
        with self._lock:
            daemons, self._daemons = list(self._daemons.values()), {}
        for supervised in daemons:
            supervised.daemon.detach()

    def _supervised(self, uuid: str, daemon: MpsDaemon) -> Supervised:
        return Supervised(daemon, functools.partial(self.on_health, uuid), self.clock)

    def _stop(self, daemon: MpsDaemon) -> None:
        if daemon.stop():
            shutil.rmtree(os.path.join(self.root.path, daemon.name), ignore_errors=True)
        else:  # kept: the next start finds it and tries again
            log.error("MPS daemon not stopped cleanly", gpu=daemon.name)

    def _daemon(self, uuid: str) -> MpsDaemon:
        supervised = self._daemons.get(uuid)
        if supervised is not None:
            return supervised.daemon
        return MpsDaemon.for_gpu(self.root, self.gpus[uuid], program=self.program, environment=self.environment)
