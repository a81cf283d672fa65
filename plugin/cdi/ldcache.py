"""Read glibc's linker cache (`/etc/ld.so.cache`) of a driver root without running its ldconfig.

Layout from glibc `sysdeps/generic/dl-cache.h`: the "new" format (`glibc-ld.so.cache1.1`, the only one glibc
has written since 2.32), optionally after an "old" `ld.so-1.7.0` table. Header: magic[17], version[3], nlibs,
len_strings, flags, padding[3], extension_offset, unused[3] (48 bytes); then nlibs entries of flags (int32),
key and value (string offsets from the new header's start), osversion (uint32) and hwcap (uint64): 24 bytes.

The file belongs to the node, not to us, so it is read as hostile input: only a regular file is opened (without
blocking, then checked: a FIFO never hangs the start), at most MAX_SIZE bytes; a header that does not describe
the file (no magic, truncated, more entries than the file holds) is a CacheError, on which the caller lists the
library directories instead, as it does without a cache; a record whose strings lie outside the file, are not
terminated or are not absolute is skipped, and so is one whose names are not UTF-8 (a CDI spec is UTF-8 JSON:
such a path could only be written mangled). Skipped records are counted for the caller's one warning.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gfd.config import ConfigError
from gfd.config.reading import read_bytes

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
_HEADER = struct.Struct("<20sII B3x I 12x")
_ENTRY = struct.Struct("<iIIIQ")
_OLD_COUNT = struct.Struct("<I")
_OLD_ENTRY_SIZE = 12
_OLD_HEADER_SIZE = 16  # magic and version (11 bytes), padding, nlibs
_FLAG_ELF_LIBC6 = 0x0003
_TYPE_MASK = 0x00FF
_REQUIRED_MASK = 0xFF00
# 64-bit libraries (dl-cache.h FLAG_X8664_LIB64 and FLAG_AARCH64_LIB64): what a 64-bit container loads.
_LIB64 = {0x0300, 0x0A00}
MAX_SIZE = 16 << 20  # real caches are well under 1 MiB; anything larger is not a linker cache
MAX_NAME = 4096  # PATH_MAX: a longer "string" is a record pointing into the wrong bytes


class CacheError(Exception):
    pass


@dataclass(frozen=True)
class CacheEntry:
    soname: str  # the key: what programs ask for, e.g. libcuda.so.1
    path: str  # where the linker finds it (usually the soname symlink), inside the cache's root


@dataclass(frozen=True)
class Cache:
    entries: tuple[CacheEntry, ...]  # the 64-bit libc6 entries, in cache order
    skipped: int = 0  # 64-bit libc6 records left out: malformed, or names that are not UTF-8


def read_cache(path: str) -> Cache:
    """CacheError when the file cannot be read or is not a linker cache."""
    try:
        data = read_bytes(path, path, MAX_SIZE, "linker cache")
    except ConfigError as e:
        raise CacheError(str(e)) from e
    return parse_cache(data, path)


def parse_cache(data: bytes, path: str = "ld.so.cache") -> Cache:
    start = _new_format_start(data)
    if data[start:start + len(NEW_MAGIC)] != NEW_MAGIC:
        raise CacheError(f"{path} is not a glibc linker cache (accepted: the {NEW_MAGIC.decode()} format)")
    table = start + _HEADER.size
    if len(data) < table:
        raise CacheError(f"{path} is truncated: its header is incomplete")
    count = _HEADER.unpack_from(data, start)[1]
    if count > (len(data) - table) // _ENTRY.size:
        raise CacheError(f"{path} is truncated: its header lists {count} entries, the file holds fewer")
    entries = []
    skipped = 0
    for flags, key, value, _os, _hwcap in _ENTRY.iter_unpack(data[table:table + count * _ENTRY.size]):
        if flags & _TYPE_MASK != _FLAG_ELF_LIBC6 or flags & _REQUIRED_MASK not in _LIB64:
            continue
        soname, where = _string(data, start + key), _string(data, start + value)
        if soname is None or where is None or not where.startswith("/"):
            skipped += 1
            continue
        entries.append(CacheEntry(soname, where))
    return Cache(tuple(entries), skipped)


def _new_format_start(data: bytes) -> int:
    """Where the new-format header is: 0, or after an old-format table (aligned to 8, as glibc writes it)."""
    if not data.startswith(OLD_MAGIC) or len(data) < _OLD_HEADER_SIZE:
        return 0
    old_count: int = _OLD_COUNT.unpack_from(data, _OLD_HEADER_SIZE - _OLD_COUNT.size)[0]
    return (_OLD_HEADER_SIZE + old_count * _OLD_ENTRY_SIZE + 7) & ~7


def _string(data: bytes, offset: int) -> str | None:
    """The NUL-terminated UTF-8 string at `offset`; None when there is none."""
    end = data.find(b"\0", offset, offset + MAX_NAME + 1)
    if offset >= len(data) or end <= offset:
        return None
    try:
        return data[offset:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
