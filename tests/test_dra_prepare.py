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
from plugin.dra.claims import AllocationResult, ClaimFormatError, ClaimRef, ResourceClaim, parse_claim
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
                        "request", "driver", "pool", "device", "shareID", "adminAccess", "consumedCapacity"])
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
