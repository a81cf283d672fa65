"""Issue 19: on a driver root built for real, the `gpu` spec gives a container every mount, device node, env entry
and soname link that NVIDIA's generator (nvidia-container-toolkit's nvcdi, v1.20, which upstream v0.20 vendors)
gives it.

The root is what a node with driver 550.163.01 and 8 GPUs has: ELF shared objects built by gcc with the driver's
sonames, the soname links and linker cache made by glibc's `ldconfig -r`, the development links an install adds
(libcuda.so, libnvidia-ml.so), a library that is not the driver's, the utilities, GSP firmware, the persistenced
and fabricmanager sockets (bound AF_UNIX sockets), the MPS pipe directory, and character devices made with
mknod: major 195 for the GPUs, nvidiactl (255) and nvidia-modeset (254), a dynamic major for nvidia-uvm.

The expectations are nvcdi's documented rules written out for this root, not read from our code:
- internal/discover/mounts.go: driver files mounted ro,nosuid,nodev,rbind,rprivate; ipc.go: the sockets found
  under /run then /var/run, and /tmp/nvidia-mps, with nosuid,nodev,rbind,rprivate,noexec;
- internal/edits/device.go: a device node's major, minor, file mode and "rwm" read from the node (runc's
  DeviceFromPath), hostPath only where it differs from the path;
- internal/discover/symlinks.go (WithDriverDotSoSymlinks): libcuda.so.1 -> libcuda.so always, versioned file ->
  soname and soname -> .so where the host's library directory has those symlinks;
- hooks.go and driver-nvml.go: create-symlinks, enable-cuda-compat --host-driver-version, update-ldcache
  --folder per library directory, disable-device-node-modification, update-application-profile, all
  createContainer, env NVIDIA_CTK_DEBUG=false; the env NVIDIA_CTK_LIBCUDA_DIR and NVIDIA_VISIBLE_DEVICES=void.
Graphics files and the DRM nodes nvcdi adds for a display GPU are not part of a compute node's spec.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import referencing.jsonschema

from gfd.discovery.simulated.driver_root import LIBRARIES
from plugin.cdi.store import publish
from plugin.config import load_plugin_config
from tests.builders import gpu, model
from tests.helpers import ldconfig, shared_object
from tests.requirements import require_root, require_shared

VERSION = "550.163.01"
LIBDIR = "/usr/lib/x86_64-linux-gnu"
GPUS = 8
UVM_MAJOR = 508  # nvidia-uvm registers a dynamic major
CONTROL = {"nvidia-modeset": (195, 254), "nvidia-uvm-tools": (UVM_MAJOR, 1), "nvidia-uvm": (UVM_MAJOR, 0),
           "nvidiactl": (195, 255)}  # in nvcdi's order
BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
            "nvidia-cuda-mps-server")
FIRMWARE = ("gsp_ga10x.bin", "gsp_tu10x.bin")
SOCKETS = ("/run/nvidia-persistenced/socket", "/run/nvidia-fabricmanager/socket")
FILE_OPTIONS = ["ro", "nosuid", "nodev", "rbind", "rprivate"]
IPC_OPTIONS = ["nosuid", "nodev", "rbind", "rprivate", "noexec"]
HOOK = "/usr/local/nvidia/toolkit/nvidia-cdi-hook"


@pytest.fixture(autouse=True)
def _needs() -> None:
    require_root("mknod of character devices")


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host whose driver root is mounted at /driver-root, as the chart mounts it into the plugin."""
    host = tmp_path_factory.mktemp("host")
    root = host / "driver-root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text(f"{LIBDIR}\n/lib/x86_64-linux-gnu\n")
    for name, soname in LIBRARIES:
        shared_object(root / LIBDIR.lstrip("/") / f"{name}.so.{VERSION}", soname or f"{name}.so.{VERSION}")
    shared_object(root / "lib/x86_64-linux-gnu/libz.so.1.2.13", "libz.so.1")  # in the cache, not the driver's
    ldconfig(root)  # the soname links and etc/ld.so.cache
    for name in ("libcuda", "libnvidia-ml"):  # development links of an install
        (root / LIBDIR.lstrip("/") / f"{name}.so").symlink_to(f"{name}.so.1")
    for binary in BINARIES:
        (root / "usr/bin").mkdir(parents=True, exist_ok=True)
        (root / "usr/bin" / binary).write_bytes(b"")
        (root / "usr/bin" / binary).chmod(0o755)
    for firmware in FIRMWARE:
        (root / "lib/firmware/nvidia" / VERSION).mkdir(parents=True, exist_ok=True)
        (root / "lib/firmware/nvidia" / VERSION / firmware).write_bytes(b"")
    for path in SOCKETS:
        (root / path.lstrip("/")).parent.mkdir(parents=True)
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(root / path.lstrip("/")))
    (root / "var").mkdir()
    (root / "var/run").symlink_to("../run")
    (root / "tmp/nvidia-mps").mkdir(parents=True)
    (root / "dev").mkdir()
    for name, (major, minor) in {**CONTROL, **{f"nvidia{i}": (195, i) for i in range(GPUS)}}.items():
        os.mknod(root / "dev" / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(root / "dev" / name, 0o666)  # mknod applies the umask
    return host


def generate(host: Path, tmp_path: Path, *args: str) -> dict[str, Any]:
    config = load_plugin_config([*args, "--device-list-strategy=cdi-cri", f"--cdi-spec-dir={tmp_path}",
                                 f"--nvidia-cdi-hook-path={HOOK}"], {})
    node = replace(model(*(gpu(i) for i in range(GPUS))), driver_version=VERSION)
    publish(node, config, (), {}, str(host))
    spec: dict[str, Any] = json.loads((tmp_path / "k8s.device-plugin.nvidia.com-gpu.json").read_text())
    cdi_schema = require_shared("cdi", "schema.json", "defs.json")
    schema = json.loads((cdi_schema / "schema.json").read_text())
    defs = referencing.Resource.from_contents(json.loads((cdi_schema / "defs.json").read_text()),
                                              default_specification=referencing.jsonschema.DRAFT7)
    jsonschema.Draft7Validator(schema, registry=referencing.Registry().with_resource("defs.json", defs)).validate(spec)
    return spec


def node(path: str, major: int, minor: int, host_root: str) -> dict[str, Any]:
    """A device node as nvcdi writes it (fileMode: the permission bits, 0666 here)."""
    where = {"hostPath": host_root.rstrip("/") + path} if host_root != "/" else {}
    return {"path": path, **where, "major": major, "minor": minor, "fileMode": 0o666, "permissions": "rwm"}


@pytest.mark.parametrize(("driver_root", "dev_root", "version"), [
    ("/run/nvidia/driver", "", "0.5.0"),  # a driver container: every host path differs (hostPath is 0.5.0's)
    ("/", "", "0.3.0"),  # the host's own driver: nothing newer than the first release is needed
    ("/run/nvidia/driver", "/", "0.3.0")])  # driver files in a container, /dev the host's
def test_the_spec_is_nvcdis_field_by_field(host: Path, tmp_path: Path, driver_root: str, dev_root: str,
                                           version: str) -> None:
    spec = generate(host, tmp_path, f"--driver-root={driver_root}", f"--dev-root={dev_root}")
    dev_host = dev_root or driver_root
    assert spec["cdiVersion"] == version and spec["kind"] == "k8s.device-plugin.nvidia.com/gpu"
    assert spec["devices"] == [
        *({"name": f"GPU-{i:04d}", "containerEdits": {"deviceNodes": [node(f"/dev/nvidia{i}", 195, i, dev_host)]}}
          for i in range(GPUS)),
        {"name": "all", "containerEdits": {"deviceNodes": [node(f"/dev/nvidia{i}", 195, i, dev_host)
                                                           for i in range(GPUS)]}}]
    edits = spec["containerEdits"]
    assert edits["env"] == [f"NVIDIA_CTK_LIBCUDA_DIR={LIBDIR}", "NVIDIA_VISIBLE_DEVICES=void"]
    assert edits["deviceNodes"] == [node(f"/dev/{n}", *number, dev_host) for n, number in CONTROL.items()]

    def mount(path: str, options: list[str]) -> tuple[str, str, tuple[str, ...]]:
        return path, driver_root.rstrip("/") + path, tuple(options)

    expected_mounts = {
        *(mount(f"{LIBDIR}/{name}.so.{VERSION}", FILE_OPTIONS) for name, _ in LIBRARIES),
        *(mount(path, IPC_OPTIONS) for path in (*SOCKETS, "/tmp/nvidia-mps")),
        *(mount(f"/lib/firmware/nvidia/{VERSION}/{f}", FILE_OPTIONS) for f in FIRMWARE),
        *(mount(f"/usr/bin/{b}", FILE_OPTIONS) for b in BINARIES)}
    mounts = [(m["containerPath"], m["hostPath"], tuple(m["options"])) for m in edits["mounts"]]
    assert len(mounts) == len(set(mounts)) and set(mounts) == expected_mounts

    hooks = edits["hooks"]
    assert all(h["path"] == HOOK and h["hookName"] == "createContainer" and h["env"] == ["NVIDIA_CTK_DEBUG=false"]
               for h in hooks)
    assert [h["args"][:2] for h in hooks] == [["nvidia-cdi-hook", name] for name in (
        "create-symlinks", "enable-cuda-compat", "update-ldcache", "disable-device-node-modification",
        "update-application-profile")]
    links = hooks[0]["args"][2:]
    assert links[::2] == ["--link"] * (len(links) // 2) and len(links) == len(set(links[1::2])) * 2
    assert set(links[1::2]) == {
        f"libcuda.so.1::{LIBDIR}/libcuda.so",  # always
        *(f"{name}.so.{VERSION}::{LIBDIR}/{soname}" for name, soname in LIBRARIES if soname),  # ldconfig's links
        f"libnvidia-ml.so.1::{LIBDIR}/libnvidia-ml.so"}  # the install's development links
    assert [h["args"][2:] for h in hooks[1:]] == [[f"--host-driver-version={VERSION}"], ["--folder", LIBDIR], [], []]


def test_a_container_finds_every_library_by_its_soname(host: Path, tmp_path: Path) -> None:
    """What the runtime and the hook make of the spec, in a scratch tree: every soname the driver root's linker
    knows, and libcuda.so, lead to a mounted driver file (without a run of ldconfig's link step)."""
    spec = generate(host, tmp_path / "cdi", "--driver-root=/")
    container = tmp_path / "container"
    for m in spec["containerEdits"]["mounts"]:
        target = container / m["containerPath"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.touch()
    for arg in spec["containerEdits"]["hooks"][0]["args"][3::2]:
        link_target, link = arg.split("::")
        (container / link.lstrip("/")).symlink_to(link_target)
    libdir = container / LIBDIR.lstrip("/")
    for name, soname in LIBRARIES:
        found = libdir / (soname or f"{name}.so.{VERSION}")
        assert found.resolve() == libdir / f"{name}.so.{VERSION}" and found.resolve().is_file(), soname
    assert (libdir / "libcuda.so").resolve() == libdir / f"libcuda.so.{VERSION}"
    assert not (libdir / "libz.so.1.2.13").exists()  # not the driver's
