"""`mps-control-daemon`: upstream's flags and env (`--config-file`/`CONFIG_FILE`, `--mig-strategy`/
`MIG_STRATEGY`), the shared v1 config file, and the `mount-shm` subcommand for the init container.

Checks `--mps-container-root` and finds `nvidia-cuda-mps-control` before touching a GPU, starts one MPS
control daemon per resource the config shares with MPS, writes `<root>/.ready`, then checks every second that
each daemon answers and starts again any that does not. SIGTERM stops the daemons (a daemon that does not
quit is killed) and gives every GPU back its DEFAULT compute mode, within the stop deadline; SIGHUP does that
and starts again with the reloaded config.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import structlog

from gfd import signals
from gfd.config import ConfigError
from gfd.config.loader import load, parse_command_line
from gfd.discovery.errors import DiscoveryError
from gfd.lifecycle import Lifecycle, Scope
from gfd.program import configured, process_arguments
from plugin.config import PLUGIN_OPTIONS, PluginConfig, node_source, reload_or_keep, validate
from plugin.mps import MpsError
from plugin.mps.control import find_control
from plugin.mps.daemon import MpsDaemon, stop_all
from plugin.mps.replicas import resource_daemon
from plugin.mps.root import MpsRoot, checked_root, mark, unmark
from plugin.mps.shm import mount_shm
from plugin.resources import ResourceError, build_resources

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
        self.daemons: list[MpsDaemon] = []
        self.source: NodeSource | None = None
        self.root: MpsRoot | None = None  # checked when MPS is configured

    def stop(self) -> None:
        self.life.stop()

    def request_reload(self) -> None:
        self.reload = True
        if self.run_scope is not None:
            self.run_scope.stop()

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
        """Every MPS resource's daemon, then `.ready`; ConfigError or MpsError, before any GPU is touched, for
        an unusable root, a missing control program or too many replicas; MpsError on the first daemon that
        cannot start (those that did are stopped again by `shutdown`)."""
        if self.config.sharing.strategy != "mps":
            log.info("No devices are configured for MPS sharing; Waiting indefinitely.")
            return
        self.root = checked_root(self.config.mps_container_root, "mps-container-root")
        program = find_control()
        self.source = node_source(self.config)
        try:
            self.source.open()
            resources = [r for r in build_resources(self.source.read(), self.config) if r.mps]
        except (DiscoveryError, ResourceError) as e:
            raise MpsError(f"error starting MPS daemons: {e}") from e
        for daemon in [resource_daemon(r, self.root, program) for r in resources]:
            try:
                daemon.start()
            except MpsError as e:
                raise MpsError(f"error starting the MPS daemon for {daemon.name}: {e}") from e
            self.daemons.append(daemon)
        mark(self.root.ready)
        log.info("MPS daemons started", resources=[d.name for d in self.daemons])

    def supervise(self, stopping: threading.Event) -> None:
        """Until a signal: a daemon that stops answering is ended and started again."""
        while not stopping.wait(CHECK_S):
            for daemon in self.daemons:
                reason = daemon.not_ready()
                if reason is None:
                    continue
                log.error("MPS daemon not answering; starting it again", resource=daemon.name, reason=reason)
                try:
                    daemon.restart()
                except MpsError as e:
                    log.error("MPS daemon did not start; retrying", resource=daemon.name, error=str(e))

    def shutdown(self) -> None:
        if self.root is not None:
            problem = unmark(self.root.ready)
            if problem is not None:
                log.warning(problem)
        stop_all(self.daemons)
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
        try:
            shm = checked_root(config.mps_container_root, "mps-container-root").shm
            size = mount_shm(shm)
        except (ConfigError, MpsError) as e:
            log.error(str(e))
            return 1
        log.info("mounted the MPS shm tmpfs", path=shm, size=size)
        return 0
    daemon = MpsControlDaemon(args, env, config)
    signals.install(daemon.life, daemon.request_reload)
    return daemon.run()
