"""Config file, flags and env: upstream names, defaults, precedence and one-line errors."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfd.config import ConfigError, load_config, parse_command_line
from gfd.config.model import DEFAULT_OUTPUT_FILE, Config


def load(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Config:
    return load_config(parse_command_line(argv or [], env or {}))


def test_defaults_match_upstream() -> None:
    c = load()
    assert (c.mig_strategy, c.fail_on_init_error, c.use_node_feature_api, c.device_discovery_strategy) == \
        ("none", True, True, "auto")
    assert (c.oneshot, c.no_timestamp, c.sleep_interval_ns, c.output_file) == \
        (False, False, 60 * 10**9, DEFAULT_OUTPUT_FILE)
    assert (c.machine_type_file, c.namespace, c.kube_api_qps, c.kube_api_burst) == \
        ("/sys/class/dmi/id/product_name", "default", 5.0, 10)


def test_flag_beats_env_beats_file_beats_default(write_yaml: Any) -> None:
    path = write_yaml({"flags": {"migStrategy": "single", "gfd": {"sleepInterval": "10s", "noTimestamp": True}}})
    assert load(["--config-file", path]).mig_strategy == "single"
    assert load(["--config-file", path], {"MIG_STRATEGY": "mixed"}).mig_strategy == "mixed"
    assert load(["--config-file", path, "--mig-strategy=none"], {"MIG_STRATEGY": "mixed"}).mig_strategy == "none"
    c = load([], {"GFD_CONFIG_FILE": path})
    assert (c.sleep_interval_ns, c.no_timestamp, c.oneshot) == (10 * 10**9, True, False)


def test_first_listed_env_var_wins() -> None:
    assert load([], {"GFD_MIG_STRATEGY": "single", "MIG_STRATEGY": "mixed"}).mig_strategy == "single"
    assert load([], {"CONFIG_FILE": "", "GFD_CONFIG_FILE": ""}).config_file == ""


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("t", True), ("TRUE", True), ("True", True),
                                                 ("0", False), ("f", False), ("False", False), ("", False)])
def test_bool_env_values_like_go_parsebool(value: str, expected: bool) -> None:
    assert load([], {"GFD_ONESHOT": value}).oneshot is expected


def test_bad_bool_env_names_the_variable_and_the_accepted_values() -> None:
    with pytest.raises(ConfigError) as e:
        load([], {"GFD_ONESHOT": "yes"})
    assert str(e.value) == ('environment variable GFD_ONESHOT: oneshot: parsing "yes": invalid syntax '
                            "(accepted: true, false)")


def test_empty_duration_env_keeps_the_default_and_bad_one_fails() -> None:
    assert load([], {"GFD_SLEEP_INTERVAL": ""}).sleep_interval_ns == 60 * 10**9
    with pytest.raises(ConfigError, match='GFD_SLEEP_INTERVAL: sleep-interval: time: missing unit in duration "60"'):
        load([], {"GFD_SLEEP_INTERVAL": "60"})


def test_upstream_flag_spellings() -> None:
    c = load(["--oneshot", "--no-timestamp", "--mig-strategy=mixed", "--output-file=/tmp/labels",
              "--fail-on-init-error=false", "-sleep-interval", "1m30s", "-o", "/tmp/other"])
    assert (c.oneshot, c.no_timestamp, c.mig_strategy, c.fail_on_init_error) == (True, True, "mixed", False)
    assert (c.sleep_interval_ns, c.output_file) == (90 * 10**9, "/tmp/other")
    assert load(["--output", "/x"]).output_file == "/x"
    assert load(["--container-driver-root", "/d"]).container_driver_root == "/d"


def test_bool_flag_does_not_swallow_the_next_word() -> None:
    # Go's flag package: `--oneshot false` sets oneshot and leaves `false` as an argument.
    assert load(["--oneshot", "false"]).oneshot is True


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--mig-strategy=bogus"], {}, 'flag --mig-strategy: mig-strategy: invalid value "bogus" '
                                   "(accepted: none, single, mixed)"),
    ([], {"MIG_STRATEGY": "bogus"}, "environment variable MIG_STRATEGY: mig-strategy: invalid value"),
    (["--device-discovery-strategy=wsl"], {}, "accepted: auto, nvml, tegra, vfio"),
    (["--sleep-interval=1x"], {}, 'flag --sleep-interval: sleep-interval: time: invalid duration "1x"'),
    (["--no-such-flag"], {}, "flag provided but not defined: --no-such-flag"),
    (["--kube-api-burst=many"], {}, "kube-api-burst"),
])
def test_bad_flags_and_env(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(argv, env)


def test_file_keys_are_case_insensitive_and_unknown_keys_ignored(write_yaml: Any) -> None:
    path = write_yaml("version: v1\nFLAGS:\n  MIGSTRATEGY: mixed\n  gfd:\n    SleepInterval: 50000000\n"
                      "    noTimestamp: yes\nsomethingElse: 1\n")
    c = load(["--config-file", path])
    assert (c.mig_strategy, c.sleep_interval_ns, c.no_timestamp) == ("mixed", 50_000_000, True)


def test_json_config_file(write_yaml: Any) -> None:
    path = write_yaml('{"version": "v1", "flags": {"failOnInitError": false}}', "c.json")
    assert load(["--config-file", path]).fail_on_init_error is False


def test_sharing_post_processing(write_yaml: Any) -> None:
    path = write_yaml({"sharing": {"mps": {"renameByDefault": True, "resources": [
        {"name": "gpu", "replicas": 2.0, "rename": "nvidia.com/custom", "devices": [0, "1", "0:1"]}]}}})
    sharing = load(["--config-file", path]).sharing
    assert sharing.mps is not None and sharing.time_slicing is None
    entry = sharing.mps.resources[0]
    assert (entry.name, entry.replicas, entry.rename) == ("nvidia.com/gpu", 2, "nvidia.com/gpu.shared")
    assert sharing.mps.fail_requests_greater_than_one is True
    assert sharing.strategy == "mps"


@pytest.mark.parametrize(("doc", "field", "problem"), [
    ({"version": "v2"}, "version", "unknown version: v2"),
    ({"flags": {"migStrategy": "bogus"}}, "flags.migStrategy", 'invalid value "bogus"'),
    ({"flags": {"migStrategy": 5}}, "flags.migStrategy", "expected a string, got 5"),
    ({"flags": {"failOnInitError": "sometimes"}}, "flags.failOnInitError", "expected a boolean"),
    ({"flags": {"gfd": {"sleepInterval": "60"}}}, "flags.gfd.sleepInterval", "missing unit"),
    ({"flags": {"gfd": "oops"}}, "flags.gfd", "expected a mapping"),
    ({"sharing": {"timeSlicing": {}}}, "sharing.timeSlicing.resources", "no resources specified"),
    ({"sharing": {"timeSlicing": {"resources": [{"replicas": 2}]}}}, "sharing.timeSlicing.resources[0].name",
     "no resource name specified"),
    ({"sharing": {"timeSlicing": {"resources": [{"name": "gpu"}]}}}, "sharing.timeSlicing.resources[0].replicas",
     "no replicas specified"),
    ({"sharing": {"mps": {"resources": [{"name": "gpu", "replicas": 1}]}}}, "sharing.mps.resources[0].replicas",
     "number of replicas must be >= 2"),
    ({"sharing": {"mps": {"resources": [{"name": "gpu", "replicas": 2.5}]}}}, "sharing.mps.resources[0].replicas",
     "expected an integer"),
    ({"sharing": {"mps": {"resources": [{"name": "Bad_Name", "replicas": 2}]}}}, "sharing.mps.resources[0].name",
     "incorrect format for resource name 'nvidia.com/Bad_Name'"),
    ({"sharing": {"mps": {"resources": [{"name": "x" * 60, "replicas": 2}]}}}, "sharing.mps.resources[0].name",
     "must be 63 characters or less"),
    ({"sharing": {"mps": {"resources": [{"name": "gpu", "replicas": 2, "devices": "some"}]}}},
     "sharing.mps.resources[0].devices", "the only valid string input is 'all'"),
    ({"sharing": {"mps": {"resources": [{"name": "gpu", "replicas": 2, "devices": 0}]}}},
     "sharing.mps.resources[0].devices", "a count of devices must be > 0"),
    ({"sharing": {"mps": {"resources": [{"name": "gpu", "replicas": 2, "devices": ["GPU-zz"]}]}}},
     "sharing.mps.resources[0].devices", "unsupported type for device in devices list"),
    ({"resources": {"gpus": [{"name": "gpu"}]}}, "resources.gpus[0].pattern",
     "resources must have a 'pattern' field set"),
])
def test_bad_files_name_file_field_and_problem(write_yaml: Any, doc: Any, field: str, problem: str) -> None:
    path = write_yaml(doc)
    with pytest.raises(ConfigError) as e:
        load(["--config-file", path])
    assert e.value.source == f"config file {path}"
    assert e.value.field == field
    assert problem in e.value.problem
    assert str(e.value).startswith(f"config file {path}: {field}: ")
    assert "\n" not in str(e.value)


def test_missing_and_unparsable_files(tmp_path: Any, write_yaml: Any) -> None:
    with pytest.raises(ConfigError, match="error opening config file: No such file or directory") as absent:
        load(["--config-file", str(tmp_path / "absent.yaml")])
    assert isinstance(absent.value.__cause__, FileNotFoundError)  # one line, its cause kept
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3, column 3: ") as bad:
        load(["--config-file", write_yaml("flags:\n  - a\n  b: [\n")])
    assert isinstance(bad.value.__cause__, yaml.YAMLError)


_yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_keys = st.sampled_from(["version", "flags", "sharing", "resources", "imex", "migStrategy", "gfd", "timeSlicing",
                         "mps", "name", "replicas", "devices", "sleepInterval", "gpus", "pattern"])


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.recursive(_yaml_values, lambda inner: st.dictionaries(_keys, inner, max_size=4), max_leaves=12))
def test_fuzzed_files_load_or_fail_with_a_config_error(write_yaml: Any, doc: Any) -> None:
    path = write_yaml(yaml.safe_dump(doc))
    try:
        load(["--config-file", path])
    except ConfigError as e:
        assert str(e).startswith(f"config file {path}")
        assert "\n" not in str(e)


def _declared() -> list[tuple[str, Any]]:
    from gfd.config.model import GFD_OPTIONS
    from gfd.config.options import options_of
    from gfd.configmanager.options import CONFIG_MANAGER_OPTIONS
    from gfd.doctor.cli import DoctorConfig
    from plugin.config import PLUGIN_OPTIONS

    return [("gpu-feature-discovery", GFD_OPTIONS), ("nvidia-device-plugin", PLUGIN_OPTIONS),
            ("config-manager", CONFIG_MANAGER_OPTIONS), ("doctor", options_of(DoctorConfig))]


@pytest.mark.parametrize(("program", "options"), _declared())
def test_every_declared_option_is_consistent(program: str, options: Any) -> None:
    """`Option.field()` hides a default's type from mypy: each default must be what its kind parses to and
    one of its accepted values, and no flag or env var may name two options of one program."""
    kinds: dict[str, type | tuple[type, ...]] = {"str": str, "bool": bool, "int": int, "duration": int,
                                                  "float": (int, float), "list": str, "intlist": int}
    for opt in options:
        items = opt.default if opt.kind in ("list", "intlist") else (opt.default,)
        assert isinstance(items, tuple), opt.dest
        for item in items:
            assert isinstance(item, kinds[opt.kind]), opt.dest
        opt.check_value(opt.default)  # within the choices and the duration bounds
        assert opt.flags or opt.envs, opt.dest
    flags = [f for o in options for f in o.flags]
    envs = [e for o in options for e in o.envs]
    assert len(flags) == len(set(flags)) and len(envs) == len(set(envs)), program
    assert len({o.dest for o in options}) == len(options)
