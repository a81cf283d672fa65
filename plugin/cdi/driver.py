"""The driver's files under a driver root, found as nvcdi finds them (nvidia-container-toolkit
pkg/nvcdi/driver-nvml.go, internal/discover/{ipc,mounts}.go): the libraries of the running driver version
(through the root's linker cache), its binaries, its GSP firmware and its IPC sockets.

Paths are returned as seen from inside the root ("/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"), with
symlinks resolved inside the root, so they serve both as container paths and, prefixed, as host paths.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass

from gfd.discovery.nvml import LIBRARY_DIRS
from gfd.discovery.sysfs import host_path
from plugin.cdi import CdiError
from plugin.cdi.ldcache import CacheError, read_cache

LD_CACHE = "etc/ld.so.cache"
BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
            "nvidia-cuda-mps-server", "nvidia-imex", "nvidia-imex-ctl")
BINARY_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
IPC_SOCKETS = ("/var/run/nvidia-persistenced/socket", "/var/run/nvidia-fabricmanager/socket", "/tmp/nvidia-mps")
_MAX_LINKS = 40  # as the kernel's limit on nested symlinks


@dataclass(frozen=True)
class DriverFiles:
    version: str
    libraries: tuple[str, ...]  # the versioned files, e.g. /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15
    sonames: tuple[tuple[str, str], ...]  # (soname, library) for the `.so` symlinks the container gets
    binaries: tuple[str, ...]
    firmware: tuple[str, ...]
    ipc: tuple[str, ...]

    @property
    def library_dirs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(os.path.dirname(p) for p in self.libraries))


def find_driver_files(root: str, version: str) -> DriverFiles:
    """CdiError naming what was searched when the driver's libraries are not there."""
    libraries, sonames = _libraries(root, version)
    if not any(os.path.basename(p).startswith("libcuda.so.") for p in libraries):
        where = os.path.join(root, LD_CACHE)
        raise CdiError(f"failed to create CDI spec: libcuda.so.{version} not found under the driver root {root} "
                       f"(searched the linker cache {where} and {', '.join('/' + d for d in LIBRARY_DIRS)}); "
                       "set --driver-root-ctr-path to where the host's driver root is mounted")
    return DriverFiles(version, libraries, sonames, _binaries(root), _firmware(root, version),
                       tuple(p for p in (resolve(root, s) for s in IPC_SOCKETS) if p is not None))


def _libraries(root: str, version: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Every file of the driver version the linker knows, with the sonames that point at it. Without a
    cache (some driver containers), the standard library directories are listed instead."""
    try:
        candidates = [(e.soname, e.path) for e in read_cache(os.path.join(root, LD_CACHE))]
    except CacheError:
        candidates = [(name, f"/{d}/{name}") for d in LIBRARY_DIRS
                      for name in _listdir(os.path.join(root, d))]
    suffix = f".so.{version}"
    libraries: dict[str, None] = {}
    sonames: dict[tuple[str, str], None] = {}
    for name, path in candidates:
        real = resolve(root, path)
        if real is None or not real.endswith(suffix) or not os.path.isfile(host_path(root, real)):
            continue
        libraries[real] = None
        if name != os.path.basename(real):
            sonames[(name, real)] = None
    return tuple(libraries), tuple(sonames)


def _binaries(root: str) -> tuple[str, ...]:
    found = []
    for name in BINARIES:
        for directory in BINARY_DIRS:
            real = resolve(root, f"/{directory}/{name}")
            if real is not None and _is_executable(host_path(root, real)):
                found.append(real)
                break
    return tuple(found)


def _firmware(root: str, version: str) -> tuple[str, ...]:
    release = os.uname().release
    found: dict[str, None] = {}
    for base in (f"/lib/firmware/updates/{release}", "/lib/firmware/updates", f"/lib/firmware/{release}",
                 "/lib/firmware"):
        pattern = host_path(root, f"{base}/nvidia/{glob.escape(version)}/gsp*.bin")
        for match in sorted(glob.glob(pattern)):
            real = resolve(root, "/" + os.path.relpath(match, root))
            if real is not None:
                found[real] = None
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
            target = os.readlink(host_path(root, current))
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return "/" + "/".join(done)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
