"""Prepare and unprepare (plugin/dra/prepare.py) with the edges injected: claims from a dict (the real reader,
an informer on the API server, is phase 2's; tests/test_dra_apiserver.py parses claims the real API server
returns) and a spec writer that records what it was asked (the real one is plugin/cdi's, phase 2). The
expected answers and error texts are NVIDIA's (/work/notes/dra-research.md §4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfd.model import DeviceModel
from plugin.cdi.spec import ContainerEdits
from plugin.dra.checkpoint import Checkpoint, PreparedDevice
from plugin.dra.claims import AllocationResult, ClaimFormatError, ClaimRef, PodRef, ResourceClaim, parse_claim
from plugin.dra.devices import Allocatable, allocatable_devices
from plugin.dra.prepare import Prepared, Preparer, cdi_device_id, claim_spec_file
from plugin.dra.shares import ShareLimits
from plugin.dra.sharing import ConsumableShares
from tests import builders

NODE = "gpu-node-1"
BOOT = "boot-1"


class Claims:
    """The API server's claims, as a reader returns them; counts the reads."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], ResourceClaim] = {}
        self.reads = 0
        self.down = False

    def add(self, name: str, uid: str, *devices: str, request: str = "gpu", **result: object) -> ClaimRef:
        ref = ClaimRef("default", name, uid)
        results = tuple(AllocationResult(request, "gpu.nvidia.com", NODE, d, **result) for d in devices)  # type: ignore[arg-type]
        self.claims[("default", name)] = ResourceClaim(ref, True, results)
        return ref

    def read(self, ref: ClaimRef) -> ResourceClaim:
        namespace, name = ref.namespace, ref.name
        self.reads += 1
        if self.down:
            raise ConnectionError("connection refused")
        try:
            return self.claims[(namespace, name)]
        except KeyError:
            raise LookupError(f'resourceclaims.resource.k8s.io "{name}" not found') from None


class Specs:
    """Records the specs written and removed; fails on request (an injected fault)."""

    def __init__(self) -> None:
        self.written: dict[str, list[str]] = {}
        self.extra: dict[str, Mapping[str, ContainerEdits]] = {}
        self.removed: list[str] = []
        self.fail = ""

    def write(self, claim_uid: str, devices: Sequence[Allocatable],
              extra: Mapping[str, ContainerEdits] | None = None) -> None:
        if self.fail:
            raise OSError(self.fail)
        self.written[claim_uid] = [d.name for d in devices]
        self.extra[claim_uid] = dict(extra or {})

    def remove(self, claim_uid: str) -> None:
        self.removed.append(claim_uid)
        self.written.pop(claim_uid, None)


def node() -> DeviceModel:
    mig = replace(builders.mig(0, "1g.5gb", 7), gi_profile_id=19, placement=(0, 1))
    return builders.model(builders.gpu(0), builders.gpu(1), builders.gpu(2, mig))


def preparer(tmp_path: Path, claims: Claims, specs: Specs, shared: bool = False) -> Preparer:
    devices = {d.name: d for d in allocatable_devices(node())}
    return Preparer(NODE, Checkpoint(str(tmp_path), BOOT), claims, specs, devices,
                    ConsumableShares.parse("memory" if shared else "disabled"))


@pytest.fixture
def world(tmp_path: Path) -> tuple[Claims, Specs, Preparer]:
    claims, specs = Claims(), Specs()
    return claims, specs, preparer(tmp_path, claims, specs)


def test_a_claim_gets_its_devices_as_cdi_ids(world: tuple[Claims, Specs, Preparer]) -> None:
    claims, specs, p = world
    ref = claims.add("pod-gpu", "uid-a", "gpu-0", "gpu-2-mig-1g5gb-19-0")
    answer = p.prepare([ref])
    assert answer == {"uid-a": Prepared((
        PreparedDevice(("gpu",), NODE, "gpu-0", ("k8s.gpu.nvidia.com/claim=uid-a-gpu-0",)),
        PreparedDevice(("gpu",), NODE, "gpu-2-mig-1g5gb-19-0",
                       ("k8s.gpu.nvidia.com/claim=uid-a-gpu-2-mig-1g5gb-19-0",))))}
    assert specs.written == {"uid-a": ["gpu-0", "gpu-2-mig-1g5gb-19-0"]}
    assert claim_spec_file("uid-a") == "k8s.gpu.nvidia.com-claim_uid-a.yaml"


