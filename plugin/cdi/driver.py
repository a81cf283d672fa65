"""The driver's files under a driver root, found as nvcdi finds them (nvidia-container-toolkit
pkg/nvcdi/driver-nvml.go, internal/discover/{ipc,mounts,symlinks}.go): the libraries of the running driver
version (through the root's linker cache) with the symlinks a container needs to load them, its binaries, its
GSP firmware and its IPC sockets.

Paths are returned as seen from inside the root ("/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"), with
symlinks resolved inside the root, so they serve both as container paths and, prefixed, as host paths. A path
whose name is not UTF-8 cannot be written into a spec and is left out, with one warning.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
from dataclasses import dataclass

import structlog

from gfd.discovery.nvml import LIBRARY_DIRS
from gfd.discovery.sysfs import host_path
from plugin.cdi import CdiError
from plugin.cdi.ldcache import CacheError, read_cache
from plugin.cdi.roots import resolve
from plugin.cdi.spec import representable

log = structlog.get_logger("plugin")
LD_CACHE = "/etc/ld.so.cache"
BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
            "nvidia-cuda-mps-server", "nvidia-imex", "nvidia-imex-ctl")
BINARY_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
# internal/discover/ipc.go: each socket the first found under /run, then /var/run; the MPS pipe directory.
SOCKETS = ("nvidia-persistenced/socket", "nvidia-fabricmanager/socket")
SOCKET_DIRS = ("/run", "/var/run")
MPS_PIPE_DIR = "/tmp/nvidia-mps"
# internal/discover/symlinks.go: links made for a library whatever the host has (versioned file pattern ->
# (link target, link name in the library's directory); "{}" is the library's own file name).
SPECIAL_LINKS = (("libcuda.so.*.*", "libcuda.so.1", "libcuda.so"),  # many programs dlopen libcuda.so
                 ("libGLX_nvidia.so.*.*", "{}", "libGLX_indirect.so.0"),  # GLVND's indirect GLX
                 ("libnvidia-opticalflow.so.*.*", "libnvidia-opticalflow.so.1", "libnvidia-opticalflow.so"))


@dataclass(frozen=True)
class DriverFiles:
    version: str
    libraries: tuple[str, ...]  # the versioned files, e.g. /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15
    # (target, link) for the create-symlinks hook: libcuda.so.550.54.15 -> <dir>/libcuda.so.1, ...
    links: tuple[tuple[str, str], ...]
    binaries: tuple[str, ...]
    firmware: tuple[str, ...]
    ipc: tuple[str, ...]  # sockets and the MPS pipe directory

    @property
    def library_dirs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(os.path.dirname(p) for p in self.libraries))

    @property
    def libcuda_dirs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(os.path.dirname(p) for p in self.libraries
                                   if os.path.basename(p).startswith("libcuda.so.")))


def find_driver_files(root: str, version: str) -> DriverFiles:
    """CdiError naming what was searched when the driver's libraries are not there."""
    found = _libraries(root, version)
    groups = (tuple(found), _binaries(root), _firmware(root, version), _ipc(root))
    odd = [p for group in groups for p in group if not representable(p)]
    if odd:
        log.warning("driver files skipped: their names are not UTF-8", paths=[repr(os.fsencode(p)) for p in odd])
    libraries, binaries, firmware, ipc = (tuple(p for p in group if representable(p)) for group in groups)
    if not any(os.path.basename(p).startswith("libcuda.so.") for p in libraries):
        raise CdiError(f"failed to create CDI spec: libcuda.so.{version} not found under the driver root {root} "
                       f"(searched the linker cache {host_path(root, LD_CACHE)} and "
                       f"{', '.join('/' + d for d in LIBRARY_DIRS)}); "
                       "set --driver-root-ctr-path to where the host's driver root is mounted")
    links = tuple(dict.fromkeys(link for lib in libraries for link in _links(root, lib, found[lib])))
    return DriverFiles(version, libraries, links, binaries, firmware, ipc)


def _libraries(root: str, version: str) -> dict[str, tuple[str, ...]]:
    """Every file of the driver version the linker knows, with the sonames the linker finds it by. Without a
    usable cache (some driver containers; a cache that is not one), the standard library directories are listed
    instead, and a symlink there that is not a development `.so` name counts as a soname."""
    candidates = _cache_entries(root)
    if candidates is None:
        candidates = [(name, f"/{d}/{name}") for d in LIBRARY_DIRS for name in _listdir(host_path(root, d))
                      if not name.endswith(".so")]
    suffix = f".so.{version}"
    found: dict[str, dict[str, None]] = {}
    for name, path in candidates:
        real = resolve(root, path)
        if real is None or not real.endswith(suffix) or not os.path.isfile(host_path(root, real)):
            continue
        found.setdefault(real, {})[name] = None
    return {real: tuple(names) for real, names in found.items()}


def _cache_entries(root: str) -> list[tuple[str, str]] | None:
    """(soname, path) from the root's cache, itself found inside the root (an absolute symlink such as
    /etc/ld.so.cache -> /var/cache/ldconfig/ld.so.cache means the root's); None without a usable one."""
    where = resolve(root, LD_CACHE)
    if where is None:
        return None
    try:
        cache = read_cache(host_path(root, where))
    except CacheError as e:
        log.warning("linker cache not usable; listing the library directories", error=str(e))
        return None
    if cache.skipped:
        log.warning("linker cache entries skipped: malformed, or names that are not UTF-8",
                    path=host_path(root, where), skipped=cache.skipped)
    return [(e.soname, e.path) for e in cache.entries]


def _links(root: str, library: str, sonames: tuple[str, ...]) -> list[tuple[str, str]]:
    """nvcdi's links for one library: its special ones; versioned file -> soname and soname -> `.so`, each
    only where the host's library directory has that symlink (nvcdi's rule: the container gets the host's)."""
    directory, name = os.path.split(library)
    links = [(target.format(name), f"{directory}/{link}") for pattern, target, link in SPECIAL_LINKS
             if fnmatch.fnmatchcase(name, pattern)]
    for soname in [n for n in sonames if representable(n)] or [name]:
        if soname != name and _is_symlink(root, f"{directory}/{soname}"):
            links.append((name, f"{directory}/{soname}"))
        dev_name = _dev_name(soname)
        if dev_name and dev_name != soname and _is_symlink(root, f"{directory}/{dev_name}"):
            links.append((soname, f"{directory}/{dev_name}"))
    return links


def _dev_name(soname: str) -> str:
    """The development name a soname's `.so` link has (libnvidia-ml.so.1 -> libnvidia-ml.so); "" for none."""
    stem, ext = os.path.splitext(soname)
    if ext == ".so":
        return soname
    return _dev_name(stem) if ext else ""


def _is_symlink(root: str, path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(host_path(root, path)).st_mode)
    except OSError:
        return False


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


def _ipc(root: str) -> tuple[str, ...]:
    found = []
    for socket in SOCKETS:
        for directory in SOCKET_DIRS:
            real = resolve(root, f"{directory}/{socket}")
            if real is not None and not os.path.isdir(host_path(root, real)):
                found.append(real)
                break
    pipes = resolve(root, MPS_PIPE_DIR)
    return (*found, *([pipes] if pipes is not None else []))


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
