"""gfd/labels/resources.py, the memory-shares labels (ours, issue 24): read from the per-node config file that
config-manager gives GFD and the DRA driver alike, and true exactly where the DRA driver, given the same file,
publishes a device that several claims may share (its ResourceSlices: allowMultipleAllocations)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gfd.config import ConfigError
from gfd.config.loader import load_config, parse_command_line
from gfd.labels.compose import compose
from plugin.dra.config import load_dra_config
from plugin.dra.slices import pool
from tests.helpers import simulated_model

BIN = Path(sys.executable).parent
LABEL, ENFORCED = "nvidia.com/gpu.memory-shares", "nvidia.com/gpu.memory-shares.enforced"
GATE = ["ConsumableShares=true"]


def node_file(tmp_path: Path, **dra: Any) -> Path:
    """The per-node file as the chart's config map holds it (MPS enforcement needs the MPS root)."""
    path = tmp_path / "config.yaml"
    mps = {"mpsRoot": "/run/nvidia/mps"} if dra.get("shareEnforcement") == "mps" else {}
    path.write_text(yaml.safe_dump({"version": "v1", "flags": {"migStrategy": "single", "dra": dra, **mps}}))
    return path


def drivers_shared_devices(profile: str, config_file: Path) -> list[str] | None:
    """The devices the DRA driver publishes for several claims with this file; None when it refuses the file."""
    try:
        config = load_dra_config(["--node-name=node-1", f"--config-file={config_file}"], {})
    except ConfigError:
        return None
    devices = [d for content in pool(simulated_model(profile), "node-1", config.shares).specs(1)
               for d in content.get("devices", [])]
    return [d["name"] for d in devices if d.get("allowMultipleAllocations")]


def gfd_labels(profile: str, config_file: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    config = load_config(parse_command_line(["--oneshot", f"--config-file={config_file}"], env or {}))
    return compose(simulated_model(profile), config, 0)


@pytest.mark.parametrize(("profile", "dra", "expected"), [
    ("dgx-a100", {"consumableShares": "memory", "shareEnforcement": "mps", "featureGates": GATE},
     {LABEL: "true", ENFORCED: "true"}),
    ("dgx-a100", {"consumableShares": "memory", "featureGates": GATE}, {LABEL: "true", ENFORCED: "false"}),
    ("dgx-a100", {"consumableShares": "unlimited", "shareEnforcement": "mps", "featureGates": GATE},
     {LABEL: "true", ENFORCED: "false"}),  # time-slicing shares: counted by the scheduler, not enforced
    ("dgx-a100", {"consumableShares": "4", "featureGates": GATE}, {LABEL: "true", ENFORCED: "false"}),
    ("a100-mig-single", {"consumableShares": "memory", "featureGates": GATE}, {LABEL: "true", ENFORCED: "false"}),
    # Every GPU in MIG mode, and MPS shares are not offered on MIG devices: nothing is shared.
    ("a100-mig-single", {"consumableShares": "memory", "shareEnforcement": "mps", "featureGates": GATE}, {}),
    ("dgx-a100", {"consumableShares": "memory"}, {}),  # without the gate the driver refuses to start
    ("dgx-a100", {"consumableShares": "half", "featureGates": GATE}, {}),  # nor does it take this
    ("dgx-a100", {"consumableShares": "disabled", "featureGates": GATE}, {}),
    ("dgx-a100", {}, {}),
])
def test_the_labels_say_what_the_driver_offers_with_the_same_file(profile: str, dra: dict[str, Any],
                                                                   expected: dict[str, str], tmp_path: Path) -> None:
    path = node_file(tmp_path, **dra)
    labels = gfd_labels(profile, path)
    assert {k: v for k, v in labels.items() if k.startswith(LABEL)} == expected
    shared = drivers_shared_devices(profile, path)
    assert bool(shared) == (LABEL in labels), shared
    if shared:
        assert (ENFORCED, "true") in labels.items() or not load_dra_config(
            ["--node-name=node-1", f"--config-file={path}"], {}).shares.enforced


def test_a_node_without_shares_keeps_upstreams_label_set(tmp_path: Path) -> None:
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"version": "v1", "flags": {"migStrategy": "single"}}))
    assert gfd_labels("dgx-a100", node_file(tmp_path, consumableShares="disabled", featureGates=GATE)) == \
        gfd_labels("dgx-a100", bare)


def test_gfd_takes_the_drivers_env_too(tmp_path: Path) -> None:
    labels = gfd_labels("dgx-a100", node_file(tmp_path), {"CONSUMABLE_SHARES": "memory",
                                                          "FEATURE_GATES": "ConsumableShares=true",
                                                          "SHARE_ENFORCEMENT": "mps"})
    assert labels[LABEL] == labels[ENFORCED] == "true"


def test_the_program_labels_from_the_per_node_file(tmp_path: Path) -> None:
    path = node_file(tmp_path, consumableShares="memory", shareEnforcement="mps", featureGates=GATE)
    out = subprocess.run([str(BIN / "gpu-feature-discovery"), "--oneshot", "--output-file=-", "--no-timestamp",
                          "--simulate=dgx-h100", f"--config-file={path}"], capture_output=True, text=True,
                         timeout=60, check=False, env={"PATH": os.environ["PATH"]})
    assert out.returncode == 0, out.stderr
    assert {line for line in out.stdout.splitlines() if line.startswith(LABEL)} == {
        f"{LABEL}=true", f"{ENFORCED}=true"}
