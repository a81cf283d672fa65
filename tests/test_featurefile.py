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


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "gfd"
    target.write_text("old=1\n")
    target_dir_mode = os.stat(tmp_path).st_mode
    if os.geteuid() == 0:
        # root ignores directory permissions: make the rename fail by replacing onto a directory
        bad = tmp_path / "dir"
        bad.mkdir()
        with pytest.raises(OutputError, match="error atomically writing file"):
            write_atomically(str(bad), b"new=1\n")
        assert sorted(os.listdir(tmp_path)) == ["dir", "gfd"]
    else:
        os.chmod(tmp_path, 0o500)
        try:
            with pytest.raises(OutputError, match="error atomically writing file"):
                write_atomically(str(target), b"new=1\n")
        finally:
            os.chmod(tmp_path, target_dir_mode)
    assert target.read_text() == "old=1\n"


def test_missing_directory_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="error atomically writing file"):
        FeatureFile(str(tmp_path / "no" / "gfd")).write({"a": "1"})
    assert not (tmp_path / "no").exists()


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
