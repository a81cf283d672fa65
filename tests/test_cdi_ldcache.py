"""The driver root's linker cache (plugin/cdi/ldcache.py, issue 20.3): our reader against glibc's own writer
(`ldconfig -r` on gcc-built shared objects) and reader (`ldconfig -p -C`), and against hostile caches: a FIFO,
truncated headers, records that point anywhere, names that are not UTF-8, a cache behind an absolute symlink.
Each reproduction of the issue is a test here; the reader is fuzzed from real caches."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfd.config import ConfigError
from plugin.cdi import CdiError
from plugin.cdi.driver import find_driver_files
from plugin.cdi.ldcache import NEW_MAGIC, CacheError, parse_cache, read_cache
from plugin.cdi.spec import ContainerEdits, Device, Mount, Spec
from tests.helpers import ldconfig, ldconfig_print, shared_object

VERSION = "550.163.01"
LIBDIR = "/usr/lib/x86_64-linux-gnu"
LIBRARIES = (("libcuda", "libcuda.so.1"), ("libnvidia-ml", "libnvidia-ml.so.1"),
             ("libnvidia-nvvm", "libnvidia-nvvm.so.4"), ("libnvidia-gpucomp", f"libnvidia-gpucomp.so.{VERSION}"))
ROOT = Path(__file__).resolve().parent.parent


def driver_root(root: Path, libdir: str = LIBDIR, *ldconfig_args: str) -> Path:
    """The driver's libraries in `libdir` (listed in etc/ld.so.conf) and the cache glibc's ldconfig builds."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/ld.so.conf").write_text(f"{libdir}\n")
    for name, soname in LIBRARIES:
        shared_object(root / libdir.lstrip("/") / f"{name}.so.{VERSION}", soname)
    ldconfig(root, *ldconfig_args)
    return root


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real caches: glibc's default (new) format and its `compat` one (an old table before the new)."""
    out = {}
    for fmt in ("new", "compat"):
        root = driver_root(tmp_path_factory.mktemp(fmt), LIBDIR, "-c", fmt)
        out[fmt] = (root / "etc/ld.so.cache").read_bytes()
    return out


# -- agreement with glibc ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["new", "compat"])
def test_the_reader_agrees_with_glibc(tmp_path: Path, fmt: str) -> None:
    root = driver_root(tmp_path, LIBDIR, "-c", fmt)
    cache = root / "etc/ld.so.cache"
    ours = read_cache(str(cache))
    assert {(e.soname, e.path) for e in ours.entries} == ldconfig_print(cache) and ours.skipped == 0
    assert ("libcuda.so.1", f"{LIBDIR}/libcuda.so.1") in {(e.soname, e.path) for e in ours.entries}


def test_an_old_format_cache_alone_falls_back_to_the_directories(tmp_path: Path) -> None:
    root = driver_root(tmp_path, LIBDIR, "-c", "old")
    with pytest.raises(CacheError):
        read_cache(str(root / "etc/ld.so.cache"))
    files = find_driver_files(str(root), VERSION)
    assert f"{LIBDIR}/libcuda.so.{VERSION}" in files.libraries


