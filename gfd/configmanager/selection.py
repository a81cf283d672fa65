"""Which named config a node gets (upstream cmd/config-manager): the label, else the default, else fallbacks."""

from __future__ import annotations

import os

EMPTY = ""  # the empty config: /dev/null
FALLBACKS = ("named", "single", "empty")


class SelectError(Exception):
    pass


def available_configs(srcdir: str) -> list[str]:
    """Files in the ConfigMap mount; `..data`-style entries and directories are Kubernetes' own."""
    return sorted(n for n in os.listdir(srcdir) if not n.startswith("..") and os.path.isfile(os.path.join(srcdir, n)))


def select(label: str | None, available: list[str], default: str, fallbacks: list[str]) -> str:
    """The config name to use, or EMPTY; SelectError with upstream's wording when nothing fits."""
    for strategy in fallbacks:
        if strategy not in FALLBACKS:
            raise SelectError(f"unknown fallback strategy: {strategy}")
    if label:
        if label not in available:
            raise SelectError(f"specified config {label} does not exist")
        return label
    if default:
        if default not in available:
            raise SelectError(f"default config {default} does not exist (config.default)")
        return default
    if not available and "empty" not in fallbacks:
        raise SelectError("no configuration files available")
    for strategy in fallbacks:
        if strategy == "named" and "default" in available:
            return "default"
        if strategy == "single" and len(available) == 1:
            return available[0]
        if strategy == "empty":
            return EMPTY
    raise SelectError("no config was set, no default was provided, and all fallbacks failed")
