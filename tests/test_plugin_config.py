"""plugin/config.py: the plugin's flags, env and file, checked with upstream's messages."""

from __future__ import annotations

from typing import Any

import pytest

from gfd.config import ConfigError
from plugin.config import load_plugin_config


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--device-list-strategy=envvar,bogus"], {}, "invalid --device-list-strategy option: invalid strategy: bogus"),
    (["--device-id-strategy=serial"], {}, "invalid --device-id-strategy option: serial"),
    (["--shared-devices-allocation-policy=random"], {}, "invalid --shared-devices-allocation-policy option: random"),
    (["--mig-strategy=bogus"], {}, "unknown MIG strategy: bogus"),
    (["--device-discovery-strategy=vfio"], {}, "invalid --device-discovery-strategy option vfio"),
    (["--imex-channel-ids=1"], {}, "channelIDs must be [] or [0]; found [1]"),
    ([], {"PASS_DEVICE_SPECS": "maybe"}, 'PASS_DEVICE_SPECS: pass-device-specs: parsing "maybe": invalid syntax'),
])
def test_plugin_flag_validation(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_plugin_config(argv, env)
    assert message in str(e.value)


def test_mps_needs_a_root_and_no_mixed(tmp_path: Any) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sharing:\n  mps:\n    resources:\n    - name: gpu\n      replicas: 2\n")
    with pytest.raises(ConfigError, match="using MPS requires --mps-root to be specified"):
        load_plugin_config([f"--config-file={cfg}"], {})
    with pytest.raises(ConfigError, match="using --mig-strategy=mixed is not supported with MPS"):
        load_plugin_config([f"--config-file={cfg}", "--mig-strategy=mixed", "--mps-root=/m"], {})


def test_plugin_flags_env_and_file_precedence(tmp_path: Any) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("flags:\n  plugin:\n    deviceListStrategy: [volume-mounts, cdi-cri]\n    deviceIDStrategy: index\n")
    c = load_plugin_config([f"--config-file={cfg}"], {"DEVICE_ID_STRATEGY": "uuid"})
    assert c.device_list_strategy == ("volume-mounts", "cdi-cri")
    assert c.device_id_strategy == "uuid"
    assert load_plugin_config([], {"DEVICE_LIST_STRATEGY": "envvar,cdi-annotations"}).device_list_strategy == \
        ("envvar", "cdi-annotations")
