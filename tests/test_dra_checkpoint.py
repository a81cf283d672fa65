"""The prepared-claims checkpoint (plugin/dra/checkpoint.py): atomic replacement, torn and damaged files, and
the node's boot id (a reboot drops prepared state, as NVIDIA's driver does since its PR #1066)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from plugin.dra.checkpoint import (
    FILE_NAME,
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    Checkpoint,
    CheckpointError,
    PreparedClaim,
    PreparedDevice,
    read_boot_id,
    read_prepared,
)
from plugin.dra.claims import PodRef
from plugin.dra.shares import ShareLimits

ROOT = Path(__file__).resolve().parent.parent
BOOT = "5f2a7c1e-0b9d-4f3e-8a61-2d4c9e7b1a00"


def claim(n: int, state: str = PREPARE_COMPLETED) -> PreparedClaim:
    device = PreparedDevice(("gpu",), "node-1", f"gpu-{n}", (f"k8s.gpu.nvidia.com/claim=uid-{n}-gpu-{n}",),
                            share_id="a1b2" if n % 2 else None)
    return PreparedClaim(f"uid-{n}", "default", f"claim-{n}", state, (device,))


def test_claims_survive_a_restart(tmp_path: Path) -> None:
    cp = Checkpoint(str(tmp_path), BOOT)
    cp.put(claim(0))
    cp.put(claim(1, PREPARE_STARTED))
    cp.remove("uid-0")
    cp.put(claim(2))
    again = Checkpoint(str(tmp_path), BOOT)
    assert again.claims == {"uid-1": claim(1, PREPARE_STARTED), "uid-2": claim(2)}
    assert json.loads((tmp_path / FILE_NAME).read_text())["nodeBootID"] == BOOT


def test_shares_and_the_pods_holding_them_are_checkpointed(tmp_path: Path) -> None:
    """What the telemetry reads of a share (its GPU, limits, claim and pods), from another process too."""
    device = PreparedDevice(("gpu",), "node-1", "gpu-0", ("k8s.gpu.nvidia.com/claim=uid-s-gpu-0",), "0b7c",
                            share=ShareLimits("GPU-0", 30720, 25, True))
    whole = PreparedDevice(("gpu",), "node-1", "gpu-1", ("k8s.gpu.nvidia.com/claim=uid-s-gpu-1",), "9d1e",
                           share=ShareLimits("GPU-1", None))
    shared = PreparedClaim("uid-s", "team-a", "train", PREPARE_COMPLETED, (device, whole),
                           (PodRef("train-0", "pod-1"), PodRef("train-1", "pod-2")))
    Checkpoint(str(tmp_path), BOOT).put(shared)
    Checkpoint(str(tmp_path), BOOT).put(claim(1))
    assert Checkpoint(str(tmp_path), BOOT).claims["uid-s"] == shared
    assert read_prepared(str(tmp_path)) == {"uid-s": shared, "uid-1": claim(1)}
    assert read_prepared(str(tmp_path / "none")) == {}
    (tmp_path / FILE_NAME).write_text("{")
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / FILE_NAME} unreadable"):
        read_prepared(str(tmp_path))
    assert (tmp_path / FILE_NAME).read_text() == "{"  # a reader changes nothing


def test_a_reboot_drops_the_prepared_claims(tmp_path: Path) -> None:
    Checkpoint(str(tmp_path), BOOT).put(claim(0))
    with capture_logs() as logs:
        after = Checkpoint(str(tmp_path), "0d6e1b2a-after-reboot")
    assert after.claims == {}
    assert [e["event"] for e in logs] == ["node rebooted since the checkpoint was written; its prepared claims "
                                          "are dropped"]
    after.put(claim(1))
    assert json.loads((tmp_path / FILE_NAME).read_text())["nodeBootID"] == "0d6e1b2a-after-reboot"


def test_the_boot_id_is_the_kernels(tmp_path: Path) -> None:
    assert len(read_boot_id()) == 36  # /proc/sys/kernel/random/boot_id: a UUID
    assert read_boot_id(str(tmp_path / "missing")) == ""


def test_a_write_that_fails_before_the_rename_leaves_the_old_checkpoint(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cp = Checkpoint(str(tmp_path), BOOT)
    cp.put(claim(0))
    before = (tmp_path / FILE_NAME).read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(CheckpointError, match=r"unable to update checkpoint .*: No space left on device"):
        cp.put(claim(1))
    monkeypatch.undo()
    assert (tmp_path / FILE_NAME).read_bytes() == before
    assert cp.claims == {"uid-0": claim(0)}  # memory follows the disk
    assert sorted(os.listdir(tmp_path)) == [FILE_NAME]  # no temporary left


def test_a_write_is_a_rename_not_flushed_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Atomic for any reader and across a crash of the process; not flushed (fsync), since a power loss is a
    reboot, after which the checkpoint is dropped anyway (bench/dra.py: the flushes were prepare's p99)."""
    order: list[str] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        order.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", lambda fd: order.append("fsync"))
    monkeypatch.setattr(os, "replace", replace)
    Checkpoint(str(tmp_path), BOOT).put(claim(0))
    assert order == ["rename"]


