"""One MPS control daemon for a set of GPUs, usable on its own: the device plugin's `mps-control-daemon` runs
one per shared resource (plugin/mps/replicas.py), the DRA driver one per shared GPU (`MpsDaemon.for_gpu`).

`start`: `nvidia-cuda-mps-control` found first, the pipe and log directories made under the root, the GPUs
set to EXCLUSIVE_PROCESS through NVML, the daemon started, its default client limits set, `.started`
written. `not_ready`: why it cannot serve clients now. `stop`: `quit`, a bounded wait, then SIGTERM and
SIGKILL to its process group (its MPS servers with it), then every GPU back in DEFAULT whatever happened
before, all within STOP_BOUND_S. `adopt` takes over a daemon an earlier process started under the same name,
`detach` leaves one running for the next. The caller's NVML session must be open while it starts and stops.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from gfd.discovery import nvml
from gfd.discovery.errors import DiscoveryError
from gfd.lifecycle import Scope
from gfd.model import Gpu
from plugin.mps import MpsError
from plugin.mps.control import CONTROL, PROBE, Control, find_control, not_ready
from plugin.mps.root import MpsRoot, mark, unmark

log = structlog.get_logger("plugin.mps")
SELINUX_LABEL = b"system_u:object_r:container_file_t:s0"  # pods must be able to open the pipes
PIDFILE = "nvidia-cuda-mps-control.pid"  # what the daemon writes into its pipe directory
# Stopping: the quit command's answer, then the daemon's exit after it, then each signal's effect. A real
# quit waits for the servers' clients to finish; a node's pods cannot hold the shutdown for longer than this.
QUIT_S = 3.0
EXIT_S = 3.0
TERM_S = 2.0
KILL_S = 1.0
PIDFILE_S = 2.0  # after `-d` returned, for the daemon's pidfile to name it
STOP_BOUND_S = QUIT_S + EXIT_S + TERM_S + KILL_S + 1.0  # + restoring compute modes and reading the logs
POLL_S = 0.05


def memory_limit(mib: int) -> str:
    """A pinned device memory limit as MPS takes it (an integer followed by M or G; M counted in MiB)."""
    return f"{mib}M"


@dataclass(frozen=True)
class Limits:
    """What every client of a daemon gets unless its own environment asks for less (a client's
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE and CUDA_MPS_PINNED_DEVICE_MEM_LIMIT can only lower these).
    `pinned_memory_mib` is by GPU UUID; a GPU not in it gets no memory limit."""

    active_thread_percentage: int = 100
    pinned_memory_mib: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.active_thread_percentage <= 100:
            raise ValueError(f"active thread percentage {self.active_thread_percentage} is not within 1..100")
        if any(mib < 1 for mib in self.pinned_memory_mib.values()):
            raise ValueError("a pinned memory limit must be at least 1 MiB")

    @classmethod
    def whole(cls, gpus: Sequence[Gpu]) -> Limits:
        """Each client may use the whole of each GPU (all its SMs, all the memory NVML reports)."""
        return cls(100, {g.uuid: g.memory_mib for g in gpus if g.memory_mib})

    def commands(self, gpus: Sequence[Gpu]) -> list[str]:
        """The control commands that set these limits on a daemon serving `gpus`, each GPU numbered as the
        daemon sees it: its place in the daemon's CUDA_VISIBLE_DEVICES."""
        return [f"set_default_device_pinned_mem_limit {ordinal} {memory_limit(mib)}"
                for ordinal, gpu in enumerate(gpus) if (mib := self.pinned_memory_mib.get(gpu.uuid))
                ] + [f"set_default_active_thread_percentage {self.active_thread_percentage}"]


