"""Where the driver's files and device nodes are as the plugin reads them, and as the host names them
(nvcdi's root transform: found under `--driver-root-ctr-path`, written under `--driver-root` and `--dev-root`).

A device node is read as the plugin sees it (runc's DeviceFromPath, which nvcdi uses: lstat, a character or block
device gets its major, minor and mode); the numbers go into the spec, so the runtime does not have to stat a
host path that may differ from the plugin's view. A node that is not a device (a placeholder, a symlink) keeps
its path alone, and the runtime reads it at injection, as nvcdi leaves it.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass

import structlog

from gfd.discovery.sysfs import device_root, host_path
from plugin.cdi.spec import DeviceNode, Mount, representable
from plugin.config import PluginConfig

log = structlog.get_logger("plugin")
_MAX_LINKS = 40  # as the kernel's limit on nested symlinks
DEVICE_PERMISSIONS = "rwm"  # nvcdi asks DeviceFromPath for "rwm"


@dataclass(frozen=True)
class Roots:
    driver: str  # where the driver root is for the plugin's reads, e.g. /driver-root (or / when none is mounted)
    dev: str  # where /dev is for the plugin's reads
    host_driver: str  # --driver-root, e.g. /run/nvidia/driver
    host_dev: str  # --dev-root, defaulting to the driver root

    @classmethod
    def for_config(cls, config: PluginConfig, host_root: str = "/") -> Roots:
        """`host_root` is / in production (a simulated node's tree in tests)."""
        mounted = host_path(host_root, config.container_driver_root)
        driver = mounted if os.path.isdir(mounted) else host_root
        return cls(driver, device_root(host_root, config.container_driver_root), config.nvidia_driver_root,
                   config.dev_root)

    def mount(self, path: str, options: tuple[str, ...] | None = None) -> Mount:
        """A driver file, found at `path` inside the driver root."""
        where = host_path(self.host_driver, path)
        return Mount(where, path) if options is None else Mount(where, path, options)

    def node(self, path: str) -> DeviceNode:
        """The device node at `path` (/dev/...), with the numbers the plugin reads for it."""
        host = host_path(self.host_dev, path)
        where = "" if host == path else host
        try:
            info = os.lstat(host_path(self.dev, path))
        except OSError:
            return DeviceNode(path, where)
        if not (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            return DeviceNode(path, where)
        mode = stat.S_IMODE(info.st_mode)
        return DeviceNode(path, where, os.major(info.st_rdev), os.minor(info.st_rdev), mode or None,
                          DEVICE_PERMISSIONS, info.st_gid or None)

    def nodes(self, patterns: tuple[str, ...]) -> tuple[DeviceNode, ...]:
        """The device nodes that exist, for glob patterns such as /dev/nvidia-fs*."""
        found = []
        for pattern in patterns:
            for match in sorted(glob.glob(host_path(self.dev, pattern))):
                path = "/" + os.path.relpath(match, self.dev)
                if representable(path):
                    found.append(self.node(path))
                else:
                    log.warning("device node skipped: its name is not UTF-8", path=repr(os.fsencode(path)))
        return tuple(found)


def resolve(root: str, path: str) -> str | None:
    """`path` with every symlink followed as if `root` were /, or None when it does not exist. An absolute
    link target (/usr/lib/...) means the root's, never the plugin container's."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        if part == ".":
            continue
        current = "/" + "/".join([*done, part])
        try:
            mode = os.lstat(host_path(root, current)).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            hops += 1
            if hops > _MAX_LINKS:
                return None
            try:
                target = os.readlink(host_path(root, current))
            except OSError:
                return None
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return "/" + "/".join(done)
