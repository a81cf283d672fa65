"""Which container runtimes on the host know the NVIDIA runtime, read from their config files as the NVIDIA
Container Toolkit writes them (`nvidia-ctk runtime configure`; upstream's README, "Configure containerd /
CRI-O / Docker"): a runtime handler named `nvidia`, and whether it is the default."""

from __future__ import annotations

import glob
import json
import os
import tomllib
from dataclasses import dataclass
from typing import Any

from gfd.config.errors import ConfigError
from gfd.config.reading import MAX_FILE_BYTES, read_text

CONTAINERD = "etc/containerd/config.toml"
CRIO = ("etc/crio/crio.conf", "etc/crio/crio.conf.d/*.conf")
DOCKER = "etc/docker/daemon.json"
# containerd 1.x (config version 2) and 2.x (version 3) keep the CRI runtimes under different plugins.
_CONTAINERD_CRI = ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime")


@dataclass(frozen=True)
class RuntimeConfig:
    runtime: str  # containerd, cri-o, docker
    path: str
    nvidia_handler: bool
    default: str  # the default runtime's name, "" when the file does not say
    error: str = ""  # the file could not be parsed

    @property
    def nvidia_default(self) -> bool:
        return self.default == "nvidia"


def read_runtime_configs(host_root: str) -> list[RuntimeConfig]:
    found = []
    containerd = os.path.join(host_root, CONTAINERD)
    if os.path.isfile(containerd):
        found.append(_containerd(containerd))
    crio = [p for pattern in CRIO for p in sorted(glob.glob(os.path.join(host_root, pattern)))]
    if crio:
        found.append(_crio(crio))
    docker = os.path.join(host_root, DOCKER)
    if os.path.isfile(docker):
        found.append(_docker(docker))
    return found


def _containerd(path: str) -> RuntimeConfig:
    try:
        doc = _toml(path)
    except ValueError as e:
        return RuntimeConfig("containerd", path, False, "", str(e))
    plugins = doc.get("plugins") or {}
    for name in _CONTAINERD_CRI:
        cri = (plugins.get(name) or {}).get("containerd") or {}
        if cri:
            return RuntimeConfig("containerd", path, "nvidia" in (cri.get("runtimes") or {}),
                                 str(cri.get("default_runtime_name", "runc")))
    return RuntimeConfig("containerd", path, False, "runc")


def _crio(paths: list[str]) -> RuntimeConfig:
    handler, default = False, ""
    for path in paths:  # drop-ins are applied in order: a later one wins
        try:
            runtime = (_toml(path).get("crio") or {}).get("runtime") or {}
        except ValueError as e:
            return RuntimeConfig("cri-o", path, False, "", str(e))
        handler = handler or "nvidia" in (runtime.get("runtimes") or {})
        default = str(runtime.get("default_runtime", default))
    return RuntimeConfig("cri-o", ", ".join(paths), handler, default or "crun")


def read_host_file(path: str, limit: int = MAX_FILE_BYTES) -> str:
    """A host file's text, read as every file an operator hands us is (gfd.config.reading: a regular file,
    bounded, UTF-8), so that a FIFO or a huge file never stalls doctor; ValueError says what is wrong."""
    try:
        return read_text(path, path, limit)
    except ConfigError as e:
        raise ValueError(e.problem) from None


def _docker(path: str) -> RuntimeConfig:
    try:
        text = read_host_file(path)
    except ValueError as e:
        return RuntimeConfig("docker", path, False, "", str(e))
    try:
        doc = json.loads(text)
    except ValueError as e:
        return RuntimeConfig("docker", path, False, "", f"not JSON: {e}")
    if not isinstance(doc, dict):
        return RuntimeConfig("docker", path, False, "", "not a JSON object")
    return RuntimeConfig("docker", path, "nvidia" in (doc.get("runtimes") or {}),
                         str(doc.get("default-runtime", "runc")))


def _toml(path: str) -> dict[str, Any]:
    text = read_host_file(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"not TOML: {e}") from None
