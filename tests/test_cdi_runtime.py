"""The CDI specs the plugin writes, resolved by a container runtime we did not write: Debian's podman (CDI
since 4.1) starts a busybox container with each name Allocate returned, and the container has what the
spec promises: the device nodes, the driver libraries, the environment (NVIDIA_VISIBLE_DEVICES=void over an
image's `all`), the persistenced and fabricmanager sockets, and the hooks run with their arguments. (The
end-to-end node's containerd 1.6 has no CDI; 1.7 added it.)

The simulated driver root holds placeholder files where a real driver has device nodes and sockets; a runtime
only injects character devices, so before the plugin reads them each is replaced by one numbered as the NVIDIA
driver numbers them (nvidia-modprobe: major 195, minor = the GPU's minor, 254 nvidia-modeset, 255 nvidiactl;
nvidia-caps and nvidia-uvm get majors of their own), and each socket by a bound one. The hook path is a stand-in
that records its arguments: the real nvidia-ctk is not installable here."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gfd.discovery.session import NodeSource
from plugin.allocate import allocate
from plugin.cdi.store import publish
from plugin.config import load_plugin_config
from plugin.host import read_node_devices
from plugin.resources import build_resources
from tests.requirements import require_commands, require_root

# Stand-ins for the driver's numbers, by device node name (GPUs: 195/minor; MIG capabilities: their minor).
_MAJORS = {"nvidia-uvm": (236, 0), "nvidia-uvm-tools": (236, 1), "nvidia-modeset": (195, 254),
           "nvidiactl": (195, 255)}
_CAPS_MAJOR = 237
SOCKETS = ("nvidia-persistenced/socket", "nvidia-fabricmanager/socket")
# The VM's hard limits are below podman's defaults for root (nofile 1048576, nproc 4194304), which runc may
# not raise: the container gets limits it can set.
_LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


@dataclass
class Podman:
    work: Path

    def command(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.work / "storage"), "--runroot", str(self.work / "run"),
                "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                "--runtime", "runc", *args]

    def run(self, spec_dir: Path, devices: list[str], script: str, env: tuple[str, ...] = ()) -> str:
        """`script` in a busybox container given `devices` by CDI name, with `spec_dir` as the runtime's CDI
        directory (/run/cdi, in a private mount namespace: the host's is left alone), and `env` as an image's."""
        podman = " ".join(self.command("run", "--rm", "--network", "none", *_LIMITS, *(f"--env={e}" for e in env),
                                       *(a for d in devices for a in ("--device", d)), "localhost/busybox:cdi",
                                       "sh", "-c", _quote(script)))
        shell = f"mount -t tmpfs tmpfs /run && mkdir /run/cdi && mount --bind {spec_dir} /run/cdi && {podman}"
        done = subprocess.run(["unshare", "--mount", "--net", "--fork", "sh", "-c", shell],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    require_root("podman's containers run in a private mount namespace with their own /run/cdi")
    require_commands("podman", "runc", "busybox", "unshare", "mount")
    work = tmp_path_factory.mktemp("podman")
    rootfs = work / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add("/bin/busybox", "bin/busybox")
        for applet in ("sh", "ls", "cat", "env", "readlink"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    p = Podman(work)
    subprocess.run(p.command("import", "-q", str(rootfs), "localhost/busybox:cdi"), check=True,
                   capture_output=True, timeout=120)
    return p


@dataclass
class Published:
    """A simulated node's specs as the plugin writes them, with the driver root where it lies on this host."""

    source: NodeSource
    config: Any
    resources: Any
    devices: Any
    spec_dir: Path
    hook_log: Path

    def names(self, resource: int, *ids: str) -> list[str]:
        return list(allocate(self.resources[resource], list(ids), self.config, self.devices).cdi_devices)


@pytest.fixture
def published(tmp_path: Path) -> Iterator[Any]:
    opened: list[NodeSource] = []

    def _publish(*args: str) -> Published:
        simulate = next(a.split("=", 1)[1] for a in args if a.startswith("--simulate="))
        source = NodeSource("nvml", simulate)
        opened.append(source)
        source.open()
        hook = tmp_path / "nvidia-cdi-hook"
        hook.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/hooks.log\n")
        hook.chmod(0o755)
        # --driver-root: where the driver's files are on this host (the simulation's driver root).
        config = load_plugin_config([*args, "--device-list-strategy=cdi-cri", f"--cdi-spec-dir={tmp_path}/cdi",
                                     f"--driver-root={source.host_root}/driver-root",
                                     f"--nvidia-cdi-hook-path={hook}"], {})
        model = source.read()
        resources = build_resources(model, config)
        devices = read_node_devices(config, resources, source.host_root)
        driver_root = Path(source.host_root) / "driver-root"
        _make_device_nodes(driver_root / "dev", {f"nvidia-cap{m}": (_CAPS_MAJOR, m)
                                                 for m in devices.mig_cap_minors.values()})
        for name in SOCKETS:  # what the daemons listen on, as sockets (the simulator's are placeholders)
            _make_socket(driver_root / "run" / name)
        publish(model, config, devices.imex_channels, devices.mig_cap_minors, source.host_root)
        return Published(source, config, resources, devices, tmp_path / "cdi", tmp_path / "hooks.log")

    yield _publish
    for source in opened:
        source.close()


def _make_device_nodes(dev: Path, caps: dict[str, tuple[int, int]]) -> None:
    """The placeholders replaced by character devices, before the plugin reads them (it writes their numbers)."""
    for path in [p for p in dev.rglob("*") if p.is_file()]:
        number = caps.get(path.name) or _MAJORS.get(path.name) or (195, int(path.name.removeprefix("nvidia")))
        path.unlink()
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(*number))


