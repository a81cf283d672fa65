"""The CDI spec file format (../shared/cdi/SPEC.md), as plain data, and its minimum version."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from plugin.cdi import CdiError

VENDOR = "k8s.device-plugin.nvidia.com"
# SPEC.md "CDI Devices": alphanumeric at both ends, `-_.` between; the CDI parser also accepts `:`
# (container-device-interface pkg/parser ValidateDeviceName), which nvcdi's index names use for MIG ("0:1").
DEVICE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?")
# SPEC.md "Version" table: 0.3.0 is the first release (device nodes' major, minor, fileMode, permissions and gid
# included); 0.5.0 added `hostPath` on device nodes and names that begin with a digit. Nothing else in the table
# (mount types, annotations, intelRdt, additionalGids, ...) is used here.
V030, V050 = "0.3.0", "0.5.0"


@dataclass(frozen=True)
class DeviceNode:
    path: str  # in the container
    host_path: str = ""  # when it differs from `path` (a driver or dev root elsewhere on the host)
    # Read from the node when it is a device (None: the runtime stats the host path at injection). All in 0.3.0.
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None  # permission bits, as runc's DeviceFromPath gives them to nvcdi
    permissions: str = ""  # cgroup access: "rwm"
    gid: int | None = None  # only a group other than root's, as nvcdi


# nvcdi's mount options (internal/discover/mounts.go): driver files read-only; its IPC sockets writable
# (internal/discover/ipc.go: a client must connect, and a nested runtime must bind them again) and not executable.
FILE_OPTIONS = ("ro", "nosuid", "nodev", "rbind", "rprivate")
IPC_OPTIONS = ("nosuid", "nodev", "rbind", "rprivate", "noexec")


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = FILE_OPTIONS


@dataclass(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...]
    env: tuple[str, ...] = ("NVIDIA_CTK_DEBUG=false",)
    hook_name: str = "createContainer"  # every NVIDIA CDI hook runs in the container's mount namespace


@dataclass(frozen=True)
class ContainerEdits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.env or self.device_nodes or self.mounts or self.hooks)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.env:
            out["env"] = list(self.env)
        if self.device_nodes:
            out["deviceNodes"] = [_device_node(n) for n in self.device_nodes]
        if self.mounts:
            out["mounts"] = [{"hostPath": m.host_path, "containerPath": m.container_path, "options": list(m.options)}
                             for m in self.mounts]
        if self.hooks:
            out["hooks"] = [{"hookName": h.hook_name, "path": h.path, "args": list(h.args), "env": list(h.env)}
                            for h in self.hooks]
        return out


def _device_node(node: DeviceNode) -> dict[str, Any]:
    """In the order of the CDI Go types' fields, each only when set."""
    fields = {"path": node.path, "hostPath": node.host_path, "major": node.major, "minor": node.minor,
              "fileMode": node.file_mode, "permissions": node.permissions, "gid": node.gid}
    return {k: v for k, v in fields.items() if v not in (None, "")}


def representable(path: str) -> bool:
    """Whether a path read from the node can be written into a spec: a name that is not UTF-8 (Python hands it
    over with lone surrogates) would reach the runtime as U+FFFD, a path that does not exist."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Device:
    name: str
    edits: ContainerEdits


@dataclass(frozen=True)
class Spec:
    cdi_class: str
    devices: tuple[Device, ...]
    edits: ContainerEdits = field(default_factory=ContainerEdits)
    vendor: str = VENDOR

    @property
    def kind(self) -> str:
        return f"{self.vendor}/{self.cdi_class}"

    @property
    def file_name(self) -> str:
        """The CDI library's generated name (GenerateNameForSpec: `<vendor>-<class>`), as upstream saves it."""
        return f"{self.vendor}-{self.cdi_class}.json"

    def minimum_version(self) -> str:
        """The lowest version that expresses what this spec uses, so older runtimes still load it."""
        all_edits = [self.edits, *(d.edits for d in self.devices)]
        if any(n.host_path for e in all_edits for n in e.device_nodes) or \
                any(d.name[0].isdigit() for d in self.devices):
            return V050
        return V030

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"cdiVersion": self.minimum_version(), "kind": self.kind,
                               "devices": [{"name": d.name, "containerEdits": d.edits.to_dict()} for d in self.devices]}
        if self.edits:
            doc["containerEdits"] = self.edits.to_dict()
        try:  # UTF-8 as it is: a lone surrogate fails here instead of being escaped into the file
            return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
        except UnicodeEncodeError as e:
            raise CdiError(f"failed to create CDI spec {self.kind}: a path is not UTF-8 "
                           f"({e.object[max(e.start - 40, 0):e.end + 20]!a})") from e
