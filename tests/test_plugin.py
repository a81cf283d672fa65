"""The device plugin end to end: simulated NVML under pynvml, real gRPC on unix sockets, a kubelet stand-in."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gfd.discovery.simulated.install import Simulation
from gfd.discovery.simulated.profiles import Fault
from plugin import cli
from plugin.cli import DevicePlugin
from plugin.config import load_plugin_config, reload_or_keep
from plugin.preferred import pair_scores, set_score
from tests.helpers import InThreads, simulation_of
from tests.kubelet import KubeletStandIn


class Running:
    def __init__(self, plugin: DevicePlugin, thread: threading.Thread, kubelet: KubeletStandIn) -> None:
        self.plugin, self.thread, self.kubelet = plugin, thread, kubelet

    @property
    def sim(self) -> Simulation:
        return simulation_of(self.plugin)

    def uuids(self, resource: str = "nvidia.com/gpu") -> list[str]:
        return [d.ID for d in self.kubelet.registered(resource).devices]


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[KubeletStandIn]:
    directory = tmp_path / "device-plugins"
    directory.mkdir()
    k = KubeletStandIn(str(directory))
    yield k
    k.stop()


@pytest.fixture
def start(kubelet: KubeletStandIn, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    threads = InThreads()

    def _start(*argv: str, env: dict[str, str] | None = None, serving: bool = True) -> Running:
        args = [f"--kubelet-socket={kubelet.socket}", f"--cdi-spec-dir={tmp_path / 'cdi'}",
                "--health-probe-interval=50ms", "--health-recovery-period=400ms", "--log-format=json", *argv]
        environ = env or {}
        plugin = DevicePlugin(args, environ, load_plugin_config(args, environ))
        thread = threads.start(plugin.run, plugin.stop)
        running = Running(plugin, thread, kubelet)
        deadline = time.monotonic() + (10 if serving else 0)
        while plugin.current is None and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)  # started, or failed to start
        return running

    yield _start
    threads.stop_all()


def test_registration_handshake_and_initial_list(start: Callable[..., Running], kubelet: KubeletStandIn) -> None:
    r = start("--simulate=dgx-a100")
    reg = kubelet.registered("nvidia.com/gpu")
    assert reg.request.version == "v1beta1"
    assert reg.request.endpoint == "nvidia-gpu.sock"
    assert (reg.options.pre_start_required, reg.options.get_preferred_allocation_available) == (False, True)
    assert (reg.request.options.pre_start_required, reg.request.options.get_preferred_allocation_available) == \
        (False, True)
    devices = reg.devices
    assert [d.ID for d in devices] == [g.uuid for g in r.sim.node.gpus]
    assert {d.health for d in devices} == {"Healthy"}
    assert [d.topology.nodes[0].ID for d in devices] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert os.path.exists(os.path.join(kubelet.directory, "nvidia-gpu.sock"))


def test_kubelet_restart_reregisters_within_a_second(start: Callable[..., Running], kubelet: KubeletStandIn) -> None:
    start("--simulate=t4")
    first = kubelet.registered("nvidia.com/gpu")
    restarted = time.monotonic()
    kubelet.restart()
    again = kubelet.registered("nvidia.com/gpu")
    assert again is not first and again.at - restarted < 1.0
    assert len(again.devices) == 4
    resp = kubelet.allocate("nvidia.com/gpu", again.devices[0].ID)
    assert resp.envs["NVIDIA_VISIBLE_DEVICES"] == again.devices[0].ID


def test_own_socket_removed_is_served_and_registered_again(start: Callable[..., Running],
                                                           kubelet: KubeletStandIn) -> None:
    start("--simulate=l4")
    first = kubelet.registered("nvidia.com/gpu")
    os.unlink(os.path.join(kubelet.directory, "nvidia-gpu.sock"))
    kubelet.wait(lambda: kubelet.registrations["nvidia.com/gpu"] is not first and
                 bool(kubelet.registrations["nvidia.com/gpu"].updates))
    assert os.path.exists(os.path.join(kubelet.directory, "nvidia-gpu.sock"))


def test_registration_waits_for_a_kubelet_that_is_not_up_yet(start: Callable[..., Running],
                                                             kubelet: KubeletStandIn) -> None:
    kubelet.stop()  # gRPC removes kubelet.sock with it
    assert not os.path.exists(kubelet.socket)
    start("--simulate=l4")
    time.sleep(0.3)
    kubelet.start()
    assert len(kubelet.registered("nvidia.com/gpu").devices) == 1


def test_xid_marks_only_its_gpu_then_recovers(start: Callable[..., Running], kubelet: KubeletStandIn) -> None:
    r = start("--simulate=dgx-h100")
    uuids = r.uuids()
    sent = time.monotonic()
    r.sim.library.inject_xid(2, 79)
    kubelet.wait(lambda: kubelet.health("nvidia.com/gpu")[uuids[2]] == "Unhealthy")
    assert time.monotonic() - sent < 1.0
    health = kubelet.health("nvidia.com/gpu")
    assert [u for u, h in health.items() if h == "Unhealthy"] == [uuids[2]]
    kubelet.wait(lambda: kubelet.health("nvidia.com/gpu")[uuids[2]] == "Healthy", timeout=5)


def test_application_xids_are_ignored_unless_enabled(start: Callable[..., Running], kubelet: KubeletStandIn) -> None:
    r = start("--simulate=t4", env={"DP_ENABLE_HEALTHCHECKS": "31"})
    uuids = r.uuids()
    r.sim.library.inject_xid(0, 13)  # default-ignored
    r.sim.library.inject_xid(1, 31)  # default-ignored but enabled by env
    kubelet.wait(lambda: kubelet.health("nvidia.com/gpu")[uuids[1]] == "Unhealthy")
    assert kubelet.health("nvidia.com/gpu")[uuids[0]] == "Healthy"


def test_a_gpu_lost_without_xid_is_found_by_the_probe(start: Callable[..., Running], kubelet: KubeletStandIn) -> None:
    r = start("--simulate=dgx-a100", "--health-recovery-period=200ms")
    uuids = r.uuids()
    r.sim.node.gpus[5].lost = True
    kubelet.wait(lambda: kubelet.health("nvidia.com/gpu")[uuids[5]] == "Unhealthy")
    time.sleep(0.5)  # longer than the recovery period: still lost, so still unhealthy
    health = kubelet.health("nvidia.com/gpu")
    assert health[uuids[5]] == "Unhealthy"
    assert sum(h == "Unhealthy" for h in health.values()) == 1
    r.sim.node.gpus[5].lost = False
    kubelet.wait(lambda: kubelet.health("nvidia.com/gpu")[uuids[5]] == "Healthy")


def test_a_watcher_that_cannot_start_reports_all_devices_unhealthy(start: Callable[..., Running],
                                                                   kubelet: KubeletStandIn, tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({"gpus": [{"model": "T4", "count": 2}],
                                       "faults": [{"call": "nvmlEventSetCreate", "error": "UNKNOWN"}]}))
    r = start(f"--simulate={profile}")
    kubelet.wait(lambda: set(kubelet.health("nvidia.com/gpu").values()) == {"Unhealthy"}
                 if "nvidia.com/gpu" in kubelet.registrations else False)
    r.sim.node.faults.clear()  # the watcher starts on its next attempt; devices come back
    kubelet.wait(lambda: set(kubelet.health("nvidia.com/gpu").values()) == {"Healthy"})


def test_mig_xid_marks_only_that_mig_device(start: Callable[..., Running], kubelet: KubeletStandIn) -> None:
    r = start("--simulate=a100-80gb-mig-mixed", "--mig-strategy=mixed")
    kubelet.registered("nvidia.com/mig-3g.40gb")
    mig = r.sim.node.gpus[0].mig[0]  # 3g.40gb, GI 1 on GPU 0
    r.sim.library.inject_xid(0, 94, gi_id=mig.gi_id, ci_id=mig.ci_id)
    kubelet.wait(lambda: kubelet.health("nvidia.com/mig-3g.40gb")[mig.uuid] == "Unhealthy")
    assert kubelet.health("nvidia.com/mig-2g.20gb")[r.sim.node.gpus[0].mig[1].uuid] == "Healthy"


def test_mixed_strategy_registers_one_resource_per_profile(start: Callable[..., Running],
                                                           kubelet: KubeletStandIn) -> None:
    start("--simulate=a100-80gb-mig-mixed", "--mig-strategy=mixed")
    counts = {name: len(kubelet.registered(name).devices) for name in (
        "nvidia.com/mig-3g.40gb", "nvidia.com/mig-2g.20gb", "nvidia.com/mig-1g.10gb", "nvidia.com/mig-7g.80gb",
        "nvidia.com/mig-4g.40gb", "nvidia.com/mig-1g.10gb.me")}
    assert counts == {"nvidia.com/mig-3g.40gb": 2, "nvidia.com/mig-2g.20gb": 4, "nvidia.com/mig-1g.10gb": 18,
                      "nvidia.com/mig-7g.80gb": 2, "nvidia.com/mig-4g.40gb": 2, "nvidia.com/mig-1g.10gb.me": 2}
    assert kubelet.registrations["nvidia.com/mig-1g.10gb.me"].request.endpoint == "nvidia-mig-1g.10gb.me.sock"
    assert "nvidia.com/gpu" not in kubelet.registrations


def test_single_strategy_advertises_mig_devices_as_gpus(start: Callable[..., Running],
                                                        kubelet: KubeletStandIn) -> None:
    r = start("--simulate=a100-mig-single", "--mig-strategy=single", "--device-id-strategy=index",
              "--pass-device-specs")
    ids = r.uuids()
    assert len(ids) == 56 and all(i.startswith("MIG-") for i in ids)
    resp = kubelet.allocate("nvidia.com/gpu", ids[8])  # GPU 1, MIG index 1
    assert resp.envs["NVIDIA_VISIBLE_DEVICES"] == "1:1"
    paths = [(d.container_path, d.host_path, d.permissions) for d in resp.devices]
    # GI 2 on GPU minor 1: capability minors from the driver's table (sysfs_tree.mig_minors).
    gi_access = 3 + 1 * 15 * 9 + 2 * 9
    assert paths == [("/dev/nvidia1", "/dev/nvidia1", "rw"),
                     (f"/dev/nvidia-caps/nvidia-cap{gi_access}", f"/dev/nvidia-caps/nvidia-cap{gi_access}", "rw"),
                     (f"/dev/nvidia-caps/nvidia-cap{gi_access + 1}", f"/dev/nvidia-caps/nvidia-cap{gi_access + 1}",
                      "rw")]


def test_time_slicing_replicas_and_rename(start: Callable[..., Running], kubelet: KubeletStandIn,
                                          write_yaml: Any) -> None:
    cfg = write_yaml({"version": "v1", "sharing": {"timeSlicing": {
        "renameByDefault": True, "failRequestsGreaterThanOne": True,
        "resources": [{"name": "nvidia.com/gpu", "replicas": 3}]}}})
    r = start("--simulate=t4", f"--config-file={cfg}")
    reg = kubelet.registered("nvidia.com/gpu.shared")
    assert reg.request.endpoint == "nvidia-gpu.shared.sock"
    gpu0 = r.sim.node.gpus[0].uuid
    assert [d.ID for d in reg.devices][:3] == [f"{gpu0}::0", f"{gpu0}::1", f"{gpu0}::2"]
    assert len(reg.devices) == 12
    with pytest.raises(grpc.RpcError) as e:
        kubelet.allocate("nvidia.com/gpu.shared", f"{gpu0}::0", f"{gpu0}::1")
    assert e.value.code() == grpc.StatusCode.UNKNOWN
    assert e.value.details() == ('invalid allocation request for "nvidia.com/gpu.shared": invalid request: '
                                 "maximum request size for shared resources is 1; found 2")
    assert kubelet.allocate("nvidia.com/gpu.shared", f"{gpu0}::2").envs["NVIDIA_VISIBLE_DEVICES"] == gpu0
    # Replicas are spread over GPUs (distributed policy).
    available = [d.ID for d in reg.devices]
    picks = kubelet.preferred("nvidia.com/gpu.shared", available, [], 4)
    assert len({p.split("::")[0] for p in picks}) == 4


@pytest.mark.parametrize(("strategies", "check"), [
    ("envvar", lambda r, ids: dict(r.envs) == {"NVIDIA_VISIBLE_DEVICES": ",".join(ids)} and not r.mounts),
    ("volume-mounts", lambda r, ids: dict(r.envs) == {"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"}
     and [(m.container_path, m.host_path) for m in r.mounts] ==
     [(f"/var/run/nvidia-container-devices/{i}", "/dev/null") for i in ids]),
    ("cdi-cri", lambda r, ids: [c.name for c in r.cdi_devices] ==
     [f"k8s.device-plugin.nvidia.com/gpu={i}" for i in ids] and not r.envs and not r.annotations),
    ("cdi-annotations", lambda r, ids: len(r.annotations) == 1 and
     next(iter(r.annotations)).startswith("cdi.k8s.io/nvidia-device-plugin_") and
     next(iter(r.annotations.values())) == ",".join(f"k8s.device-plugin.nvidia.com/gpu={i}" for i in ids)),
    ("envvar,cdi-cri", lambda r, ids: r.envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(ids) and len(r.cdi_devices) == 2),
])
def test_device_list_strategies(start: Callable[..., Running], kubelet: KubeletStandIn, strategies: str,
                                check: Callable[[Any, list[str]], bool], tmp_path: Path) -> None:
    r = start("--simulate=t4", f"--device-list-strategy={strategies}")
    ids = r.uuids()[1:3]
    resp = kubelet.allocate("nvidia.com/gpu", ids[1], ids[0], ids[1])  # arbitrary order, a duplicate
    assert check(resp, [ids[1], ids[0]])
    names = [c.name for c in resp.cdi_devices] + [n for v in resp.annotations.values() for n in v.split(",")]
    if names:  # written before the plugin registered, and naming every device it handed out
        spec = json.loads((tmp_path / "cdi" / "k8s.device-plugin.nvidia.com-gpu.json").read_text())
        assert set(names) <= {f"{spec['kind']}={d['name']}" for d in spec["devices"]}


def test_pass_device_specs_with_driver_root_and_gds(start: Callable[..., Running], kubelet: KubeletStandIn) -> None:
    r = start("--simulate=t4", "--pass-device-specs", "--driver-root=/run/nvidia/driver", "--gds-enabled")
    ids = r.uuids()
    resp = kubelet.allocate("nvidia.com/gpu", ids[3])
    assert resp.envs["NVIDIA_GDS"] == "enabled"
    assert [(d.container_path, d.host_path, d.permissions) for d in resp.devices] == [
        ("/dev/nvidia3", "/run/nvidia/driver/dev/nvidia3", "rw")]


def test_bad_requests_get_upstream_errors_and_the_plugin_keeps_serving(start: Callable[..., Running],
                                                                       kubelet: KubeletStandIn) -> None:
    r = start("--simulate=t4")
    with pytest.raises(grpc.RpcError) as e:
        kubelet.allocate("nvidia.com/gpu", "GPU-does-not-exist")
    assert e.value.code() == grpc.StatusCode.UNKNOWN
    assert e.value.details() == ('invalid allocation request for "nvidia.com/gpu": invalid request: unknown device: '
                                 "GPU-does-not-exist")
    with pytest.raises(grpc.RpcError) as e:
        kubelet.preferred("nvidia.com/gpu", ["GPU-nope"], [], 1)
    assert "no device with uuid: GPU-nope" in e.value.details()
    assert kubelet.allocate("nvidia.com/gpu", r.uuids()[0]).envs["NVIDIA_VISIBLE_DEVICES"] == r.uuids()[0]


def _score(r: Running, ids: list[str]) -> int:
    index = {g.uuid: g.minor for g in r.sim.node.gpus}
    assert r.plugin.current is not None
    links = r.plugin.current.registrar.servers[0].service.scores
    return set_score([index[i] for i in ids], links)


@pytest.mark.parametrize(("available", "must", "size", "expected"), [
    (range(8), [], 2, [2, 3]),  # upstream returns [0,3] (230): the best partition, not the best pair
    (range(8), [4], 2, [4, 7]),
    (range(8), [], 4, [0, 1, 2, 3]),
    (range(8), [], 3, [0, 2, 3]),
    ([1, 2, 3, 5, 6, 7], [], 2, [2, 3]),
    (range(8), [0, 5], 2, [0, 5]),
    ([0, 2, 4, 5], [], 2, [0, 4]),  # upstream returns [4,5] (150); the pair 0-4 (2 NVLinks) scores 210
])
def test_preferred_allocation_on_dgx1v(start: Callable[..., Running], kubelet: KubeletStandIn, available: Any,
                                       must: list[int], size: int, expected: list[int]) -> None:
    r = start("--simulate=dgx1v")
    uuids = r.uuids()
    ids = [uuids[i] for i in available]
    got = kubelet.preferred("nvidia.com/gpu", list(reversed(ids)), [uuids[i] for i in must], size)
    assert got == [uuids[i] for i in expected]
    assert kubelet.preferred("nvidia.com/gpu", ids, [uuids[i] for i in must], size) == got  # order-independent
    assert r.plugin.current is not None
    scores = r.plugin.current.registrar.servers[0].service.scores
    assert _score(r, got) == max(set_score([*must, *c], scores)
                                 for c in itertools.combinations(sorted(set(available) - set(must)), size - len(must)))


def test_dgx1v_topology_is_read_from_nvml(start: Callable[..., Running], kubelet: KubeletStandIn) -> None:
    r = start("--simulate=dgx1v")
    kubelet.registered("nvidia.com/gpu")
    assert r.plugin.current is not None
    scores = r.plugin.current.registrar.servers[0].service.scores
    # The reference's DGX-1V pair-score table, row by row.
    table = [[0, 150, 130, 230, 210, 10, 10, 10], [150, 0, 230, 130, 10, 210, 10, 10],
             [130, 230, 0, 250, 10, 10, 110, 10], [230, 130, 250, 0, 10, 10, 10, 110],
             [210, 10, 10, 10, 0, 150, 130, 230], [10, 210, 10, 10, 150, 0, 230, 130],
             [10, 10, 110, 10, 130, 230, 0, 250], [10, 10, 10, 110, 230, 130, 250, 0]]
    assert all(scores[(a, b)] == table[a][b] for a in range(8) for b in range(8) if a != b)
    assert pair_scores(()) == {}


@pytest.mark.parametrize(("argv", "message"), [
    (["--simulate=a100-80gb-mig-mixed", "--mig-strategy=single"], "more than one MIG device type present on node"),
    (["--simulate=no-library"], "nvml init failed: ERROR_LIBRARY_NOT_FOUND (no libnvidia-ml.so.1 on the library "
                                "search path: no NVIDIA driver here"),
])
def test_start_errors_exit_1(start: Callable[..., Running], argv: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    r = start(*argv)
    r.thread.join(10)
    assert not r.thread.is_alive()
    captured = capsys.readouterr()
    assert message in captured.out + captured.err  # wherever structlog was pointed by earlier tests


def test_no_library_without_fail_on_init_error_waits(start: Callable[..., Running], kubelet: KubeletStandIn) -> None:
    r = start("--simulate=no-library", "--fail-on-init-error=false", serving=False)
    time.sleep(0.3)
    assert r.thread.is_alive() and kubelet.registrations == {}


def test_lost_sockets_and_fault_state_do_not_leak_between_runs(start: Callable[..., Running],
                                                               kubelet: KubeletStandIn) -> None:
    r = start("--simulate=t4")
    kubelet.registered("nvidia.com/gpu")
    r.sim.node.faults.append(Fault("nvmlDeviceGetHandleByIndex_v2", 999, gpu=None))
    kubelet.wait(lambda: set(kubelet.health("nvidia.com/gpu").values()) == {"Unhealthy"})
    r.plugin.stop()
    r.thread.join(5)
    assert not os.path.exists(os.path.join(kubelet.directory, "nvidia-gpu.sock"))


def test_reload_rebuilds_resources_from_the_changed_config(start: Callable[..., Running], kubelet: KubeletStandIn,
                                                           tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("version: v1\n")
    r = start("--simulate=t4", f"--config-file={cfg}")
    first = kubelet.registered("nvidia.com/gpu")
    assert len(first.devices) == 4
    cfg.write_text("version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n"
                   "      replicas: 2\n")
    r.plugin.request_reload()  # what SIGHUP does
    kubelet.wait(lambda: kubelet.registrations.get("nvidia.com/gpu") is not first and
                 len(kubelet.registrations["nvidia.com/gpu"].devices) == 8)
    cfg.write_text("version: v2\n")  # broken: the running config stays
    r.plugin.request_reload()
    time.sleep(0.5)
    assert r.thread.is_alive()
    assert len(kubelet.registered("nvidia.com/gpu").devices) == 8


def test_a_reload_rewrites_the_cdi_spec_for_the_new_config(start: Callable[..., Running], kubelet: KubeletStandIn,
                                                            tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("version: v1\nflags:\n  plugin:\n    deviceListStrategy: [cdi-cri]\n")
    spec = tmp_path / "cdi" / "k8s.device-plugin.nvidia.com-gpu.json"
    r = start("--simulate=t4", f"--config-file={cfg}")
    first = kubelet.registered("nvidia.com/gpu")
    assert {d["name"] for d in json.loads(spec.read_text())["devices"]} == {*r.uuids(), "all"}
    cfg.write_text("version: v1\nflags:\n  plugin:\n    deviceListStrategy: [cdi-cri]\n    deviceIDStrategy: index\n")
    r.plugin.request_reload()  # what SIGHUP does
    kubelet.wait(lambda: kubelet.registrations.get("nvidia.com/gpu") is not first)
    assert {d["name"] for d in json.loads(spec.read_text())["devices"]} == {"0", "1", "2", "3", "all"}
    resp = kubelet.allocate("nvidia.com/gpu", r.uuids()[2])
    assert [c.name for c in resp.cdi_devices] == ["k8s.device-plugin.nvidia.com/gpu=2"]


def test_a_gpu_lost_at_start_is_advertised_unhealthy_and_rediscovered_when_back(
        start: Callable[..., Running], kubelet: KubeletStandIn, tmp_path: Path) -> None:
    profile = tmp_path / "node.yaml"
    node = {"gpus": [{"model": "A100-SXM4-40GB", "count": 8}]}
    # The case: a per-GPU query (fabric info) says the GPU is lost; upstream exits 1 here.
    profile.write_text(yaml.safe_dump(node | {"faults": [
        {"call": "nvmlDeviceGetGpuFabricInfoV", "error": "GPU_IS_LOST", "gpu": 3}]}))
    r = start(f"--simulate={profile}")
    assert r.thread.is_alive()
    kubelet.wait(lambda: len(kubelet.health("nvidia.com/gpu")) == 8 if "nvidia.com/gpu" in kubelet.registrations
                 else False)
    health = kubelet.health("nvidia.com/gpu")
    lost_uuid = r.sim.node.gpus[3].uuid
    assert health[lost_uuid] == "Unhealthy"
    assert sorted(h for u, h in health.items() if u != lost_uuid) == ["Healthy"] * 7
    time.sleep(0.6)  # past the recovery period: the cheap probe answers, but the GPU is still not readable
    assert kubelet.health("nvidia.com/gpu")[lost_uuid] == "Unhealthy"
    profile.write_text(yaml.safe_dump(node))  # the GPU is back
    r.sim.node.faults.clear()
    kubelet.wait(lambda: kubelet.health("nvidia.com/gpu").get(lost_uuid) == "Healthy", timeout=10)
    assert set(kubelet.health("nvidia.com/gpu").values()) == {"Healthy"}
    assert r.thread.is_alive()


def test_a_gpu_lost_at_handle_level_is_named_from_the_driver(start: Callable[..., Running],
                                                              kubelet: KubeletStandIn, tmp_path: Path) -> None:
    profile = tmp_path / "node.yaml"
    profile.write_text(yaml.safe_dump({"gpus": [{"model": "T4", "count": 4}], "faults": [
        {"call": "nvmlDeviceGetHandleByIndex_v2", "error": "GPU_IS_LOST", "gpu": 1}]}))
    r = start(f"--simulate={profile}", "--device-id-strategy=uuid")
    kubelet.wait(lambda: len(kubelet.health("nvidia.com/gpu")) == 4 if "nvidia.com/gpu" in kubelet.registrations
                 else False)
    assert kubelet.health("nvidia.com/gpu")[r.sim.node.gpus[1].uuid] == "Unhealthy"


def test_a_socket_directory_that_does_not_exist_is_created(tmp_path: Path) -> None:
    socket_path = tmp_path / "dp" / "kubelet.sock"  # the README's example, on a fresh machine
    args = [f"--kubelet-socket={socket_path}", "--simulate=t4", "--log-format=json"]
    plugin = DevicePlugin(args, {}, load_plugin_config(args, {}))
    thread = threading.Thread(target=plugin.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "dp" / "nvidia-gpu.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (tmp_path / "dp" / "nvidia-gpu.sock").exists() and thread.is_alive()
        kubelet = KubeletStandIn(str(tmp_path / "dp"))  # the kubelet comes later: registration follows
        try:
            kubelet.registered("nvidia.com/gpu", timeout=15)
        finally:
            kubelet.stop()
    finally:
        plugin.stop()
        thread.join(5)


def test_a_second_instance_on_the_same_socket_leaves_the_first_serving(start: Callable[..., Running],
                                                                       kubelet: KubeletStandIn) -> None:
    first = start("--simulate=t4")
    kubelet.registered("nvidia.com/gpu")
    args = [f"--kubelet-socket={kubelet.socket}", "--simulate=t4", "--log-format=json"]
    second = DevicePlugin(args, {}, load_plugin_config(args, {}))
    assert second.run() == 1  # one line: the socket is served by another running device plugin
    time.sleep(0.3)
    assert first.thread.is_alive()
    assert os.path.exists(os.path.join(kubelet.directory, "nvidia-gpu.sock"))
    uuid = kubelet.registered("nvidia.com/gpu").devices[0].ID
    assert kubelet.allocate("nvidia.com/gpu", uuid).envs["NVIDIA_VISIBLE_DEVICES"] == uuid


def test_sigterm_ends_the_plugin_process_within_a_second(kubelet: KubeletStandIn, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    log = tmp_path / "plugin.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "nvidia-device-plugin"), "--simulate=dgx-a100",
                                 f"--kubelet-socket={kubelet.socket}", "--log-format=json"], stdout=out, stderr=out)
    try:
        kubelet.registered("nvidia.com/gpu", timeout=20)
        first = json.loads(log.read_text().splitlines()[0])
        assert (first["event"], first["kubeletSocket"]) == ("Running with config", kubelet.socket)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - sent < 1.0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


PROFILES = Path(__file__).resolve().parent.parent / "gfd" / "discovery" / "simulated" / "profiles"


def test_healthz_is_ok_after_a_reload_that_finds_no_nvml(start: Callable[..., Running], kubelet: KubeletStandIn,
                                                          tmp_path: Path) -> None:
    """Review of issue 22: `current` outlived its run; a reload whose start found no NVML (allowed by
    --fail-on-init-error=false) left /healthz reading the old run's joined health loop: 503, and the
    kubelet's liveness probe restarted the pod."""
    profile = tmp_path / "node.yaml"
    profile.write_text((PROFILES / "t4.yaml").read_text())
    r = start(f"--simulate={profile}", "--fail-on-init-error=false")
    kubelet.registered("nvidia.com/gpu")
    assert r.plugin.healthy() == (True, "ok")
    profile.write_text((PROFILES / "no-library.yaml").read_text())  # the driver is gone
    r.plugin.request_reload()
    deadline = time.monotonic() + 10
    while r.plugin.healthy() != (True, "ok; no devices to serve") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.plugin.healthy() == (True, "ok; no devices to serve")
    assert r.plugin.current is None and r.plugin.model is None