class MpsDaemon:
    """One MPS control daemon serving `gpus`, its files under `root` as `name` (`<root>/<name>/pipe`,
    `log`, `.started`). `program` is nvidia-cuda-mps-control's path, found on PATH at `start` when empty;
    `environment` what its runs add to ours (see Control). `start`, `adopt`, `restart` and `stop` may be called
    from any thread; one runs at a time."""

    def __init__(self, root: MpsRoot, name: str, gpus: Sequence[Gpu], limits: Limits | None = None,
                 program: str = "", environment: Mapping[str, str] | None = None) -> None:
        if not gpus:
            raise ValueError("an MPS daemon needs at least one GPU")
        self.root, self.name, self.gpus = root, name, tuple(gpus)
        self.limits = Limits.whole(self.gpus) if limits is None else limits
        self.program = program
        self.environment = dict(environment or {})
        self._process: _DaemonProcess | None = None
        self._launched = False  # `-d` was run since the last stop: there may be a daemon to end
        self._touched = False  # a compute mode was set since the last stop: the GPUs go back to DEFAULT
        self._tails = Scope(f"MPS logs of {name}")
        self._lock = threading.RLock()

    @classmethod
    def for_gpu(cls, root: MpsRoot, gpu: Gpu, limits: Limits | None = None, program: str = "",
                environment: Mapping[str, str] | None = None) -> MpsDaemon:
        """The daemon of one GPU, named by its UUID; by default each client may use the whole GPU."""
        return cls(root, gpu.uuid, (gpu,), limits, program, environment)

    @property
    def pipe_dir(self) -> str:
        return self.root.pipe_dir(self.name)

    @property
    def log_dir(self) -> str:
        return self.root.log_dir(self.name)

    @property
    def control(self) -> Control:
        return Control(self.pipe_dir, self.log_dir, self.program or CONTROL, self.environment)

    def start(self) -> None:
        """MpsError (one line) when it cannot start; what it had done by then is undone (`stop`). A GPU is
        touched only once the control program is found and the directories exist. Nothing to do when it was
        started already (`restart` is for a daemon that stopped answering)."""
        with self._lock:
            if self._launched:
                return
            self._launch(restore=True)

    def _launch(self, restore: bool) -> None:
        """Start it; on a failure, end what was started, the GPUs back in DEFAULT only when `restore`."""
        if not self.program:
            self.program = find_control()
        try:
            self._start()
        except BaseException:
            if restore:
                self.stop()
            else:
                self._halt()
            raise

    def _start(self) -> None:
        for directory in (self.pipe_dir, self.log_dir):
            try:
                os.makedirs(directory, 0o755, exist_ok=True)
            except OSError as e:
                raise MpsError(f"cannot make {directory}: {e.strerror or e}") from e
        self._touched = True
        for gpu in self.gpus:
            _set_compute_mode(gpu, "EXCLUSIVE_PROCESS")
        _label_for_containers(self.pipe_dir)
        log.info("Starting MPS daemon", name=self.name, gpus=[g.uuid for g in self.gpus])
        self._launched = True
        self.control.start_daemon([g.uuid for g in self.gpus])
        self._process = self._started_process()
        self._follow_logs(from_start=True)
        for command in self.limits.commands(self.gpus):
            self.control.send(command)
        mark(self.root.started(self.name))

    def adopt(self) -> bool:
        """Take over what an earlier process (this program before a restart) left under this daemon's name: a
        daemon that still runs is this object's from now on, as if `start` had started it (True; `not_ready`
        says whether it still serves). Whether or not one runs, the GPUs count as set to EXCLUSIVE_PROCESS when
        the daemon's directory is there, so that `stop` returns them to DEFAULT. ControlError when
        nvidia-cuda-mps-control cannot be found (nothing is touched)."""
        with self._lock:
            if self._launched:
                return True
            if not self.program:
                self.program = find_control()
            if os.path.isdir(os.path.dirname(self.pipe_dir)):
                self._touched = True
            process = _DaemonProcess.from_pidfile(self._pidfile, self.pipe_dir)
            if process is None:
                return False
            self._launched, self._process = True, process
            self._follow_logs(from_start=False)  # what it logged before is in the earlier process's log
            log.info("Adopted the running MPS daemon", name=self.name, pid=process.pid)
            return True

    @property
    def _pidfile(self) -> str:
        return os.path.join(self.pipe_dir, PIDFILE)

    def _started_process(self) -> _DaemonProcess:
        """The daemon `-d` just started, once its pidfile names it (within PIDFILE_S); MpsError when it does not."""
        deadline = time.monotonic() + PIDFILE_S
        while (process := _DaemonProcess.from_pidfile(self._pidfile, self.pipe_dir)) is None:
            if time.monotonic() >= deadline:
                raise MpsError(f"{CONTROL} -d returned, but {self._pidfile} names no daemon of {self.pipe_dir}")
            time.sleep(POLL_S)
        return process

    def _follow_logs(self, from_start: bool) -> None:
        """What MPS writes (control.log, and server.log once a client has started a server) shows in our log."""
        self._tails = Scope(f"MPS logs of {self.name}")
        for f in ("control.log", "server.log"):
            tail = LogTail(os.path.join(self.log_dir, f), self.name)
            if not from_start:
                with contextlib.suppress(OSError):
                    tail.offset = os.stat(tail.path).st_size
            self._tails.start_thread("mps-log", functools.partial(tail.run, self._tails.stopping))

    def dead(self) -> str | None:
        """Why the daemon certainly cannot serve clients, found without sending it a command (nothing in its log):
        not started, its process gone, or its control socket gone; None when it may be serving (`not_ready`
        asks it)."""
        if not os.path.exists(self.root.started(self.name)):
            return "the MPS control daemon has not signalled readiness"
        process = self._process
        if process is None or not process.alive():
            return "the MPS control daemon is not running"
        if not os.path.exists(os.path.join(self.pipe_dir, "control")):
            return f"the MPS control daemon's socket {self.pipe_dir}/control is gone"
        return None

    def not_ready(self) -> str | None:
        """None while the daemon has started and answers; else why it cannot serve clients."""
        return not_ready(self.root, self.name, self.program or CONTROL, self.environment)

    def restart(self) -> None:
        """A daemon that stopped answering: ended (killed if it must be) and started again, its GPUs left in
        EXCLUSIVE_PROCESS meanwhile. MpsError when it cannot start again, its GPUs still in EXCLUSIVE_PROCESS: the
        processes of the clients it had must not go on outside MPS, without their limits, on a DEFAULT GPU (they
        get no context until a daemon serves again); `stop` gives the GPUs back."""
        with self._lock:
            self._halt()
            self._launch(restore=False)

    def _halt(self) -> None:
        """The daemon ended (killed if it must be) and no longer followed; its GPUs' compute modes left as they are."""
        self._unmark()
        self._end()
        self._tails.close()

    def stop(self) -> bool:
        """Best effort, every step, within STOP_BOUND_S: a daemon that does not quit is killed, and a daemon
        that died or cannot be killed still leaves its GPUs in DEFAULT. True when the daemon is gone and every
        GPU is back in DEFAULT."""
        with self._lock:
            self._unmark()
            gone = self._end()
            self._tails.close()
            restored = [_restore(gpu) for gpu in self.gpus] if self._touched else []
            self._touched = False
            shutil.rmtree(self.log_dir, ignore_errors=True)
            return gone and all(restored)

    def detach(self) -> None:
        """Stop following the daemon's logs and leave it running with its GPUs as they are (a program that stops
        while the daemon's clients keep working; the next one `adopt`s it)."""
        with self._lock:
            self._tails.close()
            self._launched = self._touched = False
            self._process = None

    def client_environment(self, pipe_dir: str, memory_mib: Mapping[str, int] | None = None,
                           active_thread_percentage: int | None = None) -> dict[str, str]:
        """A client's environment: the pipe directory as the client's container sees it and, optionally, its
        own limits (lower than the daemon's to have an effect): memory by GPU UUID, as
        `<device>=<n>M,...` with each GPU numbered as the daemon's clients see it, and its share of SMs."""
        env = {"CUDA_MPS_PIPE_DIRECTORY": pipe_dir}
        if memory_mib:
            ordinals = {g.uuid: i for i, g in enumerate(self.gpus)}
            if unknown := sorted(set(memory_mib) - set(ordinals)):
                raise ValueError(f"not served by the MPS daemon {self.name}: {', '.join(unknown)}")
            env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(
                f"{ordinals[uuid]}={memory_limit(mib)}" for uuid, mib in sorted(
                    memory_mib.items(), key=lambda item: ordinals[item[0]]))
        if active_thread_percentage is not None:
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(active_thread_percentage)
        return env

    def _unmark(self) -> None:
        problem = unmark(self.root.started(self.name))
        if problem is not None:
            log.warning(problem, name=self.name)

    def _end(self) -> bool:
        """`quit`, then signals to its process group if it must; True when nothing of the daemon runs."""
        if not self._launched:
            return True
        self._launched = False
        try:
            self.control.send("quit", QUIT_S)
            took_quit = True
        except MpsError as e:
            log.warning("MPS daemon did not take quit", name=self.name, error=str(e))
            took_quit = False
        process = self._process or _DaemonProcess.from_pidfile(self._pidfile, self.pipe_dir)
        self._process = None
        if process is None or (process.wait_gone(EXIT_S) if took_quit else not process.members()):
            if took_quit:
                log.info("Shut down MPS", name=self.name)
            return True
        for sig, wait_s in ((signal.SIGTERM, TERM_S), (signal.SIGKILL, KILL_S)):
            log.warning("Stopping the MPS daemon with a signal", name=self.name, pid=process.pid,
                        signal=sig.name)
            process.signal(sig)
            if process.wait_gone(wait_s):
                return True
        log.error("MPS daemon still running after SIGKILL", name=self.name, pid=process.pid,
                  running=process.members())
        return False


