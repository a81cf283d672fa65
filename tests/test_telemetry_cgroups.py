"""A GPU process's pod and container from its /proc/<pid>/cgroup: the kubelet's cgroup path forms (cgroupfs and
systemd drivers, cgroup v1 and v2), read from a real process in a real cgroup where the machine allows it; hostile
and odd files (fuzzed) name no pod, never raise, never block."""

from __future__ import annotations

import os
import string
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin.telemetry.cgroups import MAX_LINES, READ_LIMIT, CgroupOwner, owner_of, read_owner
from tests.cgroups import CGROUPFS, SYSTEMD, fake_proc, new_ids, pod_path, process_in_pod_cgroup

UID = "3e8d9892-2db4-45f1-b913-5cecb0da6b57"
CTR = "5f0c" * 16


@pytest.mark.parametrize("driver", [CGROUPFS, SYSTEMD])
def test_a_real_process_in_a_pods_cgroup_is_that_pods(driver: str) -> None:
    """The kernel writes the file; only the cgroup's name is ours (the kubelet's form for a BestEffort pod)."""
    with process_in_pod_cgroup(driver) as process:
        assert read_owner("/proc", process.pid) == CgroupOwner(process.pod_uid, process.container_id)


def test_a_process_this_proc_root_does_not_show_names_no_pod(tmp_path: Path) -> None:
    assert read_owner(str(tmp_path), 123) is None  # ended, or in another PID namespace


@pytest.mark.parametrize(("text", "owner"), [
    # cgroupfs driver, cgroup v1, under a --cgroup-root (the shared test node's layout), the other hierarchies too
    (f"12:pids:/node-1-b8721600/kubepods/besteffort/pod{UID}/{CTR}\n4:memory:/node-1-b8721600/kubepods/besteffort/"
     f"pod{UID}/{CTR}\n1:name=systemd:/\n0::/\n", CgroupOwner(UID, CTR)),
    # the guaranteed class has no QoS level
    (f"0::/kubepods/pod{UID}/{CTR}\n", CgroupOwner(UID, CTR)),
    # systemd driver, cgroup v2, with containerd, CRI-O and Docker scopes
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
     f"cri-containerd-{CTR}.scope\n", CgroupOwner(UID, CTR)),
    (f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CTR}.scope\n", CgroupOwner(UID, CTR)),
    (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
     f"docker-{CTR}.scope\n", CgroupOwner(UID, CTR)),
    # a static pod's UID is the hash of its manifest
    (f"0::/kubepods/besteffort/pod{'ab' * 16}/{CTR}\n", CgroupOwner("ab" * 16, CTR)),
    # a hierarchy that stops at the pod agrees with one that names the container
    (f"3:cpuset:/kubepods/besteffort/pod{UID}\n2:pids:/kubepods/besteffort/pod{UID}/{CTR}\n", CgroupOwner(UID, CTR)),
    # the pod's own cgroup (its pause process under some runtimes): no container
    (f"0::/kubepods/besteffort/pod{UID}\n", CgroupOwner(UID, None)),
    # CRI-O's conmon is not the container
    (f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-conmon-{CTR}.scope\n", CgroupOwner(UID, None)),
    # not a pod: a system service, the host, a UID too short, two pods in one file
    ("0::/system.slice/containerd.service\n", None),
    ("12:pids:/\n0::/\n", None),
    (f"0::/kubepods/besteffort/pod{UID[:30]}/{CTR}\n", None),
    (f"2:pids:/kubepods/pod{UID}/{CTR}\n1:cpu:/kubepods/pod{'cd' * 16}/{CTR}\n", None),
    ("", None), ("garbage without colons\n", None),
])
def test_the_kubelets_path_forms(text: str, owner: CgroupOwner | None) -> None:
    assert owner_of(text) == owner


def test_from_a_proc_root_that_holds_what_the_kernel_would_show(tmp_path: Path) -> None:
    for pid, driver in ((41, CGROUPFS), (42, SYSTEMD)):
        pod_uid, container_id = new_ids()
        fake_proc(tmp_path, pid, driver, pod_uid, container_id)
        assert read_owner(str(tmp_path), pid) == CgroupOwner(pod_uid, container_id)


def test_hostile_files_are_bounded_and_name_no_pod(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    os.mkfifo(tmp_path / "1" / "cgroup")  # would block a plain open() forever
    started = time.monotonic()
    assert read_owner(str(tmp_path), 1) is None
    assert time.monotonic() - started < 1
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "cgroup").write_bytes(b"0::/x\n" * (READ_LIMIT // 6 + 1))  # larger than a real file can be
    assert read_owner(str(tmp_path), 2) is None
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "cgroup").write_bytes(b"\xff\xfe" + f"0::/kubepods/pod{UID}/{CTR}\n".encode())
    assert read_owner(str(tmp_path), 3) == CgroupOwner(UID, CTR)  # odd bytes elsewhere do not hide the pod
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "cgroup").symlink_to("/dev/zero")  # never ends
    assert read_owner(str(tmp_path), 4) is None
    late = "".join(f"{i}:x:/\n" for i in range(MAX_LINES)) + f"0::/kubepods/pod{UID}/{CTR}\n"
    assert owner_of(late) is None  # lines past MAX_LINES are not read


PATH_CHARS = string.ascii_letters + string.digits + "-_./:\n" + "é\x00"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(alphabet=PATH_CHARS, max_size=3000) | st.binary(max_size=3000).map(lambda b: b.decode("latin-1")))
def test_fuzz_any_text_is_read_quickly_and_names_a_uuid_shaped_pod_or_none(text: str) -> None:
    started = time.monotonic()
    owner = owner_of(text)
    assert time.monotonic() - started < 0.5
    if owner is not None:
        assert len(owner.pod_uid) in (32, 36) and set(owner.pod_uid) <= set("0123456789abcdef-")
        assert owner.container_id is None or (len(owner.container_id) == 64 and set(owner.container_id) <=
                                              set("0123456789abcdef"))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([CGROUPFS, SYSTEMD]), st.uuids(), st.binary(min_size=32, max_size=32),
       st.lists(st.sampled_from(["", "/node-1-ab12", "/machine.slice", "/../.."]), max_size=2),
       st.lists(st.text(alphabet=PATH_CHARS.replace("\n", ""), max_size=80), max_size=5))
def test_fuzz_a_pods_path_anywhere_among_other_lines_is_found(driver: str, uid: object, cid: bytes, prefix: list[str],
                                                              others: list[str]) -> None:
    pod_uid, container_id = str(uid), cid.hex()
    line = f"7:pids:{''.join(prefix)}{pod_path(driver, pod_uid, container_id)}"
    noise = [f"{i}:ctl:{o}" for i, o in enumerate(others) if "pod" not in o]
    assert owner_of("\n".join([*noise, line, "0::/"])) == CgroupOwner(pod_uid, container_id)
