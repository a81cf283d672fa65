"""nvidia-dra-plugin's options (plugin/dra/config.py): NVIDIA's gpu-kubelet-plugin flags, env vars and defaults
(its main.go, kube-client, feature-gate and klog flags; /work/notes/dra-research.md §1), plus ours."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from gfd.config import ConfigError
from plugin.dra.config import load_dra_config, log_ignored
from plugin.dra.sharing import ConsumableShares

NODE = ["--node-name=gpu-node-1"]


def test_nvidias_defaults() -> None:
    c = load_dra_config(NODE, {})
    assert (c.cdi_root, c.nvidia_driver_root, c.container_driver_root, c.nvidia_cdi_hook_path) == \
        ("/etc/cdi", "/", "/driver-root", "")
    assert (c.kubelet_registrar_directory_path, c.kubelet_plugins_directory_path) == \
        ("/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins")
    assert (c.consumable_shares, c.kube_api_qps, c.kube_api_burst, c.metrics_path, c.verbosity) == \
        ("disabled", 5.0, 10, "/metrics", 0)
    assert (c.namespace, c.healthcheck_port, c.logging_format) == ("default", -1, "text")
    assert c.registration_socket == "/var/lib/kubelet/plugins_registry/gpu.nvidia.com-reg.sock"
    assert c.dra_socket == "/var/lib/kubelet/plugins/gpu.nvidia.com/dra.sock"
    assert c.gates["ConsumableShares"] is False and c.gates["IMEXDaemonsWithDNSNames"] is True
    assert c.ignored == ()


def test_nvidias_env_names() -> None:
    env = {"NODE_NAME": "n", "CDI_ROOT": "/var/run/cdi", "HOST_DRIVER_ROOT": "/run/nvidia/driver",
           "DRIVER_ROOT_CTR_PATH": "/drv", "NVIDIA_CDI_HOOK_PATH": "/usr/bin/nvidia-cdi-hook",
           "KUBELET_REGISTRAR_DIRECTORY_PATH": "/k/reg", "KUBELET_PLUGINS_DIRECTORY_PATH": "/k/plugins",
           "CONSUMABLE_SHARES": "memory", "FEATURE_GATES": "ConsumableShares=true", "KUBECONFIG": "/kc",
           "KUBE_API_QPS": "50", "KUBE_API_BURST": "100", "HTTP_ENDPOINT": ":8080", "V": "6",
           "ADDITIONAL_XIDS_TO_IGNORE": "13,31"}
    c = load_dra_config([], env)
    assert (c.node_name, c.cdi_root, c.nvidia_driver_root, c.container_driver_root, c.nvidia_cdi_hook_path) == \
        ("n", "/var/run/cdi", "/run/nvidia/driver", "/drv", "/usr/bin/nvidia-cdi-hook")
    assert c.registration_socket == "/k/reg/gpu.nvidia.com-reg.sock"
    assert c.dra_socket == "/k/plugins/gpu.nvidia.com/dra.sock"
    assert c.shares == ConsumableShares("memory")
    assert (c.kubeconfig, c.kube_api_qps, c.kube_api_burst, c.metrics_address) == ("/kc", 50.0, 100, ":8080")
    assert (c.verbosity, c.effective_log_level, c.additional_xids_to_ignore) == (6, "debug", ("13", "31"))


def test_nvidia_driver_root_wins_over_its_older_env_name_and_flags_win_over_env() -> None:
    c = load_dra_config([*NODE, "--cdi-root=/flag"], {"NVIDIA_DRIVER_ROOT": "/a", "HOST_DRIVER_ROOT": "/b",
                                                      "CDI_ROOT": "/env"})
    assert (c.nvidia_driver_root, c.cdi_root) == ("/a", "/flag")


@pytest.mark.parametrize("argv", [["-v=5"], ["-v", "5"], ["--v=5"], ["-v5"]])
def test_klog_verbosity_takes_klogs_spellings(argv: list[str]) -> None:
    c = load_dra_config([*NODE, *argv], {})
    assert (c.verbosity, c.effective_log_level) == (5, "debug")


def test_our_log_level_wins_over_verbosity_and_logging_format_maps_to_ours() -> None:
    c = load_dra_config([*NODE, "-v=8", "--log-level=warning", "--logging-format=json"], {})
    assert (c.effective_log_level, c.effective_log_format) == ("warning", "json")
    assert load_dra_config([*NODE, "--logging-format=text"], {}).effective_log_format == "console"
    assert load_dra_config([*NODE, "--logging-format=json", "--log-format=console"], {}).effective_log_format == \
        "console"
    assert load_dra_config(NODE, {}).effective_log_format == "auto"


def test_version_is_not_v(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        load_dra_config(["--version"], {})
    assert e.value.code == 0 and capsys.readouterr().out.strip()


def test_help_lists_nvidias_flags_and_ours(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_dra_config(["--help"], {})
    text = capsys.readouterr().out
    for flag in ("--node-name", "--cdi-root", "--nvidia-driver-root", "--container-driver-root",
                 "--nvidia-cdi-hook-path", "--kubelet-registrar-directory-path", "--kubelet-plugins-directory-path",
                 "--image-name", "--feature-gates", "--consumable-shares", "--kubeconfig", "--kube-api-qps",
                 "--http-endpoint", "--v ", "--simulate", "--log-format", "--log-level", "--metrics-address"):
        assert flag in text, flag
    assert "env: CONSUMABLE_SHARES" in text and "DRA driver gpu.nvidia.com" in text


def test_the_node_name_is_required() -> None:
    with pytest.raises(ConfigError, match='Required flag "node-name" not set'):
        load_dra_config([], {})


def test_consumable_shares_need_nvidias_gate() -> None:
    with pytest.raises(ConfigError, match="--consumable-shares requires feature gate ConsumableShares to be "
                                          "enabled"):
        load_dra_config([*NODE, "--consumable-shares=memory"], {})
    with pytest.raises(ConfigError, match=r'invalid value for --consumable-shares: "half"'):
        load_dra_config([*NODE, "--consumable-shares=half", "--feature-gates=ConsumableShares=true"], {})
    c = load_dra_config([*NODE, "--consumable-shares=8", "--feature-gates=ConsumableShares=true"], {})
    assert c.shares == ConsumableShares("unlimited", 8)


@pytest.mark.parametrize(("gates", "message"), [
    ("Bogus=true", "unrecognized feature gate: Bogus"),
    ("DynamicMIG", "missing bool value for DynamicMIG"),
    ("DynamicMIG=maybe", 'invalid value of DynamicMIG=maybe'),
    ("DynamicMIG=true,MPSSupport=true", "feature gate DynamicMIG is currently mutually exclusive with MPSSupport"),
    ("DeviceMetadata=true", "feature gate DeviceMetadata requires PassthroughSupport to also be enabled"),
    ("IMEXDaemonsWithDNSNames=false", "feature gate ComputeDomainCliques requires IMEXDaemonsWithDNSNames"),
])
def test_feature_gates_are_checked_as_nvidia_checks_them(gates: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_dra_config([*NODE, f"--feature-gates={gates}"], {})


def test_bad_xids_are_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="additional-xids-to-ignore: not an XID number: 'x'"):
        load_dra_config([*NODE, "--additional-xids-to-ignore=13,x"], {})


def test_options_without_meaning_here_are_accepted_and_logged_once() -> None:
    c = load_dra_config([*NODE, "--image-name=nvcr.io/nvidia/k8s-dra-driver-gpu:v25.8.0", "--healthcheck-port=51515",
                         "--feature-gates=DynamicMIG=true,ConsumableShares=true,NVMLDeviceHealthCheck=true",
                         "--namespace=nvidia-dra-driver-gpu"], {"VMODULE": "driver=6"})
    assert c.ignored == ("--namespace", "--image-name", "--healthcheck-port", "--vmodule",
                         "feature gate DynamicMIG=true", "feature gate NVMLDeviceHealthCheck=true")
    with capture_logs() as logs:
        log_ignored(c)
        log_ignored(load_dra_config(NODE, {}))
    assert [e["event"] for e in logs] == ["options accepted for compatibility have no effect"]
    assert logs[0]["options"] == list(c.ignored)


SHARED = [*NODE, "--consumable-shares=memory", "--feature-gates=ConsumableShares=true"]


def test_memory_shares_are_nvidias_unless_enforcement_is_asked_for() -> None:
    """The default keeps NVIDIA's behaviour, so a DaemonSet written for NVIDIA's driver starts unchanged."""
    c = load_dra_config(SHARED, {})
    assert c.share_enforcement == "none" and not c.shares.enforced
    c = load_dra_config([*SHARED, "--mps-root=/run/nvidia/mps"], {"SHARE_ENFORCEMENT": "mps"})
    assert c.shares.enforced and (c.mps_root, c.mps_container_root) == ("/run/nvidia/mps", "/mps")


@pytest.mark.parametrize("value", ["MPS", "cuda", "hami", ""])
def test_share_enforcement_is_mps_or_none(value: str) -> None:
    with pytest.raises(ConfigError, match=r"share-enforcement.*accepted: none, mps"):
        load_dra_config([*SHARED, f"--share-enforcement={value}"], {})


def test_enforcement_needs_the_hosts_mps_root() -> None:
    with pytest.raises(ConfigError, match="mps-root: using MPS requires --mps-root to be specified"):
        load_dra_config([*SHARED, "--share-enforcement=mps"], {})


@pytest.mark.parametrize("shares", ["disabled", "unlimited", "4"])
def test_enforcement_of_time_slicing_shares_or_of_none_is_logged_as_without_effect(shares: str) -> None:
    c = load_dra_config([*NODE, f"--consumable-shares={shares}", "--feature-gates=ConsumableShares=true",
                         "--share-enforcement=mps"], {})  # no --mps-root needed: nothing will be enforced
    assert not c.shares.enforced
    assert c.ignored == (f"--share-enforcement=mps (with --consumable-shares={shares})",)


def test_the_sharing_options_come_from_the_per_node_config_file(write_yaml: Callable[..., str]) -> None:
    """config-manager writes the node's config (the chart's config.map) where CONFIG_FILE names it; the device
    plugin reads the same file (flags.mpsRoot is shared with it, its `sharing` section means nothing here)."""
    path = write_yaml({"version": "v1", "flags": {"mpsRoot": "/run/nvidia/mps", "dra": {
        "consumableShares": "memory", "shareEnforcement": "mps", "featureGates": ["ConsumableShares=true"]}},
        "sharing": {"mps": {"resources": [{"name": "nvidia.com/gpu", "replicas": 4}]}}})
    c = load_dra_config([*NODE, f"--config-file={path}"], {})
    assert c.shares == ConsumableShares("memory", enforcement="mps") and c.mps_root == "/run/nvidia/mps"
    assert load_dra_config([*NODE, "--consumable-shares=4"], {"CONFIG_FILE": path}).shares.mode == "unlimited"
    bad = write_yaml({"version": "v1", "flags": {"dra": {"shareEnforcement": "hami"}}}, "bad.yaml")
    with pytest.raises(ConfigError, match=r"config file .*bad.yaml: flags.dra.shareEnforcement: .*none, mps"):
        load_dra_config([*NODE, f"--config-file={bad}"], {})


def test_help_names_the_sharing_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_dra_config(["--help"], {})
    text = capsys.readouterr().out
    for flag in ("--share-enforcement", "SHARE_ENFORCEMENT", "--mps-root", "--mps-container-root",
                 "--config-file"):
        assert flag in text, flag
