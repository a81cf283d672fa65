"""Reading the shared v1 config file (YAML or JSON) the way upstream's go-yaml + encoding/json does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gfd.config.duration import parse_duration
from gfd.config.errors import ConfigError, short
from gfd.config.model import GFD_OPTIONS, Imex, Sharing
from gfd.config.options import Option
from gfd.config.reading import load_yaml, read_text
from gfd.config.sharing import _lookup, parse_sharing, resource_name

_TYPES: dict[str, type | tuple[type, ...]] = {"str": str, "bool": bool, "int": int, "float": (int, float)}


def read_config_file(path: str, options: Sequence[Option] = GFD_OPTIONS) -> tuple[dict[str, Any], Sharing, Imex]:
    """Return (option values set by the file, sharing, imex); ConfigError on any problem."""
    source = f"config file {path}"
    doc = load_yaml(read_text(path, source, what="config file"), source)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got {type(doc).__name__}",
                          "version, flags, resources, sharing, imex")
    version = _lookup(doc, "version")
    if version not in (None, "", "v1"):
        raise ConfigError(source, "version", f"unknown version: {version}", "v1")

    values: dict[str, Any] = {}
    for opt in options:
        if opt.file_key is None:
            continue
        raw = _get_path(doc, opt.file_key, source)
        if raw is None:
            continue
        field = ".".join(opt.file_key)
        values[opt.dest] = _convert(raw, opt.kind, field, source, opt.accepted)
        try:
            opt.check_value(values[opt.dest])
        except ValueError as e:
            raise ConfigError(source, field, str(e), opt.accepted) from e

    _validate_resources(_lookup(doc, "resources"), source)
    sharing = parse_sharing(_lookup(doc, "sharing"), source)
    return values, sharing, _imex(_lookup(doc, "imex"), source)


def _get_path(doc: dict[str, Any], path: tuple[str, ...], source: str) -> Any:
    node: Any = doc
    for i, key in enumerate(path):
        if node is None:
            return None
        if not isinstance(node, dict):
            raise ConfigError(source, ".".join(path[:i]), f"expected a mapping, got {short(node)}")
        node = _lookup(node, key)
    return node


def _convert(raw: Any, kind: str, field: str, source: str, accepted: str) -> Any:
    if kind in ("list", "intlist"):
        # flags.plugin.deviceListStrategy: a string or a list of strings (upstream accepts both).
        items = raw.split(",") if isinstance(raw, str) else raw
        item_type = int if kind == "intlist" else str
        if not isinstance(items, list) or not all(isinstance(i, item_type) for i in items):
            raise ConfigError(source, field, f"expected a string or a list of strings, got {short(raw)}", accepted)
        return tuple(items)
    if kind == "duration":
        # A number in the file is nanoseconds (Go's Duration is an int64 in JSON).
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return parse_duration(raw)
            except ValueError as e:
                raise ConfigError(source, field, str(e), accepted) from e
        raise ConfigError(source, field, f"expected a duration, got {short(raw)}", accepted)
    expected = _TYPES[kind]
    if (isinstance(raw, bool) and kind != "bool") or not isinstance(raw, expected):
        raise ConfigError(source, field, f"expected {_article(kind)}, got {short(raw)}", accepted)
    return raw


def _article(kind: str) -> str:
    return {"str": "a string", "bool": "a boolean", "int": "an integer", "float": "a number"}[kind]


def _validate_resources(raw: Any, source: str) -> None:
    """Upstream parses and validates `resources`, then ignores it (custom naming is disabled)."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise ConfigError(source, "resources", f"expected a mapping, got {short(raw)}", "gpus, mig")
    for section in ("gpus", "mig"):
        entries = _lookup(raw, section) or []
        if not isinstance(entries, list):
            raise ConfigError(source, f"resources.{section}", f"expected a list, got {short(entries)}")
        for i, entry in enumerate(entries):
            field = f"resources.{section}[{i}]"
            if not isinstance(entry, dict):
                raise ConfigError(source, field, f"expected a mapping, got {short(entry)}", "pattern, name")
            if not entry.get("pattern"):
                raise ConfigError(source, f"{field}.pattern", "resources must have a 'pattern' field set")
            if not entry.get("name"):
                raise ConfigError(source, f"{field}.name", "resources must have a 'name' field set")
            resource_name(str(entry["name"]), source, f"{field}.name")


def _imex(raw: Any, source: str) -> Imex:
    # GFD parses `imex` but does not validate it; the device plugin does.
    if not isinstance(raw, dict):
        return Imex()
    ids = _lookup(raw, "channelIDs") or []
    required = _lookup(raw, "required") or False
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ConfigError(source, "imex.channelIDs", f"expected a list of integers, got {short(ids)}", "[] or [0]")
    return Imex(tuple(ids), bool(required))