def test_prepare_is_idempotent_without_reading_the_api_again(world: tuple[Claims, Specs, Preparer]) -> None:
    claims, specs, p = world
    ref = claims.add("c", "uid-a", "gpu-0")
    first = p.prepare([ref])
    specs.written.clear()
    claims.down = True  # answered from the checkpoint: no API read, so an API outage does not matter
    assert p.prepare([ref]) == first and claims.reads == 1 and specs.written == {}


def test_a_restarted_plugin_answers_and_unprepares_from_the_checkpoint(tmp_path: Path) -> None:
    claims, specs = Claims(), Specs()
    ref = claims.add("c", "uid-a", "gpu-1")
    first = preparer(tmp_path, claims, specs).prepare([ref])
    again = preparer(tmp_path, Claims(), specs)  # a new process: nothing in memory, the API knows nothing
    assert again.prepare([ref]) == first
    assert again.unprepare([ref]) == {"uid-a": ""}
    assert specs.removed == ["uid-a"] and again.checkpoint.claims == {}
    assert Checkpoint(str(tmp_path), BOOT).claims == {}


def test_only_this_drivers_results_count_and_subrequests_are_stripped(world: tuple[Claims, Specs, Preparer]) -> None:
    claims, _, p = world
    ref = ClaimRef("default", "mixed", "uid-m")
    claims.claims[("default", "mixed")] = ResourceClaim(ref, True, (
        AllocationResult("nic", "sriov.example.com", NODE, "eth0"),
        AllocationResult("gpu/a100", "gpu.nvidia.com", NODE, "gpu-1", share_id="7f3c"),
    ))
    assert p.prepare([ref])["uid-m"].devices == (
        PreparedDevice(("gpu",), NODE, "gpu-1", (cdi_device_id("uid-m", "gpu-1"),), share_id="7f3c",
                       share=ShareLimits(node().gpus[1].uuid, None)),)


def test_a_claim_with_no_devices_of_ours_prepares_nothing(world: tuple[Claims, Specs, Preparer]) -> None:
    claims, specs, p = world
    ref = claims.add("other", "uid-o")
    assert p.prepare([ref]) == {"uid-o": Prepared(())} and specs.written == {}


@pytest.mark.parametrize(("setup", "error"), [
    ("unknown", 'error preparing devices for claim default/c:uid-x: prepare devices failed: allocatable not '
                'found for device "gpu-9"'),
    ("missing", 'retrieve claim default/c: resourceclaims.resource.k8s.io "c" not found'),
    ("down", "retrieve claim default/c: connection refused"),
    ("unallocated", "claim default/c not allocated"),
    ("replaced", "claim default/c got replaced"),
    ("other pool", "error preparing devices for claim default/c:uid-x: prepare devices failed: device gpu-0 is "
                   "in pool gpu-node-2, not in this node's pool gpu-node-1"),
])
def test_failures_are_the_claims_own_error(world: tuple[Claims, Specs, Preparer], setup: str, error: str) -> None:
    claims, specs, p = world
    good = claims.add("good", "uid-g", "gpu-1")
    ref = ClaimRef("default", "c", "uid-x")
    if setup == "unknown":
        claims.add("c", "uid-x", "gpu-9")
    elif setup == "down":
        claims.down = True
    elif setup == "unallocated":
        claims.claims[("default", "c")] = ResourceClaim(ref, False)
    elif setup == "replaced":
        claims.add("c", "uid-new", "gpu-0")
    elif setup == "other pool":
        claims.claims[("default", "c")] = ResourceClaim(ref, True, (
            AllocationResult("gpu", "gpu.nvidia.com", "gpu-node-2", "gpu-0"),))
    answers = p.prepare([ref, good])
    assert answers["uid-x"] == Prepared(error=error)
    if setup != "down":
        assert answers["uid-g"].devices and not answers["uid-g"].error  # the batch goes on
    assert "uid-x" not in specs.written


