"""config-manager's options: upstream's flags, env vars and defaults (cmd/config-manager), declared with
the same Option mechanism as GFD's and the plugin's."""

from __future__ import annotations

from dataclasses import dataclass

from gfd.config.options import GFD_OPTIONS, Option

FALLBACKS = ("named", "single", "empty")
_SHARED = {o.dest: o for o in GFD_OPTIONS if o.dest in ("kubeconfig", "node_name", "log_format", "log_level")}

CONFIG_MANAGER_OPTIONS: tuple[Option, ...] = (
    Option("oneshot", ("--oneshot",), ("ONESHOT",), "bool", False,
           help="check and update the config only once and then exit"),
    _SHARED["kubeconfig"],
    _SHARED["node_name"],
    Option("node_label", ("--node-label",), ("NODE_LABEL",), "str", "nvidia.com/device-plugin.config",
           help="the node label that selects a config"),
    Option("srcdir", ("--config-file-srcdir",), ("CONFIG_FILE_SRCDIR",), "str", "",
           help="the directory holding the available config files"),
    Option("dst", ("--config-file-dst",), ("CONFIG_FILE_DST",), "str", "",
           help="the config file path the main process reads (made a symlink)"),
    Option("default", ("--default-config",), ("DEFAULT_CONFIG",), "str", "",
           help="the config to use when the label is not set"),
    Option("fallbacks", ("--fallback-strategies",), ("FALLBACK_STRATEGIES",), "list", (), choices=FALLBACKS,
           help="ordered fallbacks when neither the label nor a default names a config"),
    Option("send_signal", ("--send-signal",), ("SEND_SIGNAL",), "bool", True,
           help="signal <process-to-signal> once the config changed"),
    Option("signal", ("--signal",), ("SIGNAL",), "int", 1, help="the signal number to send (1 = SIGHUP)"),
    Option("process", ("--process-to-signal",), ("PROCESS_TO_SIGNAL",), "str", "nvidia-device-plugin",
           help="the program to signal (its name or path; found as argv[0] or as the script a Python "
                "interpreter runs)"),
    _SHARED["log_format"],
    _SHARED["log_level"],
)


@dataclass(frozen=True)
class Settings:
    oneshot: bool
    kubeconfig: str
    node_name: str
    node_label: str
    srcdir: str
    dst: str
    default: str
    fallbacks: tuple[str, ...]
    send_signal: bool
    signal: int
    process: str
    log_format: str
    log_level: str
    explicit: frozenset[str] = frozenset()

    def check(self) -> None:
        """Upstream's start-up validation, in its order and with its messages."""
        for value, flag in ((self.node_name, "node-name"), (self.node_label, "node-label"),
                            (self.srcdir, "config-file-srcdir"), (self.dst, "config-file-dst")):
            if not value:
                raise ValueError(f"invalid <{flag}>: must not be empty string")
        if self.send_signal and not self.process:
            raise ValueError("invalid <process-to-signal>: must not be empty string when --send-signal is set")
