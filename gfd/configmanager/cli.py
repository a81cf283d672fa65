"""`config-manager`: the init container (ONESHOT=true) and sidecar of the Helm chart's DaemonSets.

Flags and environment are upstream's (gfd/configmanager/options.py). The sidecar watches its
own Node (resourceVersion-based watch, re-read on 410 Gone) and, when the label selects another config,
repoints the file and signals the main process. An unknown config name keeps the current config (logged);
only the init container, which has nothing to keep, fails on it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from gfd import signals
from gfd.config.loader import load, parse_command_line
from gfd.configmanager.apply import link_target, point, send
from gfd.configmanager.options import CONFIG_MANAGER_OPTIONS, Settings
from gfd.configmanager.selection import SelectError, available_configs, select
from gfd.kube.client import CoreV1Objects, Kube, connect
from gfd.kube.errors import CredentialsError, KubeError
from gfd.kube.watch import Watch
from gfd.lifecycle import Lifecycle
from gfd.program import configured, process_arguments

log = structlog.get_logger("config-manager")


class ConfigManager:
    def __init__(self, settings: Settings, kube: Kube) -> None:
        self.s = settings
        self.kube = kube
        self.core = CoreV1Objects(kube.api_client)
        self.signal_owed = False
        self.label: str | None = None

    def apply(self, label: str | None) -> None:
        """Select and point; SelectError propagates (the caller decides whether it is fatal). A signal
        that could not be delivered stays owed, and is sent at the next event even if nothing changed."""
        name = select(label, available_configs(self.s.srcdir), self.s.default, list(self.s.fallbacks))
        changed = point(self.s.dst, link_target(self.s.srcdir, name))
        if (changed or self.signal_owed) and self.s.send_signal:
            self.signal_owed = True
            send(self.s.process, self.s.signal)
            self.signal_owed = False

    def read_node(self) -> tuple[str | None, str | None]:
        metadata = self.kube.request("get", self.core.read_node_with_http_info, self.s.node_name).get("metadata") or {}
        return (metadata.get("labels") or {}).get(self.s.node_label), metadata.get("resourceVersion")

    def run_once(self) -> int:
        """The init container: one selection; any failure is one line and exit 1 (the kubelet retries)."""
        try:
            label, _ = self.read_node()
            self.apply(label)
        except (SelectError, LookupError) as e:
            log.error(str(e))
            return 1
        except KubeError as e:  # the API: 401/403, connection refused, timeouts
            log.error(f"error reading node {self.s.node_name}: {api_error(e)}")
            return 1
        return 0

    def watch(self, stopping: threading.Event | None = None, stop_after: float | None = None) -> None:
        """Follow the node's label until `stopping` is set (or `stop_after` seconds, for tests), through the
        one watch loop (gfd.kube.watch): the node is read at start and after 410 Gone."""
        watch = Watch(self.kube, f"node {self.s.node_name}", self.core.list_node,
                      field_selector=f"metadata.name={self.s.node_name}", on_event=self._on_event,
                      relist=self._relist)
        watch.run(stopping or threading.Event(), None if stop_after is None else time.monotonic() + stop_after)

    def _relist(self) -> str | None:
        self.label, version = self.read_node()
        self._apply_logged(self.label)
        return version

    def _on_event(self, _kind: str, node: dict[str, Any]) -> None:
        new = ((node.get("metadata") or {}).get("labels") or {}).get(self.s.node_label)
        if new != self.label:
            self.label = new
            self._apply_logged(new)

    def _apply_logged(self, label: str | None) -> None:
        try:
            self.apply(label)
        except SelectError as e:
            log.error(f"{e}; keeping the current config")
        except (LookupError, OSError) as e:  # no process to signal; the link cannot be written: next event
            log.error(str(e))


def api_error(e: KubeError) -> str:
    """One line for an API failure: the HTTP status and reason, or the connection error."""
    return f"HTTP {e}" if e.status is not None else str(e)


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    settings = load(parse_command_line(argv, environ, CONFIG_MANAGER_OPTIONS, "config-manager"),
                    CONFIG_MANAGER_OPTIONS, Settings)
    settings.check()
    return settings


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args, env = process_arguments(argv, environ)
    settings = configured("config-manager", lambda: load_settings(args, env))
    if settings is None:
        return 1
    try:
        kube = connect(settings.kubeconfig, "config-manager")
    except CredentialsError as e:  # no in-cluster credentials, an unreadable kubeconfig
        log.error(f"error building kubernetes clientset from config: {e}")
        return 1
    manager = ConfigManager(settings, kube)
    if settings.oneshot:
        return manager.run_once()
    with Lifecycle("config-manager", main="node watch") as life:
        life.on_stop(kube.cancel)
        life.callback("API client", kube.close)
        signals.install(life)
        manager.watch(life.stopping)
    return life.exit_status(0)


if __name__ == "__main__":
    sys.exit(main())
