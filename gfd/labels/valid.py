"""Every label valid by construction: the last step of composing, for every labeler's output.

Kubernetes label syntax: a value is empty or at most 63 characters of `[A-Za-z0-9._-]` that start and
end alphanumeric; a key is `<DNS prefix>/<name>` with a name of the same form. NFD drops an invalid
label silently (upstream issue #1876), so an invalid value is repaired rather than passed on:
it is cleaned by the labelers' own sanitiser (`sanitise.py`: words joined by `-`, other characters outside
the set dropped), non-alphanumeric ends trimmed, and a value still longer than
63 characters keeps its first 54 characters and gets `-` plus 8 hex digits of a CRC-32 of the whole
original value: stable across passes and nodes, different for different originals (upstream writes
such a value unchanged, NFD drops it, so no selector written for upstream can have matched it).
A label whose key is invalid is dropped.
"""

from __future__ import annotations

import functools
import re
import zlib

from gfd.labels.sanitise import sanitise

MAX_VALUE = 63
_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_KEEP = MAX_VALUE - 9  # head + "-" + 8 hex digits


def valid_value(value: str) -> str:
    if len(value) <= MAX_VALUE and _VALUE.fullmatch(value):
        return value
    cleaned = _trim(sanitise(value))
    if len(cleaned) <= MAX_VALUE:
        return cleaned
    digest = f"{zlib.crc32(value.encode('utf-8', 'surrogatepass')):08x}"
    return f"{_trim(cleaned[:_KEEP])}-{digest}".lstrip("-")


def valid_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return bool(name) and len(name) <= MAX_VALUE and bool(_VALUE.fullmatch(name)) and \
        (not prefix or (len(prefix) <= 253 and bool(_PREFIX.fullmatch(prefix))))


def valid_labels(labels: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, value in labels.items():
        fixed = _valid_label(key, value)
        if fixed is not None:
            out[key] = fixed
    return out


@functools.lru_cache(maxsize=4096)
def _valid_label(key: str, value: str) -> str | None:
    """Memoised: a daemon composes the same labels every cycle, so checking them is a dict lookup."""
    return valid_value(value) if valid_key(key) else None


def _trim(text: str) -> str:
    return text.strip("-_.")
