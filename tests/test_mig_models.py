"""MIG layouts on every MIG-capable simulated model, whose NVML reports the driver's profile IDs
(not the profile indices): whole label sets under each strategy, and the plugin's resources.

The expected figures are the published `nvidia-smi mig -lgip` columns each model file cites, written here
again by hand so that a wrong model file fails too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from gfd.cli import main
from plugin.config import load_plugin_config
from plugin.resources import build_resources
from tests.expected import compute, flags, mig_attributes, resource, versions


class Profile(NamedTuple):
    name: str
    memory: int
    sm: int
    gi: int
    copy: int
    dec: int
    jpeg: int
    ofa: int


class Model(NamedTuple):
    file: str
    product: str
    memory: int
    capability: tuple[int, int]
    family: str
    layout: tuple[Profile, ...]  # every profile of the model
    # The layout split over GPUs so that each GPU's instances fit its memory slices (the MIG User Guide's valid
    # combinations): no GPU can hold every profile at once.
    gpus: tuple[tuple[str, ...], ...]


A100_40 = Model("A100-SXM4-40GB", "NVIDIA-A100-SXM4-40GB", 40960, (8, 0), "ampere", (
    Profile("1g.5gb", 4864, 14, 1, 1, 0, 0, 0), Profile("1g.5gb+me", 4864, 14, 1, 1, 1, 1, 1),
    Profile("1g.10gb", 9856, 14, 1, 1, 1, 0, 0), Profile("2g.10gb", 9856, 28, 2, 2, 1, 0, 0),
    Profile("3g.20gb", 19968, 42, 3, 3, 2, 0, 0), Profile("4g.20gb", 19968, 56, 4, 4, 2, 0, 0),
    Profile("7g.40gb", 40192, 98, 7, 7, 5, 1, 1)),
    (("4g.20gb", "2g.10gb", "1g.5gb"), ("3g.20gb", "1g.10gb", "1g.5gb+me"), ("7g.40gb",)))
A100_80 = Model("A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB", 81920, (8, 0), "ampere", (
    Profile("1g.10gb", 9728, 14, 1, 1, 0, 0, 0), Profile("1g.10gb+me", 9728, 14, 1, 1, 1, 1, 1),
    Profile("1g.20gb", 19968, 14, 1, 1, 1, 0, 0), Profile("2g.20gb", 19968, 28, 2, 2, 1, 0, 0),
    Profile("3g.40gb", 40192, 42, 3, 3, 2, 0, 0), Profile("4g.40gb", 40192, 56, 4, 4, 2, 0, 0),
    Profile("7g.80gb", 80896, 98, 7, 7, 5, 1, 1)),
    (("4g.40gb", "2g.20gb", "1g.10gb"), ("3g.40gb", "1g.20gb", "1g.10gb+me"), ("7g.80gb",)))
H100 = Model("H100-80GB-HBM3", "NVIDIA-H100-80GB-HBM3", 81559, (9, 0), "hopper", (
    Profile("1g.10gb", 9984, 16, 1, 1, 1, 1, 0), Profile("1g.10gb+me", 9984, 16, 1, 1, 1, 1, 1),
    Profile("1g.20gb", 20096, 26, 1, 1, 1, 1, 0), Profile("2g.20gb", 20096, 32, 2, 2, 2, 2, 0),
    Profile("3g.40gb", 40448, 60, 3, 3, 3, 3, 0), Profile("4g.40gb", 40448, 64, 4, 4, 4, 4, 0),
    Profile("7g.80gb", 81152, 132, 7, 8, 7, 7, 1)),
    (("4g.40gb", "2g.20gb", "1g.10gb"), ("3g.40gb", "1g.20gb", "1g.10gb+me"), ("7g.80gb",)))
GH200 = Model("GH200", "NVIDIA-GH200-480GB", 97871, (9, 0), "hopper", (
    Profile("1g.12gb", 11776, 16, 1, 1, 1, 1, 0), Profile("7g.96gb", 96768, 132, 7, 8, 7, 7, 1)),
    (("1g.12gb",), ("7g.96gb",)))
MODELS = [A100_40, A100_80, H100, GH200]


def node_file(tmp_path: Any, model: Model, layout: list[str], count: int = 1) -> str:
    return nodes_file(tmp_path, model, [layout] * count)


def nodes_file(tmp_path: Any, model: Model, layouts: list[list[str]] | tuple[tuple[str, ...], ...]) -> str:
    """A node with one GPU of `model` per layout."""
    path = tmp_path / "node.yaml"
    gpus = ", ".join(f"{{model: {model.file}, mig: [{', '.join(layout)}]}}" for layout in layouts)
    path.write_text(f"machine: test\ndriver_version: '550.54.15'\ncuda_driver_version: 12040\ngpus: [{gpus}]\n")
    return str(path)


def per_gpu(model: Model, p: Profile) -> int:
    """How many instances of a profile one GPU holds: one with the media extensions, else as many as its compute
    slices (7) and memory slices (8, each 1/8 of the memory) allow: 7 of 1g.5gb, 4 of 1g.10gb on an A100 40GB."""
    memory_slices = round(p.memory * 8 / model.memory)
    return 1 if "+me" in p.name else min(7 // p.gi, 8 // memory_slices)


def oneshot(capsys: Any, *args: str) -> tuple[int, dict[str, str], str]:
    code = main(["--oneshot", "--no-timestamp", "--output-file=-", *args], {})
    out, err = capsys.readouterr()
    return code, dict(line.split("=", 1) for line in out.splitlines()), err


def base(model: Model, strategy: str) -> dict[str, str]:
    extra = {"nvidia.com/mig.strategy": strategy} if strategy != "none" else {}
    return versions("550.54.15", "12.4") | flags(True, machine="test") | compute(*model.capability, model.family) | \
        extra


@pytest.mark.parametrize(("model", "p"), [(m, p) for m in MODELS for p in m.layout],
                         ids=[f"{m.file}-{p.name}" for m in MODELS for p in m.layout])
def test_single_strategy_uniform_layout(capsys: Any, tmp_path: Any, model: Model, p: Profile) -> None:
    count = per_gpu(model, p)
    code, labels, err = oneshot(capsys, f"--simulate={node_file(tmp_path, model, [p.name] * count, 2)}",
                                "--mig-strategy=single")
    assert code == 0, err
    assert labels == base(model, "single") | \
        resource("gpu", f"{model.product}-MIG-{p.name.replace('+', '.')}", 2 * count) | \
        mig_attributes("gpu", p.memory, p.sm, p.gi, p.gi, p.copy, p.dec, 0, p.jpeg, p.ofa)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.file)
def test_mixed_strategy_every_profile(capsys: Any, tmp_path: Any, model: Model) -> None:
    code, labels, err = oneshot(capsys, f"--simulate={nodes_file(tmp_path, model, model.gpus)}", "--mig-strategy=mixed")
    assert code == 0, err
    expected = base(model, "mixed") | resource("gpu", model.product, len(model.gpus), 0, "none", memory=model.memory)
    for p in model.layout:
        key = f"mig-{p.name.replace('+', '.')}"
        expected |= resource(key, f"{model.product}-MIG-{p.name.replace('+', '.')}", 1) | \
            mig_attributes(key, p.memory, p.sm, p.gi, p.gi, p.copy, p.dec, 0, p.jpeg, p.ofa)
    assert labels == expected


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.file)
def test_none_strategy_labels_the_full_gpus(capsys: Any, tmp_path: Any, model: Model) -> None:
    code, labels, _ = oneshot(capsys, f"--simulate={node_file(tmp_path, model, [model.layout[0].name], 2)}")
    assert code == 0
    assert labels == base(model, "none") | resource("gpu", model.product, 2, 0, "none", memory=model.memory)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.file)
@pytest.mark.parametrize("strategy", ["none", "single", "mixed"])
def test_plugin_resources_on_every_model(simulate: Any, model: Model, strategy: str) -> None:
    from gfd.discovery.session import NodeSource

    layouts = [[model.layout[0].name] * 7] * 2 if strategy == "single" else [list(g) for g in model.gpus] * 2
    sim = simulate({"gpus": [{"model": model.file, "mig": layout} for layout in layouts]})
    source = NodeSource("nvml")
    source.host_root = sim.host_root
    source.open()
    try:
        found = build_resources(source.read(), load_plugin_config([f"--mig-strategy={strategy}"], {}))
    finally:
        source.close_nvml()
    counts = {r.name: len(r.devices) for r in found}
    if strategy == "none":
        assert counts == {"nvidia.com/gpu": len(layouts)}
    elif strategy == "single":
        assert counts == {"nvidia.com/gpu": 14}
    else:
        assert counts == {f"nvidia.com/mig-{p.name.replace('+', '.')}": 2 for p in model.layout}


def test_a_compute_instance_smaller_than_its_gpu_instance_as_upstream(capsys: Any, simulate: Any,
                                                                      tmp_path: Any) -> None:
    """Upstream's two programs disagree on purpose here (shared/reference/config.md §5): GFD labels every
    profile it finds, the plugin serves only profiles whose compute slices equal their GPU slices and
    refuses to start otherwise. Both halves are kept, from the same device model."""
    from gfd.discovery.session import NodeSource
    from plugin.resources import ResourceError

    path = node_file(tmp_path, A100_40, ["1c.3g.20gb", "3g.20gb"])
    code, labels, _ = oneshot(capsys, f"--simulate={path}", "--mig-strategy=mixed")
    assert code == 0 and labels["nvidia.com/mig-1c.3g.20gb.slices.ci"] == "1"
    assert labels["nvidia.com/mig-1c.3g.20gb.slices.gi"] == "3"
    sim = simulate({"gpus": [{"model": "A100-SXM4-40GB", "mig": ["1c.3g.20gb", "3g.20gb"]}]})
    source = NodeSource("nvml")
    source.host_root = sim.host_root
    with source:
        source.open()
        model = source.read()
    with pytest.raises(ResourceError, match=r"MIG profile '1c\.3g\.20gb' does not match any resource patterns"):
        build_resources(model, load_plugin_config(["--mig-strategy=mixed"], {}))
