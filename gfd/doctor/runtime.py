"""Which container runtimes on the host know the NVIDIA runtime, read from their config files as the NVIDIA
Container Toolkit writes them (`nvidia-ctk runtime configure`; upstream's README, "Configure containerd /
CRI-O / Docker"): a runtime handler named `nvidia`, and whether it is the default; and whether the runtime
injects the CDI devices the kubelet passes (CRI `CDIDevices`: the DRA driver's claims, the plugin's
`cdi-cri` strategy), from which directories. Whatever is at a config path is read (hostfiles: a FIFO, a
directory or a symlink loop there is an error, never "no configuration"), and a value of the wrong type is an
error naming its key, as the runtime would refuse it."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gfd.doctor.hostfiles import HostFileError, dotted, get, load_json, load_toml

CONTAINERD = "etc/containerd/config.toml"
CRIO = ("etc/crio/crio.conf", "etc/crio/crio.conf.d/*.conf")
DOCKER = "etc/docker/daemon.json"
# containerd 1.x (config version 2) and 2.x (version 3) keep the CRI runtimes under different plugins.
_CONTAINERD_CRI = ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime")
NVIDIA = "nvidia"
# Where containerd (CRI config cdi_spec_dirs) and CRI-O ([crio.runtime] cdi_spec_dirs) read CDI specs by default.
CDI_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")


@dataclass(frozen=True)
class Cdi:
    """CDI injection as a runtime's config sets it. `enabled` None: the config does not say, and the runtime's
    default depends on its version (`default_note` says how)."""

    enabled: bool | None
    spec_dirs: tuple[str, ...] = CDI_SPEC_DIRS
    key: str = ""  # where the config sets it, as TOML writes the key
    default_note: str = ""


@dataclass(frozen=True)
class RuntimeConfig:
    runtime: str  # as nvidia-ctk's --runtime and systemd name it: containerd, crio, docker
    path: str
    nvidia_handler: bool
    default: str  # the default runtime's name
    error: str = ""  # the file could not be read or says something the runtime would refuse
    unreadable: bool = False  # the error is what is at the path (not a regular file, a loop, too big)
    cdi: Cdi | None = None  # None: the runtime is no CRI runtime of the kubelet (Docker)

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


def _read(runtime: str, path: str, parse: Callable[[str], tuple[bool, str, Cdi | None]]) -> RuntimeConfig:
    try:
        handler, default, cdi = parse(path)
    except HostFileError as e:
        return RuntimeConfig(runtime, path, False, "", str(e), e.unreadable)
    return RuntimeConfig(runtime, path, handler, default, cdi=cdi)


def _containerd(path: str) -> tuple[bool, str, Cdi]:
    doc = load_toml(path)
    version = get(doc, ("version",), int, 1)
    # containerd 2.x (config version 3) has CDI on by default; 1.7 off (its CRI config's EnableCDI).
    cri = ("plugins", _CONTAINERD_CRI[1] if version >= 3 else _CONTAINERD_CRI[0])
    enabled = get(doc, (*cri, "enable_cdi"), bool, False) if _has(doc, (*cri, "enable_cdi")) else None
    cdi = Cdi(enabled, _strings(doc, (*cri, "cdi_spec_dirs"), CDI_SPEC_DIRS), dotted((*cri, "enable_cdi")),
              "on by default in containerd 2.x (config version 3)" if version >= 3 else
              "off by default in containerd 1.7 (config version 2; 2.x turns it on)")
    for plugin in _CONTAINERD_CRI:
        keys = ("plugins", plugin, "containerd")
        if get(doc, keys, dict, {}):
            return _handler(doc, (*keys, "runtimes")), get(doc, (*keys, "default_runtime_name"), str, "runc"), cdi
    return False, "runc", cdi


def _crio(paths: list[str]) -> RuntimeConfig:
    handler, default = False, "crun"
    dirs: tuple[str, ...] = CDI_SPEC_DIRS
    for path in paths:  # drop-ins are applied in order: a later one wins
        try:
            doc = load_toml(path)
            handler = _handler(doc, ("crio", "runtime", "runtimes")) or handler
            default = get(doc, ("crio", "runtime", "default_runtime"), str, default)
            dirs = _strings(doc, ("crio", "runtime", "cdi_spec_dirs"), dirs)
        except HostFileError as e:
            return RuntimeConfig("crio", path, False, "", str(e), e.unreadable)
    # CRI-O injects CDI devices always (no switch); only the directories are configurable.
    cdi = Cdi(True, dirs, dotted(("crio", "runtime", "cdi_spec_dirs")))
    return RuntimeConfig("crio", ", ".join(paths), handler, default, cdi=cdi)


def _docker(path: str) -> tuple[bool, str, None]:
    doc = load_json(path)
    get(doc, (), dict, {}, "an object")  # the document itself is an object
    return _handler(doc, ("runtimes",), "an object"), get(doc, ("default-runtime",), str, "runc", "an object"), None


def _handler(doc: dict[str, Any], runtimes: tuple[str, ...], mapping: str = "a table") -> bool:
    """Whether the `runtimes` table has an `nvidia` entry, itself a table (a string there is no handler)."""
    get(doc, (*runtimes, NVIDIA), dict, {}, mapping)
    return isinstance(get(doc, runtimes, dict, {}, mapping).get(NVIDIA), dict)


def _has(doc: dict[str, Any], keys: tuple[str, ...]) -> bool:
    """Whether the value at `keys` is set (the tables on the way checked by `get`)."""
    return keys[-1] in get(doc, keys[:-1], dict, {})


def _strings(doc: dict[str, Any], keys: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
    """An array of strings at `keys`; HostFileError naming the first entry that is not one."""
    return tuple(get(doc, (*keys, i), str, "") for i in range(len(get(doc, keys, list, list(default))))) \
        if _has(doc, keys) else default
