"""plugin/config.py: the plugin's flags, env and file, checked with upstream's messages."""

from __future__ import annotations

from typing import Any

import pytest
import structlog.testing

from gfd.config import ConfigError
from plugin.config import PLUGIN_OPTIONS, PluginConfig, load_plugin_config, loggable, reload_or_keep


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


def test_running_with_config_shows_every_option_and_what_the_file_set(tmp_path: Any) -> None:
    """Logged at start (plugin.cli) and after each reload: every option by its upstream config name, the IMEX
    channels and the sharing the file put in force."""
    path = tmp_path / "config.yaml"
    path.write_text("version: v1\nflags:\n  migStrategy: single\nimex:\n  channelIDs: [0]\n"
                    "sharing:\n  timeSlicing:\n    resources:\n    - {name: nvidia.com/gpu, replicas: 4}\n")
    argv = [f"--config-file={path}", "--health-probe-interval=1m"]
    with structlog.testing.capture_logs() as logged:
        config = reload_or_keep(load_plugin_config, argv, {}, PluginConfig())
    assert [e["event"] for e in logged] == ["Running with config"]
    shown = logged[0]
    assert {o.config_name for o in PLUGIN_OPTIONS} | {"sharingStrategy"} <= set(shown)
    assert (shown["migStrategy"], shown["imexChannelIds"], shown["sharingStrategy"], shown["healthProbeInterval"],
            shown["deviceListStrategy"]) == ("single", [0], "time-slicing", "1m0s", ["envvar"])
    assert shown == {"event": "Running with config", "log_level": "info", **loggable(config)}
    with structlog.testing.capture_logs() as logged:  # a bad reload keeps the running config and says so
        assert reload_or_keep(load_plugin_config, ["--mig-strategy=bogus"], {}, config) is config
    assert [e["event"] for e in logged] == ["reload failed; keeping the running config"]
