"""Prepared claims, kept on disk so prepare stays idempotent and unprepare works after a plugin restart.

One JSON file in the plugin's directory (`<kubelet plugins dir>/gpu.nvidia.com/checkpoint.json`, as NVIDIA's),
replaced atomically on every change (a temporary file in the same directory renamed over the old one), so a
reader or a restarted plugin finds either the old file or the new one. A checksum over the content catches a
file damaged some other way (a disk error, a hand edit); such a file is kept aside for inspection and the plugin
starts with no prepared claims instead of crash-looping, as NVIDIA's does: a later unprepare of an unknown claim
still succeeds and removes its CDI spec.

The node's boot id is recorded: prepared state (CDI specs, MPS daemons, MIG layouts) does not survive a reboot,
so a checkpoint from an earlier boot is dropped at start (NVIDIA PR #1066) and the kubelet's prepare calls after
the reboot prepare again. For the same reason a write is not flushed to disk (fsync): the only failure that
flushing guards against, a power loss, is a reboot, after which the file is dropped whatever it holds; a
process that crashes leaves its writes in the page cache. Two flushes per prepare were its p99 latency
(10-15 ms against 4 ms without, bench/dra.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from gfd.config.errors import ConfigError
from gfd.config.reading import read_text
from gfd.outputs import OutputError
from gfd.outputs.featurefile import temp_prefix, write_atomically
from plugin.dra.claims import PodRef
from plugin.dra.shares import ShareLimits

log = structlog.get_logger("plugin.dra")

FILE_NAME = "checkpoint.json"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
VERSION = 1
PREPARE_STARTED = "PrepareStarted"  # side effects may have begun; unprepare must undo them
PREPARE_COMPLETED = "PrepareCompleted"
STATES = (PREPARE_STARTED, PREPARE_COMPLETED)
READ_LIMIT = 64 * 1024 * 1024  # a checkpoint of thousands of claims is well below this
CHECKPOINT_MODE = 0o600  # the plugin's own state


class CheckpointError(Exception):
    """The checkpoint could not be written (the claim's operation fails; the old file is intact)."""


@dataclass(frozen=True)
class PreparedDevice:
    """A device of a prepared claim, as the kubelet was (or will be) told; `share`: the claim's share of it, when
    it holds one (plugin/dra/shares.py)."""

    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_device_ids: tuple[str, ...]
    share_id: str | None = None
    admin_access: bool = False
    share: ShareLimits | None = None


@dataclass(frozen=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    state: str
    devices: tuple[PreparedDevice, ...] = ()
    pods: tuple[PodRef, ...] = ()  # the pods the claim was reserved for when it was prepared


class Checkpoint:
    """The prepared claims by UID, loaded once and written through on every change. Not thread-safe: the
    prepare core serialises its callers."""

    def __init__(self, directory: str, boot_id: str) -> None:
        self.path = os.path.join(directory, FILE_NAME)
        self.boot_id = boot_id
        self.from_earlier_boot = False  # the file was an earlier boot's: everything it named is gone
        self.claims: dict[str, PreparedClaim] = self._load()

    def get(self, uid: str) -> PreparedClaim | None:
        return self.claims.get(uid)

    def put(self, claim: PreparedClaim) -> None:
        self._write({**self.claims, claim.uid: claim})

    def remove(self, uid: str) -> None:
        if uid in self.claims:
            self._write({k: v for k, v in self.claims.items() if k != uid})

    def _write(self, claims: dict[str, PreparedClaim]) -> None:
        """The new content on disk first, then in memory: a failed write changes neither."""
        body = {"version": VERSION, "nodeBootID": self.boot_id,
                "preparedClaims": {uid: _claim_json(c) for uid, c in sorted(claims.items())}}
        text = json.dumps({**body, "checksum": _checksum(body)}, indent=1, sort_keys=True)
        try:
            write_atomically(self.path, text.encode(), CHECKPOINT_MODE, durable=False)
        except OutputError as e:
            cause = e.__cause__
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(e)
            raise CheckpointError(f"unable to update checkpoint {self.path}: {reason}") from e
        self.claims = claims

    def _load(self) -> dict[str, PreparedClaim]:
        _remove_temporaries(self.path)
        if not os.path.lexists(self.path):
            return {}
        try:
            doc = json.loads(read_text(self.path, "checkpoint", limit=READ_LIMIT))
            claims, boot_id = _parse(doc)
        except Exception as e:  # whatever is wrong with it, the plugin must start
            kept = f"{self.path}.corrupt"
            try:
                os.replace(self.path, kept)
            except OSError as move:
                kept = f"not kept: {move.strerror or move}"  # the next write replaces it
            log.error("checkpoint unreadable; starting with no prepared claims", path=self.path, kept=kept,
                      error=" ".join(str(e).split()))
            return {}
        if boot_id != self.boot_id:
            log.info("node rebooted since the checkpoint was written; its prepared claims are dropped",
                     claims=len(claims), checkpoint_boot_id=boot_id, boot_id=self.boot_id)
            self.from_earlier_boot = True
            return {}
        return claims


def read_prepared(directory: str) -> dict[str, PreparedClaim]:
    """The prepared claims of the checkpoint in `directory`, for another process (telemetry) that reads what the
    plugin holds without changing anything; {} when there is none. ValueError for a file this code did not
    write whole (a write is a rename, so a reader never sees one half-written)."""
    path = os.path.join(directory, FILE_NAME)
    if not os.path.lexists(path):
        return {}
    try:
        return _parse(json.loads(read_text(path, "checkpoint", limit=READ_LIMIT)))[0]
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path} unreadable: {e}") from e


def read_boot_id(path: str = BOOT_ID_PATH) -> str:
    """The kernel's id of this boot ("" where there is none: such a node's checkpoint never expires)."""
    try:
        return read_text(path, "boot id", limit=4096).strip()
    except Exception as e:
        log.warning("boot id unreadable; a reboot will not be noticed", path=path, error=str(e))
        return ""


def _remove_temporaries(path: str) -> None:
    """Temporary files of writes a crash interrupted (their content never became the checkpoint)."""
    directory, prefix = os.path.dirname(path) or ".", temp_prefix(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError as e:
                log.warning("leftover checkpoint temporary not removed", file=name, error=str(e))


def _checksum(body: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _claim_json(c: PreparedClaim) -> dict[str, Any]:
    return {"namespace": c.namespace, "name": c.name, "state": c.state, "devices": [
        {"requestNames": list(d.request_names), "poolName": d.pool, "deviceName": d.device,
         "cdiDeviceIDs": list(d.cdi_device_ids), **({"shareID": d.share_id} if d.share_id is not None else {}),
         **({"adminAccess": True} if d.admin_access else {}),
         **({"share": _share_json(d.share)} if d.share is not None else {})} for d in c.devices],
        **({"pods": [{"name": p.name, "uid": p.uid} for p in c.pods]} if c.pods else {})}


def _share_json(share: ShareLimits) -> dict[str, Any]:
    return {"uuid": share.uuid, "memoryMiB": share.memory_mib, "computePercent": share.compute_percent,
            "enforced": share.enforced}


def _share(doc: Any) -> ShareLimits | None:
    if doc is None:
        return None
    memory = doc["memoryMiB"]
    if not isinstance(doc["uuid"], str) or not (memory is None or isinstance(memory, int)) or \
            not isinstance(doc["computePercent"], int) or not isinstance(doc["enforced"], bool):
        raise TypeError("a share's fields are not of their types")
    return ShareLimits(doc["uuid"], memory, doc["computePercent"], doc["enforced"])


def _parse(doc: Any) -> tuple[dict[str, PreparedClaim], str]:
    """ValueError/KeyError/TypeError for anything but a checkpoint this code wrote."""
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} checkpoint")
    body = {k: v for k, v in doc.items() if k != "checksum"}
    if doc.get("checksum") != _checksum(body):
        raise ValueError("checksum mismatch")
    claims = {}
    for uid, c in doc["preparedClaims"].items():
        if c["state"] not in STATES:
            raise ValueError(f"claim {uid}: unknown state {c['state']!r}")
        devices = tuple(PreparedDevice(tuple(_strings(d["requestNames"])), str(d["poolName"]), str(d["deviceName"]),
                                       tuple(_strings(d["cdiDeviceIDs"])), d.get("shareID"),
                                       d.get("adminAccess") is True, _share(d.get("share"))) for d in c["devices"])
        pods = tuple(PodRef(str(p["name"]), str(p["uid"])) for p in c.get("pods", ()))
        claims[str(uid)] = PreparedClaim(str(uid), str(c["namespace"]), str(c["name"]), c["state"], devices, pods)
    return claims, str(doc["nodeBootID"])


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return value
