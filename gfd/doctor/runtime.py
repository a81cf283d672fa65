"""Which container runtimes on the host know the NVIDIA runtime, read from their config files as the NVIDIA
Container Toolkit writes them (`nvidia-ctk runtime configure`; upstream's README, "Configure containerd /
CRI-O / Docker"): a runtime handler named `nvidia`, and whether it is the default. Whatever is at a config
path is read (hostfiles: a FIFO, a directory or a symlink loop there is an error, never "no
configuration"), and a value of the wrong type is an error naming its key, as the runtime would refuse it."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gfd.doctor.hostfiles import HostFileError, get, load_json, load_toml

CONTAINERD = "etc/containerd/config.toml"
CRIO = ("etc/crio/crio.conf", "etc/crio/crio.conf.d/*.conf")
DOCKER = "etc/docker/daemon.json"
# containerd 1.x (config version 2) and 2.x (version 3) keep the CRI runtimes under different plugins.
_CONTAINERD_CRI = ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime")
NVIDIA = "nvidia"


@dataclass(frozen=True)
class RuntimeConfig:
    runtime: str  # as nvidia-ctk's --runtime and systemd name it: containerd, crio, docker
    path: str
    nvidia_handler: bool
    default: str  # the default runtime's name
    error: str = ""  # the file could not be read or says something the runtime would refuse
    unreadable: bool = False  # the error is what is at the path (not a regular file, a loop, too big)

    @property
    def nvidia_default(self) -> bool:
        return self.default == NVIDIA and self.nvidia_handler

    @property
    def default_has_no_handler(self) -> bool:
        """The default is `nvidia` but no handler of that name exists: the runtime refuses to start (containerd:
        "no corresponding runtime configured in `containerd.runtimes` for `default_runtime_name`")."""
        return self.default == NVIDIA and not self.nvidia_handler


def read_runtime_configs(host_root: str) -> list[RuntimeConfig]:
    found = []
    containerd = os.path.join(host_root, CONTAINERD)
    if os.path.lexists(containerd):
        found.append(_read("containerd", containerd, _containerd))
    crio = [p for pattern in CRIO for p in sorted(glob.glob(os.path.join(host_root, pattern)))]
    if crio:
        found.append(_crio(crio))
    docker = os.path.join(host_root, DOCKER)
    if os.path.lexists(docker):
        found.append(_read("docker", docker, _docker))
    return found


def _read(runtime: str, path: str, parse: Callable[[str], tuple[bool, str]]) -> RuntimeConfig:
    try:
        handler, default = parse(path)
    except HostFileError as e:
        return RuntimeConfig(runtime, path, False, "", str(e), e.unreadable)
    return RuntimeConfig(runtime, path, handler, default)


def _containerd(path: str) -> tuple[bool, str]:
    doc = load_toml(path)
    for plugin in _CONTAINERD_CRI:
        keys = ("plugins", plugin, "containerd")
        if get(doc, keys, dict, {}):
            return _handler(doc, (*keys, "runtimes")), get(doc, (*keys, "default_runtime_name"), str, "runc")
    return False, "runc"


def _crio(paths: list[str]) -> RuntimeConfig:
    handler, default = False, "crun"
    for path in paths:  # drop-ins are applied in order: a later one wins
        try:
            doc = load_toml(path)
            handler = _handler(doc, ("crio", "runtime", "runtimes")) or handler
            default = get(doc, ("crio", "runtime", "default_runtime"), str, default)
        except HostFileError as e:
            return RuntimeConfig("crio", path, False, "", str(e), e.unreadable)
    return RuntimeConfig("crio", ", ".join(paths), handler, default)


def _docker(path: str) -> tuple[bool, str]:
    doc = load_json(path)
    get(doc, (), dict, {}, "an object")  # the document itself is an object
    return _handler(doc, ("runtimes",), "an object"), get(doc, ("default-runtime",), str, "runc", "an object")


def _handler(doc: dict[str, Any], runtimes: tuple[str, ...], mapping: str = "a table") -> bool:
    """Whether the `runtimes` table has an `nvidia` entry, itself a table (a string there is no handler)."""
    get(doc, (*runtimes, NVIDIA), dict, {}, mapping)
    return isinstance(get(doc, runtimes, dict, {}, mapping).get(NVIDIA), dict)