def test_a_device_prepared_for_another_claim_is_refused(world: tuple[Claims, Specs, Preparer]) -> None:
    claims, _, p = world
    p.prepare([claims.add("first", "uid-1", "gpu-0")])
    second = p.prepare([claims.add("second", "uid-2", "gpu-1", "gpu-0")])
    assert second["uid-2"].error == ("error preparing devices for claim default/second:uid-2: unable to prepare "
                                     "claim uid-2: requested device gpu-0 is already allocated to different claim "
                                     "uid-1")
    p.unprepare([ClaimRef("default", "first", "uid-1")])
    assert not p.prepare([ClaimRef("default", "second", "uid-2")])["uid-2"].error


def test_admin_access_and_shareable_devices_may_overlap(tmp_path: Path) -> None:
    claims, specs = Claims(), Specs()
    (tmp_path / "a").mkdir()
    exclusive = preparer(tmp_path / "a", claims, specs)
    exclusive.prepare([claims.add("first", "uid-1", "gpu-0")])
    admin = claims.add("monitor", "uid-m", "gpu-0", admin_access=True)
    assert not exclusive.prepare([admin])["uid-m"].error
    (tmp_path / "b").mkdir()
    shared = preparer(tmp_path / "b", claims, specs, shared=True)
    answers = shared.prepare([claims.add("s1", "uid-s1", "gpu-0", share_id="aa"),
                              claims.add("s2", "uid-s2", "gpu-0", share_id="bb")])
    assert [a.devices[0].share_id for a in answers.values()] == ["aa", "bb"]


def test_a_device_twice_in_one_claim_is_one_spec_device(world: tuple[Claims, Specs, Preparer]) -> None:
    claims, specs, p = world
    ref = ClaimRef("default", "two-shares", "uid-t")
    claims.claims[("default", "two-shares")] = ResourceClaim(ref, True, (
        AllocationResult("a", "gpu.nvidia.com", NODE, "gpu-0", share_id="s1"),
        AllocationResult("b", "gpu.nvidia.com", NODE, "gpu-0", share_id="s2")))
    assert len(p.prepare([ref])["uid-t"].devices) == 2
    assert specs.written == {"uid-t": ["gpu-0"]}


def test_a_failed_spec_write_is_undone_by_unprepare(world: tuple[Claims, Specs, Preparer]) -> None:
    claims, specs, p = world
    ref = claims.add("c", "uid-a", "gpu-0")
    specs.fail = "Read-only file system"
    assert p.prepare([ref])["uid-a"].error == ("error preparing devices for claim default/c:uid-a: unable to create "
                                               "CDI spec file for claim: Read-only file system")
    assert p.checkpoint.get("uid-a") is None  # nothing was prepared: nothing is checkpointed
    specs.fail = ""
    # A prepare that did not complete does not hold the device against others.
    assert not p.prepare([claims.add("d", "uid-b", "gpu-0")])["uid-b"].error
    assert p.unprepare([ref]) == {"uid-a": ""}
    assert p.checkpoint.get("uid-a") is None and "uid-a" in specs.removed


def test_unprepare_of_an_unknown_claim_succeeds_and_removes_a_leftover_spec(world: tuple[Claims, Specs,
                                                                                    Preparer]) -> None:
    _, specs, p = world
    assert p.unprepare([ClaimRef("default", "gone", "uid-z")]) == {"uid-z": ""}
    assert specs.removed == ["uid-z"]


def test_a_checkpoint_that_cannot_be_written_fails_the_claim(tmp_path: Path) -> None:
    claims, directory = Claims(), tmp_path / "plugin"
    directory.mkdir()
    p = preparer(directory, claims, Specs())
    directory.rmdir()
    directory.write_text("")  # no directory to write into any more
    error = p.prepare([claims.add("c", "uid-a", "gpu-0")])["uid-a"].error
    assert error.startswith("error preparing devices for claim default/c:uid-a: unable to update checkpoint ")
    assert error.endswith(": Not a directory")


