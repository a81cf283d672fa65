"""Bounded, safe reading of the files an operator hands us (config, simulation profile, machine type).

Only regular files are read (a FIFO would block forever, /dev/zero never ends), at most `limit` bytes,
strictly as UTF-8; YAML is parsed with the C loader where present, with limits on the expanded size and the nesting
so that an alias bomb or a deeply nested document is one clear error rather than minutes of CPU,
gigabytes or a RecursionError. Every failure is a ConfigError naming the file.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import yaml

from gfd.config.errors import ConfigError

MAX_FILE_BYTES = 1 << 20  # a config of the largest real shape is a few KiB
MAX_NODES = 100_000  # after alias expansion: a YAML alias bomb stops here
MAX_DEPTH = 50
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_text(path: str, source: str, limit: int = MAX_FILE_BYTES, what: str = "file") -> str:
    """The file's text; ConfigError for a missing, special, oversized or non-UTF-8 file."""
    data = read_bytes(path, source, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(source, "", f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}",
                          "UTF-8 text") from e


def read_bytes(path: str, source: str, limit: int = MAX_FILE_BYTES, what: str = "file") -> bytes:
    """The file's bytes; ConfigError for a missing, special (opened without blocking, then refused) or oversized
    file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(source, "", f"error opening {what}: {e.strerror or e}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(source, "", "not a regular file", "a regular file")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise ConfigError(source, "", f"cannot read: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(source, "", f"larger than {limit} bytes", f"a file of at most {limit} bytes")
    return data


def load_yaml(text: str, source: str) -> Any:
    """Safe-load one YAML (or JSON) document after checking its shape against the limits."""
    try:
        _check_limits(text, source)
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(source, "", f"not valid YAML{where}: {problem}") from e


def _check_limits(text: str, source: str) -> None:
    """Count the nodes the document expands to (an alias counts its anchor's whole subtree again) and
    its nesting, from the parser's events, before anything is built."""
    sizes = [0]  # expanded node count of each open collection
    anchored: dict[str, int] = {}
    anchors: list[str | None] = []
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            sizes.append(1)
            anchors.append(event.anchor)
            if len(sizes) > MAX_DEPTH:
                raise ConfigError(source, "", f"nested deeper than {MAX_DEPTH} levels", f"at most {MAX_DEPTH} levels")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = sizes.pop(), anchors.pop()
            if anchor is not None:
                anchored[anchor] = size
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor is not None:
                anchored[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            size = anchored.get(event.anchor or "", 1)
        else:
            continue
        sizes[-1] += size
        if sizes[-1] > MAX_NODES:
            raise ConfigError(source, "", f"expands to more than {MAX_NODES} YAML nodes (aliases)",
                              f"at most {MAX_NODES} nodes")
