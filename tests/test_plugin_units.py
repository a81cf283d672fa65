"""Pure parts of the plugin: optimal preferred allocation, greedy policy, XID policy, config, resources."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfd.config import ConfigError, ReplicatedResource, ReplicatedResources, Sharing
from gfd.model import DeviceModel, Gpu, Link, MigDevice
from plugin.allocate import allocate
from plugin.config import PluginConfig, load_plugin_config
from plugin.health import XidPolicy
from plugin.host import NodeDevices
from plugin.preferred import best_set, greedy, pair_scores, set_score
from plugin.resources import ResourceError, build_resources


def gpu(index: int, *migs: MigDevice) -> Gpu:
    return Gpu(index=index, uuid=f"GPU-{index:04d}", name="NVIDIA A100-SXM4-40GB", memory_mib=40960,
               compute_capability=(8, 0), architecture="ampere", brand="nvidia", pci_bus_id=f"0000:{index:02x}:00.0",
               pci_device_id=0, minor_number=index, numa_node=index // 4, pci_class=0x030200,
               mig_capable=True, mig_enabled=bool(migs), mig_devices=migs)


def mig(index: int, profile: str, gi: int, ci: int = 0, gi_slices: int = 1, ci_slices: int = 1) -> MigDevice:
    return MigDevice(index=index, uuid=f"MIG-{profile}-{gi}-{index}", gi_id=gi, ci_id=ci, gi_profile_id=0,
                     ci_profile_id=0, profile=profile, memory_mib=4864, multiprocessors=14, gi_slices=gi_slices,
                     ci_slices=ci_slices, copy_engines=1, decoders=0, encoders=0, jpeg_engines=0, ofa_engines=0)


def model(*gpus: Gpu) -> DeviceModel:
    return DeviceModel(driver_version="550.54.15", cuda_driver_version=12040, gpus=gpus, machine_type=None,
                       vgpu=None)


def shared(replicas: int, kind: str = "ts", fail: bool = False) -> Sharing:
    entries = ReplicatedResources((ReplicatedResource("nvidia.com/gpu", replicas),), False, fail)
    return Sharing(mps=entries) if kind == "mps" else Sharing(time_slicing=entries)


@st.composite
def topologies(draw: Any) -> tuple[int, list[Link]]:
    n = draw(st.integers(min_value=2, max_value=10))
    levels = st.sampled_from(["system", "node", "hostbridge", "multiple", "single", "internal"])
    links = [Link(a, b, draw(st.integers(0, 3)), draw(levels)) for a in range(n) for b in range(a + 1, n)]
    return n, links


@settings(max_examples=150, deadline=None)
@given(topologies(), st.data())
def test_best_set_is_the_exhaustive_optimum(topology: tuple[int, list[Link]], data: Any) -> None:
    n, links = topology
    resource = build_resources(model(*(gpu(i) for i in range(n))), PluginConfig())[0]
    ids = [d.id for d in resource.devices]
    available = data.draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))
    must = data.draw(st.lists(st.sampled_from(available), max_size=2, unique=True))
    size = data.draw(st.integers(min_value=max(1, len(must)), max_value=len(available)))
    scores = pair_scores(links)
    got = best_set(resource, available, must, size, scores)
    index = {i: int(i.split("-")[1]) for i in ids}
    assert len(got) == size and set(must) <= set(got) and set(got) <= set(available)
    rest = sorted({index[a] for a in available} - {index[m] for m in must})
    best = max(set_score([index[m] for m in must] + list(c), scores)
               for c in itertools.combinations(rest, size - len(must)))
    assert set_score([index[g] for g in got], scores) == best
    assert best_set(resource, list(reversed(available)), must, size, scores) == got  # deterministic


def test_best_set_edge_cases_return_nothing() -> None:
    resource = build_resources(model(gpu(0), gpu(1)), PluginConfig())[0]
    ids = [d.id for d in resource.devices]
    assert best_set(resource, ids, [], 0, {}) == []
    assert best_set(resource, ids[:1], [], 2, {}) == []
    assert best_set(resource, ids, ids, 1, {}) == []


@pytest.mark.parametrize(("policy", "size", "expected_per_gpu"), [
    ("distributed", 2, [1, 1]), ("distributed", 4, [2, 2]), ("packed", 2, [2, 0]), ("packed", 4, [4, 0]),
    ("packed", 5, [4, 1]),
])
def test_greedy_policies(policy: str, size: int, expected_per_gpu: list[int]) -> None:
    resource = build_resources(model(gpu(0), gpu(1)), PluginConfig(sharing=shared(4)))[0]
    ids = [d.id for d in resource.devices]
    picks = greedy(resource, ids, [], size, policy)
    assert [sum(p.startswith(f"GPU-{g:04d}") for p in picks) for g in (0, 1)] == expected_per_gpu
    assert greedy(resource, list(reversed(ids)), [], size, policy) == picks


def test_greedy_counts_devices_already_in_use() -> None:
    resource = build_resources(model(gpu(0), gpu(1)), PluginConfig(sharing=shared(4)))[0]
    free = [d.id for d in resource.devices if not (d.gpu.index == 0 and d.replica in (0, 1, 2))]
    picks = greedy(resource, free, [], 2, "distributed")  # GPU 0 has 3 of 4 replicas in use
    assert [p.split("::")[0] for p in picks] == ["GPU-0001", "GPU-0001"]
    must = greedy(resource, free, ["GPU-0001::3"], 2, "distributed")
    assert must[0] == "GPU-0001::3"


def _policy(env: dict[str, str]) -> XidPolicy:
    """The policy the plugin builds from its environment."""
    config = load_plugin_config([], env)
    return XidPolicy.of(config.disable_healthchecks, config.enable_healthchecks)


@pytest.mark.parametrize(("env", "checks"), [
    ({}, {13: False, 31: False, 48: True, 79: True}),
    ({"DP_DISABLE_HEALTHCHECKS": "48, 79"}, {48: False, 79: False, 94: True}),
    ({"DP_ENABLE_HEALTHCHECKS": "13"}, {13: True, 31: False}),
    ({"DP_ENABLE_HEALTHCHECKS": "all"}, {13: True, 109: True}),
    ({"DP_DISABLE_HEALTHCHECKS": "bogus,-3,45"}, {45: False, 48: True}),
])
def test_xid_policy(env: dict[str, str], checks: dict[int, bool]) -> None:
    policy = _policy(env)
    assert policy.enabled
    assert {x: policy.critical(x) for x in checks} == checks


@pytest.mark.parametrize(("env", "enabled"), [
    ({"DP_DISABLE_HEALTHCHECKS": "all"}, False), ({"DP_DISABLE_HEALTHCHECKS": "XIDS"}, False),
    ({"DP_DISABLE_HEALTHCHECKS": "all", "DP_ENABLE_HEALTHCHECKS": "48"}, False),
    ({"DP_DISABLE_HEALTHCHECKS": "all", "DP_ENABLE_HEALTHCHECKS": "all"}, True),
])
def test_checker_switch_quirks_as_upstream(env: dict[str, str], enabled: bool) -> None:
    assert _policy(env).enabled is enabled


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--device-list-strategy=envvar,bogus"], {}, "invalid --device-list-strategy option: invalid strategy: bogus"),
    (["--device-id-strategy=serial"], {}, "invalid --device-id-strategy option: serial"),
    (["--shared-devices-allocation-policy=random"], {}, "invalid --shared-devices-allocation-policy option: random"),
    (["--mig-strategy=bogus"], {}, "unknown MIG strategy: bogus"),
    (["--device-discovery-strategy=vfio"], {}, "invalid --device-discovery-strategy option vfio"),
    (["--imex-channel-ids=1"], {}, "channelIDs must be [] or [0]; found [1]"),
    ([], {"PASS_DEVICE_SPECS": "maybe"}, 'PASS_DEVICE_SPECS: pass-device-specs: parsing "maybe": invalid syntax'),
])
def test_plugin_flag_validation(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_plugin_config(argv, env)
    assert message in str(e.value)


def test_mps_needs_a_root_and_no_mixed(tmp_path: Any) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sharing:\n  mps:\n    resources:\n    - name: gpu\n      replicas: 2\n")
    with pytest.raises(ConfigError, match="using MPS requires --mps-root to be specified"):
        load_plugin_config([f"--config-file={cfg}"], {})
    with pytest.raises(ConfigError, match="using --mig-strategy=mixed is not supported with MPS"):
        load_plugin_config([f"--config-file={cfg}", "--mig-strategy=mixed", "--mps-root=/m"], {})


def test_plugin_flags_env_and_file_precedence(tmp_path: Any) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("flags:\n  plugin:\n    deviceListStrategy: [volume-mounts, cdi-cri]\n    deviceIDStrategy: index\n")
    c = load_plugin_config([f"--config-file={cfg}"], {"DEVICE_ID_STRATEGY": "uuid"})
    assert c.device_list_strategy == ("volume-mounts", "cdi-cri")
    assert c.device_id_strategy == "uuid"
    assert load_plugin_config([], {"DEVICE_LIST_STRATEGY": "envvar,cdi-annotations"}).device_list_strategy == \
        ("envvar", "cdi-annotations")


def test_resource_errors_as_upstream() -> None:
    with pytest.raises(ResourceError, match=r"MIG profile '1c\.3g\.20gb' does not match any resource patterns"):
        build_resources(model(gpu(0, mig(0, "1c.3g.20gb", 1, gi_slices=3, ci_slices=1))),
                        PluginConfig(mig_strategy="mixed"))
    with pytest.raises(ResourceError, match="all devices on the node must be configured with the same migEnabled"):
        build_resources(model(gpu(0, mig(0, "1g.5gb", 1)), gpu(1)), PluginConfig(mig_strategy="single"))
    with pytest.raises(ResourceError, match="device 0 has no MIG devices configured"):
        build_resources(model(dataclasses.replace(gpu(0), mig_enabled=True)), PluginConfig(mig_strategy="single"))
    with pytest.raises(ResourceError, match="sharing using MPS is not supported for MIG devices"):
        build_resources(model(gpu(0, mig(0, "1g.5gb", 1))),
                        PluginConfig(mig_strategy="single", sharing=shared(2, "mps"), mps_root="/m"))


def test_none_strategy_exposes_mig_enabled_gpus_as_full_gpus() -> None:
    resources = build_resources(model(gpu(0, mig(0, "1g.5gb", 1)), gpu(1)), PluginConfig())
    assert [(r.name, [d.id for d in r.devices]) for r in resources] == [("nvidia.com/gpu", ["GPU-0000", "GPU-0001"])]


def test_imex_channels_in_every_strategy() -> None:
    resource = build_resources(model(gpu(0)), PluginConfig())[0]
    node = NodeDevices(imex_channels=(0,), control_devices=("/dev/nvidiactl",))
    config = PluginConfig(device_list_strategy=("envvar", "volume-mounts", "cdi-cri"), pass_device_specs=True,
                          nvidia_dev_root="/host")
    out = allocate(resource, ["GPU-0000"], config, node)
    assert out.envs == {"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices", "NVIDIA_IMEX_CHANNELS": "0"}
    assert [m.container_path for m in out.mounts] == ["/var/run/nvidia-container-devices/GPU-0000",
                                                       "/var/run/nvidia-container-devices/imex/0"]
    assert out.cdi_devices == ["k8s.device-plugin.nvidia.com/gpu=GPU-0000",
                               "k8s.device-plugin.nvidia.com/imex-channel=0"]
    assert [(d.container_path, d.host_path) for d in out.devices] == [
        ("/dev/nvidiactl", "/host/dev/nvidiactl"), ("/dev/nvidia0", "/host/dev/nvidia0"),
        ("/dev/nvidia-caps-imex-channels/channel0", "/host/dev/nvidia-caps-imex-channels/channel0")]


def test_cdi_only_with_modes_and_custom_prefix() -> None:
    resource = build_resources(model(gpu(0)), PluginConfig())[0]
    config = PluginConfig(device_list_strategy=("cdi-annotations",), cdi_annotation_prefix="custom.io/",
                          gdrcopy_enabled=True, device_id_strategy="index")
    out = allocate(resource, ["GPU-0000"], config, NodeDevices(cdi_classes=frozenset({"gpu", "gdrcopy"})))
    assert out.envs == {"NVIDIA_GDRCOPY": "enabled"}
    (key, value), = out.annotations.items()
    assert key.startswith("custom.io/nvidia-device-plugin_")
    assert value == "k8s.device-plugin.nvidia.com/gpu=0,k8s.device-plugin.nvidia.com/gdrcopy=all"
    # Enabled, but no /dev/gdrdrv on the node, so no spec was written: the name is left out, as upstream.
    out = allocate(resource, ["GPU-0000"], config, NodeDevices(cdi_classes=frozenset({"gpu"})))
    assert list(out.annotations.values()) == ["k8s.device-plugin.nvidia.com/gpu=0"]


def test_device_specs_need_minor_numbers_and_mig_capabilities(tmp_path: Any) -> None:
    from plugin.host import read_node_devices

    config = PluginConfig(pass_device_specs=True, mig_strategy="mixed")
    no_minor = build_resources(model(dataclasses.replace(gpu(0), minor_number=None)), config)
    with pytest.raises(ResourceError, match="no minor number for GPU GPU-0000"):
        read_node_devices(config, no_minor, str(tmp_path))
    migs = build_resources(model(gpu(0, mig(0, "1g.5gb", 1))), config)
    with pytest.raises(ResourceError, match="missing MIG GPU instance capability path: gpu0/gi1/access"):
        read_node_devices(config, migs, str(tmp_path))
    caps = tmp_path / "proc/driver/nvidia-caps"
    caps.mkdir(parents=True)
    (caps / "mig-minors").write_text("gpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n")
    node = read_node_devices(config, migs, str(tmp_path))
    out = allocate(migs[0], [migs[0].devices[0].id], config, node)
    assert [d.container_path for d in out.devices] == ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap12",
                                                       "/dev/nvidia-caps/nvidia-cap13"]