def _make_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # the file stays after close: what a runtime bind-mounts


def _device_nodes(listing: str) -> dict[str, tuple[int, int]]:
    """`ls -l` of /dev/nvidia* and /dev/nvidia-caps/*: name -> (major, minor)."""
    found = {}
    for line in listing.splitlines():
        words = line.split()
        if line.startswith("c") and len(words) >= 10:
            found[os.path.basename(words[-1])] = (int(words[4].rstrip(",")), int(words[5]))
    return found


CONTROL = {"nvidiactl": (195, 255), "nvidia-uvm": (236, 0), "nvidia-uvm-tools": (236, 1),
           "nvidia-modeset": (195, 254)}


def test_a_gpu_by_uuid_gets_its_node_the_driver_files_and_the_hooks(podman: Podman, published: Any) -> None:
    node = published("--simulate=t4")
    uuid = node.resources[0].devices[1].id
    names = node.names(0, uuid)
    assert names == [f"k8s.device-plugin.nvidia.com/gpu={uuid}"]
    spec = json.loads((node.spec_dir / "k8s.device-plugin.nvidia.com-gpu.json").read_text())
    device = next(d for d in spec["devices"] if d["name"] == uuid)
    # The numbers the plugin read are in the spec: the runtime need not stat a host path.
    assert [(n["major"], n["minor"], n["permissions"]) for n in device["containerEdits"]["deviceNodes"]] == [
        (195, 1, "rwm")]
    out = podman.run(node.spec_dir, names, "ls -l /dev/nvidia*; echo ---; env; echo ---; "
                                            "ls /usr/lib/*-linux-gnu; echo ---; ls -l /run/nvidia-*/socket",
                     env=("NVIDIA_VISIBLE_DEVICES=all",))  # as every CUDA base image sets it
    nodes, env, libraries, sockets = out.split("---\n")
    assert _device_nodes(nodes) == {"nvidia1": (195, 1), **CONTROL}  # GPU 1 alone, and the control nodes
    assert "NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/" in env
    # An image that sets NVIDIA_VISIBLE_DEVICES=all gets nothing more from a legacy NVIDIA runtime hook.
    assert [e for e in env.splitlines() if e.startswith("NVIDIA_VISIBLE_DEVICES=")] == ["NVIDIA_VISIBLE_DEVICES=void"]
    assert "libcuda.so.535.183.01" in libraries.split() and "libnvidia-ml.so.535.183.01" in libraries.split()
    assert sorted(line.split()[-1] for line in sockets.splitlines() if line.startswith("s")) == [
        f"/run/{name}" for name in sorted(SOCKETS)]
    hooks = [line.split()[0] for line in node.hook_log.read_text().splitlines()]
    assert hooks == ["create-symlinks", "enable-cuda-compat", "update-ldcache", "disable-device-node-modification",
                     "update-application-profile"]


def test_a_mig_device_by_index_gets_its_parent_and_capability_nodes(podman: Podman, published: Any) -> None:
    node = published("--simulate=a100-mig-single", "--mig-strategy=single", "--device-id-strategy=index")
    device = node.resources[0].devices[2]
    (name,) = node.names(0, device.id)
    assert name == f"k8s.device-plugin.nvidia.com/gpu={device.index}"
    gi, ci = node.devices.mig_cap_minors[f"gpu{device.gpu.minor_number}/gi{device.mig.gi_id}/access"], \
        node.devices.mig_cap_minors[f"gpu{device.gpu.minor_number}/gi{device.mig.gi_id}/ci{device.mig.ci_id}/access"]
    nodes = _device_nodes(podman.run(node.spec_dir, [name], "ls -l /dev/nvidia* /dev/nvidia-caps/*"))
    assert nodes == {f"nvidia{device.gpu.minor_number}": (195, device.gpu.minor_number),
                     f"nvidia-cap{gi}": (_CAPS_MAJOR, gi), f"nvidia-cap{ci}": (_CAPS_MAJOR, ci), **CONTROL}


def test_all_gives_every_gpu(podman: Podman, published: Any) -> None:
    node = published("--simulate=t4")
    nodes = _device_nodes(podman.run(node.spec_dir, ["k8s.device-plugin.nvidia.com/gpu=all"], "ls -l /dev/nvidia*"))
    assert nodes == {**{f"nvidia{i}": (195, i) for i in range(4)}, **CONTROL}