def test_a_cache_that_cannot_be_read_is_a_cache_error_with_its_cause(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ld.so.cache")
    with pytest.raises(CacheError, match="not a regular file") as e:
        read_cache(str(tmp_path / "ld.so.cache"))
    assert isinstance(e.value.__cause__, ConfigError)


@pytest.mark.parametrize("data", [b"", NEW_MAGIC, b"ld.so-1.7.0", b"ld.so-1.7.0\0\xff\xff\xff\x7f",
                                  b"\x7fELF" * 20, NEW_MAGIC + b"\xff" * 60,
                                  NEW_MAGIC + struct.pack("<II", 0xFFFFFFFF, 0) + bytes(24)])
def test_a_malformed_header_is_a_cache_error_not_a_crash(data: bytes) -> None:
    """Issue 20.3: `ld.so-1.7.0` and nothing else raised struct.error (a traceback, exit 1); a header claiming
    more entries than the file holds is not read record by record."""
    with pytest.raises(CacheError):
        parse_cache(data)


# -- the reproductions of issue 20.3 ----------------------------------------------------------------------------
def test_a_fifo_for_a_cache_does_not_block_and_the_directories_are_listed(tmp_path: Path) -> None:
    """A plain open() of a FIFO waits for a writer forever: the plugin never started (/healthz "starting")."""
    root = driver_root(tmp_path)
    (root / "etc/ld.so.cache").unlink()
    os.mkfifo(root / "etc/ld.so.cache")
    code = ("import sys; from plugin.cdi.driver import find_driver_files; "
            f"print(find_driver_files(sys.argv[1], {VERSION!r}).libraries)")
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=30,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert f"{LIBDIR}/libcuda.so.{VERSION}" in done.stdout
    assert "not a regular file" in done.stdout + done.stderr  # the one warning says why the cache was not used


def test_an_entry_that_is_not_utf8_is_skipped_with_one_warning_and_the_rest_is_read(tmp_path: Path) -> None:
    """One entry whose name was not UTF-8 made the whole cache "corrupt"; the fallback lists only the standard
    directories, so a driver installed elsewhere was "not found" (exit 1) although glibc reads the cache."""
    libdir = "/opt/nvidia/lib64"
    root = driver_root(tmp_path, libdir)
    shared_object(Path(os.fsdecode(os.fsencode(root / "opt/nvidia/lib64") + b"/libodd\xff.so.1")), b"libodd\xff.so.1")
    ldconfig(root)
    cache = read_cache(str(root / "etc/ld.so.cache"))
    assert cache.skipped == 1 and len(cache.entries) == len(ldconfig_print(root / "etc/ld.so.cache")) - 1
    with structlog.testing.capture_logs() as logs:
        files = find_driver_files(str(root), VERSION)
    assert f"{libdir}/libcuda.so.{VERSION}" in files.libraries
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "linker cache entries skipped: malformed, or names that are not UTF-8"]


def test_a_cache_behind_an_absolute_symlink_is_read_from_the_driver_root(tmp_path: Path) -> None:
    """/etc/ld.so.cache -> /var/cache/ldconfig/ld.so.cache means the driver root's file, not the plugin
    container's (which lists none of the driver root's libraries)."""
    libdir = "/opt/nvidia/lib64"
    root = driver_root(tmp_path, libdir)
    moved = root / "var/cache/ldconfig/ld.so.cache"
    moved.parent.mkdir(parents=True, exist_ok=True)
    (root / "etc/ld.so.cache").rename(moved)
    (root / "etc/ld.so.cache").symlink_to("/var/cache/ldconfig/ld.so.cache")
    files = find_driver_files(str(root), VERSION)
    assert f"{libdir}/libcuda.so.{VERSION}" in files.libraries
    assert (f"libcuda.so.{VERSION}", f"{libdir}/libcuda.so.1") in files.links


def test_a_library_name_that_is_not_utf8_never_reaches_a_spec(tmp_path: Path) -> None:
    """Listed from a directory (no cache), such a name became a lone surrogate in the spec, which a Go runtime
    reads as U+FFFD: a path that does not exist. It is left out, with one warning."""
    root = driver_root(tmp_path)
    (root / "etc/ld.so.cache").unlink()
    odd = os.fsencode(root / LIBDIR.lstrip("/")) + f"/libnvidia-odd\xff.so.{VERSION}".encode("latin-1")
    with open(odd, "wb"):
        pass
    os.symlink(f"libcuda.so.{VERSION}", os.fsencode(root / LIBDIR.lstrip("/")) + b"/libcuda\xff.so.1")  # a link too
    with structlog.testing.capture_logs() as logs:
        files = find_driver_files(str(root), VERSION)
    assert all(p.encode("utf-8") for p in files.libraries) and len(files.libraries) == len(LIBRARIES)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["driver files skipped: their names are not UTF-8"]
    assert "\\xff" in warnings[0]["paths"][0]
    assert all(link.encode("utf-8") and target.encode("utf-8") for target, link in files.links)


