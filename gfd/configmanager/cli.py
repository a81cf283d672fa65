"""`config-manager`: the init container (ONESHOT=true) and sidecar of the Helm chart's DaemonSets.

Environment (upstream's): NODE_NAME, NODE_LABEL, CONFIG_FILE_SRCDIR, CONFIG_FILE_DST, DEFAULT_CONFIG,
FALLBACK_STRATEGIES, ONESHOT, SEND_SIGNAL, SIGNAL, PROCESS_TO_SIGNAL, KUBECONFIG. The sidecar watches its
own Node (resourceVersion-based watch, re-read on 410 Gone) and, when the label selects another config,
repoints the file and signals the main process. An unknown config name keeps the current config (logged);
only the init container, which has nothing to keep, fails on it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from gfd import logs
from gfd.backoff import Backoff
from gfd.config.options import parse_go_bool
from gfd.configmanager.apply import link_target, point, send
from gfd.configmanager.select import SelectError, available_configs, select

log = structlog.get_logger("config-manager")
WATCH_TIMEOUT_S = 300


@dataclass(frozen=True)
class Settings:
    node_name: str
    node_label: str
    srcdir: str
    dst: str
    default: str
    fallbacks: list[str]
    oneshot: bool
    send_signal: bool
    signal: int
    process: str
    kubeconfig: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        for required, flag in (("NODE_NAME", "node-name"), ("NODE_LABEL", "node-label"),
                               ("CONFIG_FILE_SRCDIR", "config-file-srcdir"), ("CONFIG_FILE_DST", "config-file-dst")):
            if not env.get(required):
                raise ValueError(f"invalid <{flag}>: must not be empty string (set {required})")
        send_signal = parse_go_bool(env.get("SEND_SIGNAL", "false") or "false")
        if send_signal and not env.get("PROCESS_TO_SIGNAL"):
            raise ValueError("invalid <process-to-signal>: must not be empty string when SEND_SIGNAL=true")
        return cls(
            node_name=env["NODE_NAME"], node_label=env["NODE_LABEL"], srcdir=env["CONFIG_FILE_SRCDIR"],
            dst=env["CONFIG_FILE_DST"], default=env.get("DEFAULT_CONFIG", ""),
            fallbacks=[f for f in env.get("FALLBACK_STRATEGIES", "named,single").split(",") if f],
            oneshot=parse_go_bool(env.get("ONESHOT", "false") or "false"), send_signal=send_signal,
            signal=int(env.get("SIGNAL") or 1), process=env.get("PROCESS_TO_SIGNAL", ""),
            kubeconfig=env.get("KUBECONFIG", ""),
        )


class ConfigManager:
    def __init__(self, settings: Settings, core: Any) -> None:
        self.s = settings
        self.core = core
        self.signal_owed = False

    def apply(self, label: str | None) -> None:
        """Select and point; SelectError propagates (the caller decides whether it is fatal). A signal
        that could not be delivered stays owed, and is sent at the next event even if nothing changed."""
        name = select(label, available_configs(self.s.srcdir), self.s.default, self.s.fallbacks)
        changed = point(self.s.dst, link_target(self.s.srcdir, name))
        if (changed or self.signal_owed) and self.s.send_signal:
            self.signal_owed = True
            send(self.s.process, self.s.signal)
            self.signal_owed = False

    def read_node(self) -> tuple[str | None, str]:
        node = self.core.read_node(self.s.node_name, _request_timeout=(5, 10))
        return (node.metadata.labels or {}).get(self.s.node_label), node.metadata.resource_version

    def run_once(self) -> int:
        label, _ = self.read_node()
        try:
            self.apply(label)
        except SelectError as e:
            log.error(str(e))
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
                    log.warning("node watch failed; retrying", status=e.status)
                    time.sleep(backoff.next_delay())
                version = None
            except Exception as e:  # connection errors from urllib3: retry, never die
                log.warning("node watch failed; retrying", error=f"{type(e).__name__}: {e}")
                time.sleep(backoff.next_delay())
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


def main(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    logs.configure(env.get("GFD_LOG_FORMAT", "auto"))
    try:
        settings = Settings.from_env(env)
    except ValueError as e:
        log.error(str(e))
        return 1
    manager = ConfigManager(settings, core_api(settings.kubeconfig))
    if settings.oneshot:
        return manager.run_once()
    manager.watch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