def test_devices_that_disappear_cannot_be_prepared(world: tuple[Claims, Specs, Preparer]) -> None:
    claims, _, p = world
    p.update_devices({d.name: d for d in allocatable_devices(builders.model(builders.gpu(1)))})
    assert "allocatable not found" in p.prepare([claims.add("c", "uid-a", "gpu-0")])["uid-a"].error


def test_claims_in_the_apis_json_form() -> None:
    claim = parse_claim({"metadata": {"namespace": "ns", "name": "c", "uid": "u"}, "status": {"allocation": {
        "devices": {"results": [{"request": "gpu/big", "driver": "gpu.nvidia.com", "pool": NODE, "device": "gpu-0",
                                 "shareID": "s", "adminAccess": True, "consumedCapacity": {"memory": "4Gi"}}]}}}})
    assert claim == ResourceClaim(ClaimRef("ns", "c", "u"), True, (AllocationResult(
        "gpu/big", "gpu.nvidia.com", NODE, "gpu-0", "s", True, {"memory": "4Gi"}),))
    assert not parse_claim({"metadata": {"namespace": "ns", "name": "c", "uid": "u"}}).allocated
    with pytest.raises(ClaimFormatError, match=r"status.allocation.devices.results\[0\].device: missing"):
        parse_claim({"metadata": {"namespace": "ns", "name": "c", "uid": "u"}, "status": {"allocation": {
            "devices": {"results": [{"request": "r", "driver": "d", "pool": "p"}]}}}})


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=4), max_leaves=20)
KEYS = st.sampled_from(["metadata", "status", "allocation", "devices", "results", "namespace", "name", "uid",
                        "request", "driver", "pool", "device", "shareID", "adminAccess", "consumedCapacity",
                        "reservedFor", "resource", "apiGroup"])
