"""Read glibc's linker cache (`/etc/ld.so.cache`) of a driver root without running its ldconfig.

Layout from glibc `sysdeps/generic/dl-cache.h`: the "new" format (`glibc-ld.so.cache1.1`, the only one glibc
has written since 2.32), optionally after an "old" `ld.so-1.7.0` table. Header: magic[17], version[3], nlibs,
len_strings, flags, padding[3], extension_offset, unused[3] (48 bytes); then nlibs entries of flags (int32),
key and value (string offsets from the header's start), osversion (uint32) and hwcap (uint64): 24 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
_HEADER = struct.Struct("<20sII B3x I 12x")
_ENTRY = struct.Struct("<iIIIQ")
_OLD_ENTRY_SIZE = 12
_FLAG_ELF_LIBC6 = 0x0003
_TYPE_MASK = 0x00FF
_REQUIRED_MASK = 0xFF00
# 64-bit libraries (dl-cache.h FLAG_X8664_LIB64 and FLAG_AARCH64_LIB64): what a 64-bit container loads.
_LIB64 = {0x0300, 0x0A00}
MAX_SIZE = 64 << 20  # real caches are well under 1 MiB; anything larger is not a linker cache


class CacheError(Exception):
    pass


@dataclass(frozen=True)
class CacheEntry:
    soname: str  # the key: what programs ask for, e.g. libcuda.so.1
    path: str  # where the linker finds it (usually the soname symlink), inside the cache's root


def read_cache(path: str) -> list[CacheEntry]:
    """The 64-bit libc6 entries, in cache order; CacheError when the file is not a linker cache."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIZE + 1)
    except OSError as e:
        raise CacheError(f"cannot read {path}: {e.strerror}") from None
    return parse_cache(data, path)


def parse_cache(data: bytes, path: str = "ld.so.cache") -> list[CacheEntry]:
    start = 0
    if data.startswith(OLD_MAGIC):
        (old_count,) = struct.unpack_from("<I", data, len(OLD_MAGIC) + 1)
        start = _align8(len(OLD_MAGIC) + 1 + 4 + old_count * _OLD_ENTRY_SIZE)
    if len(data) > MAX_SIZE or data[start:start + len(NEW_MAGIC)] != NEW_MAGIC:
        raise CacheError(f"{path} is not a glibc linker cache (accepted: the {NEW_MAGIC.decode()} format)")
    try:
        _magic, count, _strings, _flags, _ext = _HEADER.unpack_from(data, start)
        entries = []
        for i in range(count):
            flags, key, value, _os, _hwcap = _ENTRY.unpack_from(data, start + _HEADER.size + i * _ENTRY.size)
            if flags & _TYPE_MASK == _FLAG_ELF_LIBC6 and flags & _REQUIRED_MASK in _LIB64:
                entries.append(CacheEntry(_string(data, start + key), _string(data, start + value)))
    except (struct.error, UnicodeDecodeError, ValueError):
        raise CacheError(f"{path} is truncated or corrupt") from None
    return entries


def _string(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode()


def _align8(n: int) -> int:
    return (n + 7) & ~7
