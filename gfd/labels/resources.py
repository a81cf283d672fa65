"""Resource labels (`nvidia.com/gpu.*`, `nvidia.com/mig-<profile>.*`) per MIG strategy and sharing.

Upstream: internal/lm/resource.go and mig-strategy.go. One deliberate difference: on a node with
several GPU models upstream merges the per-model labels in Go map order (random, can flip between
passes); we merge in a fixed order so that the winner is always the same (see `_merge_order`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import structlog

from gfd.config import Config, ReplicatedResource, Sharing
from gfd.labels import Labels
from gfd.labels.errors import LabelError
from gfd.labels.sanitise import product
from gfd.model import DeviceModel, Gpu, MigDevice
from gfd.resources import ResourceGroup, check_single, resource_groups
from plugin.dra.sharing import DISABLED, ConsumableShares

log = structlog.get_logger("gfd.labels")

_FAMILIES = {1: "tesla", 2: "fermi", 3: "kepler", 5: "maxwell", 6: "pascal", 9: "hopper", 10: "blackwell",
             12: "blackwell", 13: "rubin"}


def family(major: int, minor: int) -> str:
    if major == 7:
        return "volta" if minor < 5 else "turing"
    if major == 8:
        return "ampere" if minor < 9 else "ada-lovelace"
    return _FAMILIES.get(major, "undefined")


@dataclass(frozen=True)
class _Resource:
    """Labels for one resource name; `sharing` None means "without sharing" (replicas 0)."""

    key: str  # label key prefix without the domain: "gpu" or "mig-1g.5gb"
    sharing: Sharing | None
    count: int

    @property
    def entry(self) -> ReplicatedResource | None:
        """The first entry of the active sharing list named after this resource."""
        active = self.sharing.active if self.sharing is not None else None
        return active.entry(f"nvidia.com/{self.key}") if active is not None else None

    @property
    def replicas(self) -> int:
        if self.sharing is None:
            return 0
        entry = self.entry
        return entry.replicas if entry is not None else 1

    @property
    def renamed(self) -> bool:
        entry = self.entry
        return entry is not None and entry.rename != ""

    def label(self, name: str, value: object) -> tuple[str, str]:
        return f"nvidia.com/{self.key}.{name}", str(value)

    def base(self, *product_parts: str) -> Labels:
        replicas = self.replicas
        shared = replicas > 1
        parts = [*product_parts, "SHARED"] if shared and not self.renamed else list(product_parts)
        strategy = self.sharing.strategy if shared and self.sharing is not None else "none"
        labels = dict([self.label("count", self.count), self.label("replicas", replicas),
                       self.label("sharing-strategy", strategy)])
        if any(product_parts):
            labels.update([self.label("product", product(*parts))])
        return labels


def full_gpu_labels(gpu: Gpu, count: int, sharing: Sharing | None) -> Labels:
    res = _Resource("gpu", sharing, count)
    labels = res.base(gpu.name)
    if gpu.memory_mib:
        labels.update([res.label("memory", gpu.memory_mib)])
    major, minor = gpu.compute_capability
    if major != 0:
        labels.update([res.label("family", family(major, minor))])
        # The vfio back-end's "unknown" is -1/-1, as upstream's, which writes it and NFD then drops as an
        # invalid label value: not written here at all.
        if major > 0 and minor >= 0:
            labels.update([res.label("compute.major", major), res.label("compute.minor", minor)])
    return labels


def mig_labels(key: str, parent: Gpu, mig: MigDevice, count: int, sharing: Sharing) -> Labels:
    res = _Resource(key, sharing, count)
    labels = res.base(parent.name, "MIG", mig.label_profile)
    labels.update([
        res.label("memory", mig.memory_mib),
        res.label("multiprocessors", mig.multiprocessors),
        res.label("slices.gi", mig.gi_slices),
        res.label("slices.ci", mig.ci_slices),
        res.label("engines.copy", mig.copy_engines),
        res.label("engines.decoder", mig.decoders),
        res.label("engines.encoder", mig.encoders),
        res.label("engines.jpeg", mig.jpeg_engines),
        res.label("engines.ofa", mig.ofa_engines),
    ])
    return labels


def _merge_order(gpus: tuple[Gpu, ...]) -> list[tuple[Gpu, bool]]:
    """(representative GPU, MIG-enabled) per (MIG state, model), in merge order: the last one wins.

    As upstream, every MIG-disabled model wins over every MIG-enabled one. Within each, ours picks
    the model with the most GPUs, then the one holding the lowest GPU index.
    """
    groups: dict[tuple[bool, str], list[Gpu]] = defaultdict(list)
    for gpu in gpus:
        groups[(gpu.mig_enabled, gpu.name)].append(gpu)

    def rank(item: tuple[tuple[bool, str], list[Gpu]]) -> tuple[bool, int, int]:
        (mig_enabled, _), members = item
        return (not mig_enabled, len(members), -members[0].index)

    return [(members[0], mig_enabled) for (mig_enabled, _), members in sorted(groups.items(), key=rank)]


def full_gpus(model: DeviceModel, config: Config) -> Labels:
    """Strategy `none`: one set of `nvidia.com/gpu.*` labels; MIG-enabled GPUs count, unshared.

    With several models, upstream's merge key by key: the last model's labels replace the others', and a key
    it lacks (its memory query failed) keeps an earlier model's value; the warning names such keys.
    """
    counts: dict[str, int] = defaultdict(int)
    for gpu in model.gpus:
        counts[gpu.name] += 1
    labels: Labels = {}
    described_by: dict[str, str] = {}  # label key -> the model whose value it holds
    for gpu, mig_enabled in _merge_order(model.gpus):
        merged = full_gpu_labels(gpu, counts[gpu.name], None if mig_enabled else config.sharing)
        labels.update(merged)
        described_by.update(dict.fromkeys(merged, gpu.name))
    if len(counts) > 1:
        last = described_by["nvidia.com/gpu.count"]  # every model's set has a count: the last one's stays
        borrowed = {key: name for key, name in sorted(described_by.items()) if name != last}
        log.warning("Multiple device types detected", models=sorted(counts), labelled=last,
                    **({"from_other_models": borrowed} if borrowed else {}))
    return labels


def _check_mig_readable(model: DeviceModel) -> None:
    for gpu in model.gpus:
        if gpu.mig_error is not None:
            raise LabelError(
                f"error creating labeler: error creating resource labeler: error getting MIG devices of GPU "
                f"{gpu.index}: {gpu.mig_error}"
            )


def single(model: DeviceModel, config: Config) -> Labels:
    labels = full_gpus(model, config)
    labels["nvidia.com/mig.strategy"] = "single"
    check = check_single(model)
    if check is None:
        return labels
    _check_mig_readable(model)
    reason = ("at least one MIG device is enabled but empty" if check.empty else
              "devices with MIG enabled and disable detected" if check.mixed_modes else
              "more than one MIG device type present on node" if check.profiles > 1 else None)
    if reason is not None:
        log.warning(f"Invalid configuration detected for mig-strategy=single: {reason}")
        labels.update({
            "nvidia.com/gpu.product": product(next(g for g in model.gpus if g.mig_enabled).name, "MIG", "INVALID"),
            "nvidia.com/gpu.count": "0",
            "nvidia.com/gpu.replicas": "0",
            "nvidia.com/gpu.sharing-strategy": "",
            "nvidia.com/gpu.memory": "0",
        })
        return labels
    labels.update(_mig_group_labels(resource_groups(model, "single"), config.sharing))
    return labels


def mixed(model: DeviceModel, config: Config) -> Labels:
    labels = full_gpus(model, config)
    labels["nvidia.com/mig.strategy"] = "mixed"
    _check_mig_readable(model)
    labels.update(_mig_group_labels(resource_groups(model, "mixed"), config.sharing))
    return labels


def _mig_group_labels(groups: tuple[ResourceGroup, ...], sharing: Sharing) -> Labels:
    """Each MIG resource labelled from its first device, with the resource's device count."""
    labels: Labels = {}
    for group in groups:
        first = group.members[0]
        if first.mig is not None:
            labels.update(mig_labels(group.key, first.gpu, first.mig, len(group.members), sharing))
    return labels