def stop_all(daemons: Sequence[MpsDaemon]) -> bool:
    """Every daemon stopped at once, so that any number of them takes no longer than one (STOP_BOUND_S);
    True when each is gone with its GPUs in DEFAULT."""
    if len(daemons) == 1:
        return daemons[0].stop()
    stopped: dict[str, bool] = {}

    def stop(daemon: MpsDaemon) -> None:
        stopped[daemon.name] = daemon.stop()

    with Scope("stopping MPS daemons", STOP_BOUND_S) as scope:
        for daemon in daemons:
            scope.start_thread(f"mps-stop {daemon.name}", functools.partial(stop, daemon))
    return all(stopped.get(d.name, False) for d in daemons)


@dataclass(frozen=True)
class _DaemonProcess:
    """The control daemon's process, told apart from a later process that reuses its PID by its start time,
    and its process group, which its MPS servers share."""

    pid: int
    started: int  # /proc/<pid>/stat field 22, in clock ticks since boot
    group: int

    @classmethod
    def from_pidfile(cls, path: str, pipe_dir: str) -> _DaemonProcess | None:
        """The live MPS control daemon of `pipe_dir` whose PID `path` holds, or None. The pidfile is in the pipe
        directory, which tenants' containers mount read-write: the PID is taken only when that process is an
        nvidia-cuda-mps-control (its command line) started for `pipe_dir` (CUDA_MPS_PIPE_DIRECTORY in the
        environment it was started with, which Control gives it) — never another process of the node, nor the
        daemon of another GPU. A tampered pidfile is logged, and nothing is signalled."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            try:
                text = os.read(fd, 32) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
            finally:
                os.close(fd)
            pid = int(text.strip())
        except (OSError, ValueError):
            return None
        if not _serves(pid, pipe_dir):
            log.warning("MPS pidfile names a process that is not this daemon; ignored", pidfile=path, pid=pid)
            return None
        status = _proc_stat(pid)
        if status is None or status[0] in "ZX":
            return None
        return cls(pid, status[2], status[1])

    def alive(self) -> bool:
        """The daemon itself still runs (cheap: its own /proc entry, not its group's)."""
        status = _proc_stat(self.pid)
        return status is not None and status[2] == self.started and status[0] not in "ZX"

    def members(self) -> list[int]:
        """Its processes that still run: its whole group's when that group is its own, else itself."""
        if self._own_group():
            return [p for p in _pids() if (s := _proc_stat(p)) is not None and s[1] == self.group and s[0] not in "ZX"]
        return [self.pid] if self.alive() else []

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._own_group():
                os.killpg(self.group, sig)
            elif self.members():
                os.kill(self.pid, sig)

    def wait_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            self._reap()
            if not self.members():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)

    def _own_group(self) -> bool:
        """A group of the daemon's own (never ours, never init's): signalled as a whole."""
        return self.group > 1 and self.group != os.getpgrp()

    def _reap(self) -> None:
        """Where we are PID 1 (a container), the daemon was re-parented to us: its exit is ours to collect."""
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-self.group if self._own_group() else self.pid, os.WNOHANG)[0] > 0:
                pass