def test_an_earlier_boots_checkpoint_is_marked_as_such(tmp_path: Path) -> None:
    Checkpoint(str(tmp_path), "boot-1").put(claim(0))
    assert not Checkpoint(str(tmp_path), "boot-1").from_earlier_boot
    assert Checkpoint(str(tmp_path), "boot-2").from_earlier_boot


def test_the_temporary_of_an_interrupted_write_is_ignored_and_removed(tmp_path: Path) -> None:
    Checkpoint(str(tmp_path), BOOT).put(claim(0))
    (tmp_path / f".{FILE_NAME}.tmp-x1y2").write_text('{"version": 1, "preparedClaims": {"uid-9"')
    assert Checkpoint(str(tmp_path), BOOT).claims == {"uid-0": claim(0)}
    assert sorted(os.listdir(tmp_path)) == [FILE_NAME]


def test_a_torn_file_is_kept_aside_and_the_plugin_starts_empty(tmp_path: Path) -> None:
    """What a writer without rename leaves when it dies mid-write: every prefix of a real checkpoint."""
    cp = Checkpoint(str(tmp_path), BOOT)
    for n in range(3):
        cp.put(claim(n))
    whole = (tmp_path / FILE_NAME).read_bytes()
    for cut in range(0, len(whole), max(1, len(whole) // 40)):
        (tmp_path / FILE_NAME).write_bytes(whole[:cut])
        with capture_logs() as logs:
            assert Checkpoint(str(tmp_path), BOOT).claims == {}
        assert logs[0]["event"] == "checkpoint unreadable; starting with no prepared claims"
        assert (tmp_path / f"{FILE_NAME}.corrupt").read_bytes() == whole[:cut]
        assert not (tmp_path / FILE_NAME).exists()


def test_a_damaged_file_fails_its_checksum(tmp_path: Path) -> None:
    Checkpoint(str(tmp_path), BOOT).put(claim(0))
    text = (tmp_path / FILE_NAME).read_text()
    (tmp_path / FILE_NAME).write_text(text.replace("gpu-0", "gpu-7"))
    with capture_logs() as logs:
        assert Checkpoint(str(tmp_path), BOOT).claims == {}
    assert "checksum mismatch" in logs[0]["error"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
def test_no_file_content_stops_the_plugin(tmp_path: Path, content: bytes) -> None:
    (tmp_path / FILE_NAME).write_bytes(content)
    Checkpoint(str(tmp_path), BOOT).put(claim(0))
    assert Checkpoint(str(tmp_path), BOOT).claims == {"uid-0": claim(0)}


def test_an_unwritable_directory_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cp = Checkpoint(str(tmp_path / "file"), BOOT)
    with pytest.raises(CheckpointError, match=r"^unable to update checkpoint .*/file/checkpoint.json: Not a directory"):
        cp.put(claim(0))


WRITER = """
import sys
from plugin.dra.checkpoint import Checkpoint, PreparedClaim, PreparedDevice
cp = Checkpoint(sys.argv[1], "boot")
n = len(cp.claims)
while True:
    cp.put(PreparedClaim(f"uid-{n}", "ns", f"c-{n}", "PrepareCompleted",
                         (PreparedDevice(("r",), "node", "gpu-0", ("k8s.gpu.nvidia.com/claim=x",)),)))
    n += 1
    print(n, flush=True)
"""


def test_a_process_killed_while_writing_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    """SIGKILL at arbitrary moments of a write loop: each restart finds every claim the last finished write
    recorded, and never a damaged file."""
    done = 0
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        first = int(proc.stdout.readline())  # started writing
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        written = [first, *(int(line) for line in proc.stdout.read().split())]
        proc.wait()
        with capture_logs() as logs:
            claims = Checkpoint(str(tmp_path), "boot").claims
        assert not logs, logs
        # The write in flight may or may not have landed; nothing earlier may be missing.
        assert written[-1] <= len(claims) <= written[-1] + 1
        assert set(claims) == {f"uid-{i}" for i in range(len(claims))}
        assert len(claims) > done
        done = len(claims)
