"""Parsing and validation of the `sharing` section and of resource names (upstream api/config/v1)."""

from __future__ import annotations

import re
from typing import Any

import structlog

from gfd.config.errors import ConfigError, short
from gfd.config.model import ReplicatedResource, ReplicatedResources, Sharing

MAX_REPLICAS = 512
ACCEPTED_REPLICAS = f"an integer from 2 to {MAX_REPLICAS}"

log = structlog.get_logger("gfd.config")

_RFC1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PREFIX = "nvidia.com/"


def resource_name(raw: str, source: str, field: str) -> str:
    """Apply upstream's resource-name rules: add the prefix, limit 63, RFC 1123 after the slash."""
    name = raw if raw.startswith(_PREFIX) else _PREFIX + raw
    if len(name) > 63:
        raise ConfigError(
            source, field, f"fully-qualified resource name must be 63 characters or less: {name}"
        )
    suffix = name.split("/", 1)[1]
    if len(suffix) > 253 or not _RFC1123_SUBDOMAIN.fullmatch(suffix):
        raise ConfigError(
            source,
            field,
            f"incorrect format for resource name '{name}'",
            "nvidia.com/ followed by a lowercase RFC 1123 subdomain, e.g. nvidia.com/gpu",
        )
    return name


def parse_sharing(raw: Any, source: str) -> Sharing:
    if raw is None:
        return Sharing()
    if not isinstance(raw, dict):
        raise ConfigError(source, "sharing", f"expected a mapping, got {short(raw)}", "timeSlicing, mps")
    ts = _lookup(raw, "timeSlicing")
    mps = _lookup(raw, "mps")
    return Sharing(
        time_slicing=None if ts is None else _replicated(ts, "sharing.timeSlicing", source, is_mps=False),
        mps=None if mps is None else _replicated(mps, "sharing.mps", source, is_mps=True),
    )


def _lookup(mapping: dict[str, Any], key: str) -> Any:
    """Go encoding/json struct-field lookup: exact key first, then case-insensitive."""
    if key in mapping:
        return mapping[key]
    lowered = key.lower()
    return next((v for k, v in mapping.items() if isinstance(k, str) and k.lower() == lowered), None)


def _replicated(raw: Any, field: str, source: str, is_mps: bool) -> ReplicatedResources:
    if not isinstance(raw, dict):
        raise ConfigError(source, field, f"expected a mapping, got {short(raw)}", "renameByDefault, resources")
    rename_by_default = _bool(_lookup(raw, "renameByDefault"), f"{field}.renameByDefault", source, False)
    fail_default = is_mps  # MPS defaults failRequestsGreaterThanOne to true when absent.
    fail_gt_one = _bool(
        _lookup(raw, "failRequestsGreaterThanOne"), f"{field}.failRequestsGreaterThanOne", source, fail_default
    )
    entries = _lookup(raw, "resources")
    if not entries:
        raise ConfigError(source, f"{field}.resources", "no resources specified", "a non-empty list")
    if not isinstance(entries, list):
        raise ConfigError(source, f"{field}.resources", f"expected a list, got {short(entries)}")
    parsed = []
    for i, entry in enumerate(entries):
        parsed.append(_entry(entry, f"{field}.resources[{i}]", source, rename_by_default))
    return ReplicatedResources(tuple(parsed), rename_by_default, fail_gt_one)


def _entry(raw: Any, field: str, source: str, rename_by_default: bool) -> ReplicatedResource:
    if not isinstance(raw, dict):
        raise ConfigError(source, field, f"expected a mapping, got {short(raw)}", "name, replicas, rename, devices")
    # Entry keys are case-sensitive upstream (custom UnmarshalJSON over a map).
    if "name" not in raw or raw["name"] in (None, ""):
        raise ConfigError(source, f"{field}.name", "no resource name specified")
    if not isinstance(raw["name"], str):
        raise ConfigError(source, f"{field}.name", f"expected a string, got {short(raw['name'])}")
    name = resource_name(raw["name"], source, f"{field}.name")
    if "replicas" not in raw or raw["replicas"] is None:
        raise ConfigError(source, f"{field}.replicas", "no replicas specified", ACCEPTED_REPLICAS)
    replicas = raw["replicas"]
    if isinstance(replicas, float) and replicas.is_integer():
        replicas = int(replicas)  # YAML `2.0` becomes 2 on upstream's YAML->JSON step
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise ConfigError(source, f"{field}.replicas", f"expected an integer, got {short(replicas)}",
                          ACCEPTED_REPLICAS)
    if replicas < 2:
        raise ConfigError(source, f"{field}.replicas", "number of replicas must be >= 2", ACCEPTED_REPLICAS)
    if replicas > MAX_REPLICAS:
        # Bounded so a resource's ListAndWatch answer stays far below gRPC's 4 MiB (see plugin.resources).
        raise ConfigError(source, f"{field}.replicas", f"{replicas} replicas is more than {MAX_REPLICAS}",
                          ACCEPTED_REPLICAS)
    rename = raw.get("rename") or ""
    if not isinstance(rename, str):
        raise ConfigError(source, f"{field}.rename", f"expected a string, got {short(rename)}")
    if rename:
        resource_name(rename, source, f"{field}.rename")
    _validate_devices(raw.get("devices", "all"), f"{field}.devices", source)
    # Upstream v0.20.0 disables custom renaming: only renameByDefault survives, as <name>.shared.
    effective = f"{name}.shared" if rename_by_default else ""
    section = field.split(".")[1].split("[")[0]
    if rename and rename != effective:
        log.warning(
            f"Setting the 'rename' field in sharing.{section}.resources is not yet supported in the config. "
            "Ignoring..."
        )
    if raw.get("devices", "all") != "all":
        log.warning(
            f"Customizing the 'devices' field in sharing.{section}.resources is not yet supported in the config. "
            "Ignoring..."
        )
    return ReplicatedResource(name=name, replicas=replicas, rename=effective)


_DEVICE_REF = re.compile(
    r"\d+|\d+:\d+|GPU-[0-9a-fA-F-]{32,36}|MIG-[0-9a-fA-F-]{32,36}|MIG-GPU-[0-9a-fA-F-]{32,36}/\d+/\d+"
)


def _validate_devices(raw: Any, field: str, source: str) -> None:
    accepted = "'all', a positive count, or a list of GPU indices, MIG indices (gpu:mig) or UUIDs"
    if raw == "all":
        return
    if isinstance(raw, bool):
        raise ConfigError(source, field, f"unrecognized type for devices spec: {short(raw)}", accepted)
    if isinstance(raw, int):
        if raw <= 0:
            raise ConfigError(source, field, f"devices set as '{raw}' but a count of devices must be > 0", accepted)
        return
    if isinstance(raw, str):
        raise ConfigError(
            source, field, f"devices set as '{raw}' but the only valid string input is 'all'", accepted
        )
    if isinstance(raw, list):
        for item in raw:
            ok = (isinstance(item, int) and not isinstance(item, bool) and item >= 0) or (
                isinstance(item, str) and _DEVICE_REF.fullmatch(item)
            )
            if not ok:
                raise ConfigError(source, field, f"unsupported type for device in devices list: {short(item)}",
                                  accepted)
        return
    raise ConfigError(source, field, f"unrecognized type for devices spec: {short(raw)}", accepted)


def _bool(raw: Any, field: str, source: str, default: bool) -> bool:
    if raw is None:
        return default
    if not isinstance(raw, bool):
        raise ConfigError(source, field, f"expected a boolean, got {short(raw)}", "true, false")
    return raw
