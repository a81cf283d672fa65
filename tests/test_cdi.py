"""CDI specs (issue 12): every name Allocate can return resolves to a device in a schema-valid spec that
was written before the plugin served, with the driver's files found through a linker cache glibc agrees with."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gfd.config import ConfigError
from gfd.discovery.session import NodeSource
from gfd.discovery.simulated.driver_root import LIBRARIES
from gfd.model import DeviceModel
from plugin.allocate import allocate
from plugin.cdi import CdiError
from plugin.cdi.edits import mig_nodes
from plugin.cdi.ldcache import read_cache
from plugin.cdi.roots import Roots
from plugin.cdi.spec import DEVICE_NAME, VENDOR
from plugin.cdi.store import publish
from plugin.config import load_plugin_config
from plugin.host import read_node_devices
from plugin.resources import ResourceError, build_resources
from tests.builders import gpu, mig
from tests.helpers import ldconfig_print
from tests.requirements import require_command


class Node:
    """A simulated node opened as the plugin opens it, with its config."""

    def __init__(self, args: list[str], spec_dir: Path) -> None:
        self.config = load_plugin_config([*args, f"--cdi-spec-dir={spec_dir}"], {})
        self.source = NodeSource("nvml", self.config.simulate, driver_root=self.config.container_driver_root)
        self.source.open()
        self.model: DeviceModel = self.source.read()
        self.resources = build_resources(self.model, self.config)
        self.devices = read_node_devices(self.config, self.resources, self.source.host_root)
        self.spec_dir = spec_dir

    @property
    def driver_root(self) -> Path:
        return Path(self.source.host_root) / "driver-root"

    def publish(self, imex_channels: tuple[int, ...] | None = None) -> frozenset[str]:
        channels = self.devices.imex_channels if imex_channels is None else imex_channels
        return publish(self.model, self.config, channels, self.devices.mig_cap_minors, self.source.host_root)

    def specs(self) -> dict[str, dict[str, Any]]:
        """Kind -> spec, as the runtime would load them from the directory."""
        return {doc["kind"]: doc for doc in (json.loads(p.read_text()) for p in self.spec_dir.glob("*.json"))}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Any]:
    opened: list[Node] = []

    def _open(*args: str) -> Node:
        n = Node(list(args), tmp_path / "cdi")
        opened.append(n)
        return n

    yield _open
    for n in opened:
        n.source.close()


def resolve(specs: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """What a CDI runtime does with a qualified name: the device of that kind, or a failure."""
    kind, _, device = name.partition("=")
    spec = specs.get(kind)
    assert spec is not None, f"{name}: no spec of kind {kind}"
    matches: list[dict[str, Any]] = [d for d in spec["devices"] if d["name"] == device]
    assert len(matches) == 1, f"{name}: no device {device!r} in {kind}"
    return matches[0]


# -- every name Allocate returns resolves -------------------------------------------------------------------
@pytest.mark.parametrize(("profile", "mig_strategy"), [
    ("t4", "none"), ("dgx-a100", "single"), ("a100-mig-single", "single"), ("a100-80gb-mig-mixed", "mixed"),
    ("a100-80gb-mig-mixed", "none"), ("heterogeneous", "mixed")])
@pytest.mark.parametrize("id_strategy", ["uuid", "index"])
@pytest.mark.parametrize("list_strategy", ["cdi-annotations", "cdi-cri", "envvar,cdi-cri"])
@pytest.mark.parametrize("replicas", [1, 3])
def test_every_name_allocate_returns_is_in_a_valid_written_spec(
        node: Any, validator: jsonschema.Draft7Validator, write_yaml: Any, profile: str, mig_strategy: str,
        id_strategy: str, list_strategy: str, replicas: int) -> None:
    args = [f"--simulate={profile}", f"--mig-strategy={mig_strategy}", f"--device-id-strategy={id_strategy}",
            f"--device-list-strategy={list_strategy}"]
    if replicas > 1:
        args.append(f"--config-file={write_yaml({'version': 'v1', 'sharing': {'timeSlicing': {'resources': [{'name': 'nvidia.com/gpu', 'replicas': replicas}]}}})}")  # noqa: E501
    n = node(*args)
    assert n.publish() == {"gpu"}
    specs = n.specs()
    assert set(specs) == {f"{VENDOR}/gpu"}
    for spec in specs.values():
        validator.validate(spec)
        assert all(DEVICE_NAME.fullmatch(d["name"]) for d in spec["devices"])
    named = 0
    for resource in n.resources:
        requests = [[d.id] for d in resource.devices] + [[d.id for d in resource.devices[:2]]]
        for ids in requests:
            out = allocate(resource, ids, n.config, n.devices)
            names = [c for c in out.cdi_devices] + [x for v in out.annotations.values() for x in v.split(",")]
            assert names
            for name in names:
                device = resolve(specs, name)
                named += 1
                assert device["containerEdits"]["deviceNodes"]
    assert named


def test_mig_devices_get_their_parent_and_capability_nodes(node: Any) -> None:
    n = node("--simulate=a100-80gb-mig-mixed", "--mig-strategy=mixed", "--device-list-strategy=cdi-cri")
    n.publish()
    gpu = next(g for g in n.model.gpus if g.mig_devices)
    mig = gpu.mig_devices[0]
    minors = n.devices.mig_cap_minors
    device = resolve(n.specs(), f"{VENDOR}/gpu={mig.uuid}")
    assert [d["path"] for d in device["containerEdits"]["deviceNodes"]] == [
        f"/dev/nvidia{gpu.minor_number}",
        f"/dev/nvidia-caps/nvidia-cap{minors[f'gpu{gpu.minor_number}/gi{mig.gi_id}/access']}",
        f"/dev/nvidia-caps/nvidia-cap{minors[f'gpu{gpu.minor_number}/gi{mig.gi_id}/ci{mig.ci_id}/access']}"]
    every = resolve(n.specs(), f"{VENDOR}/gpu=all")["containerEdits"]["deviceNodes"]
    assert {d["path"] for d in device["containerEdits"]["deviceNodes"]} <= {d["path"] for d in every}


# -- what the spec holds, and where the host has it -----------------------------------------------------------
def test_driver_files_hooks_and_the_root_transform(node: Any, validator: jsonschema.Draft7Validator) -> None:
    n = node("--simulate=t4", "--device-list-strategy=cdi-cri", "--driver-root=/run/nvidia/driver",
             "--nvidia-cdi-hook-path=/usr/local/bin/nvidia-cdi-hook")
    n.publish()
    version = n.model.driver_version
    spec = n.specs()[f"{VENDOR}/gpu"]
    validator.validate(spec)
    assert spec["cdiVersion"] == "0.5.0"  # hostPath on device nodes
    edits = spec["containerEdits"]
    libdir = next(m["containerPath"] for m in edits["mounts"] if "libcuda.so." in m["containerPath"]).rsplit("/", 1)[0]
    mounts = {m["containerPath"]: m["hostPath"] for m in edits["mounts"]}
    # Every driver library of this version, nothing else from the cache (libc.so.6 is in it).
    assert sorted(p for p in mounts if p.startswith(libdir)) == sorted(
        f"{libdir}/{lib}.so.{version}" for lib, _ in LIBRARIES)
    assert all(host == "/run/nvidia/driver" + path for path, host in mounts.items())
    assert {"/usr/bin/nvidia-smi", "/usr/bin/nvidia-persistenced", "/run/nvidia-persistenced/socket",
            f"/lib/firmware/nvidia/{version}/gsp_ga10x.bin"} <= set(mounts)
    assert [d["path"] for d in edits["deviceNodes"]] == ["/dev/nvidia-modeset", "/dev/nvidia-uvm-tools",
                                                          "/dev/nvidia-uvm", "/dev/nvidiactl"]
    assert all(d["hostPath"] == "/run/nvidia/driver" + d["path"] for d in edits["deviceNodes"])
    assert edits["env"] == [f"NVIDIA_CTK_LIBCUDA_DIR={libdir}", "NVIDIA_VISIBLE_DEVICES=void"]
    hooks = [h["args"] for h in edits["hooks"]]
    assert all(h["path"] == "/usr/local/bin/nvidia-cdi-hook" and h["hookName"] == "createContainer"
               for h in edits["hooks"])
    assert [a[1] for a in hooks] == ["create-symlinks", "enable-cuda-compat", "update-ldcache",
                                     "disable-device-node-modification", "update-application-profile"]
    # Versioned file -> soname, and soname -> `.so` where the driver root has that link (libcuda, libnvidia-ml).
    links = set(hooks[0][3::2])
    assert {f"libcuda.so.{version}::{libdir}/libcuda.so.1", f"libcuda.so.1::{libdir}/libcuda.so",
            f"libnvidia-nvvm.so.{version}::{libdir}/libnvidia-nvvm.so.4",
            f"libnvidia-ml.so.1::{libdir}/libnvidia-ml.so"} <= links
    assert f"libnvidia-cfg.so.1::{libdir}/libnvidia-cfg.so" not in links  # no such link on the node
    assert hooks[1] == ["nvidia-cdi-hook", "enable-cuda-compat", f"--host-driver-version={version}"]
    assert hooks[2] == ["nvidia-cdi-hook", "update-ldcache", "--folder", libdir]
    assert hooks[4] == ["nvidia-cdi-hook", "update-application-profile"]


def test_nvidia_ctk_hooks_disabled_hooks_and_the_lowest_version(node: Any) -> None:
    n = node("--simulate=t4", "--device-list-strategy=cdi-cri", "--cdi-disable-hooks=update-ldcache,create-symlinks")
    n.publish()
    spec = n.specs()[f"{VENDOR}/gpu"]
    assert [h["args"][:3] for h in spec["containerEdits"]["hooks"]] == [
        ["nvidia-ctk", "hook", "enable-cuda-compat"], ["nvidia-ctk", "hook", "disable-device-node-modification"],
        ["nvidia-ctk", "hook", "update-application-profile"]]
    # No other host root and UUID names: nothing that needs more than the first CDI version.
    assert spec["cdiVersion"] == "0.3.0"
    n2 = node("--simulate=t4", "--device-list-strategy=cdi-cri", "--cdi-disable-hooks=all")
    n2.publish()
    assert "hooks" not in n2.specs()[f"{VENDOR}/gpu"]["containerEdits"]


def test_an_unknown_hook_name_is_one_line_naming_the_accepted_ones() -> None:
    with pytest.raises(ConfigError) as e:
        load_plugin_config(["--cdi-disable-hooks=update-ldcache,nope"], {})
    assert "unknown hook: nope" in str(e.value) and "create-symlinks" in str(e.value) and "\n" not in str(e.value)


# -- optional classes: written when the node has them, named only then ---------------------------------------
def test_imex_gds_mofed_gdrcopy_only_when_the_node_has_them(node: Any, validator: jsonschema.Draft7Validator) -> None:
    args = ["--simulate=gh200", "--device-list-strategy=cdi-cri", "--gds-enabled", "--mofed-enabled",
            "--gdrcopy-enabled"]
    bare = node(*args)
    assert bare.publish(imex_channels=()) == {"gpu"}  # enabled, but none of their device nodes exist
    resource = bare.resources[0]
    names = allocate(resource, [resource.devices[0].id], bare.config, bare.devices).cdi_devices
    assert names == [f"{VENDOR}/gpu={resource.devices[0].uuid}"]

    for path in ("dev/gdrdrv", "dev/nvidia-fs0", "dev/nvidia-fs1", "dev/infiniband/uverbs0", "dev/infiniband/rdma_cm",
                 "dev/nvidia-caps-imex-channels/channel0", "etc/cufile.json", "run/udev/data/c1:3"):
        target = bare.driver_root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    assert bare.publish(imex_channels=(0,)) == {"gpu", "imex-channel", "gdrcopy", "gds", "mofed"}
    specs = bare.specs()
    for spec in specs.values():
        validator.validate(spec)
    node_paths = {k: [d["path"] for d in s["devices"][0]["containerEdits"]["deviceNodes"]] for k, s in specs.items()}
    assert node_paths[f"{VENDOR}/gds"] == ["/dev/nvidia-fs0", "/dev/nvidia-fs1"]
    assert node_paths[f"{VENDOR}/mofed"] == ["/dev/infiniband/uverbs0", "/dev/infiniband/rdma_cm"]
    assert node_paths[f"{VENDOR}/gdrcopy"] == ["/dev/gdrdrv"]
    assert node_paths[f"{VENDOR}/imex-channel"] == ["/dev/nvidia-caps-imex-channels/channel0"]
    gds_mounts = [m["containerPath"] for m in specs[f"{VENDOR}/gds"]["devices"][0]["containerEdits"]["mounts"]]
    assert gds_mounts == ["/run/udev", "/etc/cufile.json"]
    devices = read_node_devices(bare.config, bare.resources, bare.source.host_root)
    from dataclasses import replace

    with_classes = replace(devices, imex_channels=(0,), cdi_classes=frozenset(
        {"gpu", "imex-channel", "gdrcopy", "gds", "mofed"}))
    names = allocate(resource, [resource.devices[0].id], bare.config, with_classes).cdi_devices
    assert [n.split("=")[0].rsplit("/", 1)[1] for n in names] == ["gpu", "imex-channel", "gdrcopy", "gds", "mofed"]
    for name in names:
        resolve(specs, name)


# -- writing: atomic, readable, stale ones removed, nothing else touched ---------------------------------------
def test_specs_are_replaced_whole_and_stale_ones_removed(node: Any, tmp_path: Path) -> None:
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (spec_dir / f"{VENDOR}-gds.json").write_text("{}")  # an earlier start had GDS on
    (spec_dir / "nvidia.com-gpu.yaml").write_text("kind: nvidia.com/gpu\n")  # nvidia-ctk's, not ours
    n = node("--simulate=t4", "--device-list-strategy=cdi-cri")
    n.publish()
    assert sorted(p.name for p in spec_dir.iterdir()) == [f"{VENDOR}-gpu.json", "nvidia.com-gpu.yaml"]
    assert stat.S_IMODE((spec_dir / f"{VENDOR}-gpu.json").stat().st_mode) == 0o644


def test_no_driver_libraries_is_a_cdi_error_naming_what_is_missing(node: Any, tmp_path: Path) -> None:
    n = node("--simulate=t4", "--device-list-strategy=cdi-cri")
    shutil.rmtree(n.driver_root / "usr/lib")
    with pytest.raises(CdiError) as e:
        n.publish()
    message = str(e.value)
    assert f"libcuda.so.{n.model.driver_version} not found under the driver root" in message
    assert "ld.so.cache" in message
    assert not (tmp_path / "cdi").exists() or not list((tmp_path / "cdi").iterdir())


def test_the_plugin_exits_at_start_when_it_cannot_build_a_spec(tmp_path: Path) -> None:
    """The program the chart runs, with no driver root where it is told to look: one line, exit 1."""
    plugin = shutil.which("nvidia-device-plugin", path=os.path.dirname(sys.executable))
    assert plugin is not None
    proc = subprocess.run([plugin, "--simulate=t4", "--device-list-strategy=cdi-cri", "--log-format=json",
                           "--driver-root-ctr-path=/not-mounted", f"--cdi-spec-dir={tmp_path / 'cdi'}",
                           f"--kubelet-socket={tmp_path / 'kubelet.sock'}"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "libcuda.so.535.183.01 not found under the driver root" in errors[0]  # the t4 profile's driver
    assert not (tmp_path / "kubelet.sock").exists() and not list(tmp_path.glob("nvidia-*.sock"))


# -- the simulator's linker cache, as glibc reads it --------------------------------------------------------
def test_the_simulators_cache_reads_the_same_in_glibc(node: Any) -> None:
    require_command("ldconfig")
    n = node("--simulate=t4")
    cache = n.driver_root / "etc/ld.so.cache"
    theirs = ldconfig_print(cache)
    assert theirs == {(e.soname, e.path) for e in read_cache(str(cache)).entries}
    assert "libcuda.so.1" in {soname for soname, _ in theirs}


def test_mps_shared_devices_are_named_and_resolve_too(node: Any, write_yaml: Any) -> None:
    cfg = write_yaml({"version": "v1", "sharing": {"mps": {"resources": [{"name": "nvidia.com/gpu", "replicas": 4}]}}})
    n = node("--simulate=t4", "--device-list-strategy=cdi-cri", f"--config-file={cfg}", "--mps-root=/run/nvidia/mps")
    n.publish()
    specs = n.specs()
    (resource,) = n.resources
    assert resource.mps and len(resource.devices) == 16
    out = allocate(resource, [resource.devices[5].id], n.config, n.devices)
    assert out.envs == {"CUDA_MPS_PIPE_DIRECTORY": "/mps/nvidia.com/gpu/pipe"}  # CDI-only: no NVIDIA_VISIBLE_DEVICES
    assert [resolve(specs, name)["name"] for name in out.cdi_devices] == [resource.devices[5].uuid]


def test_a_mig_device_without_its_capability_minors_is_a_cdi_error_with_its_cause(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/nvidia0").touch()
    device = mig(0, "1g.5gb", 1)
    roots = Roots(str(tmp_path), str(tmp_path), "/", "/")
    with pytest.raises(CdiError, match="missing MIG GPU instance capability path: gpu0/gi1/access") as e:
        mig_nodes(gpu(0, device), device, {}, roots)
    assert isinstance(e.value.__cause__, ResourceError)
