"""Which pod and container a process runs in, from its `/proc/<pid>/cgroup`: the kubelet names a pod's cgroup after
the pod's UID and the runtime names a container's after the container's ID.

The file has one line per hierarchy, `<id>:<controllers>:<path>` (cgroup v1), or the single line `0::<path>`
(cgroup v2); the path is relative to the reader's cgroup namespace root (man 7 cgroups). The forms of a pod's
path (kubelet pkg/kubelet/cm, cgroup_manager_linux.go and the runtimes' cgroup drivers):

- cgroupfs driver: `[<cgroup root>]/kubepods/[burstable|besteffort/]pod<UID>/<container ID>`; the guaranteed class
  has no QoS level;
- systemd driver: `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<UID, "-" as "_">.slice/<runtime>-<ID>.scope`,
  the runtime `cri-containerd`, `crio` or `docker`; `kubepods-pod<UID>.slice` for the guaranteed class.

A pod's UID is a UUID (the API server's), or 32 hex digits (a static pod's, the hash of its manifest); a container
ID is 64 hex digits. Anything else in a path is ignored, and a file whose lines name two different pods names none.
The reading is bounded (the first READ_LIMIT bytes, the first MAX_LINES lines, only regular files: a FIFO would
block); a file that cannot be read, or odd bytes in it, name no pod.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from gfd.config.errors import ConfigError
from gfd.config.reading import read_bytes

READ_LIMIT = 64 * 1024  # a real file is a few hundred bytes (13 v1 hierarchies, each path under 300 bytes)
MAX_LINES = 64
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
_POD = re.compile(rf"(?:kubepods(?:-[a-z]+)?-)?pod({_UID})(?:\.slice)?")
_CONTAINER = re.compile(r"(?:(?:cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?")


@dataclass(frozen=True)
class CgroupOwner:
    """The pod (its UID, as the API server spells it) and container (its runtime ID, None when the path stops at
    the pod) a process runs in."""

    pod_uid: str
    container_id: str | None


def owner_of(text: str) -> CgroupOwner | None:
    """The pod and container a `/proc/<pid>/cgroup` content names; None when it names no pod, or two."""
    found: set[CgroupOwner] = set()
    for line in text.split("\n", MAX_LINES)[:MAX_LINES]:
        _hierarchy, sep, rest = line.partition(":")
        _controllers, sep2, path = rest.partition(":")
        if sep and sep2:
            owner = _path_owner(path)
            if owner is not None:
                found.add(owner)
    pods = {o.pod_uid for o in found}
    if len(pods) != 1:
        return None
    containers = {o.container_id for o in found} - {None}
    # Hierarchies that stop at the pod (a controller the runtime does not split) agree with those that go on.
    return CgroupOwner(pods.pop(), containers.pop() if len(containers) == 1 else None)


def _path_owner(path: str) -> CgroupOwner | None:
    segments = path.split("/")
    for i, segment in enumerate(segments):
        pod = _POD.fullmatch(segment)
        if pod is None:
            continue
        uid = pod.group(1).replace("_", "-")
        container = _CONTAINER.fullmatch(segments[i + 1]) if i + 1 < len(segments) else None
        return CgroupOwner(uid, container.group(1) if container else None)
    return None


def read_owner(proc_root: str, pid: int) -> CgroupOwner | None:
    """The owner of process `pid` as `<proc_root>/<pid>/cgroup` names it; None when the file cannot be read (the
    process ended, or this program does not see the host's processes) or names no pod."""
    try:
        data = read_bytes(os.path.join(proc_root, str(pid), "cgroup"), "cgroup", READ_LIMIT)
    except ConfigError:
        return None
    return owner_of(data.decode("utf-8", "replace"))
