"""A real process as a pod's container runs: a child of the test placed in a cgroup the kubelet would make for the
pod (`kubepods/besteffort/pod<UID>/<container ID>`, cgroupfs; or the systemd driver's slices and scope), so the
kernel's /proc/<pid>/cgroup names it as it names a container's process. That needs root and a writable cgroup
hierarchy (the unified one, else cgroup v1's pids); without them, `fake_proc` writes the file the kernel would
show into a directory the code under test takes as its proc root."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.requirements import missing

CGROUPFS, SYSTEMD = "cgroupfs", "systemd"


@dataclass(frozen=True)
class PodProcess:
    pid: int
    pod_uid: str
    container_id: str


def pod_path(driver: str, pod_uid: str, container_id: str) -> str:
    """The cgroup path of a BestEffort pod's container under the kubelet's cgroup driver, with containerd."""
    if driver == SYSTEMD:
        slice_uid = pod_uid.replace("-", "_")
        return (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{slice_uid}.slice/"
                f"cri-containerd-{container_id}.scope")
    return f"/kubepods/besteffort/pod{pod_uid}/{container_id}"


def writable_hierarchy() -> tuple[Path, str] | None:
    """(mount point, "0" for the unified hierarchy or the v1 hierarchy's id) of a cgroup hierarchy this process may
    make cgroups in; None without one."""
    if os.geteuid() != 0:
        return None
    mounts = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    found: dict[str, Path] = {}
    for fields in mounts:
        fstype = fields[fields.index("-") + 1]
        if fstype == "cgroup2":
            found.setdefault("unified", Path(fields[4]))
        elif fstype == "cgroup" and "pids" in fields[-1].split(","):
            found.setdefault("pids", Path(fields[4]))
    for kind in ("unified", "pids"):
        if kind in found and os.access(found[kind], os.W_OK):
            return found[kind], kind
    return None


def new_ids() -> tuple[str, str]:
    return str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex


@contextlib.contextmanager
def process_in_pod_cgroup(driver: str, pod_uid: str = "") -> Iterator[PodProcess]:
    """A `sleep` child in a real cgroup of a pod (`pod_uid`, else a new one) and a new container; skips (fails under
    CI) without root or a writable hierarchy."""
    hierarchy = writable_hierarchy()
    if hierarchy is None:
        missing("needs root and a writable cgroup hierarchy (a real pod cgroup for a process)",
                "run the tests as root, as .ci/run does")
    mount, _kind = hierarchy
    new_uid, container_id = new_ids()
    pod_uid = pod_uid or new_uid
    top = mount / f"gfd-test-{uuid.uuid4().hex[:8]}"
    leaf = Path(f"{top}{pod_path(driver, pod_uid, container_id)}")
    leaf.mkdir(parents=True)
    child = subprocess.Popen(["sleep", "300"])
    try:
        (leaf / "cgroup.procs").write_text(str(child.pid))
        yield PodProcess(child.pid, pod_uid, container_id)
    finally:
        child.kill()
        child.wait()
        directory = leaf
        while True:  # the empty cgroups, the deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()
            if directory == top:
                break
            directory = directory.parent


def fake_proc(proc_root: Path, pid: int, driver: str, pod_uid: str, container_id: str) -> None:
    """`<proc_root>/<pid>/cgroup` as the kernel shows a container's process on a cgroup v1 node (one line per
    hierarchy; `0::/` for the unused unified one)."""
    path = pod_path(driver, pod_uid, container_id)
    lines = [f"{i}:{controller}:{path}" for i, controller in enumerate(("pids", "memory", "cpu,cpuacct"), 1)]
    (proc_root / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc_root / str(pid) / "cgroup").write_text("\n".join([*reversed(lines), "0::/"]) + "\n")


class PodProcesses:
    """Processes that tests place in pods: in real cgroups (`real`), or with their cgroup file under a proc root of
    the test's own (`proc_root`); `outside()` starts one in no pod. Closed by `close`."""

    def __init__(self, real: bool, scratch: Path) -> None:
        self.real = real
        self.proc_root = "/proc" if real else str(scratch)
        self._stack = contextlib.ExitStack()

    def start(self, driver: str = CGROUPFS, pod_uid: str = "") -> PodProcess:
        if self.real:
            return self._stack.enter_context(process_in_pod_cgroup(driver, pod_uid))
        uid, container_id = new_ids()
        child = self._child()
        fake_proc(Path(self.proc_root), child.pid, driver, pod_uid or uid, container_id)
        return PodProcess(child.pid, pod_uid or uid, container_id)

    def outside(self) -> int:
        return self._child().pid

    def _child(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(["sleep", "300"])
        self._stack.callback(child.wait)
        self._stack.callback(child.kill)
        return child

    def close(self) -> None:
        self._stack.close()
