"""plugin/preferred.py: the optimal preferred allocation and the greedy policies."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfd.model import Link
from plugin.config import PluginConfig
from plugin.preferred import best_set, greedy, pair_scores, set_score
from plugin.resources import build_resources
from tests.builders import gpu, model, shared


@st.composite
def topologies(draw: Any) -> tuple[int, list[Link]]:
    n = draw(st.integers(min_value=2, max_value=10))
    levels = st.sampled_from(["system", "node", "hostbridge", "multiple", "single", "internal"])
    links = [Link(a, b, draw(st.integers(0, 3)), draw(levels)) for a in range(n) for b in range(a + 1, n)]
    return n, links


@settings(max_examples=150, deadline=None)
@given(topologies(), st.data())
def test_best_set_is_the_exhaustive_optimum(topology: tuple[int, list[Link]], data: Any) -> None:
    n, links = topology
    resource = build_resources(model(*(gpu(i) for i in range(n))), PluginConfig())[0]
    ids = [d.id for d in resource.devices]
    available = data.draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))
    must = data.draw(st.lists(st.sampled_from(available), max_size=2, unique=True))
    size = data.draw(st.integers(min_value=max(1, len(must)), max_value=len(available)))
    scores = pair_scores(links)
    got = best_set(resource, available, must, size, scores)
    index = {i: int(i.split("-")[1]) for i in ids}
    assert len(got) == size and set(must) <= set(got) and set(got) <= set(available)
    rest = sorted({index[a] for a in available} - {index[m] for m in must})
    best = max(set_score([index[m] for m in must] + list(c), scores)
               for c in itertools.combinations(rest, size - len(must)))
    assert set_score([index[g] for g in got], scores) == best
    assert best_set(resource, list(reversed(available)), must, size, scores) == got  # deterministic


def test_best_set_edge_cases_return_nothing() -> None:
    resource = build_resources(model(gpu(0), gpu(1)), PluginConfig())[0]
    ids = [d.id for d in resource.devices]
    assert best_set(resource, ids, [], 0, {}) == []
    assert best_set(resource, ids[:1], [], 2, {}) == []
    assert best_set(resource, ids, ids, 1, {}) == []


@pytest.mark.parametrize(("policy", "size", "expected_per_gpu"), [
    ("distributed", 2, [1, 1]), ("distributed", 4, [2, 2]), ("packed", 2, [2, 0]), ("packed", 4, [4, 0]),
    ("packed", 5, [4, 1]),
])
def test_greedy_policies(policy: str, size: int, expected_per_gpu: list[int]) -> None:
    resource = build_resources(model(gpu(0), gpu(1)), PluginConfig(sharing=shared(4)))[0]
    ids = [d.id for d in resource.devices]
    picks = greedy(resource, ids, [], size, policy)
    assert [sum(p.startswith(f"GPU-{g:04d}") for p in picks) for g in (0, 1)] == expected_per_gpu
    assert greedy(resource, list(reversed(ids)), [], size, policy) == picks


def test_greedy_counts_devices_already_in_use() -> None:
    resource = build_resources(model(gpu(0), gpu(1)), PluginConfig(sharing=shared(4)))[0]
    free = [d.id for d in resource.devices if not (d.gpu.index == 0 and d.replica in (0, 1, 2))]
    picks = greedy(resource, free, [], 2, "distributed")  # GPU 0 has 3 of 4 replicas in use
    assert [p.split("::")[0] for p in picks] == ["GPU-0001", "GPU-0001"]
    must = greedy(resource, free, ["GPU-0001::3"], 2, "distributed")
    assert must[0] == "GPU-0001::3"
