"""Host files as doctor reads them: through gfd.config.reading (a regular file, bounded, UTF-8, so a FIFO,
/dev/zero, a directory or a symlink loop is one finding, never a hang), parsed as JSON or TOML, and walked
by `get`, which names the key whose value has the wrong type. Every problem is a HostFileError whose text is
one line of evidence."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gfd.config.errors import ConfigError, short
from gfd.config.reading import MAX_FILE_BYTES, read_text

T = TypeVar("T")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class HostFileError(ValueError):
    """`unreadable`: the file itself could not be read (what is at the path is wrong, not what it says)."""

    def __init__(self, problem: str, unreadable: bool = False) -> None:
        super().__init__(problem)
        self.unreadable = unreadable


def read(path: str, limit: int = MAX_FILE_BYTES) -> str:
    try:
        return read_text(path, path, limit)
    except ConfigError as e:
        raise HostFileError(e.problem, unreadable=True) from e


def load_json(path: str, limit: int = MAX_FILE_BYTES) -> Any:
    return _parse(json.loads, "JSON", read(path, limit))


def load_toml(path: str) -> dict[str, Any]:
    parsed: dict[str, Any] = _parse(tomllib.loads, "TOML", read(path))
    return parsed


def _parse(parse: Callable[[str], Any], syntax: str, text: str) -> Any:
    try:
        return parse(text)
    except RecursionError as e:  # both parsers recurse once per level of nesting
        raise HostFileError(f"not {syntax}: nested too deeply to parse") from e
    except ValueError as e:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise HostFileError(f"not {syntax}: {e}") from e


def get(doc: Any, keys: Sequence[str | int], kind: type[T], default: T, mapping: str = "a table") -> T:
    """doc[keys[0]][keys[1]]...: `default` when a key is absent (or JSON null); HostFileError naming the
    key when a value on the way is not a `mapping` ("a table" in TOML, "an object" in JSON) or an array, or
    the last is not a `kind`."""
    node = doc
    for depth, key in enumerate(keys):
        if isinstance(node, dict) and isinstance(key, str):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int):
            node = node[key] if 0 <= key < len(node) else None
        else:
            container: object = {} if isinstance(key, str) else []
            raise HostFileError(f"{dotted(keys[:depth])} is {_a(node, mapping)}, not {_a(container, mapping)}")
        if node is None:
            return default
    if not isinstance(node, kind):
        raise HostFileError(f"{dotted(keys)} is {_a(node, mapping)}, not {_a(kind(), mapping)}")
    return node


def dotted(keys: Sequence[str | int]) -> str:
    """A key path as TOML writes it (`plugins."io.containerd.grpc.v1.cri".containerd`), arrays indexed."""
    text = ""
    for key in keys:
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            text += ("." if text else "") + (key if _BARE_KEY.fullmatch(key) else json.dumps(key))
    return text or "the document"


def name(value: str) -> str:
    """A name read from a host file, fit for one line of evidence: as is when it is a plain name."""
    return value if _BARE_KEY.fullmatch(value) and len(value) <= 60 else short(value)


def _a(value: object, mapping: str) -> str:
    words = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: mapping}
    return words.get(type(value), f"a {type(value).__name__}")