def _serves(pid: int, pipe_dir: str) -> bool:
    """`pid` is an nvidia-cuda-mps-control started for `pipe_dir` (a process whose environment cannot be read, one
    of another user where we are not root, is not)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read(4096).split(b"\0")
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read(1 << 20).split(b"\0")
    except OSError:
        return False
    # The program itself, or a script run by an interpreter (the tests' stand-in): argv[0] or argv[1].
    if not any(os.path.basename(a) == CONTROL.encode() for a in argv[:2]):
        return False
    return b"CUDA_MPS_PIPE_DIRECTORY=" + os.fsencode(pipe_dir) in environ


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) of `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[2]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


MAX_LINE_BYTES = 4096  # of one MPS log line kept; the rest of a longer line is dropped
READ_BYTES = 64 * 1024  # read from a log file per poll
TAIL_POLL_S = 0.2
# MPS appends to its logs on the root's tmpfs (memory) for as long as it runs: once a log has grown past this and
# every line of it is in ours, it is emptied (as logrotate's copytruncate: MPS appends, so it writes on at the
# start; the lines it writes between our read and the truncation, microseconds, are lost).
MAX_LOG_BYTES = 4 << 20
QUIET = f"Cmd:{PROBE}"  # our own liveness query, every ANSWER_EVERY_S: not copied into our log


class LogTail:
    """Follows an MPS log file into ours, so `kubectl logs` shows what MPS said, leaving out our own probes.
    Bounded: READ_BYTES per poll, lines cut at MAX_LINE_BYTES (a log without newlines holds no more than that),
    only a regular file is opened (without blocking), a file that shrank is read again from its start, a file
    read to its end past MAX_LOG_BYTES emptied."""

    def __init__(self, path: str, name: str) -> None:
        self.path, self.name = path, name
        self.offset = 0
        self.lines = _Lines()

    def run(self, stopping: threading.Event) -> None:
        while not stopping.wait(TAIL_POLL_S):
            self.poll()
        self.poll()  # what the daemon wrote as it stopped

    def poll(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return
            if info.st_size < self.offset:
                self.offset, self.lines = 0, _Lines()
            data = os.pread(fd, READ_BYTES, self.offset)
        except OSError:
            return
        finally:
            os.close(fd)
        self.offset += len(data)
        for line in self.lines.feed(data):
            if not line.endswith(QUIET):
                log.info("mps", name=self.name, log=os.path.basename(self.path), line=line)
        if self.offset == info.st_size > MAX_LOG_BYTES and not self.lines.pending:
            with contextlib.suppress(OSError):
                os.truncate(self.path, 0)
                self.offset = 0


class _Lines:
    """Splits a byte stream into lines, holding at most MAX_LINE_BYTES of an unfinished one: a longer line is
    given out cut (marked with …) and the rest of it, up to its newline, dropped."""

    def __init__(self) -> None:
        self.pending = b""
        self.dropping = False

    def feed(self, data: bytes) -> list[str]:
        *complete, rest = data.split(b"\n")
        lines = []
        for piece in complete:
            if not self.dropping:
                lines.append(_text(self.pending + piece))
            self.pending, self.dropping = b"", False
        if not self.dropping:
            self.pending += rest
            if len(self.pending) > MAX_LINE_BYTES:
                lines.append(_text(self.pending))
                self.pending, self.dropping = b"", True
        return lines


def _text(line: bytes) -> str:
    text = line[:MAX_LINE_BYTES].decode(errors="replace")
    return text + "…" if len(line) > MAX_LINE_BYTES else text


def _set_compute_mode(gpu: Gpu, mode: str) -> None:
    try:
        nvml.set_compute_mode(gpu.index, mode)
    except DiscoveryError as e:
        raise MpsError(str(e)) from e
    log.info("compute mode set", gpu=gpu.uuid, mode=mode)


def _restore(gpu: Gpu) -> bool:
    try:
        _set_compute_mode(gpu, "DEFAULT")
    except MpsError as e:
        log.warning(str(e), gpu=gpu.uuid)
        return False
    return True


def _label_for_containers(path: str) -> None:
    """As upstream: on an SELinux host the pipe directory gets the label containers may use."""
    if os.path.isdir("/sys/fs/selinux"):
        try:
            os.setxattr(path, "security.selinux", SELINUX_LABEL)
        except OSError as e:
            log.warning("cannot label the MPS pipe directory for containers", path=path, error=e.strerror)
