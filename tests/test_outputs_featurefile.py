"""Atomic feature-file writes: readers never see partial files; failures keep the old file."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from gfd.outputs import OutputError
from gfd.outputs.featurefile import FeatureFile, write_atomically
from gfd.outputs.format import render


def test_sorted_key_value_lines_with_empty_values() -> None:
    assert render({"b": "2", "a": "", "c": "x=y"}) == b"a=\nb=2\nc=x=y\n"


def test_write_mode_and_content(tmp_path: Path) -> None:
    out = FeatureFile(str(tmp_path / "gfd"))
    out.write({"nvidia.com/gpu.count": "8"})
    assert (tmp_path / "gfd").read_text() == "nvidia.com/gpu.count=8\n"
    assert stat.S_IMODE(os.stat(tmp_path / "gfd").st_mode) == 0o644
    assert os.listdir(tmp_path) == ["gfd"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "gfd"
    target.write_text("old=1\n")

    def failing_replace(src: str, dst: str) -> None:  # root ignores permissions: fail the rename itself
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError, match=r"error atomically writing file .*No space left on device") as e:
        write_atomically(str(target), b"new=1\n")
    assert isinstance(e.value.__cause__, OSError)
    assert sorted(os.listdir(tmp_path)) == ["gfd"]
    assert target.read_text() == "old=1\n"


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_only_a_regular_file_is_ever_replaced(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target = Path("/dev/full")  # the case: `-o /dev/full` replaced the device node
    with pytest.raises(OutputError, match="not a regular file"):
        FeatureFile(str(target)).write({"a": "1"})
    assert not target.is_file()


def test_a_missing_directory_is_created_again(tmp_path: Path) -> None:
    FeatureFile(str(tmp_path / "features.d" / "gfd")).write({"a": "1"})
    assert (tmp_path / "features.d" / "gfd").read_text() == "a=1\n"


def test_temp_files_left_by_an_interrupted_write_are_cleaned(tmp_path: Path) -> None:
    output = FeatureFile(str(tmp_path / "gfd"))
    (tmp_path / ".gfd.tmp-abc123").write_text("partial")
    (tmp_path / "other").write_text("kept")
    output.clean_temp_files()
    assert sorted(os.listdir(tmp_path)) == ["other"]


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "gfd"
    big = {f"nvidia.com/key{i}": "v" * 50 for i in range(200)}
    versions = [render(big | {"nvidia.com/gen": str(n)}) for n in range(2)]
    path.write_bytes(versions[0])
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            write_atomically(str(path), versions[n % 2])
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        partial = sum(1 for _ in range(2000) if path.read_bytes() not in versions)
    finally:
        stop.set()
        thread.join()
    assert partial == 0


def test_remove_cleans_legacy_dir_and_file(tmp_path: Path) -> None:
    (tmp_path / "gfd-tmp").mkdir()
    (tmp_path / "gfd-tmp" / "x").write_text("")
    out = FeatureFile(str(tmp_path / "gfd"))
    out.write({"a": "1"})
    out.remove()
    assert os.listdir(tmp_path) == []
    out.remove()  # absent is fine (logged)