STRATEGIES = {"none": full_gpus, "single": single, "mixed": mixed}


def resource_labels(model: DeviceModel, config: Config) -> Labels:
    return STRATEGIES[config.mig_strategy](model, config)


def mig_capable_labels(model: DeviceModel, config: Config) -> Labels:
    return {"nvidia.com/mig.capable": str(any(g.mig_capable for g in model.gpus)).lower()}


def mps_capable_labels(model: DeviceModel, config: Config) -> Labels:
    if config.sharing.strategy != "mps":
        return {"nvidia.com/mps.capable": "false"}
    if any(g.mig_enabled for g in model.gpus):
        raise LabelError(
            "error creating labeler: error creating sharing labeler: failed to check MPS-capable: "
            "MPS sharing is not supported for mig devices"
        )
    return {"nvidia.com/mps.capable": "true"}


MEMORY_SHARES = "nvidia.com/gpu.memory-shares"


def memory_shares_labels(model: DeviceModel, config: Config) -> Labels:
    """Ours: whether the node's DRA driver offers devices in memory-sized shares (its consumable shares, with the
    ConsumableShares gate; a claim asks for `capacity.requests.memory`) and whether MPS holds each share to its size
    (`.enforced`). From the settings the per-node config file gives the driver and GFD alike, and the devices the
    driver publishes as shareable (plugin/dra/sharing.py). Absent where no device is offered in shares, or the
    settings are ones the driver refuses (no gate, an unknown mode), so such a node keeps upstream's label set. As
    upstream's sharing labels, they say what is configured, not that the driver runs."""
    if config.consumable_shares == DISABLED:
        return {}
    # Imported here: the driver's options and devices add ~7 ms (python -X importtime) to every GFD start, which
    # only a node with consumable shares needs.
    from plugin.dra.config import CONSUMABLE_SHARES_GATE, parse_gates
    from plugin.dra.devices import allocatable_devices

    try:
        shares = ConsumableShares.parse(config.consumable_shares, config.share_enforcement)
        gated = parse_gates(config.dra_feature_gates).get(CONSUMABLE_SHARES_GATE, False)
    except ValueError:
        return {}
    offered = shares.enabled and gated and any(shares.shareable(d.mig is not None, d.mig is not None or
                                                                d.gpu.memory_mib is not None)
                                               for d in allocatable_devices(model))
    if not offered:
        return {}
    return {MEMORY_SHARES: "true", f"{MEMORY_SHARES}.enforced": str(shares.enforced).lower()}