def test_a_spec_never_holds_a_lone_surrogate() -> None:
    """The last guard: a path that reached a spec anyway fails the spec, it is never escaped into it."""
    odd = os.fsdecode(b"/usr/lib/libodd\xff.so.1")
    spec = Spec("gpu", (Device("all", ContainerEdits(mounts=(Mount(odd, odd),))),))
    with pytest.raises(CdiError, match="not UTF-8") as e:
        spec.to_json()
    assert isinstance(e.value.__cause__, UnicodeEncodeError)
    fine = Spec("gpu", (Device("all", ContainerEdits(mounts=(Mount("/usr/lib/libé.so", "/usr/lib/libé.so"),))),))
    assert json.loads(fine.to_json().decode("utf-8"))["devices"][0]["containerEdits"]["mounts"][0]["hostPath"] == \
        "/usr/lib/libé.so"


# -- fuzzed from real caches ---------------------------------------------------------------------------------------
_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(fmt=st.sampled_from(["new", "compat"]), data=st.data())
def test_any_damage_is_a_cache_or_a_cache_error(caches: dict[str, bytes], fmt: str, data: st.DataObject) -> None:
    """Bytes overwritten, the file cut or padded anywhere: a Cache of UTF-8 entries, or a CacheError."""
    cache = bytearray(caches[fmt])
    for _ in range(data.draw(st.integers(0, 8), label="writes")):
        at = data.draw(st.integers(0, len(cache) - 1), label="at")
        chunk = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
        cache[at:at + len(chunk)] = chunk
    cut = data.draw(st.integers(0, len(cache) + 64), label="length")
    damaged = bytes(cache[:cut]) + bytes(max(0, cut - len(cache)))
    try:
        result = parse_cache(damaged)
    except CacheError:
        return
    for entry in result.entries:
        assert entry.path.startswith("/")
        entry.soname.encode("utf-8")
        entry.path.encode("utf-8")


@_FUZZ
@given(fmt=st.sampled_from(["new", "compat"]), data=st.data())
def test_a_damaged_record_costs_that_record_only(caches: dict[str, bytes], fmt: str, data: st.DataObject) -> None:
    """One record's offsets pointed anywhere, or its name made invalid UTF-8: the others are still read."""
    original = parse_cache(caches[fmt])
    cache = bytearray(caches[fmt])
    start = cache.index(NEW_MAGIC)
    count = struct.unpack_from("<I", cache, start + 20)[0]
    record = start + 48 + 24 * data.draw(st.integers(0, count - 1), label="record")
    if data.draw(st.booleans(), label="offsets"):
        struct.pack_into("<II", cache, record + 4, data.draw(st.integers(0, 2**32 - 1)),
                         data.draw(st.integers(0, 2**32 - 1)))
        before = struct.unpack_from("<II", caches[fmt], record + 4)
    else:
        before = struct.unpack_from("<II", cache, record + 4)
        cache[start + before[0]] = 0xFF  # the key's first byte: never valid UTF-8
    damaged = parse_cache(bytes(cache))
    lost = set(original.entries) - set(damaged.entries)
    key_at, value_at = start + before[0], start + before[1]
    # The record itself, and any record sharing its strings (glibc stores a string once, suffixes shared).
    assert all(_shares(caches[fmt], start, e, key_at, value_at) for e in lost)


def _shares(cache: bytes, start: int, entry: object, key_at: int, value_at: int) -> bool:
    """Whether `entry`'s strings overlap the damaged record's (by where its strings lie in the file)."""
    count = struct.unpack_from("<I", cache, start + 20)[0]
    for i in range(count):
        _flags, key, value = struct.unpack_from("<iII", cache, start + 48 + 24 * i)
        soname = cache[start + key:cache.index(b"\0", start + key)].decode()
        if soname != entry.soname:  # type: ignore[attr-defined]
            continue
        spans = [(start + key, cache.index(b"\0", start + key)), (start + value, cache.index(b"\0", start + value))]
        damaged = [(key_at, cache.find(b"\0", key_at)), (value_at, cache.find(b"\0", value_at))]
        return any(a <= d_end and d_start <= b for a, b in spans for d_start, d_end in damaged)
    return False


def test_without_a_cache_the_directories_are_listed(tmp_path: Path) -> None:
    """No cache at all (a driver container that never ran ldconfig): the directories are listed."""
    root = driver_root(tmp_path)
    (root / "etc/ld.so.cache").unlink()
    shutil.rmtree(root / "var", ignore_errors=True)
    files = find_driver_files(str(root), VERSION)
    assert set(files.libraries) == {f"{LIBDIR}/{name}.so.{VERSION}" for name, _ in LIBRARIES}
