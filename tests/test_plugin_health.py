"""plugin/health.py: which XIDs are critical, from the environment as the plugin reads it."""

from __future__ import annotations

import pytest

from plugin.config import load_plugin_config
from plugin.health import XidPolicy


def _policy(env: dict[str, str]) -> XidPolicy:
    """The policy the plugin builds from its environment."""
    config = load_plugin_config([], env)
    return XidPolicy.of(config.disable_healthchecks, config.enable_healthchecks)


@pytest.mark.parametrize(("env", "checks"), [
    ({}, {13: False, 31: False, 48: True, 79: True}),
    ({"DP_DISABLE_HEALTHCHECKS": "48, 79"}, {48: False, 79: False, 94: True}),
    ({"DP_ENABLE_HEALTHCHECKS": "13"}, {13: True, 31: False}),
    ({"DP_ENABLE_HEALTHCHECKS": "all"}, {13: True, 109: True}),
    ({"DP_DISABLE_HEALTHCHECKS": "bogus,-3,45"}, {45: False, 48: True}),
])
def test_xid_policy(env: dict[str, str], checks: dict[int, bool]) -> None:
    policy = _policy(env)
    assert policy.enabled
    assert {x: policy.critical(x) for x in checks} == checks


@pytest.mark.parametrize(("env", "enabled"), [
    ({"DP_DISABLE_HEALTHCHECKS": "all"}, False), ({"DP_DISABLE_HEALTHCHECKS": "XIDS"}, False),
    ({"DP_DISABLE_HEALTHCHECKS": "all", "DP_ENABLE_HEALTHCHECKS": "48"}, False),
    ({"DP_DISABLE_HEALTHCHECKS": "all", "DP_ENABLE_HEALTHCHECKS": "all"}, True),
])
def test_checker_switch_quirks_as_upstream(env: dict[str, str], enabled: bool) -> None:
    assert _policy(env).enabled is enabled
