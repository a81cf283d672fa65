"""`config-manager`: the init container (ONESHOT=true) and sidecar of the Helm chart's DaemonSets.

Flags and environment are upstream's (gfd/configmanager/options.py). The sidecar watches its
own Node (resourceVersion-based watch, re-read on 410 Gone) and, when the label selects another config,
repoints the file and signals the main process. An unknown config name keeps the current config (logged);
only the init container, which has nothing to keep, fails on it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from gfd.backoff import Backoff
from gfd.config.loader import load, parse_command_line
from gfd.configmanager.apply import link_target, point, send
from gfd.configmanager.options import CONFIG_MANAGER_OPTIONS, Settings
from gfd.configmanager.selection import SelectError, available_configs, select
from gfd.program import configured, process_arguments

log = structlog.get_logger("config-manager")
WATCH_TIMEOUT_S = 300


class ConfigManager:
    def __init__(self, settings: Settings, core: Any) -> None:
        self.s = settings
        self.core = core
        self.signal_owed = False

    def apply(self, label: str | None) -> None:
        """Select and point; SelectError propagates (the caller decides whether it is fatal). A signal
        that could not be delivered stays owed, and is sent at the next event even if nothing changed."""
        name = select(label, available_configs(self.s.srcdir), self.s.default, list(self.s.fallbacks))
        changed = point(self.s.dst, link_target(self.s.srcdir, name))
        if (changed or self.signal_owed) and self.s.send_signal:
            self.signal_owed = True
            send(self.s.process, self.s.signal)
            self.signal_owed = False

    def read_node(self) -> tuple[str | None, str]:
        node = self.core.read_node(self.s.node_name, _request_timeout=(5, 10))
        return (node.metadata.labels or {}).get(self.s.node_label), node.metadata.resource_version

    def run_once(self) -> int:
        """The init container: one selection; any failure is one line and exit 1 (the kubelet retries)."""
        try:
            label, _ = self.read_node()
            self.apply(label)
        except (SelectError, LookupError) as e:
            log.error(str(e))
            return 1
        except Exception as e:  # the API: 401/403, connection refused, timeouts
            log.error(f"error reading node {self.s.node_name}: {api_error(e)}")
            return 1
        return 0

    def watch(self, stop_after: float | None = None) -> None:
        """Follow the node's label until the process ends (or `stop_after` seconds, for tests)."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        deadline = None if stop_after is None else time.monotonic() + stop_after
        backoff = Backoff(initial=1.0, cap=30.0)
        version: str | None = None
        label: str | None = None
        while deadline is None or time.monotonic() < deadline:
            try:
                if version is None:  # (re-)read the node: at start, after 410 Gone and after errors
                    label, version = self.read_node()
                    self._apply_logged(label)
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.core.list_node, field_selector=f"metadata.name={self.s.node_name}",
                    resource_version=version, timeout_seconds=WATCH_TIMEOUT_S if deadline is None else
                    max(1, int(deadline - time.monotonic())), _request_timeout=(5, WATCH_TIMEOUT_S + 30))
                for event in stream:  # an ERROR event (410 Gone) is raised as ApiException by the client
                    obj = event["object"]
                    version = obj.metadata.resource_version
                    new = (obj.metadata.labels or {}).get(self.s.node_label)
                    if new != label:
                        label = new
                        self._apply_logged(label)
                    if deadline is not None and time.monotonic() >= deadline:
                        return
                backoff.reset()
            except ApiException as e:
                if e.status == 410:
                    log.info("watch expired (410 Gone); re-reading the node")
                else:
                    delay = backoff.next_delay()
                    log.warning("node watch failed; retrying", error=api_error(e), retry_in_s=round(delay, 1))
                    time.sleep(delay)
                version = None
            except Exception as e:  # connection errors from urllib3: retry, never die
                delay = backoff.next_delay()
                log.warning("node watch failed; retrying", error=api_error(e), retry_in_s=round(delay, 1))
                time.sleep(delay)
                version = None

    def _apply_logged(self, label: str | None) -> None:
        try:
            self.apply(label)
        except SelectError as e:
            log.error(f"{e}; keeping the current config")
        except LookupError as e:
            log.error(str(e))


def core_api(kubeconfig: str) -> Any:
    from kubernetes import client
    from kubernetes import config as kubeconfig_loader

    configuration = client.Configuration()
    if kubeconfig:
        kubeconfig_loader.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                           client_configuration=configuration)
    else:
        kubeconfig_loader.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.retries = 0
    return client.CoreV1Api(client.ApiClient(configuration))


def api_error(e: Exception) -> str:
    """One line for an API failure: the HTTP status and reason, or the connection error."""
    status = getattr(e, "status", None)
    if status is not None:
        return f"HTTP {status} {getattr(e, 'reason', '') or ''}".strip()
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


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
        core = core_api(settings.kubeconfig)
    except Exception as e:  # no in-cluster credentials, an unreadable kubeconfig
        log.error(f"error building kubernetes clientset from config: {api_error(e)}")
        return 1
    manager = ConfigManager(settings, core)
    if settings.oneshot:
        return manager.run_once()
    manager.watch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
