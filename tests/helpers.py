"""Small helpers the test modules share: waiting, reading a feature file, a free port, an HTTP GET, shared objects
and linker caches built by the real toolchain, a simulated node's device model, a fake host root for doctor."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gfd.discovery.simulated.install import Simulation
from gfd.model import DeviceModel
from tests.requirements import require_command, require_commands


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait until `predicate` holds; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)
    return time.monotonic() - start


def read_labels(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()) if path.exists() else {}


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str] | None:
    """(status, body stripped), also for error statuses; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status), resp.read().decode().strip()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode().strip()
    except OSError:
        return None


def kill_all(procs: Iterable[subprocess.Popen[Any]]) -> None:
    """What a test started and left running: killed and reaped."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def simulated_model(profile: str) -> DeviceModel:
    """A simulated node's device model as discovery reads it (NVML opened and closed again)."""
    from gfd.discovery.session import NodeSource
    from gfd.discovery.simulated.install import install
    from gfd.discovery.simulated.profiles import load_profile

    sim = install(load_profile(profile))
    source = NodeSource("auto")
    source.host_root = sim.host_root
    try:
        source.open()
        return source.read()
    finally:
        source.close()
        sim.close()


def simulation_of(program: Any) -> Simulation:
    """The simulated node a running daemon or plugin (started with --simulate) reads now."""
    current = program.current
    assert current is not None and current.source.simulation is not None
    return current.source.simulation  # type: ignore[no-any-return]


class InThreads:
    """Programs a test runs on daemon threads; after the test each is stopped and must end."""

    def __init__(self) -> None:
        self._running: list[tuple[Callable[[], None], threading.Thread]] = []

    def start(self, run: Callable[[], object], stop: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._running.append((stop, thread))
        return thread

    def stop_all(self, timeout: float = 5.0) -> None:
        for stop, thread in self._running:
            stop()
            thread.join(timeout)
            assert not thread.is_alive()


def shared_object(path: Path, soname: str | bytes) -> None:
    """An empty ELF shared object with `soname` (bytes for a name that is not UTF-8), built by gcc."""
    require_command("gcc")
    path.parent.mkdir(parents=True, exist_ok=True)
    flag = b"-Wl,-soname," + (soname if isinstance(soname, bytes) else soname.encode())
    subprocess.run([b"gcc", b"-shared", b"-nostdlib", flag, b"-o", bytes(path), b"-x", b"c", b"/dev/null"],
                   check=True)


def ldconfig(root: Path, *args: str) -> None:
    """glibc's own ldconfig run on `root` (its etc/ld.so.conf): the soname links and etc/ld.so.cache."""
    require_commands("ldconfig", *(() if os.geteuid() == 0 else ("unshare",)))
    command = ["ldconfig", "-r", str(root), *args]
    subprocess.run(command if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", *command],
                   check=True)


def ldconfig_print(cache: Path) -> set[tuple[str, str]]:
    """(soname, path) as glibc's reader prints a cache (`ldconfig -p -C`)."""
    require_command("ldconfig")
    printed = subprocess.run(["ldconfig", "-p", "-C", str(cache)], capture_output=True, check=True).stdout.decode(
        errors="surrogateescape")
    return {(line.split(" (")[0].strip(), line.split(" => ")[1]) for line in printed.splitlines() if " => " in line}


class FakeHostRoot:
    """A host root for doctor's checks: files written under it, the GPUs' device nodes, and unix sockets that
    really listen (keep `root` short: a socket path has at most 107 bytes)."""

    def __init__(self, root: Path, gpus: int = 8) -> None:
        self.root = root
        self.sockets: list[socket.socket] = []
        for node in ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", *(f"nvidia{i}" for i in range(gpus))]:
            self.write(f"dev/{node}", "")

    def write(self, path: str, text: str, mode: int = 0o644) -> Path:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
        return target

    def listen(self, path: str) -> socket.socket:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(str(target))
        listening.listen(1)
        self.sockets.append(listening)
        return listening

    def close(self) -> None:
        for listening in self.sockets:
            listening.close()


def kube_requests(monkeypatch: Any) -> list[str]:
    """The verbs of the requests sent through gfd.kube's Kube.request from now on (to the test's end)."""
    from gfd.kube.client import Kube  # here: the kubernetes client takes ~400 ms to import, most tests never need it

    sent: list[str] = []
    request = Kube.request

    def counted(self: Kube, verb: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(verb)
        return request(self, verb, *args, **kwargs)

    monkeypatch.setattr(Kube, "request", counted)
    return sent
