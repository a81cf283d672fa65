"""GetPreferredAllocation.

Full GPUs: the set of `size` devices (holding every must-include device) with the highest topology
score, where a set scores the sum of its pairs' scores (upstream's pair scoring: PCIe level plus 100 per
NVLink). Upstream's best-effort policy partitions *all* available GPUs and can return a worse set (e.g.
[0,3] instead of [2,3] on a DGX-1V); this search is exact (branch and bound) and breaks ties by the lowest
GPU indices, so the answer does not depend on the order the kubelet lists candidates in.

Replicas and MIG devices: upstream's greedy policy (distributed or packed), deterministic here.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence

from gfd.model import Link
from plugin.resources import PluginDevice, Resource

PCIE_SCORES = {"system": 10, "node": 20, "hostbridge": 30, "multiple": 40, "single": 50, "internal": 60}
NVLINK_SCORE = 100


class PreferredError(Exception):
    pass


def pair_scores(links: Sequence[Link]) -> dict[tuple[int, int], int]:
    scores: dict[tuple[int, int], int] = {}
    for link in links:
        score = PCIE_SCORES.get(link.pcie, 0) + NVLINK_SCORE * link.nvlinks
        scores[(link.a, link.b)] = scores[(link.b, link.a)] = score
    return scores


def preferred(resource: Resource, available: Sequence[str], must_include: Sequence[str], size: int,
              scores: dict[tuple[int, int], int], policy: str = "distributed") -> list[str]:
    for device_id in (*available, *must_include):
        if resource.device(device_id) is None:
            raise PreferredError("error getting list of preferred allocation devices: unable to retrieve list of "
                                 f"available devices: no device with uuid: {device_id}")
    if resource.full_gpus_only and not any("::" in a for a in available):
        return best_set(resource, available, must_include, size, scores)
    return greedy(resource, available, must_include, size, policy)


def best_set(resource: Resource, available: Sequence[str], must_include: Sequence[str], size: int,
             scores: dict[tuple[int, int], int]) -> list[str]:
    required = list(dict.fromkeys(must_include))
    candidates = sorted({*available} - {*required}, key=lambda i: _gpu(resource, i))
    if size <= 0 or len(required) > size or len(required) + len(candidates) < size:
        return []
    index = {i: _gpu(resource, i) for i in (*required, *candidates)}
    chosen = _search([index[i] for i in required], [index[i] for i in candidates], size - len(required), scores)
    by_gpu = {v: k for k, v in index.items()}
    return [by_gpu[g] for g in sorted(chosen)]


def set_score(gpus: Sequence[int], scores: dict[tuple[int, int], int]) -> int:
    return sum(scores.get((a, b), 0) for i, a in enumerate(gpus) for b in gpus[i + 1:])


def _search(required: list[int], candidates: list[int], picks: int, scores: dict[tuple[int, int], int]) -> list[int]:
    """Exact maximum of set_score(required + picks) by depth-first branch and bound.

    Candidates are tried in index order and only a strictly better set replaces the best, so among
    equal scores the set with the lowest indices wins. The bound for a partial set adds, for the
    remaining picks, each candidate's gain towards the chosen devices plus half its best gains towards
    other candidates (each pair is counted from both ends), taking the largest such values.
    """
    n = len(candidates)
    weight = [[scores.get((a, b), 0) for b in candidates] for a in candidates]
    base_gain = [sum(scores.get((r, c), 0) for r in required) for c in candidates]
    # half_pairs[s][i][k]: half the sum of candidate i's k best pair weights towards candidates j >= s
    # (the ones still selectable at depth `start = s`): the optimistic share of pairs among future picks.
    half_pairs = [[_prefix_sums(sorted((weight[i][j] for j in range(s, n) if j != i), reverse=True))
                   for i in range(n)] for s in range(n + 1)]

    def bound(start: int, gains: list[int], remaining: int) -> int:
        halves = half_pairs[start]
        return sum(heapq.nlargest(remaining, (gains[i] + halves[i][min(remaining - 1, len(halves[i]) - 1)] // 2
                                              for i in range(start, n))))

    # A good set found greedily lets the search prune from the start; one below its score, so that an
    # equally good set with lower indices is still found.
    best_score = _greedy_lower_bound(weight, base_gain, picks) - 1
    best: list[int] = []
    chosen: list[int] = []

    def visit(start: int, score: int, gains: list[int], remaining: int) -> None:
        nonlocal best_score, best
        if remaining == 0:
            if score > best_score:
                best_score, best = score, list(chosen)
            return
        if n - start < remaining or score + bound(start, gains, remaining) <= best_score:
            return
        for i in range(start, n - remaining + 1):
            chosen.append(i)
            row = weight[i]
            visit(i + 1, score + gains[i], [g + w for g, w in zip(gains, row, strict=True)], remaining - 1)
            chosen.pop()

    visit(0, 0, base_gain, picks)
    return required + [candidates[i] for i in best]


def _prefix_sums(values: list[int]) -> list[int]:
    sums = [0]
    for v in values:
        sums.append(sums[-1] + v)
    return sums


def _greedy_lower_bound(weight: list[list[int]], base_gain: list[int], picks: int) -> int:
    """Score of a greedily built set improved by single swaps: a lower bound for the optimum."""
    n = len(weight)
    chosen: list[int] = []
    gains = list(base_gain)
    for _ in range(picks):
        i = max((j for j in range(n) if j not in chosen), key=lambda j: gains[j])
        chosen.append(i)
        gains = [g + w for g, w in zip(gains, weight[i], strict=True)]

    def score(members: list[int]) -> int:
        return sum(base_gain[i] for i in members) + sum(
            weight[a][b] for k, a in enumerate(members) for b in members[k + 1:])

    current = score(chosen)
    improved = True
    while improved:
        improved = False
        for out in list(chosen):
            for into in range(n):
                if into in chosen:
                    continue
                trial = [into if c == out else c for c in chosen]
                trial_score = score(trial)
                if trial_score > current:
                    chosen, current, improved = trial, trial_score, True
                    break
            if improved:
                break
    return current


def greedy(resource: Resource, available: Sequence[str], must_include: Sequence[str], size: int,
           policy: str) -> list[str]:
    """Upstream's greedy policy: spread picks over the least-used devices (distributed) or fill the
    most-used first (packed); ties go to the device picked least in this call, then the lowest index."""
    required = list(dict.fromkeys(must_include))
    candidates = sorted({*available} - {*required}, key=lambda i: _order(resource.device(i)))
    wanted = size - len(required)
    if wanted <= 0:
        return required[:size] if size > 0 else []
    if len(candidates) < wanted:
        raise PreferredError("error getting list of preferred allocation devices: "
                             "not enough available devices to satisfy allocation")
    total = Counter(d.uuid for d in resource.devices)
    free = Counter(_device(resource, c).uuid for c in candidates)
    allocated = {u: total[u] - free[u] for u in total}
    taken: Counter[str] = Counter()
    picks = []
    for _ in range(wanted):
        def rank(c: str) -> tuple[int, int]:
            u = _device(resource, c).uuid
            return (allocated[u] if policy == "distributed" else -allocated[u], taken[u])

        pick = min(candidates, key=rank)  # min() keeps the first of equals: the lowest index
        candidates.remove(pick)
        u = _device(resource, pick).uuid
        allocated[u] += 1
        taken[u] += 1
        picks.append(pick)
    return required + picks


def _device(resource: Resource, device_id: str) -> PluginDevice:
    device = resource.device(device_id)
    assert device is not None  # checked on entry
    return device


def _gpu(resource: Resource, device_id: str) -> int:
    return _device(resource, device_id).gpu.index


def _order(device: PluginDevice | None) -> tuple[int, int, int]:
    assert device is not None
    return (device.gpu.index, device.mig.index if device.mig else -1, device.replica or 0)
