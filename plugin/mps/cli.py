"""`mps-control-daemon`: upstream's flags and env (`--config-file`/`CONFIG_FILE`, `--mig-strategy`/
`MIG_STRATEGY`), the shared v1 config file, and the `mount-shm` subcommand for the init container.

Starts one MPS control daemon per resource the config shares with MPS, writes `<root>/.ready`, then checks
every second that each daemon answers and starts again any that does not. SIGTERM quits the daemons and
gives the GPUs back their DEFAULT compute mode; SIGHUP does that and starts again with the reloaded config.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import structlog

from gfd import signals
from gfd.config import ConfigError
from gfd.config.loader import load, parse_command_line
from gfd.lifecycle import Lifecycle, Scope
from gfd.program import configured, process_arguments
from plugin.config import PLUGIN_OPTIONS, PluginConfig, node_source, reload_or_keep, validate
from plugin.mps import MpsError
from plugin.mps.control import answers
from plugin.mps.daemon import ResourceDaemon, check_replicas
from plugin.mps.root import MpsRoot

if TYPE_CHECKING:
    from gfd.discovery.session import NodeSource

log = structlog.get_logger("plugin.mps")
PROG = "mps-control-daemon"
OPTIONS = tuple(o for o in PLUGIN_OPTIONS if o.dest in {
    "mig_strategy", "config_file", "container_driver_root", "device_discovery_strategy",
    "mps_container_root", "simulate", "log_format", "log_level"})
CHECK_S = 1.0


def load_daemon_config(argv: Sequence[str], environ: Mapping[str, str]) -> PluginConfig:
    return validate(load(parse_command_line(argv, environ, OPTIONS, PROG), OPTIONS, PluginConfig), needs_mps_root=False)


class MpsControlDaemon:
    def __init__(self, argv: Sequence[str], environ: Mapping[str, str], config: PluginConfig) -> None:
        self.argv, self.environ, self.config = argv, environ, config
        self.life = Lifecycle(PROG, main="MPS daemon supervision")
        self.run_scope: Scope | None = None
        self.reload = False
        self.daemons: list[ResourceDaemon] = []
        self.source: NodeSource | None = None

    def stop(self) -> None:
        self.life.stop()

    def request_reload(self) -> None:
        self.reload = True
        if self.run_scope is not None:
            self.run_scope.stop()

    @property
    def root(self) -> MpsRoot:
        return MpsRoot(self.config.mps_container_root)

    def run(self) -> int:
        with self.life as life:
            status = self._supervised(life)
        log.info("Exiting")
        return life.exit_status(status)

    def _supervised(self, life: Lifecycle) -> int:
        while not life.stopping.is_set():
            with life.scope("MPS daemons") as run:
                self.run_scope = run
                run.callback("MPS daemons", self.shutdown)
                try:
                    self.start()
                    self.supervise(run.stopping)
                except (MpsError, ConfigError) as e:
                    log.error(str(e))
                    return 1
            if self.reload and not life.stopping.is_set():
                self.reload = False
                self.config = reload_or_keep(load_daemon_config, self.argv, self.environ, self.config)
        return 0

    def start(self) -> None:
        """Every MPS resource's daemon, then `.ready`; MpsError on the first that cannot start (those that
        did are stopped again by `shutdown`)."""
        from gfd.discovery.errors import DiscoveryError, NvmlUnavailable
        from plugin.resources import ResourceError, build_resources

        if self.config.sharing.strategy != "mps":
            log.info("No devices are configured for MPS sharing; Waiting indefinitely.")
            return
        self.source = node_source(self.config)
        try:
            self.source.open()
            resources = [r for r in build_resources(self.source.read(), self.config) if r.mps]
        except (NvmlUnavailable, DiscoveryError, ResourceError) as e:
            raise MpsError(f"error starting MPS daemons: {e}") from None
        for resource in resources:
            check_replicas(resource)
            daemon = ResourceDaemon(resource, self.root)
            self.daemons.append(daemon)
            try:
                daemon.start()
            except MpsError as e:
                raise MpsError(f"error starting the MPS daemon for {resource.name}: {e}") from None
        with open(self.root.ready, "w"):
            pass
        log.info("MPS daemons started", resources=[d.name for d in self.daemons])

    def supervise(self, stopping: threading.Event) -> None:
        """Until a signal: a daemon that stops answering is stopped and started again."""
        while not stopping.wait(CHECK_S):
            for daemon in self.daemons:
                reason = answers(self.root, daemon.name)
                if reason is None:
                    continue
                log.error("MPS daemon not answering; starting it again", resource=daemon.name, reason=reason)
                daemon.stop()
                try:
                    daemon.start()
                except MpsError as e:
                    log.error("MPS daemon did not start; retrying", resource=daemon.name, error=str(e))

    def shutdown(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root.ready)
        for daemon in self.daemons:
            daemon.stop()
        self.daemons = []
        if self.source is not None:
            self.source.close()
            self.source = None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args, env = process_arguments(argv, environ)
    subcommand = args.pop(0) if args and not args[0].startswith("-") else ""
    if subcommand not in ("", "mount-shm"):
        print(f"{PROG}: unknown command {subcommand!r} (accepted: mount-shm)", file=sys.stderr)
        return 1
    config = configured(PROG, lambda: load_daemon_config(args, env))
    if config is None:
        return 1
    if subcommand == "mount-shm":
        from plugin.mps.shm import mount_shm

        try:
            size = mount_shm(MpsRoot(config.mps_container_root).shm)
        except MpsError as e:
            log.error(str(e))
            return 1
        log.info("mounted the MPS shm tmpfs", path=MpsRoot(config.mps_container_root).shm, size=size)
        return 0
    daemon = MpsControlDaemon(args, env, config)
    signals.install(daemon.life, daemon.request_reload)
    return daemon.run()