CLAIMISH = st.recursive(JSON, lambda inner: st.dictionaries(KEYS, inner, max_size=5) | st.lists(inner, max_size=2),
                        max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(CLAIMISH)
def test_any_json_is_a_claim_or_one_clear_error(doc: object) -> None:
    try:
        claim = parse_claim(doc)
    except ClaimFormatError as e:
        assert "\n" not in str(e) and ": " in str(e)
    else:
        assert claim.ref.uid and all(r.device for r in claim.results)


def test_a_prepare_writes_the_checkpoint_once(world: tuple[Claims, Specs, Preparer],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write flushes to disk twice (file and directory): one write per prepare keeps its latency low."""
    claims, _, p = world
    writes: list[int] = []
    real = p.checkpoint._write

    def counted(claims: dict[str, Any]) -> None:
        writes.append(len(claims))
        real(claims)

    monkeypatch.setattr(p.checkpoint, "_write", counted)
    assert not p.prepare([claims.add("c", "uid-a", "gpu-0", "gpu-1")])["uid-a"].error
    assert writes == [1]


# -- memory shares enforced by MPS --------------------------------------------------------------------------------
class Enforcer:
    """The GPUs' MPS daemons as prepare sees them (plugin/dra/mpsshares.py runs the real ones, tested with the MPS
    stand-in in test_dra_mpsshares.py): which GPUs run one, and a daemon that fails to start on request."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.fail = ""

    def ensure(self, uuid: str) -> None:
        if self.fail:
            raise RuntimeError(self.fail)
        self.running.add(uuid)

    def release(self, uuid: str) -> None:
        self.running.discard(uuid)

    def client_edits(self, uuid: str, limits: ShareLimits) -> ContainerEdits:
        return ContainerEdits(env=(f"LIMITS={uuid}:{limits.memory_mib}:{limits.compute_percent}",))


SHARES = ConsumableShares.parse("memory", "mps")
GPU0, GPU1 = node().gpus[0].uuid, node().gpus[1].uuid


def share(claims: Claims, name: str, *devices: str, memory: str = "10Gi", compute: str = "0",
          pods: tuple[PodRef, ...] = ()) -> ClaimRef:
    """A claim of shares of `devices` as the scheduler allocates them: a shareID and the consumed capacity each."""
    ref = ClaimRef("default", name, f"uid-{name}")
    results = tuple(AllocationResult("gpu", "gpu.nvidia.com", NODE, d, share_id=f"{name}-{i}",
                                     consumed_capacity={"memory": memory, "compute": compute})
                    for i, d in enumerate(devices))
    claims.claims[("default", name)] = ResourceClaim(ref, True, results, pods)
    return ref


@pytest.fixture
def shared(tmp_path: Path) -> tuple[Claims, Specs, Enforcer, Preparer]:
    claims, specs, enforcer = Claims(), Specs(), Enforcer()
    devices = {d.name: d for d in allocatable_devices(node())}
    return claims, specs, enforcer, Preparer(NODE, Checkpoint(str(tmp_path), BOOT), claims, specs, devices, SHARES,
                                             enforcer)


def test_an_enforced_share_runs_its_gpus_daemon_and_its_containers_get_their_limits(
        shared: tuple[Claims, Specs, Enforcer, Preparer]) -> None:
    claims, specs, enforcer, p = shared
    pod = PodRef("train-0", "pod-uid-1")
    ref = share(claims, "a", "gpu-0", memory="30Gi", compute="25", pods=(pod,))
    (device,) = p.prepare([ref])["uid-a"].devices
    assert device.share == ShareLimits(GPU0, 30 * 1024, 25, True) and device.share_id == "a-0"
    assert enforcer.running == {GPU0}
    assert specs.extra["uid-a"] == {"gpu-0": ContainerEdits(env=(f"LIMITS={GPU0}:30720:25",))}
    assert p.checkpoint.claims["uid-a"].pods == (pod,)  # for whoever asks who holds a share
    assert p.enforced_gpus() == {GPU0}
    assert [(s.claim.name, s.pods, s.device, s.limits.memory_mib) for s in p.shares()] == [
        ("a", (pod,), "gpu-0", 30 * 1024)]


def test_a_gpus_daemon_stops_with_its_last_enforced_share(shared: tuple[Claims, Specs, Enforcer, Preparer]) -> None:
    claims, _, enforcer, p = shared
    a, b = share(claims, "a", "gpu-0"), share(claims, "b", "gpu-0")
    p.prepare([a, b])
    p.unprepare([a])
    assert enforcer.running == {GPU0}
    p.unprepare([b])
    assert enforcer.running == set() and p.enforced_gpus() == set()


def test_a_claim_of_the_whole_gpu_gets_it_without_mps(shared: tuple[Claims, Specs, Enforcer, Preparer]) -> None:
    """It named no amount, so it consumed the policy's default: all of the GPU's memory."""
    claims, specs, enforcer, p = shared
    ref = share(claims, "whole", "gpu-1", memory=f"{node().gpus[1].memory_mib}Mi")
    (device,) = p.prepare([ref])["uid-whole"].devices
    assert device.share is not None and not device.share.enforced
    assert enforcer.running == set() and specs.extra["uid-whole"] == {}


def test_shares_of_two_gpus_in_one_claim_are_refused(shared: tuple[Claims, Specs, Enforcer, Preparer]) -> None:
    """A container's CUDA goes through one MPS daemon, and each daemon serves one GPU."""
    claims, specs, enforcer, p = shared
    answer = p.prepare([share(claims, "two", "gpu-0", "gpu-1")])["uid-two"]
    assert answer.error == ("error preparing devices for claim default/two:uid-two: prepare devices failed: a claim "
                            "with a memory share enforced by MPS holds nothing else (a container's CUDA runs through "
                            "one GPU's MPS daemon); this one holds gpu-0, gpu-1")
    ref = ClaimRef("default", "mixed", "uid-mixed")
    claims.claims[("default", "mixed")] = ResourceClaim(ref, True, (
        AllocationResult("s", "gpu.nvidia.com", NODE, "gpu-0", share_id="s", consumed_capacity={"memory": "1Gi"}),
        AllocationResult("m", "gpu.nvidia.com", NODE, "gpu-2-mig-1g5gb-19-0")))
    assert "this one holds gpu-0, gpu-2-mig-1g5gb-19-0" in p.prepare([ref])["uid-mixed"].error
    assert enforcer.running == set() and specs.written == {} and p.checkpoint.claims == {}


def test_a_daemon_that_cannot_start_fails_the_claim_and_leaves_nothing(
        shared: tuple[Claims, Specs, Enforcer, Preparer]) -> None:
    claims, specs, enforcer, p = shared
    enforcer.fail = "nvidia-cuda-mps-control -d: exit 1: An instance of this daemon is already running"
    assert p.prepare([share(claims, "a", "gpu-0")])["uid-a"].error == (
        f"error preparing devices for claim default/a:uid-a: prepare devices failed: MPS daemon of GPU {GPU0}: "
        "nvidia-cuda-mps-control -d: exit 1: An instance of this daemon is already running")
    assert specs.written == {} and p.checkpoint.claims == {}


def test_a_failed_spec_write_gives_an_unneeded_daemon_back(shared: tuple[Claims, Specs, Enforcer, Preparer]) -> None:
    claims, specs, enforcer, p = shared
    p.prepare([share(claims, "a", "gpu-0")])
    specs.fail = "No space left on device"
    assert "No space left on device" in p.prepare([share(claims, "b", "gpu-0")])["uid-b"].error
    assert "No space left on device" in p.prepare([share(claims, "c", "gpu-1")])["uid-c"].error
    assert enforcer.running == {GPU0}  # GPU 0's daemon serves claim a; GPU 1's served nobody


def test_enforced_shares_survive_a_restart_of_the_plugin(tmp_path: Path) -> None:
    claims, specs, enforcer = Claims(), Specs(), Enforcer()
    devices = {d.name: d for d in allocatable_devices(node())}
    first = Preparer(NODE, Checkpoint(str(tmp_path), BOOT), claims, specs, devices, SHARES, enforcer)
    first.prepare([share(claims, "a", "gpu-1", memory="2Gi")])
    again = Preparer(NODE, Checkpoint(str(tmp_path), BOOT), Claims(), specs, devices, SHARES, enforcer)
    assert again.enforced_gpus() == {GPU1}  # what the next start's daemons are reconciled with
    assert again.unprepare([ClaimRef("default", "a", "uid-a")]) == {"uid-a": ""} and enforcer.running == set()


def test_without_enforcement_shares_are_counted_as_nvidias(tmp_path: Path) -> None:
    claims, specs = Claims(), Specs()
    devices = {d.name: d for d in allocatable_devices(node())}
    p = Preparer(NODE, Checkpoint(str(tmp_path), BOOT), claims, specs, devices, ConsumableShares.parse("memory"))
    answers = p.prepare([share(claims, "a", "gpu-0"), share(claims, "b", "gpu-0", "gpu-1")])
    assert all(not a.error for a in answers.values()) and specs.extra == {"uid-a": {}, "uid-b": {}}
    assert all(d.share is not None and not d.share.enforced for a in answers.values() for d in a.devices)


def test_a_device_not_published_as_shareable_is_still_refused_to_a_second_claim(
        shared: tuple[Claims, Specs, Enforcer, Preparer]) -> None:
    """Under `--share-enforcement=mps` MIG devices are published without allowMultipleAllocations
    (ConsumableShares.shareable), so no second claim may hold one, even one whose stale allocation has a shareID
    (a config reload, a second scheduler)."""
    claims, _, _, p = shared
    mig = "gpu-2-mig-1g5gb-19-0"
    assert not p.prepare([claims.add("first", "uid-1", mig)])["uid-1"].error
    second = p.prepare([claims.add("second", "uid-2", mig)])["uid-2"]
    assert "already allocated to different claim uid-1" in second.error
    stale = p.prepare([share(claims, "stale", mig)])["uid-stale"]
    assert "requested device gpu-2-mig-1g5gb-19-0 is already allocated to different claim uid-1" in stale.error


def test_only_shares_of_a_shareable_device_are_prepared_beside_each_other(
        shared: tuple[Claims, Specs, Enforcer, Preparer]) -> None:
    """A GPU held whole (no shareID) is not shared, and a GPU holding shares is not taken whole; shares of it are."""
    claims, _, _, p = shared
    assert not p.prepare([claims.add("whole", "uid-whole", "gpu-1")])["uid-whole"].error
    assert "already allocated to different claim uid-whole" in p.prepare([share(claims, "a", "gpu-1")])["uid-a"].error
    assert all(not a.error for a in p.prepare([share(claims, "b", "gpu-0"), share(claims, "c", "gpu-0")]).values())
    taken = p.prepare([claims.add("taken", "uid-taken", "gpu-0")])["uid-taken"]
    assert "requested device gpu-0 is already allocated to different claim uid-b" in taken.error
    admin = p.prepare([claims.add("admin", "uid-admin", "gpu-0", admin_access=True)])["uid-admin"]
    assert not admin.error  # admin access observes a device without taking any of it


def test_a_share_of_a_gpu_under_mps_is_enforced_whatever_the_reloaded_setting(
        shared: tuple[Claims, Specs, Enforcer, Preparer]) -> None:
    """GPU 0 runs an MPS daemon in EXCLUSIVE_PROCESS for claim a. After SIGHUP with shareEnforcement: none, claim b
    (allocated beside a) is still an MPS client held to its limits: outside the daemon its process would get no
    context on the EXCLUSIVE_PROCESS GPU. GPU 1, which holds no share, follows the new setting, and so does GPU 0
    once its shares end."""
    claims, specs, enforcer, p = shared
    p.prepare([share(claims, "a", "gpu-0", memory="30Gi")])
    assert enforcer.running == {GPU0}
    p.update_sharing(ConsumableShares.parse("memory", "none"), None)
    assert p.modes_kept() == {GPU0: True}
    (device,) = p.prepare([share(claims, "b", "gpu-0", memory="30Gi")])["uid-b"].devices
    assert device.share is not None and device.share.enforced and specs.extra["uid-b"] != {}
    (other,) = p.prepare([share(claims, "c", "gpu-1", memory="30Gi")])["uid-c"].devices
    assert other.share is not None and not other.share.enforced and specs.extra["uid-c"] == {}
    p.unprepare([ClaimRef("default", "a", "uid-a"), ClaimRef("default", "b", "uid-b")])
    assert enforcer.running == set() and p.modes_kept() == {}
    (after,) = p.prepare([share(claims, "d", "gpu-0", memory="30Gi")])["uid-d"].devices
    assert after.share is not None and not after.share.enforced and enforcer.running == set()


def test_a_gpu_with_unenforced_shares_does_not_switch_to_mps_under_them(tmp_path: Path) -> None:
    """After SIGHUP with shareEnforcement: mps, GPU 0 still runs claim a's processes without MPS: starting its daemon
    (EXCLUSIVE_PROCESS) would lock them out. A share the setting enforces is refused there, naming the GPU and why;
    the kubelet's retry prepares it, enforced, once a has ended. GPU 1 is enforced at once."""
    claims, specs, enforcer = Claims(), Specs(), Enforcer()
    devices = {d.name: d for d in allocatable_devices(node())}
    p = Preparer(NODE, Checkpoint(str(tmp_path), BOOT), claims, specs, devices, ConsumableShares.parse("memory"))
    assert not p.prepare([share(claims, "a", "gpu-0", memory="30Gi")])["uid-a"].error
    p.update_sharing(SHARES, enforcer)
    assert p.modes_kept() == {GPU0: False}
    b = share(claims, "b", "gpu-0", memory="30Gi")
    assert p.prepare([b])["uid-b"].error == (
        f"error preparing devices for claim default/b:uid-b: prepare devices failed: GPU {GPU0} holds shares "
        "prepared without MPS enforcement; it takes enforced shares once those end (it cannot run both)")
    assert enforcer.running == set() and "uid-b" not in p.checkpoint.claims and "uid-b" not in specs.written
    (other,) = p.prepare([share(claims, "c", "gpu-1", memory="30Gi")])["uid-c"].devices
    assert other.share is not None and other.share.enforced and enforcer.running == {GPU1}
    p.unprepare([ClaimRef("default", "a", "uid-a")])
    (device,) = p.prepare([b])["uid-b"].devices
    assert device.share is not None and device.share.enforced and enforcer.running == {GPU0, GPU1}
    assert p.modes_kept() == {}