@pytest.mark.parametrize("when", ["as a run's scope opens", "as the config is read again"])
def test_a_reload_request_is_never_lost(kubelet: KubeletStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        when: str) -> None:
    """Review of issue 22: a SIGHUP landing between a run's scope opening and its being known, or after the
    previous reload's flag was cleared, stopped an already closed scope and was lost."""
    args = [f"--kubelet-socket={kubelet.socket}", f"--cdi-spec-dir={tmp_path / 'cdi'}", "--simulate=t4",
            "--log-format=json"]
    plugin = DevicePlugin(args, {}, load_plugin_config(args, {}))
    reads: list[float] = []
    hup_once = iter([True])

    def counted_reload(*a: Any) -> Any:
        reads.append(time.monotonic())
        config = reload_or_keep(*a)
        if when == "as the config is read again" and next(hup_once, False):
            plugin.request_reload()  # a SIGHUP landing just after the flag was taken
        return config

    monkeypatch.setattr(cli, "reload_or_keep", counted_reload)
    real_scope = plugin.life.scope

    def scope(name: str) -> Any:
        child = real_scope(name)
        if when == "as a run's scope opens" and next(hup_once, False):
            plugin.request_reload()  # a SIGHUP landing before the run is known
        return child

    monkeypatch.setattr(plugin.life, "scope", scope)
    threads = InThreads()
    threads.start(plugin.run, plugin.stop)
    try:
        if when == "as the config is read again":
            kubelet.registered("nvidia.com/gpu")
            plugin.request_reload()
        expected = 1 if when == "as a run's scope opens" else 2
        deadline = time.monotonic() + 10
        while len(reads) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(reads) == expected
    finally:
        threads.stop_all()


def test_no_thread_of_the_plugin_outlives_it(start: Callable[..., Running], kubelet: KubeletStandIn) -> None:
    """Review of issue 22: gRPC's pools were made outside the lifecycle, never shut down nor joined."""
    before = set(threading.enumerate())
    r = start("--simulate=t4")
    first = kubelet.registered("nvidia.com/gpu")
    assert any(t.name.startswith("grpc nvidia.com/gpu") for t in threading.enumerate())
    r.plugin.request_reload()  # each run's pools go with it
    kubelet.wait(lambda: kubelet.registrations.get("nvidia.com/gpu") is not first)
    r.plugin.stop()
    r.thread.join(5)
    assert r.plugin.life.exit_status(0) == 0
    left = [t.name for t in set(threading.enumerate()) - before if not t.name.startswith("kubelet-stand-in")]
    assert left == []
