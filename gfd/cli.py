"""`gpu-feature-discovery`: upstream-compatible flags, plus --simulate."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

import structlog

from gfd import logs
from gfd.config import Config, ConfigError, load_config, parse_command_line
from gfd.config.model import GFD_OPTIONS
from gfd.config.options import running_config
from gfd.discovery.session import NodeSource
from gfd.doctor.subcommand import with_doctor
from gfd.labelling import PassError, oneshot_labels
from gfd.outputs import OutputError
from gfd.outputs.choose import make_output, writes_node_feature

log = structlog.get_logger("gfd")


@with_doctor("gpu-feature-discovery", lambda: GFD_OPTIONS)
def main(argv: list[str], environ: Mapping[str, str]) -> int:
    try:
        cmdline = parse_command_line(argv, environ)
    except ConfigError as e:
        print(f"gpu-feature-discovery: {e}", file=sys.stderr)
        return 1
    if cmdline.given.get("simulate") == "list":
        return _list_profiles()
    logs.configure(cmdline.given.get("log_format", "auto"), cmdline.given.get("log_level", "info"))
    try:
        config = load_config(cmdline)
    except ConfigError as e:
        log.error(f"unable to load config: {e}")
        return 1
    log.info("Running with config", **_loggable(config))
    if config.oneshot:
        return oneshot(config)
    # Imported here: the daemon's HTTP server and metrics (asyncio, h11, prometheus_client) are ~40 ms of
    # a oneshot run's start-up (python -X importtime), which it never uses (tests/test_cli.py).
    from gfd.daemon import run

    return run(cmdline, config)


def oneshot(config: Config) -> int:
    try:
        source = NodeSource.for_gfd(config)
    except ConfigError as e:
        log.error(str(e))
        return 1
    with source:
        try:
            output = make_output(config)
            labels = oneshot_labels(source, config, int(time.time()))
            output.write(labels)
        except (PassError, ConfigError, OutputError) as e:
            log.error(str(e))
            return 1
    return 0


def _loggable(config: Config) -> dict[str, object]:
    # The output actually chosen, not the flag's raw value (`-o FILE` alone turns the NodeFeature API off).
    return {**running_config(config, GFD_OPTIONS), "useNodeFeatureAPI": writes_node_feature(config),
            "sharingStrategy": config.sharing.strategy}


def _list_profiles() -> int:
    # Imported here, as gfd.discovery.session does: the simulator is 3.4 ms CPU and 0.3 MiB of every other start.
    from gfd.discovery.simulated.profiles import builtin_names, load_profile

    for name in builtin_names():
        print(f"{name}\t{load_profile(name).description}")
    return 0
